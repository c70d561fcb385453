//! Process-wide metrics, cheap enough for the media hot path (one relaxed atomic add per
//! update, no locks, no allocation), rendered as Prometheus text exposition (`GET /metrics`).
//!
//! Every module updates the one registry returned by [`metrics()`]:
//!
//! ```
//! use srbridge::ops::metrics::{metrics, ErrorKind, Limit};
//! use srbridge::ops::Direction;
//! use std::time::Duration;
//!
//! let m = metrics();
//! m.calls_started.get(Direction::WebToSip).inc();
//! // calls_active is kept by lifecycle::CallGuard (Lifecycle::try_start_call): don't touch it
//! m.call_setup.observe(Duration::from_millis(350)); // INVITE sent → 200 OK
//! m.calls_answered.get(Direction::WebToSip).inc();
//! m.call_failed(486);                               // final SIP code; 0 = none (timeout, transport)
//! // hot path: take `&'static Counter`s once per call, then plain adds per packet
//! let packets = &m.rtp_packets.web_to_sip;
//! packets.inc();
//! m.rtp_bytes.web_to_sip.add(172);
//! m.error(ErrorKind::SipParse);
//! m.limit_hit(Limit::MaxCalls);
//! ```
//!
//! Names are `srbridge_*`; durations are exported in seconds.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use super::status::RegistrationState;
use super::Direction;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A zero counter (usable in `static`s).
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value that goes up and down (calls in progress, sessions).
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// A zero gauge (usable in `static`s).
    pub const fn new() -> Self {
        Gauge(AtomicI64::new(0))
    }
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    /// Subtracts one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Relaxed);
    }
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
    /// `inc` now and `dec` when the guard drops, so an early return or panic cannot leave
    /// a call or session counted forever.
    pub fn guard(&self) -> GaugeGuard<'_> {
        self.inc();
        GaugeGuard(self)
    }
}

/// Decrements its gauge on drop (see [`Gauge::guard`]).
#[must_use = "the gauge is decremented when this guard is dropped"]
#[derive(Debug)]
pub struct GaugeGuard<'a>(&'a Gauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

const MAX_BUCKETS: usize = 12;

/// A duration histogram with fixed bucket bounds (nanoseconds, at most 12).
#[derive(Debug)]
pub struct Histogram {
    bounds_ns: &'static [u64],
    buckets: [AtomicU64; MAX_BUCKETS],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// A histogram with these upper bounds in nanoseconds (ascending, at most 12; more are
    /// ignored).
    pub const fn new(bounds_ns: &'static [u64]) -> Self {
        Histogram {
            bounds_ns,
            buckets: [const { AtomicU64::new(0) }; MAX_BUCKETS],
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let bounds = &self.bounds_ns[..self.bounds_ns.len().min(MAX_BUCKETS)];
        if let Some(i) = bounds.iter().position(|&b| ns <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.sum_ns.fetch_add(ns, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }
}

/// One value per media/call direction.
#[derive(Debug, Default)]
pub struct PerDirection<T> {
    /// Browser → SIP.
    pub web_to_sip: T,
    /// SIP → browser.
    pub sip_to_web: T,
}

impl<T> PerDirection<T> {
    /// The value for `dir`.
    pub fn get(&self, dir: Direction) -> &T {
        match dir {
            Direction::WebToSip => &self.web_to_sip,
            Direction::SipToWeb => &self.sip_to_web,
        }
    }
}

macro_rules! labelled_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $label:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vm])* $variant,)* }
        impl $name {
            /// Every variant, in label order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];
            /// The Prometheus label value.
            pub fn label(self) -> &'static str {
                match self { $($name::$variant => $label,)* }
            }
        }
    };
}

labelled_enum!(
    /// Kinds of bad input or failure counted in `srbridge_errors_total{kind}`.
    ErrorKind {
        /// Unparseable SIP message.
        SipParse = "sip_parse",
        /// Unusable SDP.
        Sdp = "sdp",
        /// Malformed JSON from a browser.
        Json = "json",
        /// Invalid RTP/RTCP packet.
        Rtp = "rtp",
        /// RTP from a source the strict-source rule does not accept (a stranger), dropped.
        RtpSource = "rtp_source",
        /// Invalid STUN/ICE packet.
        Stun = "stun",
        /// DTLS/SRTP failure.
        Dtls = "dtls",
        /// Content or message over its size limit.
        Oversize = "oversize",
        /// Login or digest authentication failure.
        Auth = "auth",
        /// SIP request from an address that is neither the PBX nor allowed (answered 403).
        SipPeerRefused = "sip_peer_refused",
        /// SIP message over the size the transport takes (answered 513 or dropped).
        SipOversize = "sip_oversize",
        /// SIP request with a method the bridge does not handle (answered 405/501).
        SipMethod = "sip_method",
        /// SIP TCP connection refused (too many from one IP) or closed before one message.
        SipConnection = "sip_connection",
        /// Socket or transport error.
        Transport = "transport",
        /// Codec encode/decode failure.
        Codec = "codec",
        /// A bug-shaped failure that was contained.
        Internal = "internal",
    }
);

labelled_enum!(
    /// `[limits]` that refused something, counted in `srbridge_limits_hit_total{limit}`.
    Limit {
        /// `max_calls` reached.
        MaxCalls = "max_calls",
        /// `max_setups_per_sec` exceeded.
        MaxSetupsPerSec = "max_setups_per_sec",
        /// `max_ws_sessions` reached.
        MaxWsSessions = "max_ws_sessions",
        /// No free RTP port in the configured range.
        RtpPorts = "rtp_ports",
        /// Refused because the bridge is draining (SIGTERM).
        Draining = "draining",
        /// An HTTP connection refused: its address holds `max_conns_per_ip`.
        MaxConnsPerIp = "max_conns_per_ip",
        /// An HTTP connection refused: descriptors are down to the media reserve.
        FdReserve = "fd_reserve",
    }
);

labelled_enum!(
    /// Calls the bridge ended because a peer went silent, counted in
    /// `srbridge_calls_ended_total{reason}`.
    Ending {
        /// No RTP/RTCP (SIP leg) or RTP/RTCP/STUN (browser leg) for `[media] rtp_timeout`.
        RtpTimeout = "rtp_timeout",
        /// The peer let the RFC 4028 session interval pass without a refresh.
        SessionExpired = "session_expired",
    }
);

const ERROR_KINDS: usize = ErrorKind::ALL.len();
const ENDINGS: usize = Ending::ALL.len();
const LIMITS: usize = Limit::ALL.len();
/// SIP final codes 100..=699 each get a slot; slot 0 is "no SIP code".
const CODE_SLOTS: usize = 700;

const MS: u64 = 1_000_000;
const US: u64 = 1_000;
const SETUP_BOUNDS: &[u64] = &[
    100 * MS,
    250 * MS,
    500 * MS,
    1000 * MS,
    2000 * MS,
    5000 * MS,
    10_000 * MS,
    30_000 * MS,
    60_000 * MS,
];
const JITTER_BOUNDS: &[u64] = &[
    MS,
    5 * MS,
    10 * MS,
    20 * MS,
    40 * MS,
    80 * MS,
    160 * MS,
    320 * MS,
];
const TRANSCODE_BOUNDS: &[u64] = &[
    10 * US,
    25 * US,
    50 * US,
    100 * US,
    250 * US,
    500 * US,
    MS,
    5 * MS,
];

/// The registry. Fields are public so hot paths can hold `&'static` references.
#[derive(Debug)]
pub struct Metrics {
    /// `srbridge_calls_started_total{direction}`.
    pub calls_started: PerDirection<Counter>,
    /// `srbridge_calls_answered_total{direction}`.
    pub calls_answered: PerDirection<Counter>,
    calls_failed: [Counter; CODE_SLOTS],
    /// `srbridge_calls_active`: kept by `lifecycle::CallGuard`; do not update it elsewhere.
    pub calls_active: Gauge,
    /// `srbridge_call_setup_seconds`: call start → answer.
    pub call_setup: Histogram,
    /// `srbridge_rtp_packets_total{direction}`: packets relayed.
    pub rtp_packets: PerDirection<Counter>,
    /// `srbridge_rtp_bytes_total{direction}`: payload bytes relayed.
    pub rtp_bytes: PerDirection<Counter>,
    /// `srbridge_rtp_lost_total{direction}`: packets missing at the receiving side.
    pub rtp_lost: PerDirection<Counter>,
    /// `srbridge_rtp_jitter_seconds{direction}`: interarrival jitter samples (RFC 3550).
    pub rtp_jitter: PerDirection<Histogram>,
    /// `srbridge_transcode_seconds{direction}`: time to transcode one frame.
    pub transcode: PerDirection<Histogram>,
    /// `srbridge_registration_state{state}`: set with [`Metrics::set_registration`].
    registration: AtomicI64,
    /// `srbridge_registration_attempts_total`: REGISTERs sent.
    pub registration_attempts: Counter,
    /// `srbridge_registration_failures_total`: REGISTERs that failed.
    pub registration_failures: Counter,
    /// `srbridge_pbx_up`: 1 when the last OPTIONS ping was answered.
    pub pbx_up: Gauge,
    /// `srbridge_pbx_rtt_seconds` (stored in microseconds): last OPTIONS round trip.
    pub pbx_rtt_us: Gauge,
    /// `srbridge_pbx_reachable{pbx}` and `srbridge_pbx_registration_state{pbx,state}`: one row
    /// per configured PBX, set with [`Metrics::set_pbxs`].
    pbxs: Mutex<Vec<PbxSeries>>,
    /// `srbridge_call_failovers_total`: outgoing INVITEs retried on the next PBX.
    pub call_failovers: Counter,
    /// `srbridge_ws_sessions`: WebSocket sessions open now (use [`Gauge::guard`]).
    pub ws_sessions: Gauge,
    /// `srbridge_ws_sessions_total`: WebSocket sessions accepted.
    pub ws_sessions_total: Counter,
    /// `srbridge_users_logged_in`: browser users logged in now.
    pub users_logged_in: Gauge,
    /// `srbridge_cluster_connected`: 1/0 with `[cluster]`, -1 (not shown) without.
    cluster_connected: Gauge,
    errors: [Counter; ERROR_KINDS],
    limits: [Counter; LIMITS],
    endings: [Counter; ENDINGS],
}

static METRICS: Metrics = Metrics::new();

/// The process-wide registry every module updates.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// An empty registry (the process uses [`metrics()`]; tests make their own).
    pub const fn new() -> Self {
        Metrics {
            calls_started: PerDirection {
                web_to_sip: Counter::new(),
                sip_to_web: Counter::new(),
            },
            calls_answered: PerDirection {
                web_to_sip: Counter::new(),
                sip_to_web: Counter::new(),
            },
            calls_failed: [const { Counter::new() }; CODE_SLOTS],
            calls_active: Gauge::new(),
            call_setup: Histogram::new(SETUP_BOUNDS),
            rtp_packets: PerDirection {
                web_to_sip: Counter::new(),
                sip_to_web: Counter::new(),
            },
            rtp_bytes: PerDirection {
                web_to_sip: Counter::new(),
                sip_to_web: Counter::new(),
            },
            rtp_lost: PerDirection {
                web_to_sip: Counter::new(),
                sip_to_web: Counter::new(),
            },
            rtp_jitter: PerDirection {
                web_to_sip: Histogram::new(JITTER_BOUNDS),
                sip_to_web: Histogram::new(JITTER_BOUNDS),
            },
            transcode: PerDirection {
                web_to_sip: Histogram::new(TRANSCODE_BOUNDS),
                sip_to_web: Histogram::new(TRANSCODE_BOUNDS),
            },
            registration: AtomicI64::new(RegistrationState::Disabled as i64),
            registration_attempts: Counter::new(),
            registration_failures: Counter::new(),
            pbx_up: Gauge::new(),
            pbx_rtt_us: Gauge::new(),
            pbxs: Mutex::new(Vec::new()),
            call_failovers: Counter::new(),
            ws_sessions: Gauge::new(),
            ws_sessions_total: Counter::new(),
            users_logged_in: Gauge::new(),
            cluster_connected: Gauge(AtomicI64::new(-1)),
            errors: [const { Counter::new() }; ERROR_KINDS],
            limits: [const { Counter::new() }; LIMITS],
            endings: [const { Counter::new() }; ENDINGS],
        }
    }

    /// Counts a failed call by its final SIP code (`0`: no SIP answer, e.g. timeout or
    /// transport error; codes outside 100-699 count as 0).
    pub fn call_failed(&self, sip_code: u16) {
        let slot = if (100..700).contains(&sip_code) {
            usize::from(sip_code)
        } else {
            0
        };
        self.calls_failed[slot].inc();
    }

    /// Failed calls counted for `sip_code` so far.
    pub fn calls_failed(&self, sip_code: u16) -> u64 {
        self.calls_failed
            .get(usize::from(sip_code))
            .map_or(0, Counter::get)
    }

    /// Counts one error of `kind`.
    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].inc();
    }

    /// Counts `n` errors of `kind` at once (a media leg's tally since the last publish).
    pub fn errors_add(&self, kind: ErrorKind, n: u64) {
        self.errors[kind as usize].add(n);
    }

    /// Errors of `kind` so far.
    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.errors[kind as usize].get()
    }

    /// Counts one refusal by `limit`.
    pub fn limit_hit(&self, limit: Limit) {
        self.limits[limit as usize].inc();
    }

    /// Counts one call ended for `reason`.
    pub fn call_ended(&self, reason: Ending) {
        self.endings[reason as usize].inc();
    }

    /// Calls ended for `reason` so far.
    pub fn calls_ended(&self, reason: Ending) -> u64 {
        self.endings[reason as usize].get()
    }

    /// Refusals by `limit` so far.
    pub fn limits_hit(&self, limit: Limit) -> u64 {
        self.limits[limit as usize].get()
    }

    /// Records the PBX registration state.
    pub fn set_registration(&self, state: RegistrationState) {
        self.registration.store(state as i64, Relaxed);
    }

    /// The PBX registration state last recorded.
    pub fn registration(&self) -> RegistrationState {
        RegistrationState::from_index(self.registration.load(Relaxed))
    }

    /// Records an OPTIONS ping result: `Some(rtt)` answered, `None` unanswered.
    pub fn set_pbx_ping(&self, rtt: Option<Duration>) {
        match rtt {
            Some(rtt) => {
                self.pbx_up.set(1);
                self.pbx_rtt_us
                    .set(i64::try_from(rtt.as_micros()).unwrap_or(i64::MAX));
            }
            None => self.pbx_up.set(0),
        }
    }

    /// Records the cluster's NATS connection (`None`: not in a cluster, the metric is not shown).
    pub fn set_cluster_connected(&self, up: Option<bool>) {
        self.cluster_connected.set(up.map_or(-1, i64::from));
    }

    /// Records every PBX's reachability and registration (replaces the last set).
    pub fn set_pbxs(&self, pbxs: Vec<PbxSeries>) {
        *self.pbxs.lock().unwrap_or_else(|e| e.into_inner()) = pbxs;
    }

    /// Prometheus text exposition (format 0.0.4) of every metric, plus the process facts
    /// the caller knows (uptime, draining).
    pub fn render(&self, uptime: Duration, draining: bool) -> String {
        let mut out = String::with_capacity(8192);
        let o = &mut out;
        header(o, "srbridge_build_info", "gauge", "Build version.");
        line(
            o,
            "srbridge_build_info",
            &format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
            1,
        );
        header(
            o,
            "srbridge_uptime_seconds",
            "gauge",
            "Seconds since start.",
        );
        line_f(o, "srbridge_uptime_seconds", "", uptime.as_secs_f64());
        header(
            o,
            "srbridge_draining",
            "gauge",
            "1 after SIGTERM while calls finish.",
        );
        line(o, "srbridge_draining", "", i64::from(draining));

        per_dir_counter(
            o,
            "srbridge_calls_started_total",
            "Calls started.",
            &self.calls_started,
        );
        per_dir_counter(
            o,
            "srbridge_calls_answered_total",
            "Calls answered.",
            &self.calls_answered,
        );
        header(
            o,
            "srbridge_calls_failed_total",
            "counter",
            "Calls that failed, by final SIP code (none: no SIP answer).",
        );
        for (slot, c) in self.calls_failed.iter().enumerate() {
            let v = c.get();
            if v > 0 || slot == 0 {
                let code = if slot == 0 {
                    "none".to_string()
                } else {
                    slot.to_string()
                };
                line(
                    o,
                    "srbridge_calls_failed_total",
                    &format!("code=\"{code}\""),
                    v,
                );
            }
        }
        header(o, "srbridge_calls_active", "gauge", "Calls in progress.");
        line(o, "srbridge_calls_active", "", self.calls_active.get());
        histogram(
            o,
            "srbridge_call_setup_seconds",
            "Call setup time (start to answer).",
            &[("", &self.call_setup)],
        );
        per_dir_counter(
            o,
            "srbridge_rtp_packets_total",
            "RTP packets relayed.",
            &self.rtp_packets,
        );
        per_dir_counter(
            o,
            "srbridge_rtp_bytes_total",
            "RTP payload bytes relayed.",
            &self.rtp_bytes,
        );
        per_dir_counter(
            o,
            "srbridge_rtp_lost_total",
            "RTP packets lost before the bridge.",
            &self.rtp_lost,
        );
        histogram(
            o,
            "srbridge_rtp_jitter_seconds",
            "RTP interarrival jitter samples.",
            &[
                ("direction=\"web_to_sip\"", &self.rtp_jitter.web_to_sip),
                ("direction=\"sip_to_web\"", &self.rtp_jitter.sip_to_web),
            ],
        );
        histogram(
            o,
            "srbridge_transcode_seconds",
            "Time to transcode one audio frame.",
            &[
                ("direction=\"web_to_sip\"", &self.transcode.web_to_sip),
                ("direction=\"sip_to_web\"", &self.transcode.sip_to_web),
            ],
        );
        header(
            o,
            "srbridge_registration_state",
            "gauge",
            "PBX registration state (1 for the current state).",
        );
        let current = self.registration();
        for state in RegistrationState::ALL {
            line(
                o,
                "srbridge_registration_state",
                &format!("state=\"{}\"", state.label()),
                i64::from(*state == current),
            );
        }
        counter(
            o,
            "srbridge_registration_attempts_total",
            "REGISTER requests sent.",
            self.registration_attempts.get(),
        );
        counter(
            o,
            "srbridge_registration_failures_total",
            "REGISTER requests that failed.",
            self.registration_failures.get(),
        );
        header(
            o,
            "srbridge_pbx_up",
            "gauge",
            "1 when the PBX answered the last OPTIONS ping.",
        );
        line(o, "srbridge_pbx_up", "", self.pbx_up.get());
        let cluster = self.cluster_connected.get();
        if cluster >= 0 {
            header(
                o,
                "srbridge_cluster_connected",
                "gauge",
                "1 while this bridge is connected to its cluster's NATS server.",
            );
            line(o, "srbridge_cluster_connected", "", cluster);
        }
        header(
            o,
            "srbridge_pbx_rtt_seconds",
            "gauge",
            "Last OPTIONS round-trip time.",
        );
        line_f(
            o,
            "srbridge_pbx_rtt_seconds",
            "",
            self.pbx_rtt_us.get() as f64 / 1e6,
        );
        self.render_pbxs(o);
        header(
            o,
            "srbridge_ws_sessions",
            "gauge",
            "Browser WebSocket sessions open.",
        );
        line(o, "srbridge_ws_sessions", "", self.ws_sessions.get());
        counter(
            o,
            "srbridge_ws_sessions_total",
            "Browser WebSocket sessions accepted.",
            self.ws_sessions_total.get(),
        );
        header(
            o,
            "srbridge_users_logged_in",
            "gauge",
            "Browser users logged in.",
        );
        line(
            o,
            "srbridge_users_logged_in",
            "",
            self.users_logged_in.get(),
        );
        header(
            o,
            "srbridge_errors_total",
            "counter",
            "Bad input and failures, by kind.",
        );
        for kind in ErrorKind::ALL {
            line(
                o,
                "srbridge_errors_total",
                &format!("kind=\"{}\"", kind.label()),
                self.errors(*kind),
            );
        }
        header(
            o,
            "srbridge_limits_hit_total",
            "counter",
            "Requests refused by a limit.",
        );
        for limit in Limit::ALL {
            line(
                o,
                "srbridge_limits_hit_total",
                &format!("limit=\"{}\"", limit.label()),
                self.limits_hit(*limit),
            );
        }
        header(
            o,
            "srbridge_calls_ended_total",
            "counter",
            "Calls the bridge ended because a peer went silent, by reason.",
        );
        for reason in Ending::ALL {
            line(
                o,
                "srbridge_calls_ended_total",
                &format!("reason=\"{}\"", reason.label()),
                self.calls_ended(*reason),
            );
        }
        out
    }
}

/// One PBX's row of the per-PBX series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PbxSeries {
    /// `ip:port`, the `pbx` label.
    pub pbx: String,
    /// `Some(true)` answering, `Some(false)` down, `None` not known yet (no row).
    pub reachable: Option<bool>,
    /// The proxy account's registration there.
    pub registration: RegistrationState,
}

impl Metrics {
    fn render_pbxs(&self, o: &mut String) {
        let pbxs = self.pbxs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        header(
            o,
            "srbridge_pbx_reachable",
            "gauge",
            "Per PBX: 1 when it counts as up, 0 when down (no row until known).",
        );
        for p in &pbxs {
            if let Some(up) = p.reachable {
                line(
                    o,
                    "srbridge_pbx_reachable",
                    &format!("pbx=\"{}\"", p.pbx),
                    i64::from(up),
                );
            }
        }
        header(
            o,
            "srbridge_pbx_registration_state",
            "gauge",
            "Per PBX: registration state of the proxy account (1 for the current state).",
        );
        for p in &pbxs {
            for state in RegistrationState::ALL {
                line(
                    o,
                    "srbridge_pbx_registration_state",
                    &format!("pbx=\"{}\",state=\"{}\"", p.pbx, state.label()),
                    i64::from(*state == p.registration),
                );
            }
        }
        counter(
            o,
            "srbridge_call_failovers_total",
            "Outgoing INVITEs retried on the next PBX (503/408/transport error before any ringing).",
            self.call_failovers.get(),
        );
    }
}

fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn line(o: &mut String, name: &str, labels: &str, v: impl std::fmt::Display) {
    if labels.is_empty() {
        let _ = writeln!(o, "{name} {v}");
    } else {
        let _ = writeln!(o, "{name}{{{labels}}} {v}");
    }
}

fn line_f(o: &mut String, name: &str, labels: &str, v: f64) {
    line(o, name, labels, v);
}

fn counter(o: &mut String, name: &str, help: &str, v: u64) {
    header(o, name, "counter", help);
    line(o, name, "", v);
}

fn per_dir_counter(o: &mut String, name: &str, help: &str, c: &PerDirection<Counter>) {
    header(o, name, "counter", help);
    for dir in [Direction::WebToSip, Direction::SipToWeb] {
        line(
            o,
            name,
            &format!("direction=\"{}\"", dir.label()),
            c.get(dir).get(),
        );
    }
}

fn histogram(o: &mut String, name: &str, help: &str, series: &[(&str, &Histogram)]) {
    header(o, name, "histogram", help);
    for (labels, h) in series {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        let bounds = &h.bounds_ns[..h.bounds_ns.len().min(MAX_BUCKETS)];
        for (i, b) in bounds.iter().enumerate() {
            cumulative += h.buckets[i].load(Relaxed);
            let le = *b as f64 / 1e9;
            let _ = writeln!(o, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}");
        }
        let count = h.count.load(Relaxed);
        let _ = writeln!(o, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = h.sum_ns.load(Relaxed) as f64 / 1e9;
        line_f(o, &format!("{name}_sum"), labels, sum);
        line(o, &format!("{name}_count"), labels, count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> String {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')
                    .map(str::to_string)
            })
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    #[test]
    fn counters_gauges_and_labels_render() {
        let m = Metrics::new();
        m.calls_started.get(Direction::WebToSip).inc();
        m.calls_started.sip_to_web.add(3);
        m.call_failed(486);
        m.call_failed(486);
        m.call_failed(0);
        m.call_failed(999);
        m.error(ErrorKind::Json);
        m.limit_hit(Limit::MaxCalls);
        m.call_ended(Ending::RtpTimeout);
        m.set_registration(RegistrationState::Registered);
        m.set_pbx_ping(Some(Duration::from_millis(12)));
        let guard = m.calls_active.guard();
        let text = m.render(Duration::from_secs(5), false);
        assert_eq!(
            value(
                &text,
                "srbridge_calls_started_total{direction=\"web_to_sip\"}"
            ),
            "1"
        );
        assert_eq!(
            value(
                &text,
                "srbridge_calls_started_total{direction=\"sip_to_web\"}"
            ),
            "3"
        );
        assert_eq!(
            value(&text, "srbridge_calls_failed_total{code=\"486\"}"),
            "2"
        );
        assert_eq!(
            value(&text, "srbridge_calls_failed_total{code=\"none\"}"),
            "2"
        );
        assert!(!text.contains("code=\"999\""));
        assert_eq!(value(&text, "srbridge_errors_total{kind=\"json\"}"), "1");
        assert_eq!(
            value(&text, "srbridge_limits_hit_total{limit=\"max_calls\"}"),
            "1"
        );
        assert_eq!(
            value(&text, "srbridge_calls_ended_total{reason=\"rtp_timeout\"}"),
            "1"
        );
        assert_eq!(
            value(
                &text,
                "srbridge_calls_ended_total{reason=\"session_expired\"}"
            ),
            "0"
        );
        assert_eq!(
            value(&text, "srbridge_registration_state{state=\"registered\"}"),
            "1"
        );
        assert_eq!(
            value(&text, "srbridge_registration_state{state=\"failed\"}"),
            "0"
        );
        assert_eq!(value(&text, "srbridge_pbx_rtt_seconds"), "0.012");
        assert_eq!(value(&text, "srbridge_calls_active"), "1");
        drop(guard);
        let text = m.render(Duration::from_secs(5), true);
        assert_eq!(value(&text, "srbridge_calls_active"), "0");
        assert_eq!(value(&text, "srbridge_draining"), "1");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::new();
        for ms in [50, 300, 300, 90_000] {
            m.call_setup.observe(Duration::from_millis(ms));
        }
        let text = m.render(Duration::ZERO, false);
        assert_eq!(
            value(&text, "srbridge_call_setup_seconds_bucket{le=\"0.1\"}"),
            "1"
        );
        assert_eq!(
            value(&text, "srbridge_call_setup_seconds_bucket{le=\"0.5\"}"),
            "3"
        );
        assert_eq!(
            value(&text, "srbridge_call_setup_seconds_bucket{le=\"60\"}"),
            "3"
        );
        assert_eq!(
            value(&text, "srbridge_call_setup_seconds_bucket{le=\"+Inf\"}"),
            "4"
        );
        assert_eq!(value(&text, "srbridge_call_setup_seconds_count"), "4");
        assert_eq!(value(&text, "srbridge_call_setup_seconds_sum"), "90.65");
        assert_eq!(
            value(
                &text,
                "srbridge_transcode_seconds_bucket{direction=\"web_to_sip\",le=\"0.00001\"}"
            ),
            "0"
        );
    }
}
