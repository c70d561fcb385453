//! The ARCall invitation content and response strings.
//!
//! Apps written for ARCall/SRProxy put JSON such as
//! `{"Mode":1,"Conference":false,"ChanId":"…","UserData":"…","SipData":"…","Pstn":true}` in the
//! invitation content. Content is an opaque string in the RTM API, so anything that is not such JSON
//! is accepted and simply carries no fields.

use serde::Deserialize;

/// The fields of an invitation's content that change how the bridge places a SIP call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InvitationContent {
    /// The app's channel id, echoed back in the response so the app can match it.
    pub chan_id: Option<String>,
    /// Opaque app data; forwarded to the PBX in an `X-ArInfo` header.
    pub user_data: Option<String>,
    /// Overrides the caller identity the phone shows (instead of the web user id).
    pub sip_data: Option<String>,
    /// Dial through the configured `[pstn]` gateway with its prefix.
    pub pstn: bool,
}

#[derive(Deserialize)]
struct RawContent {
    #[serde(rename = "ChanId")]
    chan_id: Option<serde_json::Value>,
    #[serde(rename = "UserData")]
    user_data: Option<serde_json::Value>,
    #[serde(rename = "SipData")]
    sip_data: Option<serde_json::Value>,
    #[serde(rename = "Pstn")]
    pstn: Option<serde_json::Value>,
}

/// Text of a JSON value as an app would mean it: strings unquoted, everything else as JSON.
fn value_text(value: serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) if s.is_empty() => None,
        serde_json::Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

fn truthy(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Number(n) => n.as_i64().is_some_and(|n| n != 0),
        serde_json::Value::String(s) => {
            matches!(s.to_ascii_lowercase().as_str(), "true" | "1" | "yes")
        }
        _ => false,
    }
}

impl InvitationContent {
    /// Reads the fields the bridge understands; content that is not a JSON object yields defaults.
    pub fn parse(content: &str) -> Self {
        let Ok(raw) = serde_json::from_str::<RawContent>(content) else {
            return Self::default();
        };
        Self {
            pstn: raw.pstn.as_ref().is_some_and(truthy),
            chan_id: raw.chan_id.and_then(value_text),
            user_data: raw.user_data.and_then(value_text),
            sip_data: raw.sip_data.and_then(value_text),
        }
    }
}

/// Whether a browser's refusal asks the caller to be told "declined" (603) rather than "busy" (486).
///
/// Accepts `"decline"` as plain text, or a JSON object with `"Decline": true` or
/// `"Reason": "decline"`; anything else is a busy refusal, as in SRProxy.
pub fn refusal_is_decline(response: &str) -> bool {
    let trimmed = response.trim();
    if trimmed.eq_ignore_ascii_case("decline") || trimmed.eq_ignore_ascii_case("declined") {
        return true;
    }
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(trimmed)
    else {
        return false;
    };
    map.iter()
        .any(|(key, value)| match key.to_ascii_lowercase().as_str() {
            "decline" => truthy(value),
            "reason" => value
                .as_str()
                .is_some_and(|s| s.to_ascii_lowercase().starts_with("decline")),
            _ => false,
        })
}

/// The response JSON a browser gets when the SIP side answers: the number and the channel id.
pub fn accepted_response(sip_number: &str, chan_id: &str) -> String {
    serde_json::json!({ "SipNumber": sip_number, "ChanId": chan_id }).to_string()
}

/// The response JSON for a SIP failure or refusal, so apps can show the code and reason.
pub fn sip_failure_response(code: u16, reason: &str) -> String {
    serde_json::json!({ "SipCode": code, "SipReason": reason }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arcall_content_fields_are_read() {
        let c = InvitationContent::parse(
            r#"{"Mode":1,"Conference":false,"ChanId":"ch-9","UserData":"u1","SipData":"5551234","Pstn":true}"#,
        );
        assert_eq!(c.chan_id.as_deref(), Some("ch-9"));
        assert_eq!(c.user_data.as_deref(), Some("u1"));
        assert_eq!(c.sip_data.as_deref(), Some("5551234"));
        assert!(c.pstn);
    }

    #[test]
    fn non_json_and_odd_types_do_not_fail() {
        assert_eq!(
            InvitationContent::parse("hello"),
            InvitationContent::default()
        );
        assert_eq!(InvitationContent::parse(""), InvitationContent::default());
        assert_eq!(
            InvitationContent::parse("[1,2]"),
            InvitationContent::default()
        );
        let c =
            InvitationContent::parse(r#"{"ChanId":42,"Pstn":"1","UserData":{"a":1},"SipData":""}"#);
        assert_eq!(c.chan_id.as_deref(), Some("42"));
        assert!(c.pstn);
        assert_eq!(c.user_data.as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(c.sip_data, None);
        assert!(!InvitationContent::parse(r#"{"Pstn":false}"#).pstn);
        assert!(!InvitationContent::parse(r#"{"Pstn":0}"#).pstn);
    }

    #[test]
    fn decline_is_recognised_in_each_form() {
        assert!(refusal_is_decline("decline"));
        assert!(refusal_is_decline(r#"{"Decline":true}"#));
        assert!(refusal_is_decline(r#"{"Reason":"Declined by user"}"#));
        assert!(!refusal_is_decline(""));
        assert!(!refusal_is_decline("busy"));
        assert!(!refusal_is_decline(r#"{"Decline":false}"#));
        assert!(!refusal_is_decline(r#"{"Reason":"busy"}"#));
    }

    #[test]
    fn responses_are_json() {
        let v: serde_json::Value = serde_json::from_str(&accepted_response("1005", "c1")).unwrap();
        assert_eq!(v["SipNumber"], "1005");
        assert_eq!(v["ChanId"], "c1");
        let v: serde_json::Value =
            serde_json::from_str(&sip_failure_response(486, "Busy Here")).unwrap();
        assert_eq!(v["SipCode"], 486);
    }
}
