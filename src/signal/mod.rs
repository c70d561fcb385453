//! The signalling hub browsers log in to, replacing anyRTC's RTM cloud.
//!
//! Browsers speak the JSON-over-WebSocket protocol of `docs/protocol.md` (through the bundled JS
//! client `web-demo/rtm-client.js`). [`core`] holds the rules without sockets (logins, tokens,
//! invitations, routing); [`hub`] is the axum shell and the [`Hub`] handle the call layer uses:
//! anything addressed to someone who is not a logged-in web user arrives as a [`BridgeEvent`].

pub mod core;
pub mod hub;
mod invitation;
pub mod origin;
pub mod protocol;
pub mod token;
pub mod uid;

#[cfg(test)]
mod tests;

pub use self::core::{BridgeEvent, DeliveryError, HubSettings};
pub use self::hub::Hub;
pub use self::protocol::{
    ConnectionChangeReason, ConnectionState, ErrorCode, FailureReason, LocalInvitationState,
    RemoteFailureReason, RemoteInvitationState, PROTOCOL_VERSION,
};
pub use self::token::{mint_token, verify_token, TokenError};
