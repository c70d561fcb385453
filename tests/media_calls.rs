//! The media path end to end (issue #4): a Rust "browser" (`support::webrtc_peer`, a WebRTC
//! offerer signalled over the hub) and baresip phones on the Kamailio PBX, through the bridge
//! started in-process. Audio is checked by content (frequency and level) at both ends.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use srbridge::media::webrtc_leg::LegCodec;
use support::webrtc_peer::{send_media, wait_media, BrowserPeer};
use support::{assert_tone, assert_wav_tone, ports, Baresip, Pbx, WsClient};

const APPID: &str = "media-test";
const T: Duration = Duration::from_secs(15);

type Rig = support::rig::BridgeRig;

async fn rig_with(media_extra: &str) -> Rig {
    support::rig::start_bridge(APPID, "", media_extra, 20).await
}

/// A phone playing `hz` (12 s: baresip hangs up when its file ends).
async fn phone(pbx: &Pbx, account: &str, auto_answer: bool, hz: f64) -> Baresip {
    Baresip::tone_phone(
        pbx.addr(),
        account,
        hz,
        Duration::from_secs(12),
        auto_answer,
    )
    .await
}

fn end_call(ws: &WsClient, to: &str) {
    ws.send_raw(
        &json!({"type": "peer_message", "id": 900, "to": to, "text": "{\"Cmd\":\"EndCall\"}"})
            .to_string(),
    );
}

/// Browser calls 1001 with `codecs`; both ends hear each other. Returns every frame the browser
/// got from the hub.
async fn web_to_sip_call(
    rig: &Rig,
    call_id: &str,
    codecs: Vec<LegCodec>,
) -> Vec<serde_json::Value> {
    web_to_sip_call_checking(rig, call_id, codecs, false).await
}

/// [`web_to_sip_call`]; with `busy`, the tones are checked only once the bridge's `/metrics`
/// says it is short of CPU (`srbridge_cpu_busy 1`).
async fn web_to_sip_call_checking(
    rig: &Rig,
    call_id: &str,
    codecs: Vec<LegCodec>,
    busy: bool,
) -> Vec<serde_json::Value> {
    let phone = phone(&rig.pbx, "1001", true, 440.0).await;
    let mut alice = WsClient::login(&rig.url, APPID, "alice").await;
    let ok = alice.invite(call_id, "1001", "").await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let alice = Arc::new(alice);
    let codecs_opus = codecs.first() == Some(&LegCodec::Opus);
    let mut peer = BrowserPeer::offer(Arc::clone(&alice), call_id, codecs).await;
    alice
        .wait_local_state(call_id, "ACCEPTED_BY_REMOTE", T)
        .await;
    phone.wait_for("CALL_ESTABLISHED", T).await;
    peer.wait_connected().await;
    peer.play(Some(1000.0));
    if busy {
        wait_busy(rig).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    peer.take_received();
    peer.take_opus_coders();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let heard = peer.take_received();
    assert_tone(&heard, 8000, 440.0, 15.0, -20.0);
    if codecs_opus {
        // Calm: SILK (`opus_mode`); short of CPU: CELT (`opus_mode_busy`), all of it.
        let [silk, hybrid, celt] = peer.take_opus_coders();
        let (wanted, others) = if busy {
            (celt, silk + hybrid)
        } else {
            (silk, hybrid + celt)
        };
        assert!(
            wanted > 100 && others == 0,
            "3 s of Opus, busy={busy}: SILK {silk}, hybrid {hybrid}, CELT {celt}"
        );
    }
    end_call(&alice, "1001");
    phone.wait_for("CALL_CLOSED", T).await;
    peer.close().await;
    let recording = phone.received_wav().expect("baresip recorded the call");
    assert_wav_tone(&recording, 1000.0, 15.0, -20.0);
    support::rig::everything_released(&rig.bridge).await;
    alice.frames()
}

/// The ports of every ICE candidate the bridge gave the browser for `call_id`: the `a=candidate`
/// lines of its answer and the trickled candidates (plus the answer's m= port unless it is the
/// placeholder 9).
fn bridge_ice_ports(frames: &[serde_json::Value], call_id: &str) -> Vec<u16> {
    let port_of = |candidate: &str| -> u16 {
        let fields: Vec<&str> = candidate.split_whitespace().collect();
        fields
            .get(5)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in candidate {candidate:?}"))
    };
    let mut ports = Vec::new();
    for f in frames
        .iter()
        .filter(|f| f["type"] == "media" && f["callId"] == call_id)
    {
        let p = &f["payload"];
        match p["kind"].as_str() {
            Some("answer") => {
                for line in p["sdp"].as_str().unwrap_or("").lines() {
                    if let Some(c) = line.strip_prefix("a=candidate:") {
                        ports.push(port_of(c));
                    }
                    if let Some(m) = line.strip_prefix("m=audio ") {
                        let port: u16 = m.split(' ').next().unwrap().parse().unwrap();
                        if port != 9 {
                            ports.push(port);
                        }
                    }
                }
            }
            Some("candidate") if !p["candidate"].is_null() => {
                let line = p["candidate"]["candidate"].as_str().unwrap_or("");
                if !line.is_empty() {
                    ports.push(port_of(line));
                }
            }
            _ => {}
        }
    }
    ports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_ice_candidates_lie_in_the_configured_port_range() {
    // by default the browser legs share the RTP range
    let rig = rig_with("").await;
    let frames = web_to_sip_call(&rig, "ice1", vec![LegCodec::Pcmu]).await;
    let ports = bridge_ice_ports(&frames, "ice1");
    let (min, max) = (*rig.rtp_ports.start(), *rig.rtp_ports.end());
    assert!(
        !ports.is_empty(),
        "the bridge offered candidates: {frames:#?}"
    );
    for port in &ports {
        assert!(
            (min..=max).contains(port),
            "ICE port {port} outside the RTP range {min}-{max}"
        );
    }
    println!("shared range {min}-{max}: candidate ports {ports:?}");
    drop(rig);

    // a range apart: `[media] webrtc_port_min/max`
    let lo = ports::free_port_range(10);
    let hi = lo + 9;
    let rig = rig_with(&format!("webrtc_port_min = {lo}\nwebrtc_port_max = {hi}")).await;
    let frames = web_to_sip_call(&rig, "ice2", vec![LegCodec::Pcmu]).await;
    let ports = bridge_ice_ports(&frames, "ice2");
    assert!(
        !ports.is_empty(),
        "the bridge offered candidates: {frames:#?}"
    );
    for port in &ports {
        assert!(
            (lo..=hi).contains(port),
            "ICE port {port} outside webrtc_port_min/max {lo}-{hi}"
        );
    }
    println!("webrtc range {lo}-{hi}: candidate ports {ports:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_to_sip_opus_tone_both_ways_and_everything_released() {
    let rig = rig_with("").await;
    web_to_sip_call(
        &rig,
        "m1",
        vec![LegCodec::Opus, LegCodec::TelephoneEvent48k],
    )
    .await;
    // The call's media shows in /metrics: RTP both ways, transcoding time per direction.
    let metrics = rig.metrics().await;
    for (name, direction) in [
        ("srbridge_rtp_packets_total", "web_to_sip"),
        ("srbridge_rtp_packets_total", "sip_to_web"),
        ("srbridge_rtp_bytes_total", "web_to_sip"),
        ("srbridge_transcode_seconds_count", "web_to_sip"),
        ("srbridge_transcode_seconds_count", "sip_to_web"),
        ("srbridge_rtp_jitter_seconds_count", "web_to_sip"),
        ("srbridge_rtp_jitter_seconds_count", "sip_to_web"),
    ] {
        let value = metric_value(&metrics, name, direction);
        assert!(
            value > 0.0,
            "{name}{{direction={direction}}} = {value}\n{metrics}"
        );
    }
}

/// The value of `name{direction="…"}` in Prometheus text (0 when absent).
fn metric_value(text: &str, name: &str, direction: &str) -> f64 {
    let label = format!("direction=\"{direction}\"");
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits (at most 15 s) until the bridge's `/metrics` says it is short of CPU.
async fn wait_busy(rig: &Rig) {
    for _ in 0..150 {
        if rig.counter("srbridge_cpu_busy").await == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("srbridge_cpu_busy never 1:\n{}", rig.metrics().await);
}

/// `busy_cpu_percent = 1`: any call makes the bridge count as short of CPU. It says so in
/// `/metrics`, its Opus encoders take `opus_mode_busy` (CELT) at `opus_complexity_busy` (the
/// browser hears CELT; the policy is unit-tested in the media core), and the call keeps its
/// audio both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_short_of_cpu_says_so_and_its_calls_keep_their_audio() {
    let rig = rig_with("busy_cpu_percent = 1\n").await;
    assert_eq!(rig.counter("srbridge_cpu_busy").await, 0, "idle at start");
    web_to_sip_call_checking(
        &rig,
        "busy1",
        vec![LegCodec::Opus, LegCodec::TelephoneEvent48k],
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_codec_relay_when_the_browser_offers_pcmu_only() {
    let rig = rig_with("").await;
    web_to_sip_call(&rig, "m2", vec![LegCodec::Pcmu, LegCodec::TelephoneEvent8k]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_to_web_opus_tone_both_ways() {
    let rig = rig_with("").await;
    let phone = phone(&rig.pbx, "1002", true, 440.0).await;
    let bob_ws = Arc::new(WsClient::login(&rig.url, APPID, "bob").await);
    phone.dial("0bob").await;
    let invitation = bob_ws.wait_remote_invitation(T).await;
    let call_id = invitation["callId"].as_str().unwrap().to_string();
    // The offer goes just before accept.
    let offer_task = {
        let ws = Arc::clone(&bob_ws);
        let call_id = call_id.clone();
        tokio::spawn(async move {
            BrowserPeer::offer(
                ws,
                &call_id,
                vec![LegCodec::Opus, LegCodec::TelephoneEvent48k],
            )
            .await
        })
    };
    // Give the offer a head start, then accept.
    tokio::time::sleep(Duration::from_millis(200)).await;
    bob_ws.send_raw(
        &json!({"type": "accept", "id": 77, "callId": call_id, "response": ""}).to_string(),
    );
    let mut peer = offer_task.await.unwrap();
    phone.wait_for("CALL_ESTABLISHED", T).await;
    peer.wait_connected().await;
    peer.play(Some(1000.0));
    tokio::time::sleep(Duration::from_secs(1)).await;
    peer.take_received();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_tone(&peer.take_received(), 8000, 440.0, 15.0, -20.0);
    phone.hangup().await;
    phone.wait_for("CALL_CLOSED", T).await;
    peer.close().await;
    let recording = phone.received_wav().expect("baresip recorded the call");
    assert_wav_tone(&recording, 1000.0, 15.0, -20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtmf_both_ways() {
    let rig = rig_with("").await;
    let phone = phone(&rig.pbx, "1003", true, 440.0).await;
    let mut alice = WsClient::login(&rig.url, APPID, "alice").await;
    alice.invite("d1", "1003", "").await;
    let alice = Arc::new(alice);
    let mut peer = BrowserPeer::offer(
        Arc::clone(&alice),
        "d1",
        vec![LegCodec::Opus, LegCodec::TelephoneEvent48k],
    )
    .await;
    phone.wait_for("CALL_ESTABLISHED", T).await;
    peer.wait_connected().await;
    // RTCDTMFSender-style telephone-events, then the JSON fallback.
    peer.press("1#");
    let first = phone.wait_for("CALL_DTMF_START", T).await;
    let second = phone.wait_for("CALL_DTMF_START", T).await;
    assert_eq!((first.param.as_str(), second.param.as_str()), ("1", "#"));
    send_media(&alice, "d1", json!({"kind": "dtmf", "digit": "7"}));
    assert_eq!(phone.wait_for("CALL_DTMF_START", T).await.param, "7");
    // The phone presses keys: the browser gets each once.
    phone.command("sndcode", "5").await.expect("sndcode");
    phone.command("sndcode", "9").await.expect("sndcode");
    for _ in 0..50 {
        if peer.dtmf.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A little longer, so a key reported twice would show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        *peer.dtmf.lock().unwrap(),
        vec!["5", "9"],
        "each key once, in order"
    );
    end_call(&alice, "1003");
    phone.wait_for("CALL_CLOSED", T).await;
    peer.close().await;
}

#[tokio::test]
async fn dtmf_as_sip_info_when_configured() {
    let rig = rig_with("dtmf_mode = \"info\"").await;
    let phone = phone(&rig.pbx, "1008", true, 440.0).await;
    let mut alice = WsClient::login(&rig.url, APPID, "alice").await;
    alice.invite("i1", "1008", "").await;
    let alice = Arc::new(alice);
    let mut peer = BrowserPeer::offer(
        Arc::clone(&alice),
        "i1",
        vec![LegCodec::Opus, LegCodec::TelephoneEvent48k],
    )
    .await;
    phone.wait_for("CALL_ESTABLISHED", T).await;
    peer.wait_connected().await;
    // The browser's telephone-events and the JSON fallback leave as INFO requests only (no
    // RFC 4733 is sent in this mode), and the phone reads each key.
    peer.press("3*");
    let first = phone.wait_for("CALL_DTMF_START", T).await;
    let second = phone.wait_for("CALL_DTMF_START", T).await;
    assert_eq!((first.param.as_str(), second.param.as_str()), ("3", "*"));
    send_media(&alice, "i1", json!({"kind": "dtmf", "digit": "8"}));
    assert_eq!(phone.wait_for("CALL_DTMF_START", T).await.param, "8");
    end_call(&alice, "1008");
    phone.wait_for("CALL_CLOSED", T).await;
    peer.close().await;
}

/// Opus call to `account`, connected and flowing.
async fn connected_call(
    rig: &Rig,
    account: &str,
    call_id: &str,
) -> (Baresip, Arc<WsClient>, BrowserPeer) {
    let phone = phone(&rig.pbx, account, true, 440.0).await;
    let mut alice = WsClient::login(&rig.url, APPID, "alice").await;
    let ok = alice.invite(call_id, account, "").await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let alice = Arc::new(alice);
    let mut peer = BrowserPeer::offer(
        Arc::clone(&alice),
        call_id,
        vec![LegCodec::Opus, LegCodec::TelephoneEvent48k],
    )
    .await;
    phone.wait_for("CALL_ESTABLISHED", T).await;
    peer.wait_connected().await;
    (phone, alice, peer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_and_resume_from_the_phone_keeps_the_call_and_the_phone_is_heard_again() {
    let rig = rig_with("").await;
    let (phone, alice, peer) = connected_call(&rig, "1004", "h1").await;
    // (baresip 1.0 stops its recorder on hold, so the direction toward the phone after resume is
    // checked with SIPp's echo in `reinvite_hold_then_new_port_and_codec_via_sipp_echo`.)
    phone.command("hold", "").await.expect("hold");
    tokio::time::sleep(Duration::from_secs(1)).await;
    phone.command("resume", "").await.expect("resume");
    tokio::time::sleep(Duration::from_secs(1)).await;
    peer.take_received();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_tone(&peer.take_received(), 8000, 440.0, 15.0, -20.0);
    assert_eq!(rig.bridge.calls().len(), 1, "the call survives hold/resume");
    end_call(&alice, "1004");
    phone.wait_for("CALL_CLOSED", T).await;
    peer.close().await;
    support::rig::everything_released(&rig.bridge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stereo_recording_holds_the_browser_left_and_the_phone_right() {
    let rec = tempfile::tempdir().unwrap();
    let rig = rig_with(&format!(
        "[media.recording]\nenabled = true\ndir = \"{}\"\nmode = \"stereo\"",
        rec.path().display()
    ))
    .await;
    let (phone, alice, peer) = connected_call(&rig, "1005", "rec-1").await;
    peer.play(Some(1000.0));
    tokio::time::sleep(Duration::from_secs(3)).await;
    end_call(&alice, "1005");
    phone.wait_for("CALL_CLOSED", T).await;
    peer.close().await;
    support::rig::everything_released(&rig.bridge).await;
    let path = rec.path().join("rec-1.wav");
    let mut samples = Vec::new();
    for _ in 0..50 {
        if let Ok(r) = hound::WavReader::open(&path) {
            assert_eq!(r.spec().channels, 2);
            assert_eq!(r.spec().sample_rate, 8000);
            samples = r.into_samples::<i16>().map(|s| s.unwrap()).collect();
            if samples.len() > 2 * 8000 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left: Vec<f32> = samples
        .iter()
        .step_by(2)
        .map(|s| f32::from(*s) / 32768.0)
        .collect();
    let right: Vec<f32> = samples
        .iter()
        .skip(1)
        .step_by(2)
        .map(|s| f32::from(*s) / 32768.0)
        .collect();
    assert_tone(&left, 8000, 1000.0, 15.0, -20.0);
    assert_tone(&right, 8000, 440.0, 15.0, -20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_offer_ends_the_call_with_a_clear_error() {
    let rig = rig_with("").await;
    let _phone = phone(&rig.pbx, "1006", false, 440.0).await;
    let mut alice = WsClient::login(&rig.url, APPID, "alice").await;
    alice.invite("g1", "1006", "").await;
    send_media(
        &alice,
        "g1",
        json!({"kind": "offer", "sdp": "this is not SDP"}),
    );
    let error = wait_media(&alice, "g1", "error", T).await;
    assert!(
        error["message"].as_str().unwrap().contains("offer"),
        "{error}"
    );
    support::rig::everything_released(&rig.bridge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_without_audio_is_refused() {
    let rig = rig_with("").await;
    let _phone = phone(&rig.pbx, "1007", false, 440.0).await;
    let mut alice = WsClient::login(&rig.url, APPID, "alice").await;
    alice.invite("g2", "1007", "").await;
    let video_only = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
        a=rtpmap:96 VP8/90000\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
        a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
        a=setup:actpass\r\na=sendrecv\r\n";
    send_media(&alice, "g2", json!({"kind": "offer", "sdp": video_only}));
    let error = wait_media(&alice, "g2", "error", T).await;
    assert!(
        error["message"].as_str().unwrap().contains("audio"),
        "{error}"
    );
    support::rig::everything_released(&rig.bridge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_media_messages_leave_a_running_call_unaffected() {
    let rig = rig_with("").await;
    let (phone, alice, peer) = connected_call(&rig, "1008", "s1").await;
    // A candidate for a call that does not exist, and nonsense for ours.
    let bogus = json!({"kind": "candidate", "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0", "sdpMLineIndex": 0}});
    send_media(&alice, "no-such-call", bogus);
    send_media(
        &alice,
        "s1",
        json!({"kind": "candidate", "candidate": {"candidate": "garbage"}}),
    );
    send_media(&alice, "s1", json!({"kind": "bogus"}));
    send_media(&alice, "s1", json!({"kind": "dtmf", "digit": "xyz"}));
    peer.play(Some(1000.0));
    tokio::time::sleep(Duration::from_secs(1)).await;
    peer.take_received();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_tone(&peer.take_received(), 8000, 440.0, 15.0, -20.0);
    let errors = peer.errors.lock().unwrap().clone();
    assert!(
        errors.len() >= 3,
        "each bad message is answered: {errors:?}"
    );
    assert_eq!(rig.bridge.calls().len(), 1);
    end_call(&alice, "1008");
    phone.wait_for("CALL_CLOSED", T).await;
    peer.close().await;
    let recording = phone.received_wav().expect("baresip recorded the call");
    assert_wav_tone(&recording, 1000.0, 15.0, -20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinvite_hold_then_new_port_and_codec_via_sipp_echo() {
    let rig = rig_with("codecs = [\"PCMU\", \"PCMA\"]").await;
    let port = ports::free_port();
    support::sipp::register(rig.pbx.addr(), "1009", "1234", port, 300)
        .await
        .assert_success();
    let mut uas = support::Sipp::new("uas_reinvite_echo.xml")
        .service("1009")
        .local_port(port)
        .calls(1)
        .timeout(Duration::from_secs(40))
        .arg("-rtp_echo")
        .spawn(None);
    let mut alice = WsClient::login(&rig.url, APPID, "alice").await;
    let ok = alice.invite("r1", "1009", "").await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let alice = Arc::new(alice);
    let mut peer = BrowserPeer::offer(
        Arc::clone(&alice),
        "r1",
        vec![LegCodec::Opus, LegCodec::TelephoneEvent48k],
    )
    .await;
    alice.wait_local_state("r1", "ACCEPTED_BY_REMOTE", T).await;
    peer.wait_connected().await;
    // The echo returns the browser's own tone through both directions of the pipeline.
    peer.play(Some(1000.0));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    peer.take_received();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_tone(&peer.take_received(), 8000, 1000.0, 15.0, -20.0);

    let wait_log = |needle: &'static str| {
        let uas = &uas;
        async move {
            for _ in 0..200 {
                if uas.logs_so_far().contains(needle) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("SIPp never logged {needle}: {}", uas.logs_so_far());
        }
    };
    wait_log("phase=held").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    peer.take_received();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let on_hold = peer.take_received();
    let level = support::audio::rms_dbfs(&on_hold);
    assert!(
        level < -40.0,
        "the bridge kept sending on hold: {level:.1} dBFS"
    );

    wait_log("phase=moved").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    peer.take_received();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_tone(&peer.take_received(), 8000, 1000.0, 15.0, -20.0);
    // o= versions: 1 in the first answer, bumped once per changed answer.
    assert!(
        uas.logs_so_far().contains("o_version=3"),
        "{}",
        uas.logs_so_far()
    );

    end_call(&alice, "1009");
    uas.wait(T).await.assert_success();
    peer.close().await;
    support::rig::everything_released(&rig.bridge).await;
}
