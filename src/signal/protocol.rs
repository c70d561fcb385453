//! Wire types of the hub protocol (docs/protocol.md, version 1): what browsers send, what they get.
//!
//! Parsing is strict about what it needs and lenient about the rest (unknown fields ignored), so a
//! bad frame becomes one precise [`ErrorCode`] instead of a dropped session.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The protocol version this hub speaks (`"v"` in login).
pub const PROTOCOL_VERSION: u32 = 1;

macro_rules! rtm_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// The RTM web SDK's string for this value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

rtm_enum!(
    /// RTM `LocalInvitationState`: where the caller's invitation is.
    LocalInvitationState {
        /// The hub took the invitation (the `ok` answer to `invite`).
        SentToRemote => "SENT_TO_REMOTE",
        /// The callee has it (ringing).
        ReceivedByRemote => "RECEIVED_BY_REMOTE",
        /// The callee accepted.
        AcceptedByRemote => "ACCEPTED_BY_REMOTE",
        /// The callee refused.
        RefusedByRemote => "REFUSED_BY_REMOTE",
        /// The caller cancelled.
        Canceled => "CANCELED",
        /// It failed; see [`FailureReason`].
        Failure => "FAILURE",
    }
);

impl LocalInvitationState {
    /// Whether the invitation is over after this state.
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            LocalInvitationState::SentToRemote | LocalInvitationState::ReceivedByRemote
        )
    }
}

rtm_enum!(
    /// RTM `LocalInvitationFailureReason` (plus `INVALID_ARGUMENT` for numbers the bridge may not call).
    FailureReason {
        /// The callee is not reachable (SIP 404/480, web user offline).
        PeerOffline => "PEER_OFFLINE",
        /// The callee never confirmed the invitation (SIP 408, no answer in time).
        PeerNoResponse => "PEER_NO_RESPONSE",
        /// Nobody acted on the invitation in time.
        InvitationExpire => "INVITATION_EXPIRE",
        /// The caller is not logged in.
        NotLoggedIn => "NOT_LOGGEDIN",
        /// The callee or content is not acceptable (e.g. not in `acc_rule`).
        InvalidArgument => "INVALID_ARGUMENT",
        /// Anything else; the response string says more (e.g. the SIP code).
        Unknown => "UNKNOWN",
    }
);

rtm_enum!(
    /// RTM `RemoteInvitationFailureReason`: why an invitation to this user failed.
    RemoteFailureReason {
        /// This user went offline.
        PeerOffline => "PEER_OFFLINE",
        /// The accept did not go through.
        AcceptFailure => "ACCEPT_FAILURE",
        /// Nobody acted on the invitation in time.
        InvitationExpire => "INVITATION_EXPIRE",
        /// Anything else.
        Unknown => "UNKNOWN",
    }
);

rtm_enum!(
    /// RTM `RemoteInvitationState`: the states the hub reports to a callee.
    RemoteInvitationState {
        /// The caller gave up.
        Canceled => "CANCELED",
        /// It failed; see [`RemoteFailureReason`].
        Failure => "FAILURE",
    }
);

rtm_enum!(
    /// RTM `ConnectionState`.
    ConnectionState {
        /// Logged in.
        Connected => "CONNECTED",
        /// Logged out.
        Disconnected => "DISCONNECTED",
        /// Kicked out; will not reconnect by itself.
        Aborted => "ABORTED",
    }
);

rtm_enum!(
    /// RTM `ConnectionChangeReason`.
    ConnectionChangeReason {
        /// Login succeeded.
        LoginSuccess => "LOGIN_SUCCESS",
        /// The user logged out.
        Logout => "LOGOUT",
        /// The same uid logged in elsewhere.
        RemoteLogin => "REMOTE_LOGIN",
    }
);

rtm_enum!(
    /// RTM `PeerOnlineState` as reported in `peers_status`.
    PeerOnlineState {
        /// Logged in.
        Online => "ONLINE",
        /// Not logged in.
        Offline => "OFFLINE",
    }
);

rtm_enum!(
    /// Why a request failed: the `code` of an `error` message (docs/protocol.md "Error codes").
    ErrorCode {
        /// Not JSON, or not a JSON object.
        BadJson => "BAD_JSON",
        /// A field is missing or has the wrong type.
        BadMessage => "BAD_MESSAGE",
        /// `type` is not one this version knows.
        UnknownType => "UNKNOWN_TYPE",
        /// A binary WebSocket frame.
        BinaryFrame => "BINARY_FRAME",
        /// The frame exceeds the frame limit.
        FrameTooLarge => "FRAME_TOO_LARGE",
        /// `v` is not a supported protocol version.
        UnsupportedVersion => "UNSUPPORTED_VERSION",
        /// The request needs a logged-in session.
        NotLoggedIn => "NOT_LOGGED_IN",
        /// This session is already logged in.
        AlreadyLoggedIn => "ALREADY_LOGGED_IN",
        /// The appid is not this bridge's.
        WrongAppid => "WRONG_APPID",
        /// The uid breaks the uid grammar (length, characters, NFKC, controls).
        InvalidUid => "INVALID_UID",
        /// The uid is one the bridge routes to SIP (an `acc_rule` number, `sip_account`) or the
        /// bridge's own `rtm_account`: no browser may log in as it.
        ReservedUid => "RESERVED_UID",
        /// Without login tokens, a uid already logged in elsewhere cannot log in again.
        UidInUse => "UID_IN_USE",
        /// A token is required and none was given.
        TokenRequired => "TOKEN_REQUIRED",
        /// The token is malformed or does not match.
        TokenInvalid => "TOKEN_INVALID",
        /// The token has expired.
        TokenExpired => "TOKEN_EXPIRED",
        /// The hub holds as many sessions as allowed.
        SessionLimit => "SESSION_LIMIT",
        /// An argument is not acceptable (e.g. inviting yourself).
        InvalidArgument => "INVALID_ARGUMENT",
        /// Invitation content or response is too long.
        ContentTooLarge => "CONTENT_TOO_LARGE",
        /// Peer message text is too long.
        TextTooLarge => "TEXT_TOO_LARGE",
        /// Too many uids in one request or subscribed.
        TooManyIds => "TOO_MANY_IDS",
        /// The call id is already in use.
        DuplicateCallId => "DUPLICATE_CALL_ID",
        /// Too many pending outgoing invitations.
        TooManyInvitations => "TOO_MANY_INVITATIONS",
        /// No such invitation for this user.
        UnknownInvitation => "UNKNOWN_INVITATION",
        /// The invitation is already over.
        InvitationEnded => "INVITATION_ENDED",
        /// The bridge is draining for shutdown.
        Draining => "DRAINING",
        /// The bridge side cannot take the request.
        BridgeUnavailable => "BRIDGE_UNAVAILABLE",
        /// The session sends frames faster than allowed; the frame was dropped.
        RateLimited => "RATE_LIMITED",
        /// The socket did not log in in time and is closed.
        LoginTimeout => "LOGIN_TIMEOUT",
        /// The socket sent nothing for too long and is closed.
        IdleTimeout => "IDLE_TIMEOUT",
    }
);

/// A request's correlation id, echoed back as is (string or number).
pub type RequestId = Option<Value>;

/// What the hub sends to a browser.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum ServerMsg {
    /// A request succeeded; `fields` are merged into the message.
    Ok {
        /// The request's id.
        id: RequestId,
        /// Answer fields (`v`, `uid`, `hasPeerReceived`, `online`…).
        #[serde(flatten)]
        fields: serde_json::Map<String, Value>,
    },
    /// A request failed.
    Error {
        /// The request's id (null when it could not be read).
        id: RequestId,
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
    /// The session's login state changed.
    ConnectionState {
        /// New state.
        state: ConnectionState,
        /// Why.
        reason: ConnectionChangeReason,
    },
    /// A message from another user or the bridge.
    PeerMessage {
        /// Sender uid.
        from: String,
        /// Text as sent.
        text: String,
    },
    /// Online state of subscribed ids.
    PeersStatus {
        /// uid → state.
        status: BTreeMap<String, PeerOnlineState>,
    },
    /// Someone rings this user.
    RemoteInvitation {
        /// The call id.
        call_id: String,
        /// Who calls (uid or SIP number).
        caller: String,
        /// Invitation content.
        content: String,
    },
    /// An invitation to this user was cancelled or failed.
    RemoteInvitationState {
        /// The call id.
        call_id: String,
        /// New state.
        state: RemoteInvitationState,
        /// Set with `FAILURE`.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<RemoteFailureReason>,
    },
    /// Progress of this user's invitation.
    LocalInvitationState {
        /// The call id.
        call_id: String,
        /// New state.
        state: LocalInvitationState,
        /// The callee's response string.
        #[serde(skip_serializing_if = "Option::is_none")]
        response: Option<String>,
        /// Set with `FAILURE`.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<FailureReason>,
    },
    /// Media signalling for a call.
    Media {
        /// The call id.
        call_id: String,
        /// Sender (web user or the bridge's uid).
        from: String,
        /// Opaque JSON object.
        payload: Value,
    },
}

/// Every error answer the hub sends is counted in `/metrics` by kind (bad input, oversize,
/// auth, limits).
pub(crate) fn count_error(m: &crate::ops::metrics::Metrics, code: ErrorCode) {
    use crate::ops::metrics::{ErrorKind, Limit};
    match code {
        ErrorCode::BadJson
        | ErrorCode::BadMessage
        | ErrorCode::UnknownType
        | ErrorCode::BinaryFrame
        | ErrorCode::UnsupportedVersion => m.error(ErrorKind::Json),
        ErrorCode::FrameTooLarge | ErrorCode::ContentTooLarge | ErrorCode::TextTooLarge => {
            m.error(ErrorKind::Oversize)
        }
        ErrorCode::WrongAppid
        | ErrorCode::ReservedUid
        | ErrorCode::UidInUse
        | ErrorCode::TokenRequired
        | ErrorCode::TokenInvalid
        | ErrorCode::TokenExpired => m.error(ErrorKind::Auth),
        ErrorCode::SessionLimit => m.limit_hit(Limit::MaxWsSessions),
        ErrorCode::Draining => m.limit_hit(Limit::Draining),
        _ => {}
    }
}

impl ServerMsg {
    /// An `error` answer.
    pub fn error(id: RequestId, code: ErrorCode, message: impl Into<String>) -> ServerMsg {
        ServerMsg::Error {
            id,
            code,
            message: message.into(),
        }
    }

    /// An `ok` answer without fields.
    pub fn ok(id: RequestId) -> ServerMsg {
        ServerMsg::Ok {
            id,
            fields: serde_json::Map::new(),
        }
    }

    /// The JSON text frame.
    pub fn to_text(&self) -> String {
        // Serializing these types cannot fail: every map key is a string.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","id":null,"code":"BAD_MESSAGE","message":"internal"}"#.to_string()
        })
    }
}

/// What a browser asks for.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum Request {
    /// Log in.
    Login {
        /// Protocol version (missing = 1).
        #[serde(default)]
        v: Option<u64>,
        /// User id.
        uid: String,
        /// Application id.
        appid: String,
        /// `"{expiry}:{hexmac}"` when tokens are required.
        #[serde(default)]
        token: Option<String>,
    },
    /// Log out (socket stays open).
    Logout,
    /// Keepalive.
    Ping,
    /// Send text to a user or SIP number.
    PeerMessage {
        /// Target id.
        to: String,
        /// The text.
        text: String,
    },
    /// Who of these is online.
    QueryOnline {
        /// Ids to check.
        uids: Vec<String>,
    },
    /// Tell me when these come and go.
    SubscribeOnline {
        /// Ids to watch.
        uids: Vec<String>,
    },
    /// Stop watching these.
    UnsubscribeOnline {
        /// Ids to stop watching.
        uids: Vec<String>,
    },
    /// Ring someone.
    Invite {
        /// Client-generated call id.
        call_id: String,
        /// Who to ring.
        callee: String,
        /// Content string.
        #[serde(default)]
        content: String,
    },
    /// Stop ringing.
    Cancel {
        /// The call id.
        call_id: String,
    },
    /// Callee: I have the invitation.
    Received {
        /// The call id.
        call_id: String,
    },
    /// Callee: accept.
    Accept {
        /// The call id.
        call_id: String,
        /// Response string.
        #[serde(default)]
        response: String,
    },
    /// Callee: refuse.
    Refuse {
        /// The call id.
        call_id: String,
        /// Response string.
        #[serde(default)]
        response: String,
    },
    /// Media signalling for a call.
    Media {
        /// The call id.
        call_id: String,
        /// Opaque JSON object.
        payload: Value,
    },
}

/// The request types this version knows (to tell `UNKNOWN_TYPE` from `BAD_MESSAGE`).
const KNOWN_TYPES: &[&str] = &[
    "login",
    "logout",
    "ping",
    "peer_message",
    "query_online",
    "subscribe_online",
    "unsubscribe_online",
    "invite",
    "cancel",
    "received",
    "accept",
    "refuse",
    "media",
];

/// A frame that could not be turned into a [`Request`]: the error to answer with.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    /// The request's id, when it could be read.
    pub id: RequestId,
    /// What was wrong.
    pub code: ErrorCode,
    /// Explanation for humans.
    pub message: String,
}

impl ParseError {
    /// The `error` message answering this frame.
    pub fn into_msg(self) -> ServerMsg {
        ServerMsg::error(self.id, self.code, self.message)
    }
}

/// Parses one text frame into its id and request.
pub fn parse_request(text: &str) -> Result<(RequestId, Request), ParseError> {
    let value: Value = serde_json::from_str(text).map_err(|e| ParseError {
        id: None,
        code: ErrorCode::BadJson,
        message: format!("frame is not valid JSON: {e}"),
    })?;
    let Value::Object(ref object) = value else {
        return Err(ParseError {
            id: None,
            code: ErrorCode::BadJson,
            message: "frame must be a JSON object".to_string(),
        });
    };
    let id = object
        .get("id")
        .filter(|v| v.is_string() || v.is_number())
        .cloned();
    let kind = match object.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        Some(_) => {
            return Err(ParseError {
                id,
                code: ErrorCode::BadMessage,
                message: "field `type` must be a string".to_string(),
            })
        }
        None => {
            return Err(ParseError {
                id,
                code: ErrorCode::BadMessage,
                message: "missing field `type`".to_string(),
            })
        }
    };
    if !KNOWN_TYPES.contains(&kind.as_str()) {
        let shown: String = kind.chars().take(40).collect();
        return Err(ParseError {
            id,
            code: ErrorCode::UnknownType,
            message: format!("unknown message type {shown:?} (protocol v{PROTOCOL_VERSION})"),
        });
    }
    match serde_json::from_value::<Request>(value) {
        Ok(request) => Ok((id, request)),
        Err(e) => Err(ParseError {
            id,
            code: ErrorCode::BadMessage,
            message: format!("bad `{kind}` message: {e}"),
        }),
    }
}
