//! Invitations: who rings whom, who may answer, and how each one ends.
//!
//! Part of [`HubCore`]: web↔web invitations are relayed and timed here; invitations to or from
//! the bridge are tracked so each state reaches only its own browser and answers come only from
//! its callee. Ended call ids are remembered per session to explain late accepts and cancels.

use std::time::Instant;

use serde_json::Value;
use tracing::debug;

use super::core::{
    err, valid_id, BridgeEvent, DeliveryError, HubCore, Now, Output, SessionId, FINISHED_MEMORY,
    INVITATION_TIMEOUT, MAX_ID_LEN, MAX_PENDING_INVITATIONS, RECEIVE_TIMEOUT,
};
use super::protocol::{
    ErrorCode, FailureReason, LocalInvitationState, RemoteFailureReason, RemoteInvitationState,
    RequestId, ServerMsg,
};

/// One end of an invitation: a browser session, or the bridge acting for a SIP number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Party {
    Web { uid: String, sid: SessionId },
    Bridge(String),
}

impl Party {
    pub(super) fn sid(&self) -> Option<SessionId> {
        match self {
            Party::Web { sid, .. } => Some(*sid),
            Party::Bridge(_) => None,
        }
    }
}

/// An invitation in progress (ringing, or a SIP call being set up).
#[derive(Debug)]
pub(super) struct Invitation {
    pub(super) caller: Party,
    pub(super) callee: Party,
    pub(super) received: bool,
    pub(super) canceling: bool,
    pub(super) created: Instant,
}

/// How an invitation ended, to explain late requests about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Accepted,
    Refused,
    Canceled,
    Failed,
}

impl Outcome {
    pub(super) fn describe(self) -> &'static str {
        match self {
            Outcome::Accepted => "was already accepted",
            Outcome::Refused => "was already refused",
            Outcome::Canceled => "was cancelled",
            Outcome::Failed => "has failed",
        }
    }

    pub(super) fn of_local(state: LocalInvitationState) -> Outcome {
        match state {
            LocalInvitationState::AcceptedByRemote => Outcome::Accepted,
            LocalInvitationState::RefusedByRemote => Outcome::Refused,
            LocalInvitationState::Canceled => Outcome::Canceled,
            _ => Outcome::Failed,
        }
    }
}

/// An ended invitation a session remembers.
#[derive(Debug)]
pub(super) struct Finished {
    pub(super) call_id: String,
    pub(super) outcome: Outcome,
    /// The other party when it is a web user (for media relay after accept).
    pub(super) web_peer: Option<String>,
}

impl HubCore {
    /// Ends every invitation the session is part of (logout, close, replace).
    pub(super) fn end_invitations_of(&mut self, sid: SessionId, out: &mut Vec<Output>) {
        let mine: Vec<String> = self
            .invitations
            .iter()
            .filter(|(_, inv)| inv.caller.sid() == Some(sid) || inv.callee.sid() == Some(sid))
            .map(|(call_id, _)| call_id.clone())
            .collect();
        for call_id in mine {
            let Some(inv) = self.invitations.remove(&call_id) else {
                continue;
            };
            match (&inv.caller, &inv.callee) {
                (Party::Web { sid: caller, .. }, Party::Web { sid: callee, .. })
                    if *caller == sid =>
                {
                    out.push(Output::Send(
                        *callee,
                        ServerMsg::RemoteInvitationState {
                            call_id: call_id.clone(),
                            state: RemoteInvitationState::Canceled,
                            reason: None,
                        },
                    ));
                    self.remember(*callee, &call_id, Outcome::Canceled, None);
                }
                (Party::Web { sid: caller, .. }, Party::Web { .. }) => {
                    out.push(Output::Send(
                        *caller,
                        ServerMsg::LocalInvitationState {
                            call_id: call_id.clone(),
                            state: LocalInvitationState::Failure,
                            response: None,
                            reason: Some(FailureReason::PeerOffline),
                        },
                    ));
                    self.remember(*caller, &call_id, Outcome::Failed, None);
                }
                // Calls with the bridge end through SessionClosed.
                _ => {}
            }
        }
    }

    /// Expires web↔web invitations nobody confirmed or answered in time.
    pub(super) fn expire_invitations(&mut self, now: Now, out: &mut Vec<Output>) {
        let expired: Vec<String> = self
            .invitations
            .iter()
            .filter(|(_, inv)| {
                matches!(
                    (&inv.caller, &inv.callee),
                    (Party::Web { .. }, Party::Web { .. })
                )
            })
            .filter(|(_, inv)| {
                let age = now.mono.saturating_duration_since(inv.created);
                age >= INVITATION_TIMEOUT || (!inv.received && age >= RECEIVE_TIMEOUT)
            })
            .map(|(call_id, _)| call_id.clone())
            .collect();
        for call_id in expired {
            let Some(inv) = self.invitations.remove(&call_id) else {
                continue;
            };
            let reason = if inv.received {
                FailureReason::InvitationExpire
            } else {
                FailureReason::PeerNoResponse
            };
            debug!(call_id = %call_id, reason = %reason, "invitation expired");
            if let (Party::Web { sid: caller, .. }, Party::Web { sid: callee, .. }) =
                (&inv.caller, &inv.callee)
            {
                out.push(Output::Send(
                    *caller,
                    ServerMsg::LocalInvitationState {
                        call_id: call_id.clone(),
                        state: LocalInvitationState::Failure,
                        response: None,
                        reason: Some(reason),
                    },
                ));
                out.push(Output::Send(
                    *callee,
                    ServerMsg::RemoteInvitationState {
                        call_id: call_id.clone(),
                        state: RemoteInvitationState::Failure,
                        reason: Some(RemoteFailureReason::InvitationExpire),
                    },
                ));
                self.remember(*caller, &call_id, Outcome::Failed, None);
                self.remember(*callee, &call_id, Outcome::Failed, None);
            }
        }
    }

    pub(super) fn remember(
        &mut self,
        sid: SessionId,
        call_id: &str,
        outcome: Outcome,
        web_peer: Option<String>,
    ) {
        if let Some(session) = self.sessions.get_mut(&sid) {
            session.finished.retain(|f| f.call_id != call_id);
            if session.finished.len() >= FINISHED_MEMORY {
                session.finished.pop_front();
            }
            session.finished.push_back(Finished {
                call_id: call_id.to_string(),
                outcome,
                web_peer,
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn invite(
        &mut self,
        sid: SessionId,
        uid: &str,
        id: &RequestId,
        call_id: String,
        callee: String,
        content: String,
        now: Now,
        out: &mut Vec<Output>,
    ) {
        let fail = |code, message: String| Output::Send(sid, err(id, code, message));
        if !valid_id(&call_id) {
            out.push(fail(
                ErrorCode::InvalidArgument,
                format!("callId must be 1-{MAX_ID_LEN} characters without control characters"),
            ));
            return;
        }
        if !valid_id(&callee) {
            out.push(fail(
                ErrorCode::InvalidArgument,
                format!("callee must be 1-{MAX_ID_LEN} characters without control characters"),
            ));
            return;
        }
        if callee == uid {
            out.push(fail(
                ErrorCode::InvalidArgument,
                "cannot invite yourself".to_string(),
            ));
            return;
        }
        if content.len() > self.settings.max_content {
            out.push(fail(
                ErrorCode::ContentTooLarge,
                format!(
                    "content of {} bytes exceeds the limit of {}",
                    content.len(),
                    self.settings.max_content
                ),
            ));
            return;
        }
        if !self.accepting {
            out.push(fail(
                ErrorCode::Draining,
                "the bridge is shutting down and takes no new calls".to_string(),
            ));
            return;
        }
        let seen = self
            .sessions
            .get(&sid)
            .is_some_and(|s| s.finished(&call_id).is_some());
        if self.invitations.contains_key(&call_id) || seen {
            out.push(fail(
                ErrorCode::DuplicateCallId,
                format!("callId {call_id} is already in use; generate a new UUID per call"),
            ));
            return;
        }
        let pending = self
            .invitations
            .values()
            .filter(|inv| inv.caller.sid() == Some(sid))
            .count();
        if pending >= MAX_PENDING_INVITATIONS {
            out.push(fail(
                ErrorCode::TooManyInvitations,
                format!("at most {MAX_PENDING_INVITATIONS} invitations may be pending at once"),
            ));
            return;
        }
        if !self.bridge_up && self.web_sid(&callee).is_none() {
            out.push(fail(
                ErrorCode::BridgeUnavailable,
                "the bridge's call layer is not running; try again later".to_string(),
            ));
            return;
        }
        let caller = Party::Web {
            uid: uid.to_string(),
            sid,
        };
        debug!(call_id = %call_id, caller = %uid, callee = %callee, "invitation");
        out.push(Output::Send(sid, ServerMsg::ok(id.clone())));
        let callee_party = match self.web_sid(&callee) {
            Some(callee_sid) => {
                out.push(Output::Send(
                    callee_sid,
                    ServerMsg::RemoteInvitation {
                        call_id: call_id.clone(),
                        caller: uid.to_string(),
                        content,
                    },
                ));
                Party::Web {
                    uid: callee,
                    sid: callee_sid,
                }
            }
            None => {
                out.push(Output::Bridge(BridgeEvent::Invite {
                    call_id: call_id.clone(),
                    from_uid: uid.to_string(),
                    callee: callee.clone(),
                    content,
                }));
                Party::Bridge(callee)
            }
        };
        self.invitations.insert(
            call_id,
            Invitation {
                caller,
                callee: callee_party,
                received: false,
                canceling: false,
                created: now.mono,
            },
        );
    }

    /// The error for an invitation this session cannot act on.
    pub(super) fn not_actionable(
        &self,
        sid: SessionId,
        id: &RequestId,
        call_id: &str,
    ) -> ServerMsg {
        match self.sessions.get(&sid).and_then(|s| s.finished(call_id)) {
            Some(f) => err(
                id,
                ErrorCode::InvitationEnded,
                format!("invitation {call_id} {}", f.outcome.describe()),
            ),
            None => err(
                id,
                ErrorCode::UnknownInvitation,
                format!("no pending invitation {call_id} for this user"),
            ),
        }
    }

    pub(super) fn cancel(
        &mut self,
        sid: SessionId,
        uid: &str,
        id: &RequestId,
        call_id: &str,
        out: &mut Vec<Output>,
    ) {
        let Some(inv) = self
            .invitations
            .get_mut(call_id)
            .filter(|inv| inv.caller.sid() == Some(sid))
        else {
            out.push(Output::Send(sid, self.not_actionable(sid, id, call_id)));
            return;
        };
        match inv.callee.clone() {
            Party::Web {
                uid: callee_uid,
                sid: callee,
            } => {
                self.invitations.remove(call_id);
                out.push(Output::Send(sid, ServerMsg::ok(id.clone())));
                out.push(Output::Send(
                    sid,
                    ServerMsg::LocalInvitationState {
                        call_id: call_id.to_string(),
                        state: LocalInvitationState::Canceled,
                        response: None,
                        reason: None,
                    },
                ));
                out.push(Output::Send(
                    callee,
                    ServerMsg::RemoteInvitationState {
                        call_id: call_id.to_string(),
                        state: RemoteInvitationState::Canceled,
                        reason: None,
                    },
                ));
                self.remember(sid, call_id, Outcome::Canceled, Some(callee_uid));
                self.remember(callee, call_id, Outcome::Canceled, Some(uid.to_string()));
            }
            Party::Bridge(_) => {
                if inv.canceling {
                    out.push(Output::Send(
                        sid,
                        err(
                            id,
                            ErrorCode::InvitationEnded,
                            format!("invitation {call_id} is already being cancelled"),
                        ),
                    ));
                    return;
                }
                inv.canceling = true;
                out.push(Output::Send(sid, ServerMsg::ok(id.clone())));
                out.push(Output::Bridge(BridgeEvent::Cancel {
                    call_id: call_id.to_string(),
                    from_uid: uid.to_string(),
                }));
            }
        }
    }

    pub(super) fn received(
        &mut self,
        sid: SessionId,
        uid: &str,
        id: &RequestId,
        call_id: &str,
        out: &mut Vec<Output>,
    ) {
        let Some(inv) = self
            .invitations
            .get_mut(call_id)
            .filter(|inv| inv.callee.sid() == Some(sid))
        else {
            out.push(Output::Send(sid, self.not_actionable(sid, id, call_id)));
            return;
        };
        if !inv.received {
            inv.received = true;
            let caller = inv.caller.clone();
            Self::announce_received(&caller, call_id, uid, out);
        }
        out.push(Output::Send(sid, ServerMsg::ok(id.clone())));
    }

    pub(super) fn announce_received(
        caller: &Party,
        call_id: &str,
        uid: &str,
        out: &mut Vec<Output>,
    ) {
        match caller {
            Party::Web { sid, .. } => out.push(Output::Send(
                *sid,
                ServerMsg::LocalInvitationState {
                    call_id: call_id.to_string(),
                    state: LocalInvitationState::ReceivedByRemote,
                    response: None,
                    reason: None,
                },
            )),
            Party::Bridge(_) => out.push(Output::Bridge(BridgeEvent::InvitationReceived {
                call_id: call_id.to_string(),
                uid: uid.to_string(),
            })),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn answer(
        &mut self,
        sid: SessionId,
        uid: &str,
        id: &RequestId,
        call_id: &str,
        response: String,
        accept: bool,
        out: &mut Vec<Output>,
    ) {
        if response.len() > self.settings.max_content {
            out.push(Output::Send(
                sid,
                err(
                    id,
                    ErrorCode::ContentTooLarge,
                    format!(
                        "response of {} bytes exceeds the limit of {}",
                        response.len(),
                        self.settings.max_content
                    ),
                ),
            ));
            return;
        }
        let mine = self
            .invitations
            .get(call_id)
            .is_some_and(|inv| inv.callee.sid() == Some(sid));
        let Some(inv) = mine.then(|| self.invitations.remove(call_id)).flatten() else {
            out.push(Output::Send(sid, self.not_actionable(sid, id, call_id)));
            return;
        };
        debug!(call_id = %call_id, callee = %uid, accept, "invitation answered");
        if !inv.received {
            Self::announce_received(&inv.caller, call_id, uid, out);
        }
        let outcome = if accept {
            Outcome::Accepted
        } else {
            Outcome::Refused
        };
        out.push(Output::Send(sid, ServerMsg::ok(id.clone())));
        match &inv.caller {
            Party::Web {
                uid: caller_uid,
                sid: caller,
            } => {
                out.push(Output::Send(
                    *caller,
                    ServerMsg::LocalInvitationState {
                        call_id: call_id.to_string(),
                        state: if accept {
                            LocalInvitationState::AcceptedByRemote
                        } else {
                            LocalInvitationState::RefusedByRemote
                        },
                        response: Some(response),
                        reason: None,
                    },
                ));
                self.remember(*caller, call_id, outcome, Some(uid.to_string()));
                self.remember(sid, call_id, outcome, Some(caller_uid.clone()));
            }
            Party::Bridge(_) => {
                let call_id = call_id.to_string();
                let uid = uid.to_string();
                out.push(Output::Bridge(if accept {
                    BridgeEvent::Accepted {
                        call_id: call_id.clone(),
                        uid,
                        response,
                    }
                } else {
                    BridgeEvent::Refused {
                        call_id: call_id.clone(),
                        uid,
                        response,
                    }
                }));
                self.remember(sid, &call_id, outcome, None);
            }
        }
    }

    pub(super) fn media(
        &mut self,
        sid: SessionId,
        uid: &str,
        id: &RequestId,
        call_id: String,
        payload: Value,
        out: &mut Vec<Output>,
    ) {
        if !payload.is_object() {
            out.push(Output::Send(
                sid,
                err(
                    id,
                    ErrorCode::BadMessage,
                    "media payload must be a JSON object",
                ),
            ));
            return;
        }
        // A web↔web call (ringing, or accepted and remembered): relay to the other browser.
        let web_peer = match self.invitations.get(&call_id) {
            Some(inv) if inv.caller.sid() == Some(sid) => inv.callee.sid(),
            Some(inv) if inv.callee.sid() == Some(sid) => inv.caller.sid(),
            _ => self
                .sessions
                .get(&sid)
                .and_then(|s| s.finished(&call_id))
                .filter(|f| f.outcome == Outcome::Accepted)
                .and_then(|f| f.web_peer.as_deref())
                .and_then(|peer| self.web_sid(peer)),
        };
        match web_peer {
            Some(peer) => out.push(Output::Send(
                peer,
                ServerMsg::Media {
                    call_id,
                    from: uid.to_string(),
                    payload,
                },
            )),
            None => out.push(Output::Bridge(BridgeEvent::Media {
                call_id,
                from_uid: uid.to_string(),
                payload,
            })),
        }
        out.push(Output::Send(sid, ServerMsg::ok(id.clone())));
    }

    /// Bridge → caller: the SIP side moved `uid`'s invitation `call_id` to `state`.
    pub fn local_invitation_state(
        &mut self,
        uid: &str,
        call_id: &str,
        state: LocalInvitationState,
        response: Option<String>,
        reason: Option<FailureReason>,
    ) -> Vec<Output> {
        let Some(inv) = self.invitations.get_mut(call_id).filter(|inv| {
            matches!(inv.callee, Party::Bridge(_))
                && matches!(&inv.caller, Party::Web { uid: u, .. } if u == uid)
        }) else {
            debug!(call_id = %call_id, uid = %uid, state = %state, "state for an unknown invitation dropped");
            return Vec::new();
        };
        let Some(caller) = inv.caller.sid() else {
            return Vec::new();
        };
        if state == LocalInvitationState::SentToRemote {
            return Vec::new();
        }
        if state == LocalInvitationState::ReceivedByRemote {
            inv.received = true;
        }
        let out = vec![Output::Send(
            caller,
            ServerMsg::LocalInvitationState {
                call_id: call_id.to_string(),
                state,
                response,
                reason: if state == LocalInvitationState::Failure {
                    Some(reason.unwrap_or(FailureReason::Unknown))
                } else {
                    reason
                },
            },
        )];
        if state.is_final() {
            self.invitations.remove(call_id);
            self.remember(caller, call_id, Outcome::of_local(state), None);
        }
        out
    }

    /// Bridge → callee: ring web user `to_uid` on behalf of `caller` (a SIP number).
    pub fn send_remote_invitation(
        &mut self,
        to_uid: &str,
        call_id: &str,
        caller: &str,
        content: &str,
        now: Now,
    ) -> Result<Vec<Output>, DeliveryError> {
        let sid = self
            .web_sid(to_uid)
            .ok_or_else(|| DeliveryError::NotOnline(to_uid.to_string()))?;
        if self.invitations.contains_key(call_id) {
            return Err(DeliveryError::DuplicateCallId(call_id.to_string()));
        }
        self.invitations.insert(
            call_id.to_string(),
            Invitation {
                caller: Party::Bridge(caller.to_string()),
                callee: Party::Web {
                    uid: to_uid.to_string(),
                    sid,
                },
                received: false,
                canceling: false,
                created: now.mono,
            },
        );
        Ok(vec![Output::Send(
            sid,
            ServerMsg::RemoteInvitation {
                call_id: call_id.to_string(),
                caller: caller.to_string(),
                content: content.to_string(),
            },
        )])
    }

    /// Finds the session of callee `uid` for a bridge invitation, removing it when pending.
    pub(super) fn take_bridge_remote(
        &mut self,
        uid: &str,
        call_id: &str,
    ) -> Option<(SessionId, bool)> {
        let pending = self.invitations.get(call_id).is_some_and(|inv| {
            matches!(inv.caller, Party::Bridge(_))
                && matches!(&inv.callee, Party::Web { uid: u, .. } if u == uid)
        });
        if pending {
            let inv = self.invitations.remove(call_id)?;
            return inv.callee.sid().map(|sid| (sid, true));
        }
        let sid = self.web_sid(uid)?;
        let accepted = self
            .sessions
            .get(&sid)
            .and_then(|s| s.finished(call_id))
            .is_some_and(|f| f.outcome == Outcome::Accepted && f.web_peer.is_none());
        accepted.then_some((sid, false))
    }

    /// Bridge → callee: the phone gave up; the invitation becomes `CANCELED`.
    pub fn remote_invitation_canceled(&mut self, uid: &str, call_id: &str) -> Vec<Output> {
        match self.take_bridge_remote(uid, call_id) {
            Some((sid, true)) => {
                self.remember(sid, call_id, Outcome::Canceled, None);
                vec![Output::Send(
                    sid,
                    ServerMsg::RemoteInvitationState {
                        call_id: call_id.to_string(),
                        state: RemoteInvitationState::Canceled,
                        reason: None,
                    },
                )]
            }
            _ => Vec::new(),
        }
    }

    /// Bridge → callee: the invitation failed (expired, or the accept did not go through).
    pub fn remote_invitation_failed(
        &mut self,
        uid: &str,
        call_id: &str,
        reason: RemoteFailureReason,
    ) -> Vec<Output> {
        match self.take_bridge_remote(uid, call_id) {
            Some((sid, _)) => {
                self.remember(sid, call_id, Outcome::Failed, None);
                vec![Output::Send(
                    sid,
                    ServerMsg::RemoteInvitationState {
                        call_id: call_id.to_string(),
                        state: RemoteInvitationState::Failure,
                        reason: Some(reason),
                    },
                )]
            }
            None => Vec::new(),
        }
    }
}
