#![allow(dead_code, unused_imports)]
//! Real-peer test harness shared by the integration tests (`mod support;`).
//!
//! * [`ports`]: loopback ports that no other test (thread or process) is using.
//! * [`certs`]: a CA, server and client certificate made with rcgen (TLS toward NATS).
//! * [`log_scan`]: a log's hex and base64 spans decoded, to look for secrets in any encoding.
//! * [`nats`]: a `nats-server` on a free loopback port, stoppable and restartable (cluster tests).
//! * [`node`]: the `srbridge` daemon as a separate process (a cluster node that can be killed).
//! * [`pbx`]: Kamailio started from `config/kamailio/kamailio.cfg` as a FreeSWITCH-like registrar.
//! * [`baresip`]: a baresip 1.0.0 phone registered on the PBX, driven over `ctrl_tcp`.
//! * [`sipp`]: SIPp scenarios from `tests/sipp/`, as UAC run to completion or as a background UAS.
//! * [`audio`]: tone WAV writer and tone analysis (level, dominant frequency) for content checks.
//! * [`pcap`]: RTP tone streams as pcap files for SIPp's `play_pcap_audio`.
//!
//! Every child process runs in its own process group, gets SIGTERM if the spawning thread dies, and is
//! killed on `Drop`; its output goes to a log file in a per-object temp dir, printed when the test panics.
//! The API is async (tokio) because tests run the bridge in the same runtime: never block the runtime
//! while waiting for a peer.

pub mod audio;
pub mod baresip;
pub mod certs;
pub mod log_scan;
pub mod nats;
pub mod node;
pub mod pbx;
pub mod pcap;
pub mod ports;
mod process;
pub mod rig;
pub mod sipp;
pub mod sse;
pub mod webrtc_peer;
pub mod ws;

pub use audio::{assert_tone, assert_wav_tone, read_wav, write_tone_wav, ToneAnalysis};
pub use baresip::{Baresip, BaresipEvent, BaresipOptions};
pub use pbx::Pbx;
pub use sipp::{Sipp, SippProcess, SippResult};
pub use ws::WsClient;

use std::path::PathBuf;

/// Root of the crate, for files the harness reads (`config/`, `tests/sipp/`).
pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
