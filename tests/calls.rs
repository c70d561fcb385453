//! Every row of SPEC §3's tables, end to end: a browser stand-in speaking the hub protocol
//! (`tests/support/ws.rs`), the bridge in-process, the Kamailio PBX, and baresip/SIPp phones.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use srbridge::bridge::Bridge;
use support::sipp;
use support::{Baresip, Pbx, WsClient};

const APPID: &str = "calls-test";
const T: Duration = Duration::from_secs(15);

type Rig = support::rig::BridgeRig;

async fn rig_with(sip_extra: &str) -> Rig {
    support::rig::start_bridge(APPID, sip_extra, "", 40).await
}

async fn rig() -> Rig {
    rig_with("").await
}

async fn phone(pbx: &Pbx, account: &str, auto_answer: bool) -> Baresip {
    support::baresip::silent_phone(pbx, account, auto_answer).await
}

fn response(v: &Value) -> Value {
    serde_json::from_str(v["response"].as_str().unwrap_or("{}")).unwrap_or(Value::Null)
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

// ---- browser -> SIP ----

#[tokio::test]
async fn web_to_sip_answered_then_bye_from_phone_ends_the_call() {
    let rig = rig().await;
    let phone = phone(&rig.pbx, "1001", true).await;
    let mut alice = WsClient::login(&rig.url, APPID, "alice").await;
    let ok = alice
        .invite("w1", "1001", r#"{"Mode":1,"ChanId":"room-1"}"#)
        .await;
    assert_eq!(ok["type"], "ok", "SENT_TO_REMOTE: {ok}");
    alice.wait_local_state("w1", "RECEIVED_BY_REMOTE", T).await;
    let accepted = alice.wait_local_state("w1", "ACCEPTED_BY_REMOTE", T).await;
    let r = response(&accepted);
    assert_eq!(r["SipNumber"], "1001", "{accepted}");
    assert_eq!(r["ChanId"], "room-1", "{accepted}");
    let incoming = phone.wait_for("CALL_ESTABLISHED", T).await;
    assert!(
        incoming.raw.to_string().contains("alice"),
        "the phone shows the browser user as the caller: {incoming:?}"
    );
    let calls = rig.bridge.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].state, "established");
    assert_eq!(calls[0].uid, "alice");
    phone.hangup().await;
    alice.wait_peer_message("EndCall", T).await;
    no_calls_left(&rig.bridge).await;
}

#[tokio::test]
async fn web_to_sip_end_call_from_browser_hangs_up_the_phone() {
    let rig = rig().await;
    let phone = phone(&rig.pbx, "1002", true).await;
    let mut alice = WsClient::login(&rig.url, APPID, "alice").await;
    alice.invite("w2", "1002", "").await;
    alice.wait_local_state("w2", "ACCEPTED_BY_REMOTE", T).await;
    phone.wait_for("CALL_ESTABLISHED", T).await;
    let sent = alice
        .request(json!({"type": "peer_message", "to": "1002", "text": "{\"Cmd\":\"EndCall\"}"}))
        .await;
    assert_eq!(sent["type"], "ok", "{sent}");
    phone.wait_for("CALL_CLOSED", T).await;
    no_calls_left(&rig.bridge).await;
}

#[tokio::test]
async fn web_to_sip_busy_is_refused_by_remote_with_the_sip_code() {
    let rig = rig().await;
    let mut uas = sipp::registered_uas(rig.pbx.addr(), "1003", "uas_busy.xml", 1, T).await;
    let mut alice = WsClient::login(&rig.url, APPID, "alice").await;
    alice.invite("w3", "1003", "").await;
    let refused = alice.wait_local_state("w3", "REFUSED_BY_REMOTE", T).await;
    assert_eq!(response(&refused)["SipCode"], 486, "{refused}");
    uas.wait(T).await.assert_success();
    no_calls_left(&rig.bridge).await;
}

#[tokio::test]
async fn web_to_sip_unregistered_extension_is_peer_offline() {
    let rig = rig().await;
    let mut alice = WsClient::login(&rig.url, APPID, "alice").await;
    alice.invite("w4", "1009", "").await;
    let failed = alice.wait_local_state("w4", "FAILURE", T).await;
    assert_eq!(failed["reason"], "PEER_OFFLINE", "{failed}");
    assert_eq!(response(&failed)["SipCode"], 480, "{failed}");
    no_calls_left(&rig.bridge).await;
}

#[tokio::test]
async fn web_to_sip_no_answer_is_peer_no_response_and_stops_the_ringing() {
    let rig = rig_with("ring_timeout = 3").await;
    let phone = phone(&rig.pbx, "1004", false).await;
    let mut alice = WsClient::login(&rig.url, APPID, "alice").await;
    alice.invite("w5", "1004", "").await;
    phone.wait_for("CALL_INCOMING", T).await;
    let failed = alice.wait_local_state("w5", "FAILURE", T).await;
    assert_eq!(failed["reason"], "PEER_NO_RESPONSE", "{failed}");
    phone.wait_for("CALL_CLOSED", T).await;
    no_calls_left(&rig.bridge).await;
}

#[tokio::test]
async fn web_to_sip_cancelled_by_browser_cancels_the_invite() {
    let rig = rig().await;
    let phone = phone(&rig.pbx, "1005", false).await;
    let mut alice = WsClient::login(&rig.url, APPID, "alice").await;
    alice.invite("w6", "1005", "").await;
    phone.wait_for("CALL_INCOMING", T).await;
    alice.wait_local_state("w6", "RECEIVED_BY_REMOTE", T).await;
    let ok = alice
        .request(json!({"type": "cancel", "callId": "w6"}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    alice.wait_local_state("w6", "CANCELED", T).await;
    phone.wait_for("CALL_CLOSED", T).await;
    no_calls_left(&rig.bridge).await;
}

#[tokio::test]
async fn web_to_sip_number_outside_acc_rule_is_refused_without_a_call() {
    let rig = rig().await;
    let mut alice = WsClient::login(&rig.url, APPID, "alice").await;
    alice.invite("w7", "2000", "").await;
    let failed = alice.wait_local_state("w7", "FAILURE", T).await;
    assert_eq!(failed["reason"], "INVALID_ARGUMENT", "{failed}");
    assert!(
        response(&failed)["Reason"]
            .as_str()
            .unwrap_or("")
            .contains("acc_rule"),
        "{failed}"
    );
    assert!(rig.bridge.calls().is_empty());
}

#[tokio::test]
async fn web_to_sip_closed_websocket_mid_call_sends_bye() {
    let rig = rig().await;
    let phone = phone(&rig.pbx, "1006", true).await;
    let mut alice = WsClient::login(&rig.url, APPID, "alice").await;
    alice.invite("w8", "1006", "").await;
    alice.wait_local_state("w8", "ACCEPTED_BY_REMOTE", T).await;
    phone.wait_for("CALL_ESTABLISHED", T).await;
    alice.close();
    phone.wait_for("CALL_CLOSED", T).await;
    no_calls_left(&rig.bridge).await;
}

// ---- SIP -> browser ----

async fn ring_alice(rig: &Rig, account: &str) -> (Baresip, WsClient, String) {
    let alice = WsClient::login(&rig.url, APPID, "alice").await;
    let phone = phone(&rig.pbx, account, false).await;
    phone.dial("0alice").await;
    let invitation = alice.wait_remote_invitation(T).await;
    assert_eq!(invitation["caller"], account, "{invitation}");
    let call_id = invitation["callId"].as_str().expect("callId").to_string();
    (phone, alice, call_id)
}

#[tokio::test]
async fn sip_to_web_rings_only_after_delivery_and_answers_only_after_accept() {
    let rig = rig().await;
    let (phone, mut alice, call_id) = ring_alice(&rig, "1007").await;
    // SRProxy answered at once; the bridge must not even ring before the browser has it.
    assert!(
        phone
            .try_wait_for("CALL_ESTABLISHED", Duration::from_millis(1500))
            .await
            .is_none(),
        "answered before accept"
    );
    assert!(
        !phone.events().iter().any(|e| e.kind == "CALL_RINGING"),
        "180 before INVITATION_RECEIVED"
    );
    alice
        .request(json!({"type": "received", "callId": call_id}))
        .await;
    phone.wait_for("CALL_RINGING", T).await;
    let ok = alice
        .request(json!({"type": "accept", "callId": call_id, "response": ""}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    phone.wait_for("CALL_ESTABLISHED", T).await;
    assert_eq!(
        rig.bridge.calls()[0].direction,
        srbridge::domain::Direction::SipToWeb
    );
    // EndCall from the browser hangs up the phone
    alice
        .request(json!({"type": "peer_message", "to": "1007", "text": "{\"Cmd\":\"EndCall\"}"}))
        .await;
    phone.wait_for("CALL_CLOSED", T).await;
    no_calls_left(&rig.bridge).await;
}

#[tokio::test]
async fn sip_to_web_refused_is_486_and_decline_is_603() {
    let rig = rig().await;
    let (phone, mut alice, call_id) = ring_alice(&rig, "1008").await;
    alice
        .request(json!({"type": "received", "callId": call_id}))
        .await;
    alice
        .request(json!({"type": "refuse", "callId": call_id, "response": "busy"}))
        .await;
    let closed = phone.wait_for("CALL_CLOSED", T).await;
    assert!(closed.param.contains("486"), "{closed:?}");

    phone.dial("0alice").await;
    let invitation = alice.wait_remote_invitation(T).await;
    let call_id = invitation["callId"].as_str().unwrap().to_string();
    alice
        .request(
            json!({"type": "refuse", "callId": call_id, "response": "{\"Reason\":\"decline\"}"}),
        )
        .await;
    let closed = phone.wait_for("CALL_CLOSED", T).await;
    assert!(closed.param.contains("603"), "{closed:?}");
    no_calls_left(&rig.bridge).await;
}

#[tokio::test]
async fn sip_to_web_offline_user_is_480() {
    let rig = rig().await;
    let phone = phone(&rig.pbx, "1010", false).await;
    phone.dial("0nobody").await;
    let closed = phone.wait_for("CALL_CLOSED", T).await;
    assert!(closed.param.contains("480"), "{closed:?}");
    no_calls_left(&rig.bridge).await;
}

#[tokio::test]
async fn sip_to_web_no_answer_expires_the_invitation_and_gives_480() {
    let rig = rig_with("ring_timeout = 3").await;
    let (phone, mut alice, call_id) = ring_alice(&rig, "1011").await;
    alice
        .request(json!({"type": "received", "callId": call_id}))
        .await;
    let failed = alice.wait_remote_state(&call_id, "FAILURE", T).await;
    assert_eq!(failed["reason"], "INVITATION_EXPIRE", "{failed}");
    let closed = phone.wait_for("CALL_CLOSED", T).await;
    assert!(closed.param.contains("480"), "{closed:?}");
    no_calls_left(&rig.bridge).await;
}

#[tokio::test]
async fn sip_to_web_phone_cancels_and_the_invitation_is_canceled() {
    let rig = rig().await;
    let (phone, mut alice, call_id) = ring_alice(&rig, "1012").await;
    alice
        .request(json!({"type": "received", "callId": call_id}))
        .await;
    phone.wait_for("CALL_RINGING", T).await;
    phone.hangup().await;
    alice.wait_remote_state(&call_id, "CANCELED", T).await;
    // accepting after the cancel is a clear error, nothing crashes
    let late = alice
        .request(json!({"type": "accept", "callId": call_id, "response": ""}))
        .await;
    assert_eq!(late["type"], "error", "{late}");
    no_calls_left(&rig.bridge).await;
}

#[tokio::test]
async fn sip_to_web_bye_from_phone_sends_end_call() {
    let rig = rig().await;
    let (phone, mut alice, call_id) = ring_alice(&rig, "1013").await;
    alice
        .request(json!({"type": "received", "callId": call_id}))
        .await;
    alice
        .request(json!({"type": "accept", "callId": call_id, "response": ""}))
        .await;
    phone.wait_for("CALL_ESTABLISHED", T).await;
    phone.hangup().await;
    let end = alice.wait_peer_message("EndCall", T).await;
    assert_eq!(end["from"], "1013", "{end}");
    no_calls_left(&rig.bridge).await;
}
