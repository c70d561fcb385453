//! Media: the browser leg, the SIP (RTP) leg, codecs and the jitter buffer.

pub mod browser_leg;
pub mod demux;
pub mod encoder_policy;
pub mod g711;
pub mod inactivity;
pub mod jitter;
pub mod opus;
pub mod pipeline;
pub mod plc;
pub mod recording;
pub mod rtp;
pub mod rtp_leg;
pub mod rtp_source;
pub mod session;
pub mod transcode;
pub mod webrtc_leg;
