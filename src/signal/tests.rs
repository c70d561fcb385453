//! HubCore rules, fed frames and asserted on what each session would receive.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::core::{BridgeEvent, DeliveryError, HubCore, HubSettings, Now, Output, SessionId};
use super::protocol::*;
use super::token::mint_token;
use crate::config::Secret;

const BRIDGE: &str = "bridge";

fn settings() -> HubSettings {
    HubSettings {
        appid: "app".to_string(),
        token_secret: None,
        bridge_uid: BRIDGE.to_string(),
        max_sessions: 4,
        max_content: 8192,
        sip_account: None,
        sip_numbers: None,
        login_timeout: Duration::from_secs(30),
        max_token_ttl: Duration::from_secs(86_400),
        allowed_origins: Vec::new(),
    }
}

struct T {
    core: HubCore,
    t0: Instant,
    elapsed: Duration,
}

impl T {
    fn new() -> T {
        T::with(settings())
    }

    fn with(settings: HubSettings) -> T {
        T {
            core: HubCore::new(settings),
            t0: Instant::now(),
            elapsed: Duration::ZERO,
        }
    }

    fn now(&self) -> Now {
        Now {
            mono: self.t0 + self.elapsed,
            unix: 1_000_000 + self.elapsed.as_secs(),
        }
    }

    fn open(&mut self, sid: SessionId) {
        let now = self.now();
        self.core.open(sid, now).unwrap();
    }

    fn send(&mut self, sid: SessionId, msg: Value) -> Vec<Output> {
        let now = self.now();
        self.core.handle_text(sid, &msg.to_string(), now)
    }

    fn raw(&mut self, sid: SessionId, text: &str) -> Vec<Output> {
        let now = self.now();
        self.core.handle_text(sid, text, now)
    }

    /// Opens session `sid` and logs `uid` in on it.
    fn user(&mut self, sid: SessionId, uid: &str) -> Vec<Output> {
        self.open(sid);
        let out = self.send(
            sid,
            json!({"type":"login","id":"l","v":1,"uid":uid,"appid":"app"}),
        );
        assert!(
            matches!(&to(&out, sid)[0], ServerMsg::Ok { .. }),
            "login of {uid} failed: {out:?}"
        );
        out
    }

    fn invite(&mut self, sid: SessionId, call_id: &str, callee: &str) -> Vec<Output> {
        self.send(
            sid,
            json!({"type":"invite","id":"i","callId":call_id,"callee":callee,"content":"{\"Mode\":1}"}),
        )
    }

    fn tick(&mut self, by: Duration) -> Vec<Output> {
        self.elapsed += by;
        let now = self.now();
        self.core.tick(now)
    }
}

/// Messages for session `sid`, in order.
fn to(out: &[Output], sid: SessionId) -> Vec<ServerMsg> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(s, m) if *s == sid => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn bridge(out: &[Output]) -> Vec<BridgeEvent> {
    out.iter()
        .filter_map(|o| match o {
            Output::Bridge(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn closed(out: &[Output]) -> Vec<SessionId> {
    out.iter()
        .filter_map(|o| match o {
            Output::Close(s) => Some(*s),
            _ => None,
        })
        .collect()
}

/// The error code of the only message to `sid`.
fn error_code(out: &[Output], sid: SessionId) -> ErrorCode {
    match to(out, sid).as_slice() {
        [ServerMsg::Error { code, .. }] => *code,
        other => panic!("expected one error for {sid}, got {other:?}"),
    }
}

fn is_ok(out: &[Output], sid: SessionId) -> bool {
    to(out, sid)
        .iter()
        .any(|m| matches!(m, ServerMsg::Ok { .. }))
}

fn local_state(call_id: &str, state: LocalInvitationState) -> ServerMsg {
    ServerMsg::LocalInvitationState {
        call_id: call_id.to_string(),
        state,
        response: None,
        reason: None,
    }
}

fn login_msg(uid: &str, appid: &str, token: Option<&str>) -> Value {
    let mut m = json!({"type":"login","id":7,"v":1,"uid":uid,"appid":appid});
    if let Some(t) = token {
        m["token"] = json!(t);
    }
    m
}

// ---- login ----

#[test]
fn login_answers_ok_with_version_then_connected() {
    let mut t = T::new();
    let out = t.user(1, "alice");
    let msgs = to(&out, 1);
    assert_eq!(
        msgs[0].to_text(),
        r#"{"type":"ok","id":"l","uid":"alice","v":1}"#
    );
    assert_eq!(
        msgs[1].to_text(),
        r#"{"type":"connection_state","state":"CONNECTED","reason":"LOGIN_SUCCESS"}"#
    );
    assert!(t.core.is_online("alice"));
    assert_eq!(t.core.online_count(), 1);
}

#[test]
fn requests_before_login_are_refused_but_ping_works() {
    let mut t = T::new();
    t.open(1);
    for msg in [
        json!({"type":"invite","id":1,"callId":"c","callee":"bob"}),
        json!({"type":"peer_message","id":1,"to":"bob","text":"hi"}),
        json!({"type":"query_online","id":1,"uids":["bob"]}),
        json!({"type":"logout","id":1}),
    ] {
        assert_eq!(error_code(&t.send(1, msg), 1), ErrorCode::NotLoggedIn);
    }
    assert!(is_ok(&t.send(1, json!({"type":"ping","id":2})), 1));
}

#[test]
fn wrong_appid_is_refused() {
    let mut t = T::new();
    t.open(1);
    let out = t.send(1, login_msg("alice", "other", None));
    assert_eq!(error_code(&out, 1), ErrorCode::WrongAppid);
    assert!(!t.core.is_online("alice"));
    // The session stays usable.
    assert!(is_ok(&t.send(1, login_msg("alice", "app", None)), 1));
}

#[test]
fn unsupported_version_is_refused_and_missing_version_means_v1() {
    let mut t = T::new();
    t.open(1);
    let out = t.send(
        1,
        json!({"type":"login","id":1,"v":2,"uid":"alice","appid":"app"}),
    );
    assert_eq!(error_code(&out, 1), ErrorCode::UnsupportedVersion);
    let out = t.send(
        1,
        json!({"type":"login","id":1,"uid":"alice","appid":"app"}),
    );
    assert!(is_ok(&out, 1));
}

#[test]
fn uid_rules() {
    let mut t = T::new();
    t.open(1);
    let long = "x".repeat(65);
    for (bad, says) in [
        ("", "1-64 characters"),
        (long.as_str(), "1-64 characters"),
        ("a\nb", "control character U+000A"),
        ("tab\there", "control character U+0009"),
        ("\u{7f}", "control character U+007F"),
        ("1000 ", "whitespace"),
        ("１０００", "NFKC"),
        ("alice\u{202E}", "bidi control U+202E"),
        ("ali ce", "whitespace"),
        ("al/ce", "not a letter, digit"),
    ] {
        let out = t.send(1, login_msg(bad, "app", None));
        match to(&out, 1).as_slice() {
            [ServerMsg::Error { code, message, .. }] => {
                assert_eq!(*code, ErrorCode::InvalidUid, "{bad:?}");
                assert!(message.contains(says), "{bad:?}: {message}");
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    let longest = "é".repeat(64);
    assert!(is_ok(&t.send(1, login_msg(&longest, "app", None)), 1));
}

#[test]
fn ids_routed_to_sip_cannot_log_in() {
    let mut t = T::with(HubSettings {
        sip_account: Some("1000".into()),
        sip_numbers: Some("1005;10[06-19]".parse().unwrap()),
        ..settings()
    });
    t.open(1);
    for reserved in [BRIDGE, "1000", "1005", "1006", "1019"] {
        let out = t.send(1, login_msg(reserved, "app", None));
        assert_eq!(error_code(&out, 1), ErrorCode::ReservedUid, "{reserved:?}");
        assert!(!t.core.is_online(reserved));
    }
    for free in ["1020", "1004"] {
        t.open(2);
        assert!(is_ok(&t.send(2, login_msg(free, "app", None)), 2), "{free}");
        t.core.close(2);
    }
}

#[test]
fn without_tokens_a_second_login_of_a_uid_is_refused() {
    let mut t = T::new();
    t.user(1, "alice");
    t.open(2);
    let out = t.send(2, login_msg("alice", "app", None));
    assert_eq!(error_code(&out, 2), ErrorCode::UidInUse);
    assert!(closed(&out).is_empty(), "the first session stays");
    assert!(bridge(&out).is_empty(), "her calls go on");
    let out = t.send(
        2,
        json!({"type":"login","id":8,"v":1,"uid":"bob","appid":"app"}),
    );
    assert!(
        is_ok(&out, 2),
        "the refused session may log in as someone else"
    );
    let out = t.send(
        2,
        json!({"type":"peer_message","id":1,"to":"alice","text":"hi"}),
    );
    assert_eq!(to(&out, 1).len(), 1, "alice still receives");
}

#[test]
fn tokens_living_longer_than_max_token_ttl_are_refused() {
    let mut t = token_hub();
    t.open(1);
    let year_2500 = 16_725_225_600;
    let token = mint_token("s3cret", "alice", year_2500);
    let out = t.send(1, login_msg("alice", "app", Some(&token)));
    match to(&out, 1).as_slice() {
        [ServerMsg::Error { code, message, .. }] => {
            assert_eq!(*code, ErrorCode::TokenInvalid);
            assert!(message.contains("max_token_ttl"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let day = mint_token("s3cret", "alice", t.now().unix + 86_400);
    assert!(is_ok(&t.send(1, login_msg("alice", "app", Some(&day))), 1));
}

#[test]
fn login_timeout_comes_from_the_settings() {
    let mut t = T::with(HubSettings {
        login_timeout: Duration::from_secs(5),
        ..settings()
    });
    t.open(1);
    assert!(t.tick(Duration::from_secs(4)).is_empty());
    let out = t.tick(Duration::from_secs(1));
    assert_eq!(error_code(&out, 1), ErrorCode::LoginTimeout);
    assert_eq!(closed(&out), vec![1]);
}

#[test]
fn second_login_on_a_session_is_refused() {
    let mut t = T::new();
    t.user(1, "alice");
    let out = t.send(1, login_msg("bob", "app", None));
    assert_eq!(error_code(&out, 1), ErrorCode::AlreadyLoggedIn);
    assert!(!t.core.is_online("bob"));
}

fn token_hub() -> T {
    T::with(HubSettings {
        token_secret: Some(Secret::new("s3cret")),
        ..settings()
    })
}

#[test]
fn token_is_required_when_a_secret_is_set() {
    let mut t = token_hub();
    t.open(1);
    let out = t.send(1, login_msg("alice", "app", None));
    assert_eq!(error_code(&out, 1), ErrorCode::TokenRequired);
}

#[test]
fn valid_token_logs_in() {
    let mut t = token_hub();
    t.open(1);
    let token = mint_token("s3cret", "alice", 1_000_060);
    assert!(is_ok(
        &t.send(1, login_msg("alice", "app", Some(&token))),
        1
    ));
}

#[test]
fn wrong_or_foreign_token_is_invalid() {
    let mut t = token_hub();
    t.open(1);
    for token in [
        mint_token("other", "alice", 1_000_060),
        mint_token("s3cret", "bob", 1_000_060),
        "garbage".to_string(),
        "1000060:".to_string(),
    ] {
        let out = t.send(1, login_msg("alice", "app", Some(&token)));
        assert_eq!(error_code(&out, 1), ErrorCode::TokenInvalid, "{token}");
    }
}

#[test]
fn expired_token_is_refused_with_its_own_code() {
    let mut t = token_hub();
    t.open(1);
    let token = mint_token("s3cret", "alice", 999_999);
    let out = t.send(1, login_msg("alice", "app", Some(&token)));
    assert_eq!(error_code(&out, 1), ErrorCode::TokenExpired);
    // The error text never contains the token itself.
    assert!(!format!("{out:?}").contains(&token[8..]));
}

#[test]
fn with_tokens_a_second_login_of_a_uid_takes_over() {
    let mut t = token_hub();
    let token = |uid| mint_token("s3cret", uid, 1_000_060);
    for (sid, uid) in [(1, "alice"), (3, "watcher")] {
        t.open(sid);
        assert!(is_ok(
            &t.send(sid, login_msg(uid, "app", Some(&token(uid)))),
            sid
        ));
    }
    t.send(
        3,
        json!({"type":"subscribe_online","id":1,"uids":["alice"]}),
    );
    t.open(2);
    let out = t.send(2, login_msg("alice", "app", Some(&token("alice"))));
    assert_eq!(
        to(&out, 1),
        vec![ServerMsg::ConnectionState {
            state: ConnectionState::Aborted,
            reason: ConnectionChangeReason::RemoteLogin,
        }]
    );
    assert_eq!(closed(&out), vec![1]);
    assert_eq!(
        bridge(&out),
        vec![BridgeEvent::SessionClosed {
            uid: "alice".into()
        }]
    );
    // alice stayed online throughout: the watcher hears nothing.
    assert!(to(&out, 3).is_empty());
    assert!(is_ok(&out, 2));
    // Messages to alice now reach the new session only.
    let out = t.send(
        3,
        json!({"type":"peer_message","id":1,"to":"alice","text":"hi"}),
    );
    assert_eq!(to(&out, 2).len(), 1);
    assert!(to(&out, 1).is_empty());
    // Frames still arriving on the replaced socket are ignored, its close changes nothing.
    assert!(t.send(1, json!({"type":"logout","id":1})).is_empty());
    assert!(t.core.close(1).is_empty());
    assert!(t.core.is_online("alice"));
}

#[test]
fn session_limit_refuses_and_closes_the_extra_socket() {
    let mut t = T::new();
    for sid in 1..=4 {
        t.open(sid);
    }
    let now = t.now();
    let out = t.core.open(5, now).unwrap_err();
    assert_eq!(error_code(&out, 5), ErrorCode::SessionLimit);
    assert_eq!(closed(&out), vec![5]);
    assert_eq!(t.core.session_count(), 4);
    // Others are unaffected; once one leaves, a new one fits.
    assert!(is_ok(&t.send(1, login_msg("alice", "app", None)), 1));
    t.core.close(2);
    assert!(t.core.open(5, now).is_ok());
}

#[test]
fn logout_tells_the_bridge_and_allows_a_new_login() {
    let mut t = T::new();
    t.user(1, "alice");
    let out = t.send(1, json!({"type":"logout","id":1}));
    let msgs = to(&out, 1);
    assert!(matches!(msgs[0], ServerMsg::Ok { .. }));
    assert_eq!(
        msgs[1],
        ServerMsg::ConnectionState {
            state: ConnectionState::Disconnected,
            reason: ConnectionChangeReason::Logout
        }
    );
    assert_eq!(
        bridge(&out),
        vec![BridgeEvent::SessionClosed {
            uid: "alice".into()
        }]
    );
    assert!(!t.core.is_online("alice"));
    assert!(is_ok(&t.send(1, login_msg("bob", "app", None)), 1));
}

#[test]
fn closing_a_logged_out_socket_tells_nobody() {
    let mut t = T::new();
    t.open(1);
    assert!(t.core.close(1).is_empty());
    assert_eq!(t.core.session_count(), 0);
}

#[test]
fn sockets_that_never_log_in_are_closed_after_30s() {
    let mut t = T::new();
    t.open(1);
    t.user(2, "alice");
    assert!(t.tick(Duration::from_secs(29)).is_empty());
    let out = t.tick(Duration::from_secs(1));
    assert_eq!(error_code(&out, 1), ErrorCode::LoginTimeout);
    assert_eq!(closed(&out), vec![1]);
    assert_eq!(t.core.session_count(), 1);
    assert!(t.core.is_online("alice"));
}

#[test]
fn silent_sessions_are_taken_for_dead_and_their_calls_end() {
    let mut t = T::new();
    t.user(1, "alice");
    t.user(2, "bob");
    t.send(2, json!({"type":"subscribe_online","uids":["alice"]}));
    t.invite(1, "c1", "1005");
    // alice's last sign of life is a WebSocket ping at 50 s; bob keeps pinging.
    t.tick(Duration::from_secs(50));
    t.send(2, json!({"type":"ping"}));
    assert!(t.core.touch(1, t.now()).is_empty());
    assert!(t.tick(Duration::from_secs(50)).is_empty());
    t.send(2, json!({"type":"ping"}));
    assert!(t.tick(Duration::from_secs(24)).is_empty());
    let out = t.tick(Duration::from_secs(1));
    assert_eq!(error_code(&out, 1), ErrorCode::IdleTimeout);
    assert_eq!(closed(&out), vec![1]);
    assert_eq!(
        bridge(&out),
        vec![BridgeEvent::SessionClosed {
            uid: "alice".into()
        }]
    );
    assert_eq!(
        to(&out, 2)[0].to_text(),
        r#"{"type":"peers_status","status":{"alice":"OFFLINE"}}"#
    );
    assert_eq!(t.core.invitation_count(), 0);
}

#[test]
fn floods_are_throttled_per_session() {
    let mut t = T::new();
    t.user(1, "alice");
    t.user(2, "bob");
    // The login used one frame of alice's burst.
    for _ in 0..199 {
        assert!(is_ok(&t.send(1, json!({"type":"ping","id":1})), 1));
    }
    let out = t.send(
        1,
        json!({"type":"peer_message","id":1,"to":"bob","text":"x"}),
    );
    assert_eq!(error_code(&out, 1), ErrorCode::RateLimited);
    assert!(to(&out, 2).is_empty(), "the throttled frame was dropped");
    // bob is unaffected; alice recovers as time passes.
    assert!(is_ok(&t.send(2, json!({"type":"ping","id":1})), 2));
    t.elapsed += Duration::from_millis(100);
    assert!(is_ok(&t.send(1, json!({"type":"ping","id":1})), 1));
}

// ---- bad input ----

#[test]
fn malformed_frames_get_precise_errors_and_the_session_survives() {
    let mut t = T::new();
    t.user(1, "alice");
    let cases: &[(&str, ErrorCode)] = &[
        ("not json", ErrorCode::BadJson),
        ("{\"type\":", ErrorCode::BadJson),
        ("[1,2]", ErrorCode::BadJson),
        ("\"login\"", ErrorCode::BadJson),
        ("{}", ErrorCode::BadMessage),
        ("{\"type\":5}", ErrorCode::BadMessage),
        ("{\"type\":\"fly\",\"id\":3}", ErrorCode::UnknownType),
        (
            "{\"type\":\"invite\",\"id\":3,\"callId\":\"c\"}",
            ErrorCode::BadMessage,
        ),
        (
            "{\"type\":\"invite\",\"id\":3,\"callId\":5,\"callee\":\"b\"}",
            ErrorCode::BadMessage,
        ),
        (
            "{\"type\":\"query_online\",\"id\":3,\"uids\":\"bob\"}",
            ErrorCode::BadMessage,
        ),
        (
            "{\"type\":\"media\",\"id\":3,\"callId\":\"c\",\"payload\":[1]}",
            ErrorCode::BadMessage,
        ),
    ];
    for (frame, code) in cases {
        let out = t.raw(1, frame);
        assert_eq!(error_code(&out, 1), *code, "{frame}");
    }
    // The id is echoed when it could be read.
    let out = t.raw(1, "{\"type\":\"fly\",\"id\":3}");
    assert!(to(&out, 1)[0].to_text().contains("\"id\":3"));
    let out = t.raw(1, "nope");
    assert!(to(&out, 1)[0].to_text().contains("\"id\":null"));
    // Still logged in and working.
    assert!(is_ok(&t.send(1, json!({"type":"ping","id":1})), 1));
    assert!(t.core.is_online("alice"));
}

#[test]
fn oversized_and_binary_frames_are_answered() {
    let mut t = T::new();
    t.user(1, "alice");
    let big = format!(
        "{{\"type\":\"ping\",\"pad\":\"{}\"}}",
        "x".repeat(super::core::MAX_FRAME)
    );
    assert_eq!(error_code(&t.raw(1, &big), 1), ErrorCode::FrameTooLarge);
    assert_eq!(
        error_code(&t.core.handle_binary(1, t.now()), 1),
        ErrorCode::BinaryFrame
    );
    assert!(t.core.is_online("alice"));
}

#[test]
fn frames_for_unknown_sessions_do_nothing() {
    let mut t = T::new();
    assert!(t.raw(9, "{\"type\":\"ping\"}").is_empty());
    assert!(t.core.handle_binary(9, t.now()).is_empty());
}

#[test]
fn requests_without_id_get_no_ok_but_do_get_errors() {
    let mut t = T::new();
    t.user(1, "alice");
    assert!(to(&t.send(1, json!({"type":"ping"})), 1)
        .iter()
        .all(|m| !matches!(m, ServerMsg::Ok { id: Some(_), .. })));
    assert_eq!(
        error_code(&t.send(1, json!({"type":"fly"})), 1),
        ErrorCode::UnknownType
    );
}

// ---- peer messages and presence ----

#[test]
fn peer_messages_between_web_users_are_relayed() {
    let mut t = T::new();
    t.user(1, "alice");
    t.user(2, "bob");
    let out = t.send(
        1,
        json!({"type":"peer_message","id":"m","to":"bob","text":"hello"}),
    );
    assert_eq!(
        to(&out, 2),
        vec![ServerMsg::PeerMessage {
            from: "alice".into(),
            text: "hello".into()
        }]
    );
    assert_eq!(
        to(&out, 1)[0].to_text(),
        r#"{"type":"ok","id":"m","hasPeerReceived":true}"#
    );
    assert!(bridge(&out).is_empty());
}

#[test]
fn peer_messages_to_others_go_to_the_bridge() {
    let mut t = T::new();
    t.user(1, "alice");
    for target in ["1005", BRIDGE] {
        let out = t.send(
            1,
            json!({"type":"peer_message","id":"m","to":target,"text":"{\"Cmd\":\"EndCall\"}"}),
        );
        assert_eq!(
            bridge(&out),
            vec![BridgeEvent::PeerMessage {
                from_uid: "alice".into(),
                to: target.into(),
                text: "{\"Cmd\":\"EndCall\"}".into()
            }]
        );
    }
}

#[test]
fn bad_peer_messages_are_refused() {
    let mut t = T::new();
    t.user(1, "alice");
    let out = t.send(1, json!({"type":"peer_message","id":1,"to":"","text":"x"}));
    assert_eq!(error_code(&out, 1), ErrorCode::InvalidArgument);
    let out = t.send(
        1,
        json!({"type":"peer_message","id":1,"to":"bob","text":"x".repeat(32 * 1024 + 1)}),
    );
    assert_eq!(error_code(&out, 1), ErrorCode::TextTooLarge);
}

#[test]
fn query_online_reports_web_users_and_the_bridge() {
    let mut t = T::new();
    t.user(1, "alice");
    t.user(2, "bob");
    let out = t.send(
        1,
        json!({"type":"query_online","id":1,"uids":["bob","carol",BRIDGE]}),
    );
    assert_eq!(
        to(&out, 1)[0].to_text(),
        r#"{"type":"ok","id":1,"online":{"bob":true,"bridge":true,"carol":false}}"#
    );
    let many: Vec<String> = (0..513).map(|i| i.to_string()).collect();
    let out = t.send(1, json!({"type":"query_online","id":1,"uids":many}));
    assert_eq!(error_code(&out, 1), ErrorCode::TooManyIds);
}

#[test]
fn subscriptions_report_now_and_on_change() {
    let mut t = T::new();
    t.user(1, "alice");
    let out = t.send(1, json!({"type":"subscribe_online","id":1,"uids":["bob"]}));
    let msgs = to(&out, 1);
    assert!(matches!(msgs[0], ServerMsg::Ok { .. }));
    assert_eq!(
        msgs[1].to_text(),
        r#"{"type":"peers_status","status":{"bob":"OFFLINE"}}"#
    );
    let out = t.user(2, "bob");
    assert_eq!(
        to(&out, 1)[0].to_text(),
        r#"{"type":"peers_status","status":{"bob":"ONLINE"}}"#
    );
    let out = t.core.close(2);
    assert_eq!(
        to(&out, 1)[0].to_text(),
        r#"{"type":"peers_status","status":{"bob":"OFFLINE"}}"#
    );
    t.send(
        1,
        json!({"type":"unsubscribe_online","id":1,"uids":["bob"]}),
    );
    let out = t.user(2, "bob");
    assert!(to(&out, 1).is_empty());
}

#[test]
fn subscription_limit_counts_all_ids_of_the_session() {
    let mut t = T::new();
    t.user(1, "alice");
    let first: Vec<String> = (0..500).map(|i| format!("u{i}")).collect();
    assert!(is_ok(
        &t.send(1, json!({"type":"subscribe_online","id":1,"uids":first})),
        1
    ));
    let more: Vec<String> = (500..513).map(|i| format!("u{i}")).collect();
    let out = t.send(1, json!({"type":"subscribe_online","id":1,"uids":more}));
    assert_eq!(error_code(&out, 1), ErrorCode::TooManyIds);
}

// ---- web <-> web invitations ----

/// alice (1) rings bob (2); bob's browser confirms.
fn ringing() -> T {
    let mut t = T::new();
    t.user(1, "alice");
    t.user(2, "bob");
    let out = t.invite(1, "c1", "bob");
    assert!(is_ok(&out, 1));
    assert_eq!(
        to(&out, 2),
        vec![ServerMsg::RemoteInvitation {
            call_id: "c1".into(),
            caller: "alice".into(),
            content: "{\"Mode\":1}".into()
        }]
    );
    let out = t.send(2, json!({"type":"received","id":1,"callId":"c1"}));
    assert!(is_ok(&out, 2));
    assert_eq!(
        to(&out, 1),
        vec![local_state("c1", LocalInvitationState::ReceivedByRemote)]
    );
    t
}

#[test]
fn web_invitation_accepted() {
    let mut t = ringing();
    let out = t.send(
        2,
        json!({"type":"accept","id":1,"callId":"c1","response":"yes"}),
    );
    assert!(is_ok(&out, 2));
    assert_eq!(
        to(&out, 1)[0].to_text(),
        r#"{"type":"local_invitation_state","callId":"c1","state":"ACCEPTED_BY_REMOTE","response":"yes"}"#
    );
    assert!(bridge(&out).is_empty());
    assert_eq!(t.core.invitation_count(), 0);
    // Accepting again is an error, not a second ACCEPTED.
    let out = t.send(2, json!({"type":"accept","id":2,"callId":"c1"}));
    assert_eq!(error_code(&out, 2), ErrorCode::InvitationEnded);
    assert!(to(&out, 1).is_empty());
    // Media is relayed between the two after accept.
    let out = t.send(
        1,
        json!({"type":"media","id":3,"callId":"c1","payload":{"sdp":"v=0"}}),
    );
    assert_eq!(
        to(&out, 2),
        vec![ServerMsg::Media {
            call_id: "c1".into(),
            from: "alice".into(),
            payload: json!({"sdp":"v=0"})
        }]
    );
}

#[test]
fn both_web_users_can_ring_each_other() {
    let mut t = ringing();
    let out = t.invite(2, "c2", "alice");
    assert!(
        matches!(&to(&out, 1)[0], ServerMsg::RemoteInvitation { caller, .. } if caller == "bob")
    );
    let out = t.send(
        1,
        json!({"type":"refuse","id":1,"callId":"c2","response":"busy"}),
    );
    // bob did not confirm, so he sees RECEIVED_BY_REMOTE first, then the refusal.
    let states: Vec<String> = to(&out, 2).iter().map(ServerMsg::to_text).collect();
    assert!(states[0].contains("RECEIVED_BY_REMOTE"), "{states:?}");
    assert!(states[1].contains("REFUSED_BY_REMOTE") && states[1].contains("busy"));
    // alice's own invitation c1 is unaffected.
    assert!(is_ok(
        &t.send(2, json!({"type":"accept","id":1,"callId":"c1"})),
        2
    ));
}

#[test]
fn web_invitation_refused_then_accept_is_an_error() {
    let mut t = ringing();
    let out = t.send(
        2,
        json!({"type":"refuse","id":1,"callId":"c1","response":"no"}),
    );
    assert!(to(&out, 1)[0].to_text().contains("REFUSED_BY_REMOTE"));
    let out = t.send(2, json!({"type":"accept","id":1,"callId":"c1"}));
    assert_eq!(error_code(&out, 2), ErrorCode::InvitationEnded);
}

#[test]
fn web_invitation_canceled_then_accept_is_an_error() {
    let mut t = ringing();
    let out = t.send(1, json!({"type":"cancel","id":1,"callId":"c1"}));
    assert_eq!(
        to(&out, 1)[1],
        local_state("c1", LocalInvitationState::Canceled)
    );
    assert_eq!(
        to(&out, 2),
        vec![ServerMsg::RemoteInvitationState {
            call_id: "c1".into(),
            state: RemoteInvitationState::Canceled,
            reason: None
        }]
    );
    let out = t.send(2, json!({"type":"accept","id":1,"callId":"c1"}));
    assert_eq!(error_code(&out, 2), ErrorCode::InvitationEnded);
    match &to(&out, 2)[0] {
        ServerMsg::Error { message, .. } => assert!(message.contains("cancelled"), "{message}"),
        other => panic!("{other:?}"),
    }
    let out = t.send(1, json!({"type":"cancel","id":1,"callId":"c1"}));
    assert_eq!(error_code(&out, 1), ErrorCode::InvitationEnded);
}

#[test]
fn only_the_callee_may_answer_and_only_the_caller_may_cancel() {
    let mut t = ringing();
    t.user(3, "mallory");
    for (sid, kind) in [
        (1, "accept"),
        (3, "accept"),
        (3, "refuse"),
        (2, "cancel"),
        (3, "cancel"),
        (1, "received"),
    ] {
        let out = t.send(sid, json!({"type":kind,"id":1,"callId":"c1"}));
        assert_eq!(
            error_code(&out, sid),
            ErrorCode::UnknownInvitation,
            "{sid} {kind}"
        );
    }
    // Still pending and answerable by bob.
    assert!(is_ok(
        &t.send(2, json!({"type":"accept","id":1,"callId":"c1"})),
        2
    ));
}

#[test]
fn invitation_argument_errors() {
    let mut t = T::new();
    t.user(1, "alice");
    t.user(2, "bob");
    assert_eq!(
        error_code(&t.invite(1, "c1", "alice"), 1),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        error_code(&t.invite(1, "", "bob"), 1),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        error_code(&t.invite(1, &"c".repeat(65), "bob"), 1),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        error_code(&t.invite(1, "c1", "b\u{0}b"), 1),
        ErrorCode::InvalidArgument
    );
    let big =
        json!({"type":"invite","id":1,"callId":"c1","callee":"bob","content":"x".repeat(8193)});
    assert_eq!(error_code(&t.send(1, big), 1), ErrorCode::ContentTooLarge);
    let fits =
        json!({"type":"invite","id":1,"callId":"c1","callee":"bob","content":"x".repeat(8192)});
    assert!(is_ok(&t.send(1, fits), 1));
    assert_eq!(
        error_code(&t.invite(1, "c1", "bob"), 1),
        ErrorCode::DuplicateCallId
    );
    assert_eq!(
        error_code(&t.invite(2, "c1", "alice"), 2),
        ErrorCode::DuplicateCallId
    );
    let big = json!({"type":"accept","id":1,"callId":"c1","response":"x".repeat(8193)});
    assert_eq!(error_code(&t.send(2, big), 2), ErrorCode::ContentTooLarge);
    // Nothing of this reached the bridge.
    assert_eq!(t.core.invitation_count(), 1);
}

#[test]
fn pending_invitations_per_session_are_bounded() {
    let mut t = T::new();
    t.user(1, "alice");
    for i in 0..16 {
        assert!(is_ok(&t.invite(1, &format!("c{i}"), "1005"), 1));
    }
    assert_eq!(
        error_code(&t.invite(1, "c16", "1005"), 1),
        ErrorCode::TooManyInvitations
    );
}

#[test]
fn draining_refuses_new_invitations() {
    let mut t = T::new();
    t.user(1, "alice");
    t.user(2, "bob");
    t.core.set_accepting(false);
    assert_eq!(
        error_code(&t.invite(1, "c1", "bob"), 1),
        ErrorCode::Draining
    );
    assert_eq!(
        error_code(&t.invite(1, "c2", "1005"), 1),
        ErrorCode::Draining
    );
    t.core.set_accepting(true);
    assert!(is_ok(&t.invite(1, "c1", "bob"), 1));
}

#[test]
fn callee_leaving_fails_the_callers_invitation() {
    let mut t = ringing();
    let out = t.core.close(2);
    assert_eq!(
        to(&out, 1),
        vec![ServerMsg::LocalInvitationState {
            call_id: "c1".into(),
            state: LocalInvitationState::Failure,
            response: None,
            reason: Some(FailureReason::PeerOffline)
        }]
    );
    assert_eq!(t.core.invitation_count(), 0);
}

#[test]
fn caller_leaving_cancels_the_callees_invitation() {
    let mut t = ringing();
    let out = t.send(1, json!({"type":"logout","id":1}));
    assert_eq!(
        to(&out, 2),
        vec![ServerMsg::RemoteInvitationState {
            call_id: "c1".into(),
            state: RemoteInvitationState::Canceled,
            reason: None
        }]
    );
}

#[test]
fn unconfirmed_invitation_fails_with_no_response_after_30s() {
    let mut t = T::new();
    t.user(1, "alice");
    t.user(2, "bob");
    t.invite(1, "c1", "bob");
    assert!(t.tick(Duration::from_secs(29)).is_empty());
    let out = t.tick(Duration::from_secs(1));
    assert_eq!(
        to(&out, 1),
        vec![ServerMsg::LocalInvitationState {
            call_id: "c1".into(),
            state: LocalInvitationState::Failure,
            response: None,
            reason: Some(FailureReason::PeerNoResponse)
        }]
    );
    assert_eq!(
        to(&out, 2),
        vec![ServerMsg::RemoteInvitationState {
            call_id: "c1".into(),
            state: RemoteInvitationState::Failure,
            reason: Some(RemoteFailureReason::InvitationExpire)
        }]
    );
    let out = t.send(2, json!({"type":"accept","id":1,"callId":"c1"}));
    assert_eq!(error_code(&out, 2), ErrorCode::InvitationEnded);
}

#[test]
fn confirmed_invitation_expires_after_60s() {
    let mut t = ringing();
    assert!(t.tick(Duration::from_secs(59)).is_empty());
    let out = t.tick(Duration::from_secs(1));
    assert!(to(&out, 1)[0].to_text().contains("INVITATION_EXPIRE"));
    assert_eq!(t.core.invitation_count(), 0);
}

// ---- the bridge path ----

#[test]
fn invitation_to_a_sip_number_goes_to_the_bridge_and_states_come_back() {
    let mut t = T::new();
    t.user(1, "alice");
    t.user(2, "bob");
    let out = t.invite(1, "c1", "1005");
    assert_eq!(
        bridge(&out),
        vec![BridgeEvent::Invite {
            call_id: "c1".into(),
            from_uid: "alice".into(),
            callee: "1005".into(),
            content: "{\"Mode\":1}".into()
        }]
    );
    // A state addressed to the wrong user is dropped.
    assert!(t
        .core
        .local_invitation_state(
            "bob",
            "c1",
            LocalInvitationState::ReceivedByRemote,
            None,
            None
        )
        .is_empty());
    let out = t.core.local_invitation_state(
        "alice",
        "c1",
        LocalInvitationState::ReceivedByRemote,
        None,
        None,
    );
    assert_eq!(
        to(&out, 1),
        vec![local_state("c1", LocalInvitationState::ReceivedByRemote)]
    );
    let out = t.core.local_invitation_state(
        "alice",
        "c1",
        LocalInvitationState::Failure,
        Some("{\"Code\":486}".into()),
        None,
    );
    assert_eq!(
        to(&out, 1)[0].to_text(),
        r#"{"type":"local_invitation_state","callId":"c1","state":"FAILURE","response":"{\"Code\":486}","reason":"UNKNOWN"}"#
    );
    assert_eq!(t.core.invitation_count(), 0);
    // After the final state nothing more is delivered.
    assert!(t
        .core
        .local_invitation_state(
            "alice",
            "c1",
            LocalInvitationState::AcceptedByRemote,
            None,
            None
        )
        .is_empty());
}

#[test]
fn cancel_of_a_sip_call_goes_to_the_bridge_once() {
    let mut t = T::new();
    t.user(1, "alice");
    t.invite(1, "c1", "1005");
    let out = t.send(1, json!({"type":"cancel","id":1,"callId":"c1"}));
    assert!(is_ok(&out, 1));
    assert_eq!(
        bridge(&out),
        vec![BridgeEvent::Cancel {
            call_id: "c1".into(),
            from_uid: "alice".into()
        }]
    );
    let out = t.send(1, json!({"type":"cancel","id":2,"callId":"c1"}));
    assert_eq!(error_code(&out, 1), ErrorCode::InvitationEnded);
    let out =
        t.core
            .local_invitation_state("alice", "c1", LocalInvitationState::Canceled, None, None);
    assert_eq!(
        to(&out, 1),
        vec![local_state("c1", LocalInvitationState::Canceled)]
    );
}

#[test]
fn bridge_down_refuses_sip_invitations_but_not_web_ones() {
    let mut t = T::new();
    t.user(1, "alice");
    t.user(2, "bob");
    t.core.set_bridge_up(false);
    assert_eq!(
        error_code(&t.invite(1, "c1", "1005"), 1),
        ErrorCode::BridgeUnavailable
    );
    assert!(is_ok(&t.invite(1, "c2", "bob"), 1));
}

#[test]
fn sip_caller_rings_a_browser() {
    let mut t = T::new();
    t.user(1, "alice");
    t.user(2, "bob");
    let now = t.now();
    assert_eq!(
        t.core
            .send_remote_invitation("carol", "s1", "1000", "{}", now),
        Err(DeliveryError::NotOnline("carol".into()))
    );
    let out = t
        .core
        .send_remote_invitation("alice", "s1", "1000", "{}", now)
        .unwrap();
    assert_eq!(
        to(&out, 1)[0].to_text(),
        r#"{"type":"remote_invitation","callId":"s1","caller":"1000","content":"{}"}"#
    );
    assert_eq!(
        t.core
            .send_remote_invitation("alice", "s1", "1000", "{}", now),
        Err(DeliveryError::DuplicateCallId("s1".into()))
    );
    let out = t.send(1, json!({"type":"received","id":1,"callId":"s1"}));
    assert_eq!(
        bridge(&out),
        vec![BridgeEvent::InvitationReceived {
            call_id: "s1".into(),
            uid: "alice".into()
        }]
    );
    // bob cannot answer alice's call.
    let out = t.send(2, json!({"type":"accept","id":1,"callId":"s1"}));
    assert_eq!(error_code(&out, 2), ErrorCode::UnknownInvitation);
    assert!(bridge(&out).is_empty());
    let out = t.send(
        1,
        json!({"type":"accept","id":1,"callId":"s1","response":"ok"}),
    );
    assert_eq!(
        bridge(&out),
        vec![BridgeEvent::Accepted {
            call_id: "s1".into(),
            uid: "alice".into(),
            response: "ok".into()
        }]
    );
    let out = t.send(1, json!({"type":"accept","id":1,"callId":"s1"}));
    assert_eq!(error_code(&out, 1), ErrorCode::InvitationEnded);
    assert!(bridge(&out).is_empty());
    // A failure after accept (media never came up) still reaches the browser.
    let out = t
        .core
        .remote_invitation_failed("alice", "s1", RemoteFailureReason::AcceptFailure);
    assert!(to(&out, 1)[0].to_text().contains("ACCEPT_FAILURE"));
}

#[test]
fn refusing_a_sip_call_without_confirming_reports_received_first() {
    let mut t = T::new();
    t.user(1, "alice");
    let now = t.now();
    t.core
        .send_remote_invitation("alice", "s1", "1000", "{}", now)
        .unwrap();
    let out = t.send(
        1,
        json!({"type":"refuse","id":1,"callId":"s1","response":"busy"}),
    );
    assert_eq!(
        bridge(&out),
        vec![
            BridgeEvent::InvitationReceived {
                call_id: "s1".into(),
                uid: "alice".into()
            },
            BridgeEvent::Refused {
                call_id: "s1".into(),
                uid: "alice".into(),
                response: "busy".into()
            }
        ]
    );
}

#[test]
fn sip_caller_cancels_then_accept_is_an_error() {
    let mut t = T::new();
    t.user(1, "alice");
    let now = t.now();
    t.core
        .send_remote_invitation("alice", "s1", "1000", "{}", now)
        .unwrap();
    assert!(t.core.remote_invitation_canceled("bob", "s1").is_empty());
    let out = t.core.remote_invitation_canceled("alice", "s1");
    assert_eq!(
        to(&out, 1)[0].to_text(),
        r#"{"type":"remote_invitation_state","callId":"s1","state":"CANCELED"}"#
    );
    let out = t.send(1, json!({"type":"accept","id":1,"callId":"s1"}));
    assert_eq!(error_code(&out, 1), ErrorCode::InvitationEnded);
    assert!(bridge(&out).is_empty());
}

#[test]
fn sip_invitations_are_not_expired_by_the_hub() {
    let mut t = T::new();
    t.user(1, "alice");
    let now = t.now();
    t.core
        .send_remote_invitation("alice", "s1", "1000", "{}", now)
        .unwrap();
    t.invite(1, "c1", "1005");
    for _ in 0..4 {
        assert!(t.tick(Duration::from_secs(30)).is_empty());
        t.send(1, json!({"type":"ping"}));
    }
    assert_eq!(t.core.invitation_count(), 2);
}

#[test]
fn media_for_sip_calls_goes_to_the_bridge_and_back() {
    let mut t = T::new();
    t.user(1, "alice");
    let out = t.send(
        1,
        json!({"type":"media","id":1,"callId":"c9","payload":{"candidate":"x"}}),
    );
    assert_eq!(
        bridge(&out),
        vec![BridgeEvent::Media {
            call_id: "c9".into(),
            from_uid: "alice".into(),
            payload: json!({"candidate":"x"})
        }]
    );
    let out = t
        .core
        .send_media("alice", "c9", json!({"sdp":"answer"}))
        .unwrap();
    assert_eq!(
        to(&out, 1)[0].to_text(),
        r#"{"type":"media","callId":"c9","from":"bridge","payload":{"sdp":"answer"}}"#
    );
    assert_eq!(
        t.core.send_media("bob", "c9", json!({})),
        Err(DeliveryError::NotOnline("bob".into()))
    );
}

#[test]
fn bridge_peer_messages_reach_online_users_only() {
    let mut t = T::new();
    t.user(1, "alice");
    let out = t
        .core
        .send_peer_message("1005", "alice", "{\"Cmd\":\"EndCall\"}")
        .unwrap();
    assert_eq!(
        to(&out, 1),
        vec![ServerMsg::PeerMessage {
            from: "1005".into(),
            text: "{\"Cmd\":\"EndCall\"}".into()
        }]
    );
    assert_eq!(
        t.core.send_peer_message("1005", "bob", "x"),
        Err(DeliveryError::NotOnline("bob".into()))
    );
}

#[test]
fn closing_a_session_ends_its_sip_calls_through_the_bridge() {
    let mut t = T::new();
    t.user(1, "alice");
    t.invite(1, "c1", "1005");
    let out = t.core.close(1);
    assert_eq!(
        bridge(&out),
        vec![BridgeEvent::SessionClosed {
            uid: "alice".into()
        }]
    );
    assert_eq!(t.core.invitation_count(), 0);
    assert_eq!(t.core.session_count(), 0);
}

#[test]
fn state_names_are_rtms() {
    assert_eq!(
        LocalInvitationState::SentToRemote.as_str(),
        "SENT_TO_REMOTE"
    );
    assert_eq!(FailureReason::NotLoggedIn.as_str(), "NOT_LOGGEDIN");
    assert_eq!(FailureReason::InvalidArgument.as_str(), "INVALID_ARGUMENT");
    assert_eq!(
        RemoteFailureReason::AcceptFailure.as_str(),
        "ACCEPT_FAILURE"
    );
    assert_eq!(ConnectionChangeReason::RemoteLogin.as_str(), "REMOTE_LOGIN");
    assert!(LocalInvitationState::Canceled.is_final());
    assert!(!LocalInvitationState::ReceivedByRemote.is_final());
}

#[test]
fn settings_come_from_the_config() {
    use crate::config::Config;
    use std::path::Path;
    let rtx = std::fs::read_to_string("config/rtx.conf").unwrap();
    let config = Config::from_rtx_conf_str(Path::new("rtx.conf"), &rtx).unwrap();
    let s = HubSettings::from_config(&config);
    assert_eq!(s.appid, "srbridge-demo");
    assert_eq!(s.bridge_uid, "1000");
    assert!(s.token_secret.is_none());
    assert_eq!(s.max_content, 8192);

    let toml = r#"
[global]
appid = "a1"
sip_svr = "127.0.0.1:5060"
[auth]
token_secret = "k"
[limits]
max_ws_sessions = 7
"#;
    let config = Config::from_toml_str(Path::new("x.toml"), toml).unwrap();
    let s = HubSettings::from_config(&config);
    assert_eq!(s.appid, "a1");
    assert_eq!(s.bridge_uid, HubSettings::DEFAULT_BRIDGE_UID);
    assert_eq!(s.token_secret.as_ref().map(Secret::expose), Some("k"));
    assert_eq!(s.max_sessions, 7);
    assert_eq!(s.login_timeout, Duration::from_secs(10));
    assert_eq!(s.max_token_ttl, Duration::from_secs(86_400));
    assert!(s.allowed_origins.is_empty());

    let rtx_config = Config::from_rtx_conf_str(Path::new("rtx.conf"), &rtx).unwrap();
    let s = HubSettings::from_config(&rtx_config);
    for reserved in ["1000", "1005", "1012"] {
        assert!(s.is_reserved(reserved), "{reserved}");
    }
    assert!(!s.is_reserved("alice") && !s.is_reserved("1020"));

    let toml = r#"
[global]
appid = "a1"
sip_svr = "127.0.0.1:5060"
[http]
login_timeout = 3
allowed_origins = ["https://app.example.com", "*"]
[auth]
max_token_ttl = 600
"#;
    let s = HubSettings::from_config(&Config::from_toml_str(Path::new("x.toml"), toml).unwrap());
    assert_eq!(s.login_timeout, Duration::from_secs(3));
    assert_eq!(s.max_token_ttl, Duration::from_secs(600));
    assert_eq!(s.allowed_origins.len(), 2);
}

fn stream_events(out: &[Output]) -> Vec<crate::events::Event> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn logins_and_logouts_are_published_with_the_reason() {
    use crate::events::{Event, LogoutReason};
    let login = |uid: &str| Event::UserLogin {
        web_user: uid.into(),
    };
    let logout = |uid: &str, reason| Event::UserLogout {
        web_user: uid.into(),
        reason,
    };
    let mut t = T::new();
    assert_eq!(stream_events(&t.user(1, "alice")), [login("alice")]);
    let out = t.send(1, json!({"type":"logout","id":1}));
    assert_eq!(stream_events(&out), [logout("alice", LogoutReason::Logout)]);
    // with tokens, the same uid logging in on another socket replaces the first login
    let mut tokens = token_hub();
    let token = mint_token("s3cret", "alice", 1_000_060);
    for sid in [1, 2] {
        tokens.open(sid);
        let out = tokens.send(sid, login_msg("alice", "app", Some(&token)));
        let expected = if sid == 1 {
            vec![login("alice")]
        } else {
            vec![logout("alice", LogoutReason::Replaced), login("alice")]
        };
        assert_eq!(stream_events(&out), expected);
    }
    assert_eq!(
        stream_events(&tokens.core.close(2)),
        [logout("alice", LogoutReason::Closed)]
    );
    t.user(3, "bob");
    let out = t.tick(Duration::from_secs(600));
    assert_eq!(stream_events(&out), [logout("bob", LogoutReason::Timeout)]);
    // a refused login is no event
    t.open(4);
    let out = t.send(4, login_msg("carol", "wrong-app", None));
    assert!(stream_events(&out).is_empty());
}

// ---- cluster presence ----

fn remote(uids: &[&str]) -> HashSet<String> {
    uids.iter().map(|u| u.to_string()).collect()
}

#[test]
fn users_on_other_bridges_are_online_to_queries_and_subscribers() {
    let mut t = T::new();
    t.user(1, "alice");
    t.send(
        1,
        json!({"type":"subscribe_online","id":1,"uids":["carol","dave"]}),
    );
    let out = t.core.set_remote_online(remote(&["carol"]));
    assert_eq!(
        to(&out, 1),
        vec![ServerMsg::PeersStatus {
            status: BTreeMap::from([("carol".to_string(), PeerOnlineState::Online)])
        }]
    );
    let out = t.send(
        1,
        json!({"type":"query_online","id":2,"uids":["carol","dave"]}),
    );
    assert_eq!(
        to(&out, 1)[0].to_text(),
        r#"{"type":"ok","id":2,"online":{"carol":true,"dave":false}}"#
    );
    // Her bridge's heartbeat lapses: she goes offline.
    let out = t.core.set_remote_online(HashSet::new());
    assert_eq!(
        to(&out, 1),
        vec![ServerMsg::PeersStatus {
            status: BTreeMap::from([("carol".to_string(), PeerOnlineState::Offline)])
        }]
    );
}

#[test]
fn without_tokens_a_uid_online_on_another_bridge_cannot_log_in_here() {
    let mut t = T::new();
    t.core.set_remote_online(remote(&["alice"]));
    t.open(1);
    let out = t.send(1, login_msg("alice", "app", None));
    assert_eq!(error_code(&out, 1), ErrorCode::UidInUse);
    assert!(!t.core.is_online("alice"));
}

#[test]
fn with_tokens_a_login_on_another_bridge_takes_over() {
    let mut t = token_hub();
    let token = mint_token("s3cret", "alice", 1_000_060);
    t.open(1);
    assert!(is_ok(
        &t.send(1, login_msg("alice", "app", Some(&token))),
        1
    ));
    let out = t.core.logged_in_elsewhere("alice");
    assert_eq!(
        to(&out, 1),
        vec![ServerMsg::ConnectionState {
            state: ConnectionState::Aborted,
            reason: ConnectionChangeReason::RemoteLogin,
        }]
    );
    assert_eq!(closed(&out), vec![1]);
    assert_eq!(
        bridge(&out),
        vec![BridgeEvent::SessionClosed {
            uid: "alice".into()
        }]
    );
    assert!(!t.core.is_online("alice"));
    assert!(t.core.logged_in_elsewhere("nobody").is_empty());
}

#[test]
fn bridge_events_survive_a_json_round_trip() {
    let event = BridgeEvent::Media {
        call_id: "c1".into(),
        from_uid: "alice".into(),
        payload: json!({"kind":"offer","sdp":"v=0"}),
    };
    let text = serde_json::to_string(&event).unwrap();
    assert_eq!(serde_json::from_str::<BridgeEvent>(&text).unwrap(), event);
}
