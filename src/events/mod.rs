//! The live event stream (`GET /api/events`, the optional webhook): what FreeSWITCH's ESL gives its
//! users, as versioned JSON (docs/events.md).
//!
//! * [`event`]: the one [`Event`] type every part publishes, and its [`Envelope`] (id, version,
//!   time). The call manager publishes the `call.*` events, the SIP user agent
//!   `registration.changed` and `pbx.*`, the hub `user.*`.
//! * [`bus`]: the [`EventBus`]: serializes each event once ([`Published`]), a bounded tokio
//!   broadcast channel plus a short history for `Last-Event-ID` resumption. Publishing never waits: a consumer that falls behind is told how
//!   many events it missed (`lagged`) instead of slowing a call.
//! * [`sse`]: the Server-Sent Events response for `/api/events`.
//! * [`webhook`]: the sans-IO batching queue with back-off; [`webhook_task`] POSTs its batches.

pub mod bus;
pub mod event;
pub mod sse;
pub mod webhook;
pub mod webhook_task;

pub use bus::{Delivery, EventBus, Subscription};
pub use event::{CallEnd, CallFacts, Envelope, Event, LogoutReason, Published, SCHEMA_VERSION};
