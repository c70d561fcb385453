//! One SIP call (either direction) as the call layer sees it: a handle with a few actions and a
//! stream of events. A driver task per call turns rsipstack's dialog states into [`SipCallEvent`]s,
//! answers in-dialog requests (re-INVITE/UPDATE through the call layer, INFO/OPTIONS with 200) and
//! cleans up (BYE/CANCEL/reject, dialog removed) when the handle is dropped.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rsipstack::dialog::dialog::{
    DialogState, DialogStateReceiver, TerminatedReason, TransactionHandle,
};
use rsipstack::dialog::invitation::InviteAsyncResult;
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Header, Method, Request, Response, StatusCode, StatusCodeKind};
use rsipstack::transaction::key::TransactionRole;
use rsipstack::transaction::transaction::Transaction;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn, Instrument};

use super::crossing::{Admit, RequestOrder};
use super::error::SipError;
use super::origin::bump_origin_version;
use super::pbx_set::{may_fail_over, InviteFailure};
use super::session_timer::{
    session_from_2xx, SessionTimer, TimerAction, TimerHeaders, TimerPolicy, UasAnswer,
};
use super::ua::{DoorRequest, UaInner};
use crate::ops::metrics::Ending;

/// A call the bridge places toward the PBX (or a PSTN gateway).
#[derive(Debug, Clone)]
pub struct OutgoingInvite {
    /// Our call id, carried by every log line of this call.
    pub log_id: String,
    /// Request-URI user (the dialled extension or number).
    pub callee: String,
    /// The web user calling: From display name, P-Asserted-Identity and Remote-Party-ID.
    pub caller_id: String,
    /// Extra headers (e.g. `X-ArInfo`); names and values must be single-line.
    pub headers: Vec<(String, String)>,
    /// Send to this gateway instead of the PBX (PSTN calls).
    pub gateway: Option<SocketAddr>,
    /// Our SDP offer.
    pub sdp_offer: String,
}

/// A call arriving on the proxy account for a web user.
#[derive(Debug)]
pub struct IncomingCall {
    /// The handle to ring/answer/reject it.
    pub call: SipCall,
    /// The web user it is for (`[sip] target_header`, else the R-URI or To user without
    /// `dial_prefix`).
    pub target_uid: String,
    /// The calling number (From user).
    pub caller_number: String,
    /// The From display name, if any.
    pub caller_display: Option<String>,
    /// The SDP offer of the INVITE (None for a late-offer INVITE).
    pub sdp_offer: Option<String>,
    /// Where the INVITE came from.
    pub source: SocketAddr,
}

/// What happens on a call, in order; `Terminated` is always last: the call layer's
/// [`SipLegEvent`](crate::call::ports::SipLegEvent), one definition for both (a `SipCall` never
/// sends `Dialog`, which the bridge adds for outgoing calls).
pub use crate::call::ports::SipLegEvent as SipCallEvent;

/// Which side started the call: the one [`crate::domain::Direction`] (`SipToWeb`: from the PBX
/// to a web user; `WebToSip`: from a web user to the PBX).
pub use crate::domain::Direction as CallDirection;

/// State shared by the handle and its driver.
#[derive(Debug, Default)]
struct CallShared {
    /// The SDP we last sent (offer or answer), reused for reoffers answered with `None`.
    last_sdp: Mutex<Option<String>>,
    /// We ended the call ourselves (so a BYE-terminated dialog is not a RemoteBye).
    local_end: AtomicBool,
    /// We answered (incoming) / got an answer (outgoing).
    answered: AtomicBool,
}

impl CallShared {
    fn set_sdp(&self, sdp: &str) {
        *self.last_sdp.lock().unwrap_or_else(|e| e.into_inner()) = Some(sdp.to_string());
    }

    fn sdp(&self) -> Option<String> {
        self.last_sdp
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Handle of one call; dropping it ends the call (BYE, CANCEL or 480) and frees the dialog.
pub struct SipCall {
    log_id: String,
    direction: CallDirection,
    /// The dialog of the current attempt (an outgoing call that fails over gets a new one).
    current: Arc<Mutex<InviteDialog>>,
    events: mpsc::UnboundedReceiver<SipCallEvent>,
    shared: Arc<CallShared>,
    stop: CancellationToken,
    /// Session-timer headers for our 200 (incoming calls whose INVITE asked for a timer).
    answer_headers: Vec<Header>,
}

impl std::fmt::Debug for SipCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipCall")
            .field("log_id", &self.log_id)
            .field("direction", &self.direction)
            .finish()
    }
}

impl SipCall {
    /// Our call id (for logs).
    pub fn log_id(&self) -> &str {
        &self.log_id
    }

    /// Incoming or outgoing.
    pub fn direction(&self) -> CallDirection {
        self.direction
    }

    /// The SIP Call-ID of the dialog (for correlating with PBX logs); an outgoing call retried on
    /// another PBX has a new one from then on.
    pub fn sip_call_id(&self) -> String {
        self.dialog().id().call_id
    }

    fn dialog(&self) -> InviteDialog {
        lock(&self.current).clone()
    }

    /// Marks the call as ended by us and returns the dialog to end: under the same lock as a
    /// failover's switch, so an attempt started meanwhile is cancelled by the driver.
    fn end_locally(&self) -> InviteDialog {
        let current = lock(&self.current);
        self.shared.local_end.store(true, Ordering::SeqCst);
        current.clone()
    }

    /// Incoming: send 180 Ringing.
    pub fn ringing(&self) -> Result<(), SipError> {
        self.expect_incoming("ringing")?;
        self.dialog().ringing(None, None)?;
        debug!(call_id = %self.log_id, "180 Ringing sent");
        Ok(())
    }

    /// Incoming: answer with 200 OK carrying `sdp`.
    pub fn answer(&self, sdp: String) -> Result<(), SipError> {
        self.expect_incoming("answer")?;
        let dialog = self.dialog();
        if dialog.state().is_terminated_state() {
            return Err(self.invalid("answer"));
        }
        trace!(call_id = %self.log_id, sdp = ?sdp, "answer SDP");
        self.shared.set_sdp(&sdp);
        let mut headers = vec![Header::ContentType("application/sdp".into())];
        headers.extend(self.answer_headers.iter().cloned());
        dialog.accept(Some(headers), Some(sdp.into_bytes()))?;
        self.shared.answered.store(true, Ordering::SeqCst);
        info!(call_id = %self.log_id, "answered (200 OK sent)");
        Ok(())
    }

    /// Incoming: refuse with `code` (e.g. 486, 480, 603); `reason` goes in a Reason header.
    pub fn reject(&self, code: u16, reason: &str) -> Result<(), SipError> {
        self.expect_incoming("reject")?;
        if !(300..700).contains(&code) {
            return Err(SipError::Invalid(format!(
                "reject code {code} is not a final error"
            )));
        }
        let dialog = self.end_locally();
        let reason =
            (!reason.is_empty()).then(|| format!("SIP;cause={code};text=\"{}\"", sanitize(reason)));
        dialog.reject(Some(StatusCode::from(code)), reason)?;
        info!(call_id = %self.log_id, code, "rejected");
        Ok(())
    }

    /// Sends one DTMF key as an INFO request with an `application/dtmf-relay` body (the form
    /// FreeSWITCH and most phones read), 160 ms long. Only in an established dialog.
    pub async fn send_dtmf_info(&self, digit: char) -> Result<(), SipError> {
        if !self.shared.answered.load(Ordering::SeqCst) {
            return Err(self.invalid("dtmf"));
        }
        let body = format!("Signal={digit}\r\nDuration=160\r\n");
        let headers = vec![Header::ContentType("application/dtmf-relay".into())];
        let response = self
            .dialog()
            .info(Some(headers), Some(body.into_bytes()))
            .await
            .map_err(|e| SipError::Stack(e.to_string()))?;
        info!(call_id = %self.log_id, %digit, code = ?response.map(|r| r.status_code.code()), "DTMF sent as INFO");
        Ok(())
    }

    /// Outgoing: CANCEL the unanswered INVITE (a `Failed 487` and `Terminated` follow).
    pub async fn cancel(&self) -> Result<(), SipError> {
        if self.direction != CallDirection::WebToSip {
            return Err(self.invalid("cancel"));
        }
        let dialog = self.end_locally();
        info!(call_id = %self.log_id, "cancelling");
        dialog.cancel().await?;
        Ok(())
    }

    /// End an answered call with BYE (either direction).
    pub async fn bye(&self) -> Result<(), SipError> {
        let dialog = self.end_locally();
        info!(call_id = %self.log_id, "sending BYE");
        dialog.bye().await?;
        Ok(())
    }

    /// The next event; `None` after `Terminated`.
    pub async fn next_event(&mut self) -> Option<SipCallEvent> {
        self.events.recv().await
    }

    fn expect_incoming(&self, action: &'static str) -> Result<(), SipError> {
        if self.direction == CallDirection::SipToWeb {
            Ok(())
        } else {
            Err(self.invalid(action))
        }
    }

    fn invalid(&self, action: &'static str) -> SipError {
        SipError::InvalidState {
            call_id: self.log_id.clone(),
            action,
            state: format!(
                "{:?} call in state {}",
                self.direction,
                state_name(&self.dialog().state())
            ),
        }
    }
}

impl Drop for SipCall {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

trait StateExt {
    fn is_terminated_state(&self) -> bool;
}

impl StateExt for DialogState {
    fn is_terminated_state(&self) -> bool {
        matches!(self, DialogState::Terminated(..))
    }
}

fn state_name(state: &DialogState) -> &'static str {
    match state {
        DialogState::Calling(_) => "calling",
        DialogState::Trying(_) => "trying",
        DialogState::Early(..) => "early",
        DialogState::WaitAck(..) => "waiting for ACK",
        DialogState::Confirmed(..) => "confirmed",
        DialogState::Terminated(..) => "terminated",
        _ => "in-dialog request",
    }
}

/// Strips what cannot go inside a quoted header value.
pub(crate) fn sanitize(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
        .collect()
}

fn body_text(body: &[u8]) -> Option<String> {
    if body.is_empty() {
        None
    } else {
        Some(String::from_utf8_lossy(body).into_owned())
    }
}

/// The INVITE transaction's result as a failure (`None`: it succeeded): the final response,
/// 408 for a timeout, 503 for a transport error.
fn invite_failure(r: Result<InviteAsyncResult, tokio::task::JoinError>) -> Option<InviteFailed> {
    let (code, reason, failure) = match r {
        Ok(Ok((_, Some(resp)))) if resp.status_code.kind() == StatusCodeKind::Successful => {
            return None
        }
        Ok(Ok((_, Some(resp)))) => {
            let code = resp.status_code.code();
            (code, reason_of(&resp), InviteFailure::Status(code))
        }
        Ok(Ok((_, None))) => (
            408,
            "Request Timeout".to_string(),
            InviteFailure::Status(408),
        ),
        Ok(Err(e)) => {
            let text = e.to_string();
            if text.to_ascii_lowercase().contains("timeout") {
                (
                    408,
                    format!("Request Timeout ({text})"),
                    InviteFailure::Status(408),
                )
            } else {
                (
                    503,
                    format!("Service Unavailable ({text})"),
                    InviteFailure::Transport,
                )
            }
        }
        Err(e) => (
            500,
            format!("Server Internal Error ({e})"),
            InviteFailure::Status(500),
        ),
    };
    Some(InviteFailed {
        code,
        reason,
        failure,
    })
}

fn reason_of(resp: &Response) -> String {
    resp.wire_reason
        .clone()
        .unwrap_or_else(|| resp.status_code.text().to_string())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One INVITE sent: its dialog, its state stream and the transaction's outcome.
pub(crate) struct InviteAttempt {
    pub dialog: InviteDialog,
    pub states: DialogStateReceiver,
    pub handle: JoinHandle<InviteAsyncResult>,
}

/// What an outgoing call needs to be tried on the next PBX (see [`may_fail_over`]).
pub(crate) struct Failover {
    /// The call as the call layer asked for it.
    pub invite: OutgoingInvite,
    /// Where the current attempt went.
    pub target: SocketAddr,
    /// The PBXs still to try, in order.
    pub next: VecDeque<SocketAddr>,
}

/// Why the INVITE failed, for the call layer and for failover.
struct InviteFailed {
    code: u16,
    reason: String,
    failure: InviteFailure,
}

/// Everything the driver needs.
pub(crate) struct CallStart {
    pub ua: Arc<UaInner>,
    pub log_id: String,
    pub direction: CallDirection,
    pub dialog: InviteDialog,
    pub states: DialogStateReceiver,
    /// Outgoing: the INVITE transaction's outcome.
    pub invite: Option<JoinHandle<InviteAsyncResult>>,
    /// The SDP we sent in the INVITE (outgoing).
    pub offer: Option<String>,
    /// Outgoing calls to a PBX: how to retry on the next one.
    pub failover: Option<Failover>,
}

/// Starts the driver task and returns the handle.
pub(crate) fn start(start: CallStart) -> SipCall {
    let (events_tx, events) = mpsc::unbounded_channel();
    let shared = Arc::new(CallShared::default());
    if let Some(offer) = &start.offer {
        shared.set_sdp(offer);
    }
    let stop = CancellationToken::new();
    let policy = start.ua.timer_policy();
    let initial_answer = match start.direction {
        CallDirection::SipToWeb => policy.answer(&timer_headers(
            &start.dialog.initial_request().headers,
            false,
        )),
        CallDirection::WebToSip => UasAnswer::NoTimer,
    };
    let current = Arc::new(Mutex::new(start.dialog.clone()));
    let call = SipCall {
        log_id: start.log_id.clone(),
        direction: start.direction,
        current: current.clone(),
        events,
        shared: shared.clone(),
        stop: stop.clone(),
        answer_headers: other_headers(initial_answer.headers()),
    };
    let peer_allows_update = match start.direction {
        CallDirection::SipToWeb => allows_update(&start.dialog.initial_request().headers),
        CallDirection::WebToSip => false,
    };
    let span = tracing::info_span!("sip_call", call_id = %start.log_id);
    let sip_call_id = start.dialog.id().call_id;
    let requests = start.ua.open_door(&sip_call_id);
    let initial_cseq = match start.direction {
        CallDirection::SipToWeb => start
            .dialog
            .initial_request()
            .cseq_header()
            .ok()
            .and_then(|c| c.seq().ok()),
        CallDirection::WebToSip => None,
    };
    let (answers_tx, answers) = mpsc::unbounded_channel();
    let (refresh_tx, refreshes) = mpsc::unbounded_channel();
    let mut driver = Driver {
        ua: start.ua,
        direction: start.direction,
        dialog: start.dialog,
        events: events_tx,
        shared,
        sip_call_id,
        order: RequestOrder::new(initial_cseq),
        deferred: VecDeque::new(),
        answers_tx,
        policy,
        timer: SessionTimer::default(),
        initial_session: initial_answer.session(),
        peer_allows_update,
        refresh_tx,
        in_flight: FuturesUnordered::new(),
        current,
        silence_deadline: None,
        failover: start.failover,
        provisional_seen: false,
    };
    driver.arm_silence_deadline();
    driver.ua.call_started();
    tokio::spawn(
        driver
            .run(
                start.states,
                start.invite,
                requests,
                answers,
                refreshes,
                stop,
            )
            .instrument(span),
    );
    call
}

/// The call layer's answer to a re-INVITE/UPDATE (by CSeq): an SDP, or `None` for the last one;
/// with the session-timer part of our answer. Boxed: a channel's first block holds 32 items up
/// front in every call, and this one is used only on a re-offer.
type ReofferAnswer = Box<(u32, Method, Option<String>, UasAnswer)>;

/// How our session refresh ended: the final status (None: no response or not sent) and the
/// 2xx's session-timer headers. Boxed, as [`ReofferAnswer`].
type RefreshOutcome = Box<(Option<u16>, TimerHeaders)>;

struct Driver {
    ua: Arc<UaInner>,
    direction: CallDirection,
    dialog: InviteDialog,
    events: mpsc::UnboundedSender<SipCallEvent>,
    shared: Arc<CallShared>,
    /// The key of this call's door in the UA (closed when the driver ends).
    sip_call_id: String,
    /// Which in-dialog requests may enter, which a BYE cancels, which may still get a 200.
    order: RequestOrder<TransactionHandle>,
    /// Requests that arrived before the ACK of our 200, in order.
    deferred: VecDeque<Transaction>,
    answers_tx: mpsc::UnboundedSender<ReofferAnswer>,
    policy: TimerPolicy,
    /// RFC 4028: when to refresh or give the session up.
    timer: SessionTimer,
    /// The session our 200 to the initial INVITE grants (starts with the ACK).
    initial_session: Option<super::session_timer::Session>,
    /// The peer listed UPDATE in Allow: refresh with UPDATE, else re-INVITE.
    peer_allows_update: bool,
    refresh_tx: mpsc::UnboundedSender<RefreshOutcome>,
    /// rsipstack's handlers of in-dialog requests, polled by this task so that our answer to a
    /// re-offer is on the wire before the next request (a BYE behind it) is looked at.
    in_flight: FuturesUnordered<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// The handle's view of the current dialog (switched on failover).
    current: Arc<Mutex<InviteDialog>>,
    /// Outgoing calls to a PBX: the PBXs left to try.
    failover: Option<Failover>,
    /// A provisional answer beyond 100 Trying came: no failover from now on.
    provisional_seen: bool,
    /// While another PBX is left to try: when a PBX that has not answered at all is given up.
    silence_deadline: Option<Instant>,
}

/// Longest we wait for the call layer to answer a re-INVITE/UPDATE before reusing the last SDP.
const REOFFER_TIMEOUT: Duration = Duration::from_secs(10);

impl Driver {
    fn emit(&self, event: SipCallEvent) {
        // the handle may be gone: cleanup continues regardless
        let _ = self.events.send(event);
    }

    /// The driver's loop. Its rare steps (a dialog state, an in-dialog request, a failover, the
    /// close) are boxed futures: inline, the largest of them would be part of the task's memory
    /// for the whole call.
    // Not an `async fn`: that keeps its arguments twice in the future, once as arguments and
    // once as the locals they are moved into (rust-lang/rust#62958): 0.6–2.8 KB per call.
    #[allow(clippy::manual_async_fn)]
    fn run(
        mut self,
        states: DialogStateReceiver,
        mut invite: Option<JoinHandle<InviteAsyncResult>>,
        requests: Option<mpsc::UnboundedReceiver<DoorRequest>>,
        mut answers: mpsc::UnboundedReceiver<ReofferAnswer>,
        mut refreshes: mpsc::UnboundedReceiver<RefreshOutcome>,
        stop: CancellationToken,
    ) -> impl Future<Output = ()> + Send {
        async move {
            let mut failed = false;
            let mut requests = requests;
            let mut states = states;
            loop {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => {
                        Box::pin(self.cleanup_after_drop()).await;
                        break;
                    }
                    state = states.recv() => {
                        let Some(state) = state else { break };
                        let state = *state;
                        if let DialogState::Terminated(_, reason) = state {
                            if let Some(handle) = invite.take() {
                                // the INVITE's final response says why
                                if let Ok(r) = tokio::time::timeout(Duration::from_secs(5), handle).await {
                                    if let Some(failure) = invite_failure(r) {
                                        if let Some(next) = Box::pin(self.fail_over(&failure)).await {
                                            (states, invite, requests) = next;
                                            continue;
                                        }
                                        self.report_failure(failure);
                                        failed = true;
                                    }
                                }
                            }
                            self.terminated(reason, failed);
                            break;
                        }
                        if !matches!(state, DialogState::Calling(_)) {
                            // the PBX answered something: it is alive, Timer B decides from here
                            self.silence_deadline = None;
                        }
                        Box::pin(self.on_state(state)).await;
                    }
                    tx = recv_some(&mut requests) => match tx {
                        Some(tx) => Box::pin(self.on_request(*tx)).await,
                        None => requests = None,
                    },
                    Some(answer) = answers.recv() => {
                        let (cseq, method, sdp, timer) = *answer;
                        Box::pin(self.send_reoffer_answer(cseq, method, sdp, timer)).await
                    }
                    Some(()) = self.in_flight.next(), if !self.in_flight.is_empty() => {}
                    Some(outcome) = refreshes.recv() => {
                        let (code, headers) = *outcome;
                        self.refresh_done(code, headers)
                    }
                    _ = sleep_until(self.timer.deadline()) => self.on_timer(),
                    _ = sleep_until(self.silence_deadline) => {
                        self.silence_deadline = None;
                        let failure = InviteFailed {
                            code: 408,
                            reason: "Request Timeout (the PBX sent nothing, not even 100 Trying)".into(),
                            failure: InviteFailure::Status(408),
                        };
                        info!(reason = %failure.reason, "giving this PBX up");
                        // the unanswered INVITE stops here; no CANCEL before a provisional (RFC 3261 §9.1)
                        if let Some(handle) = invite.take() {
                            handle.abort();
                        }
                        if let Some(next) = Box::pin(self.fail_over(&failure)).await {
                            (states, invite, requests) = next;
                            continue;
                        }
                        self.report_failure(failure);
                        self.emit(SipCallEvent::Terminated);
                        break;
                    }
                    r = async { invite.as_mut().expect("guarded").await }, if invite.is_some() => {
                        invite = None;
                        if let Some(failure) = invite_failure(r) {
                            if let Some(next) = Box::pin(self.fail_over(&failure)).await {
                                (states, invite, requests) = next;
                                continue;
                            }
                            // failed without a Terminated state (timeout, transport error)
                            self.report_failure(failure);
                            self.emit(SipCallEvent::Terminated);
                            break;
                        }
                    }
                }
            }
            Box::pin(self.close(states, requests)).await;
            let rest = std::mem::take(&mut self.in_flight);
            if !rest.is_empty() {
                // the last answers (200 to the BYE, 487s) still go out
                tokio::spawn(rest.for_each(|_| async {}));
            }
            let id = self.dialog.id();
            self.ua.dialogs.remove_dialog(&id);
            self.ua.call_ended();
            debug!("call driver done");
        }
    }

    /// The dialog is over: nothing more enters it, and every request still waiting for our
    /// answer gets one (487 for a re-INVITE/UPDATE, 481 for the rest), never silence or a 200.
    async fn close(
        &mut self,
        mut states: DialogStateReceiver,
        requests: Option<mpsc::UnboundedReceiver<DoorRequest>>,
    ) {
        self.ua.close_door(&self.sip_call_id);
        for handle in self.order.end() {
            reply_on(handle, StatusCode::RequestTerminated);
        }
        while let Ok(state) = states.try_recv() {
            match *state {
                DialogState::Updated(_, _, handle) => {
                    reply_on(handle, StatusCode::RequestTerminated)
                }
                DialogState::Info(_, _, handle)
                | DialogState::Options(_, _, handle)
                | DialogState::Notify(_, _, handle)
                | DialogState::Message(_, _, handle)
                | DialogState::Refer(_, _, handle) => {
                    reply_on(handle, StatusCode::CallTransactionDoesNotExist)
                }
                _ => {}
            }
        }
        let mut late: Vec<Transaction> = self.deferred.drain(..).collect();
        if let Some(mut requests) = requests {
            while let Ok(tx) = requests.try_recv() {
                late.push(*tx);
            }
        }
        for mut tx in late {
            let code = match tx.original.method {
                Method::Ack => continue,
                Method::Invite | Method::Update => StatusCode::RequestTerminated,
                _ => StatusCode::CallTransactionDoesNotExist,
            };
            debug!(method = %tx.original.method, code = code.code(), "request after the dialog ended");
            tokio::spawn(async move {
                let _ = tx.reply(code).await;
            });
        }
    }

    /// An in-dialog request from the UA's dispatcher, in arrival order.
    async fn on_request(&mut self, mut tx: Transaction) {
        let method = tx.original.method;
        let waiting_ack = matches!(self.dialog.state(), DialogState::WaitAck(..));
        if waiting_ack && (method != Method::Bye || !self.deferred.is_empty()) {
            // a re-INVITE can overtake the ACK of our 200 (both cross the PBX): keep the order
            // and let it in once the ACK has confirmed the dialog
            self.deferred.push_back(tx);
            return;
        }
        let Some(cseq) = tx.original.cseq_header().ok().and_then(|c| c.seq().ok()) else {
            info!(%method, "in-dialog request without a usable CSeq: 400");
            tokio::spawn(async move {
                let _ = tx.reply(StatusCode::BadRequest).await;
            });
            return;
        };
        match self.order.admit(&method, cseq) {
            Admit::OutOfOrder { last } => {
                info!(%method, cseq, last, "in-dialog request with an old CSeq: 500");
                tokio::spawn(async move {
                    let _ = tx
                        .reply_with(
                            StatusCode::ServerInternalError,
                            vec![Header::Other("Retry-After".into(), "0".into())],
                            None,
                        )
                        .await;
                });
            }
            Admit::Ended => {
                info!(%method, cseq, "request after BYE: 481");
                let code = StatusCode::CallTransactionDoesNotExist;
                tokio::spawn(async move {
                    let _ = tx.reply(code).await;
                });
            }
            Admit::Proceed { cancelled } => {
                for handle in cancelled {
                    info!("BYE while a re-offer was pending: 487 to the re-offer");
                    reply_on(handle, StatusCode::RequestTerminated);
                }
                self.enter_dialog(tx).await;
            }
        }
    }

    /// Hands `tx` to rsipstack's dialog. Its first steps (CSeq bookkeeping, the state event that
    /// carries the answer handle) run here, so the dialog sees requests in arrival order; the rest
    /// (waiting for our answer, the ACK) runs in a task of its own.
    async fn enter_dialog(&mut self, mut tx: Transaction) {
        let Some(mut dialog) = self.ua.dialogs.match_dialog(&tx) else {
            debug!(method = %tx.original.method, "no dialog for the request: 481");
            tokio::spawn(async move {
                let _ = tx.reply(StatusCode::CallTransactionDoesNotExist).await;
            });
            return;
        };
        self.in_flight.push(Box::pin(
            async move {
                let method = tx.original.method;
                if let Err(e) = dialog.handle(&mut tx).await {
                    debug!(%method, error = %e, "in-dialog request");
                }
            }
            .in_current_span(),
        ));
        self.run_ready().await;
    }

    /// Polls the request handlers that can make progress now, until none can.
    async fn run_ready(&mut self) {
        let in_flight = &mut self.in_flight;
        std::future::poll_fn(|cx| {
            while let Poll::Ready(Some(())) = in_flight.poll_next_unpin(cx) {}
            Poll::Ready(())
        })
        .await
    }

    /// The ACK confirmed the dialog (or it ended): the requests held back go in, in order.
    async fn flush_deferred(&mut self) {
        while let Some(tx) = self.deferred.pop_front() {
            self.on_request(tx).await;
        }
    }

    /// A PBX that does not answer an INVITE at all within 4*T1 (three sends over UDP; a live
    /// PBX sends 100 Trying at once) is given up for the next one, as Kamailio's dispatcher does
    /// with a short `fr_timer`, instead of waiting for Timer B (64*T1). Only while another PBX is
    /// left: the last one gets the whole Timer B.
    fn arm_silence_deadline(&mut self) {
        self.silence_deadline = self
            .failover
            .as_ref()
            .filter(|f| !f.next.is_empty())
            .map(|_| Instant::now() + self.ua.opts.t1.max(Duration::from_millis(10)) * 4);
    }

    /// Tells the call layer the INVITE failed.
    fn report_failure(&self, failure: InviteFailed) {
        let InviteFailed { code, reason, .. } = failure;
        info!(code, reason = %reason, "outgoing call failed");
        self.emit(SipCallEvent::Failed { code, reason });
    }

    /// The INVITE failed: if the failover rule allows it and a PBX is left, sends the INVITE
    /// there and switches the call to the new dialog; returns its states, outcome and requests.
    async fn fail_over(
        &mut self,
        failed: &InviteFailed,
    ) -> Option<(
        DialogStateReceiver,
        Option<JoinHandle<InviteAsyncResult>>,
        Option<mpsc::UnboundedReceiver<DoorRequest>>,
    )> {
        let failover = self.failover.as_mut()?;
        if failed.failure == InviteFailure::Transport {
            self.ua
                .on_call_transport_error(failover.target, &failed.reason);
        }
        if !may_fail_over(failed.failure, self.provisional_seen)
            || self.shared.local_end.load(Ordering::SeqCst)
        {
            return None;
        }
        while let Some(next) = failover.next.pop_front() {
            info!(code = failed.code, reason = %failed.reason, failed_pbx = %failover.target, next_pbx = %next, "no answer from this PBX: trying the next one");
            let attempt = match self.ua.send_invite(&failover.invite, next).await {
                Ok(attempt) => attempt,
                Err(e) => {
                    warn!(pbx = %next, error = %e, "INVITE not sent");
                    continue;
                }
            };
            failover.target = next;
            self.ua.opts.metrics.call_failovers.inc();
            let cancelled = {
                let mut current = lock(&self.current);
                *current = attempt.dialog.clone();
                self.shared.local_end.load(Ordering::SeqCst)
            };
            if cancelled {
                // the call layer cancelled while this INVITE went out: cancel it too
                let dialog = attempt.dialog.clone();
                tokio::spawn(async move {
                    let _ = dialog.cancel().await;
                });
            }
            let old = self.dialog.id();
            self.ua.dialogs.remove_dialog(&old);
            self.ua.close_door(&self.sip_call_id);
            self.dialog = attempt.dialog;
            self.sip_call_id = self.dialog.id().call_id;
            let requests = self.ua.open_door(&self.sip_call_id);
            // The call's reports and events carry the dialog that may answer, not the first.
            self.emit(SipCallEvent::Dialog {
                sip_call_id: self.sip_call_id.clone(),
            });
            self.arm_silence_deadline();
            return Some((attempt.states, Some(attempt.handle), requests));
        }
        None
    }

    fn terminated(&self, reason: TerminatedReason, already_failed: bool) {
        let role = self.dialog.role();
        let local = self.shared.local_end.load(Ordering::SeqCst);
        debug!(?reason, local, "dialog terminated");
        match reason {
            TerminatedReason::UacBye if role == TransactionRole::Server && !local => {
                info!("remote BYE");
                self.emit(SipCallEvent::RemoteBye);
            }
            TerminatedReason::UasBye if role == TransactionRole::Client && !local => {
                info!("remote BYE");
                self.emit(SipCallEvent::RemoteBye);
            }
            TerminatedReason::UacCancel if role == TransactionRole::Server => {
                info!("caller cancelled (487 sent)");
                self.emit(SipCallEvent::Canceled);
            }
            TerminatedReason::Timeout if !already_failed => {
                warn!("no ACK for our 200 OK: call ended");
                self.emit(SipCallEvent::Failed {
                    code: 408,
                    reason: "Request Timeout (no ACK)".into(),
                });
            }
            TerminatedReason::UasOther(code) | TerminatedReason::UacOther(code)
                if !already_failed && !local =>
            {
                self.emit(SipCallEvent::Failed {
                    code: code.code(),
                    reason: code.text().to_string(),
                });
            }
            _ => {}
        }
        self.emit(SipCallEvent::Terminated);
    }

    async fn on_state(&mut self, state: DialogState) {
        match state {
            DialogState::Early(_, resp) if self.direction == CallDirection::WebToSip => {
                self.provisional_seen = true;
                let sdp = body_text(&resp.body);
                if let Some(sdp) = &sdp {
                    trace!(sdp = ?sdp, "early SDP");
                }
                info!(code = resp.status_code.code(), "provisional response");
                self.emit(SipCallEvent::Provisional {
                    code: resp.status_code.code(),
                    sdp,
                });
            }
            DialogState::Confirmed(_, resp) if self.direction == CallDirection::WebToSip => {
                if !self.shared.answered.swap(true, Ordering::SeqCst) {
                    let sdp = body_text(&resp.body).unwrap_or_default();
                    trace!(sdp = ?sdp, "answer SDP");
                    info!("answered");
                    self.peer_allows_update = allows_update(&resp.headers);
                    let session = session_from_2xx(&timer_headers(&resp.headers, true));
                    self.start_session(session);
                    self.emit(SipCallEvent::Answered { sdp });
                }
            }
            DialogState::Confirmed(..) => {
                debug!("dialog confirmed");
                if let Some(session) = self.initial_session.take() {
                    self.start_session(Some(session));
                }
                self.flush_deferred().await;
            }
            DialogState::Updated(_, req, handle) => self.reoffer(req, handle).await,
            DialogState::Info(_, req, handle) => {
                debug!(content_type = ?req_content_type(&req), "INFO answered 200");
                reply_ok(handle);
            }
            DialogState::Options(_, _, handle)
            | DialogState::Notify(_, _, handle)
            | DialogState::Message(_, _, handle) => reply_ok(handle),
            DialogState::Refer(_, _, handle) => reply_on(handle, StatusCode::Decline),
            other => trace!(state = %other, "dialog state"),
        }
    }

    /// A re-INVITE/UPDATE: ask the call layer; its answer (or our last SDP) comes back through
    /// `answers`, so a BYE that crossed it is seen first.
    async fn reoffer(&mut self, req: Request, handle: TransactionHandle) {
        let cseq = req
            .cseq_header()
            .ok()
            .and_then(|c| c.seq().ok())
            .unwrap_or(0);
        if let Some(handle) = self.order.entered(cseq, handle) {
            info!(cseq, "re-offer after the dialog ended: 487");
            reply_on(handle, StatusCode::RequestTerminated);
            return;
        }
        let timer = self.policy.answer(&timer_headers(&req.headers, false));
        if let UasAnswer::TooBrief { min_se } = timer {
            info!(
                cseq,
                min_se, "re-offer's session interval below min_se: 422"
            );
            if let Some(handle) = self.order.answer(cseq) {
                let headers = vec![Header::Other("Min-SE".into(), min_se.to_string())];
                tokio::spawn(async move {
                    let _ = handle
                        .respond(StatusCode::SessionIntervalTooSmall, Some(headers), None)
                        .await;
                });
            }
            return;
        }
        let offer = body_text(&req.body);
        let method = req.method;
        if method == Method::Update && offer.is_none() {
            // a session refresh (RFC 4028) or target refresh: nothing for the media to answer
            debug!(cseq, "UPDATE without SDP answered 200");
            self.send_reoffer_answer(cseq, method, None, timer).await;
            return;
        }
        info!(%method, with_offer = offer.is_some(), "re-offer from the remote side");
        if let Some(sdp) = &offer {
            trace!(sdp = ?sdp, "re-offer SDP");
        }
        let (reply, answer) = oneshot::channel();
        self.emit(SipCallEvent::Reoffer { sdp: offer, reply });
        let answers = self.answers_tx.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let chosen = match tokio::time::timeout(REOFFER_TIMEOUT, answer).await {
                Ok(Ok(Some(sdp))) => Some(sdp),
                // no answer from the call layer: the SDP we last sent
                _ => shared.sdp().map(|s| bump_origin_version(&s)),
            };
            let _ = answers.send(Box::new((cseq, method, chosen, timer)));
        });
    }

    /// Sends our answer to the re-offer `cseq`, unless a BYE ended the dialog first (then it
    /// already got 487).
    async fn send_reoffer_answer(
        &mut self,
        cseq: u32,
        method: Method,
        answer: Option<String>,
        timer: UasAnswer,
    ) {
        let Some(handle) = self.order.answer(cseq) else {
            debug!(cseq, "re-offer already answered");
            return;
        };
        // `None`: no SDP to send (an UPDATE without offer gets a 200 without answer, RFC 3311)
        let chosen = answer;
        if chosen.is_some() || method == Method::Update {
            // a 2xx to the peer's re-INVITE/UPDATE refreshes the session (RFC 4028 §10)
            if timer.session().is_some() || self.timer.session().is_some() {
                debug!(interval = ?timer.session().map(|s| s.interval), "session refreshed by the peer");
            }
            self.timer.refreshed(Instant::now(), timer.session());
        }
        let timer_headers = other_headers(timer.headers());
        let result = match chosen {
            Some(sdp) => {
                self.shared.set_sdp(&sdp);
                trace!(sdp = ?sdp, "re-offer answer SDP");
                let mut headers = vec![Header::ContentType("application/sdp".into())];
                headers.extend(timer_headers);
                handle
                    .respond(StatusCode::OK, Some(headers), Some(sdp.into_bytes()))
                    .await
            }
            None if method == Method::Update => {
                handle
                    .respond(StatusCode::OK, Some(timer_headers), None)
                    .await
            }
            None => handle.reply(StatusCode::NotAcceptableHere).await,
        };
        if result.is_err() {
            debug!("re-offer transaction already gone");
        }
        // the handler sends it now, before the driver looks at the next request
        self.run_ready().await;
    }

    /// The dialog is up: run the session timer it negotiated (if any).
    fn start_session(&mut self, session: Option<super::session_timer::Session>) {
        if let Some(s) = session {
            info!(
                interval_s = s.interval.as_secs(),
                refresher = if s.we_refresh { "bridge" } else { "peer" },
                "session timer running"
            );
        }
        self.timer.refreshed(Instant::now(), session);
    }

    fn on_timer(&mut self) {
        match self.timer.poll(Instant::now()) {
            Some(TimerAction::Refresh) => self.send_refresh(),
            Some(TimerAction::Expire) => {
                warn!("session timer expired: no refresh from the peer, sending BYE");
                self.ua.opts.metrics.call_ended(Ending::SessionExpired);
                self.end_with_bye();
            }
            None => {}
        }
    }

    /// Sends our session refresh (UPDATE without a body when the peer allows it, else a
    /// re-INVITE with the SDP we last sent); its outcome comes back through `refreshes`.
    fn send_refresh(&self) {
        let Some(session) = self.timer.session() else {
            return;
        };
        let mut headers = other_headers(self.policy.offer(Some(session.interval)));
        let dialog = self.dialog.clone();
        let results = self.refresh_tx.clone();
        let use_update = self.peer_allows_update;
        let sdp = self.shared.sdp();
        info!(
            method = if use_update { "UPDATE" } else { "INVITE" },
            "refreshing the session"
        );
        tokio::spawn(
            async move {
                let response = if use_update {
                    dialog.update(Some(headers), None).await
                } else {
                    headers.push(Header::ContentType("application/sdp".into()));
                    dialog
                        .reinvite(Some(headers), sdp.map(String::into_bytes))
                        .await
                };
                let outcome = match response {
                    Ok(Some(resp)) => (
                        Some(resp.status_code.code()),
                        timer_headers(&resp.headers, true),
                    ),
                    Ok(None) => (None, TimerHeaders::default()),
                    Err(e) => {
                        debug!(error = %e, "session refresh failed");
                        (Some(408), TimerHeaders::default())
                    }
                };
                let _ = results.send(Box::new(outcome));
            }
            .in_current_span(),
        );
    }

    /// RFC 4028 §10: a 2xx renews the session; 408/481 (or no answer) ends it; anything else is
    /// retried before the expiry.
    fn refresh_done(&mut self, code: Option<u16>, headers: TimerHeaders) {
        match code {
            Some(200..=299) => {
                debug!("session refresh answered");
                self.timer
                    .refreshed(Instant::now(), session_from_2xx(&headers));
            }
            Some(408 | 481) => {
                warn!(code, "session refresh failed: sending BYE");
                self.end_with_bye();
            }
            other => {
                info!(code = ?other, "session refresh refused; retrying");
                self.timer.refresh_failed(Instant::now());
            }
        }
    }

    /// The bridge ends the call: BYE (the dialog's `Terminated` follows, and with it the call
    /// layer's hang-up toward the browser).
    fn end_with_bye(&self) {
        self.shared.local_end.store(true, Ordering::SeqCst);
        let dialog = self.dialog.clone();
        tokio::spawn(
            async move {
                if let Err(e) = timeout(dialog.bye()).await {
                    debug!(error = %e, "BYE");
                }
            }
            .in_current_span(),
        );
    }

    /// The handle was dropped: end the call in whatever way fits its state.
    async fn cleanup_after_drop(&mut self) {
        let state = self.dialog.state();
        let result = match (&state, self.direction) {
            (DialogState::Terminated(..), _) => Ok(()),
            (DialogState::Confirmed(..) | DialogState::WaitAck(..), _) => {
                info!("handle dropped: sending BYE");
                timeout(self.dialog.bye()).await
            }
            (_, CallDirection::WebToSip) => {
                info!("handle dropped: cancelling");
                timeout(self.dialog.cancel()).await
            }
            (_, CallDirection::SipToWeb) => {
                info!("handle dropped before answer: 480");
                self.dialog
                    .reject(Some(StatusCode::TemporarilyUnavailable), None)
                    .map_err(|e| e.to_string())
            }
        };
        if let Err(e) = result {
            debug!(error = %e, "cleanup after drop");
        }
    }
}

async fn timeout<F>(f: F) -> Result<(), String>
where
    F: std::future::Future<Output = rsipstack::Result<()>>,
{
    match tokio::time::timeout(Duration::from_secs(5), f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

fn reply_ok(handle: TransactionHandle) {
    reply_on(handle, StatusCode::OK);
}

/// Answers a request the dialog handed over (without waiting for the send).
fn reply_on(handle: TransactionHandle, code: StatusCode) {
    tokio::spawn(async move {
        let _ = handle.reply(code).await;
    });
}

/// The RFC 4028 headers of a request (`timer` in Supported) or a 2xx (`timer` in Require),
/// long or compact names.
pub(crate) fn timer_headers(headers: &rsipstack::sip::Headers, response: bool) -> TimerHeaders {
    let token_names: &[&str] = if response {
        &["Require"]
    } else {
        &["Supported", "k"]
    };
    let named = |names: &[&str]| -> Vec<String> {
        headers
            .iter()
            .filter(|h| names.iter().any(|n| h.name().eq_ignore_ascii_case(n)))
            .map(|h| h.value().to_string())
            .collect()
    };
    let tokens = named(token_names);
    let session_expires = named(&["Session-Expires", "x"]).into_iter().next();
    let min_se = named(&["Min-SE"]).into_iter().next();
    TimerHeaders::parse(
        tokens.iter().map(String::as_str),
        session_expires.as_deref(),
        min_se.as_deref(),
    )
}

/// Whether an Allow header lists UPDATE.
fn allows_update(headers: &rsipstack::sip::Headers) -> bool {
    headers
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case("Allow"))
        .flat_map(|h| {
            h.value()
                .split(',')
                .map(|m| m.trim().eq_ignore_ascii_case("UPDATE"))
                .collect::<Vec<_>>()
        })
        .any(|b| b)
}

/// (name, value) pairs as extension headers.
pub(crate) fn other_headers(pairs: Vec<(&'static str, String)>) -> Vec<Header> {
    pairs
        .into_iter()
        .map(|(name, value)| Header::Other(name.into(), value))
        .collect()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn recv_some<T>(rx: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn req_content_type(req: &Request) -> Option<String> {
    use rsipstack::sip::prelude::HeadersExt;
    req.header_value("Content-Type")
}
