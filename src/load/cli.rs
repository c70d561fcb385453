//! `srbridge-load`'s command line.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use srbridge::ops::Direction;

/// Load generator for a running srbridge: N concurrent calls web→SIP and SIP→web.
///
/// Every call is a browser stand-in (hub login over WebSocket, invitation, a webrtc-rs peer that
/// replays a pre-encoded 440 Hz tone every 20 ms); the SIP side is SIPp with -rtp_echo behind the
/// PBX: an echo UAS registered as --callee for web→SIP, a UAC dialling 0<web uid> for SIP→web.
/// The browser measures what comes back (loss from sequence gaps, inter-arrival jitter, level).
///
/// For each step of --calls, and each direction: log in N users, set the calls up at --rate per
/// second, wait --settle, measure for --duration, hang up, wait --cooldown. Per step it prints the
/// bridge's CPU (% of one core, and ms of CPU per call-second, from /proc/PID/stat of
/// --bridge-pid), RSS per call and per logged-in session (from /proc/PID/status, baseline
/// subtracted), loss, jitter p99, setup time p50/p99 (web→SIP: invite → ACCEPTED_BY_REMOTE at the
/// browser; SIP→web: authenticated INVITE → 200 at SIPp), invite → accepted p50/p99 (web→SIP)
/// and the setups per second achieved.
///
/// With --peer rtpengine the same browsers and SIPp echo go through rtpengine instead, the tool
/// signalling each call over rtpengine's ng protocol (offer, answer, delete: ICE and DTLS-SRTP
/// toward the browser, plain RTP toward SIPp, Opus transcoded to PCMU unless --relay); --bridge-pid
/// is then rtpengine's pid, and the setup time is offer sent → answer applied.
///
/// Example (bridge on ws://127.0.0.1:8080/ws, Kamailio on 5060, --callee within its acc_rule):
///   srbridge-load --bridge-pid $(pidof srbridge) --calls 10,50,100 --duration 30s --json r.json
///   srbridge-load --peer rtpengine --ng 127.0.0.1:2223 --bridge-pid $(pidof rtpengine) --calls 20
///   srbridge-load --soak 10000 --calls 50 --duration 1s --rate 100 --bridge-pid $(pidof srbridge)
#[derive(Debug, Parser)]
#[command(name = "srbridge-load", version, verbatim_doc_comment)]
pub struct Args {
    /// The bridge's hub WebSocket
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub ws: String,

    /// [global] appid of the bridge
    #[arg(long, default_value = "srbridge-demo")]
    pub appid: String,

    /// [auth] token_secret of the bridge, if it requires login tokens (the tool mints them)
    #[arg(long)]
    pub token_secret: Option<String>,

    /// The PBX (e.g. the test Kamailio) SIPp sends its SIP to
    #[arg(long, default_value = "127.0.0.1:5060")]
    pub pbx: SocketAddr,

    /// Which calls to make
    #[arg(long, value_enum, default_value_t = Directions::Both)]
    pub direction: Directions,

    /// Concurrent calls per step, comma separated (e.g. 10,50,100)
    #[arg(long, value_delimiter = ',', default_value = "10")]
    pub calls: Vec<usize>,

    /// How long each step is measured once its calls are up (e.g. 30s, 2m)
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub duration: Duration,

    /// Call setups started per second while ramping up a step
    #[arg(long, default_value_t = 50.0, value_parser = parse_rate)]
    pub rate: f64,

    /// Browsers offer PCMU only: the bridge relays instead of transcoding Opus⇄PCMU
    #[arg(long)]
    pub relay: bool,

    /// SIP extension browsers call; the tool registers SIPp's echo UAS as it (within acc_rule)
    #[arg(long, default_value = "1005")]
    pub callee: String,

    /// PBX account SIPp calls the web users from
    #[arg(long, default_value = "1002")]
    pub caller: String,

    /// Password of --callee and --caller at the PBX
    #[arg(long, default_value = "1234")]
    pub sip_password: String,

    /// pid of the bridge (or of rtpengine with --peer rtpengine), for its CPU and memory (without
    /// it only the calls are measured)
    #[arg(long)]
    pub bridge_pid: Option<u32>,

    /// Also write the report as JSON to this file
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Wait between all calls being up and the measurement
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub settle: Duration,

    /// Wait after hanging up a step (the bridge's memory and fds are read after it)
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub cooldown: Duration,

    /// A call not accepted with media connected within this counts as failed
    #[arg(long, value_parser = parse_duration, default_value = "20s")]
    pub setup_timeout: Duration,

    /// Prefix of the web users' uids (the step and call number follow)
    #[arg(long, default_value = "load")]
    pub uid_prefix: String,

    /// IP the WebRTC peers and SIPp use
    #[arg(long, default_value = "127.0.0.1")]
    pub local_ip: IpAddr,

    /// The SIPp executable (Debian package sip-tester)
    #[arg(long, default_value = "sipp")]
    pub sipp: PathBuf,

    /// What carries the calls: srbridge (through its hub and the PBX), or rtpengine driven over
    /// its ng protocol at --ng by the tool itself (same browsers, same SIPp echo; measure it with
    /// --bridge-pid $(pidof rtpengine))
    #[arg(long, value_enum, default_value_t = Peer::Srbridge)]
    pub peer: Peer,

    /// Soak instead of steps: this many short web→SIP calls back to back, the first of --calls
    /// at a time, each a fresh login held up for --duration; prints progress, and the bridge's
    /// RSS, open fds, threads and tokio tasks at baseline, at peak and after --soak-settle
    #[arg(long, value_name = "N")]
    pub soak: Option<usize>,

    /// After a soak, wait this long before reading the bridge's holdings again: the last
    /// calls' SIP transactions live 32 s more (RFC 6026 Timer M, Timer D and J), the bridge
    /// trims its heap every 10 s, and what those transactions held goes only then (at 40 s a
    /// 10 000-call soak still showed 119 MB, at 70 s 21 MB)
    #[arg(long, value_parser = parse_duration, default_value = "70s")]
    pub soak_settle: Duration,

    /// The bridge's /api/status, for its tokio task count in a soak (default: the --ws
    /// listener's http://HOST:PORT/api/status; admin endpoints answer loopback without a token)
    #[arg(long, value_name = "URL")]
    pub status_url: Option<String>,

    /// rtpengine's ng control port (UDP), with --peer rtpengine
    #[arg(long, default_value = "127.0.0.1:2223")]
    pub ng: SocketAddr,
}

/// `--peer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Peer {
    /// The bridge: hub logins, invitations, SIP through the PBX
    Srbridge,
    /// rtpengine (Debian rtpengine-daemon, userspace forwarding): offer/answer/delete over ng
    Rtpengine,
}

impl Peer {
    pub fn label(self) -> &'static str {
        match self {
            Peer::Srbridge => "srbridge",
            Peer::Rtpengine => "rtpengine",
        }
    }
}

/// `--direction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Directions {
    /// Browsers call the SIP extension
    WebToSip,
    /// SIPp calls the browsers
    SipToWeb,
    /// Both, one after the other in each step
    Both,
}

impl Directions {
    pub fn list(self) -> Vec<Direction> {
        match self {
            Directions::WebToSip => vec![Direction::WebToSip],
            Directions::SipToWeb => vec![Direction::SipToWeb],
            Directions::Both => vec![Direction::WebToSip, Direction::SipToWeb],
        }
    }
}

/// A positive number of setups per second.
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "`{text}` is not a positive number of calls per second"
        )),
    }
}

/// `500ms`, `30s`, `2m`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (e.g. 500ms, 30s, 2m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (ms, s, m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_ms_s_and_m() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
    }

    #[test]
    fn bad_durations_are_refused_with_the_text() {
        for bad in ["", "s", "10h", "-3s", "1e400"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn steps_parse_from_a_comma_list() {
        let args = Args::try_parse_from(["srbridge-load", "--calls", "10,50,100"]).unwrap();
        assert_eq!(args.calls, vec![10, 50, 100]);
        assert!(Args::try_parse_from(["srbridge-load", "--calls", "10,x"]).is_err());
        assert!(Args::try_parse_from(["srbridge-load", "--duration", "forever"]).is_err());
        for bad in ["0", "-5", "NaN", "inf", "fast"] {
            assert!(
                Args::try_parse_from(["srbridge-load", "--rate", bad]).is_err(),
                "{bad}"
            );
        }
        assert_eq!(parse_rate("2.5"), Ok(2.5));
    }

    #[test]
    fn the_peer_defaults_to_the_bridge_and_rtpengine_takes_an_ng_address() {
        let args = Args::try_parse_from(["srbridge-load"]).unwrap();
        assert_eq!(args.peer, Peer::Srbridge);
        let args = Args::try_parse_from([
            "srbridge-load",
            "--peer",
            "rtpengine",
            "--ng",
            "127.0.0.1:9999",
        ])
        .unwrap();
        assert_eq!(args.peer, Peer::Rtpengine);
        assert_eq!(args.ng, SocketAddr::from(([127, 0, 0, 1], 9999)));
        assert!(Args::try_parse_from(["srbridge-load", "--peer", "asterisk"]).is_err());
        assert!(Args::try_parse_from(["srbridge-load", "--ng", "localhost"]).is_err());
    }
}
