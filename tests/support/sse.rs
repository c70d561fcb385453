//! A Server-Sent Events consumer for `GET /api/events`, as an operator's tool would read it: one
//! HTTP/1.1 request (hyper's client), the body parsed into messages as it streams in.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// One SSE message (comments are skipped).
#[derive(Debug, Clone)]
pub struct SseMessage {
    /// `id:`, when present.
    pub id: Option<u64>,
    /// `event:`.
    pub event: String,
    /// `data:` as JSON.
    pub data: Value,
}

/// The stream being read in the background; messages accumulate until it is dropped.
pub struct SseClient {
    messages: Arc<Mutex<Vec<SseMessage>>>,
    arrived: Arc<Notify>,
    cursor: usize,
    task: JoinHandle<()>,
    /// The response's `Content-Type`.
    pub content_type: String,
}

/// A refused request: status and body.
#[derive(Debug)]
pub struct Refused {
    /// HTTP status.
    pub status: u16,
    /// Body text.
    pub body: String,
}

impl SseClient {
    /// `GET /api/events` on `addr` with `headers`; `Err` with the status and body unless 200.
    pub async fn open(addr: SocketAddr, headers: &[(&str, &str)]) -> Result<SseClient, Refused> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP handshake");
        tokio::spawn(connection);
        let mut request = Request::get("/api/events").header("host", addr.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = sender
            .send_request(request.body(Empty::<Bytes>::new()).unwrap())
            .await
            .expect("response");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let mut body = response.into_body();
        if status != 200 {
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(Refused {
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        let messages = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let task = {
            let (messages, arrived) = (Arc::clone(&messages), Arc::clone(&arrived));
            tokio::spawn(async move {
                let mut buffer = String::new();
                while let Some(Ok(frame)) = body.frame().await {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    buffer.push_str(&String::from_utf8_lossy(&data));
                    while let Some(end) = buffer.find("\n\n") {
                        let block: String = buffer.drain(..end + 2).collect();
                        if let Some(message) = parse(&block) {
                            messages.lock().unwrap().push(message);
                            arrived.notify_waiters();
                        }
                    }
                }
            })
        };
        Ok(SseClient {
            messages,
            arrived,
            cursor: 0,
            task,
            content_type,
        })
    }

    /// Everything received so far.
    pub fn all(&self) -> Vec<SseMessage> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits until `ready` finds what it wants in all the messages received so far.
    pub async fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&[SseMessage]) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(found) = ready(&self.messages.lock().unwrap()) {
                return found;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "no {what} within {timeout:?}; received: {:#?}",
                    self.all().iter().map(|m| &m.data).collect::<Vec<_>>()
                );
            }
        }
    }

    /// The next message (after those already taken) of type `event`.
    pub async fn next_of(&mut self, event: &str, timeout: Duration) -> SseMessage {
        let cursor = self.cursor;
        let (index, message) = self
            .wait_until(event, timeout, |all| {
                all.iter()
                    .enumerate()
                    .skip(cursor)
                    .find(|(_, m)| m.event == event)
                    .map(|(i, m)| (i, m.clone()))
            })
            .await;
        self.cursor = index + 1;
        message
    }

    /// The events of call `call_id`, in order, once its `call.ended` has arrived.
    pub async fn call(&self, call_id: &str, timeout: Duration) -> Vec<Value> {
        self.wait_until(&format!("call.ended of {call_id}"), timeout, |all| {
            let mine: Vec<Value> = all
                .iter()
                .filter(|m| m.data["call_id"] == call_id)
                .map(|m| m.data.clone())
                .collect();
            mine.iter()
                .any(|e| e["type"] == "call.ended")
                .then_some(mine)
        })
        .await
    }
}

impl Drop for SseClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn parse(block: &str) -> Option<SseMessage> {
    let (mut id, mut event, mut data) = (None, None, Vec::new());
    for line in block.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = value.parse().ok(),
            "event" => event = Some(value.to_string()),
            "data" => data.push(value),
            _ => {} // comments (""), retry
        }
    }
    let event = event?;
    let data = serde_json::from_str(&data.join("\n")).expect("event data is JSON");
    Some(SseMessage { id, event, data })
}
