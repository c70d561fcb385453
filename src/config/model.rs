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
    /// `[events]`: the event webhook (TOML only).
    pub events: EventsConfig,
    /// `[cluster]`: several bridges acting as one over NATS; `None` = a lone bridge.
    pub cluster: Option<ClusterConfig>,
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
    /// The PBX (FreeSWITCH) addresses, at least one; any port. `sip_svr` in rtx.conf (a
    /// comma-separated list), `sip_svr` or `[[sip.pbx]]` in TOML.
    pub sip_svr: PbxList,
    /// Local SIP port (SRProxy default 5086); 0 lets the OS choose (tests).
    pub sip_local_port: u16,
}

/// One PBX of `sip_svr` (`host:port;weight=N;priority=P`): where calls go and registrations are
/// sent, chosen by priority then weight as Kamailio's dispatcher and FreeSWITCH's distributor do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PbxEntry {
    /// Address or DNS name and port.
    pub addr: HostPort,
    /// Share of new calls among the PBXs of the same priority (1-1000, default 1).
    pub weight: u32,
    /// Lower is preferred, as in DNS SRV: a higher number is only used while every PBX with a
    /// lower one is down (0-1000, default 1).
    pub priority: u32,
}

impl PbxEntry {
    /// Default weight and priority.
    pub const DEFAULT_WEIGHT: u32 = 1;
    /// See [`PbxEntry::DEFAULT_WEIGHT`].
    pub const DEFAULT_PRIORITY: u32 = 1;

    /// A PBX with the default weight and priority (the single `sip_svr` of rtx.conf).
    pub fn new(addr: HostPort) -> Self {
        PbxEntry {
            addr,
            weight: Self::DEFAULT_WEIGHT,
            priority: Self::DEFAULT_PRIORITY,
        }
    }
}

impl fmt::Display for PbxEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)?;
        if self.weight != Self::DEFAULT_WEIGHT {
            write!(f, ";weight={}", self.weight)?;
        }
        if self.priority != Self::DEFAULT_PRIORITY {
            write!(f, ";priority={}", self.priority)?;
        }
        Ok(())
    }
}

/// The configured PBXs: never empty, no address twice, in file order (the first is the one
/// single-PBX code paths and logs name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PbxList(Vec<PbxEntry>);

impl PbxList {
    /// Most PBXs one bridge serves.
    pub const MAX: usize = 16;

    /// Checks the list: non-empty, at most [`PbxList::MAX`], no address twice.
    pub fn new(entries: Vec<PbxEntry>) -> Result<PbxList, String> {
        if entries.is_empty() {
            return Err("lists no PBX".to_string());
        }
        if entries.len() > Self::MAX {
            return Err(format!(
                "lists {} PBXs (at most {})",
                entries.len(),
                Self::MAX
            ));
        }
        for (i, entry) in entries.iter().enumerate() {
            if entries[..i].iter().any(|e| e.addr == entry.addr) {
                return Err(format!("{} is listed twice", entry.addr));
            }
        }
        Ok(PbxList(entries))
    }

    /// Every PBX, in file order.
    pub fn entries(&self) -> &[PbxEntry] {
        &self.0
    }

    /// The first PBX listed.
    pub fn first(&self) -> &PbxEntry {
        &self.0[0]
    }
}

impl From<HostPort> for PbxList {
    fn from(addr: HostPort) -> Self {
        PbxList(vec![PbxEntry::new(addr)])
    }
}

impl fmt::Display for PbxList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, entry) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{entry}")?;
        }
        Ok(())
    }
}

/// Which PBXs hold the proxy account's registration (`[sip] register`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterMode {
    /// Every PBX, each with its own state and back-off (calls may arrive from any).
    All,
    /// Only the preferred PBX that is up (best priority, then file order); when it goes down the
    /// next one takes the registration.
    ActiveBackup,
}

impl fmt::Display for RegisterMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RegisterMode::All => "all",
            RegisterMode::ActiveBackup => "active_backup",
        })
    }
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
    /// A PBX counts as down after this many failed OPTIONS in a row (a transport error on a
    /// call or ping marks it down at once).
    pub pbx_down_after: u32,
    /// A PBX that is down counts as up again after this many answered OPTIONS in a row.
    pub pbx_up_after: u32,
    /// Registration to every PBX or to the active one only.
    pub register_mode: RegisterMode,
    /// Stripped from the Request-URI (or To) user of incoming calls without a target header.
    pub dial_prefix: String,
    /// Header naming the web user of an incoming call (SRProxy's FreeSWITCH dialplan sets
    /// `X-Number: <sip:user@domain>`); bare users, URIs and name-addrs are understood.
    pub target_header: String,
    /// How long a browser may ring before the call is given up.
    pub ring_timeout: Duration,
    /// Addresses besides the PBX that may send SIP to the bridge.
    pub allowed_peers: Vec<IpAddr>,
    /// `User-Agent` of our requests and `Server` of our responses (no version by default).
    pub user_agent: String,
    /// A SIP TCP connection silent this long is closed.
    pub tcp_idle_timeout: Duration,
    /// A SIP TCP connection that has not sent one complete message this long after it opened
    /// is closed.
    pub tcp_first_message_timeout: Duration,
    /// Most SIP TCP connections one source IP may hold open to the bridge.
    pub tcp_max_per_ip: u32,
    /// RFC 4028 session interval offered and granted (FreeSWITCH's 1800 s); zero: no session
    /// timer unless the peer asks for one.
    pub session_expires: Duration,
    /// Shortest session interval accepted (Min-SE); shorter offers get 422.
    pub min_se: Duration,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            listen_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            transport: SipTransport::Udp,
            public_ip: None,
            register_expires: Duration::from_secs(300),
            options_interval: Duration::from_secs(30),
            pbx_down_after: 1,
            pbx_up_after: 1,
            register_mode: RegisterMode::All,
            dial_prefix: "0".to_string(),
            target_header: "X-Number".to_string(),
            ring_timeout: Duration::from_secs(60),
            allowed_peers: Vec::new(),
            user_agent: "srbridge".to_string(),
            tcp_idle_timeout: Duration::from_secs(300),
            tcp_first_message_timeout: Duration::from_secs(10),
            tcp_max_per_ip: 16,
            session_expires: Duration::from_secs(1800),
            min_se: Duration::from_secs(90),
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

/// Which of Opus's two coders the encoder toward browsers uses (`media.opus_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpusMode {
    /// SILK, the linear-prediction speech coder libopus picks for narrowband voice: the best
    /// speech per bit, and the only one with in-band FEC.
    Silk,
    /// CELT, the transform coder (libopus's `MODE_CELT_ONLY`): a fraction of SILK's encoder CPU
    /// and 4 ms less delay, no in-band FEC (the policy goes back to SILK while FEC is on).
    Celt,
}

impl fmt::Display for OpusMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OpusMode::Silk => "silk",
            OpusMode::Celt => "celt",
        })
    }
}

/// The Opus encoder toward browsers (`[media] opus_*`); defaults chosen by the PESQ/CPU table
/// in docs/audio.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusSettings {
    /// Encoder complexity 0..=10 (CPU against quality).
    pub complexity: u8,
    /// Complexity while the bridge is short of CPU (`ops::cpu_load`), at most `complexity`.
    pub complexity_busy: u8,
    /// Bitrate on a clean path, bits per second.
    pub bitrate: u32,
    /// Bitrate while FEC is on (loss reported, or `opus_fec = "on"`).
    pub bitrate_lossy: u32,
    /// FEC policy.
    pub fec: OpusFec,
    /// The coder on a clean path.
    pub mode: OpusMode,
    /// The coder while the bridge is short of CPU.
    pub mode_busy: OpusMode,
}

impl Default for OpusSettings {
    fn default() -> Self {
        OpusSettings {
            complexity: 5,
            complexity_busy: 0,
            bitrate: 32_000,
            bitrate_lossy: 40_000,
            fec: OpusFec::Auto,
            mode: OpusMode::Silk,
            mode_busy: OpusMode::Celt,
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
    /// UDP ports of the browsers' ICE candidates (`webrtc_port_min..=webrtc_port_max`); `None`:
    /// the browser legs take their ports from the RTP range, through the same allocator.
    pub webrtc_port_range: Option<(u16, u16)>,
    /// One UDP port for every browser call's ICE/DTLS/SRTP (`webrtc_single_port`), calls told
    /// apart by ICE ufrag (`media::browser_leg::ice_demux`); `None`: a port per call.
    pub webrtc_single_port: Option<u16>,
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
    /// A call whose SIP or browser leg receives nothing this long ends (rtpengine, FreeSWITCH
    /// `rtp-timeout-sec`); zero disables.
    pub rtp_timeout: Duration,
    /// The same while the phone holds the call (sendonly/inactive): FreeSWITCH's
    /// `rtp-hold-timeout-sec`; the longer of the two applies. Zero: no limit on hold.
    pub rtp_hold_timeout: Duration,
    /// The Opus encoder toward browsers.
    pub opus: OpusSettings,
    /// Ask browsers for narrowband Opus (`maxplaybackrate=8000;sprop-maxcapturerate=8000` in the
    /// SDP toward them; `opus_narrowband`): their bits go where G.711 can carry them. On by
    /// default, with [`MediaConfig::opus_receive_bitrate`]: docs/audio.md has the measurements.
    pub opus_narrowband: bool,
    /// The Opus bitrate browsers are asked to send (`maxaveragebitrate`, b/s;
    /// `opus_receive_bitrate`, 0 = `None`): `None` leaves it to the browser (Chromium: 32 kb/s
    /// wideband, 12 kb/s narrowband).
    pub opus_receive_bitrate: Option<u32>,
    /// CPU use (percent of the cores the process may use) at which the bridge counts as busy
    /// and encodes toward browsers at `opus_complexity_busy` (`busy_cpu_percent`); 0: never.
    pub busy_cpu_percent: u8,
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
            webrtc_port_range: None,
            webrtc_single_port: None,
            public_ip: None,
            codecs: vec![Codec::Pcmu, Codec::Pcma],
            codec_rules: Vec::new(),
            stun_servers: Vec::new(),
            turn: Vec::new(),
            recording: RecordingConfig::default(),
            dtmf_mode: DtmfMode::Rfc4733,
            rtp_timeout: Duration::from_secs(60),
            rtp_hold_timeout: Duration::from_secs(3600),
            opus: OpusSettings::default(),
            opus_narrowband: true,
            opus_receive_bitrate: Some(32_000),
            busy_cpu_percent: 85,
        }
    }
}

/// A TLS certificate and its key (the web side's, or the cluster's client certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// A connection must deliver a request's complete headers within this time (also while
    /// idle between requests): silent and slowloris connections are closed.
    pub header_timeout: Duration,
    /// An upgraded WebSocket must log in within this time.
    pub login_timeout: Duration,
    /// Pages (`Origin`) besides the bridge's own that may open the WebSocket; `*` for any.
    pub allowed_origins: Vec<crate::signal::origin::AllowedOrigin>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8080),
            tls: None,
            admin_token: None,
            status_listen: None,
            header_timeout: Duration::from_secs(10),
            login_timeout: Duration::from_secs(10),
            allowed_origins: Vec::new(),
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// When set, browsers must present an HMAC token made with this secret.
    pub token_secret: Option<Secret>,
    /// Tokens expiring further ahead than this are refused (a leaked token stays useful for
    /// at most this long).
    pub max_token_ttl: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_secret: None,
            max_token_ttl: Duration::from_secs(24 * 3600),
        }
    }
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
    /// HTTP/WebSocket connections at once from one source address.
    pub max_conns_per_ip: u32,
    /// File descriptors kept for calls' media sockets: new HTTP/WebSocket connections are
    /// closed at once when fewer remain. `None`: a quarter of the limit, at least 64.
    pub fd_reserve: Option<u64>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_calls: 1000,
            max_setups_per_sec: 50,
            max_ws_sessions: 10000,
            max_conns_per_ip: 128,
            fd_reserve: None,
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

/// `[cluster]`: this bridge shares presence and browser signalling with the other bridges on the
/// same NATS server (TOML only). See `docs/cluster.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The NATS server, `nats://host[:port]` (4222 when left out).
    pub nats: HostPort,
    /// This bridge's name in the cluster, unique per node (NATS subject token: letters, digits,
    /// `-` and `_`).
    pub node_id: String,
    /// How long a node's users stay online without a heartbeat from it: the bound on how long
    /// a dead node's users look online and its calls elsewhere go on.
    pub presence_ttl: Duration,
    /// How this node proves who it is to the NATS server.
    pub nats_auth: NatsAuth,
    /// TLS toward the NATS server; `None` = plain TCP.
    pub nats_tls: Option<NatsTls>,
}

impl ClusterConfig {
    /// The URL handed to the NATS client (`tls://` when TLS is required).
    pub fn nats_url(&self) -> String {
        let scheme = if self.nats_tls.is_some() {
            "tls"
        } else {
            "nats"
        };
        format!("{scheme}://{}", self.nats)
    }
}

/// `[cluster] nats_user`/`nats_password` or `nats_token`: one way of logging in to NATS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NatsAuth {
    /// The server asks for nothing.
    #[default]
    None,
    /// A user and password from the server's `authorization` block.
    UserPassword {
        /// `nats_user` (not a secret: shown by `srbridge check`).
        user: String,
        /// `nats_password`.
        password: Secret,
    },
    /// `nats_token`.
    Token(Secret),
}

/// `[cluster] nats_tls*`: TLS toward the NATS server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NatsTls {
    /// PEM CA certificates the server's certificate must chain to; `None` trusts the system's.
    pub ca: Option<PathBuf>,
    /// Client certificate and key, for a server that verifies its clients (mutual TLS).
    pub client: Option<TlsConfig>,
}

/// `[events]`: where the live event stream also goes (TOML only).
#[derive(Debug, Clone, Default)]
pub struct EventsConfig {
    /// Events are POSTed here in batches when set.
    pub webhook_url: Option<WebhookUrl>,
}

/// A validated `http://host[:port]/path` for the webhook.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// Host name or IP (without brackets) to connect to.
    pub host: String,
    /// TCP port (80 when the URL has none).
    pub port: u16,
    /// `host[:port]` as written, for the Host header.
    pub authority: String,
    /// Path and query, at least `/`.
    pub path: String,
}

impl fmt::Debug for WebhookUrl {
    // The path and query may hold a receiver's token: never shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}/…", self.authority)
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl WebhookUrl {
    /// Parses and checks a webhook URL: `http` only (this build has no TLS client roots), a host,
    /// no user:password part.
    pub fn parse(text: &str) -> Result<WebhookUrl, String> {
        let uri: axum::http::Uri = text
            .parse()
            .map_err(|e| format!("{text:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(
                    "https is not supported for the webhook; use http (e.g. to a local relay)"
                        .to_string(),
                )
            }
            _ => return Err(format!("{text:?} is not an http:// URL")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{text:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err("user:password in the URL is not supported".to_string());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{text:?} has no host"));
        }
        // Read the port from the text: `Authority::port` hides one that is not a u16.
        let after_host = match authority.as_str().strip_prefix('[') {
            Some(rest) => rest.split_once(']').map_or("", |(_, after)| after),
            None => authority.as_str().split_once(':').map_or("", |(_, p)| p),
        };
        let port_text = after_host.strip_prefix(':').unwrap_or(after_host);
        let port = match port_text {
            "" => 80,
            text => match text.parse::<u16>() {
                Ok(0) => return Err("port 0 is not a port".to_string()),
                Ok(port) => port,
                Err(_) => return Err(format!("{text:?} is not a port")),
            },
        };
        let path = uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.as_str().to_string());
        Ok(WebhookUrl {
            host: host.to_string(),
            port,
            authority: authority.as_str().to_string(),
            path: if path.is_empty() {
                "/".to_string()
            } else {
                path
            },
        })
    }
}
