//! A browser stand-in speaking the hub's WebSocket protocol (`docs/protocol.md`, version 1).
//!
//! Every frame received is kept, so a test can wait for an event that arrived before it asked.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::Message;

/// One logged-in (or not yet logged-in) browser session.
pub struct WsClient {
    out: mpsc::UnboundedSender<Message>,
    frames: Arc<Mutex<VecDeque<Value>>>,
    all: Arc<Mutex<Vec<Value>>>,
    arrived: Arc<Notify>,
    closed: Arc<Mutex<bool>>,
    next_id: u64,
    /// The uid this client logged in with.
    pub uid: String,
}

impl WsClient {
    /// Connects to `ws://addr/ws`.
    pub async fn connect(url: &str) -> WsClient {
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        let (mut sink, mut source) = stream.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let frames = Arc::new(Mutex::new(VecDeque::new()));
        let all = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let closed = Arc::new(Mutex::new(false));
        tokio::spawn(async move {
            while let Some(msg) = out_rx.recv().await {
                if sink.send(msg).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        {
            let frames = Arc::clone(&frames);
            let all = Arc::clone(&all);
            let arrived = Arc::clone(&arrived);
            let closed = Arc::clone(&closed);
            tokio::spawn(async move {
                while let Some(Ok(msg)) = source.next().await {
                    if let Message::Text(text) = msg {
                        if let Ok(value) = serde_json::from_str::<Value>(text.as_str()) {
                            frames.lock().unwrap().push_back(value.clone());
                            all.lock().unwrap().push(value);
                            arrived.notify_waiters();
                        }
                    }
                }
                *closed.lock().unwrap() = true;
                arrived.notify_waiters();
            });
        }
        WsClient {
            out,
            frames,
            all,
            arrived,
            closed,
            next_id: 1,
            uid: String::new(),
        }
    }

    /// Connects and logs in; panics unless the login succeeds.
    pub async fn login(url: &str, appid: &str, uid: &str) -> WsClient {
        let mut client = WsClient::connect(url).await;
        let answer = client
            .request(json!({"type": "login", "v": 1, "uid": uid, "appid": appid}))
            .await;
        assert_eq!(answer["type"], "ok", "login of {uid}: {answer}");
        client.uid = uid.to_string();
        client
    }

    /// Sends a frame as is.
    pub fn send_raw(&self, text: &str) {
        let _ = self.out.send(Message::Text(text.to_string().into()));
    }

    /// Sends a request with a fresh id and waits for its `ok` or `error`.
    pub async fn request(&mut self, mut message: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        message["id"] = json!(id);
        self.send_raw(&message.to_string());
        self.wait_for(
            |v| (v["type"] == "ok" || v["type"] == "error") && v["id"] == json!(id),
            Duration::from_secs(10),
        )
        .await
    }

    /// Sends an invitation; returns the `ok`/`error` answer.
    pub async fn invite(&mut self, call_id: &str, callee: &str, content: &str) -> Value {
        self.request(
            json!({"type": "invite", "callId": call_id, "callee": callee, "content": content}),
        )
        .await
    }

    /// Takes the first frame (in arrival order) matching `pred`, waiting up to `timeout`.
    pub async fn wait_for(&self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
        match self.try_wait_for(&pred, timeout).await {
            Some(v) => v,
            None => panic!(
                "{}: no matching frame within {timeout:?}; frames so far: {:#?}",
                self.uid,
                self.all.lock().unwrap()
            ),
        }
    }

    /// Like [`WsClient::wait_for`], `None` on timeout.
    pub async fn try_wait_for(
        &self,
        pred: &impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            {
                let mut frames = self.frames.lock().unwrap();
                if let Some(pos) = frames.iter().position(&pred) {
                    return frames.remove(pos);
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            let _ = tokio::time::timeout(left, notified).await;
        }
    }

    /// Waits for `local_invitation_state` `state` of `call_id`.
    pub async fn wait_local_state(&self, call_id: &str, state: &str, timeout: Duration) -> Value {
        let call_id = call_id.to_string();
        let state = state.to_string();
        self.wait_for(
            move |v| {
                v["type"] == "local_invitation_state"
                    && v["callId"] == call_id
                    && v["state"] == state
            },
            timeout,
        )
        .await
    }

    /// Waits for a `remote_invitation`; returns it.
    pub async fn wait_remote_invitation(&self, timeout: Duration) -> Value {
        self.wait_for(|v| v["type"] == "remote_invitation", timeout)
            .await
    }

    /// Waits for `remote_invitation_state` `state` of `call_id`.
    pub async fn wait_remote_state(&self, call_id: &str, state: &str, timeout: Duration) -> Value {
        let call_id = call_id.to_string();
        let state = state.to_string();
        self.wait_for(
            move |v| {
                v["type"] == "remote_invitation_state"
                    && v["callId"] == call_id
                    && v["state"] == state
            },
            timeout,
        )
        .await
    }

    /// Waits for a peer message whose text contains `needle`.
    pub async fn wait_peer_message(&self, needle: &str, timeout: Duration) -> Value {
        let needle = needle.to_string();
        self.wait_for(
            move |v| {
                v["type"] == "peer_message"
                    && v["text"].as_str().is_some_and(|t| t.contains(&needle))
            },
            timeout,
        )
        .await
    }

    /// Every frame received so far.
    pub fn frames(&self) -> Vec<Value> {
        self.all.lock().unwrap().clone()
    }

    /// Whether the hub closed the socket.
    pub fn is_closed(&self) -> bool {
        *self.closed.lock().unwrap()
    }

    /// Closes the WebSocket (like closing the browser tab).
    pub fn close(&self) {
        let _ = self.out.send(Message::Close(None));
    }
}
