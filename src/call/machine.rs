//! One call's state machine: the mapping between an RTM-style invitation and a SIP dialog.
//!
//! It is sans-IO: the driver feeds it [`Event`]s (from the hub, the SIP user agent, its timer and
//! the media path) and carries out the [`Action`]s it returns. Nothing here touches a socket or a
//! clock, so every row of SPEC §3's tables is tested by feeding events and asserting actions.

use std::time::Duration;

use super::content::{
    accepted_response, refusal_is_decline, sip_failure_response, InvitationContent,
};

/// How long a cancelled INVITE may take to finish before the call is released anyway
/// (RFC 3261 Timer B: 64 × T1).
pub const CANCEL_GUARD: Duration = Duration::from_secs(32);

/// Which side started the call: the one [`crate::domain::Direction`].
pub use crate::domain::Direction;

/// RTM `LocalInvitation` states the caller's browser is moved through (web → SIP calls).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalState {
    /// INVITE sent.
    SentToRemote,
    /// 1xx received: the phone is ringing (or early media plays).
    ReceivedByRemote,
    /// 200 OK.
    AcceptedByRemote,
    /// 486/600/603.
    RefusedByRemote,
    /// The browser cancelled (CANCEL sent).
    Canceled,
    /// Any other failure; see [`FailureReason`].
    Failure,
}

/// Why an invitation failed, with RTM's failure-reason names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// 404/480: the extension is not registered or does not exist; or the web user is offline.
    PeerOffline,
    /// 408, or no final answer in the configured time.
    PeerNoResponse,
    /// The number is not allowed (`acc_rule`) or the request is malformed.
    InvalidArgument,
    /// Another SIP failure or a transport error; the SIP code is in the response.
    Other,
}

/// The hub's (RTM's) name for each state: what the browser is told and the event stream shows.
impl From<LocalState> for crate::signal::LocalInvitationState {
    fn from(state: LocalState) -> Self {
        use crate::signal::LocalInvitationState as S;
        match state {
            LocalState::SentToRemote => S::SentToRemote,
            LocalState::ReceivedByRemote => S::ReceivedByRemote,
            LocalState::AcceptedByRemote => S::AcceptedByRemote,
            LocalState::RefusedByRemote => S::RefusedByRemote,
            LocalState::Canceled => S::Canceled,
            LocalState::Failure => S::Failure,
        }
    }
}

impl From<FailureReason> for crate::signal::FailureReason {
    fn from(reason: FailureReason) -> Self {
        use crate::signal::FailureReason as R;
        match reason {
            FailureReason::PeerOffline => R::PeerOffline,
            FailureReason::PeerNoResponse => R::PeerNoResponse,
            FailureReason::InvalidArgument => R::InvalidArgument,
            FailureReason::Other => R::Unknown,
        }
    }
}

/// How a call ended, for logs, metrics and the status API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// Refused before anything was sent (number not allowed, PSTN not configured…).
    Rejected(&'static str),
    /// The SIP side refused or failed with this code.
    SipFailed(u16),
    /// The browser refused an incoming call.
    BrowserRefused,
    /// The browser cancelled its invitation.
    BrowserCanceled,
    /// The phone cancelled its INVITE.
    SipCanceled,
    /// Nobody answered in time.
    NoAnswer,
    /// The target web user was not logged in.
    BrowserOffline,
    /// The browser side hung up an established call (EndCall, closed WebSocket).
    BrowserHangup,
    /// The SIP side hung up an established call (BYE).
    SipHangup,
    /// The browser's WebSocket went away before the call was answered.
    BrowserGone,
    /// The media path died.
    MediaFailed,
}

impl EndReason {
    /// The `cause` of the `call.ended` event (docs/events.md).
    pub fn label(&self) -> &'static str {
        match self {
            EndReason::Rejected(_) => "rejected",
            EndReason::SipFailed(_) => "sip_failed",
            EndReason::BrowserRefused => "browser_refused",
            EndReason::BrowserCanceled => "browser_canceled",
            EndReason::SipCanceled => "sip_canceled",
            EndReason::NoAnswer => "no_answer",
            EndReason::BrowserOffline => "browser_offline",
            EndReason::BrowserHangup => "browser_hangup",
            EndReason::SipHangup => "sip_hangup",
            EndReason::BrowserGone => "browser_gone",
            EndReason::MediaFailed => "media_failed",
        }
    }
}

/// What the browser side must be told; the driver maps these onto the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubAction {
    /// Move the caller's local invitation to `state` (web → SIP).
    LocalState {
        /// The new state.
        state: LocalState,
        /// The response string the browser's invitation carries (JSON).
        response: Option<String>,
        /// Set with [`LocalState::Failure`].
        reason: Option<FailureReason>,
    },
    /// Ring the browser user: deliver a remote invitation (SIP → web).
    SendRemoteInvitation {
        /// The web user being called.
        to_uid: String,
        /// The phone's number, shown as the caller.
        caller: String,
        /// Invitation content (JSON with the caller's display name).
        content: String,
    },
    /// The phone gave up (CANCEL): the browser's invitation becomes `CANCELED`.
    CancelRemoteInvitation,
    /// Nobody answered in time: the browser's invitation fails as expired.
    ExpireRemoteInvitation,
    /// Tell the browser the call is over: peer message `{"Cmd":"EndCall"}` from the bridge.
    EndCall,
}

/// What the SIP side must do; the driver maps these onto the SIP user agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SipAction {
    /// Place the outgoing INVITE (the driver attaches the SIP leg's SDP offer).
    Invite {
        /// Request-URI user (number, with the PSTN prefix where it applies).
        callee: String,
        /// Caller identity the phone shows (display name and P-Asserted-Identity).
        caller_id: String,
        /// Extra headers such as `X-ArInfo`.
        headers: Vec<(String, String)>,
        /// Route to the `[pstn]` gateway instead of the PBX.
        via_pstn: bool,
    },
    /// CANCEL the outgoing INVITE.
    Cancel,
    /// BYE the established dialog.
    Bye,
    /// 180 Ringing to the phone.
    Ringing,
    /// 200 OK (the driver attaches the SDP answer).
    Answer,
    /// Final failure response to the phone's INVITE.
    Reject {
        /// SIP status code.
        code: u16,
        /// Reason phrase.
        reason: &'static str,
    },
}

/// One instruction to the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Something for the browser side.
    Hub(HubAction),
    /// Something for the SIP side.
    Sip(SipAction),
    /// Start (or restart) the no-answer timer.
    ArmRingTimer(Duration),
    /// The call was answered: the no-answer timer no longer applies.
    CancelRingTimer,
    /// The call is over; the driver releases everything it holds for it.
    Ended(EndReason),
}

/// Everything that can happen to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// SIP → web: the browser has the invitation (`INVITATION_RECEIVED`).
    InvitationDelivered,
    /// SIP → web: the browser accepted.
    BrowserAccepted,
    /// SIP → web: the browser refused, with its response string.
    BrowserRefused {
        /// The browser's response; "decline" forms map to 603.
        response: String,
    },
    /// SIP → web: the target user is not logged in.
    BrowserOffline,
    /// Web → SIP: the browser cancelled its invitation.
    BrowserCanceled,
    /// The browser sent `{"Cmd":"EndCall"}`.
    BrowserHangup,
    /// The browser's WebSocket closed or the user logged out.
    BrowserGone,
    /// Web → SIP: a provisional response.
    SipProgress {
        /// 100, 180, 183…
        code: u16,
    },
    /// Web → SIP: 200 OK.
    SipAnswered,
    /// Web → SIP: a final failure (or transport error, code 503/408 by convention).
    SipFailed {
        /// SIP status code.
        code: u16,
        /// Reason phrase.
        reason: String,
    },
    /// SIP → web: the phone sent CANCEL.
    SipCanceled,
    /// The SIP side sent BYE.
    SipHangup,
    /// The no-answer timer fired.
    RingTimeout,
    /// ICE/DTLS or RTP died.
    MediaFailed,
}

/// Where a call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Web → SIP: INVITE sent, no provisional yet. SIP → web: invitation not yet delivered.
    Setup,
    /// Web → SIP: provisional received. SIP → web: 180 sent.
    Ringing,
    /// Web → SIP: CANCEL sent, waiting for the INVITE to finish.
    Cancelling,
    /// 200 OK exchanged.
    Established,
    /// Over.
    Ended,
}

/// The policy a call is checked against, taken from the configuration at call start.
pub struct CallPolicy<'a> {
    /// Whether browsers may call this SIP number (`[rtm2sip] acc_rule`).
    pub number_allowed: &'a dyn Fn(&str) -> bool,
    /// `[pstn] prefix` when a PSTN gateway is configured.
    pub pstn_prefix: Option<&'a str>,
    /// How long a call may ring before it is given up.
    pub ring_timeout: Duration,
}

/// The state of one call. Create with [`Call::web_to_sip`] or [`Call::sip_to_web`].
#[derive(Debug, Clone)]
pub struct Call {
    direction: Direction,
    phase: Phase,
    /// The SIP number (web → SIP) or the phone's number (SIP → web).
    sip_number: String,
    /// The browser user's id.
    uid: String,
    chan_id: String,
    end: Option<EndReason>,
}

fn local(state: LocalState, response: Option<String>, reason: Option<FailureReason>) -> Action {
    Action::Hub(HubAction::LocalState {
        state,
        response,
        reason,
    })
}

fn looks_like_number(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '*' | '#' | '-' | '_' | '.'))
}

impl Call {
    /// A browser invites SIP number `callee`. Returns the call and its first actions
    /// (an INVITE, or an immediate failure when the number is not allowed).
    pub fn web_to_sip(
        call_id: &str,
        caller_uid: &str,
        callee: &str,
        content: &str,
        policy: &CallPolicy<'_>,
    ) -> (Call, Vec<Action>) {
        let parsed = InvitationContent::parse(content);
        let mut call = Call {
            direction: Direction::WebToSip,
            phase: Phase::Setup,
            sip_number: callee.to_string(),
            uid: caller_uid.to_string(),
            chan_id: parsed
                .chan_id
                .clone()
                .unwrap_or_else(|| call_id.to_string()),
            end: None,
        };
        let refuse = |call: &mut Call, why: &'static str| {
            call.phase = Phase::Ended;
            call.end = Some(EndReason::Rejected(why));
            vec![
                local(
                    LocalState::Failure,
                    Some(serde_json::json!({ "Reason": why }).to_string()),
                    Some(FailureReason::InvalidArgument),
                ),
                Action::Ended(EndReason::Rejected(why)),
            ]
        };
        let target = if !looks_like_number(callee) {
            Err("not a valid SIP number")
        } else if parsed.pstn {
            match policy.pstn_prefix {
                Some(prefix) => Ok(format!("{prefix}{callee}")),
                None => Err("PSTN calling is not configured"),
            }
        } else if (policy.number_allowed)(callee) {
            Ok(callee.to_string())
        } else {
            Err("number not allowed by acc_rule")
        };
        let target = match target {
            Ok(target) => target,
            Err(why) => {
                let actions = refuse(&mut call, why);
                return (call, actions);
            }
        };
        let mut headers = Vec::new();
        if let Some(user_data) = parsed.user_data {
            headers.push(("X-ArInfo".to_string(), user_data));
        }
        let caller_id = parsed.sip_data.unwrap_or_else(|| caller_uid.to_string());
        let actions = vec![
            Action::Sip(SipAction::Invite {
                callee: target,
                caller_id,
                headers,
                via_pstn: parsed.pstn,
            }),
            local(LocalState::SentToRemote, None, None),
            Action::ArmRingTimer(policy.ring_timeout),
        ];
        (call, actions)
    }

    /// A phone dialled `0<target_uid>`: ring the browser user.
    pub fn sip_to_web(
        call_id: &str,
        caller_number: &str,
        caller_display: Option<&str>,
        target_uid: &str,
        policy: &CallPolicy<'_>,
    ) -> (Call, Vec<Action>) {
        let call = Call {
            direction: Direction::SipToWeb,
            phase: Phase::Setup,
            sip_number: caller_number.to_string(),
            uid: target_uid.to_string(),
            chan_id: call_id.to_string(),
            end: None,
        };
        let content = serde_json::json!({
            "SipNumber": caller_number,
            "DisplayName": caller_display.unwrap_or(caller_number),
            "ChanId": call_id,
        })
        .to_string();
        let actions = vec![
            Action::Hub(HubAction::SendRemoteInvitation {
                to_uid: target_uid.to_string(),
                caller: caller_number.to_string(),
                content,
            }),
            Action::ArmRingTimer(policy.ring_timeout),
        ];
        (call, actions)
    }

    /// Which side started the call.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Where the call is now.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The web user's id.
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// The SIP party's number.
    pub fn sip_number(&self) -> &str {
        &self.sip_number
    }

    /// Why the call ended, once it has.
    pub fn end_reason(&self) -> Option<&EndReason> {
        self.end.as_ref()
    }

    fn finish(&mut self, reason: EndReason, mut actions: Vec<Action>) -> Vec<Action> {
        self.phase = Phase::Ended;
        self.end = Some(reason.clone());
        actions.push(Action::Ended(reason));
        actions
    }

    /// Feeds one event; returns what to do. Events that do not apply in the current phase
    /// (a late retransmission, a duplicate accept) return nothing.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        if self.phase == Phase::Ended {
            return Vec::new();
        }
        match self.direction {
            Direction::WebToSip => self.handle_web_to_sip(event),
            Direction::SipToWeb => self.handle_sip_to_web(event),
        }
    }

    fn handle_web_to_sip(&mut self, event: Event) -> Vec<Action> {
        use Phase::*;
        match (self.phase, event) {
            (Setup, Event::SipProgress { code }) if (100..200).contains(&code) => {
                self.phase = Ringing;
                vec![local(LocalState::ReceivedByRemote, None, None)]
            }
            (Setup | Ringing, Event::SipAnswered) => {
                self.phase = Established;
                let response = accepted_response(&self.sip_number, &self.chan_id);
                vec![
                    Action::CancelRingTimer,
                    local(LocalState::AcceptedByRemote, Some(response), None),
                ]
            }
            (Setup | Ringing, Event::SipFailed { code, reason }) => {
                let response = Some(sip_failure_response(code, &reason));
                let action = match code {
                    486 | 600 | 603 => local(LocalState::RefusedByRemote, response, None),
                    404 | 480 => local(
                        LocalState::Failure,
                        response,
                        Some(FailureReason::PeerOffline),
                    ),
                    408 => local(
                        LocalState::Failure,
                        response,
                        Some(FailureReason::PeerNoResponse),
                    ),
                    _ => local(LocalState::Failure, response, Some(FailureReason::Other)),
                };
                self.finish(EndReason::SipFailed(code), vec![action])
            }
            (Setup | Ringing, Event::BrowserCanceled | Event::BrowserHangup) => {
                self.phase = Cancelling;
                self.end = Some(EndReason::BrowserCanceled);
                vec![
                    Action::Sip(SipAction::Cancel),
                    local(LocalState::Canceled, None, None),
                    Action::ArmRingTimer(CANCEL_GUARD),
                ]
            }
            (Setup | Ringing, Event::BrowserGone) => {
                self.phase = Cancelling;
                self.end = Some(EndReason::BrowserGone);
                vec![
                    Action::Sip(SipAction::Cancel),
                    Action::ArmRingTimer(CANCEL_GUARD),
                ]
            }
            (Setup | Ringing, Event::RingTimeout) => {
                self.phase = Cancelling;
                self.end = Some(EndReason::NoAnswer);
                vec![
                    Action::Sip(SipAction::Cancel),
                    local(
                        LocalState::Failure,
                        Some(sip_failure_response(408, "No answer")),
                        Some(FailureReason::PeerNoResponse),
                    ),
                    Action::ArmRingTimer(CANCEL_GUARD),
                ]
            }
            (Setup | Ringing, Event::MediaFailed) => {
                self.phase = Cancelling;
                self.end = Some(EndReason::MediaFailed);
                vec![
                    Action::Sip(SipAction::Cancel),
                    local(
                        LocalState::Failure,
                        Some(serde_json::json!({ "Reason": "media failed" }).to_string()),
                        Some(FailureReason::Other),
                    ),
                    Action::ArmRingTimer(CANCEL_GUARD),
                ]
            }
            // CANCEL crossed a 200 OK: the dialog exists, so it must be ended with BYE.
            (Cancelling, Event::SipAnswered) => {
                let reason = self.end.clone().unwrap_or(EndReason::BrowserCanceled);
                self.finish(reason, vec![Action::Sip(SipAction::Bye)])
            }
            (Cancelling, Event::SipFailed { .. } | Event::RingTimeout) => {
                let reason = self.end.clone().unwrap_or(EndReason::BrowserCanceled);
                self.finish(reason, Vec::new())
            }
            (Established, Event::SipHangup) => {
                self.finish(EndReason::SipHangup, vec![Action::Hub(HubAction::EndCall)])
            }
            (Established, Event::BrowserHangup | Event::BrowserGone) => {
                self.finish(EndReason::BrowserHangup, vec![Action::Sip(SipAction::Bye)])
            }
            (Established, Event::MediaFailed) => self.finish(
                EndReason::MediaFailed,
                vec![Action::Sip(SipAction::Bye), Action::Hub(HubAction::EndCall)],
            ),
            _ => Vec::new(),
        }
    }

    fn handle_sip_to_web(&mut self, event: Event) -> Vec<Action> {
        use Phase::*;
        match (self.phase, event) {
            (Setup, Event::InvitationDelivered) => {
                self.phase = Ringing;
                vec![Action::Sip(SipAction::Ringing)]
            }
            (Setup | Ringing, Event::BrowserAccepted) => {
                self.phase = Established;
                vec![Action::CancelRingTimer, Action::Sip(SipAction::Answer)]
            }
            (Setup | Ringing, Event::BrowserRefused { response }) => {
                let reject = if refusal_is_decline(&response) {
                    SipAction::Reject {
                        code: 603,
                        reason: "Decline",
                    }
                } else {
                    SipAction::Reject {
                        code: 486,
                        reason: "Busy Here",
                    }
                };
                self.finish(EndReason::BrowserRefused, vec![Action::Sip(reject)])
            }
            (Setup | Ringing, Event::BrowserOffline | Event::BrowserGone) => {
                let reason = if self.phase == Setup {
                    EndReason::BrowserOffline
                } else {
                    EndReason::BrowserGone
                };
                self.finish(
                    reason,
                    vec![Action::Sip(SipAction::Reject {
                        code: 480,
                        reason: "Temporarily Unavailable",
                    })],
                )
            }
            (Setup | Ringing, Event::RingTimeout) => self.finish(
                EndReason::NoAnswer,
                vec![
                    Action::Hub(HubAction::ExpireRemoteInvitation),
                    Action::Sip(SipAction::Reject {
                        code: 480,
                        reason: "No Answer",
                    }),
                ],
            ),
            (Setup | Ringing, Event::SipCanceled | Event::SipHangup) => self.finish(
                EndReason::SipCanceled,
                vec![Action::Hub(HubAction::CancelRemoteInvitation)],
            ),
            (Setup | Ringing, Event::MediaFailed) => self.finish(
                EndReason::MediaFailed,
                vec![
                    Action::Hub(HubAction::CancelRemoteInvitation),
                    Action::Sip(SipAction::Reject {
                        code: 488,
                        reason: "Not Acceptable Here",
                    }),
                ],
            ),
            (Established, Event::SipHangup | Event::SipCanceled) => {
                self.finish(EndReason::SipHangup, vec![Action::Hub(HubAction::EndCall)])
            }
            (Established, Event::BrowserHangup | Event::BrowserGone) => {
                self.finish(EndReason::BrowserHangup, vec![Action::Sip(SipAction::Bye)])
            }
            (Established, Event::MediaFailed) => self.finish(
                EndReason::MediaFailed,
                vec![Action::Sip(SipAction::Bye), Action::Hub(HubAction::EndCall)],
            ),
            _ => Vec::new(),
        }
    }
}
