//! The per-step figures, as the terminal table and the JSON report.

use serde::Serialize;
use srbridge::ops::Direction;

use super::cli::Peer;
use super::stats::Percentiles;

/// What the bridge process cost during one step.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BridgeCost {
    /// CPU during the measurement window, % of one core.
    pub cpu_percent: f64,
    /// The core the bridge is pinned to, if it is, and how busy it was in the window (the bridge
    /// and anything else running there): well above `cpu_percent` means the bridge competed.
    pub pinned_cpu: Option<usize>,
    pub pinned_cpu_busy_percent: Option<f64>,
    /// CPU milliseconds per second of one call.
    pub cpu_ms_per_call_second: f64,
    /// RSS before the step's users logged in.
    pub rss_baseline_kb: u64,
    /// RSS once the users were logged in, before any call.
    pub rss_sessions_kb: u64,
    /// Highest RSS seen while the calls were up.
    pub rss_peak_kb: u64,
    /// RSS after hanging up and the cooldown.
    pub rss_after_kb: u64,
    /// (sessions - baseline) / users.
    pub rss_per_session_kb: f64,
    /// (peak - sessions) / calls up: what a call adds to a logged-in user.
    pub rss_per_call_kb: f64,
    pub threads_baseline: u64,
    pub threads_peak: u64,
    pub threads_after: u64,
    pub fds_baseline: u64,
    pub fds_peak: u64,
    pub fds_after: u64,
}

/// One step: N calls in one direction.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// What carried the calls (srbridge or rtpengine); `bridge` is that process's cost.
    pub peer: Peer,
    pub direction: Direction,
    /// What the browsers send: "opus" (transcoded) or "pcmu" (relayed).
    pub codec: &'static str,
    pub calls: usize,
    pub calls_up: usize,
    /// Calls that never came up.
    pub calls_failed: usize,
    /// Calls that came up and ended before the step did.
    pub calls_dropped: usize,
    /// A few distinct failure reasons.
    pub failures: Vec<String>,
    /// Length of the measurement window.
    pub window_s: f64,
    pub bridge: Option<BridgeCost>,
    /// The load tool's own CPU in the window (% of one core): near 100 means the generator limits.
    pub tool_cpu_percent: f64,
    pub packets_sent: u64,
    pub packets_received: u64,
    /// What the browsers should have received at 50 packets a second per call up.
    pub packets_nominal: u64,
    /// Share of `packets_nominal` that never arrived: audio the users missed, whether the
    /// network dropped it or the bridge skipped frames (the table's `loss%`).
    pub missing_percent: f64,
    /// Packets missing from the sequence numbers the browsers received.
    pub packets_lost: u64,
    pub seq_gap_loss_percent: f64,
    /// Inter-arrival jitter samples (one per packet after the first of each call).
    pub jitter_samples: u64,
    pub jitter_p50_ms: Option<f64>,
    pub jitter_p99_ms: Option<f64>,
    /// Relayed calls: tagged packets the browsers sent in the window (less the last 0.5 s)…
    pub echo_packets: Option<u64>,
    /// …the share of them that never came back through bridge → SIPp echo → bridge…
    pub echo_loss_percent: Option<f64>,
    /// …and their round trip browser → bridge → echo → bridge → browser.
    pub echo_round_trip_p50_ms: Option<f64>,
    pub echo_round_trip_p99_ms: Option<f64>,
    /// Calls whose returned audio was above -30 dBFS (the echoed tone came back).
    pub calls_with_audio: usize,
    /// Setup times in ms (web→SIP: invite → call up, i.e. accepted and media connected;
    /// SIP→web: INVITE → 200 at SIPp).
    pub setup_ms: Option<Percentiles>,
    /// web→SIP: invite → `ACCEPTED_BY_REMOTE` at the browser, ms (the signalling alone).
    pub accepted_ms: Option<Percentiles>,
    /// Calls up per second from the first invitation to the last call up.
    pub setups_per_sec: f64,
    /// The bridge's CPU from the first invitation to the last call up, ms per call up (the
    /// media of calls already up included): the set-up cost; 2 ms is 500 setups/s per core.
    pub cpu_ms_per_setup: Option<f64>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub peer: Peer,
    pub bridge_pid: Option<u32>,
    pub duration_s: f64,
    pub rate: f64,
    pub relay: bool,
    pub steps: Vec<StepReport>,
}

/// "5.9/13.1", or "-" without samples.
pub fn p50_p99(p: Option<Percentiles>) -> String {
    p.map_or("-".into(), |p| format!("{:.1}/{:.1}", p.p50, p.p99))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// The table printed at the end (and after each step, one line). `loss%` and `jit99` are what the
/// browsers received (packets short of 50 a second per call, RFC 3550 inter-arrival jitter p99 in
/// ms); `echo%` and
/// `rtt99` the tagged round trip of relayed calls; `tool%` the generator's own CPU.
pub fn table(steps: &[StepReport]) -> String {
    let mut out = format!(
        "{:<9} {:<10} {:<5} {:>5} {:>5} {:>6} {:>9} {:>8} {:>8} {:>7} {:>7} {:>13} {:>11} {:>8} {:>8} {:>7} {:>7} {:>6}\n",
        "peer",
        "direction",
        "codec",
        "calls",
        "up",
        "cpu%",
        "ms/call·s",
        "KB/call",
        "KB/sess",
        "loss%",
        "jit99",
        "setup p50/p99",
        "acc p50/p99",
        "setups/s",
        "ms/setup",
        "echo%",
        "rtt99",
        "tool%",
    );
    for s in steps {
        out.push_str(&row(s));
        out.push('\n');
    }
    out
}

/// One line of the table.
pub fn row(s: &StepReport) -> String {
    let b = s.bridge.as_ref();
    format!(
        "{:<9} {:<10} {:<5} {:>5} {:>5} {:>6} {:>9} {:>8} {:>8} {:>7.2} {:>7} {:>13} {:>11} {:>8.1} {:>8} {:>7} {:>7} {:>6.0}",
        s.peer.label(),
        s.direction.label(),
        s.codec,
        s.calls,
        s.calls_up,
        opt(b.map(|b| b.cpu_percent), 1),
        opt(b.map(|b| b.cpu_ms_per_call_second), 3),
        opt(b.map(|b| b.rss_per_call_kb), 0),
        opt(b.map(|b| b.rss_per_session_kb), 0),
        s.missing_percent,
        opt(s.jitter_p99_ms, 1),
        p50_p99(s.setup_ms),
        p50_p99(s.accepted_ms),
        s.setups_per_sec,
        opt(s.cpu_ms_per_setup, 2),
        opt(s.echo_loss_percent, 2),
        opt(s.echo_round_trip_p99_ms, 1),
        s.tool_cpu_percent,
    )
}
