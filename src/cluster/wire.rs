//! The messages between nodes, as JSON on NATS subjects: serde adapters at the edge. What a
//! browser did travels as the hub's own [`BridgeEvent`]; what the call layer tells a browser
//! is one [`ToBrowser`] per [`crate::call::ports::BrowserSide`] method.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::signal::BridgeEvent;

/// Every node's presence: logins, logouts, heartbeats.
pub const PRESENCE_SUBJECT: &str = "srbridge.presence";

/// Larger payloads are dropped unread (a hub frame is at most 64 KiB; a heartbeat lists uids).
pub const MAX_PAYLOAD: usize = 1024 * 1024;

/// The subject a node reads its signalling from.
pub fn node_subject(node: &str) -> String {
    format!("srbridge.node.{node}")
}

/// Who is logged in where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PresenceMsg {
    /// Every few seconds: the node is alive and these users are logged in to it.
    Heartbeat {
        /// The sender.
        node: String,
        /// Its logged-in users.
        uids: Vec<String>,
    },
    /// A user logged in to `node` at `at_ms` (Unix milliseconds; the newest login keeps a uid).
    Login {
        /// The sender.
        node: String,
        /// The user.
        uid: String,
        /// When.
        at_ms: u64,
    },
    /// A user's login on `node` ended.
    Logout {
        /// The sender.
        node: String,
        /// The user.
        uid: String,
    },
    /// The node is shutting down: its users are gone now, not after the TTL.
    Leave {
        /// The sender.
        node: String,
    },
}

/// What the node running a call tells the node holding the browser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ToBrowser {
    /// Ring `uid` with a remote invitation from `caller`.
    Ring {
        /// The user.
        uid: String,
        /// The call.
        call_id: String,
        /// The SIP caller.
        caller: String,
        /// The invitation content.
        content: String,
    },
    /// The phone gave up.
    Cancel {
        /// The user.
        uid: String,
        /// The call.
        call_id: String,
    },
    /// Nobody answered in time.
    Expire {
        /// The user.
        uid: String,
        /// The call.
        call_id: String,
    },
    /// A peer message (`{"Cmd":"EndCall"}`) from `from`.
    PeerMessage {
        /// The sender (a SIP number).
        from: String,
        /// The user.
        uid: String,
        /// The text.
        text: String,
    },
    /// Media signalling (offer answer, candidates, DTMF) for a call.
    Media {
        /// The user.
        uid: String,
        /// The call.
        call_id: String,
        /// The message.
        payload: Value,
    },
    /// The call is over on the node that ran it: forget it.
    Released {
        /// The user.
        uid: String,
        /// The call.
        call_id: String,
    },
}

/// Everything on a node's own subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "dir", rename_all = "snake_case")]
pub enum NodeMsg {
    /// Call node → browser node.
    ToBrowser {
        /// The sender.
        from: String,
        /// What to do.
        msg: ToBrowser,
    },
    /// Browser node → call node: what the browser did.
    FromBrowser {
        /// The sender.
        from: String,
        /// The hub's event.
        event: BridgeEvent,
    },
}

/// Why a payload was not read.
#[derive(Debug, Error)]
pub enum WireError {
    /// Over [`MAX_PAYLOAD`].
    #[error("payload of {0} bytes is too large")]
    TooLarge(usize),
    /// Not one of our messages.
    #[error("not a cluster message: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Reads one message, refusing oversized or malformed payloads.
pub fn decode<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<T, WireError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(WireError::TooLarge(payload.len()));
    }
    Ok(serde_json::from_slice(payload)?)
}

/// Writes one message.
pub fn encode<T: Serialize>(msg: &T) -> bytes::Bytes {
    // Our own types always serialize (string keys, no non-finite floats).
    bytes::Bytes::from(serde_json::to_vec(msg).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_tagged_json() {
        let msg = NodeMsg::FromBrowser {
            from: "a".into(),
            event: BridgeEvent::Accepted {
                call_id: "c".into(),
                uid: "alice".into(),
                response: "{}".into(),
            },
        };
        let bytes = encode(&msg);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.contains(r#""dir":"from_browser""#), "{text}");
        assert!(
            text.contains(r#""kind":"remote_invitation_accepted""#),
            "{text}"
        );
        assert_eq!(decode::<NodeMsg>(&bytes).unwrap(), msg);
        let presence = PresenceMsg::Login {
            node: "b".into(),
            uid: "bob".into(),
            at_ms: 7,
        };
        assert_eq!(decode::<PresenceMsg>(&encode(&presence)).unwrap(), presence);
    }

    /// The hub's events kept their original wire names when their variants were renamed:
    /// nodes of different versions in one cluster still understand each other.
    #[test]
    fn browser_event_wire_names_are_stable() {
        let (c, u, r) = (String::from("c"), String::from("u"), String::from("r"));
        for (event, kind) in [
            (
                BridgeEvent::Invite {
                    call_id: c.clone(),
                    from_uid: u.clone(),
                    callee: "100".into(),
                    content: r.clone(),
                },
                "local_invitation",
            ),
            (
                BridgeEvent::Cancel {
                    call_id: c.clone(),
                    from_uid: u.clone(),
                },
                "local_invitation_canceled",
            ),
            (
                BridgeEvent::InvitationReceived {
                    call_id: c.clone(),
                    uid: u.clone(),
                },
                "remote_invitation_received",
            ),
            (
                BridgeEvent::Accepted {
                    call_id: c.clone(),
                    uid: u.clone(),
                    response: r.clone(),
                },
                "remote_invitation_accepted",
            ),
            (
                BridgeEvent::Refused {
                    call_id: c.clone(),
                    uid: u.clone(),
                    response: r.clone(),
                },
                "remote_invitation_refused",
            ),
            (
                BridgeEvent::PeerMessage {
                    from_uid: u.clone(),
                    to: "100".into(),
                    text: r.clone(),
                },
                "peer_message",
            ),
            (
                BridgeEvent::Media {
                    call_id: c.clone(),
                    from_uid: u.clone(),
                    payload: serde_json::json!({"sdp": "x"}),
                },
                "media",
            ),
            (
                BridgeEvent::SessionClosed { uid: u.clone() },
                "session_closed",
            ),
        ] {
            let bytes = encode(&event);
            let text = std::str::from_utf8(&bytes).unwrap();
            assert!(text.contains(&format!(r#""kind":"{kind}""#)), "{text}");
            assert_eq!(decode::<BridgeEvent>(&bytes).unwrap(), event);
        }
    }

    #[test]
    fn bad_payloads_are_refused() {
        assert!(matches!(
            decode::<PresenceMsg>(b"{\"kind\":\"heartbeat\"}"),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            decode::<NodeMsg>(b"\xff\xfe"),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            decode::<NodeMsg>(b"{\"dir\":\"sideways\"}"),
            Err(WireError::Malformed(_))
        ));
        let big = vec![b' '; MAX_PAYLOAD + 1];
        assert!(matches!(
            decode::<NodeMsg>(&big),
            Err(WireError::TooLarge(_))
        ));
    }
}
