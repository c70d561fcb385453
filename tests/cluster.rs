//! A cluster of bridges on a real `nats-server`: bridge B (in this process) is registered on the
//! Kamailio PBX; bridges A and C are `srbridge` daemons of their own with no SIP account. A phone
//! calling `0alice` lands on B while alice is logged in to A: B runs the SIP dialog and the media,
//! alice's signalling goes B ↔ NATS ↔ A ↔ her WebSocket. Killing A ends the call with a BYE to
//! the phone once A's heartbeat lapses; a NATS outage leaves each node serving its own users and
//! saying so, and the nodes find each other again when NATS is back.
//!
//! Run one at a time in a network namespace with only lo (see README "Tests").

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use srbridge::media::webrtc_leg::LegCodec;
use support::nats::NatsServer;
use support::node::Node;
use support::rig::{http_get_text, BridgeRig};
use support::webrtc_peer::BrowserPeer;
use support::{assert_tone, assert_wav_tone, Baresip, WsClient};

const APPID: &str = "cluster-test";
const T: Duration = Duration::from_secs(15);
/// `[cluster] presence_ttl` of every node in these tests.
const TTL_S: u64 = 3;

/// Bridge B: registered as 1000 on a fresh PBX, node `b` of the cluster on `nats`.
async fn bridge_b(nats: &NatsServer) -> BridgeRig {
    bridge_b_with(nats, "").await
}

/// Like [`bridge_b`], with `extra` sections (e.g. `[auth]`).
async fn bridge_b_with(nats: &NatsServer, extra: &str) -> BridgeRig {
    // `media_extra` ends the [media] section, so the cluster section can follow it.
    let cluster = format!(
        "\n[cluster]\nnats = \"{}\"\nnode_id = \"b\"\npresence_ttl = {TTL_S}\n{extra}\n",
        nats.url()
    );
    support::rig::start_bridge(APPID, "", &cluster, 20).await
}

async fn status(addr: std::net::SocketAddr) -> Value {
    let text = http_get_text(addr, "/api/status").await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("/api/status: {e}: {text}"))
}

/// Polls `addr`'s `/api/status` until `pred` holds for its `cluster` object; returns the time
/// it took.
async fn wait_cluster(
    addr: std::net::SocketAddr,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Duration {
    let start = Instant::now();
    let mut last = Value::Null;
    while start.elapsed() < Duration::from_secs(30) {
        last = status(addr).await["cluster"].clone();
        if pred(&last) {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{addr}: {what} not reached in 30 s; cluster status: {last}");
}

fn has_peer(cluster: &Value, node: &str) -> bool {
    cluster["state"] == "connected"
        && cluster["peers"]
            .as_array()
            .is_some_and(|p| p.iter().any(|n| n == node))
}

/// A phone account playing `hz` (baresip hangs up when its 20 s file ends).
async fn phone(rig: &BridgeRig, account: &str, hz: f64) -> Baresip {
    Baresip::tone_phone(rig.pbx.addr(), account, hz, Duration::from_secs(20), false).await
}

async fn query_online(ws: &mut WsClient, uid: &str) -> bool {
    let answer = ws
        .request(json!({"type": "query_online", "uids": [uid]}))
        .await;
    answer["online"][uid] == true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_on_b_talks_to_alice_on_a_and_a_dying_ends_the_call_with_bye() {
    let nats = NatsServer::start().await;
    let rig = bridge_b(&nats).await;
    let mut a = Node::start(APPID, rig.pbx.addr(), &nats.url(), "a", TTL_S, "").await;
    let alice = Arc::new(WsClient::login(&a.ws_url(), APPID, "alice").await);

    // Presence: B knows alice is on A; a user of B sees her online; she cannot log in twice.
    wait_cluster(rig.bridge.http_addr(), "alice on a", |c| {
        has_peer(c, "a") && c["remote_users"] == 1
    })
    .await;
    let mut bob = WsClient::login(&rig.url, APPID, "bob").await;
    assert!(query_online(&mut bob, "alice").await, "alice online on B");
    assert!(!query_online(&mut bob, "nobody").await);
    let mut second = WsClient::connect(&rig.url).await;
    let refused = second
        .request(json!({"type": "login", "v": 1, "uid": "alice", "appid": APPID}))
        .await;
    assert_eq!(
        refused["code"], "UID_IN_USE",
        "second login of alice: {refused}"
    );

    // The phone calls alice through B.
    let phone = phone(&rig, "1002", 440.0).await;
    phone.dial("0alice").await;
    let invitation = alice.wait_remote_invitation(T).await;
    let call_id = invitation["callId"].as_str().unwrap().to_string();
    let offer_task = {
        let ws = Arc::clone(&alice);
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
    tokio::time::sleep(Duration::from_millis(200)).await;
    alice.send_raw(
        &json!({"type": "accept", "id": 77, "callId": call_id, "response": ""}).to_string(),
    );
    let mut peer = offer_task.await.unwrap();
    phone.wait_for("CALL_ESTABLISHED", T).await;
    peer.wait_connected().await;
    let calls = rig.bridge.calls();
    assert_eq!(calls.len(), 1, "the call runs on B: {calls:?}");
    assert_eq!(calls[0].uid, "alice");

    // Tones both ways: the phone's 440 Hz reaches alice, her 1000 Hz reaches the phone.
    peer.play(Some(1000.0));
    tokio::time::sleep(Duration::from_secs(1)).await;
    peer.take_received();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_tone(&peer.take_received(), 8000, 440.0, 15.0, -20.0);

    // A dies without a word: once its heartbeat lapses, B hangs up on the phone.
    let killed = Instant::now();
    a.kill_hard();
    phone
        .wait_for("CALL_CLOSED", Duration::from_secs(TTL_S + 10))
        .await;
    let node_down_to_bye = killed.elapsed();
    println!(
        "MEASURED node down -> phone got BYE: {:.2} s (presence_ttl {TTL_S} s)",
        node_down_to_bye.as_secs_f64()
    );
    assert!(
        node_down_to_bye <= Duration::from_secs(TTL_S + 3),
        "call ended {node_down_to_bye:?} after the node died"
    );
    wait_cluster(rig.bridge.http_addr(), "a gone", |c| {
        !has_peer(c, "a") && c["remote_users"] == 0
    })
    .await;
    assert!(
        !query_online(&mut bob, "alice").await,
        "alice offline after the TTL"
    );
    assert!(
        rig.bridge.calls().is_empty(),
        "B forgot the call: {:?}",
        rig.bridge.calls()
    );
    peer.close().await;
    let recording = phone.received_wav().expect("baresip recorded the call");
    assert_wav_tone(&recording, 1000.0, 15.0, -20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outage_leaves_each_node_serving_its_own_users_and_the_cluster_heals() {
    let mut nats = NatsServer::start().await;
    let rig = bridge_b(&nats).await;
    let a = Node::start(APPID, rig.pbx.addr(), &nats.url(), "a", TTL_S, "").await;
    let c = Node::start(APPID, rig.pbx.addr(), &nats.url(), "c", TTL_S, "").await;
    let alice = WsClient::login(&a.ws_url(), APPID, "alice").await;
    let _carol = WsClient::login(&c.ws_url(), APPID, "carol").await;
    wait_cluster(rig.bridge.http_addr(), "a and c with their users", |cl| {
        has_peer(cl, "a") && has_peer(cl, "c") && cl["remote_users"] == 2
    })
    .await;
    wait_cluster(a.http_addr(), "a sees b and c", |cl| {
        has_peer(cl, "b") && has_peer(cl, "c") && cl["remote_users"] == 1
    })
    .await;
    let metrics = http_get_text(a.http_addr(), "/metrics").await;
    assert!(
        metrics.contains("\nsrbridge_cluster_connected 1\n"),
        "{metrics}"
    );

    // NATS goes away: every node says so and keeps its own users.
    let down = Instant::now();
    nats.stop();
    let b_degraded = wait_cluster(rig.bridge.http_addr(), "b disconnected", |cl| {
        cl["state"] == "disconnected"
    })
    .await;
    wait_cluster(a.http_addr(), "a disconnected", |cl| {
        cl["state"] == "disconnected"
    })
    .await;
    let a_degraded = down.elapsed();
    println!(
        "MEASURED NATS down -> /api/status disconnected: b {:.2} s, a {:.2} s",
        b_degraded.as_secs_f64(),
        a_degraded.as_secs_f64()
    );
    let metrics = http_get_text(a.http_addr(), "/metrics").await;
    assert!(
        metrics.contains("\nsrbridge_cluster_connected 0\n"),
        "{metrics}"
    );
    // B's own users still log in and are served; remote users lapse after the TTL.
    let mut bob = WsClient::login(&rig.url, APPID, "bob").await;
    assert!(query_online(&mut bob, "bob").await);
    wait_cluster(rig.bridge.http_addr(), "remote users lapsed", |cl| {
        cl["remote_users"] == 0
    })
    .await;
    assert!(!alice.is_closed(), "alice stays logged in to a");

    // NATS is back: the nodes reconnect and learn each other's users again.
    let back = Instant::now();
    nats.start_again().await;
    wait_cluster(rig.bridge.http_addr(), "b sees a and c again", |cl| {
        has_peer(cl, "a") && has_peer(cl, "c") && cl["remote_users"] == 2
    })
    .await;
    println!(
        "MEASURED NATS back -> b sees every node's users again: {:.2} s",
        back.elapsed().as_secs_f64()
    );
    assert!(
        query_online(&mut bob, "alice").await,
        "alice online on B again"
    );

    // Routing works again: a phone call through B rings alice on A; she refuses it.
    let phone = phone(&rig, "1003", 440.0).await;
    phone.dial("0alice").await;
    let invitation = alice.wait_remote_invitation(T).await;
    let call_id = invitation["callId"].as_str().unwrap().to_string();
    alice.send_raw(
        &json!({"type": "refuse", "id": 78, "callId": call_id, "response": "{\"Cmd\":\"Busy\"}"})
            .to_string(),
    );
    phone.wait_for("CALL_CLOSED", T).await;
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_the_newest_login_on_any_node_keeps_the_uid() {
    const SECRET: &str = "cluster-secret";
    let auth = format!("[auth]\ntoken_secret = \"{SECRET}\"\n");
    let nats = NatsServer::start().await;
    let rig = bridge_b_with(&nats, &auth).await;
    let a = Node::start(APPID, rig.pbx.addr(), &nats.url(), "a", TTL_S, &auth).await;
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = srbridge::signal::mint_token(SECRET, "alice", expiry);
    let login = json!({"type": "login", "v": 1, "uid": "alice", "appid": APPID, "token": token});

    let mut on_a = WsClient::connect(&a.ws_url()).await;
    assert_eq!(on_a.request(login.clone()).await["type"], "ok");
    wait_cluster(rig.bridge.http_addr(), "alice on a", |c| {
        has_peer(c, "a") && c["remote_users"] == 1
    })
    .await;

    // alice logs in again on B: her session on A is replaced, as on one hub.
    let mut on_b = WsClient::connect(&rig.url).await;
    assert_eq!(on_b.request(login).await["type"], "ok");
    on_a.wait_for(
        |v| {
            v["type"] == "connection_state"
                && v["state"] == "ABORTED"
                && v["reason"] == "REMOTE_LOGIN"
        },
        T,
    )
    .await;
    wait_cluster(a.http_addr(), "alice only on b", |c| {
        has_peer(c, "b") && c["remote_users"] == 1
    })
    .await;
    wait_cluster(rig.bridge.http_addr(), "nobody left on a", |c| {
        has_peer(c, "a") && c["remote_users"] == 0
    })
    .await;
    let deadline = Instant::now() + T;
    while !on_a.is_closed() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(on_a.is_closed(), "A closed the replaced session");
    assert!(!on_b.is_closed(), "the new session on B stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_node_dying_ends_the_call_in_the_browser_on_another_node() {
    let nats = NatsServer::start().await;
    let pbx = support::Pbx::start().await;
    // Both nodes are daemons here: B (registered, runs the call) is the one killed.
    let proxy = "[rtm2sip]\non = true\nacc_rule = \"10[01-19]\"\n\
                 [proxy]\non = true\nsip_account = \"1000\"\nsip_pwd = \"1234\"\nrtm_account = \"bridge\"\n";
    let mut b = Node::start(APPID, pbx.addr(), &nats.url(), "b", TTL_S, proxy).await;
    pbx.wait_registered("1000", T).await;
    let a = Node::start(APPID, pbx.addr(), &nats.url(), "a", TTL_S, "").await;
    let alice = Arc::new(WsClient::login(&a.ws_url(), APPID, "alice").await);
    wait_cluster(b.http_addr(), "alice on a", |c| {
        has_peer(c, "a") && c["remote_users"] == 1
    })
    .await;

    let phone =
        Baresip::tone_phone(pbx.addr(), "1004", 440.0, Duration::from_secs(20), false).await;
    phone.dial("0alice").await;
    let invitation = alice.wait_remote_invitation(T).await;
    let call_id = invitation["callId"].as_str().unwrap().to_string();
    let offer_task = {
        let ws = Arc::clone(&alice);
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
    tokio::time::sleep(Duration::from_millis(200)).await;
    alice.send_raw(
        &json!({"type": "accept", "id": 79, "callId": call_id, "response": ""}).to_string(),
    );
    let mut peer = offer_task.await.unwrap();
    phone.wait_for("CALL_ESTABLISHED", T).await;
    peer.wait_connected().await;

    // B dies: once its heartbeat lapses, A tells alice's browser the call is over.
    let killed = Instant::now();
    b.kill_hard();
    let end = alice
        .wait_peer_message("EndCall", Duration::from_secs(TTL_S + 10))
        .await;
    let took = killed.elapsed();
    println!(
        "MEASURED call node down -> browser on the other node got EndCall: {:.2} s",
        took.as_secs_f64()
    );
    assert!(
        end["text"].as_str().is_some_and(|t| t.contains(&call_id)),
        "{end}"
    );
    assert!(took <= Duration::from_secs(TTL_S + 3), "{took:?}");
    wait_cluster(a.http_addr(), "b gone", |c| !has_peer(c, "b")).await;
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_while_nats_is_down_and_joins_when_it_is_up() {
    let mut nats = NatsServer::start().await;
    nats.stop();
    let pbx = support::Pbx::start().await;
    let a = Node::start(APPID, pbx.addr(), &nats.url(), "a", TTL_S, "").await;
    let _alice = WsClient::login(&a.ws_url(), APPID, "alice").await;
    wait_cluster(a.http_addr(), "a disconnected", |c| {
        c["state"] == "disconnected"
    })
    .await;
    let c = Node::start(APPID, pbx.addr(), &nats.url(), "c", TTL_S, "").await;
    nats.start_again().await;
    wait_cluster(c.http_addr(), "c sees alice on a", |cl| {
        has_peer(cl, "a") && cl["remote_users"] == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_to_web_invitations_and_messages_cross_nodes() {
    let nats = NatsServer::start().await;
    // No PBX: web ↔ web calls never touch SIP.
    let pbx: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let a = Node::start(APPID, pbx, &nats.url(), "a", TTL_S, "").await;
    let c = Node::start(APPID, pbx, &nats.url(), "c", TTL_S, "").await;
    let mut alice = WsClient::login(&a.ws_url(), APPID, "alice").await;
    let mut carol = WsClient::login(&c.ws_url(), APPID, "carol").await;
    wait_cluster(a.http_addr(), "carol on c", |cl| {
        has_peer(cl, "c") && cl["remote_users"] == 1
    })
    .await;
    wait_cluster(c.http_addr(), "alice on a", |cl| {
        has_peer(cl, "a") && cl["remote_users"] == 1
    })
    .await;

    // alice on A invites carol on C; carol receives, accepts; media and messages cross.
    assert_eq!(
        alice.invite("w1", "carol", "{\"Mode\":1}").await["type"],
        "ok"
    );
    let invitation = carol.wait_remote_invitation(T).await;
    assert_eq!(invitation["callId"], "w1");
    assert_eq!(invitation["caller"], "alice");
    assert_eq!(invitation["content"], "{\"Mode\":1}");
    carol.send_raw(&json!({"type": "received", "id": 1, "callId": "w1"}).to_string());
    alice.wait_local_state("w1", "RECEIVED_BY_REMOTE", T).await;
    carol.send_raw(
        &json!({"type": "accept", "id": 2, "callId": "w1", "response": "ok-carol"}).to_string(),
    );
    let accepted = alice.wait_local_state("w1", "ACCEPTED_BY_REMOTE", T).await;
    assert_eq!(accepted["response"], "ok-carol");
    // Media messages carry the sending browser's uid as `from`, as on one hub.
    let media = |call_id: &'static str, kind: &'static str| {
        move |v: &Value| {
            v["type"] == "media" && v["callId"] == call_id && v["payload"]["kind"] == kind
        }
    };
    support::webrtc_peer::send_media(&alice, "w1", json!({"kind": "offer", "sdp": "v=0 alice"}));
    let offer = carol.wait_for(media("w1", "offer"), T).await;
    assert_eq!(offer["payload"]["sdp"], "v=0 alice");
    assert_eq!(offer["from"], "alice", "{offer}");
    support::webrtc_peer::send_media(&carol, "w1", json!({"kind": "answer", "sdp": "v=0 carol"}));
    let answer = alice.wait_for(media("w1", "answer"), T).await;
    assert_eq!(answer["payload"]["sdp"], "v=0 carol");
    assert_eq!(answer["from"], "carol", "{answer}");
    support::webrtc_peer::send_media(
        &carol,
        "w1",
        json!({"kind": "candidate", "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"}),
    );
    let candidate = alice.wait_for(media("w1", "candidate"), T).await;
    assert_eq!(candidate["from"], "carol", "{candidate}");
    let sent = carol
        .request(json!({"type": "peer_message", "to": "alice", "text": "{\"Cmd\":\"EndCall\"}"}))
        .await;
    assert_eq!(sent["type"], "ok");
    let end = alice.wait_peer_message("EndCall", T).await;
    assert_eq!(end["from"], "carol");

    // A refusal and a cancel reach the other side too.
    assert_eq!(alice.invite("w2", "carol", "").await["type"], "ok");
    carol.wait_remote_invitation(T).await;
    carol.send_raw(
        &json!({"type": "refuse", "id": 3, "callId": "w2", "response": "busy"}).to_string(),
    );
    let refused = alice.wait_local_state("w2", "REFUSED_BY_REMOTE", T).await;
    assert_eq!(refused["response"], "busy");
    assert_eq!(alice.invite("w3", "carol", "").await["type"], "ok");
    carol.wait_remote_invitation(T).await;
    alice.send_raw(&json!({"type": "cancel", "id": 4, "callId": "w3"}).to_string());
    carol.wait_remote_state("w3", "CANCELED", T).await;
    alice.wait_local_state("w3", "CANCELED", T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_web_invitation_across_nodes_fails_after_the_hubs_receive_timeout() {
    let nats = NatsServer::start().await;
    let pbx: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let a = Node::start(APPID, pbx, &nats.url(), "a", TTL_S, "").await;
    let c = Node::start(APPID, pbx, &nats.url(), "c", TTL_S, "").await;
    let mut alice = WsClient::login(&a.ws_url(), APPID, "alice").await;
    let carol = WsClient::login(&c.ws_url(), APPID, "carol").await;
    wait_cluster(a.http_addr(), "carol on c", |cl| {
        has_peer(cl, "c") && cl["remote_users"] == 1
    })
    .await;
    wait_cluster(c.http_addr(), "alice on a", |cl| {
        has_peer(cl, "a") && cl["remote_users"] == 1
    })
    .await;

    // carol's client never confirms the invitation: both sides give up after the hub's 30 s
    // receive timeout, as on one hub (not the 60 s invitation timeout).
    let sent = Instant::now();
    assert_eq!(alice.invite("w5", "carol", "").await["type"], "ok");
    carol.wait_remote_invitation(T).await;
    let failed = alice
        .wait_local_state("w5", "FAILURE", Duration::from_secs(50))
        .await;
    let took = sent.elapsed();
    assert_eq!(failed["reason"], "PEER_NO_RESPONSE", "{failed}");
    let expired = carol
        .wait_remote_state("w5", "FAILURE", Duration::from_secs(5))
        .await;
    assert_eq!(expired["reason"], "INVITATION_EXPIRE", "{expired}");
    println!(
        "MEASURED unconfirmed cross-node invitation -> caller FAILURE: {:.2} s",
        took.as_secs_f64()
    );
    let receive_timeout = srbridge::signal::core::RECEIVE_TIMEOUT;
    assert!(
        took >= receive_timeout && took < receive_timeout + Duration::from_secs(10),
        "{took:?}"
    );
}

/// A PBX address for nodes that never talk SIP in a test (no `[proxy]`, no pings).
fn no_pbx() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 9))
}

/// `[cluster]` lines logging in as `user` with `password`.
fn nats_login(user: &str, password: &str) -> String {
    format!("nats_user = \"{user}\"\nnats_password = \"{password}\"")
}

/// The node's cluster status says NATS refuses it for `why` (a piece of `cluster.error`).
fn refused_for(cluster: &Value, why: &str) -> bool {
    cluster["state"] == "disconnected" && cluster["error"].as_str().is_some_and(|e| e.contains(why))
}

/// Its log's ERROR line containing `text`; panics (with the log) when there is none.
#[track_caller]
fn error_line(node: &Node, text: &str) -> String {
    let log = node.log();
    let found = log
        .lines()
        .find(|l| l.contains("ERROR") && l.contains(text));
    match found {
        Some(line) => line.to_string(),
        None => panic!("node {}: no ERROR line with {text:?}:\n{log}", node.id),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_the_right_nats_password_form_a_cluster_and_a_refused_one_says_why() {
    const USER: &str = "bridges";
    const PASSWORD: &str = "Sesame-7f3a9c";
    const WRONG: &str = "Wrong-e41b02";
    const CHANGED: &str = "Changed-5d77aa";
    let mut nats = NatsServer::start_with(&["--user", USER, "--pass", PASSWORD]).await;
    let login = nats_login(USER, PASSWORD);
    let a = Node::start(APPID, no_pbx(), &nats.url(), "a", TTL_S, &login).await;
    let b = Node::start(APPID, no_pbx(), &nats.url(), "b", TTL_S, &login).await;
    let alice = WsClient::login(&a.ws_url(), APPID, "alice").await;
    wait_cluster(b.http_addr(), "alice on a, seen from b", |c| {
        has_peer(c, "a") && c["remote_users"] == 1
    })
    .await;
    let mut bob = WsClient::login(&b.ws_url(), APPID, "bob").await;
    assert!(query_online(&mut bob, "alice").await, "alice online on b");

    // A wrong password: refused, said so in /api/status and once in the log as an ERROR.
    let started = Instant::now();
    let c = Node::start(
        APPID,
        no_pbx(),
        &nats.url(),
        "c",
        TTL_S,
        &nats_login(USER, WRONG),
    )
    .await;
    wait_cluster(c.http_addr(), "c refused", |cl| {
        refused_for(cl, "refused this node's credentials")
    })
    .await;
    let refused_after = started.elapsed();
    // It serves its own users all the same, and nobody else's.
    let mut carol = WsClient::login(&c.ws_url(), APPID, "carol").await;
    let _dave = WsClient::login(&c.ws_url(), APPID, "dave").await;
    assert!(query_online(&mut carol, "dave").await, "c serves its users");
    assert!(!query_online(&mut carol, "alice").await, "c is cut off");
    let a_status = status(a.http_addr()).await["cluster"].clone();
    assert!(!has_peer(&a_status, "c"), "c never joined: {a_status}");
    println!(
        "c says: {}",
        error_line(&c, "refused this node's credentials")
    );
    // It retries (the server logs each refusal) and says it once.
    let deadline = Instant::now() + T;
    while nats.log().matches("authentication error").count() < 3 {
        assert!(Instant::now() < deadline, "c retries:\n{}", nats.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let errors = c.log().lines().filter(|l| l.contains("ERROR")).count();
    assert_eq!(errors, 1, "one ERROR line for 3 refusals:\n{}", c.log());

    // The server's password changes: on reconnecting, a and b are refused in turn, and still
    // serve their own users.
    let changed = Instant::now();
    nats.restart_with(&["--user", USER, "--pass", CHANGED])
        .await;
    wait_cluster(a.http_addr(), "a refused after reconnecting", |cl| {
        refused_for(cl, "refused this node's credentials")
    })
    .await;
    let reconnect_refused = changed.elapsed();
    error_line(&a, "refused this node's credentials");
    let _erin = WsClient::login(&a.ws_url(), APPID, "erin").await;
    assert!(!alice.is_closed(), "alice stays logged in to a");

    // Still one ERROR line per refused node, however many times it retried.
    for node in [&a, &c] {
        let errors = node.log().lines().filter(|l| l.contains("ERROR")).count();
        assert_eq!(errors, 1, "node {}:\n{}", node.id, node.log());
    }
    // No node wrote a password, in any encoding (the refused ones above included).
    for node in [&a, &b, &c] {
        let log = node.log();
        for secret in [PASSWORD, WRONG, CHANGED] {
            support::log_scan::assert_no_secret(&log, secret, &format!("node {}", node.id));
        }
    }
    println!(
        "MEASURED wrong NATS password: node started -> /api/status says refused {:.2} s; \
         server password changed -> a connected node says refused {:.2} s",
        refused_after.as_secs_f64(),
        reconnect_refused.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_trusting_the_ca_join_over_mutual_tls_and_one_without_it_says_why() {
    let pki = support::certs::TestPki::generate();
    let (server_cert, server_key) = pki.server();
    let (client_cert, client_key) = pki.client();
    let path = |p: &std::path::Path| p.display().to_string();
    // The server verifies clients too: every node shows the client certificate.
    let nats = NatsServer::start_with(&[
        "--tlsverify",
        "--tlscert",
        &path(&server_cert),
        "--tlskey",
        &path(&server_key),
        "--tlscacert",
        &path(&pki.ca()),
    ])
    .await;
    let client = format!(
        "nats_tls_cert = \"{}\"\nnats_tls_key = \"{}\"",
        path(&client_cert),
        path(&client_key)
    );
    let trusting = format!("{client}\nnats_tls_ca = \"{}\"", path(&pki.ca()));

    let started = Instant::now();
    let a = Node::start(APPID, no_pbx(), &nats.tls_url(), "a", TTL_S, &trusting).await;
    wait_cluster(a.http_addr(), "a connected over TLS", |c| {
        c["state"] == "connected"
    })
    .await;
    let a_joined = started.elapsed();
    let b = Node::start(APPID, no_pbx(), &nats.tls_url(), "b", TTL_S, &trusting).await;
    let _alice = WsClient::login(&a.ws_url(), APPID, "alice").await;
    wait_cluster(b.http_addr(), "alice on a, seen from b over TLS", |c| {
        has_peer(c, "a") && c["remote_users"] == 1
    })
    .await;

    // Without the CA (the system's roots do not know it): refused, and it says why.
    let started = Instant::now();
    let c = Node::start(APPID, no_pbx(), &nats.tls_url(), "c", TTL_S, &client).await;
    wait_cluster(c.http_addr(), "c fails TLS", |cl| refused_for(cl, "TLS")).await;
    let c_failed = started.elapsed();
    println!(
        "c says: {}",
        error_line(&c, "TLS with the NATS server failed")
    );
    let mut carol = WsClient::login(&c.ws_url(), APPID, "carol").await;
    assert!(
        query_online(&mut carol, "carol").await,
        "c serves its users"
    );
    assert!(!query_online(&mut carol, "alice").await, "c is cut off");
    let b_status = status(b.http_addr()).await["cluster"].clone();
    assert!(!has_peer(&b_status, "c"), "c never joined: {b_status}");
    println!(
        "MEASURED NATS over mutual TLS: node started -> connected {:.2} s; \
         node without the CA started -> /api/status says TLS failed {:.2} s",
        a_joined.as_secs_f64(),
        c_failed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_nats_token_connects_and_one_without_credentials_is_refused() {
    const TOKEN: &str = "tok-91be0c";
    let nats = NatsServer::start_with(&["--auth", TOKEN]).await;
    let a = Node::start(
        APPID,
        no_pbx(),
        &nats.url(),
        "a",
        TTL_S,
        &format!("nats_token = \"{TOKEN}\""),
    )
    .await;
    let b = Node::start(APPID, no_pbx(), &nats.url(), "b", TTL_S, "").await;
    wait_cluster(a.http_addr(), "a connected", |c| c["state"] == "connected").await;
    wait_cluster(b.http_addr(), "b refused", |c| {
        refused_for(c, "refused this node's credentials")
    })
    .await;
    for node in [&a, &b] {
        support::log_scan::assert_no_secret(&node.log(), TOKEN, &format!("node {}", node.id));
    }
}
