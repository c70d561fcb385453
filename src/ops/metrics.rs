//! A bridge instance's metrics, cheap enough for the media hot path (one relaxed atomic add per
//! update, no locks, no allocation), kept in a `prometheus-client` registry of its own and
//! rendered as Prometheus text exposition 0.0.4 (`GET /metrics`).
//!
//! Whoever builds a bridge (`app::App`, `bridge::Bridge::start`) makes one [`Metrics`] and hands
//! an `Arc<Metrics>` to each part at construction; nothing is process-wide, so two bridges in
//! one test binary count apart:
//!
//! ```
//! use srbridge::ops::metrics::{ErrorKind, Limit, Metrics};
//! use srbridge::ops::Direction;
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! let m = Arc::new(Metrics::new());
//! m.calls_started.get(Direction::WebToSip).inc();
//! // srbridge_calls_active is read from the Lifecycle's call guards when rendered
//! m.call_setup.observe(Duration::from_millis(350)); // INVITE sent → 200 OK
//! m.calls_answered.get(Direction::WebToSip).inc();
//! m.call_failed(486);                               // final SIP code; 0 = none (timeout, transport)
//! // hot path: clone a handle once per call (it shares the atomic), then plain adds per packet
//! let packets = m.rtp_packets.web_to_sip.clone();
//! packets.inc();
//! m.rtp_bytes.web_to_sip.add(172);
//! m.error(ErrorKind::SipParse);
//! m.limit_hit(Limit::MaxCalls);
//! assert_eq!(m.errors(ErrorKind::SipParse), 1);
//! ```
//!
//! Names are `srbridge_*`; durations are exported in seconds.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{prometheus_text, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter as RawCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge as RawGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Metric, Registry};

use super::lifecycle::Lifecycle;
use super::status::RegistrationState;
use super::Direction;

/// One label, e.g. `direction="web_to_sip"`.
type Label = [(&'static str, &'static str); 1];

/// A monotonically increasing count (a handle: clones share the value).
#[derive(Debug, Clone, Default)]
pub struct Counter(RawCounter);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.inc();
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.inc_by(n);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// A value that goes up and down (sessions, users); clones share the value.
#[derive(Debug, Clone, Default)]
pub struct Gauge(RawGauge);

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0.inc();
    }
    /// Subtracts one.
    pub fn dec(&self) {
        self.0.dec();
    }
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.set(v);
    }
    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.get()
    }
}

/// A gauge in seconds (uptime, round trips).
type SecondsGauge = RawGauge<f64, AtomicU64>;

const MAX_BUCKETS: usize = 12;

/// A duration histogram with fixed bucket bounds (nanoseconds, at most 12), lock-free:
/// `prometheus-client`'s own histogram takes a mutex per observation, and transcoding time is
/// observed once per audio frame. Encoded through the crate like its own histograms.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<HistogramCells>);

#[derive(Debug)]
struct HistogramCells {
    bounds_ns: &'static [u64],
    buckets: [AtomicU64; MAX_BUCKETS],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// A histogram with these upper bounds in nanoseconds (ascending, at most 12; more are
    /// ignored).
    pub fn new(bounds_ns: &'static [u64]) -> Self {
        Histogram(Arc::new(HistogramCells {
            bounds_ns: &bounds_ns[..bounds_ns.len().min(MAX_BUCKETS)],
            buckets: [const { AtomicU64::new(0) }; MAX_BUCKETS],
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }))
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let h = &self.0;
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        if let Some(i) = h.bounds_ns.iter().position(|&b| ns <= b) {
            h.buckets[i].fetch_add(1, Relaxed);
        }
        h.sum_ns.fetch_add(ns, Relaxed);
        h.count.fetch_add(1, Relaxed);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.0.count.load(Relaxed)
    }

    /// The observations added up.
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.0.sum_ns.load(Relaxed))
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = &self.0;
        let mut buckets = [(0.0, 0); MAX_BUCKETS];
        for (i, bound) in h.bounds_ns.iter().enumerate() {
            // per bucket, not cumulative: the encoder sums them
            buckets[i] = (*bound as f64 / 1e9, h.buckets[i].load(Relaxed));
        }
        let sum = h.sum_ns.load(Relaxed) as f64 / 1e9;
        let count = h.count.load(Relaxed);
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets[..h.bounds_ns.len()], None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// One value per media/call direction.
#[derive(Debug, Clone, Default)]
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
        /// DTLS failure, or a DTLS datagram where none belongs.
        Dtls = "dtls",
        /// SRTP or SRTCP from the browser's side failing authentication, replayed or
        /// unparsable once its leg is connected: dropped.
        Srtp = "srtp",
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

labelled_enum!(
    /// Datagrams the shared WebRTC port (`[media] webrtc_single_port`) dropped, counted in
    /// `srbridge_webrtc_port_dropped_total{reason}`.
    PortDrop {
        /// An ICE check naming a ufrag no call has.
        UnknownUfrag = "unknown_ufrag",
        /// An ICE check for a call whose MESSAGE-INTEGRITY is missing or wrong.
        BadIntegrity = "bad_integrity",
        /// Anything else from an address no valid check bound to a call.
        UnknownSource = "unknown_source",
        /// A call's queue was full (its media task is behind): dropped like a lost packet.
        QueueFull = "queue_full",
    }
);

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

/// One bridge instance's registry. Fields are public so hot paths can clone the handles they
/// update per packet.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    uptime: SecondsGauge,
    draining: Gauge,
    /// `srbridge_cpu_busy`: 1 while the bridge is short of CPU (`ops::cpu_load`).
    pub cpu_busy: Gauge,
    /// `srbridge_calls_started_total{direction}`.
    pub calls_started: PerDirection<Counter>,
    /// `srbridge_calls_answered_total{direction}`.
    pub calls_answered: PerDirection<Counter>,
    calls_failed: Family<[(&'static str, String); 1], RawCounter>,
    /// `srbridge_calls_active`: the [`Lifecycle`]'s call guards, read when rendered.
    calls_active: Gauge,
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
    /// `srbridge_registration_state{state}`, in [`RegistrationState::ALL`] order; set with
    /// [`Metrics::set_registration`].
    registration: Vec<Gauge>,
    /// `srbridge_registration_attempts_total`: REGISTERs sent.
    pub registration_attempts: Counter,
    /// `srbridge_registration_failures_total`: REGISTERs that failed.
    pub registration_failures: Counter,
    /// `srbridge_pbx_up`: 1 when the last OPTIONS ping was answered.
    pub pbx_up: Gauge,
    /// `srbridge_pbx_rtt_seconds`: last OPTIONS round trip.
    pbx_rtt: SecondsGauge,
    /// `srbridge_pbx_reachable{pbx}`: one row per configured PBX once known, set with
    /// [`Metrics::set_pbxs`].
    pbx_reachable: Family<[(&'static str, String); 1], RawGauge>,
    /// `srbridge_pbx_registration_state{pbx,state}`, set with [`Metrics::set_pbxs`].
    pbx_registration: Family<[(&'static str, String); 2], RawGauge>,
    /// Held while the per-PBX rows are replaced or rendered, so a render never sees them half
    /// replaced.
    pbx_rows: Mutex<()>,
    /// `srbridge_call_failovers_total`: outgoing INVITEs retried on the next PBX.
    pub call_failovers: Counter,
    /// `srbridge_cluster_connected`, in a registry of its own: rendered only once
    /// [`Metrics::set_cluster_connected`] said the bridge is in a cluster.
    cluster_registry: Registry,
    cluster_connected: Gauge,
    in_cluster: AtomicBool,
    /// `srbridge_ws_sessions`: WebSocket sessions open now.
    pub ws_sessions: Gauge,
    /// `srbridge_ws_sessions_total`: WebSocket sessions accepted.
    pub ws_sessions_total: Counter,
    /// `srbridge_users_logged_in`: browser users logged in now.
    pub users_logged_in: Gauge,
    /// `srbridge_errors_total{kind}`, in [`ErrorKind::ALL`] order.
    errors: Vec<Counter>,
    /// `srbridge_limits_hit_total{limit}`, in [`Limit::ALL`] order.
    limits: Vec<Counter>,
    /// `srbridge_calls_ended_total{reason}`, in [`Ending::ALL`] order.
    endings: Vec<Counter>,
    /// `srbridge_webrtc_port_dropped_total{reason}`, in [`PortDrop::ALL`] order.
    port_drops: Vec<Counter>,
    /// `srbridge_webrtc_port_calls`: calls registered on the shared WebRTC port now.
    pub webrtc_port_calls: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Registers a metric; `help` is written without its final full stop (the crate adds one).
fn register(registry: &mut Registry, name: &str, help: &str, metric: impl Metric) {
    registry.register(name, help.trim_end_matches('.'), metric);
}

/// One series per label value, all present from the start (a zero is worth seeing).
fn labelled<M>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    key: &'static str,
    values: impl IntoIterator<Item = &'static str>,
    make: fn() -> M,
) -> Vec<M>
where
    M: EncodeMetric + TypedMetric + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<Label, M, fn() -> M>::new_with_constructor(make);
    let handles = values
        .into_iter()
        .map(|value| family.get_or_create_owned(&[(key, value)]))
        .collect();
    register(registry, name, help, family);
    handles
}

fn per_direction<M>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    make: fn() -> M,
) -> PerDirection<M>
where
    M: EncodeMetric + TypedMetric + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let dirs = [Direction::WebToSip, Direction::SipToWeb];
    let mut handles = labelled(
        registry,
        name,
        help,
        "direction",
        dirs.map(Direction::label),
        make,
    )
    .into_iter();
    let (Some(web_to_sip), Some(sip_to_web)) = (handles.next(), handles.next()) else {
        unreachable!("two directions, two handles");
    };
    PerDirection {
        web_to_sip,
        sip_to_web,
    }
}

fn counters(
    registry: &mut Registry,
    name: &str,
    help: &str,
    key: &'static str,
    values: impl IntoIterator<Item = &'static str>,
) -> Vec<Counter> {
    labelled(registry, name, help, key, values, RawCounter::default)
        .into_iter()
        .map(Counter)
        .collect()
}

fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let c = Counter::default();
    register(registry, name, help, c.0.clone());
    c
}

fn gauge(registry: &mut Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::default();
    register(registry, name, help, g.0.clone());
    g
}

fn direction_counters(registry: &mut Registry, name: &str, help: &str) -> PerDirection<Counter> {
    let raw = per_direction(registry, name, help, RawCounter::default);
    PerDirection {
        web_to_sip: Counter(raw.web_to_sip),
        sip_to_web: Counter(raw.sip_to_web),
    }
}

impl Metrics {
    /// An empty registry with every series at zero; one per bridge instance.
    pub fn new() -> Self {
        let r = &mut Registry::default();
        let version = env!("CARGO_PKG_VERSION");
        // an info metric is exported as the gauge `srbridge_build_info{version} 1`
        register(
            r,
            "srbridge_build",
            "Build version.",
            Info::new([("version", version)]),
        );
        let uptime = SecondsGauge::default();
        register(
            r,
            "srbridge_uptime_seconds",
            "Seconds since start.",
            uptime.clone(),
        );
        let draining = gauge(
            r,
            "srbridge_draining",
            "1 after SIGTERM while calls finish.",
        );
        let cpu_busy = gauge(
            r,
            "srbridge_cpu_busy",
            "1 while the bridge is short of CPU (Opus toward browsers in opus_mode_busy at opus_complexity_busy).",
        );
        // counters are registered without `_total`: the encoder appends it
        let calls_started = direction_counters(r, "srbridge_calls_started", "Calls started.");
        let calls_answered = direction_counters(r, "srbridge_calls_answered", "Calls answered.");
        let calls_failed = Family::<[(&'static str, String); 1], RawCounter>::default();
        calls_failed.get_or_create_owned(&[("code", "none".to_string())]);
        register(
            r,
            "srbridge_calls_failed",
            "Calls that failed, by final SIP code (none: no SIP answer).",
            calls_failed.clone(),
        );
        let calls_active = gauge(r, "srbridge_calls_active", "Calls in progress.");
        let call_setup = Histogram::new(SETUP_BOUNDS);
        register(
            r,
            "srbridge_call_setup_seconds",
            "Call setup time (start to answer).",
            call_setup.clone(),
        );
        let rtp_packets = direction_counters(r, "srbridge_rtp_packets", "RTP packets relayed.");
        let rtp_bytes = direction_counters(r, "srbridge_rtp_bytes", "RTP payload bytes relayed.");
        let rtp_lost = direction_counters(
            r,
            "srbridge_rtp_lost",
            "RTP packets lost before the bridge.",
        );
        let rtp_jitter = per_direction(
            r,
            "srbridge_rtp_jitter_seconds",
            "RTP interarrival jitter samples.",
            || Histogram::new(JITTER_BOUNDS),
        );
        let transcode = per_direction(
            r,
            "srbridge_transcode_seconds",
            "Time to transcode one audio frame.",
            || Histogram::new(TRANSCODE_BOUNDS),
        );
        let registration = labelled(
            r,
            "srbridge_registration_state",
            "PBX registration state (1 for the current state).",
            "state",
            RegistrationState::ALL.iter().map(|s| s.label()),
            RawGauge::default,
        )
        .into_iter()
        .map(Gauge)
        .collect();
        let registration_attempts = counter(
            r,
            "srbridge_registration_attempts",
            "REGISTER requests sent.",
        );
        let registration_failures = counter(
            r,
            "srbridge_registration_failures",
            "REGISTER requests that failed.",
        );
        let pbx_up = gauge(
            r,
            "srbridge_pbx_up",
            "1 when the PBX answered the last OPTIONS ping.",
        );
        let pbx_rtt = SecondsGauge::default();
        register(
            r,
            "srbridge_pbx_rtt_seconds",
            "Last OPTIONS round-trip time.",
            pbx_rtt.clone(),
        );
        let pbx_reachable = Family::<[(&'static str, String); 1], RawGauge>::default();
        register(
            r,
            "srbridge_pbx_reachable",
            "Per PBX: 1 when it counts as up, 0 when down (no row until known).",
            pbx_reachable.clone(),
        );
        let pbx_registration = Family::<[(&'static str, String); 2], RawGauge>::default();
        register(
            r,
            "srbridge_pbx_registration_state",
            "Per PBX: registration state of the proxy account (1 for the current state).",
            pbx_registration.clone(),
        );
        let call_failovers = counter(
            r,
            "srbridge_call_failovers",
            "Outgoing INVITEs retried on the next PBX (503/408/transport error before any ringing).",
        );
        let mut cluster_registry = Registry::default();
        let cluster_connected = gauge(
            &mut cluster_registry,
            "srbridge_cluster_connected",
            "1 while this bridge is connected to its cluster's NATS server.",
        );
        let ws_sessions = gauge(
            r,
            "srbridge_ws_sessions",
            "Browser WebSocket sessions open.",
        );
        let ws_sessions_total = counter(
            r,
            "srbridge_ws_sessions",
            "Browser WebSocket sessions accepted.",
        );
        let users_logged_in = gauge(r, "srbridge_users_logged_in", "Browser users logged in.");
        let errors = counters(
            r,
            "srbridge_errors",
            "Bad input and failures, by kind.",
            "kind",
            ErrorKind::ALL.iter().map(|k| k.label()),
        );
        let limits = counters(
            r,
            "srbridge_limits_hit",
            "Requests refused by a limit.",
            "limit",
            Limit::ALL.iter().map(|l| l.label()),
        );
        let endings = counters(
            r,
            "srbridge_calls_ended",
            "Calls the bridge ended because a peer went silent, by reason.",
            "reason",
            Ending::ALL.iter().map(|e| e.label()),
        );
        let port_drops = counters(
            r,
            "srbridge_webrtc_port_dropped",
            "Datagrams the shared WebRTC port ([media] webrtc_single_port) dropped, by reason.",
            "reason",
            PortDrop::ALL.iter().map(|d| d.label()),
        );
        let webrtc_port_calls = gauge(
            r,
            "srbridge_webrtc_port_calls",
            "Calls registered on the shared WebRTC port ([media] webrtc_single_port).",
        );
        let metrics = Metrics {
            registry: std::mem::take(r),
            uptime,
            draining,
            cpu_busy,
            calls_started,
            calls_answered,
            calls_failed,
            calls_active,
            call_setup,
            rtp_packets,
            rtp_bytes,
            rtp_lost,
            rtp_jitter,
            transcode,
            registration,
            registration_attempts,
            registration_failures,
            pbx_up,
            pbx_rtt,
            pbx_reachable,
            pbx_registration,
            pbx_rows: Mutex::new(()),
            call_failovers,
            cluster_registry,
            cluster_connected,
            in_cluster: AtomicBool::new(false),
            ws_sessions,
            ws_sessions_total,
            users_logged_in,
            errors,
            limits,
            endings,
            port_drops,
            webrtc_port_calls,
        };
        metrics.set_registration(RegistrationState::Disabled);
        metrics
    }

    /// Counts a failed call by its final SIP code (`0`: no SIP answer, e.g. timeout or
    /// transport error; codes outside 100-699 count as 0).
    pub fn call_failed(&self, sip_code: u16) {
        let code = if (100..700).contains(&sip_code) {
            sip_code.to_string()
        } else {
            "none".to_string()
        };
        self.calls_failed.get_or_create(&[("code", code)]).inc();
    }

    /// Counts one error of `kind`.
    pub fn error(&self, kind: ErrorKind) {
        self.errors_add(kind, 1);
    }

    /// Counts `n` errors of `kind` at once (a media leg's tally since the last publish).
    pub fn errors_add(&self, kind: ErrorKind, n: u64) {
        if let Some(c) = self.errors.get(kind as usize) {
            c.add(n);
        }
    }

    /// Errors of `kind` so far.
    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.errors.get(kind as usize).map_or(0, Counter::get)
    }

    /// Counts one refusal by `limit`.
    pub fn limit_hit(&self, limit: Limit) {
        if let Some(c) = self.limits.get(limit as usize) {
            c.inc();
        }
    }

    /// Refusals by `limit` so far.
    pub fn limits_hit(&self, limit: Limit) -> u64 {
        self.limits.get(limit as usize).map_or(0, Counter::get)
    }

    /// Counts one call ended for `reason`.
    pub fn call_ended(&self, reason: Ending) {
        if let Some(c) = self.endings.get(reason as usize) {
            c.inc();
        }
    }

    /// Calls ended for `reason` so far.
    pub fn calls_ended(&self, reason: Ending) -> u64 {
        self.endings.get(reason as usize).map_or(0, Counter::get)
    }

    /// Counts `n` datagrams the shared WebRTC port dropped for `reason`.
    pub fn webrtc_port_dropped(&self, reason: PortDrop, n: u64) {
        if let Some(c) = self.port_drops.get(reason as usize) {
            c.add(n);
        }
    }

    /// Datagrams the shared WebRTC port dropped for `reason` so far.
    pub fn webrtc_port_drops(&self, reason: PortDrop) -> u64 {
        self.port_drops.get(reason as usize).map_or(0, Counter::get)
    }

    /// Records the PBX registration state.
    pub fn set_registration(&self, state: RegistrationState) {
        for (gauge, s) in self.registration.iter().zip(RegistrationState::ALL) {
            gauge.set(i64::from(*s == state));
        }
    }

    /// Records an OPTIONS ping result: `Some(rtt)` answered, `None` unanswered.
    pub fn set_pbx_ping(&self, rtt: Option<Duration>) {
        match rtt {
            Some(rtt) => {
                self.pbx_up.set(1);
                self.pbx_rtt.set(rtt.as_secs_f64());
            }
            None => self.pbx_up.set(0),
        }
    }

    /// Records the cluster's NATS connection (`None`: not in a cluster, the metric is not shown).
    pub fn set_cluster_connected(&self, up: Option<bool>) {
        self.cluster_connected.set(up.map_or(0, i64::from));
        self.in_cluster.store(up.is_some(), Relaxed);
    }

    /// Records every PBX's reachability and registration (replaces the last set).
    pub fn set_pbxs(&self, pbxs: Vec<PbxSeries>) {
        let _rows = self.pbx_rows.lock().unwrap_or_else(|e| e.into_inner());
        self.pbx_reachable.clear();
        self.pbx_registration.clear();
        for p in pbxs {
            if let Some(up) = p.reachable {
                self.pbx_reachable
                    .get_or_create(&[("pbx", p.pbx.clone())])
                    .set(i64::from(up));
            }
            for state in RegistrationState::ALL {
                self.pbx_registration
                    .get_or_create(&[("pbx", p.pbx.clone()), ("state", state.label().to_string())])
                    .set(i64::from(*state == p.registration));
            }
        }
    }

    /// Prometheus text exposition (format 0.0.4) of every metric, with the process facts
    /// `lifecycle` keeps (uptime, draining, calls in progress) read now.
    pub fn render(&self, lifecycle: &Lifecycle) -> String {
        self.uptime.set(lifecycle.uptime().as_secs_f64());
        self.draining.set(i64::from(lifecycle.is_draining()));
        self.calls_active
            .set(i64::try_from(lifecycle.calls_in_progress()).unwrap_or(i64::MAX));
        let mut out = String::with_capacity(8192);
        // writing into a String cannot fail
        {
            let _rows = self.pbx_rows.lock().unwrap_or_else(|e| e.into_inner());
            let _ = prometheus_text::encode(&mut out, &self.registry);
        }
        if self.in_cluster.load(Relaxed) {
            let _ = prometheus_text::encode(&mut out, &self.cluster_registry);
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
        let lifecycle = Lifecycle::new();
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
        m.ws_sessions_total.inc();
        let call = lifecycle.try_start_call().expect("not draining");
        let text = m.render(&lifecycle);
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
        assert_eq!(value(&text, "srbridge_errors_total{kind=\"sdp\"}"), "0");
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
        assert_eq!(value(&text, "srbridge_pbx_up"), "1");
        assert_eq!(value(&text, "srbridge_ws_sessions_total"), "1");
        assert_eq!(value(&text, "srbridge_ws_sessions"), "0");
        assert_eq!(value(&text, "srbridge_calls_active"), "1");
        assert_eq!(value(&text, "srbridge_draining"), "0");
        assert_eq!(
            value(
                &text,
                &format!(
                    "srbridge_build_info{{version=\"{}\"}}",
                    env!("CARGO_PKG_VERSION")
                )
            ),
            "1"
        );
        drop(call);
        lifecycle.start_drain();
        let text = m.render(&lifecycle);
        assert_eq!(value(&text, "srbridge_calls_active"), "0");
        assert_eq!(value(&text, "srbridge_draining"), "1");
    }

    #[test]
    fn help_and_type_lines_name_the_series() {
        let text = Metrics::new().render(&Lifecycle::new());
        for (name, kind, help) in [
            ("srbridge_calls_started_total", "counter", "Calls started."),
            ("srbridge_calls_active", "gauge", "Calls in progress."),
            ("srbridge_build_info", "gauge", "Build version."),
            (
                "srbridge_transcode_seconds",
                "histogram",
                "Time to transcode one audio frame.",
            ),
        ] {
            assert!(
                text.contains(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n")),
                "{name} in\n{text}"
            );
        }
    }

    #[test]
    fn per_pbx_rows_are_replaced_and_cluster_shown_only_in_a_cluster() {
        let m = Metrics::new();
        let lifecycle = Lifecycle::new();
        let text = m.render(&lifecycle);
        assert!(!text.contains("srbridge_cluster_connected"), "{text}");
        assert_eq!(value(&text, "srbridge_call_failovers_total"), "0");
        m.set_pbxs(vec![
            PbxSeries {
                pbx: "10.0.0.1:5060".into(),
                reachable: Some(true),
                registration: RegistrationState::Registered,
            },
            PbxSeries {
                pbx: "10.0.0.2:5060".into(),
                reachable: None,
                registration: RegistrationState::Failed,
            },
        ]);
        m.call_failovers.inc();
        m.set_cluster_connected(Some(true));
        let text = m.render(&lifecycle);
        assert_eq!(
            value(&text, "srbridge_pbx_reachable{pbx=\"10.0.0.1:5060\"}"),
            "1"
        );
        assert!(!text.contains("srbridge_pbx_reachable{pbx=\"10.0.0.2:5060\"}"));
        assert_eq!(
            value(
                &text,
                "srbridge_pbx_registration_state{pbx=\"10.0.0.2:5060\",state=\"failed\"}"
            ),
            "1"
        );
        assert_eq!(value(&text, "srbridge_call_failovers_total"), "1");
        assert_eq!(value(&text, "srbridge_cluster_connected"), "1");
        assert!(text.contains("# HELP srbridge_pbx_reachable Per PBX: 1 when it counts as up, 0 when down (no row until known).\n"));
        m.set_pbxs(vec![PbxSeries {
            pbx: "10.0.0.2:5060".into(),
            reachable: Some(false),
            registration: RegistrationState::Registered,
        }]);
        m.set_cluster_connected(Some(false));
        let text = m.render(&lifecycle);
        assert!(!text.contains("10.0.0.1:5060"), "{text}");
        assert_eq!(
            value(&text, "srbridge_pbx_reachable{pbx=\"10.0.0.2:5060\"}"),
            "0"
        );
        assert_eq!(value(&text, "srbridge_cluster_connected"), "0");
    }

    #[test]
    fn two_registries_count_apart() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.error(ErrorKind::Rtp);
        a.errors_add(ErrorKind::Rtp, 4);
        assert_eq!((a.errors(ErrorKind::Rtp), b.errors(ErrorKind::Rtp)), (5, 0));
        let text = b.render(&Lifecycle::new());
        assert_eq!(value(&text, "srbridge_errors_total{kind=\"rtp\"}"), "0");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::new();
        for ms in [50, 300, 300, 90_000] {
            m.call_setup.observe(Duration::from_millis(ms));
        }
        m.transcode.web_to_sip.observe(Duration::from_micros(7));
        let text = m.render(&Lifecycle::new());
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
        // bounds are written the way Go's client writes them (1e-05, not 0.00001)
        assert_eq!(
            value(
                &text,
                "srbridge_transcode_seconds_bucket{direction=\"web_to_sip\",le=\"1e-05\"}"
            ),
            "1"
        );
        assert_eq!(
            value(
                &text,
                "srbridge_transcode_seconds_bucket{direction=\"sip_to_web\",le=\"1e-05\"}"
            ),
            "0"
        );
        assert_eq!(
            value(
                &text,
                "srbridge_transcode_seconds_count{direction=\"web_to_sip\"}"
            ),
            "1"
        );
    }
}
