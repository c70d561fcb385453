//! The event type (schema version [`SCHEMA_VERSION`], docs/events.md) and its JSON form.
//!
//! Every event is one JSON object: the [`Envelope`]'s `id`, `version`, `time` and the event's
//! `type` with its own fields flattened beside them, so a consumer reads one flat object.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::ops::Direction;
use crate::sip::RegistrationState;

/// Version of the JSON schema in docs/events.md. Adding a field keeps it; removing or renaming
/// one, or changing a meaning, bumps it.
pub const SCHEMA_VERSION: u32 = 1;

/// Something an operator may want to know, as it happens.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum Event {
    /// A call was accepted for processing (browser invitation or phone INVITE).
    #[serde(rename = "call.created")]
    CallCreated {
        /// Who and what.
        #[serde(flatten)]
        call: CallFacts,
    },
    /// The far side is alerted: a 1xx from the PBX (web → SIP), the browser has the
    /// invitation and 180 went to the phone (SIP → web).
    #[serde(rename = "call.ringing")]
    CallRinging {
        /// Who and what.
        #[serde(flatten)]
        call: CallFacts,
        /// Web → SIP: the provisional response's code (180, 183).
        #[serde(skip_serializing_if = "Option::is_none")]
        sip_code: Option<u16>,
    },
    /// 200 OK exchanged: the call is up.
    #[serde(rename = "call.answered")]
    CallAnswered {
        /// Who and what.
        #[serde(flatten)]
        call: CallFacts,
        /// From `call.created` to the answer.
        setup_ms: u64,
    },
    /// The call is over (however it ended).
    #[serde(rename = "call.ended")]
    CallEnded {
        /// Who and what.
        #[serde(flatten)]
        call: CallFacts,
        /// How it ended.
        #[serde(flatten)]
        end: CallEnd,
    },
    /// The proxy account's registration changed kind (a refresh is not a change).
    #[serde(rename = "registration.changed")]
    RegistrationChanged {
        /// The SIP account (`[proxy] sip_account`).
        account: String,
        /// The registrar (`ip:port`).
        pbx: String,
        /// The new state, as `/api/status` shows it.
        registration: RegistrationState,
    },
    /// The PBX answers OPTIONS (first answer, or again after being down).
    #[serde(rename = "pbx.up")]
    PbxUp {
        /// The PBX (`ip:port`).
        pbx: String,
        /// Round-trip time of the answered OPTIONS.
        rtt_ms: u64,
    },
    /// The PBX stopped answering OPTIONS.
    #[serde(rename = "pbx.down")]
    PbxDown {
        /// The PBX (`ip:port`).
        pbx: String,
        /// Why the ping failed.
        error: String,
    },
    /// A web user logged in to the hub.
    #[serde(rename = "user.login")]
    UserLogin {
        /// The user.
        web_user: String,
    },
    /// A web user's login ended.
    #[serde(rename = "user.logout")]
    UserLogout {
        /// The user.
        web_user: String,
        /// Why.
        reason: LogoutReason,
    },
}

impl Event {
    /// The `type` field (and the SSE event name).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::CallCreated { .. } => "call.created",
            Event::CallRinging { .. } => "call.ringing",
            Event::CallAnswered { .. } => "call.answered",
            Event::CallEnded { .. } => "call.ended",
            Event::RegistrationChanged { .. } => "registration.changed",
            Event::PbxUp { .. } => "pbx.up",
            Event::PbxDown { .. } => "pbx.down",
            Event::UserLogin { .. } => "user.login",
            Event::UserLogout { .. } => "user.logout",
        }
    }
}

/// The facts every `call.*` event carries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallFacts {
    /// The bridge's call id (the invitation id for browser calls), as in logs and `/api/calls/{id}`.
    pub call_id: String,
    /// The SIP dialog's Call-ID, once there is one (web → SIP: from `call.ringing` on).
    pub sip_call_id: Option<String>,
    /// `web_to_sip` or `sip_to_web`.
    pub direction: Direction,
    /// The browser user.
    pub web_user: String,
    /// The SIP party's number.
    pub number: String,
}

/// How a call ended (`call.ended`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallEnd {
    /// Why, e.g. `sip_failed`, `sip_hangup`, `browser_hangup`, `no_answer` (docs/events.md).
    pub cause: &'static str,
    /// More about the cause (a refusal's reason), when there is something to say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The INVITE's final response (200 if answered; 486, 487, 503…), `null` if none was sent
    /// or received.
    pub sip_code: Option<u16>,
    /// The last RTM invitation state the browser was given (`ACCEPTED_BY_REMOTE`, `FAILURE`,
    /// `CANCELED`…), `null` if none.
    pub rtm_state: Option<&'static str>,
    /// The RTM failure reason with a `FAILURE` state (`PEER_OFFLINE`, `INVITATION_EXPIRE`…).
    pub rtm_reason: Option<&'static str>,
    /// From `call.created` to the end.
    pub duration_ms: u64,
    /// From the answer to the end, if it was answered.
    pub talk_ms: Option<u64>,
}

/// Why a web user's login ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogoutReason {
    /// The browser sent `logout`.
    Logout,
    /// The same uid logged in elsewhere.
    Replaced,
    /// The WebSocket closed.
    Closed,
    /// Nothing received for the idle timeout.
    Timeout,
}

/// One event as delivered: numbered, versioned and timestamped.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Envelope {
    /// Sequence number, from 1, without gaps in one bridge process (also the SSE `id`).
    pub id: u64,
    /// [`SCHEMA_VERSION`].
    pub version: u32,
    /// When it was published, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The event (its `type` and fields).
    #[serde(flatten)]
    pub event: Event,
}

impl Envelope {
    /// Wraps `event` as number `id`, published at `at`.
    pub fn new(id: u64, event: Event, at: SystemTime) -> Envelope {
        Envelope {
            id,
            version: SCHEMA_VERSION,
            time: rfc3339_millis(at),
            event,
        }
    }

    /// The JSON text (one line).
    pub fn to_json(&self) -> String {
        // Only strings, numbers and options: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One event as the bus delivers it (SSE, webhook): its number, its `type`, and its JSON text,
/// the [`Envelope`] serialized once when it was published, shared by every consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The envelope's `id` (also the SSE `id`).
    pub id: u64,
    /// The event's `type` (also the SSE `event`).
    pub kind: &'static str,
    /// The envelope as JSON (one line).
    pub json: Arc<str>,
}

/// `2026-12-03T08:41:00.123Z`, without a date-time dependency (days to civil date after
/// H. Hinnant's algorithm).
pub fn rfc3339_millis(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::time::Duration;

    fn facts() -> CallFacts {
        CallFacts {
            call_id: "c1".into(),
            sip_call_id: Some("abc@10.0.0.1".into()),
            direction: Direction::WebToSip,
            web_user: "alice".into(),
            number: "1001".into(),
        }
    }

    fn json_of(event: Event) -> Value {
        let at = UNIX_EPOCH + Duration::from_millis(1_764_751_260_123);
        serde_json::from_str(&Envelope::new(7, event, at).to_json()).unwrap()
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_764_751_260_123);
        assert_eq!(rfc3339_millis(t), "2025-12-03T08:41:00.123Z");
        // 2024-02-29 (leap day) 23:59:59.999
        let leap = UNIX_EPOCH + Duration::from_millis(1_709_251_199_999);
        assert_eq!(rfc3339_millis(leap), "2024-02-29T23:59:59.999Z");
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(rfc3339_millis(before), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn call_events_are_flat_objects_with_the_envelope() {
        let created = json_of(Event::CallCreated { call: facts() });
        assert_eq!(
            created,
            json!({
                "id": 7, "version": SCHEMA_VERSION, "time": "2025-12-03T08:41:00.123Z",
                "type": "call.created", "call_id": "c1", "sip_call_id": "abc@10.0.0.1",
                "direction": "web_to_sip", "web_user": "alice", "number": "1001"
            })
        );
        let ringing = json_of(Event::CallRinging {
            call: CallFacts {
                sip_call_id: None,
                ..facts()
            },
            sip_code: None,
        });
        assert_eq!(ringing["type"], "call.ringing");
        assert_eq!(ringing["sip_call_id"], Value::Null, "always present");
        assert!(ringing.get("sip_code").is_none(), "omitted when unknown");
        let answered = json_of(Event::CallAnswered {
            call: facts(),
            setup_ms: 1500,
        });
        assert_eq!(answered["setup_ms"], 1500);
    }

    #[test]
    fn call_ended_carries_cause_code_rtm_state_and_durations() {
        let ended = json_of(Event::CallEnded {
            call: facts(),
            end: CallEnd {
                cause: "sip_failed",
                detail: None,
                sip_code: Some(486),
                rtm_state: Some("REFUSED_BY_REMOTE"),
                rtm_reason: None,
                duration_ms: 2100,
                talk_ms: None,
            },
        });
        assert_eq!(ended["type"], "call.ended");
        assert_eq!(ended["cause"], "sip_failed");
        assert_eq!(ended["sip_code"], 486);
        assert_eq!(ended["rtm_state"], "REFUSED_BY_REMOTE");
        assert_eq!(ended["rtm_reason"], Value::Null);
        assert_eq!(ended["duration_ms"], 2100);
        assert_eq!(ended["talk_ms"], Value::Null);
        assert!(ended.get("detail").is_none());
        assert_eq!(ended["call_id"], "c1");
    }

    #[test]
    fn sip_and_user_events() {
        let reg = json_of(Event::RegistrationChanged {
            account: "1000".into(),
            pbx: "127.0.0.1:5060".into(),
            registration: RegistrationState::Failed {
                last_error: "403 Forbidden".into(),
                retry_in: 4,
            },
        });
        assert_eq!(reg["type"], "registration.changed");
        assert_eq!(
            reg["registration"],
            json!({"state": "failed", "last_error": "403 Forbidden", "retry_in": 4})
        );
        let up = json_of(Event::PbxUp {
            pbx: "127.0.0.1:5060".into(),
            rtt_ms: 3,
        });
        assert_eq!(
            (up["type"].as_str(), up["rtt_ms"].as_u64()),
            (Some("pbx.up"), Some(3))
        );
        let down = json_of(Event::PbxDown {
            pbx: "127.0.0.1:5060".into(),
            error: "no answer to OPTIONS".into(),
        });
        assert_eq!(down["error"], "no answer to OPTIONS");
        let login = json_of(Event::UserLogin {
            web_user: "alice".into(),
        });
        assert_eq!(login["web_user"], "alice");
        let logout = json_of(Event::UserLogout {
            web_user: "alice".into(),
            reason: LogoutReason::Replaced,
        });
        assert_eq!(logout["reason"], "replaced");
    }

    #[test]
    fn kind_matches_the_serialized_type() {
        let events = [
            Event::CallCreated { call: facts() },
            Event::UserLogin {
                web_user: "u".into(),
            },
            Event::PbxDown {
                pbx: "p".into(),
                error: "e".into(),
            },
        ];
        for event in events {
            let kind = event.kind();
            assert_eq!(json_of(event)["type"], kind);
        }
    }
}
