//! Issue #10 item 1: nobody takes over a call's audio. During a real call (a Rust "browser" over
//! the hub, a baresip phone on the Kamailio PBX) a stranger on another address sprays RTP carrying
//! its own tone at every port of the bridge's RTP range and at the browser leg's ports, plus STUN,
//! DTLS and SRTP-looking garbage at the latter. The phone and the browser must go on hearing
//! only each other: checked by tone frequency, window by window.
//!
//! Run: `unshare --net -- bash -c "ip link set lo up && cargo test --test media_hijack"`.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use srbridge::config::LogConfig;
use srbridge::media::g711;
use srbridge::media::rtp::RtpHeader;
use srbridge::media::webrtc_leg::LegCodec;
use support::audio::{dominant_frequency, read_wav, rms_dbfs};
use support::webrtc_peer::BrowserPeer;
use support::{Baresip, WsClient};
use tokio::net::UdpSocket;

const APPID: &str = "hijack-test";
const T: Duration = Duration::from_secs(15);
const PHONE_HZ: f64 = 440.0;
const BROWSER_HZ: f64 = 1000.0;
const STRANGER_HZ: f64 = 3000.0;
const SPRAY: Duration = Duration::from_secs(4);
/// A host the call never signalled: same machine, other loopback address.
const STRANGER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 66));

/// Power of `hz` relative to the whole signal's power, in dB (Goertzel on a Hann window; the
/// strongest of ±10 Hz around `hz`).
fn tone_share_db(samples: &[f32], rate: u32, hz: f64) -> f64 {
    let n = samples.len();
    if n < 64 {
        return f64::NEG_INFINITY;
    }
    let window =
        |i: usize| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / (n - 1) as f64).cos();
    let total: f64 = samples
        .iter()
        .enumerate()
        .map(|(i, s)| (f64::from(*s) * window(i)).powi(2))
        .sum::<f64>()
        .max(1e-12);
    let band = (-10..=10)
        .map(|d| {
            let w = 2.0 * std::f64::consts::PI * (hz + f64::from(d)) / f64::from(rate);
            let (mut s1, mut s2) = (0.0f64, 0.0f64);
            for (i, x) in samples.iter().enumerate() {
                let s0 = f64::from(*x) * window(i) + 2.0 * w.cos() * s1 - s2;
                s2 = s1;
                s1 = s0;
            }
            // |X(k)|^2 relative to the signal energy (Parseval: sum x^2 = (2/N)·Σ|X|^2 for a tone).
            (s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2) * 2.0 / n as f64
        })
        .fold(0.0f64, f64::max);
    10.0 * (band / total).log10()
}

/// Checks that `samples` hold `expected` all along (every 0.5 s window between the first and the
/// last loud one is loud and at `expected`) and no trace of the stranger's tone.
fn assert_only(samples: &[f32], rate: u32, expected: f64, who: &str) {
    let win = rate as usize / 2;
    let windows: Vec<&[f32]> = samples.chunks_exact(win).collect();
    let loud = |w: &[f32]| rms_dbfs(w) > -30.0;
    let first = windows.iter().position(|w| loud(w));
    let last = windows.iter().rposition(|w| loud(w));
    let (Some(first), Some(last)) = (first, last) else {
        panic!("{who} heard nothing ({} samples)", samples.len());
    };
    let heard = &windows[first..=last];
    let report: Vec<String> = heard
        .iter()
        .map(|w| format!("{:.0}Hz/{:.0}dB", dominant_frequency(w, rate), rms_dbfs(w)))
        .collect();
    let good = heard
        .iter()
        .filter(|w| loud(w) && (dominant_frequency(w, rate) - expected).abs() <= 15.0)
        .count();
    assert!(
        good * 10 >= heard.len() * 9 && heard.len() >= 4,
        "{who} should hear {expected} Hz all along; 0.5 s windows: {report:?}"
    );
    let all: Vec<f32> = heard.iter().flat_map(|w| w.iter().copied()).collect();
    let stranger = tone_share_db(&all, rate, STRANGER_HZ);
    let wanted = tone_share_db(&all, rate, expected);
    eprintln!(
        "{who}: {} windows, {good} at {expected} Hz; {expected} Hz {wanted:.1} dB, stranger's {STRANGER_HZ} Hz {stranger:.1} dB of the signal",
        heard.len()
    );
    assert!(
        stranger < -35.0 && wanted > -3.0,
        "{who}: stranger's {STRANGER_HZ} Hz at {stranger:.1} dB, {expected} Hz at {wanted:.1} dB of the signal"
    );
}

/// μ-law RTP with the stranger's tone, 20 ms per packet.
fn stranger_rtp(seq: u16, ssrc: u32) -> Vec<u8> {
    let pcm: Vec<i16> = (0..160)
        .map(|i| {
            let t = (usize::from(seq) * 160 + i) as f64 / 8000.0;
            (0.5 * 32767.0 * (2.0 * std::f64::consts::PI * STRANGER_HZ * t).sin()) as i16
        })
        .collect();
    let mut payload = [0u8; 160];
    g711::ulaw_encode(&pcm, &mut payload);
    let mut out = vec![0u8; 12 + 160];
    let n = RtpHeader {
        marker: seq == 0,
        payload_type: 0,
        sequence: seq,
        timestamp: u32::from(seq) * 160,
        ssrc,
    }
    .write(&payload, &mut out)
    .expect("header");
    out.truncate(n);
    out
}

/// What else a stranger throws at a WebRTC port: a STUN Binding request with a made-up
/// username, a fatal DTLS alert and a DTLS ClientHello at epoch 0, SRTP-looking noise.
fn webrtc_garbage(i: u16) -> Vec<u8> {
    match i % 4 {
        0 => {
            let mut m = vec![0x00, 0x01, 0x00, 0x0C, 0x21, 0x12, 0xA4, 0x42];
            m.extend_from_slice(&[i as u8; 12]);
            m.extend_from_slice(&[0x00, 0x06, 0x00, 0x08]);
            m.extend_from_slice(b"evil:bad");
            m
        }
        1 => vec![21, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 9, 0, 2, 2, 10],
        2 => {
            let mut m = vec![22, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 1, 0, 16, 1, 0, 0, 12];
            m.extend_from_slice(&[0xAB; 12]);
            m
        }
        _ => {
            let mut m = vec![0x80, 111];
            m.extend((0..120u16).map(|k| (k.wrapping_mul(31) ^ i) as u8));
            m
        }
    }
}

/// Sprays `rtp_targets` and `webrtc_targets` with the stranger's tone and the garbage of
/// [`webrtc_garbage`] every 20 ms for [`SPRAY`]; returns the datagrams sent.
async fn spray(rtp_targets: Vec<SocketAddr>, webrtc_targets: Vec<SocketAddr>) -> u64 {
    let socket = UdpSocket::bind((STRANGER_IP, 0))
        .await
        .expect("stranger socket");
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let started = tokio::time::Instant::now();
    let mut sent = 0u64;
    let mut seq = 0u16;
    while started.elapsed() < SPRAY {
        tick.tick().await;
        let tone = stranger_rtp(seq, 0x0BAD_5EED);
        for to in rtp_targets.iter().chain(&webrtc_targets) {
            if socket.send_to(&tone, to).await.is_ok() {
                sent += 1;
            }
        }
        let garbage = webrtc_garbage(seq);
        for to in rtp_targets.iter().chain(&webrtc_targets) {
            if socket.send_to(&garbage, to).await.is_ok() {
                sent += 1;
            }
        }
        seq = seq.wrapping_add(1);
    }
    sent
}

/// `candidate:… udp <prio> <ip> <port> typ …` → the address.
fn candidate_addr(line: &str) -> Option<SocketAddr> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 6 || !f[2].eq_ignore_ascii_case("udp") {
        return None;
    }
    format!("{}:{}", f[4], f[5]).parse().ok()
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_spraying_every_media_port_is_heard_by_nobody() {
    // The bridge's own logging at its default level, into a file this test reads.
    let logs = tempfile::tempdir().unwrap();
    let log_file = logs.path().join("bridge.log");
    srbridge::ops::logging::init(&LogConfig {
        file: Some(log_file.clone()),
        ..LogConfig::default()
    })
    .expect("logging");
    let rig = support::rig::start_bridge(APPID, "", "", 20).await;
    let phone = Baresip::tone_phone(
        rig.pbx.addr(),
        "1001",
        PHONE_HZ,
        Duration::from_secs(12),
        true,
    )
    .await;

    let mut alice = WsClient::login(&rig.url, APPID, "alice").await;
    let ok = alice.invite("h1", "1001", "").await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let alice = Arc::new(alice);
    let mut peer = BrowserPeer::offer(
        Arc::clone(&alice),
        "h1",
        vec![LegCodec::Opus, LegCodec::TelephoneEvent48k],
    )
    .await;
    alice.wait_local_state("h1", "ACCEPTED_BY_REMOTE", T).await;
    phone.wait_for("CALL_ESTABLISHED", T).await;
    peer.wait_connected().await;
    peer.play(Some(BROWSER_HZ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    peer.take_received();

    let rtp_targets: Vec<SocketAddr> = rig
        .rtp_ports
        .clone()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
        .collect();
    let webrtc_targets: Vec<SocketAddr> = peer
        .bridge_candidates
        .lock()
        .unwrap()
        .iter()
        .filter_map(|c| candidate_addr(c))
        .collect();
    assert!(
        !webrtc_targets.is_empty(),
        "the bridge gave no UDP candidate"
    );
    let lines_before = std::fs::read_to_string(&log_file).unwrap().lines().count();
    let sent = spray(rtp_targets, webrtc_targets.clone()).await;
    let log = std::fs::read_to_string(&log_file).unwrap();
    let spray_lines: Vec<&str> = log.lines().skip(lines_before).collect();
    // Counted, never logged one line each.
    assert!(
        spray_lines.len() < 20,
        "{} log lines during the spray, e.g.\n{}",
        spray_lines.len(),
        spray_lines[..spray_lines.len().min(10)].join("\n")
    );
    assert!(sent > 1000, "only {sent} datagrams sprayed");
    eprintln!(
        "stranger sent {sent} datagrams to {} RTP and {} WebRTC ports",
        rig.rtp_ports.len(),
        webrtc_targets.len()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let heard = peer.take_received();
    let metrics = rig.metrics().await;

    alice.send_raw(
        &json!({"type": "peer_message", "id": 900, "to": "1001", "text": "{\"Cmd\":\"EndCall\"}"})
            .to_string(),
    );
    phone.wait_for("CALL_CLOSED", T).await;
    peer.close().await;

    // The browser heard the phone through the whole spray, and never the stranger.
    assert_only(&heard, 8000, PHONE_HZ, "the browser");
    // The phone heard the browser all along (its audio was never sent to the stranger), and
    // nothing the stranger sent to the browser leg's ports reached it.
    let recording = phone.received_wav().expect("baresip recorded the call");
    let (samples, rate) = read_wav(&recording);
    assert_only(&samples, rate, BROWSER_HZ, "the phone");
    // The stranger's RTP, STUN and DTLS on the SIP leg were counted, not played, and its RTP
    // and SRTP-looking noise at the browser leg's ports failed SRTP authentication there and
    // were counted as `srtp` (this process's only bridge).
    for kind in ["rtp_source", "stun", "dtls", "srtp"] {
        let series = format!("srbridge_errors_total{{kind=\"{kind}\"}}");
        eprintln!("{series} {}", metric(&metrics, &series));
        assert!(metric(&metrics, &series) >= 10.0, "{series}\n{metrics}");
    }
    // Nobody's target moved: no new source was ever learned.
    assert!(
        !webrtc_targets.iter().any(|a| a.ip() == STRANGER_IP),
        "sanity: the stranger is not a candidate"
    );
}
