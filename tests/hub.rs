//! The signalling hub over real WebSockets on 127.0.0.1, as browsers and the call layer use it.

#[allow(dead_code)]
#[path = "support/ports.rs"]
mod ports;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use srbridge::config::Secret;
use srbridge::ops::metrics::{ErrorKind, Limit, Metrics};
use srbridge::signal::{
    mint_token, BridgeEvent, FailureReason, Hub, HubSettings, LocalInvitationState,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const WAIT: Duration = Duration::from_secs(5);

fn settings() -> HubSettings {
    HubSettings {
        appid: "app".into(),
        token_secret: None,
        bridge_uid: "proxy".into(),
        max_sessions: 100,
        max_content: 8192,
        sip_account: None,
        sip_numbers: None,
        login_timeout: Duration::from_secs(10),
        max_token_ttl: Duration::from_secs(86_400),
        allowed_origins: Vec::new(),
    }
}

struct Served {
    secret: Option<String>,
    hub: Hub,
    bridge: mpsc::Receiver<BridgeEvent>,
    /// This hub's own registry.
    metrics: Arc<Metrics>,
    url: String,
    port: u16,
}

impl Served {
    async fn start(settings: HubSettings) -> Served {
        let (tx, bridge) = mpsc::channel(64);
        let secret = settings
            .token_secret
            .as_ref()
            .map(|s| s.expose().to_string());
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(settings, tx, Arc::clone(&metrics));
        let port = ports::free_port();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let app = hub.router();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Served {
            secret,
            hub,
            bridge,
            metrics,
            url: format!("ws://127.0.0.1:{port}/ws"),
            port,
        }
    }

    async fn user(&self, uid: &str) -> Client {
        let mut c = Client::connect(&self.url).await;
        let token = self
            .secret
            .as_ref()
            .map(|secret| mint_token(secret, uid, unix_now() + 600));
        let ok = c.login(uid, token.as_deref()).await;
        assert_eq!(ok["type"], "ok", "login of {uid}: {ok}");
        c
    }

    async fn bridge_event(&mut self) -> BridgeEvent {
        tokio::time::timeout(WAIT, self.bridge.recv())
            .await
            .expect("a bridge event in time")
            .expect("bridge channel open")
    }
}

struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    events: VecDeque<Value>,
    next_id: u64,
}

impl Client {
    async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Client {
            ws,
            events: VecDeque::new(),
            next_id: 1,
        }
    }

    async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// The next JSON frame, or `None` when the hub closed the socket.
    async fn next_frame(&mut self) -> Option<Value> {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame from the hub in time");
            match frame {
                Some(Ok(Message::Text(text))) => return Some(serde_json::from_str(&text).unwrap()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Sends a request with a fresh id; returns its `ok`/`error`, keeping events that came first.
    async fn request(&mut self, mut msg: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        msg["id"] = json!(id);
        self.send_raw(&msg.to_string()).await;
        self.answer(json!(id)).await
    }

    async fn answer(&mut self, id: Value) -> Value {
        loop {
            let frame = self.next_frame().await.expect("answer before close");
            if (frame["type"] == "ok" || frame["type"] == "error") && frame["id"] == id {
                return frame;
            }
            self.events.push_back(frame);
        }
    }

    /// The next event (not an answer) of `kind`; panics on any other event first.
    async fn event(&mut self, kind: &str) -> Value {
        let frame = match self.events.pop_front() {
            Some(f) => f,
            None => self.next_frame().await.expect("event before close"),
        };
        assert_eq!(frame["type"], kind, "expected {kind}, got {frame}");
        frame
    }

    /// Asserts nothing is queued for this client: a ping's answer is the very next frame.
    async fn assert_quiet(&mut self) {
        assert!(self.events.is_empty(), "unexpected {:?}", self.events);
        let ok = self.request(json!({"type":"ping"})).await;
        assert_eq!(ok["type"], "ok");
        assert!(self.events.is_empty(), "unexpected {:?}", self.events);
    }

    async fn login(&mut self, uid: &str, token: Option<&str>) -> Value {
        let mut msg = json!({"type":"login","v":1,"uid":uid,"appid":"app"});
        if let Some(t) = token {
            msg["token"] = json!(t);
        }
        let answer = self.request(msg).await;
        if answer["type"] == "ok" {
            let state = self.event("connection_state").await;
            assert_eq!(state["state"], "CONNECTED");
            assert_eq!(state["reason"], "LOGIN_SUCCESS");
        }
        answer
    }

    async fn invite(&mut self, call_id: &str, callee: &str) -> Value {
        self.request(
            json!({"type":"invite","callId":call_id,"callee":callee,"content":"{\"Mode\":1}"}),
        )
        .await
    }
}

fn code(answer: &Value) -> &str {
    assert_eq!(answer["type"], "error", "expected an error, got {answer}");
    assert!(
        answer["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without message: {answer}"
    );
    answer["code"].as_str().unwrap()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn login_needs_the_right_appid() {
    let s = Served::start(settings()).await;
    let mut c = Client::connect(&s.url).await;
    let answer = c
        .request(json!({"type":"login","v":1,"uid":"alice","appid":"wrong"}))
        .await;
    assert_eq!(code(&answer), "WRONG_APPID");
    let answer = c.request(json!({"type":"login","v":1,"uid":"alice"})).await;
    assert_eq!(code(&answer), "BAD_MESSAGE");
    assert!(!s.hub.is_online("alice"));
    // Same socket, right appid.
    let ok = c.login("alice", None).await;
    assert_eq!(ok, json!({"type":"ok","id":3,"v":1,"uid":"alice"}));
    assert!(s.hub.is_online("alice"));
}

#[tokio::test]
async fn login_tokens_are_checked() {
    let s = Served::start(HubSettings {
        token_secret: Some(Secret::new("operator-secret")),
        ..settings()
    })
    .await;
    let mut c = Client::connect(&s.url).await;
    assert_eq!(code(&c.login("alice", None).await), "TOKEN_REQUIRED");
    let wrong = mint_token("guess", "alice", unix_now() + 600);
    assert_eq!(code(&c.login("alice", Some(&wrong)).await), "TOKEN_INVALID");
    let bobs = mint_token("operator-secret", "bob", unix_now() + 600);
    assert_eq!(code(&c.login("alice", Some(&bobs)).await), "TOKEN_INVALID");
    let expired = mint_token("operator-secret", "alice", unix_now() - 1);
    assert_eq!(
        code(&c.login("alice", Some(&expired)).await),
        "TOKEN_EXPIRED"
    );
    let good = mint_token("operator-secret", "alice", unix_now() + 600);
    assert_eq!(c.login("alice", Some(&good)).await["type"], "ok");
    // each refusal counted once, in this hub's registry
    assert_eq!(s.metrics.errors(ErrorKind::Auth), 4);
    assert_eq!(s.metrics.ws_sessions_total.get(), 1);
}

#[tokio::test]
async fn with_tokens_second_login_replaces_the_first() {
    let mut s = Served::start(HubSettings {
        token_secret: Some(Secret::new("operator-secret")),
        ..settings()
    })
    .await;
    let mut first = s.user("alice").await;
    let mut bob = s.user("bob").await;
    let mut second = s.user("alice").await;
    let state = first.event("connection_state").await;
    assert_eq!(state["state"], "ABORTED");
    assert_eq!(state["reason"], "REMOTE_LOGIN");
    assert_eq!(first.next_frame().await, None, "replaced socket is closed");
    assert_eq!(
        s.bridge_event().await,
        BridgeEvent::SessionClosed {
            uid: "alice".into()
        }
    );
    // Messages to alice reach the new session.
    let ok = bob
        .request(json!({"type":"peer_message","to":"alice","text":"still there?"}))
        .await;
    assert_eq!(ok["hasPeerReceived"], true);
    let msg = second.event("peer_message").await;
    assert_eq!(msg["from"], "bob");
    assert_eq!(msg["text"], "still there?");
    assert_eq!(s.hub.session_count(), 2);
}

#[tokio::test]
async fn peer_messages_and_online_status() {
    let s = Served::start(settings()).await;
    let mut alice = s.user("alice").await;
    let ok = alice
        .request(json!({"type":"subscribe_online","uids":["bob"]}))
        .await;
    assert_eq!(ok["type"], "ok");
    assert_eq!(
        alice.event("peers_status").await["status"],
        json!({"bob":"OFFLINE"})
    );
    let mut bob = s.user("bob").await;
    assert_eq!(
        alice.event("peers_status").await["status"],
        json!({"bob":"ONLINE"})
    );
    let online = alice
        .request(json!({"type":"query_online","uids":["bob","carol","proxy"]}))
        .await;
    assert_eq!(
        online["online"],
        json!({"bob":true,"carol":false,"proxy":true})
    );
    let ok = alice
        .request(json!({"type":"peer_message","to":"bob","text":"hi bob"}))
        .await;
    assert_eq!(ok["hasPeerReceived"], true);
    let msg = bob.event("peer_message").await;
    assert_eq!(
        (msg["from"].as_str(), msg["text"].as_str()),
        (Some("alice"), Some("hi bob"))
    );
    drop(bob);
    assert_eq!(
        alice.event("peers_status").await["status"],
        json!({"bob":"OFFLINE"})
    );
    let ok = alice
        .request(json!({"type":"unsubscribe_online","uids":["bob"]}))
        .await;
    assert_eq!(ok["type"], "ok");
    let _bob = s.user("bob").await;
    alice.assert_quiet().await;
}

/// alice rings bob; bob's client confirms (as the JS client does).
async fn ringing(s: &Served, call_id: &str) -> (Client, Client) {
    let mut alice = s.user("alice").await;
    let mut bob = s.user("bob").await;
    assert_eq!(alice.invite(call_id, "bob").await["type"], "ok");
    let inv = bob.event("remote_invitation").await;
    assert_eq!(inv["callId"], call_id);
    assert_eq!(inv["caller"], "alice");
    assert_eq!(inv["content"], "{\"Mode\":1}");
    let ok = bob
        .request(json!({"type":"received","callId":call_id}))
        .await;
    assert_eq!(ok["type"], "ok");
    let state = alice.event("local_invitation_state").await;
    assert_eq!(state["state"], "RECEIVED_BY_REMOTE");
    (alice, bob)
}

#[tokio::test]
async fn web_call_accepted_and_accepted_again() {
    let s = Served::start(settings()).await;
    let (mut alice, mut bob) = ringing(&s, "call-1").await;
    let ok = bob
        .request(json!({"type":"accept","callId":"call-1","response":"{\"ok\":1}"}))
        .await;
    assert_eq!(ok["type"], "ok");
    let state = alice.event("local_invitation_state").await;
    assert_eq!(state["state"], "ACCEPTED_BY_REMOTE");
    assert_eq!(state["response"], "{\"ok\":1}");
    let again = bob
        .request(json!({"type":"accept","callId":"call-1"}))
        .await;
    assert_eq!(code(&again), "INVITATION_ENDED");
    alice.assert_quiet().await;
    // The call's media channel works both ways.
    alice
        .request(json!({"type":"media","callId":"call-1","payload":{"sdp":"offer"}}))
        .await;
    let media = bob.event("media").await;
    assert_eq!(media["payload"], json!({"sdp":"offer"}));
    assert_eq!(media["from"], "alice");
}

#[tokio::test]
async fn web_call_refused() {
    let s = Served::start(settings()).await;
    let (mut alice, mut bob) = ringing(&s, "call-2").await;
    let ok = bob
        .request(json!({"type":"refuse","callId":"call-2","response":"busy"}))
        .await;
    assert_eq!(ok["type"], "ok");
    let state = alice.event("local_invitation_state").await;
    assert_eq!(state["state"], "REFUSED_BY_REMOTE");
    assert_eq!(state["response"], "busy");
}

#[tokio::test]
async fn web_call_canceled_then_accept_fails() {
    let s = Served::start(settings()).await;
    let (mut alice, mut bob) = ringing(&s, "call-3").await;
    let ok = alice
        .request(json!({"type":"cancel","callId":"call-3"}))
        .await;
    assert_eq!(ok["type"], "ok");
    assert_eq!(
        alice.event("local_invitation_state").await["state"],
        "CANCELED"
    );
    let state = bob.event("remote_invitation_state").await;
    assert_eq!(state["state"], "CANCELED");
    let late = bob
        .request(json!({"type":"accept","callId":"call-3"}))
        .await;
    assert_eq!(code(&late), "INVITATION_ENDED");
    assert!(late["message"].as_str().unwrap().contains("cancelled"));
    alice.assert_quiet().await;
}

#[tokio::test]
async fn both_users_ring_each_other() {
    let s = Served::start(settings()).await;
    let (mut alice, mut bob) = ringing(&s, "a-to-b").await;
    assert_eq!(bob.invite("b-to-a", "alice").await["type"], "ok");
    let inv = alice.event("remote_invitation").await;
    assert_eq!(inv["caller"], "bob");
    let ok = alice
        .request(json!({"type":"accept","callId":"b-to-a"}))
        .await;
    assert_eq!(ok["type"], "ok");
    assert_eq!(
        bob.event("local_invitation_state").await["state"],
        "RECEIVED_BY_REMOTE"
    );
    assert_eq!(
        bob.event("local_invitation_state").await["state"],
        "ACCEPTED_BY_REMOTE"
    );
}

#[tokio::test]
async fn invitation_to_self_is_refused() {
    let s = Served::start(settings()).await;
    let mut alice = s.user("alice").await;
    assert_eq!(
        code(&alice.invite("self", "alice").await),
        "INVALID_ARGUMENT"
    );
    alice.assert_quiet().await;
}

#[tokio::test]
async fn bad_frames_get_errors_and_nobody_is_hurt() {
    let s = Served::start(settings()).await;
    let mut alice = s.user("alice").await;
    let mut bob = s.user("bob").await;

    alice.send_raw("{not json").await;
    assert_eq!(code(&alice.answer(Value::Null).await), "BAD_JSON");
    let unknown = alice.request(json!({"type":"teleport"})).await;
    assert_eq!(code(&unknown), "UNKNOWN_TYPE");
    let big = alice
        .request(json!({"type":"invite","callId":"big","callee":"bob","content":"x".repeat(8 * 1024 + 1)}))
        .await;
    assert_eq!(code(&big), "CONTENT_TOO_LARGE");
    alice
        .send_raw(&format!(
            "{{\"type\":\"ping\",\"pad\":\"{}\"}}",
            "y".repeat(70_000)
        ))
        .await;
    assert_eq!(code(&alice.answer(Value::Null).await), "FRAME_TOO_LARGE");
    alice.ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(code(&alice.answer(Value::Null).await), "BINARY_FRAME");

    // alice is still logged in, bob saw none of it and still gets messages.
    bob.assert_quiet().await;
    let ok = alice
        .request(json!({"type":"peer_message","to":"bob","text":"after all that"}))
        .await;
    assert_eq!(ok["hasPeerReceived"], true);
    assert_eq!(bob.event("peer_message").await["text"], "after all that");
    assert!(s.hub.is_online("alice"));
    // bad JSON, unknown type, binary frame; content and frame too large
    assert_eq!(s.metrics.errors(ErrorKind::Json), 3);
    assert_eq!(s.metrics.errors(ErrorKind::Oversize), 2);
    assert_eq!(s.metrics.errors(ErrorKind::Auth), 0);
}

#[tokio::test]
async fn session_limit_refuses_the_extra_socket() {
    let s = Served::start(HubSettings {
        max_sessions: 2,
        ..settings()
    })
    .await;
    let mut alice = s.user("alice").await;
    let mut bob = s.user("bob").await;
    let mut third = Client::connect(&s.url).await;
    let refused = third.next_frame().await.expect("an error frame");
    assert_eq!(code(&refused), "SESSION_LIMIT");
    assert_eq!(third.next_frame().await, None);
    assert_eq!(s.hub.session_count(), 2);
    let ok = alice
        .request(json!({"type":"peer_message","to":"bob","text":"fine"}))
        .await;
    assert_eq!(ok["type"], "ok");
    assert_eq!(bob.event("peer_message").await["text"], "fine");
    assert_eq!(s.metrics.limits_hit(Limit::MaxWsSessions), 1);
    assert_eq!(
        s.metrics.ws_sessions_total.get(),
        2,
        "the refused socket is not counted"
    );
}

#[tokio::test]
async fn calls_to_sip_numbers_go_through_the_bridge() {
    let mut s = Served::start(settings()).await;
    let mut alice = s.user("alice").await;
    let mut bob = s.user("bob").await;
    assert_eq!(alice.invite("sip-1", "1005").await["type"], "ok");
    assert_eq!(
        s.bridge_event().await,
        BridgeEvent::Invite {
            call_id: "sip-1".into(),
            from_uid: "alice".into(),
            callee: "1005".into(),
            content: "{\"Mode\":1}".into()
        }
    );
    // A state for alice's call sent "to bob" goes nowhere; to alice it arrives.
    s.hub.local_invitation_state(
        "bob",
        "sip-1",
        LocalInvitationState::ReceivedByRemote,
        None,
        None,
    );
    s.hub.local_invitation_state(
        "alice",
        "sip-1",
        LocalInvitationState::ReceivedByRemote,
        None,
        None,
    );
    assert_eq!(
        alice.event("local_invitation_state").await["state"],
        "RECEIVED_BY_REMOTE"
    );
    s.hub.local_invitation_state(
        "alice",
        "sip-1",
        LocalInvitationState::AcceptedByRemote,
        Some("{\"SipNumber\":\"1005\"}".into()),
        None,
    );
    let state = alice.event("local_invitation_state").await;
    assert_eq!(state["state"], "ACCEPTED_BY_REMOTE");
    assert_eq!(state["response"], "{\"SipNumber\":\"1005\"}");
    bob.assert_quiet().await;

    // Media and hang-up go to the bridge; the bridge's answers come back.
    alice
        .request(json!({"type":"media","callId":"sip-1","payload":{"sdp":"offer"}}))
        .await;
    assert_eq!(
        s.bridge_event().await,
        BridgeEvent::Media {
            call_id: "sip-1".into(),
            from_uid: "alice".into(),
            payload: json!({"sdp":"offer"})
        }
    );
    s.hub
        .send_media("alice", "sip-1", json!({"sdp":"answer"}))
        .unwrap();
    let media = alice.event("media").await;
    assert_eq!(media["from"], "proxy");
    assert_eq!(media["payload"], json!({"sdp":"answer"}));
    alice
        .request(json!({"type":"peer_message","to":"1005","text":"{\"Cmd\":\"EndCall\"}"}))
        .await;
    assert_eq!(
        s.bridge_event().await,
        BridgeEvent::PeerMessage {
            from_uid: "alice".into(),
            to: "1005".into(),
            text: "{\"Cmd\":\"EndCall\"}".into()
        }
    );

    // A failing SIP call.
    alice.invite("sip-2", "1099").await;
    s.bridge_event().await;
    s.hub.local_invitation_state(
        "alice",
        "sip-2",
        LocalInvitationState::Failure,
        None,
        Some(FailureReason::PeerOffline),
    );
    let state = alice.event("local_invitation_state").await;
    assert_eq!(
        (state["state"].as_str(), state["reason"].as_str()),
        (Some("FAILURE"), Some("PEER_OFFLINE"))
    );

    // Closing the socket tells the bridge.
    drop(alice);
    assert_eq!(
        s.bridge_event().await,
        BridgeEvent::SessionClosed {
            uid: "alice".into()
        }
    );
}

#[tokio::test]
async fn sip_phone_rings_a_browser_through_the_bridge() {
    let mut s = Served::start(settings()).await;
    let mut alice = s.user("alice").await;
    assert!(s
        .hub
        .send_remote_invitation("nobody", "in-1", "1000", "{}")
        .is_err());
    s.hub
        .send_remote_invitation("alice", "in-1", "1000", "{\"Mode\":1}")
        .unwrap();
    let inv = alice.event("remote_invitation").await;
    assert_eq!(
        (inv["caller"].as_str(), inv["callId"].as_str()),
        (Some("1000"), Some("in-1"))
    );
    alice
        .request(json!({"type":"received","callId":"in-1"}))
        .await;
    assert_eq!(
        s.bridge_event().await,
        BridgeEvent::InvitationReceived {
            call_id: "in-1".into(),
            uid: "alice".into()
        }
    );
    alice
        .request(json!({"type":"accept","callId":"in-1","response":"ok"}))
        .await;
    assert_eq!(
        s.bridge_event().await,
        BridgeEvent::Accepted {
            call_id: "in-1".into(),
            uid: "alice".into(),
            response: "ok".into()
        }
    );
    s.hub
        .send_peer_message("1000", "alice", "{\"Cmd\":\"EndCall\"}")
        .unwrap();
    let msg = alice.event("peer_message").await;
    assert_eq!(msg["from"], "1000");

    // A second call, cancelled by the phone: accept afterwards is an error.
    s.hub
        .send_remote_invitation("alice", "in-2", "1000", "{}")
        .unwrap();
    alice.event("remote_invitation").await;
    s.hub.remote_invitation_canceled("alice", "in-2");
    assert_eq!(
        alice.event("remote_invitation_state").await["state"],
        "CANCELED"
    );
    let late = alice
        .request(json!({"type":"accept","callId":"in-2"}))
        .await;
    assert_eq!(code(&late), "INVITATION_ENDED");
}

#[tokio::test]
async fn draining_refuses_new_calls() {
    let s = Served::start(settings()).await;
    let mut alice = s.user("alice").await;
    s.hub.set_accepting(false);
    assert_eq!(code(&alice.invite("d-1", "1005").await), "DRAINING");
    s.hub.set_accepting(true);
    assert_eq!(alice.invite("d-2", "1005").await["type"], "ok");
}

#[tokio::test]
async fn the_js_client_is_served() {
    let s = Served::start(settings()).await;
    let mut tcp = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
    tcp.write_all(
        b"GET /sdk/rtm-client.js HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut body = String::new();
    tcp.read_to_string(&mut body).await.unwrap();
    assert!(
        body.starts_with("HTTP/1.1 200"),
        "{}",
        &body[..80.min(body.len())]
    );
    assert!(body.contains("content-type: text/javascript"));
    assert!(body.contains("export function createInstance"));
}

#[tokio::test]
async fn nothing_works_before_login() {
    let s = Served::start(settings()).await;
    let mut c = Client::connect(&s.url).await;
    let answer = c.invite("early", "1005").await;
    assert_eq!(code(&answer), "NOT_LOGGED_IN");
    let answer = c
        .request(json!({"type":"peer_message","to":"bob","text":"hi"}))
        .await;
    assert_eq!(code(&answer), "NOT_LOGGED_IN");
    assert_eq!(c.login("alice", None).await["type"], "ok");
    assert_eq!(c.invite("later", "1005").await["type"], "ok");
}
