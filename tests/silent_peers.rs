//! Calls the bridge ends because a peer went silent (issue #9), end to end: the RTP inactivity
//! timeout (`[media] rtp_timeout`: a phone that answers and then sends nothing), a browser that
//! goes away (its DTLS close_notify ends the call at once), one that vanishes without a word (its
//! packets dropped by nftables: the RTP timeout ends the call), and an RFC 4028 session that the
//! phone does not refresh. Each ends with BYE toward
//! SIP and `{"Cmd":"EndCall"}` to the browser, and is counted. The bridge runs in-process on the
//! Kamailio rig; the browser is `support::webrtc_peer`, the phones SIPp and baresip.

#[path = "browser/packet_loss.rs"]
mod packet_loss;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use srbridge::media::webrtc_leg::LegCodec;
use support::sipp::registered_uas;
use support::webrtc_peer::BrowserPeer;
use support::{Baresip, Sipp, WsClient};

const APPID: &str = "timeout-test";
const T: Duration = Duration::from_secs(15);
/// The `[media] rtp_timeout` of these tests.
const RTP_TIMEOUT: Duration = Duration::from_secs(3);

async fn rig() -> support::rig::BridgeRig {
    support::rig::start_bridge(APPID, "", "rtp_timeout = 3", 10).await
}

/// `srbridge_calls_ended_total{reason}` in this test's own bridge's `/metrics`.
async fn calls_ended(rig: &support::rig::BridgeRig, reason: &str) -> u64 {
    rig.counter(&format!(
        "srbridge_calls_ended_total{{reason=\"{reason}\"}}"
    ))
    .await
}

async fn rtp_timeouts(rig: &support::rig::BridgeRig) -> u64 {
    calls_ended(rig, "rtp_timeout").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_that_answers_and_sends_nothing_is_hung_up_after_rtp_timeout() {
    let rig = rig().await;
    assert_eq!(
        rtp_timeouts(&rig).await,
        0,
        "a new bridge has ended no call"
    );
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
    println!("silent phone: EndCall {lasted:?} after the answer (rtp_timeout {RTP_TIMEOUT:?})");
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
    assert_eq!(rtp_timeouts(&rig).await, 1);
    assert_eq!(calls_ended(&rig, "session_expired").await, 0);
    peer.close().await;
}

/// alice's browser calls phone 1001 (which answers and plays 440 Hz); both legs up and the
/// browser playing 1 kHz for a second.
async fn browser_calls_a_phone(
    rig: &support::rig::BridgeRig,
    call_id: &str,
) -> (Baresip, Arc<WsClient>, BrowserPeer) {
    let phone =
        Baresip::tone_phone(rig.pbx.addr(), "1001", 440.0, Duration::from_secs(40), true).await;
    let mut alice = WsClient::login(&rig.url, APPID, "alice").await;
    let ok = alice.invite(call_id, "1001", "").await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let alice = Arc::new(alice);
    let mut peer = BrowserPeer::offer(Arc::clone(&alice), call_id, vec![LegCodec::Opus]).await;
    alice
        .wait_local_state(call_id, "ACCEPTED_BY_REMOTE", T)
        .await;
    phone.wait_for("CALL_ESTABLISHED", T).await;
    peer.wait_connected().await;
    peer.play(Some(1000.0));
    tokio::time::sleep(Duration::from_secs(1)).await;
    (phone, alice, peer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_that_goes_away_ends_the_call_for_the_phone_at_once() {
    let rig = rig().await;
    let (phone, alice, peer) = browser_calls_a_phone(&rig, "t2").await;
    // the browser closes its peer connection (DTLS close_notify) without hanging up the call
    let closed = Instant::now();
    peer.close().await;
    phone.wait_for("CALL_CLOSED", Duration::from_secs(14)).await;
    let lasted = closed.elapsed();
    println!("browser closed its connection: phone hung up {lasted:?} later");
    alice.wait_peer_message("EndCall", T).await;
    assert!(
        lasted < RTP_TIMEOUT,
        "the close was noticed, not waited out: {lasted:?}"
    );
    assert_eq!(rtp_timeouts(&rig).await, 0, "not by the RTP timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_that_vanishes_without_a_word_is_hung_up_after_rtp_timeout() {
    // Its own WebRTC ports, so the drop rule below touches this bridge's browser leg only.
    let webrtc = support::ports::free_port_range(10);
    let rig = support::rig::start_bridge(
        APPID,
        "",
        &format!(
            "rtp_timeout = 3\nwebrtc_port_min = {webrtc}\nwebrtc_port_max = {}",
            webrtc + 9
        ),
        10,
    )
    .await;
    let (phone, alice, peer) = browser_calls_a_phone(&rig, "t4").await;
    // The browser's machine drops off the network: no close_notify, no RTCP BYE, nothing.
    let vanished = Instant::now();
    let cut = packet_loss::PacketLoss::start(webrtc..=webrtc + 9, 100);
    // The leg counts as alive while its ICE consent is fresh (a browser on hold sends no RTP):
    // consent goes stale after 5 s without answers (`ice_disconnected_timeout`), then the RTP
    // timeout runs; ICE failure (10 s) would end it later and under another reason.
    phone
        .wait_for("CALL_CLOSED", RTP_TIMEOUT + Duration::from_secs(10))
        .await;
    let lasted = vanished.elapsed();
    println!("browser vanished: phone hung up {lasted:?} later (rtp_timeout {RTP_TIMEOUT:?})");
    assert!(cut.count().dropped > 0, "the rule cut the browser off");
    assert!(
        lasted >= RTP_TIMEOUT - Duration::from_millis(500),
        "ended after {lasted:?}: before the timeout, so not for the silence"
    );
    // The hub's WebSocket is TCP, untouched: the page still learns the call ended.
    alice.wait_peer_message("EndCall", T).await;
    assert_eq!(rtp_timeouts(&rig).await, 1, "counted as an RTP timeout");
    drop(cut);
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_that_does_not_refresh_its_session_is_hung_up_and_the_browser_gets_end_call() {
    let rig = support::rig::start_bridge(APPID, "session_expires = 6\nmin_se = 2", "", 10).await;
    let alice = Arc::new(WsClient::login(&rig.url, APPID, "alice").await);
    // the phone (from the PBX's address) calls alice with Session-Expires: 6;refresher=uac, then
    // never refreshes; it passes only if the bridge's BYE comes
    let mut phone = Sipp::new("uac_timer_silent.xml")
        .service("1000")
        .key("se", "6")
        .key("refresher", "uac")
        .timeout(Duration::from_secs(30))
        .spawn(Some(rig.bridge.sip_addr()));
    let invitation = alice.wait_remote_invitation(T).await;
    let call_id = invitation["callId"].as_str().expect("callId").to_string();
    let offer = {
        let ws = Arc::clone(&alice);
        let call_id = call_id.clone();
        tokio::spawn(async move { BrowserPeer::offer(ws, &call_id, vec![LegCodec::Opus]).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    alice.send_raw(
        &serde_json::json!({"type": "accept", "id": 7, "callId": call_id, "response": ""})
            .to_string(),
    );
    let accepted = Instant::now();
    let mut peer = offer.await.expect("offer");
    peer.wait_connected().await;
    peer.play(Some(1000.0));
    // RFC 4028 §10: 6 s - min(32 s, 2 s) after the answer
    alice
        .wait_peer_message("EndCall", Duration::from_secs(4 + 5))
        .await;
    let lasted = accepted.elapsed();
    println!("unrefreshed session (6 s): EndCall {lasted:?} after the answer");
    assert!(
        lasted >= Duration::from_millis(3500),
        "ended after {lasted:?}, before the session expired"
    );
    let result = phone.wait(T).await;
    result.assert_success();
    assert_eq!(calls_ended(&rig, "session_expired").await, 1);
    assert_eq!(rtp_timeouts(&rig).await, 0, "ended by the session timer");
    peer.close().await;
}
