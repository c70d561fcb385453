//! Early media and the first syllable (issue #12 item 2), end to end through Kamailio with SIPp
//! phones that play a tone (pcap) and the Rust "browser" (`support::webrtc_peer`):
//!
//! * phone → browser: the bridge asks the ringing browser to offer (`prepare`), ICE/DTLS complete
//!   while it rings, nothing passes before the accept, and a phone that talks the instant it gets
//!   the 200 OK is heard from the first 20 ms;
//! * a client that offers only when it accepts still hears the first syllable (held until SRTP);
//! * browser → phone: a 183 with SDP and an announcement reach the browser before the answer.
//!
//! Its own test binary: it captures the process's logs (the WebRTC stack logs through `log`).

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::json;
use srbridge::media::webrtc_leg::{LegCodec, LegState};
use support::audio::{dominant_frequency, rms_dbfs};
use support::pbx::PASSWORD;
use support::webrtc_peer::{wait_media, BrowserPeer};
use support::{ports, Sipp, WsClient};

const APPID: &str = "early-test";
const T: Duration = Duration::from_secs(15);
const PHONE_HZ: f64 = 440.0;
/// What the SIPp phone plays: 0.5 of full scale, about -9 dBFS.
const PHONE_AMPLITUDE: f64 = 0.5;
/// One 20 ms frame at 8 kHz.
const FRAME: usize = 160;
const SRTP_WARNING: &str = "local_srtp_context is not set yet";

/// Everything the process logs (tracing and `log`), for checks on log lines.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

/// The tests of this file share the process-wide log capture and clear it: they run one at a
/// time (test.sh runs two test threads).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The process-wide log capture (installed once; tests hold [`SERIAL`]).
fn logs() -> &'static LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = LogBuffer::default();
        tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(logs.clone())
            .try_init()
            .expect("log capture installed");
        logs
    })
}

/// A SIPp scenario from `tests/sipp/` with its placeholders filled in, written to `dir`.
fn scenario(dir: &Path, name: &str, fill: &[(&str, String)]) -> PathBuf {
    let mut text = std::fs::read_to_string(support::project_root().join("tests/sipp").join(name))
        .expect("scenario template");
    for (key, value) in fill {
        text = text.replace(key, value);
    }
    let path = dir.join(name);
    std::fs::write(&path, text).expect("scenario written");
    path
}

/// A pcap of the phone's tone in `dir`.
fn tone_pcap(dir: &Path, duration: Duration) -> PathBuf {
    let path = dir.join("tone.pcap");
    support::pcap::write_pcmu_tone_pcap(&path, PHONE_HZ, PHONE_AMPLITUDE, duration);
    path
}

/// How long the phone's tone plays (SIPp's pcap): what the browser must hear in full.
const PHONE_TONE: Duration = Duration::from_secs(4);

/// Whether a 20 ms frame carries the phone's tone (louder than -30 dBFS).
fn is_tone(frame: &[f32]) -> bool {
    rms_dbfs(frame) > -30.0
}

/// Where in `samples` (8 kHz) the phone's tone starts, from the first sample.
fn tone_onset(samples: &[f32]) -> Option<Duration> {
    samples
        .chunks_exact(FRAME)
        .position(is_tone)
        .map(|i| Duration::from_millis(20 * i as u64))
}

/// How much of the phone's tone is in `samples`.
fn tone_heard(samples: &[f32]) -> Duration {
    Duration::from_millis(20 * samples.chunks_exact(FRAME).filter(|f| is_tone(f)).count() as u64)
}

/// The browser got the phone's tone in the first 300 ms after it started (energy and pitch).
fn assert_first_300ms_heard(samples: &[f32]) {
    let window = &samples[..samples.len().min(2400)];
    assert!(window.len() >= 2400, "only {} samples", window.len());
    let level = rms_dbfs(window);
    let pitch = dominant_frequency(window, 8000);
    assert!(
        level > -16.0 && (pitch - PHONE_HZ).abs() < 15.0,
        "the first 300 ms: {level:.1} dBFS at {pitch:.0} Hz (onset {:?})",
        tone_onset(samples)
    );
}

/// The whole tone reached the browser: nothing of its start was dropped (one frame of slack at
/// each edge, where the tone fills part of a frame).
fn assert_whole_tone_heard(samples: &[f32]) {
    let heard = tone_heard(samples);
    println!(
        "phone tone heard by the browser: {heard:?} of {PHONE_TONE:?} (missing {:?})",
        PHONE_TONE.saturating_sub(heard)
    );
    assert!(
        heard + Duration::from_millis(40) >= PHONE_TONE,
        "the browser heard {heard:?} of the phone's {PHONE_TONE:?} tone"
    );
}

/// Polls what the browser received (without taking it) until the phone's tone shows; returns
/// when, counted from `since`.
async fn first_tone_at(peer: &BrowserPeer, since: Instant) -> Duration {
    let deadline = Instant::now() + T;
    loop {
        if peer
            .received
            .lock()
            .unwrap()
            .chunks_exact(FRAME)
            .any(is_tone)
        {
            return since.elapsed();
        }
        assert!(Instant::now() < deadline, "the phone's tone never arrived");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A phone (SIPp, account 1002) calls `0bob`, answering media only after the ACK: it plays its
/// tone the instant the call is up. Returns the SIPp process.
fn phone_calling_bob(rig: &support::rig::BridgeRig, dir: &Path) -> support::SippProcess {
    let pcap = tone_pcap(dir, PHONE_TONE);
    let path = scenario(
        dir,
        "uac_invite_tone.xml",
        &[("PCAP_FILE", pcap.display().to_string())],
    );
    Sipp::new(path.to_str().expect("utf-8 path"))
        .service("0bob")
        .key("caller", "1002")
        .auth("1002", PASSWORD)
        // Longer than the tone, so a slow set-up on a loaded host still leaves it whole.
        .pause_ms(8000)
        .timeout(Duration::from_secs(30))
        .spawn(Some(rig.pbx.addr()))
}

/// Acknowledges the invitation at once, as the web client does (rtm-client.js): the bridge
/// sends 180 now. Without it the 180 would go out with the 200 OK, and the test PBX's UDP
/// workers can deliver the two to the phone in either order (SIPp then waits for a 200 again).
fn received(ws: &WsClient, call_id: &str) {
    ws.send_raw(&json!({"type": "received", "id": 76, "callId": call_id}).to_string());
}

fn accept(ws: &WsClient, call_id: &str) {
    ws.send_raw(
        &json!({"type": "accept", "id": 77, "callId": call_id, "response": ""}).to_string(),
    );
}

/// Waits until the browser has `len` samples since its last `take_received`, then takes them.
async fn received_at_least(peer: &BrowserPeer, len: usize) -> Vec<f32> {
    let deadline = Instant::now() + T;
    while peer.received.lock().unwrap().len() < len {
        assert!(Instant::now() < deadline, "the browser stopped receiving");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    peer.take_received()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_to_browser_leg_is_up_while_ringing_and_the_first_syllable_is_heard() {
    let _serial = SERIAL.lock().await;
    let logs = logs();
    logs.clear();
    let rig = support::rig::start_bridge(APPID, "", "", 20).await;
    let bob = Arc::new(WsClient::login(&rig.url, APPID, "bob").await);
    let dir = tempfile::tempdir().unwrap();
    let mut phone = phone_calling_bob(&rig, dir.path());

    let invitation = bob.wait_remote_invitation(T).await;
    let call_id = invitation["callId"].as_str().unwrap().to_string();
    received(&bob, &call_id);
    // The bridge asks for media with the invitation; the browser offers while it rings.
    wait_media(&bob, &call_id, "prepare", T).await;
    let mut peer = BrowserPeer::offer(Arc::clone(&bob), &call_id, vec![LegCodec::Opus]).await;
    peer.wait_connected().await;
    // Ringing with the media path up (connected above): nothing reaches the browser before it
    // accepts, not even silence (a page that does not play the ringing call's track yet would
    // queue it in its jitter buffer and hear the phone late after the answer).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = peer.take_received();
    assert!(
        before.is_empty(),
        "the browser was sent {} ms of audio before it accepted ({:.1} dBFS)",
        before.len() / 48,
        rms_dbfs(&before)
    );

    peer.take_received();
    let accepted_at = Instant::now();
    accept(&bob, &call_id);
    let gap = first_tone_at(&peer, accepted_at).await;
    println!("early set-up: accept → first phone audio at the browser: {gap:?}");
    let after = received_at_least(&peer, 8000 * 9 / 2).await;
    let onset = tone_onset(&after).expect("the phone's tone reached the browser");
    println!("early set-up: phone tone {onset:?} into the stream after the accept");
    // The stream was running before the accept, so its position is time since the accept.
    assert!(
        onset <= Duration::from_millis(300),
        "phone tone only {onset:?} after the accept"
    );
    assert_first_300ms_heard(&after[onset.as_millis() as usize * 8..]);
    assert_whole_tone_heard(&after);

    phone.wait(Duration::from_secs(30)).await.assert_success();
    peer.close().await;
    let text = logs.text();
    assert!(!text.contains(SRTP_WARNING), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_offers_only_when_it_accepts_still_hears_the_first_syllable() {
    let _serial = SERIAL.lock().await;
    let logs = logs();
    logs.clear();
    let rig = support::rig::start_bridge(APPID, "", "", 20).await;
    let bob = Arc::new(WsClient::login(&rig.url, APPID, "bob").await);
    let dir = tempfile::tempdir().unwrap();
    let mut phone = phone_calling_bob(&rig, dir.path());

    let invitation = bob.wait_remote_invitation(T).await;
    let call_id = invitation["callId"].as_str().unwrap().to_string();
    received(&bob, &call_id);
    // An old client ignores `prepare`: offer, then accept at once (the 200 OK goes out while
    // ICE/DTLS are still in progress).
    let offer = {
        let (ws, call_id) = (Arc::clone(&bob), call_id.clone());
        tokio::spawn(async move { BrowserPeer::offer(ws, &call_id, vec![LegCodec::Opus]).await })
    };
    // The bridge answered the offer (seen, not taken: the peer applies it): accept now.
    let deadline = Instant::now() + T;
    while !bob
        .frames()
        .iter()
        .any(|f| f["callId"] == call_id.as_str() && f["payload"]["kind"] == "answer")
    {
        assert!(
            Instant::now() < deadline,
            "the bridge never answered the offer"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let accepted_at = Instant::now();
    accept(&bob, &call_id);
    let mut peer = offer.await.unwrap();
    peer.wait_connected().await;
    let gap = first_tone_at(&peer, accepted_at).await;
    println!("late set-up: accept → first phone audio at the browser: {gap:?}");
    // Everything the bridge sent, from its first frame: held frames come first.
    let heard = received_at_least(&peer, 8000 * 9 / 2).await;
    let onset = tone_onset(&heard).expect("the phone's tone reached the browser");
    println!("late set-up: phone tone {onset:?} into the stream");
    assert_first_300ms_heard(&heard[onset.as_millis() as usize * 8..]);
    // Held until SRTP was up, not dropped: the tone is there from its first frame.
    assert_whole_tone_heard(&heard);

    phone.wait(Duration::from_secs(30)).await.assert_success();
    peer.close().await;
    let text = logs.text();
    assert!(!text.contains(SRTP_WARNING), "{text}");
    assert!(
        text.contains("browser leg ready: held audio sent"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_media_from_a_183_reaches_the_browser_before_the_answer() {
    let _serial = SERIAL.lock().await;
    let logs = logs();
    logs.clear();
    let rig = support::rig::start_bridge(APPID, "", "", 20).await;
    let port = ports::free_port();
    support::sipp::register(rig.pbx.addr(), "1009", PASSWORD, port, 300)
        .await
        .assert_success();
    let dir = tempfile::tempdir().unwrap();
    let pcap = tone_pcap(dir.path(), Duration::from_secs(6));
    let path = scenario(
        dir.path(),
        "uas_early_media.xml",
        &[
            ("PCAP_FILE", pcap.display().to_string()),
            ("EARLY_MS", "4000".to_string()),
        ],
    );
    let mut uas = Sipp::new(path.to_str().expect("utf-8 path"))
        .service("1009")
        .local_port(port)
        .timeout(Duration::from_secs(30))
        .spawn(None);
    let mut alice = WsClient::login(&rig.url, APPID, "alice").await;
    let ok = alice.invite("e1", "1009", "").await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let alice = Arc::new(alice);
    let mut peer = BrowserPeer::offer(Arc::clone(&alice), "e1", vec![LegCodec::Opus]).await;
    alice.wait_local_state("e1", "RECEIVED_BY_REMOTE", T).await;
    peer.wait_connected().await;
    // The announcement plays for 4 s before the 200 OK: listen to 1.5 s of it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    peer.take_received();
    let early = received_at_least(&peer, 12000).await;
    let answered = alice
        .frames()
        .iter()
        .any(|f| f["state"] == "ACCEPTED_BY_REMOTE");
    assert!(!answered, "the call was answered too soon for this test");
    support::assert_tone(&early, 8000, PHONE_HZ, 15.0, -20.0);

    alice.wait_local_state("e1", "ACCEPTED_BY_REMOTE", T).await;
    assert_eq!(peer.state(), LegState::Connected);
    alice.send_raw(
        &json!({"type": "peer_message", "id": 900, "to": "1009", "text": "{\"Cmd\":\"EndCall\"}"})
            .to_string(),
    );
    uas.wait(Duration::from_secs(30)).await.assert_success();
    peer.close().await;
    let text = logs.text();
    assert!(!text.contains(SRTP_WARNING), "{text}");
}
