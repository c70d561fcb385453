//! RTP inactivity timeout end to end (issue #9, `[media] rtp_timeout`): a phone that answers and
//! then sends nothing, or a browser that goes away, ends the call with BYE toward SIP and
//! `{"Cmd":"EndCall"}` to the browser. The bridge runs in-process on the Kamailio rig with a
//! 3 s timeout; the browser is `support::webrtc_peer`, the phones a SIPp UAS and baresip.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use srbridge::media::webrtc_leg::LegCodec;
use support::sipp::registered_uas;
use support::webrtc_peer::BrowserPeer;
use support::{Baresip, BaresipOptions, WsClient};

const APPID: &str = "timeout-test";
const T: Duration = Duration::from_secs(15);
/// The `[media] rtp_timeout` of these tests.
const RTP_TIMEOUT: Duration = Duration::from_secs(3);

async fn rig() -> support::rig::BridgeRig {
    support::rig::start_bridge(APPID, "", "rtp_timeout = 3", 10).await
}

/// `GET path` over plain HTTP/1.1; returns the body.
async fn http_get_text(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// `srbridge_calls_ended_total{reason="rtp_timeout"}` of this test binary's bridges.
async fn rtp_timeouts(rig: &support::rig::BridgeRig) -> u64 {
    let text = http_get_text(rig.bridge.http_addr(), "/metrics").await;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("srbridge_calls_ended_total{reason=\"rtp_timeout\"} ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no rtp_timeout series in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_that_answers_and_sends_nothing_is_hung_up_after_rtp_timeout() {
    let rig = rig().await;
    let before = rtp_timeouts(&rig).await;
    // answers, never sends RTP, and passes only if a BYE comes (answered 200)
    let mut uas = registered_uas(
        rig.pbx.addr(),
        "1001",
        "uas_answer.xml",
        1,
        Duration::from_secs(40),
    )
    .await;
    let mut alice = WsClient::login(&rig.url, APPID, "alice").await;
    let ok = alice.invite("t1", "1001", "").await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let alice = Arc::new(alice);
    let mut peer = BrowserPeer::offer(Arc::clone(&alice), "t1", vec![LegCodec::Opus]).await;
    alice.wait_local_state("t1", "ACCEPTED_BY_REMOTE", T).await;
    let answered = Instant::now();
    peer.wait_connected().await;
    peer.play(Some(1000.0));
    alice
        .wait_peer_message("EndCall", RTP_TIMEOUT + Duration::from_secs(5))
        .await;
    let lasted = answered.elapsed();
    // the bridge arms the watch a moment before the browser hears of the answer
    assert!(
        lasted >= RTP_TIMEOUT - Duration::from_millis(500),
        "ended after {lasted:?}, before the timeout"
    );
    let result = uas.wait(T).await;
    result.assert_success();
    assert!(
        result.messages.contains("BYE sip:"),
        "the phone got the bridge's BYE"
    );
    assert_eq!(rtp_timeouts(&rig).await, before + 1);
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_that_goes_away_ends_the_call_for_the_phone() {
    let rig = rig().await;
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("tone.wav");
    // long enough that the phone does not hang up by itself
    support::write_tone_wav(&wav, 440.0, 0.5, Duration::from_secs(40), 8000);
    let phone = Baresip::start(
        rig.pbx.addr(),
        "1001",
        BaresipOptions {
            auto_answer: true,
            play_wav: Some(wav),
            record_dir: None,
        },
    )
    .await;
    phone.wait_registered(T).await;
    let before = rtp_timeouts(&rig).await;
    let mut alice = WsClient::login(&rig.url, APPID, "alice").await;
    let ok = alice.invite("t2", "1001", "").await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let alice = Arc::new(alice);
    let mut peer = BrowserPeer::offer(Arc::clone(&alice), "t2", vec![LegCodec::Opus]).await;
    alice.wait_local_state("t2", "ACCEPTED_BY_REMOTE", T).await;
    phone.wait_for("CALL_ESTABLISHED", T).await;
    peer.wait_connected().await;
    peer.play(Some(1000.0));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // the browser vanishes: no RTP, and its ICE consent lapses after 5 s
    let gone = Instant::now();
    peer.close().await;
    phone.wait_for("CALL_CLOSED", Duration::from_secs(14)).await;
    let lasted = gone.elapsed();
    alice.wait_peer_message("EndCall", T).await;
    assert_eq!(
        rtp_timeouts(&rig).await,
        before + 1,
        "ended by the RTP timeout (after {lasted:?}), not by ICE failing"
    );
}
