//! The live event stream end to end: `GET /api/events` read as an operator's SSE client while
//! real calls go through Kamailio (a browser stand-in calling baresip/SIPp phones and a phone
//! calling the browser), the PBX going down and coming back, the admin token on the daemon, and
//! the webhook POSTing to a receiver in the test that fails at first.

mod ops_support;
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use srbridge::bridge::Bridge;
use srbridge::config::Config;
use support::sipp;
use support::sse::{SseClient, SseMessage};
use support::{Baresip, Pbx, WsClient};

const APPID: &str = "events-test";
const T: Duration = Duration::from_secs(15);

async fn phone(pbx: &Pbx, account: &str, auto_answer: bool) -> Baresip {
    support::baresip::silent_phone(pbx, account, auto_answer).await
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// The first message (received so far or later) for which `pred` holds.
async fn find(events: &SseClient, what: &str, pred: impl Fn(&SseMessage) -> bool) -> SseMessage {
    events
        .wait_until(what, T, |all| all.iter().find(|m| pred(m)).cloned())
        .await
}

/// What every `call.*` event of one call says about it.
fn assert_call_facts(events: &[Value], direction: &str, web_user: &str, number: &str) {
    for e in events {
        assert_eq!(e["version"], 1, "{e}");
        assert_eq!(e["direction"], direction, "{e}");
        assert_eq!(e["web_user"], web_user, "{e}");
        assert_eq!(e["number"], number, "{e}");
        assert!(e["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{e}");
    }
}

#[tokio::test]
async fn the_stream_follows_real_calls_both_ways_logins_and_registration() {
    let rig = support::rig::start_bridge(APPID, "options_interval = 1", "", 40).await;
    // Resuming from 0 replays what happened before we connected (registration at start-up).
    let mut events = SseClient::open(rig.bridge.http_addr(), &[("Last-Event-ID", "0")])
        .await
        .expect("stream");
    assert!(
        events.content_type.starts_with("text/event-stream"),
        "{}",
        events.content_type
    );
    let registering = events.next_of("registration.changed", T).await;
    assert_eq!(registering.data["registration"]["state"], "registering");
    assert_eq!(registering.data["account"], "1000");
    let registered = events.next_of("registration.changed", T).await;
    assert_eq!(registered.data["registration"]["state"], "registered");
    assert_eq!(registered.data["pbx"], rig.pbx.addr().to_string());
    let up = find(&events, "pbx.up", |m| m.event == "pbx.up").await;
    assert_eq!(up.data["pbx"], rig.pbx.addr().to_string());

    // browser -> phone, answered, the phone hangs up
    let phone_1001 = phone(&rig.pbx, "1001", true).await;
    let mut alice = WsClient::login(&rig.url, APPID, "alice").await;
    let login = events.next_of("user.login", T).await;
    assert_eq!(login.data["web_user"], "alice");
    alice.invite("w1", "1001", "").await;
    alice.wait_local_state("w1", "ACCEPTED_BY_REMOTE", T).await;
    phone_1001.wait_for("CALL_ESTABLISHED", T).await;
    phone_1001.hangup().await;
    let call = events.call("w1", T).await;
    assert_eq!(
        types(&call),
        [
            "call.created",
            "call.ringing",
            "call.answered",
            "call.ended"
        ]
    );
    assert_call_facts(&call, "web_to_sip", "alice", "1001");
    assert!(
        call[0]["sip_call_id"].is_null(),
        "no dialog before the INVITE"
    );
    let sip_call_id = call[1]["sip_call_id"]
        .as_str()
        .expect("Call-ID once ringing");
    assert!(!sip_call_id.is_empty());
    assert!(
        matches!(call[1]["sip_code"].as_u64(), Some(180 | 183)),
        "{}",
        call[1]
    );
    assert_eq!(call[2]["sip_call_id"], sip_call_id);
    let ended = &call[3];
    assert_eq!(ended["cause"], "sip_hangup", "{ended}");
    assert_eq!(ended["sip_code"], 200, "{ended}");
    assert_eq!(ended["rtm_state"], "ACCEPTED_BY_REMOTE", "{ended}");
    assert!(ended["talk_ms"].is_u64(), "{ended}");
    assert!(
        ended["duration_ms"].as_u64() >= ended["talk_ms"].as_u64(),
        "{ended}"
    );

    // browser -> busy phone (SIPp): refused with 486
    let mut busy = sipp::registered_uas(rig.pbx.addr(), "1003", "uas_busy.xml", 1, T).await;
    alice.invite("w2", "1003", "").await;
    alice.wait_local_state("w2", "REFUSED_BY_REMOTE", T).await;
    busy.wait(T).await.assert_success();
    let call = events.call("w2", T).await;
    assert_eq!(types(&call).first(), Some(&"call.created"));
    assert!(!types(&call).contains(&"call.answered"), "{call:?}");
    assert_call_facts(&call, "web_to_sip", "alice", "1003");
    let ended = call.last().unwrap();
    assert_eq!(ended["cause"], "sip_failed", "{ended}");
    assert_eq!(ended["sip_code"], 486, "{ended}");
    assert_eq!(ended["rtm_state"], "REFUSED_BY_REMOTE", "{ended}");
    assert!(ended["talk_ms"].is_null(), "{ended}");

    // phone -> browser, answered, the browser hangs up
    let phone_1007 = phone(&rig.pbx, "1007", false).await;
    phone_1007.dial("0alice").await;
    let invitation = alice.wait_remote_invitation(T).await;
    let call_id = invitation["callId"].as_str().expect("callId").to_string();
    alice
        .request(json!({"type": "received", "callId": call_id}))
        .await;
    phone_1007.wait_for("CALL_RINGING", T).await;
    alice
        .request(json!({"type": "accept", "callId": call_id, "response": ""}))
        .await;
    phone_1007.wait_for("CALL_ESTABLISHED", T).await;
    alice
        .request(json!({"type": "peer_message", "to": "1007", "text": "{\"Cmd\":\"EndCall\"}"}))
        .await;
    phone_1007.wait_for("CALL_CLOSED", T).await;
    let call = events.call(&call_id, T).await;
    assert_eq!(
        types(&call),
        [
            "call.created",
            "call.ringing",
            "call.answered",
            "call.ended"
        ]
    );
    assert_call_facts(&call, "sip_to_web", "alice", "1007");
    let sip_call_id = call[0]["sip_call_id"]
        .as_str()
        .expect("the INVITE's Call-ID");
    assert!(!sip_call_id.is_empty());
    assert!(call.iter().all(|e| e["sip_call_id"] == sip_call_id));
    let ended = &call[3];
    assert_eq!(ended["cause"], "browser_hangup", "{ended}");
    assert_eq!(ended["sip_code"], 200, "{ended}");

    // logout
    alice.request(json!({"type": "logout"})).await;
    let logout = events.next_of("user.logout", T).await;
    assert_eq!(logout.data["web_user"], "alice");
    assert_eq!(logout.data["reason"], "logout");

    // one sequence, no gaps, every message its event's type
    let all = events.all();
    let ids: Vec<u64> = all.iter().map(|m| m.id.expect("id")).collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());
    assert!(all.iter().all(|m| m.data["type"] == m.event.as_str()));
}

#[tokio::test]
async fn the_pbx_going_down_and_back_is_published_with_the_registration() {
    let mut rig =
        support::rig::start_bridge(APPID, "options_interval = 1\nregister_expires = 10", "", 4)
            .await;
    let mut events = SseClient::open(rig.bridge.http_addr(), &[("Last-Event-ID", "0")])
        .await
        .expect("stream");
    find(&events, "pbx.up", |m| m.event == "pbx.up").await;
    find(&events, "registered", |m| {
        m.data["registration"]["state"] == "registered"
    })
    .await;
    let before = events.all().len();
    rig.pbx.stop();
    let down = events.next_of("pbx.down", T).await;
    assert_eq!(down.data["pbx"], rig.pbx.addr().to_string());
    assert!(down.data["error"].as_str().is_some_and(|e| !e.is_empty()));
    // The refresh (at 3/4 of 10 s) fails: the registration changes to failed.
    let failed = events
        .wait_until("registration failed", Duration::from_secs(40), |all| {
            all[before..]
                .iter()
                .find(|m| m.data["registration"]["state"] == "failed")
                .cloned()
        })
        .await;
    assert!(failed.data["registration"]["last_error"].is_string());
    rig.pbx.restart().await;
    let up = events.next_of("pbx.up", Duration::from_secs(30)).await;
    assert!(up.id > down.id);
    let back = events
        .wait_until("registered again", Duration::from_secs(30), |all| {
            all.iter()
                .find(|m| m.id >= up.id && m.data["registration"]["state"] == "registered")
                .cloned()
        })
        .await;
    assert!(back.id > failed.id);
    // Refreshes in between are not changes: registering appears only at start-up.
    let registering = events
        .all()
        .iter()
        .filter(|m| m.data["registration"]["state"] == "registering")
        .count();
    assert_eq!(registering, 1);
}

#[tokio::test]
async fn the_daemon_serves_the_stream_only_with_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::ports::free_port();
    let pbx_port = support::ports::free_port(); // nothing there: no PBX needed
    let log = dir.path().join("srbridge.log");
    let config = dir.path().join("c.toml");
    let text =
        ops_support::config_text(port, pbx_port, &log, 2, "admin_token = \"s3cret-token\"\n")
            .replace("appid = \"ops-test\"", &format!("appid = \"{APPID}\""));
    std::fs::write(&config, text).unwrap();
    let _daemon = ops_support::Bridge::start(&config, &log, port);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    let refused = SseClient::open(addr, &[]).await.err().expect("refused");
    assert_eq!(refused.status, 401, "{refused:?}");
    let refused = SseClient::open(addr, &[("Authorization", "Bearer wrong")])
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.status, 401, "{refused:?}");
    assert!(!refused.body.contains("s3cret"), "{refused:?}");
    let bad = SseClient::open(
        addr,
        &[
            ("Authorization", "Bearer s3cret-token"),
            ("Last-Event-ID", "yesterday"),
        ],
    )
    .await
    .err()
    .expect("bad Last-Event-ID");
    assert_eq!(bad.status, 400, "{bad:?}");
    assert!(bad.body.contains("Last-Event-ID"), "{bad:?}");

    let mut events = SseClient::open(addr, &[("Authorization", "Bearer s3cret-token")])
        .await
        .expect("with the token");
    let bob = WsClient::login(&format!("ws://{addr}/ws"), APPID, "bob").await;
    let login = events.next_of("user.login", T).await;
    assert_eq!(login.data["web_user"], "bob");
    bob.close();
    let logout = events.next_of("user.logout", T).await;
    assert_eq!(logout.data["reason"], "closed");
}

/// What the webhook receiver saw: each POST's arrival time, body, and the status it answered.
#[derive(Default)]
struct Receiver {
    fail_first: usize,
    posts: Mutex<Vec<(Instant, Value, u16)>>,
}

async fn receive(State(rx): State<Arc<Receiver>>, body: String) -> StatusCode {
    let mut posts = rx.posts.lock().unwrap();
    let status = if posts.len() < rx.fail_first {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let json = serde_json::from_str(&body).unwrap_or(Value::Null);
    posts.push((Instant::now(), json, status.as_u16()));
    status
}

async fn start_receiver(fail_first: usize) -> (SocketAddr, Arc<Receiver>) {
    let receiver = Arc::new(Receiver {
        fail_first,
        ..Receiver::default()
    });
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(Arc::clone(&receiver));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, receiver)
}

/// A bridge with no PBX behind it (logins are enough to make events) and `[events]`.
async fn bridge_with_events(events_section: &str) -> Bridge {
    let rtp = support::ports::free_port_range(4);
    let text = format!(
        "[global]\nappid = \"{APPID}\"\nsip_svr = \"127.0.0.1:{pbx}\"\nsip_local_port = 0\n\
         [sip]\nlisten_ip = \"127.0.0.1\"\noptions_interval = 0\n\
         [media]\nrtp_port_min = {rtp}\nrtp_port_max = {max}\n\
         [http]\nlisten = \"127.0.0.1:0\"\n{events_section}",
        pbx = support::ports::free_port(),
        max = rtp + 3,
    );
    let config = Config::from_toml_str(Path::new("events.toml"), &text).expect("config");
    Bridge::start(config).await.expect("bridge starts")
}

#[tokio::test]
async fn the_webhook_gets_every_event_in_order_and_retries_a_failing_receiver() {
    let (addr, receiver) = start_receiver(2).await;
    let bridge =
        bridge_with_events(&format!("[events]\nwebhook_url = \"http://{addr}/hook\"\n")).await;
    let url = format!("ws://{}/ws", bridge.http_addr());
    let alice = WsClient::login(&url, APPID, "alice").await;
    let bob = WsClient::login(&url, APPID, "bob").await;
    alice.close();
    bob.close();

    // wait until the receiver has accepted user.logout of alice
    let deadline = Instant::now() + Duration::from_secs(30);
    let delivered: Vec<Value> = loop {
        let delivered: Vec<Value> = receiver
            .posts
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, status)| *status == 200)
            .flat_map(|(_, body, _)| body["events"].as_array().cloned().unwrap_or_default())
            .collect();
        if delivered
            .iter()
            .any(|e| e["type"] == "user.logout" && e["web_user"] == "alice")
        {
            break delivered;
        }
        assert!(Instant::now() < deadline, "not delivered: {delivered:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let posts: Vec<(Instant, Value, u16)> = receiver.posts.lock().unwrap().clone();
    assert_eq!(posts[0].2, 503);
    assert_eq!(posts[1].2, 503);
    assert_eq!(posts[2].2, 200);
    // The failed batch is retried first (with what came since behind it), after a back-off
    // that doubles.
    let batch = |i: usize| posts[i].1["events"].as_array().cloned().unwrap_or_default();
    for retry in [1, 2] {
        assert!(
            batch(retry).starts_with(&batch(0)),
            "{:?} then {:?}",
            batch(0),
            batch(retry)
        );
    }
    let first_wait = posts[1].0 - posts[0].0;
    let second_wait = posts[2].0 - posts[1].0;
    assert!(first_wait >= Duration::from_millis(450), "{first_wait:?}");
    assert!(second_wait >= Duration::from_millis(950), "{second_wait:?}");
    for (_, body, _) in &posts {
        assert_eq!(body["version"], 1);
        assert_eq!(body["dropped"], 0);
    }
    // every event once, in order, none missing
    let ids: Vec<u64> = delivered
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());
    let logins: Vec<&str> = delivered
        .iter()
        .filter(|e| e["type"] == "user.login")
        .map(|e| e["web_user"].as_str().unwrap())
        .collect();
    assert_eq!(logins, ["alice", "bob"]);
    bridge.shutdown().await;
}

#[tokio::test]
async fn a_dead_webhook_never_holds_up_the_bridge() {
    // Nothing listens at the webhook's port: every POST fails, the bridge goes on.
    let dead = support::ports::free_port();
    let bridge = bridge_with_events(&format!(
        "[events]\nwebhook_url = \"http://127.0.0.1:{dead}/hook\"\n"
    ))
    .await;
    let mut events = SseClient::open(bridge.http_addr(), &[])
        .await
        .expect("stream");
    let url = format!("ws://{}/ws", bridge.http_addr());
    for i in 0..20 {
        let uid = format!("u{i}");
        let started = Instant::now();
        let user = WsClient::login(&url, APPID, &uid).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "login {i} held up"
        );
        user.close();
        let login = events.next_of("user.login", T).await;
        assert_eq!(login.data["web_user"], uid.as_str());
    }
    bridge.shutdown().await;
}
