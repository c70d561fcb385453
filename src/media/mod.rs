//! Media: the browser leg, the SIP (RTP) leg, codecs and the jitter buffer.

pub mod g711;
pub mod jitter;
pub mod rtp;
pub mod rtp_leg;
pub mod session;
