//! The cluster path with a real browser: the web-demo page in headless Chromium is logged in to
//! bridge A (an `srbridge` daemon on a real `nats-server`) while a baresip phone's call to
//! `0alice` lands on bridge B (in this process, registered on Kamailio). B runs the SIP dialog
//! and the WebRTC leg; only the page's signalling crosses NATS and A. The page accepts and both
//! ends hear each other's tone, checked by content.
//!
//! Run in a network namespace with only lo (see README "Tests"); Chromium runs in it too.

#[allow(dead_code)]
#[path = "browser/driver.rs"]
mod driver;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use driver::Page;
use serde_json::{json, Value};
use support::nats::NatsServer;
use support::node::Node;
use support::rig::http_get_text;
use support::{assert_wav_tone, write_tone_wav, Baresip, BaresipOptions};

const APPID: &str = "cluster-browser-test";
const T: Duration = Duration::from_secs(20);
const TTL_S: u64 = 3;

/// Polls `addr`'s `/api/status` until its `cluster` object satisfies `pred`.
async fn wait_cluster(addr: SocketAddr, what: &str, pred: impl Fn(&Value) -> bool) {
    let start = Instant::now();
    let mut last = Value::Null;
    while start.elapsed() < Duration::from_secs(30) {
        let text = http_get_text(addr, "/api/status").await;
        last = serde_json::from_str::<Value>(&text).unwrap_or_default()["cluster"].clone();
        if pred(&last) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{addr}: {what} not reached in 30 s; cluster status: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_on_b_rings_alice_in_chromium_on_a_and_both_hear_each_other() {
    let nats = NatsServer::start().await;
    let cluster = format!(
        "\n[cluster]\nnats = \"{}\"\nnode_id = \"b\"\npresence_ttl = {TTL_S}\n",
        nats.url()
    );
    let rig = support::rig::start_bridge(APPID, "", &cluster, 20).await;
    let a = Node::start(APPID, rig.pbx.addr(), &nats.url(), "a", TTL_S, "").await;
    let dir = tempfile::tempdir().unwrap();

    // alice: the web-demo page served by A, its microphone a 1 kHz tone.
    let mic = dir.path().join("mic-1k.wav");
    write_tone_wav(&mic, 1000.0, 0.5, Duration::from_secs(60), 48000);
    let mut page = Page::launch(&mic).await;
    page.goto(&format!("http://{}/?audio=raw", a.http_addr()))
        .await;
    let logged_in = page.login("alice", APPID).await;
    assert_eq!(logged_in["phase"], "idle", "{logged_in:#}");
    assert_eq!(logged_in["connection"], "CONNECTED", "{logged_in:#}");
    wait_cluster(rig.bridge.http_addr(), "alice on a", |c| {
        c["state"] == "connected" && c["remote_users"] == 1
    })
    .await;

    // The phone plays 440 Hz and records what it hears.
    let tone = dir.path().join("phone-440.wav");
    write_tone_wav(&tone, 440.0, 0.5, Duration::from_secs(60), 8000);
    let phone = Baresip::start(
        rig.pbx.addr(),
        "1002",
        BaresipOptions {
            auto_answer: false,
            play_wav: Some(tone),
            record_dir: None,
        },
    )
    .await;
    phone.wait_registered(T).await;

    // The call lands on B; the page on A rings with the phone's number and accepts.
    phone.dial("0alice").await;
    let ringing = page
        .cmd(json!({"cmd": "incoming", "timeoutMs": 20000}))
        .await;
    assert_eq!(ringing["incomingNumber"], "1002", "{ringing:#}");
    assert_eq!(ringing["phase"], "incoming", "{ringing:#}");
    page.cmd(json!({"cmd": "click", "selector": "#accept-btn"}))
        .await;
    phone.wait_for("CALL_ESTABLISHED", T).await;
    let in_call = page.wait_phase("in-call").await;
    assert_eq!(in_call["peer"], "1002", "{in_call:#}");
    let connected = page
        .cmd(json!({"cmd": "waitMedia", "mediaState": "connected", "timeoutMs": 20000}))
        .await;
    assert_eq!(connected["hasRemoteStream"], true, "{connected:#}");
    let calls = rig.bridge.calls();
    assert_eq!(calls.len(), 1, "the call runs on B: {calls:?}");
    assert_eq!(calls[0].uid, "alice");

    // The page's speaker plays the phone's 440 Hz (media browser ↔ B, never through A).
    let heard = dir.path().join("page-heard.wav");
    page.record(&heard, 3000).await;
    let got = assert_wav_tone(&heard, 440.0, 10.0, -30.0);
    println!(
        "page on A heard {:.1} Hz at {:.1} dBFS",
        got.frequency_hz, got.rms_dbfs
    );

    // The phone hangs up: the page's call ends by itself (the end crosses NATS too).
    phone.hangup().await;
    phone.wait_for("CALL_CLOSED", T).await;
    let idle = page.wait_phase("idle").await;
    assert_eq!(idle["lastEnd"], "REMOTE_HANGUP", "{idle:#}");

    // The phone heard the page's microphone: 1 kHz.
    let wav = phone.received_wav().expect("the phone recorded the call");
    let got = assert_wav_tone(&wav, 1000.0, 10.0, -30.0);
    println!(
        "phone on B heard {:.1} Hz at {:.1} dBFS",
        got.frequency_hz, got.rms_dbfs
    );
    assert_eq!(page.page_errors().await, json!([]));
    page.close().await;
}
