//! The hub's logic without sockets: sessions, logins, invitations and routing.
//!
//! [`HubCore`] is fed frames, closes, clock ticks and bridge calls, and returns [`Output`]s (frames
//! for sessions, sessions to close, events for the bridge). The WebSocket shell only carries them
//! out, so every rule here is tested by feeding inputs and asserting outputs.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thiserror::Error;
use tracing::debug;

use super::invitation::{Finished, Invitation};
use super::origin::AllowedOrigin;
use super::protocol::{
    parse_request, ConnectionChangeReason, ConnectionState, ErrorCode, PeerOnlineState, Request,
    RequestId, ServerMsg, PROTOCOL_VERSION,
};
use super::token::{verify_token, TokenError};
use super::uid::check_uid;
use crate::config::{AccRule, Config, Secret};
use crate::events::{Event, LogoutReason};

/// Largest text frame the hub reads; a larger one is answered with `FRAME_TOO_LARGE`.
pub const MAX_FRAME: usize = 64 * 1024;
/// Longest peer message text (RTM's limit).
pub const MAX_TEXT: usize = 32 * 1024;
/// Default longest invitation content/response (SPEC: 8 KB).
pub const DEFAULT_MAX_CONTENT: usize = 8 * 1024;
/// Most ids in one query and subscribed per session (RTM's limit).
pub const MAX_IDS: usize = 512;
/// Most pending outgoing invitations per session, so a client cannot fill the hub.
pub const MAX_PENDING_INVITATIONS: usize = 16;
/// Longest uid / call id.
pub const MAX_ID_LEN: usize = 64;
/// Web↔web: the callee must confirm an invitation within this time (RTM: 30 s).
pub const RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);
/// Web↔web: an invitation nobody acts on expires after this time (RTM: 60 s).
pub const INVITATION_TIMEOUT: Duration = Duration::from_secs(60);
/// How many ended call ids each session remembers, to explain late accepts/cancels.
pub(super) const FINISHED_MEMORY: usize = 32;
/// A socket that sends nothing (not even `ping`) for this long is taken for dead and closed,
/// which ends its calls; the JS client pings every 25 s.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// Frames a session may send in a burst before it is throttled.
pub const RATE_BURST: f64 = 200.0;
/// Frames per second a session may send on average.
pub const RATE_PER_SEC: f64 = 50.0;

/// Identifies one WebSocket connection; assigned by the shell.
pub type SessionId = u64;

/// What the hub needs from the configuration.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Browsers must present this appid (`[global] appid`).
    pub appid: String,
    /// When set, browsers must present a token minted with it (`[auth] token_secret`).
    pub token_secret: Option<Secret>,
    /// The bridge's own id on the hub (`[proxy] rtm_account`); no browser may log in with it.
    pub bridge_uid: String,
    /// Most WebSocket sessions at once (`[limits] max_ws_sessions`).
    pub max_sessions: usize,
    /// Longest invitation content/response in bytes.
    pub max_content: usize,
    /// The bridge's SIP account (`[proxy] sip_account`): not a web user's id.
    pub sip_account: Option<String>,
    /// SIP numbers browsers may call (`[rtm2sip] acc_rule`): not web users' ids.
    pub sip_numbers: Option<AccRule>,
    /// A socket that has not logged in after this long is closed.
    pub login_timeout: Duration,
    /// Tokens expiring further ahead than this are refused.
    pub max_token_ttl: Duration,
    /// Pages allowed to open the WebSocket besides the bridge's own (`[http] allowed_origins`).
    pub allowed_origins: Vec<AllowedOrigin>,
}

impl HubSettings {
    /// The bridge uid used when `[proxy]` is off.
    pub const DEFAULT_BRIDGE_UID: &'static str = "srbridge";

    /// Settings from a validated config.
    pub fn from_config(config: &Config) -> HubSettings {
        HubSettings {
            appid: config.global.appid.clone(),
            token_secret: config.auth.token_secret.clone(),
            bridge_uid: config
                .proxy
                .as_ref()
                .map_or(Self::DEFAULT_BRIDGE_UID.to_string(), |p| {
                    p.rtm_account.clone()
                }),
            max_sessions: config.limits.max_ws_sessions as usize,
            max_content: DEFAULT_MAX_CONTENT,
            sip_account: config.proxy.as_ref().map(|p| p.sip_account.clone()),
            sip_numbers: config.rtm2sip.as_ref().map(|r| r.acc_rule.clone()),
            login_timeout: config.http.login_timeout,
            max_token_ttl: config.auth.max_token_ttl,
            allowed_origins: config.http.allowed_origins.clone(),
        }
    }

    /// Whether `uid` is an id the bridge routes to SIP, or its own: no browser may take it.
    pub fn is_reserved(&self, uid: &str) -> bool {
        uid == self.bridge_uid
            || self.sip_account.as_deref() == Some(uid)
            || self
                .sip_numbers
                .as_ref()
                .is_some_and(|rule| rule.allows(uid))
    }
}

/// What a browser did that the bridge (the call layer) must handle: the call layer's
/// [`BrowserEvent`](crate::call::ports::BrowserEvent), under the hub's name.
pub use crate::call::ports::BrowserEvent as BridgeEvent;

/// Something the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send this message to that session.
    Send(SessionId, ServerMsg),
    /// Close that session's socket (after the frames already queued).
    Close(SessionId),
    /// Hand this to the bridge.
    Bridge(BridgeEvent),
    /// Publish this on the event stream (logins and logouts).
    Event(Event),
}

/// Why the bridge could not reach a browser.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DeliveryError {
    /// The user is not logged in.
    #[error("{0} is not logged in")]
    NotOnline(String),
    /// The call id is already in use by another invitation.
    #[error("call id {0} is already in use")]
    DuplicateCallId(String),
}

/// The hub's clock, passed in so the core stays testable.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// For invitation timers.
    pub mono: Instant,
    /// Unix seconds, for token expiry.
    pub unix: u64,
}

#[derive(Debug)]
pub(super) struct Session {
    pub(super) uid: Option<String>,
    pub(super) subscriptions: HashSet<String>,
    pub(super) finished: VecDeque<Finished>,
    pub(super) opened: Instant,
    pub(super) last_seen: Instant,
    pub(super) tokens: f64,
    pub(super) tokens_at: Instant,
}

impl Session {
    fn new(now: Instant) -> Session {
        Session {
            uid: None,
            subscriptions: HashSet::new(),
            finished: VecDeque::new(),
            opened: now,
            last_seen: now,
            tokens: RATE_BURST,
            tokens_at: now,
        }
    }

    /// Records a frame; false when the session exceeds its rate.
    fn admit(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.tokens_at).as_secs_f64();
        self.tokens_at = self.tokens_at.max(now);
        self.last_seen = self.last_seen.max(now);
        self.tokens = (self.tokens + elapsed * RATE_PER_SEC).min(RATE_BURST);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    pub(super) fn finished(&self, call_id: &str) -> Option<&Finished> {
        self.finished.iter().find(|f| f.call_id == call_id)
    }
}

/// The registry of sessions and invitations.
#[derive(Debug)]
pub struct HubCore {
    pub(super) settings: HubSettings,
    pub(super) accepting: bool,
    pub(super) bridge_up: bool,
    pub(super) sessions: HashMap<SessionId, Session>,
    pub(super) by_uid: HashMap<String, SessionId>,
    pub(super) watchers: HashMap<String, HashSet<SessionId>>,
    pub(super) invitations: HashMap<String, Invitation>,
    /// Users logged in to other bridges of the cluster (`[cluster]`): online for queries and
    /// subscriptions, and (without tokens) not free to log in here.
    pub(super) remote_online: HashSet<String>,
}

/// Checks a uid or call id: non-empty, at most 64 characters, no control characters.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.chars().count() <= MAX_ID_LEN && !id.chars().any(char::is_control)
}

pub(super) fn err(id: &RequestId, code: ErrorCode, message: impl Into<String>) -> ServerMsg {
    ServerMsg::error(id.clone(), code, message)
}

pub(super) fn ok_with(id: &RequestId, fields: Value) -> ServerMsg {
    let fields = match fields {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    ServerMsg::Ok {
        id: id.clone(),
        fields,
    }
}

impl HubCore {
    /// An empty hub.
    pub fn new(settings: HubSettings) -> HubCore {
        HubCore {
            settings,
            accepting: true,
            bridge_up: true,
            sessions: HashMap::new(),
            by_uid: HashMap::new(),
            watchers: HashMap::new(),
            invitations: HashMap::new(),
            remote_online: HashSet::new(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    /// Replaces the settings (config reload); they apply to the next login and tick.
    pub fn set_settings(&mut self, settings: HubSettings) {
        self.settings = settings;
    }

    /// Registers a new WebSocket; over the session limit it is answered and closed instead.
    pub fn open(&mut self, sid: SessionId, now: Now) -> Result<(), Vec<Output>> {
        if self.sessions.len() >= self.settings.max_sessions {
            let msg = ServerMsg::error(
                None,
                ErrorCode::SessionLimit,
                format!(
                    "the hub already holds its limit of {} sessions; try again later",
                    self.settings.max_sessions
                ),
            );
            return Err(vec![Output::Send(sid, msg), Output::Close(sid)]);
        }
        self.sessions.insert(sid, Session::new(now.mono));
        Ok(())
    }

    /// The WebSocket closed: forget the session and end what it was part of.
    pub fn close(&mut self, sid: SessionId) -> Vec<Output> {
        let mut out = Vec::new();
        if self.sessions.contains_key(&sid) {
            self.end_login(sid, true, LogoutReason::Closed, &mut out);
            self.sessions.remove(&sid);
        }
        out
    }

    /// `None` when the frame may be handled; otherwise what to answer instead (nothing for
    /// unknown sessions, `RATE_LIMITED` for a session over its rate).
    fn admit(&mut self, sid: SessionId, now: Now) -> Option<Vec<Output>> {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return Some(Vec::new());
        };
        if session.admit(now.mono) {
            return None;
        }
        Some(vec![Output::Send(
            sid,
            ServerMsg::error(
                None,
                ErrorCode::RateLimited,
                format!("more than {RATE_PER_SEC} frames per second; frame dropped"),
            ),
        )])
    }

    /// A WebSocket-level ping/pong arrived: the peer is alive.
    pub fn touch(&mut self, sid: SessionId, now: Now) -> Vec<Output> {
        if let Some(session) = self.sessions.get_mut(&sid) {
            session.last_seen = session.last_seen.max(now.mono);
        }
        Vec::new()
    }

    /// A binary frame arrived.
    pub fn handle_binary(&mut self, sid: SessionId, now: Now) -> Vec<Output> {
        if let Some(throttled) = self.admit(sid, now) {
            return throttled;
        }
        vec![Output::Send(
            sid,
            ServerMsg::error(
                None,
                ErrorCode::BinaryFrame,
                "binary frames are not part of the protocol; send JSON text frames",
            ),
        )]
    }

    /// A text frame arrived.
    pub fn handle_text(&mut self, sid: SessionId, text: &str, now: Now) -> Vec<Output> {
        if let Some(throttled) = self.admit(sid, now) {
            return throttled;
        }
        if text.len() > MAX_FRAME {
            let msg = ServerMsg::error(
                None,
                ErrorCode::FrameTooLarge,
                format!(
                    "frame of {} bytes exceeds the limit of {MAX_FRAME}",
                    text.len()
                ),
            );
            return vec![Output::Send(sid, msg)];
        }
        let (id, request) = match parse_request(text) {
            Ok(parsed) => parsed,
            Err(e) => return vec![Output::Send(sid, e.into_msg())],
        };
        let mut out = Vec::new();
        let uid = self.sessions.get(&sid).and_then(|s| s.uid.clone());
        match (request, uid) {
            (
                Request::Login {
                    v,
                    uid: new_uid,
                    appid,
                    token,
                },
                None,
            ) => self.login(
                sid,
                &id,
                v,
                new_uid,
                &appid,
                token.as_deref(),
                now,
                &mut out,
            ),
            (Request::Login { .. }, Some(uid)) => out.push(Output::Send(
                sid,
                err(
                    &id,
                    ErrorCode::AlreadyLoggedIn,
                    format!("this session is already logged in as {uid}; log out first"),
                ),
            )),
            (Request::Ping, _) => out.push(Output::Send(sid, ServerMsg::ok(id))),
            (_, None) => out.push(Output::Send(
                sid,
                err(&id, ErrorCode::NotLoggedIn, "log in first"),
            )),
            (request, Some(uid)) => self.logged_in_request(sid, &uid, &id, request, now, &mut out),
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn login(
        &mut self,
        sid: SessionId,
        id: &RequestId,
        v: Option<u64>,
        uid: String,
        appid: &str,
        token: Option<&str>,
        now: Now,
        out: &mut Vec<Output>,
    ) {
        let fail = |code, message: String| Output::Send(sid, err(id, code, message));
        if let Some(v) = v.filter(|&v| v != u64::from(PROTOCOL_VERSION)) {
            out.push(fail(
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {v} is not supported; this hub speaks v{PROTOCOL_VERSION}"
                ),
            ));
            return;
        }
        if appid != self.settings.appid {
            out.push(fail(
                ErrorCode::WrongAppid,
                "appid does not match this bridge's appid".to_string(),
            ));
            return;
        }
        if let Err(e) = check_uid(&uid) {
            out.push(fail(ErrorCode::InvalidUid, e.to_string()));
            return;
        }
        if self.settings.is_reserved(&uid) {
            out.push(fail(
                ErrorCode::ReservedUid,
                format!("uid {uid} is a SIP number or the bridge's own id; choose another"),
            ));
            return;
        }
        if let Some(secret) = &self.settings.token_secret {
            let Some(token) = token else {
                out.push(fail(
                    ErrorCode::TokenRequired,
                    "this bridge requires a login token".to_string(),
                ));
                return;
            };
            let max_ttl = self.settings.max_token_ttl.as_secs();
            match verify_token(secret.expose(), &uid, token, now.unix, max_ttl) {
                Ok(()) => {}
                Err(e @ TokenError::TooLong { .. }) => {
                    out.push(fail(ErrorCode::TokenInvalid, e.to_string()));
                    return;
                }
                Err(TokenError::Invalid) => {
                    out.push(fail(
                        ErrorCode::TokenInvalid,
                        "token is not valid for this uid".to_string(),
                    ));
                    return;
                }
                Err(e @ TokenError::Expired { .. }) => {
                    out.push(fail(ErrorCode::TokenExpired, e.to_string()));
                    return;
                }
            }
        }
        let replaced = self.by_uid.get(&uid).copied();
        let elsewhere = self.remote_online.contains(&uid);
        if replaced.is_none() && elsewhere && self.settings.token_secret.is_none() {
            // The cluster's rule is the hub's: without tokens the first login keeps the uid.
            out.push(fail(
                ErrorCode::UidInUse,
                format!("{uid} is already logged in on another bridge; log out there first"),
            ));
            return;
        }
        if replaced.is_some() && self.settings.token_secret.is_none() {
            // Without tokens nothing proves this is the same person: keep the first session.
            out.push(fail(
                ErrorCode::UidInUse,
                format!("{uid} is already logged in; log out there first"),
            ));
            return;
        }
        if let Some(old) = replaced {
            debug!(uid = %uid, "login replaces an existing session");
            out.push(Output::Send(
                old,
                ServerMsg::ConnectionState {
                    state: ConnectionState::Aborted,
                    reason: ConnectionChangeReason::RemoteLogin,
                },
            ));
            self.end_login(old, false, LogoutReason::Replaced, out);
            self.sessions.remove(&old);
            out.push(Output::Close(old));
        }
        if let Some(session) = self.sessions.get_mut(&sid) {
            session.uid = Some(uid.clone());
        }
        self.by_uid.insert(uid.clone(), sid);
        out.push(Output::Event(Event::UserLogin {
            web_user: uid.clone(),
        }));
        out.push(Output::Send(
            sid,
            ok_with(id, json!({"v": PROTOCOL_VERSION, "uid": uid})),
        ));
        out.push(Output::Send(
            sid,
            ServerMsg::ConnectionState {
                state: ConnectionState::Connected,
                reason: ConnectionChangeReason::LoginSuccess,
            },
        ));
        if replaced.is_none() && !elsewhere {
            self.notify_watchers(&uid, PeerOnlineState::Online, out);
        }
    }

    /// Ends the session's login: its invitations end, watchers and the bridge are told.
    fn end_login(
        &mut self,
        sid: SessionId,
        notify_offline: bool,
        reason: LogoutReason,
        out: &mut Vec<Output>,
    ) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let Some(uid) = session.uid.take() else {
            return;
        };
        session.finished.clear();
        let subscriptions: Vec<String> = session.subscriptions.drain().collect();
        for watched in subscriptions {
            self.unwatch(&watched, sid);
        }
        if self.by_uid.get(&uid) == Some(&sid) {
            self.by_uid.remove(&uid);
        }
        self.end_invitations_of(sid, out);
        if notify_offline {
            self.notify_watchers(&uid, PeerOnlineState::Offline, out);
        }
        out.push(Output::Event(Event::UserLogout {
            web_user: uid.clone(),
            reason,
        }));
        out.push(Output::Bridge(BridgeEvent::SessionClosed { uid }));
    }

    fn unwatch(&mut self, watched: &str, sid: SessionId) {
        if let Some(set) = self.watchers.get_mut(watched) {
            set.remove(&sid);
            if set.is_empty() {
                self.watchers.remove(watched);
            }
        }
    }

    fn notify_watchers(&self, uid: &str, state: PeerOnlineState, out: &mut Vec<Output>) {
        let Some(set) = self.watchers.get(uid) else {
            return;
        };
        let mut sids: Vec<SessionId> = set.iter().copied().collect();
        sids.sort_unstable();
        for watcher in sids {
            out.push(Output::Send(
                watcher,
                ServerMsg::PeersStatus {
                    status: BTreeMap::from([(uid.to_string(), state)]),
                },
            ));
        }
    }

    /// Whether this uid is a logged-in web user.
    pub(super) fn web_sid(&self, uid: &str) -> Option<SessionId> {
        self.by_uid.get(uid).copied()
    }

    fn logged_in_request(
        &mut self,
        sid: SessionId,
        uid: &str,
        id: &RequestId,
        request: Request,
        now: Now,
        out: &mut Vec<Output>,
    ) {
        let reply = |msg| Output::Send(sid, msg);
        match request {
            Request::Login { .. } | Request::Ping => {}
            Request::Logout => {
                self.end_login(sid, true, LogoutReason::Logout, out);
                out.push(reply(ServerMsg::ok(id.clone())));
                out.push(reply(ServerMsg::ConnectionState {
                    state: ConnectionState::Disconnected,
                    reason: ConnectionChangeReason::Logout,
                }));
            }
            Request::PeerMessage { to, text } => {
                if !valid_id(&to) {
                    out.push(reply(err(
                        id,
                        ErrorCode::InvalidArgument,
                        "peer id must be 1-64 characters without control characters",
                    )));
                } else if text.len() > MAX_TEXT {
                    out.push(reply(err(
                        id,
                        ErrorCode::TextTooLarge,
                        format!(
                            "message of {} bytes exceeds the limit of {MAX_TEXT}",
                            text.len()
                        ),
                    )));
                } else {
                    match self.web_sid(&to) {
                        Some(peer) => out.push(Output::Send(
                            peer,
                            ServerMsg::PeerMessage {
                                from: uid.to_string(),
                                text,
                            },
                        )),
                        None => out.push(Output::Bridge(BridgeEvent::PeerMessage {
                            from_uid: uid.to_string(),
                            to,
                            text,
                        })),
                    }
                    out.push(reply(ok_with(id, json!({"hasPeerReceived": true}))));
                }
            }
            Request::QueryOnline { uids } => {
                if uids.len() > MAX_IDS {
                    out.push(reply(err(
                        id,
                        ErrorCode::TooManyIds,
                        format!("at most {MAX_IDS} ids per query"),
                    )));
                    return;
                }
                let online: serde_json::Map<String, Value> = uids
                    .into_iter()
                    .map(|u| {
                        let on = self.by_uid.contains_key(&u)
                            || self.remote_online.contains(&u)
                            || u == self.settings.bridge_uid;
                        (u, Value::Bool(on))
                    })
                    .collect();
                out.push(reply(ok_with(id, json!({ "online": online }))));
            }
            Request::SubscribeOnline { uids } => self.subscribe(sid, id, uids, out),
            Request::UnsubscribeOnline { uids } => {
                for u in &uids {
                    if let Some(session) = self.sessions.get_mut(&sid) {
                        session.subscriptions.remove(u);
                    }
                    self.unwatch(u, sid);
                }
                out.push(reply(ServerMsg::ok(id.clone())));
            }
            Request::Invite {
                call_id,
                callee,
                content,
            } => self.invite(sid, uid, id, call_id, callee, content, now, out),
            Request::Cancel { call_id } => self.cancel(sid, uid, id, &call_id, out),
            Request::Received { call_id } => self.received(sid, uid, id, &call_id, out),
            Request::Accept { call_id, response } => {
                self.answer(sid, uid, id, &call_id, response, true, out)
            }
            Request::Refuse { call_id, response } => {
                self.answer(sid, uid, id, &call_id, response, false, out)
            }
            Request::Media { call_id, payload } => self.media(sid, uid, id, call_id, payload, out),
        }
    }

    fn subscribe(
        &mut self,
        sid: SessionId,
        id: &RequestId,
        uids: Vec<String>,
        out: &mut Vec<Output>,
    ) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let new: HashSet<&String> = uids
            .iter()
            .filter(|u| !session.subscriptions.contains(*u))
            .collect();
        if session.subscriptions.len() + new.len() > MAX_IDS {
            out.push(Output::Send(
                sid,
                err(
                    id,
                    ErrorCode::TooManyIds,
                    format!("at most {MAX_IDS} ids may be subscribed per session"),
                ),
            ));
            return;
        }
        let mut status = BTreeMap::new();
        for u in &uids {
            session.subscriptions.insert(u.clone());
            self.watchers.entry(u.clone()).or_default().insert(sid);
            let on = self.by_uid.contains_key(u)
                || self.remote_online.contains(u)
                || *u == self.settings.bridge_uid;
            status.insert(
                u.clone(),
                if on {
                    PeerOnlineState::Online
                } else {
                    PeerOnlineState::Offline
                },
            );
        }
        out.push(Output::Send(sid, ServerMsg::ok(id.clone())));
        if !status.is_empty() {
            out.push(Output::Send(sid, ServerMsg::PeersStatus { status }));
        }
    }

    /// Applies the timers: login and idle timeouts, web↔web invitation expiry.
    pub fn tick(&mut self, now: Now) -> Vec<Output> {
        let mut out = Vec::new();
        let mut stale: Vec<(SessionId, bool)> = self
            .sessions
            .iter()
            .filter_map(|(sid, s)| {
                if s.uid.is_none()
                    && now.mono.saturating_duration_since(s.opened) >= self.settings.login_timeout
                {
                    Some((*sid, true))
                } else if now.mono.saturating_duration_since(s.last_seen) >= IDLE_TIMEOUT {
                    Some((*sid, false))
                } else {
                    None
                }
            })
            .collect();
        stale.sort_unstable();
        for (sid, never_logged_in) in stale {
            let (code, message) = if never_logged_in {
                (
                    ErrorCode::LoginTimeout,
                    format!(
                        "no login within {} s",
                        self.settings.login_timeout.as_secs()
                    ),
                )
            } else {
                (
                    ErrorCode::IdleTimeout,
                    format!(
                        "nothing received for {} s; send ping to keep the session",
                        IDLE_TIMEOUT.as_secs()
                    ),
                )
            };
            debug!(session = sid, code = %code, "session timed out");
            out.push(Output::Send(sid, ServerMsg::error(None, code, message)));
            self.end_login(sid, true, LogoutReason::Timeout, &mut out);
            self.sessions.remove(&sid);
            out.push(Output::Close(sid));
        }
        self.expire_invitations(now, &mut out);
        out
    }

    /// Bridge → browser: a peer message (e.g. `{"Cmd":"EndCall"}` from a SIP number).
    pub fn send_peer_message(
        &self,
        from: &str,
        to_uid: &str,
        text: &str,
    ) -> Result<Vec<Output>, DeliveryError> {
        let sid = self
            .web_sid(to_uid)
            .ok_or_else(|| DeliveryError::NotOnline(to_uid.to_string()))?;
        Ok(vec![Output::Send(
            sid,
            ServerMsg::PeerMessage {
                from: from.to_string(),
                text: text.to_string(),
            },
        )])
    }

    /// Bridge → browser: media signalling for a call.
    pub fn send_media(
        &self,
        uid: &str,
        call_id: &str,
        payload: Value,
    ) -> Result<Vec<Output>, DeliveryError> {
        self.send_media_from(&self.settings.bridge_uid, uid, call_id, payload)
    }

    /// Media signalling for a call from `from`: the bridge, or a web user on another cluster
    /// node (the browser sees its real peer, as on one hub).
    pub fn send_media_from(
        &self,
        from: &str,
        uid: &str,
        call_id: &str,
        payload: Value,
    ) -> Result<Vec<Output>, DeliveryError> {
        let sid = self
            .web_sid(uid)
            .ok_or_else(|| DeliveryError::NotOnline(uid.to_string()))?;
        Ok(vec![Output::Send(
            sid,
            ServerMsg::Media {
                call_id: call_id.to_string(),
                from: from.to_string(),
                payload,
            },
        )])
    }

    /// Whether `uid` is a logged-in web user.
    pub fn is_online(&self, uid: &str) -> bool {
        self.by_uid.contains_key(uid)
    }

    /// The logged-in web users (what this bridge tells the cluster).
    pub fn online_uids(&self) -> Vec<String> {
        self.by_uid.keys().cloned().collect()
    }

    /// The users logged in to other bridges of the cluster changed: subscribers of those not
    /// logged in here are told who came and went.
    pub fn set_remote_online(&mut self, uids: HashSet<String>) -> Vec<Output> {
        let mut out = Vec::new();
        let mut came: Vec<&String> = uids.difference(&self.remote_online).collect();
        let mut went: Vec<&String> = self.remote_online.difference(&uids).collect();
        came.sort();
        went.sort();
        for uid in came.into_iter().filter(|u| !self.by_uid.contains_key(*u)) {
            self.notify_watchers(uid, PeerOnlineState::Online, &mut out);
        }
        for uid in went.into_iter().filter(|u| !self.by_uid.contains_key(*u)) {
            self.notify_watchers(uid, PeerOnlineState::Offline, &mut out);
        }
        self.remote_online = uids;
        out
    }

    /// `uid` logged in again on another bridge (tokens on: the newest login wins, as here): the
    /// session here is told `ABORTED`/`REMOTE_LOGIN` and closed.
    pub fn logged_in_elsewhere(&mut self, uid: &str) -> Vec<Output> {
        let mut out = Vec::new();
        let Some(sid) = self.by_uid.get(uid).copied() else {
            return out;
        };
        debug!(uid = %uid, "login on another bridge replaces this session");
        out.push(Output::Send(
            sid,
            ServerMsg::ConnectionState {
                state: ConnectionState::Aborted,
                reason: ConnectionChangeReason::RemoteLogin,
            },
        ));
        self.end_login(sid, false, LogoutReason::Replaced, &mut out);
        self.sessions.remove(&sid);
        out.push(Output::Close(sid));
        out
    }

    /// Open WebSocket sessions (logged in or not); what `max_sessions` limits.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Logged-in web users.
    pub fn online_count(&self) -> usize {
        self.by_uid.len()
    }

    /// Invitations in progress (for status and leak checks).
    pub fn invitation_count(&self) -> usize {
        self.invitations.len()
    }

    /// Whether the bridge's call layer takes events; while down, invitations to it are refused.
    pub fn set_bridge_up(&mut self, up: bool) {
        self.bridge_up = up;
    }

    /// Drain switch: while off, new invitations from browsers are refused with `DRAINING`.
    pub fn set_accepting(&mut self, on: bool) {
        self.accepting = on;
    }
}
