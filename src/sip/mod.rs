//! The SIP side of the bridge, built on rsipstack (transport, RFC 3261 transactions and timers,
//! dialogs, digest auth): the proxy account's registration, PBX pings, and calls in both
//! directions. rsipstack's types stay inside this module; the call layer sees [`SipUa`],
//! [`SipCall`] and plain events.
//!
//! From rsipstack: UDP/TCP transport, transactions with retransmissions and timers, dialogs
//! (route sets from Record-Route, ACK for 2xx, CANCEL, BYE, in-dialog request matching), digest
//! auth on 401/407, the REGISTER transaction. Ours: the registration policy (refresh, back-off,
//! re-register when the PBX returns, unregister on shutdown), OPTIONS pings and PBX state,
//! screening of incoming INVITEs (peers, the target header/dial prefix, in every form a PBX sends), Contact/Via address choice
//! (`public_ip`, never 0.0.0.0), caller-identity headers, the per-call event driver (re-offers
//! through the call layer, `o=` version bump, cleanup on drop), immediate 503 for an unreachable
//! TCP PBX, trace-only message logging, and the door in front of the stack (`door`: raw requests
//! checked and strangers refused before any transaction; `doorman`: the UDP socket wrapper, the TCP
//! accept loop with its per-IP cap and first-message deadline, `tcp_gate`).

mod call;
mod crossing;
pub(crate) mod door;
mod doorman;
mod error;
pub(crate) mod inbound;
mod options;
pub(crate) mod origin;
pub(crate) mod pbx_set;
mod register;
pub mod sdp;
mod session_timer;
mod status;
pub(crate) mod target;
mod tcp_gate;
mod ua;

pub use call::{CallDirection, IncomingCall, OutgoingInvite, SipCall, SipCallEvent};
pub use error::SipError;
pub use status::{PbxState, RegistrationState, SipPbxStatus, SipStatus};
pub use ua::{SipUa, UaOptions};

/// `tracing` filter directives for the SIP stack at `level`: rsipstack logs whole messages at INFO,
/// so below SENSITIVE it is held to WARN (bodies only at trace level, as the log rules want).
pub fn log_directives(level: crate::config::LogLevel) -> String {
    use crate::config::LogLevel;
    match level {
        LogLevel::Sensitive => "rsipstack=trace".to_string(),
        LogLevel::Error | LogLevel::None => format!("rsipstack={}", level.filter_directive()),
        _ => "rsipstack=warn".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::log_directives;
    use crate::config::LogLevel;

    #[test]
    fn rsipstack_message_dumps_only_at_sensitive_level() {
        assert_eq!(log_directives(LogLevel::Sensitive), "rsipstack=trace");
        for level in [LogLevel::Debug, LogLevel::Info, LogLevel::Warn] {
            assert_eq!(log_directives(level), "rsipstack=warn", "{level}");
        }
        assert_eq!(log_directives(LogLevel::Error), "rsipstack=error");
        assert_eq!(log_directives(LogLevel::None), "rsipstack=off");
    }
}
