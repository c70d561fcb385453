//! The validated configuration model both file forms load into.
//!
//! Every field here has already been checked: the rest of the bridge never re-validates
//! and never sees a half-filled config.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::acc_rule::AccRule;

/// Which file form a config was read from, so `check` can say what it understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigForm {
    /// SRProxy's INI `rtx.conf`, read unchanged.
    RtxConf,
    /// The native TOML form with every srbridge setting.
    Toml,
}

impl fmt::Display for ConfigForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConfigForm::RtxConf => "SRProxy rtx.conf",
            ConfigForm::Toml => "srbridge TOML",
        })
    }
}

/// A password, token or key: kept out of logs and `check` output by construction.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The real value, for the one place that needs it (digest auth, HMAC, TLS).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Host part of a `host:port`: the PBX may be given by address or by DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A literal IPv4/IPv6 address.
    Ip(IpAddr),
    /// A DNS name, resolved when the SIP stack starts.
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// A SIP peer address (`IP:port` or `host:port`), e.g. the PBX or a PSTN gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Address or DNS name.
    pub host: Host,
    /// UDP/TCP port, never 0.
    pub port: u16,
}

impl HostPort {
    /// The socket address when the host is a literal IP (no DNS needed).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self.host {
            Host::Ip(ip) => Some(SocketAddr::new(ip, self.port)),
            Host::Name(_) => None,
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from (for logs and reload).
    pub source: PathBuf,
    /// Which form the file was in.
    pub form: ConfigForm,
    /// `[global]`: application id and where the PBX is.
    pub global: GlobalConfig,
    /// `[rtm2sip]`: `Some` when browsers may call SIP numbers (`on=1`).
    pub rtm2sip: Option<Rtm2SipConfig>,
    /// `[proxy]`: `Some` when the bridge registers its own SIP account (`on=1`).
    pub proxy: Option<ProxyConfig>,
    /// `[pstn]`: `Some` when a PSTN gateway is configured.
    pub pstn: Option<PstnConfig>,
    /// `[log]`: level, file and rotation.
    pub log: LogConfig,
    /// `[sip]`: SIP transport details (TOML only; defaults for rtx.conf).
    pub sip: SipConfig,
    /// `[media]`: RTP ports, codecs, ICE servers, recording (TOML only).
    pub media: MediaConfig,
    /// `[http]`: the browser/status side (TOML only).
    pub http: HttpConfig,
    /// `[auth]`: browser login tokens (TOML only).
    pub auth: AuthConfig,
    /// `[limits]`: protection against floods (TOML only).
    pub limits: LimitsConfig,
    /// `[shutdown]`: graceful drain (TOML only).
    pub shutdown: ShutdownConfig,
    /// Things accepted but ignored (unknown keys in rtx.conf, `[rtc]`/`[rtm]`): shown by
    /// `check` and logged at startup so the operator knows they had no effect.
    pub warnings: Vec<String>,
}

impl Config {
    /// Whether a browser may call this SIP number (`[rtm2sip] on=1` and `acc_rule` allows it).
    pub fn may_call(&self, number: &str) -> bool {
        self.rtm2sip
            .as_ref()
            .is_some_and(|rule| rule.acc_rule.allows(number))
    }
}

/// `[global]`.
#[derive(Debug, Clone)]
pub struct GlobalConfig {
    /// Application id browsers must present at login.
    pub appid: String,
    /// The PBX (FreeSWITCH) address; any port.
    pub sip_svr: HostPort,
    /// Local SIP port (SRProxy default 5086); 0 lets the OS choose (tests).
    pub sip_local_port: u16,
}

/// `[rtm2sip]` when `on=1`.
#[derive(Debug, Clone)]
pub struct Rtm2SipConfig {
    /// SIP numbers browsers may call.
    pub acc_rule: AccRule,
}

/// `[proxy]` when `on=1`: the bridge's own SIP account and hub id.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// SIP user the bridge REGISTERs as; calls to web users arrive on it.
    pub sip_account: String,
    /// Digest password of `sip_account`.
    pub sip_pwd: Secret,
    /// The bridge's own id on the signalling hub.
    pub rtm_account: String,
}

/// `[pstn]`: gateway for invitations marked `"Pstn":true`.
#[derive(Debug, Clone)]
pub struct PstnConfig {
    /// Gateway address (port 5060 when the file gives only an IP).
    pub addr: HostPort,
    /// Prepended to the dialled number.
    pub prefix: String,
}

/// SRProxy log levels (`[log] level`, 0..5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// 0: everything, including SIP/SDP bodies (still never passwords).
    Sensitive,
    /// 1
    Debug,
    /// 2
    Info,
    /// 3
    Warn,
    /// 4
    Error,
    /// 5: logging off.
    None,
}

impl LogLevel {
    /// The SRProxy number for this level.
    pub fn number(self) -> u8 {
        self as u8
    }

    /// The `tracing` filter directive matching this level.
    pub fn filter_directive(self) -> &'static str {
        match self {
            LogLevel::Sensitive => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::None => "off",
        }
    }

    pub(crate) fn from_number(n: i64) -> Option<LogLevel> {
        Some(match n {
            0 => LogLevel::Sensitive,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::None,
            _ => return None,
        })
    }

    pub(crate) fn from_name(name: &str) -> Option<LogLevel> {
        Some(match name.to_ascii_lowercase().as_str() {
            "sensitive" | "trace" => LogLevel::Sensitive,
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" | "warning" => LogLevel::Warn,
            "error" => LogLevel::Error,
            "none" | "off" => LogLevel::None,
            _ => return None,
        })
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            LogLevel::Sensitive => "SENSITIVE",
            LogLevel::Debug => "DEBUG",
            LogLevel::Info => "INFO",
            LogLevel::Warn => "WARN",
            LogLevel::Error => "ERROR",
            LogLevel::None => "NONE",
        };
        write!(f, "{} ({name})", self.number())
    }
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Minimum level written.
    pub level: LogLevel,
    /// Log file; `None` logs to stderr.
    pub file: Option<PathBuf>,
    /// Rotate the file when it reaches this many MB; 0 never rotates.
    pub max_file_size_mb: u64,
    /// Rotated files kept beside the live one (`file.1` newest … `file.N`), so disk use
    /// stays bounded at about `(max_files + 1) * max_file_size`.
    pub max_files: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: LogLevel::Info,
            file: None,
            max_file_size_mb: 100,
            max_files: 5,
        }
    }
}

/// SIP transport toward the PBX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SipTransport {
    /// UDP (default, like SRProxy).
    Udp,
    /// TCP.
    Tcp,
}

impl fmt::Display for SipTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SipTransport::Udp => "udp",
            SipTransport::Tcp => "tcp",
        })
    }
}

/// `[sip]`.
#[derive(Debug, Clone)]
pub struct SipConfig {
    /// Address the SIP socket binds to.
    pub listen_ip: IpAddr,
    /// UDP or TCP.
    pub transport: SipTransport,
    /// Address put in Contact/Via/SDP when behind NAT (FreeSWITCH `ext-sip-ip`).
    pub public_ip: Option<IpAddr>,
    /// REGISTER expiry requested from the PBX.
    pub register_expires: Duration,
    /// OPTIONS ping interval for PBX reachability; zero disables pinging.
    pub options_interval: Duration,
    /// Stripped from the Request-URI user of incoming calls without `X-Number`.
    pub dial_prefix: String,
    /// How long a browser may ring before the call is given up.
    pub ring_timeout: Duration,
    /// Addresses besides the PBX that may send SIP to the bridge.
    pub allowed_peers: Vec<IpAddr>,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            listen_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            transport: SipTransport::Udp,
            public_ip: None,
            register_expires: Duration::from_secs(300),
            options_interval: Duration::from_secs(30),
            dial_prefix: "0".to_string(),
            ring_timeout: Duration::from_secs(60),
            allowed_peers: Vec::new(),
        }
    }
}

/// Audio codecs on the SIP (RTP) side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 µ-law, payload type 0.
    Pcmu,
    /// G.711 A-law, payload type 8.
    Pcma,
}

impl Codec {
    /// The SDP encoding name.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    /// The static RTP payload type.
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Codec> {
        match name.to_ascii_uppercase().as_str() {
            "PCMU" => Some(Codec::Pcmu),
            "PCMA" => Some(Codec::Pcma),
            _ => None,
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Codec preference for a set of numbers (`[[media.codec_rules]]`), e.g. PCMA for a gateway.
#[derive(Debug, Clone)]
pub struct CodecRule {
    /// Numbers this rule applies to (acc_rule grammar).
    pub numbers: AccRule,
    /// Preference order for those numbers.
    pub codecs: Vec<Codec>,
}

/// A TURN server handed to browsers.
#[derive(Debug, Clone)]
pub struct TurnServer {
    /// `turn:` or `turns:` URL.
    pub url: String,
    /// TURN username.
    pub username: String,
    /// TURN credential (masked in output).
    pub credential: Secret,
}

/// How calls are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingMode {
    /// Both directions mixed into one mono file.
    Mixed,
    /// Browser on the left channel, SIP side on the right.
    Stereo,
}

impl fmt::Display for RecordingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordingMode::Mixed => "mixed",
            RecordingMode::Stereo => "stereo",
        })
    }
}

/// `[media.recording]`.
#[derive(Debug, Clone)]
pub struct RecordingConfig {
    /// Whether calls are recorded at all.
    pub enabled: bool,
    /// Directory for WAV files.
    pub dir: PathBuf,
    /// Mixed or stereo.
    pub mode: RecordingMode,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            enabled: false,
            dir: PathBuf::from("recordings"),
            mode: RecordingMode::Mixed,
        }
    }
}

/// How DTMF is sent to the PBX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtmfMode {
    /// RTP telephone-event (RFC 4733).
    Rfc4733,
    /// SIP INFO `application/dtmf-relay`.
    Info,
}

impl fmt::Display for DtmfMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DtmfMode::Rfc4733 => "rfc4733",
            DtmfMode::Info => "info",
        })
    }
}

/// When the Opus encoder toward browsers spends bits on in-band FEC (`media.opus_fec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpusFec {
    /// Off on a clean path, on when the browser's receiver reports show loss (and back).
    Auto,
    /// Always on, at the lossy bitrate.
    On,
    /// Never: the whole bitrate goes to the primary stream.
    Off,
}

impl fmt::Display for OpusFec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OpusFec::Auto => "auto",
            OpusFec::On => "on",
            OpusFec::Off => "off",
        })
    }
}

/// The Opus encoder toward browsers (`[media] opus_*`); defaults chosen by the PESQ/CPU table
/// in docs/audio.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusSettings {
    /// Encoder complexity 0..=10 (CPU against quality).
    pub complexity: u8,
    /// Bitrate on a clean path, bits per second.
    pub bitrate: u32,
    /// Bitrate while FEC is on (loss reported, or `opus_fec = "on"`).
    pub bitrate_lossy: u32,
    /// FEC policy.
    pub fec: OpusFec,
}

impl Default for OpusSettings {
    fn default() -> Self {
        OpusSettings {
            complexity: 5,
            bitrate: 32_000,
            bitrate_lossy: 40_000,
            fec: OpusFec::Auto,
        }
    }
}

/// `[media]`.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// First RTP port (even).
    pub rtp_port_min: u16,
    /// Last RTP port.
    pub rtp_port_max: u16,
    /// Address put in SDP `c=` when behind NAT (FreeSWITCH `ext-rtp-ip`).
    pub public_ip: Option<IpAddr>,
    /// Default codec preference order.
    pub codecs: Vec<Codec>,
    /// Per-number codec preferences; the first matching rule wins.
    pub codec_rules: Vec<CodecRule>,
    /// STUN URLs handed to browsers.
    pub stun_servers: Vec<String>,
    /// TURN servers handed to browsers.
    pub turn: Vec<TurnServer>,
    /// Call recording.
    pub recording: RecordingConfig,
    /// DTMF toward the PBX.
    pub dtmf_mode: DtmfMode,
    /// The Opus encoder toward browsers.
    pub opus: OpusSettings,
}

impl MediaConfig {
    /// Codec preference for a call to/from `number`.
    pub fn codecs_for(&self, number: &str) -> &[Codec] {
        self.codec_rules
            .iter()
            .find(|rule| rule.numbers.allows(number))
            .map_or(&self.codecs[..], |rule| &rule.codecs[..])
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            rtp_port_min: 20000,
            rtp_port_max: 30000,
            public_ip: None,
            codecs: vec![Codec::Pcmu, Codec::Pcma],
            codec_rules: Vec::new(),
            stun_servers: Vec::new(),
            turn: Vec::new(),
            recording: RecordingConfig::default(),
            dtmf_mode: DtmfMode::Rfc4733,
            opus: OpusSettings::default(),
        }
    }
}

/// TLS certificate and key for the web side.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `[http]`.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Where browsers connect (WebSocket hub, web-demo, status).
    pub listen: SocketAddr,
    /// HTTPS/WSS when set.
    pub tls: Option<TlsConfig>,
    /// Bearer token for admin endpoints; `None` leaves them unavailable remotely.
    pub admin_token: Option<Secret>,
    /// A separate listener for status/metrics, if wanted.
    pub status_listen: Option<SocketAddr>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8080),
            tls: None,
            admin_token: None,
            status_listen: None,
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// When set, browsers must present an HMAC token made with this secret.
    pub token_secret: Option<Secret>,
}

/// `[limits]`.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Calls in progress at once.
    pub max_calls: u32,
    /// New call setups accepted per second.
    pub max_setups_per_sec: u32,
    /// Browser WebSocket sessions at once.
    pub max_ws_sessions: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_calls: 1000,
            max_setups_per_sec: 50,
            max_ws_sessions: 10000,
        }
    }
}

/// `[shutdown]`.
#[derive(Debug, Clone)]
pub struct ShutdownConfig {
    /// How long calls in progress may continue after SIGTERM.
    pub drain_timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout: Duration::from_secs(30),
        }
    }
}
