//! Media: the browser leg, the SIP (RTP) leg, codecs and the jitter buffer.

pub mod jitter;
pub mod opus;
pub mod transcode;
pub mod webrtc_leg;
