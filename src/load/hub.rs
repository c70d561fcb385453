//! One browser's session on the bridge's hub (`docs/protocol.md`): connect, log in, then send
//! requests and read events in arrival order. A writer task keeps the socket alive with `ping`.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// The hub closes sockets idle for 75 s; the JS client pings every 25 s.
const PING_EVERY: Duration = Duration::from_secs(25);

/// A logged-in hub session.
pub struct HubSession {
    out: mpsc::UnboundedSender<Message>,
    frames: mpsc::UnboundedReceiver<Value>,
    next_id: u64,
}

impl HubSession {
    /// Connects to `url` and logs in as `uid`; fails unless the hub answers `ok` within `timeout`.
    pub async fn login(
        url: &str,
        appid: &str,
        uid: &str,
        token: Option<String>,
        timeout: Duration,
    ) -> anyhow::Result<HubSession> {
        // Nagle off: the tool must not add its own 40 ms to the setup times it measures.
        let (stream, _) = tokio::time::timeout(
            timeout,
            tokio_tungstenite::connect_async_with_config(url, None, true),
        )
        .await
        .map_err(|_| anyhow!("connect {url}: timed out"))?
        .with_context(|| format!("connect {url}"))?;
        let (mut sink, mut source) = stream.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            let mut ping =
                tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
            loop {
                let message = tokio::select! {
                    m = out_rx.recv() => match m {
                        Some(m) => m,
                        None => break,
                    },
                    _ = ping.tick() => Message::Text(json!({"type": "ping"}).to_string().into()),
                };
                let closing = matches!(message, Message::Close(_));
                if sink.send(message).await.is_err() || closing {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let (frames_tx, frames) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(message)) = source.next().await {
                if let Message::Text(text) = message {
                    if let Ok(value) = serde_json::from_str::<Value>(text.as_str()) {
                        if frames_tx.send(value).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let mut session = HubSession {
            out,
            frames,
            next_id: 1,
        };
        let mut login = json!({"type": "login", "v": 1, "uid": uid, "appid": appid});
        if let Some(token) = token {
            login["token"] = json!(token);
        }
        let id = session.send(login);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let frame = tokio::time::timeout_at(deadline, session.next())
                .await
                .map_err(|_| anyhow!("login of {uid}: no answer"))?
                .ok_or_else(|| anyhow!("login of {uid}: socket closed"))?;
            if frame["id"] == json!(id) {
                if frame["type"] == "ok" {
                    return Ok(session);
                }
                bail!("login of {uid} refused: {frame}");
            }
        }
    }

    /// Sends a request with a fresh id; returns the id.
    pub fn send(&mut self, mut message: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        message["id"] = json!(id);
        let _ = self.out.send(Message::Text(message.to_string().into()));
        id
    }

    /// Sends a `media` message for `call_id`.
    pub fn media(&mut self, call_id: &str, payload: Value) {
        self.send(json!({"type": "media", "callId": call_id, "payload": payload}));
    }

    /// Ends an accepted call the way the JS client does: `{"Cmd":"EndCall"}` to the other party.
    pub fn end_call(&mut self, peer: &str) {
        self.send(json!({"type": "peer_message", "to": peer, "text": "{\"Cmd\":\"EndCall\"}"}));
    }

    /// The next frame from the hub; `None` once the socket is closed.
    pub async fn next(&mut self) -> Option<Value> {
        self.frames.recv().await
    }

    /// Closes the socket (like closing the tab).
    pub fn close(&self) {
        let _ = self.out.send(Message::Close(None));
    }
}
