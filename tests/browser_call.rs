//! The web-demo softphone in headless Chromium, calling through the bridge (in-process) to
//! baresip phones on the Kamailio PBX and back: audio by content both ways, DTMF both ways, the
//! incoming-call panel, and the README screenshot (`docs/web-demo.png`).

#[allow(dead_code)]
#[path = "browser/driver.rs"]
mod driver;
mod support;

use std::path::Path;
use std::time::Duration;

use driver::Page;
use serde_json::json;
use srbridge::bridge::Bridge;
use support::{assert_wav_tone, audio, ports, read_wav, write_tone_wav, Baresip, Pbx};

const APPID: &str = "browser-test";
const T: Duration = Duration::from_secs(20);

struct Rig {
    pbx: Pbx,
    bridge: Bridge,
    base: String,
    dir: tempfile::TempDir,
}

async fn rig() -> Rig {
    rig_on(Pbx::start().await).await
}

async fn rig_on(pbx: Pbx) -> Rig {
    let support::rig::BridgeRig {
        pbx, bridge, base, ..
    } = support::rig::start_bridge_on(pbx, APPID, "", "", 40).await;
    Rig {
        pbx,
        bridge,
        base,
        dir: tempfile::tempdir().unwrap(),
    }
}

/// A phone that plays a 440 Hz tone (60 s, then baresip hangs up) and records what it hears.
async fn tone_phone(rig: &Rig, account: &str, auto_answer: bool) -> Baresip {
    Baresip::tone_phone(
        rig.pbx.addr(),
        account,
        440.0,
        Duration::from_secs(60),
        auto_answer,
    )
    .await
}

/// Chromium whose microphone plays a 1 kHz tone, on the web-demo page (raw microphone).
async fn tone_page(rig: &Rig) -> Page {
    let mic = rig.dir.path().join("mic-1k.wav");
    write_tone_wav(&mic, 1000.0, 0.5, Duration::from_secs(30), 48000);
    let mut page = Page::launch(&mic).await;
    page.goto(&format!("{}/?audio=raw", rig.base)).await;
    page
}

async fn no_calls_left(bridge: &Bridge) {
    for _ in 0..50 {
        if bridge.calls().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("calls left behind: {:?}", bridge.calls());
}

#[tokio::test]
async fn page_calls_a_phone_hears_it_sends_dtmf_both_ways_and_hangs_up() {
    let rig = rig().await;
    let phone = tone_phone(&rig, "1001", true).await;
    let mut page = tone_page(&rig).await;

    // The app id is prefilled from /api/webrtc; the user only types a user id.
    let logged_in = page.login("alice", APPID).await;
    assert_eq!(logged_in["phase"], "idle", "{logged_in:#}");
    assert_eq!(logged_in["connection"], "CONNECTED", "{logged_in:#}");

    page.cmd(json!({"cmd": "dial", "number": "1001"})).await;
    let established = phone.wait_for("CALL_ESTABLISHED", T).await;
    assert!(
        established.raw.to_string().contains("alice"),
        "the phone shows the browser user as the caller: {established:?}"
    );
    let in_call = page.wait_phase("in-call").await;
    assert_eq!(in_call["peer"], "1001", "{in_call:#}");
    page.cmd(json!({"cmd": "waitMedia", "mediaState": "connected", "timeoutMs": 20000}))
        .await;

    // What the page's speaker plays is the phone's 440 Hz tone.
    let heard = rig.dir.path().join("page-heard.wav");
    page.record(&heard, 3000).await;
    let a = assert_wav_tone(&heard, 440.0, 10.0, -30.0);
    println!(
        "page heard {:.1} Hz at {:.1} dBFS",
        a.frequency_hz, a.rms_dbfs
    );

    // Both level meters move.
    let meters = page.cmd(json!({"cmd": "meters"})).await;
    assert!(meters["mic"].as_f64().unwrap() > 20.0, "{meters}");
    assert!(meters["spk"].as_f64().unwrap() > 20.0, "{meters}");

    // DTMF from the page's keypad reaches the phone.
    page.cmd(json!({"cmd": "key", "key": "5"})).await;
    let dtmf = phone.wait_for("CALL_DTMF_START", T).await;
    assert_eq!(dtmf.param, "5", "{dtmf:?}");
    page.cmd(json!({"cmd": "key", "key": "#"})).await;
    let dtmf = phone.wait_for("CALL_DTMF_START", T).await;
    assert_eq!(dtmf.param, "#", "{dtmf:?}");

    // DTMF from the phone shows on the page.
    phone.send_dtmf("7").await;
    let got = page
        .cmd(json!({"cmd": "waitDtmf", "digits": "7", "timeoutMs": 10000}))
        .await;
    assert_eq!(got["dtmfReceived"], "7", "{got:#}");

    // The README screenshot: the page during a call.
    let timer = page.cmd(json!({"cmd": "state"})).await;
    assert_ne!(timer["timer"], "00:00", "the call timer runs: {timer:#}");
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/web-demo.png");
    page.cmd(json!({"cmd": "screenshot", "path": shot})).await;

    // Hang up from the page: the phone's call ends, the page is ready for the next call.
    page.cmd(json!({"cmd": "click", "selector": "#hangup-btn"}))
        .await;
    phone.wait_for("CALL_CLOSED", T).await;
    let idle = page.wait_phase("idle").await;
    assert_eq!(idle["banner"], "", "no error after a normal call: {idle:#}");
    no_calls_left(&rig.bridge).await;

    // The phone heard the page's microphone: 1 kHz.
    let wav = phone.received_wav().expect("the phone recorded the call");
    let a = assert_wav_tone(&wav, 1000.0, 10.0, -30.0);
    println!(
        "phone heard {:.1} Hz at {:.1} dBFS",
        a.frequency_hz, a.rms_dbfs
    );

    assert_eq!(page.page_errors().await, json!([]));
    page.close().await;
}

#[tokio::test]
async fn phone_rings_the_page_which_accepts_and_both_hear_each_other() {
    let rig = rig().await;
    let mut page = tone_page(&rig).await;
    let logged_in = page.login("bob", APPID).await;
    assert_eq!(logged_in["phase"], "idle", "{logged_in:#}");
    let phone = tone_phone(&rig, "1002", false).await;

    phone.dial("0bob").await;
    let ringing = page
        .cmd(json!({"cmd": "incoming", "timeoutMs": 20000}))
        .await;
    assert_eq!(ringing["incomingNumber"], "1002", "{ringing:#}");
    assert_eq!(ringing["phase"], "incoming", "{ringing:#}");
    phone.wait_for("CALL_RINGING", T).await;
    // The audio path comes up while the page rings (the bridge's `prepare`), but the page plays
    // nothing before it accepts.
    let ringing = page
        .cmd(json!({"cmd": "waitMedia", "mediaState": "connected", "timeoutMs": 20000}))
        .await;
    assert_eq!(ringing["phase"], "incoming", "{ringing:#}");
    assert_eq!(ringing["hasRemoteStream"], false, "{ringing:#}");

    page.cmd(json!({"cmd": "click", "selector": "#accept-btn"}))
        .await;
    phone.wait_for("CALL_ESTABLISHED", T).await;
    let in_call = page.wait_phase("in-call").await;
    assert_eq!(in_call["peer"], "1002", "{in_call:#}");
    let connected = page
        .cmd(json!({"cmd": "waitMedia", "mediaState": "connected", "timeoutMs": 20000}))
        .await;
    assert_eq!(connected["hasRemoteStream"], true, "{connected:#}");
    assert_eq!(connected["callState"], "connected", "{connected:#}");

    let heard = rig.dir.path().join("page-heard.wav");
    page.record(&heard, 3000).await;
    let a = assert_wav_tone(&heard, 440.0, 10.0, -30.0);
    println!(
        "page heard {:.1} Hz at {:.1} dBFS",
        a.frequency_hz, a.rms_dbfs
    );

    // Mute: the phone hears silence from then on (the last second before its hang-up).
    let muted = page
        .cmd(json!({"cmd": "click", "selector": "#mute-btn"}))
        .await;
    assert_eq!(muted["muted"], true, "{muted:#}");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The phone hangs up: the page's call ends by itself.
    phone.hangup().await;
    phone.wait_for("CALL_CLOSED", T).await;
    let idle = page.wait_phase("idle").await;
    assert_eq!(idle["lastEnd"], "REMOTE_HANGUP", "{idle:#}");
    no_calls_left(&rig.bridge).await;

    let wav = phone.received_wav().expect("the phone recorded the call");
    let a = assert_wav_tone(&wav, 1000.0, 10.0, -30.0);
    println!(
        "phone heard {:.1} Hz at {:.1} dBFS",
        a.frequency_hz, a.rms_dbfs
    );
    let (samples, rate) = read_wav(&wav);
    let tail = &samples[samples.len().saturating_sub(rate as usize)..];
    let level = audio::rms_dbfs(tail);
    assert!(
        level < -50.0,
        "muted, the phone still heard {level:.1} dBFS"
    );

    assert_eq!(page.page_errors().await, json!([]));
    page.close().await;
}

/// Who ends a call.
#[derive(Debug, Clone, Copy)]
enum HangsUp {
    Phone,
    Page,
}

/// Phone 1002 dials `0alice`; the page (alice) rings with caller 1002, accepts, hears the phone's
/// 440 Hz, the phone hears the page's 1 kHz, and `who` hangs up.
async fn phone_calls_alice(rig: &Rig, page: &mut Page, phone: &Baresip, who: HangsUp) {
    phone.dial("0alice").await;
    let ringing = page
        .cmd(json!({"cmd": "incoming", "timeoutMs": 20000}))
        .await;
    assert_eq!(ringing["incomingNumber"], "1002", "{ringing:#}");
    phone.wait_for("CALL_RINGING", T).await;
    page.cmd(json!({"cmd": "click", "selector": "#accept-btn"}))
        .await;
    phone.wait_for("CALL_ESTABLISHED", T).await;
    let in_call = page.wait_phase("in-call").await;
    assert_eq!(in_call["peer"], "1002", "{in_call:#}");
    page.cmd(json!({"cmd": "waitMedia", "mediaState": "connected", "timeoutMs": 20000}))
        .await;

    let heard = rig.dir.path().join(format!("page-heard-{who:?}.wav"));
    page.record(&heard, 2000).await;
    let a = assert_wav_tone(&heard, 440.0, 10.0, -30.0);
    println!(
        "{who:?} hangs up: page heard {:.1} Hz at {:.1} dBFS",
        a.frequency_hz, a.rms_dbfs
    );

    match who {
        HangsUp::Phone => {
            phone.hangup().await;
            phone.wait_for("CALL_CLOSED", T).await;
            let idle = page.wait_phase("idle").await;
            assert_eq!(idle["lastEnd"], "REMOTE_HANGUP", "{idle:#}");
        }
        HangsUp::Page => {
            page.cmd(json!({"cmd": "click", "selector": "#hangup-btn"}))
                .await;
            phone.wait_for("CALL_CLOSED", T).await;
            let idle = page.wait_phase("idle").await;
            assert_eq!(idle["banner"], "", "no error after a normal call: {idle:#}");
        }
    }
    no_calls_left(&rig.bridge).await;
    let wav = phone.received_wav().expect("the phone recorded the call");
    let a = assert_wav_tone(&wav, 1000.0, 10.0, -30.0);
    println!(
        "{who:?} hangs up: phone heard {:.1} Hz at {:.1} dBFS",
        a.frequency_hz, a.rms_dbfs
    );
}

/// Both hang-ups of a phone → alice call through `pbx`.
async fn phone_reaches_alice_through(pbx: Pbx) {
    let rig = rig_on(pbx).await;
    let mut page = tone_page(&rig).await;
    let logged_in = page.login("alice", APPID).await;
    assert_eq!(logged_in["phase"], "idle", "{logged_in:#}");
    let phone = tone_phone(&rig, "1002", false).await;
    phone_calls_alice(&rig, &mut page, &phone, HangsUp::Phone).await;
    // a new second for baresip's recording file names
    tokio::time::sleep(Duration::from_millis(1100)).await;
    phone_calls_alice(&rig, &mut page, &phone, HangsUp::Page).await;
    assert_eq!(page.page_errors().await, json!([]));
    page.close().await;
}

/// Issue 9: FreeSWITCH with SRProxy's dialplan sends R-URI and To rewritten to 1000's contact and
/// `X-Number: <sip:alice@DOMAIN>` (the test PBX's default).
#[tokio::test]
async fn phone_dials_0alice_through_the_freeswitch_shaped_pbx_and_both_hang_ups_work() {
    phone_reaches_alice_through(Pbx::start().await).await;
}

/// The other way PBXs reach the bridge: R-URI `0alice`, no X-Number.
#[tokio::test]
async fn phone_dials_0alice_with_the_number_in_the_request_uri_and_both_hang_ups_work() {
    phone_reaches_alice_through(Pbx::start_with_defines(&[("DIALPLAN_RURI", "1")]).await).await;
}

#[tokio::test]
async fn page_explains_calls_that_cannot_go_through() {
    let rig = rig().await;
    let mut page = tone_page(&rig).await;
    page.login("dave", APPID).await;

    // Outside the bridge's acc_rule: refused without a SIP call.
    page.cmd(json!({"cmd": "dial", "number": "2000"})).await;
    let s = page.wait_banner().await;
    let banner = s["banner"].as_str().unwrap();
    assert!(
        banner.contains("2000") && banner.contains("not allowed"),
        "{s:#}"
    );
    let s = page.wait_phase("idle").await;
    assert!(rig.bridge.calls().is_empty(), "{s:#}");

    // Nobody registered as 1009: offline.
    page.cmd(json!({"cmd": "dialTyped", "number": "1009"}))
        .await;
    let s = page
        .cmd(json!({"cmd": "waitBanner", "timeoutMs": 20000}))
        .await;
    let banner = s["banner"].as_str().unwrap();
    assert!(
        banner.contains("1009") && banner.contains("offline"),
        "{s:#}"
    );
    page.wait_phase("idle").await;

    // 1003 answers 486 Busy Here.
    let mut uas = support::sipp::registered_uas(rig.pbx.addr(), "1003", "uas_busy.xml", 1, T).await;
    page.cmd(json!({"cmd": "dialTyped", "number": "1003"}))
        .await;
    let s = page.wait_banner().await;
    let banner = s["banner"].as_str().unwrap();
    assert!(banner.contains("1003 is busy"), "{s:#}");
    page.wait_phase("idle").await;
    uas.wait(T).await.assert_success();
    no_calls_left(&rig.bridge).await;

    // A hub that cannot be reached: the login says so.
    let dead = format!("ws://127.0.0.1:{}/ws", ports::free_port());
    page.goto(&format!("{}/?ws={dead}", rig.base)).await;
    let s = page.login("dave", APPID).await;
    assert_eq!(s["phase"], "logged-out", "{s:#}");
    let banner = s["banner"].as_str().unwrap();
    assert!(banner.contains("Cannot reach the bridge"), "{s:#}");

    // A wrong app id.
    page.goto(&rig.base).await;
    let s = page.login("dave", "not-the-app").await;
    assert!(s["banner"].as_str().unwrap().contains("app id"), "{s:#}");
    page.close().await;
}

#[tokio::test]
async fn page_says_when_the_microphone_is_denied() {
    let rig = rig().await;
    let mic = rig.dir.path().join("mic.wav");
    write_tone_wav(&mic, 1000.0, 0.5, Duration::from_secs(5), 48000);
    let mut page = Page::launch_denying_microphone(&mic).await;
    page.goto(&rig.base).await;
    page.login("erin", APPID).await;
    page.cmd(json!({"cmd": "dial", "number": "1001"})).await;
    let s = page.wait_banner().await;
    assert!(
        s["banner"]
            .as_str()
            .unwrap()
            .contains("Microphone access was denied"),
        "{s:#}"
    );
    assert_eq!(s["phase"], "idle", "no call without a microphone: {s:#}");
    assert!(rig.bridge.calls().is_empty());
    page.close().await;
}
