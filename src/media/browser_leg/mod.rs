//! The browser's media leg as a sans-IO core: webrtc-rs's own `rtc` peer connection, fed
//! datagrams and time by whoever owns the sockets, with no task, channel or timer of its own.
//!
//! [`BrowserLeg`] replaces [`super::webrtc_leg::WebRtcLeg`] (the async `webrtc` shell with its
//! per-peer tasks) on the media path: the call's actor feeds it with
//! [`BrowserLeg::handle_datagram`] / [`BrowserLeg::handle_timeout`] and drains
//! [`BrowserLeg::poll_transmit`], [`BrowserLeg::poll_rtp`] and [`BrowserLeg::poll_event`]. The
//! SDP, codec and error vocabulary is the one of `webrtc_leg` ([`LegCodec`](super::webrtc_leg::LegCodec),
//! [`NegotiatedCodecs`](super::webrtc_leg::NegotiatedCodecs), [`LegState`](super::webrtc_leg::LegState),
//! [`WebRtcLegError`](super::webrtc_leg::WebRtcLegError)).
//!
//! Once connected, the leg's RTP and RTCP bypass the peer connection: `srtp_path` protects,
//! unprotects and reports with the DTLS-SRTP keys taken from it.
//!
//! [`ice_demux::IceDemux`] tells calls apart on one shared UDP port, [`single_port::SinglePort`]
//! serves that port (`[media] webrtc_single_port`), and [`shell`] is a thin tokio driver for one
//! leg (one task, sleep until the next deadline), used by the tests and the micro-benchmark.

mod core;
pub mod ice_demux;
pub mod shell;
pub mod single_port;
mod srtp_path;
pub mod stun;

pub use self::core::{BrowserLeg, BrowserLegEvent, IceCredentials, Transmit};

#[cfg(test)]
mod tests;
