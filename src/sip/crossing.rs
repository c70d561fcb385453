//! In-dialog requests that cross (RFC 3261 §12.2.2, §14.2, §15.1.2), sans-IO: fed each request's
//! method and CSeq in arrival order, it says whether the request may enter the dialog, which
//! pending re-INVITE/UPDATE a BYE cancels (487), and whether an answer may still be sent.
//!
//! `H` is whatever answers a pending request (rsipstack's transaction handle in the driver, a
//! plain value in the tests).

use rsipstack::sip::Method;

/// What to do with a request that just arrived in a dialog.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit<H> {
    /// Hand it to the dialog; answer each of `cancelled` (re-INVITE/UPDATE still pending when this
    /// BYE arrived) with 487.
    Proceed {
        /// Pending requests this BYE ends.
        cancelled: Vec<H>,
    },
    /// Its CSeq is lower than the last one: 500 (§12.2.2).
    OutOfOrder {
        /// The highest CSeq seen so far.
        last: u32,
    },
    /// A BYE already ended the dialog: 481 (§15.1.2).
    Ended,
}

/// One re-INVITE/UPDATE not answered yet.
#[derive(Debug)]
struct Pending<H> {
    cseq: u32,
    /// Known once the dialog layer has handed it over.
    handle: Option<H>,
}

/// The remote CSeq, the requests still waiting for our answer and whether a BYE ended the dialog.
#[derive(Debug)]
pub(crate) struct RequestOrder<H> {
    remote_cseq: Option<u32>,
    ended: bool,
    pending: Vec<Pending<H>>,
}

impl<H> RequestOrder<H> {
    /// `initial_cseq`: the CSeq of the INVITE that made the dialog when it came from the peer.
    pub(crate) fn new(initial_cseq: Option<u32>) -> Self {
        RequestOrder {
            remote_cseq: initial_cseq,
            ended: false,
            pending: Vec::new(),
        }
    }

    /// A request arrived (in arrival order).
    pub(crate) fn admit(&mut self, method: &Method, cseq: u32) -> Admit<H> {
        if matches!(method, Method::Ack | Method::Cancel) {
            // they repeat the CSeq of the request they belong to
            return Admit::Proceed {
                cancelled: Vec::new(),
            };
        }
        if self.ended {
            return Admit::Ended;
        }
        if let Some(last) = self.remote_cseq {
            if cseq < last {
                return Admit::OutOfOrder { last };
            }
        }
        self.remote_cseq = Some(cseq);
        match method {
            Method::Invite | Method::Update => {
                self.pending.push(Pending { cseq, handle: None });
                Admit::Proceed {
                    cancelled: Vec::new(),
                }
            }
            Method::Bye => Admit::Proceed {
                cancelled: self.end(),
            },
            _ => Admit::Proceed {
                cancelled: Vec::new(),
            },
        }
    }

    /// The dialog layer handed over the answer handle of the re-INVITE/UPDATE `cseq`. Returns it
    /// back when the dialog ended meanwhile: answer it 487.
    pub(crate) fn entered(&mut self, cseq: u32, handle: H) -> Option<H> {
        if self.ended {
            return Some(handle);
        }
        match self
            .pending
            .iter_mut()
            .find(|p| p.cseq == cseq && p.handle.is_none())
        {
            Some(p) => p.handle = Some(handle),
            None => self.pending.push(Pending {
                cseq,
                handle: Some(handle),
            }),
        }
        None
    }

    /// Our answer to `cseq` is ready: the handle to send it with, or `None` when the dialog ended
    /// first (the request was already answered 487).
    pub(crate) fn answer(&mut self, cseq: u32) -> Option<H> {
        if self.ended {
            return None;
        }
        let at = self
            .pending
            .iter()
            .position(|p| p.cseq == cseq && p.handle.is_some())?;
        self.pending.remove(at).handle
    }

    /// The dialog ends (BYE either way, timeout): every pending request still to answer, for 487.
    pub(crate) fn end(&mut self) -> Vec<H> {
        self.ended = true;
        self.pending.drain(..).filter_map(|p| p.handle).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proceed<H>(cancelled: Vec<H>) -> Admit<H> {
        Admit::Proceed { cancelled }
    }

    #[test]
    fn bye_behind_a_pending_reinvite_cancels_it() {
        let mut order = RequestOrder::new(Some(1));
        assert_eq!(order.admit(&Method::Invite, 2), proceed(vec![]));
        assert_eq!(order.entered(2, "reinvite"), None);
        assert_eq!(order.admit(&Method::Bye, 3), proceed(vec!["reinvite"]));
        assert_eq!(order.answer(2), None, "no 200 after the BYE");
    }

    #[test]
    fn bye_before_the_reinvite_reached_the_driver_still_gets_it_487() {
        let mut order = RequestOrder::new(Some(1));
        assert_eq!(order.admit(&Method::Invite, 2), proceed(vec![]));
        assert_eq!(order.admit(&Method::Bye, 3), proceed(vec![]));
        assert_eq!(order.entered(2, "reinvite"), Some("reinvite"));
    }

    #[test]
    fn answered_reinvite_is_not_cancelled_by_a_later_bye() {
        let mut order = RequestOrder::new(Some(1));
        order.admit(&Method::Invite, 2);
        order.entered(2, "reinvite");
        assert_eq!(order.answer(2), Some("reinvite"));
        assert_eq!(order.admit(&Method::Bye, 3), proceed(vec![]));
    }

    #[test]
    fn lower_cseq_is_out_of_order_equal_and_higher_pass() {
        let mut order: RequestOrder<()> = RequestOrder::new(Some(5));
        assert_eq!(order.admit(&Method::Info, 4), Admit::OutOfOrder { last: 5 });
        assert_eq!(order.admit(&Method::Info, 5), proceed(vec![]));
        assert_eq!(order.admit(&Method::Options, 9), proceed(vec![]));
        assert_eq!(
            order.admit(&Method::Invite, 6),
            Admit::OutOfOrder { last: 9 }
        );
    }

    #[test]
    fn first_request_of_an_outgoing_call_sets_the_remote_cseq() {
        let mut order: RequestOrder<()> = RequestOrder::new(None);
        assert_eq!(order.admit(&Method::Info, 100), proceed(vec![]));
        assert_eq!(
            order.admit(&Method::Info, 1),
            Admit::OutOfOrder { last: 100 }
        );
    }

    #[test]
    fn ack_and_cancel_repeat_a_cseq_and_are_never_refused() {
        let mut order: RequestOrder<()> = RequestOrder::new(Some(3));
        assert_eq!(order.admit(&Method::Ack, 1), proceed(vec![]));
        assert_eq!(order.admit(&Method::Cancel, 1), proceed(vec![]));
        order.end();
        assert_eq!(order.admit(&Method::Ack, 3), proceed(vec![]));
    }

    #[test]
    fn requests_after_the_bye_get_481() {
        let mut order: RequestOrder<()> = RequestOrder::new(Some(1));
        order.admit(&Method::Bye, 2);
        assert_eq!(order.admit(&Method::Invite, 3), Admit::Ended);
        assert_eq!(order.admit(&Method::Bye, 2), Admit::Ended);
    }

    #[test]
    fn ending_returns_every_handed_over_request() {
        let mut order = RequestOrder::new(Some(1));
        order.admit(&Method::Invite, 2);
        order.entered(2, "a");
        order.admit(&Method::Update, 3);
        order.entered(3, "b");
        order.admit(&Method::Update, 4);
        assert_eq!(order.end(), vec!["a", "b"]);
        assert_eq!(order.entered(4, "c"), Some("c"));
    }

    #[test]
    fn a_request_that_skipped_admission_can_still_be_answered() {
        let mut order = RequestOrder::new(None);
        assert_eq!(order.entered(7, "x"), None);
        assert_eq!(order.answer(7), Some("x"));
        assert_eq!(order.answer(7), None);
    }
}
