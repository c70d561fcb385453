//! placeholder

pub mod sdp;
