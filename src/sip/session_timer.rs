//! RFC 4028 session timers, sans-IO: what to put in our answers and offers, and, fed the
//! refreshes of the dialog and the time, when to refresh or give the session up.
//!
//! Negotiation is per request: the sender of an INVITE/re-INVITE/UPDATE is its "uac", so
//! `refresher=uac` in the peer's request means the peer refreshes, in ours that we do.

use std::time::{Duration, Instant};

/// Our side of the negotiation (`[sip] session_expires`, `min_se`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimerPolicy {
    /// Interval we offer and grant; zero: only when the peer asks for one.
    pub session_expires: Duration,
    /// Shortest interval we accept.
    pub min_se: Duration,
}

/// Who refreshes, as written on the wire (relative to the request carrying it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WireRefresher {
    Uac,
    Uas,
}

impl WireRefresher {
    fn as_str(self) -> &'static str {
        match self {
            WireRefresher::Uac => "uac",
            WireRefresher::Uas => "uas",
        }
    }
}

/// The session-timer headers of a request or a 2xx, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TimerHeaders {
    /// `timer` in Supported (requests) or Require (responses).
    pub timer_supported: bool,
    /// Session-Expires delta-seconds and its refresher parameter.
    pub session_expires: Option<(u64, Option<WireRefresher>)>,
    /// Min-SE delta-seconds.
    pub min_se: Option<u64>,
}

impl TimerHeaders {
    /// From the header values (`supported`: every Supported/Require value; the others the
    /// first header of that name, long or compact form). Unparseable values count as absent.
    pub(crate) fn parse<'a>(
        supported: impl IntoIterator<Item = &'a str>,
        session_expires: Option<&str>,
        min_se: Option<&str>,
    ) -> TimerHeaders {
        let timer_supported = supported
            .into_iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("timer"));
        let session_expires = session_expires.and_then(|v| {
            let mut parts = v.split(';');
            let secs = parts.next()?.trim().parse::<u64>().ok()?;
            let refresher = parts.find_map(|p| {
                let (name, value) = p.split_once('=')?;
                if !name.trim().eq_ignore_ascii_case("refresher") {
                    return None;
                }
                match value.trim().to_ascii_lowercase().as_str() {
                    "uac" => Some(WireRefresher::Uac),
                    "uas" => Some(WireRefresher::Uas),
                    _ => None,
                }
            });
            (secs > 0).then_some((secs, refresher))
        });
        let min_se = min_se.and_then(|v| v.split(';').next()?.trim().parse::<u64>().ok());
        TimerHeaders {
            timer_supported,
            session_expires,
            min_se,
        }
    }
}

/// A negotiated session timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Session {
    /// The session interval.
    pub interval: Duration,
    /// Whether the bridge sends the refreshes (else the peer must).
    pub we_refresh: bool,
}

/// How to answer a peer's INVITE/re-INVITE/UPDATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UasAnswer {
    /// No session timer: nothing to add.
    NoTimer,
    /// The interval asked for is below our minimum: 422 with this Min-SE (seconds).
    TooBrief { min_se: u64 },
    /// Our 2xx carries `Session-Expires: interval;refresher=…` (and `Require: timer` when the
    /// peer supports it).
    Timer {
        /// Seconds.
        interval: u64,
        /// As written in the 2xx.
        refresher: WireRefresher,
        /// `Require: timer` (the peer said it supports timers).
        require: bool,
    },
}

impl UasAnswer {
    /// The headers for our 2xx, as (name, value).
    pub(crate) fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            UasAnswer::Timer {
                interval,
                refresher,
                require,
            } => {
                let mut headers = vec![(
                    "Session-Expires",
                    format!("{interval};refresher={}", refresher.as_str()),
                )];
                if *require {
                    headers.push(("Require", "timer".to_string()));
                }
                headers
            }
            _ => Vec::new(),
        }
    }

    /// The session this answer sets up (for the peer's request).
    pub(crate) fn session(&self) -> Option<Session> {
        match self {
            UasAnswer::Timer {
                interval,
                refresher,
                ..
            } => Some(Session {
                interval: Duration::from_secs(*interval),
                we_refresh: *refresher == WireRefresher::Uas,
            }),
            _ => None,
        }
    }
}

impl TimerPolicy {
    /// RFC 4028 §9: the answer to a peer's session (refresh) request carrying `req`.
    pub(crate) fn answer(&self, req: &TimerHeaders) -> UasAnswer {
        let our_min = self.min_se.as_secs().max(1);
        let floor = our_min.max(req.min_se.unwrap_or(0));
        match req.session_expires {
            Some((asked, _)) if asked < our_min => UasAnswer::TooBrief { min_se: our_min },
            Some((asked, refresher)) => {
                // we may shorten it to ours, never below either Min-SE
                let ours = self.session_expires.as_secs();
                let interval = if ours > 0 && ours < asked {
                    ours.max(floor).min(asked)
                } else {
                    asked
                };
                let refresher = match (refresher, req.timer_supported) {
                    (Some(r), true) => r,
                    // a peer without timer support cannot refresh for us
                    (_, false) => WireRefresher::Uas,
                    (None, true) => WireRefresher::Uac,
                };
                UasAnswer::Timer {
                    interval,
                    refresher,
                    require: req.timer_supported,
                }
            }
            None if req.timer_supported && !self.session_expires.is_zero() => UasAnswer::Timer {
                interval: self.session_expires.as_secs().max(floor),
                refresher: WireRefresher::Uac,
                require: true,
            },
            None => UasAnswer::NoTimer,
        }
    }

    /// Headers for a request we send (initial INVITE or refresh), as (name, value): always
    /// `Supported: timer`; Session-Expires/Min-SE unless timers are off. `current` is the interval
    /// of a refresh (we asked to refresh it ourselves).
    pub(crate) fn offer(&self, current: Option<Duration>) -> Vec<(&'static str, String)> {
        let mut headers = vec![("Supported", "timer".to_string())];
        let interval = current.unwrap_or(self.session_expires);
        if !interval.is_zero() {
            let value = match current {
                Some(_) => format!("{};refresher=uac", interval.as_secs()),
                None => interval.as_secs().to_string(),
            };
            headers.push(("Session-Expires", value));
            headers.push(("Min-SE", self.min_se.as_secs().max(1).to_string()));
        }
        headers
    }
}

/// RFC 4028 §7.2: the session a 2xx to our request sets up (None: no Session-Expires, no timer).
pub(crate) fn session_from_2xx(resp: &TimerHeaders) -> Option<Session> {
    let (secs, refresher) = resp.session_expires?;
    Some(Session {
        interval: Duration::from_secs(secs),
        // absent: the answerer did not pick, so we (the request's uac) refresh
        we_refresh: refresher != Some(WireRefresher::Uas),
    })
}

/// What the timer asks the driver to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerAction {
    /// Send a refresh (re-INVITE with the same SDP, or UPDATE).
    Refresh,
    /// The session expired without a refresh: BYE.
    Expire,
}

/// The running timer of one dialog.
#[derive(Debug, Clone, Default)]
pub(crate) struct SessionTimer {
    session: Option<Session>,
    refreshed_at: Option<Instant>,
    /// Our next refresh attempt (when we refresh and none is in flight).
    next_refresh: Option<Instant>,
}

impl SessionTimer {
    /// A successful INVITE/re-INVITE/UPDATE (2xx either way) at `now` set up `session` (None: no
    /// timer from now on).
    pub(crate) fn refreshed(&mut self, now: Instant, session: Option<Session>) {
        self.session = session;
        self.refreshed_at = Some(now);
        self.next_refresh = session
            .filter(|s| s.we_refresh)
            .map(|s| now + s.interval / 2);
    }

    /// The current session, if a timer runs.
    pub(crate) fn session(&self) -> Option<Session> {
        self.session
    }

    /// When the session is over without a refresh: interval minus min(32 s, interval/3) (§10).
    fn expiry(&self) -> Option<Instant> {
        let s = self.session?;
        let margin = (s.interval / 3).min(Duration::from_secs(32));
        Some(self.refreshed_at? + s.interval - margin)
    }

    /// When [`SessionTimer::poll`] has something to do next.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let expiry = self.expiry()?;
        Some(self.next_refresh.map_or(expiry, |r| r.min(expiry)))
    }

    /// What is due at `now`. A `Refresh` is returned once; report its outcome with
    /// [`SessionTimer::refreshed`] or [`SessionTimer::refresh_failed`].
    pub(crate) fn poll(&mut self, now: Instant) -> Option<TimerAction> {
        let expiry = self.expiry()?;
        if now >= expiry {
            self.session = None;
            return Some(TimerAction::Expire);
        }
        match self.next_refresh {
            Some(at) if now >= at => {
                self.next_refresh = None;
                Some(TimerAction::Refresh)
            }
            _ => None,
        }
    }

    /// Our refresh got an error that does not end the dialog (e.g. 491): try again halfway to
    /// the expiry (at least a second later).
    pub(crate) fn refresh_failed(&mut self, now: Instant) {
        if let Some(expiry) = self.expiry() {
            let half = expiry.saturating_duration_since(now) / 2;
            self.next_refresh = Some(now + half.max(Duration::from_secs(1)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: TimerPolicy = TimerPolicy {
        session_expires: Duration::from_secs(1800),
        min_se: Duration::from_secs(90),
    };

    fn req(supported: bool, se: Option<&str>, min_se: Option<&str>) -> TimerHeaders {
        TimerHeaders::parse(supported.then_some("timer, path, replaces"), se, min_se)
    }

    #[test]
    fn parses_headers_as_phones_send_them() {
        let h = TimerHeaders::parse(
            ["path", "Timer , replaces"],
            Some("90;refresher=UAC"),
            Some("90"),
        );
        assert!(h.timer_supported);
        assert_eq!(h.session_expires, Some((90, Some(WireRefresher::Uac))));
        assert_eq!(h.min_se, Some(90));
        let h = TimerHeaders::parse(["100rel"], Some(" 1800 ; x=y"), None);
        assert!(!h.timer_supported);
        assert_eq!(h.session_expires, Some((1800, None)));
    }

    #[test]
    fn bad_header_values_count_as_absent() {
        for bad in [
            "",
            "abc",
            "-5",
            "0",
            "99999999999999999999999",
            ";refresher=uac",
        ] {
            let h = TimerHeaders::parse([], Some(bad), Some(bad));
            assert_eq!(h.session_expires, None, "{bad:?}");
        }
        let h = TimerHeaders::parse([], Some("90;refresher=both"), Some("x"));
        assert_eq!(h.session_expires, Some((90, None)));
        assert_eq!(h.min_se, None);
    }

    #[test]
    fn uac_refresher_choice_is_honoured() {
        let answer = POLICY.answer(&req(true, Some("90;refresher=uac"), None));
        assert_eq!(
            answer,
            UasAnswer::Timer {
                interval: 90,
                refresher: WireRefresher::Uac,
                require: true
            }
        );
        assert_eq!(
            answer.headers(),
            vec![
                ("Session-Expires", "90;refresher=uac".to_string()),
                ("Require", "timer".to_string())
            ]
        );
        assert_eq!(
            answer.session(),
            Some(Session {
                interval: Duration::from_secs(90),
                we_refresh: false
            })
        );
        let answer = POLICY.answer(&req(true, Some("600;refresher=uas"), None));
        assert_eq!(answer.session().map(|s| s.we_refresh), Some(true));
    }

    #[test]
    fn supported_timer_without_session_expires_gets_ours_with_the_peer_refreshing() {
        let answer = POLICY.answer(&req(true, None, None));
        assert_eq!(
            answer.headers(),
            vec![
                ("Session-Expires", "1800;refresher=uac".to_string()),
                ("Require", "timer".to_string())
            ]
        );
        // the peer's Min-SE raises it
        let answer = POLICY.answer(&req(true, None, Some("3600")));
        assert_eq!(answer.session().map(|s| s.interval.as_secs()), Some(3600));
    }

    #[test]
    fn below_our_minimum_is_422_with_our_min_se() {
        assert_eq!(
            POLICY.answer(&req(true, Some("60"), None)),
            UasAnswer::TooBrief { min_se: 90 }
        );
    }

    #[test]
    fn a_longer_interval_is_shortened_to_ours_but_not_below_the_peers_min_se() {
        let answer = POLICY.answer(&req(true, Some("7200"), None));
        assert_eq!(answer.session().map(|s| s.interval.as_secs()), Some(1800));
        let answer = POLICY.answer(&req(true, Some("7200"), Some("2000")));
        assert_eq!(answer.session().map(|s| s.interval.as_secs()), Some(2000));
    }

    #[test]
    fn peer_without_timer_support_makes_us_the_refresher_without_require() {
        let answer = POLICY.answer(&req(false, Some("300;refresher=uac"), None));
        assert_eq!(
            answer,
            UasAnswer::Timer {
                interval: 300,
                refresher: WireRefresher::Uas,
                require: false
            }
        );
        assert_eq!(POLICY.answer(&req(false, None, None)), UasAnswer::NoTimer);
    }

    #[test]
    fn timers_off_still_honour_a_peer_that_asks() {
        let off = TimerPolicy {
            session_expires: Duration::ZERO,
            ..POLICY
        };
        assert_eq!(off.answer(&req(true, None, None)), UasAnswer::NoTimer);
        assert!(off
            .answer(&req(true, Some("120;refresher=uac"), None))
            .session()
            .is_some());
        assert_eq!(off.offer(None), vec![("Supported", "timer".to_string())]);
    }

    #[test]
    fn our_offers_carry_supported_session_expires_and_min_se() {
        assert_eq!(
            POLICY.offer(None),
            vec![
                ("Supported", "timer".to_string()),
                ("Session-Expires", "1800".to_string()),
                ("Min-SE", "90".to_string())
            ]
        );
        assert_eq!(
            POLICY.offer(Some(Duration::from_secs(90)))[1],
            ("Session-Expires", "90;refresher=uac".to_string())
        );
    }

    #[test]
    fn the_2xx_decides_who_refreshes_our_request() {
        let uas = TimerHeaders::parse(["timer"], Some("1800;refresher=uas"), None);
        assert_eq!(session_from_2xx(&uas).map(|s| s.we_refresh), Some(false));
        let uac = TimerHeaders::parse(["timer"], Some("1800;refresher=uac"), None);
        assert_eq!(session_from_2xx(&uac).map(|s| s.we_refresh), Some(true));
        let bare = TimerHeaders::parse([], Some("1800"), None);
        assert_eq!(session_from_2xx(&bare).map(|s| s.we_refresh), Some(true));
        assert_eq!(session_from_2xx(&TimerHeaders::default()), None);
    }

    fn session(secs: u64, we_refresh: bool) -> Option<Session> {
        Some(Session {
            interval: Duration::from_secs(secs),
            we_refresh,
        })
    }

    #[test]
    fn we_refresh_at_half_the_interval() {
        let t0 = Instant::now();
        let mut timer = SessionTimer::default();
        timer.refreshed(t0, session(90, true));
        assert_eq!(timer.deadline(), Some(t0 + Duration::from_secs(45)));
        assert_eq!(timer.poll(t0 + Duration::from_secs(44)), None);
        assert_eq!(
            timer.poll(t0 + Duration::from_secs(45)),
            Some(TimerAction::Refresh)
        );
        assert_eq!(timer.poll(t0 + Duration::from_secs(46)), None, "once");
        // in flight: the next deadline is the expiry, 90 - 30 s
        assert_eq!(timer.deadline(), Some(t0 + Duration::from_secs(60)));
        let t1 = t0 + Duration::from_secs(46);
        timer.refreshed(t1, session(90, true));
        assert_eq!(timer.deadline(), Some(t1 + Duration::from_secs(45)));
    }

    #[test]
    fn peer_refresher_that_never_refreshes_expires_the_session() {
        let t0 = Instant::now();
        let mut timer = SessionTimer::default();
        timer.refreshed(t0, session(1800, false));
        // min(32 s, 600 s) before the end
        assert_eq!(timer.deadline(), Some(t0 + Duration::from_secs(1768)));
        assert_eq!(timer.poll(t0 + Duration::from_secs(1767)), None);
        assert_eq!(
            timer.poll(t0 + Duration::from_secs(1768)),
            Some(TimerAction::Expire)
        );
        assert_eq!(timer.deadline(), None, "expires once");
        // a short interval keeps a third of it
        timer.refreshed(t0, session(6, false));
        assert_eq!(timer.deadline(), Some(t0 + Duration::from_secs(4)));
    }

    #[test]
    fn a_peer_refresh_pushes_the_expiry_back() {
        let t0 = Instant::now();
        let mut timer = SessionTimer::default();
        timer.refreshed(t0, session(90, false));
        let t1 = t0 + Duration::from_secs(40);
        assert_eq!(timer.poll(t1), None);
        timer.refreshed(t1, session(90, false));
        assert_eq!(timer.poll(t0 + Duration::from_secs(61)), None);
        assert_eq!(timer.deadline(), Some(t1 + Duration::from_secs(60)));
    }

    #[test]
    fn a_failed_refresh_is_retried_before_the_expiry_then_expires() {
        let t0 = Instant::now();
        let mut timer = SessionTimer::default();
        timer.refreshed(t0, session(90, true));
        let t1 = t0 + Duration::from_secs(45);
        assert_eq!(timer.poll(t1), Some(TimerAction::Refresh));
        timer.refresh_failed(t1);
        // halfway to the expiry at 60 s
        assert_eq!(timer.deadline(), Some(t1 + Duration::from_millis(7500)));
        assert_eq!(
            timer.poll(t1 + Duration::from_millis(7500)),
            Some(TimerAction::Refresh)
        );
        assert_eq!(
            timer.poll(t0 + Duration::from_secs(60)),
            Some(TimerAction::Expire)
        );
    }

    #[test]
    fn no_session_no_deadline() {
        let mut timer = SessionTimer::default();
        assert_eq!(timer.deadline(), None);
        assert_eq!(timer.poll(Instant::now()), None);
        timer.refreshed(Instant::now(), None);
        assert_eq!(timer.deadline(), None);
        assert!(timer.session().is_none());
    }
}
