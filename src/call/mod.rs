//! A call: the glue between a browser invitation and a SIP dialog.
//!
//! [`machine`] holds the per-call state machine (sans-IO, the mapping tables of SPEC §3);
//! [`content`] reads the ARCall content and builds the response strings browsers expect.

pub mod content;
pub mod machine;

#[cfg(test)]
mod tests;
