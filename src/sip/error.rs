//! Errors of the SIP user agent, in the project's own terms (no rsipstack types leak out).

use thiserror::Error;

/// What can go wrong starting the UA or driving a call.
#[derive(Debug, Error)]
pub enum SipError {
    /// The SIP socket could not be bound (port in use, bad listen_ip).
    #[error("cannot bind SIP {transport} on {addr}: {source}")]
    Bind {
        /// `udp` or `tcp`.
        transport: &'static str,
        /// The address we tried.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// `global.sip_svr` is a name that does not resolve.
    #[error("cannot resolve the PBX address {0}: {1}")]
    Resolve(String, String),
    /// A header, URI or request could not be built from our inputs (bad callee, bad header).
    #[error("invalid SIP input: {0}")]
    Invalid(String),
    /// The SIP stack refused or failed an operation (transport down, dialog gone).
    #[error("SIP stack: {0}")]
    Stack(String),
    /// The UA is shutting down or has stopped.
    #[error("the SIP user agent is shut down")]
    Shutdown,
    /// The call is not in a state where this action makes sense (e.g. answer after BYE).
    #[error("call {call_id}: {action} not possible now ({state})")]
    InvalidState {
        /// Our call id.
        call_id: String,
        /// What was asked.
        action: &'static str,
        /// Why not.
        state: String,
    },
}

impl From<rsipstack::Error> for SipError {
    fn from(e: rsipstack::Error) -> Self {
        SipError::Stack(e.to_string())
    }
}
