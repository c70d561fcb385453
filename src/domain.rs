//! The call vocabulary every layer shares, defined once: the call layer, the SIP and browser
//! adapters, the status API, events and metrics all name these types (other modules re-export
//! them where their users look for them, e.g. `ops::Direction`).

use serde::Serialize;

/// Which side started a call, and which way its media goes; a label in status, events and
/// metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Browser → SIP: a browser invited a SIP number (browser audio toward the PBX).
    WebToSip,
    /// SIP → browser: a phone dialled `0<uid>` and the bridge invites the browser (PBX audio
    /// toward the browser).
    SipToWeb,
}

impl Direction {
    /// The label used in JSON and Prometheus.
    pub fn label(self) -> &'static str {
        match self {
            Direction::WebToSip => "web_to_sip",
            Direction::SipToWeb => "sip_to_web",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_match_the_json_form() {
        for d in [Direction::WebToSip, Direction::SipToWeb] {
            let json = serde_json::to_value(d).expect("serializes");
            assert_eq!(json, d.label());
        }
    }
}
