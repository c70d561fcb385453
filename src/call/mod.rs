//! A call: the glue between a browser invitation and a SIP dialog.
//!
//! [`machine`] holds the per-call state machine (sans-IO, the mapping tables of SPEC §3);
//! [`content`] reads the ARCall content and builds the response strings browsers expect;
//! [`ports`] is what the call layer needs from the hub, the SIP user agent and the media path;
//! [`manager`] runs each call as a task driving its machine through those ports.

pub mod content;
pub mod machine;
pub mod manager;
pub mod ports;

#[cfg(test)]
mod manager_tests;
#[cfg(test)]
mod tests;
