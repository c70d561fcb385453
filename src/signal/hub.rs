//! The tokio/axum shell around [`HubCore`]: WebSocket sessions, the clock, the bridge channel.
//!
//! One task per WebSocket reads frames into the core and writes what the core queued for it. The
//! core sits behind a `std` mutex that is never held across an `.await`; each session has a
//! bounded outbox, and a session that cannot keep up is closed instead of slowing the others.
//! Events for the bridge are queued under the same lock, so the call layer sees them in exactly
//! the order the core produced them (a logout never overtakes the next login's invitation), and
//! one forwarder task hands them to the bridge channel without ever dropping one.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::core::{
    BridgeEvent, DeliveryError, HubCore, HubSettings, Now, Output, SessionId, MAX_FRAME,
};
use super::origin::origin_allowed;
use super::protocol::{
    count_error, ErrorCode, FailureReason, LocalInvitationState, RemoteFailureReason, ServerMsg,
};
use crate::events::{Event, EventBus};
use crate::ops::auth_log::{log_auth_failure, AuthFailure};
use crate::ops::metrics::Metrics;

/// The JS client library browsers import from `/sdk/rtm-client.js`.
pub const RTM_CLIENT_JS: &str = include_str!("../../web-demo/rtm-client.js");

/// Frames queued per session before it counts as too slow and is closed.
const OUTBOX_CAPACITY: usize = 256;
/// Frames beyond this close the connection at the WebSocket layer (smaller ones, down to
/// `MAX_FRAME`, get an error): a stranger cannot make the hub buffer more per socket.
const HARD_FRAME_LIMIT: usize = 2 * MAX_FRAME;
/// WebSocket read buffer. tungstenite's default (128 KiB, allocated at upgrade) made each idle
/// unauthenticated socket cost ~115 KB; larger frames still arrive, the buffer grows for them.
const READ_BUFFER: usize = 4 * 1024;
/// Bytes a session may have waiting in its socket's write buffer before sends fail.
const MAX_WRITE_BUFFER: usize = 512 * 1024;
/// Bound on the goodbye (`Close` frame) to a peer that does not read.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// A peer that does not take a frame within this time is dropped (its TCP window stays full).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the invitation timers are checked.
const TICK: Duration = Duration::from_secs(1);

enum Outbound {
    Text(String),
    Close,
}

struct Shared {
    core: HubCore,
    outboxes: HashMap<SessionId, mpsc::Sender<Outbound>>,
    /// Where each session connects from (for the auth-failure log line).
    peers: HashMap<SessionId, IpAddr>,
}

struct Inner {
    shared: Mutex<Shared>,
    bridge: mpsc::Sender<BridgeEvent>,
    queue: mpsc::UnboundedSender<BridgeEvent>,
    queue_rx: Mutex<Option<mpsc::UnboundedReceiver<BridgeEvent>>>,
    next_sid: AtomicU64,
    started: AtomicBool,
    /// Where logins and logouts are published, once the bridge says so.
    events: OnceLock<EventBus>,
    /// Where logins and logouts also go, in order and never dropped (the cluster's presence).
    logins: OnceLock<mpsc::UnboundedSender<Event>>,
    /// Where sessions and error answers are counted.
    metrics: Arc<Metrics>,
}

/// The signalling hub; a cheap `Clone` handle shared by the HTTP server and the call layer.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

fn now() -> Now {
    Now {
        mono: Instant::now(),
        unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }
}

impl Hub {
    /// A hub that hands browser events for the call layer to `bridge` and counts sessions and
    /// error answers in `metrics`.
    pub fn new(
        settings: HubSettings,
        bridge: mpsc::Sender<BridgeEvent>,
        metrics: Arc<Metrics>,
    ) -> Hub {
        let (queue, queue_rx) = mpsc::unbounded_channel();
        Hub {
            inner: Arc::new(Inner {
                shared: Mutex::new(Shared {
                    core: HubCore::new(settings),
                    outboxes: HashMap::new(),
                    peers: HashMap::new(),
                }),
                bridge,
                queue,
                queue_rx: Mutex::new(Some(queue_rx)),
                next_sid: AtomicU64::new(1),
                started: AtomicBool::new(false),
                events: OnceLock::new(),
                logins: OnceLock::new(),
                metrics,
            }),
        }
    }

    /// `GET /ws` (the WebSocket) and `GET /sdk/rtm-client.js` (the JS client), to merge into the
    /// bridge's HTTP router. Must be called inside a tokio runtime (it starts the timer and
    /// bridge-forwarding tasks).
    pub fn router(&self) -> Router {
        self.start_background();
        Router::new()
            .route("/ws", get(ws_handler))
            .route("/sdk/rtm-client.js", get(js_handler))
            .with_state(self.clone())
    }

    /// Publishes logins and logouts to `events` from now on (the first bus given stays).
    pub fn publish_events_to(&self, events: EventBus) {
        let _ = self.inner.events.set(events);
    }

    /// Also hands every login and logout (`user.login`/`user.logout`) to `logins`, in the
    /// order they happen (the first sender given stays).
    pub fn watch_logins(&self, logins: mpsc::UnboundedSender<Event>) {
        let _ = self.inner.logins.set(logins);
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock leaves consistent-enough state; keep serving.
        self.inner
            .shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn start_background(&self) {
        if self.inner.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.inner.started.store(false, Ordering::SeqCst);
            warn!("hub router built outside a tokio runtime: timers and bridge events are off");
            return;
        };
        let rx = self
            .inner
            .queue_rx
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(mut rx) = rx {
            let bridge = self.inner.bridge.clone();
            runtime.spawn(async move {
                while let Some(event) = rx.recv().await {
                    if bridge.send(event).await.is_err() {
                        warn!("bridge channel closed; event dropped");
                    }
                }
            });
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            loop {
                interval.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                Hub { inner }.apply(|core| (core.tick(now()), ()));
            }
        });
    }

    /// Runs `f` on the core and carries out its outputs, under the lock so order is kept.
    fn apply<R>(&self, f: impl FnOnce(&mut HubCore) -> (Vec<Output>, R)) -> R {
        let mut shared = self.lock();
        let (outputs, result) = f(&mut shared.core);
        self.dispatch(&mut shared, outputs);
        result
    }

    fn dispatch(&self, shared: &mut Shared, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Send(sid, msg) => {
                    self.count_sent(&msg);
                    if let Some(ip) = shared.peers.get(&sid) {
                        log_refused_login(*ip, &msg);
                    }
                    let Some(outbox) = shared.outboxes.get(&sid) else {
                        continue;
                    };
                    if outbox.try_send(Outbound::Text(msg.to_text())).is_err() {
                        warn!(session = sid, "session cannot keep up; closing it");
                        shared.outboxes.remove(&sid);
                    }
                }
                Output::Close(sid) => {
                    if let Some(outbox) = shared.outboxes.remove(&sid) {
                        let _ = outbox.try_send(Outbound::Close);
                    }
                }
                Output::Event(event) => {
                    if let Some(logins) = self.inner.logins.get() {
                        if matches!(event, Event::UserLogin { .. } | Event::UserLogout { .. }) {
                            let _ = logins.send(event.clone());
                        }
                    }
                    if let Some(events) = self.inner.events.get() {
                        events.publish(event);
                    }
                }
                Output::Bridge(event) => {
                    // Only fails once the hub is being dropped.
                    let _ = self.inner.queue.send(event);
                }
            }
        }
    }

    fn count_sent(&self, msg: &ServerMsg) {
        if let ServerMsg::Error { code, .. } = msg {
            count_error(&self.inner.metrics, *code);
        }
    }

    async fn run_session(self, mut socket: WebSocket, peer: Option<IpAddr>) {
        let sid = self.inner.next_sid.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(OUTBOX_CAPACITY);
        let opened = {
            let mut shared = self.lock();
            match shared.core.open(sid, now()) {
                Ok(()) => {
                    shared.outboxes.insert(sid, tx);
                    if let Some(ip) = peer {
                        shared.peers.insert(sid, ip);
                    }
                    Ok(())
                }
                Err(outputs) => Err(outputs),
            }
        };
        if let Err(outputs) = opened {
            info!(session = sid, "session refused: limit reached");
            for output in outputs {
                if let Output::Send(_, msg) = output {
                    self.count_sent(&msg);
                    let _ = socket.send(Message::Text(msg.to_text().into())).await;
                }
            }
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.send(Message::Close(None))).await;
            return;
        }
        self.inner.metrics.ws_sessions_total.inc();
        debug!(session = sid, "session opened");
        loop {
            tokio::select! {
                queued = rx.recv() => match queued {
                    Some(Outbound::Text(text)) => {
                        let sent = tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into())));
                        if !matches!(sent.await, Ok(Ok(()))) {
                            debug!(session = sid, "socket write failed or stalled; closing");
                            break;
                        }
                    }
                    Some(Outbound::Close) | None => {
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.send(Message::Close(None))).await;
                        break;
                    }
                },
                frame = socket.recv() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        let bridge_up = !self.inner.bridge.is_closed();
                        self.apply(|core| {
                            core.set_bridge_up(bridge_up);
                            (core.handle_text(sid, text.as_str(), now()), ())
                        });
                    }
                    Some(Ok(Message::Binary(_))) => {
                        self.apply(|core| (core.handle_binary(sid, now()), ()));
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                        // WebSocket-level keepalive counts as activity too.
                        self.apply(|core| (core.touch(sid, now()), ()));
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                },
            }
        }
        {
            let mut shared = self.lock();
            shared.outboxes.remove(&sid);
            shared.peers.remove(&sid);
            let outputs = shared.core.close(sid);
            self.dispatch(&mut shared, outputs);
        }
        debug!(session = sid, "session closed");
    }

    /// Bridge → caller: the SIP side moved `uid`'s invitation `call_id` to `state`.
    pub fn local_invitation_state(
        &self,
        uid: &str,
        call_id: &str,
        state: LocalInvitationState,
        response: Option<String>,
        reason: Option<FailureReason>,
    ) {
        self.apply(|core| {
            let out = core.local_invitation_state(uid, call_id, state, response, reason);
            (out, ())
        });
    }

    /// Bridge → callee: ring web user `to_uid` for a call from `caller` (a SIP number).
    pub fn send_remote_invitation(
        &self,
        to_uid: &str,
        call_id: &str,
        caller: &str,
        content: &str,
    ) -> Result<(), DeliveryError> {
        self.try_apply(|core| core.send_remote_invitation(to_uid, call_id, caller, content, now()))
    }

    /// Bridge → callee: the phone gave up; the browser's invitation becomes `CANCELED`.
    pub fn remote_invitation_canceled(&self, uid: &str, call_id: &str) {
        self.apply(|core| (core.remote_invitation_canceled(uid, call_id), ()));
    }

    /// Bridge → callee: the invitation failed (expired, accept failed).
    pub fn remote_invitation_failed(&self, uid: &str, call_id: &str, reason: RemoteFailureReason) {
        self.apply(|core| (core.remote_invitation_failed(uid, call_id, reason), ()));
    }

    /// Bridge → browser: a peer message from `from` (a SIP number or the bridge's uid).
    pub fn send_peer_message(
        &self,
        from: &str,
        to_uid: &str,
        text: &str,
    ) -> Result<(), DeliveryError> {
        self.try_apply(|core| core.send_peer_message(from, to_uid, text))
    }

    /// Bridge → browser: media signalling (SDP, ICE, DTMF) for a call.
    pub fn send_media(
        &self,
        uid: &str,
        call_id: &str,
        payload: Value,
    ) -> Result<(), DeliveryError> {
        self.try_apply(|core| core.send_media(uid, call_id, payload))
    }

    /// Cluster → browser: media signalling from web user `from` on another node.
    pub fn send_media_from(
        &self,
        from: &str,
        uid: &str,
        call_id: &str,
        payload: Value,
    ) -> Result<(), DeliveryError> {
        self.try_apply(|core| core.send_media_from(from, uid, call_id, payload))
    }

    fn try_apply(
        &self,
        f: impl FnOnce(&mut HubCore) -> Result<Vec<Output>, DeliveryError>,
    ) -> Result<(), DeliveryError> {
        self.apply(|core| match f(core) {
            Ok(outputs) => (outputs, Ok(())),
            Err(e) => (Vec::new(), Err(e)),
        })
    }

    /// Whether `uid` is a logged-in web user.
    pub fn is_online(&self, uid: &str) -> bool {
        self.lock().core.is_online(uid)
    }

    /// The logged-in web users.
    pub fn online_uids(&self) -> Vec<String> {
        self.lock().core.online_uids()
    }

    /// Users logged in to the cluster's other bridges (online to queries and subscriptions).
    pub fn set_remote_online(&self, uids: HashSet<String>) {
        self.apply(|core| (core.set_remote_online(uids), ()));
    }

    /// `uid` logged in on another bridge with a newer login: the session here is closed.
    pub fn logged_in_elsewhere(&self, uid: &str) {
        self.apply(|core| (core.logged_in_elsewhere(uid), ()));
    }

    /// Open WebSocket sessions (what `max_ws_sessions` limits).
    pub fn session_count(&self) -> usize {
        self.lock().core.session_count()
    }

    /// Logged-in web users (for status and metrics).
    pub fn online_count(&self) -> usize {
        self.lock().core.online_count()
    }

    /// Invitations ringing or being set up (for status and leak checks).
    pub fn invitation_count(&self) -> usize {
        self.lock().core.invitation_count()
    }

    /// The bridge's own id on the hub (`[proxy] rtm_account`).
    pub fn bridge_uid(&self) -> String {
        self.lock().core.settings().bridge_uid.clone()
    }

    /// Drain switch: while off, new invitations from browsers get `DRAINING`.
    pub fn set_accepting(&self, on: bool) {
        self.lock().core.set_accepting(on);
    }

    /// Applies re-read settings (SIGHUP): reserved ids, timeouts, token lifetime, origins and
    /// limits apply to the next login or upgrade; sessions keep their logins.
    pub fn set_settings(&self, settings: HubSettings) {
        self.lock().core.set_settings(settings);
    }

    /// Whether a WebSocket upgrade with these `Origin`/`Host` headers may proceed.
    fn origin_allowed(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        origin_allowed(origin, host, &self.lock().core.settings().allowed_origins)
    }
}

async fn ws_handler(
    State(hub): State<Hub>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    // A non-UTF-8 Origin is present but unreadable: refused like a foreign one.
    let origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if !hub.origin_allowed(origin, host) {
        info!(
            ?origin,
            "websocket refused: origin not in [http] allowed_origins"
        );
        return (
            StatusCode::FORBIDDEN,
            "this page's origin may not use the bridge ([http] allowed_origins)\n",
        )
            .into_response();
    }
    ws.max_message_size(HARD_FRAME_LIMIT)
        .max_frame_size(HARD_FRAME_LIMIT)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .on_upgrade(move |socket| hub.run_session(socket, peer))
        .into_response()
}

/// A login refused for its appid, uid or token writes the `AUTH_FAILURE` line (fail2ban).
fn log_refused_login(ip: IpAddr, msg: &ServerMsg) {
    let ServerMsg::Error { code, .. } = msg else {
        return;
    };
    let kind = match code {
        ErrorCode::WrongAppid | ErrorCode::InvalidUid | ErrorCode::ReservedUid => {
            AuthFailure::Login
        }
        ErrorCode::TokenRequired | ErrorCode::TokenInvalid | ErrorCode::TokenExpired => {
            AuthFailure::Token
        }
        _ => return,
    };
    log_auth_failure(kind, ip, &[("code", code.as_str())]);
}

async fn js_handler() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        RTM_CLIENT_JS,
    )
}
