//! srbridge: a WebRTC-to-SIP media bridge.
//!
//! Browsers log in to the embedded signalling hub and call SIP extensions on the PBX;
//! SIP phones reach browser users by dialling `0` + their id. See `README.md`.

pub mod app;
pub mod bridge;
pub mod call;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod events;
pub mod media;
pub mod ops;
pub mod signal;
pub mod sip;
pub mod web;

#[cfg(test)]
mod fuzz;
