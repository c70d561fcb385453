//! The call manager driven through fake ports: routing, timers, limits, drain and clean-up,
//! without a network. (The SIP and browser ends are proven against real peers in `tests/`.)

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::machine::{Direction, FailureReason, LocalState};
use super::manager::{BrowserEvent, CallManager};
use super::ports::*;
use crate::config::Config;
use crate::events::EventBus;
use crate::ops::metrics::{Limit, Metrics};

#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Local(String, LocalState, Option<FailureReason>, Option<String>),
    Ring(String, String, String),
    CancelRemote(String),
    ExpireRemote(String),
    Peer(String, String, String),
    Media(String, serde_json::Value),
}

#[derive(Clone, Default)]
struct FakeBrowser {
    seen: Arc<Mutex<Vec<Seen>>>,
    online: Arc<Mutex<Vec<String>>>,
}

impl FakeBrowser {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    fn push(&self, s: Seen) {
        self.seen.lock().unwrap().push(s);
    }
}

impl BrowserSide for FakeBrowser {
    fn local_state(
        &self,
        uid: &str,
        _call_id: &str,
        state: LocalState,
        response: Option<String>,
        reason: Option<FailureReason>,
    ) {
        self.push(Seen::Local(uid.into(), state, reason, response));
    }
    fn ring(&self, uid: &str, _call_id: &str, caller: &str, content: &str) -> bool {
        if !self.online.lock().unwrap().iter().any(|u| u == uid) {
            return false;
        }
        self.push(Seen::Ring(uid.into(), caller.into(), content.into()));
        true
    }
    fn cancel_remote(&self, uid: &str, _call_id: &str) {
        self.push(Seen::CancelRemote(uid.into()));
    }
    fn expire_remote(&self, uid: &str, _call_id: &str) {
        self.push(Seen::ExpireRemote(uid.into()));
    }
    fn peer_message(&self, from: &str, uid: &str, text: &str) {
        self.push(Seen::Peer(from.into(), uid.into(), text.into()));
    }
    fn media(&self, uid: &str, _call_id: &str, payload: serde_json::Value) {
        self.push(Seen::Media(uid.into(), payload));
    }
}

struct FakeSip {
    placed: mpsc::UnboundedSender<(OutgoingCallRequest, SipLegRemote)>,
}

impl SipSide for FakeSip {
    fn place_call(&self, request: OutgoingCallRequest) -> SipLeg {
        let (leg, remote) = SipLeg::pair();
        let _ = self.placed.send((request, remote));
        leg
    }
}

#[derive(Clone, Default)]
struct FakeMedia {
    open: Arc<Mutex<usize>>,
    refuse_offers: bool,
    events: Arc<Mutex<Vec<mpsc::Sender<MediaEvent>>>>,
    browser_messages: Arc<Mutex<Vec<serde_json::Value>>>,
    answered: Arc<Mutex<usize>>,
}

struct FakeCallMedia {
    open: Arc<Mutex<usize>>,
    closed: bool,
    refuse_offers: bool,
    browser_messages: Arc<Mutex<Vec<serde_json::Value>>>,
    answered: Arc<Mutex<usize>>,
}

impl CallMedia for FakeCallMedia {
    fn sip_offer(&mut self) -> Result<String, MediaError> {
        Ok("v=0 offer".into())
    }
    fn sip_answer(&mut self, offer: &str) -> Result<String, MediaError> {
        if self.refuse_offers {
            Err(MediaError::NoCommonCodec(offer.into()))
        } else {
            Ok("v=0 answer".into())
        }
    }
    fn sip_remote_answer(&mut self, _answer: &str) -> Result<(), MediaError> {
        Ok(())
    }
    fn sip_reoffer(&mut self, _offer: Option<&str>) -> Option<String> {
        Some("v=0 reanswer".into())
    }
    async fn browser_message(&mut self, payload: serde_json::Value) {
        self.browser_messages.lock().unwrap().push(payload);
    }
    fn answered(&mut self) {
        *self.answered.lock().unwrap() += 1;
    }
    fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            *self.open.lock().unwrap() -= 1;
        }
    }
}

impl MediaFactory for FakeMedia {
    type Media = FakeCallMedia;
    fn create(
        &self,
        _call_id: &str,
        _direction: Direction,
        _sip_number: &str,
    ) -> Result<(FakeCallMedia, mpsc::Receiver<MediaEvent>), MediaError> {
        *self.open.lock().unwrap() += 1;
        let (tx, rx) = mpsc::channel(8);
        self.events.lock().unwrap().push(tx);
        Ok((
            FakeCallMedia {
                open: Arc::clone(&self.open),
                closed: false,
                refuse_offers: self.refuse_offers,
                browser_messages: Arc::clone(&self.browser_messages),
                answered: Arc::clone(&self.answered),
            },
            rx,
        ))
    }
}

struct Rig {
    manager: CallManager<FakeBrowser, FakeSip, FakeMedia>,
    browser: FakeBrowser,
    media: FakeMedia,
    placed: mpsc::UnboundedReceiver<(OutgoingCallRequest, SipLegRemote)>,
    config: watch::Sender<Arc<Config>>,
    events: EventBus,
    /// This manager's own registry: what it counted, and nothing else.
    metrics: Arc<Metrics>,
}

fn config(extra: &str) -> Arc<Config> {
    let text = format!(
        "[global]\nappid = \"a\"\nsip_svr = \"127.0.0.1:5060\"\n\
         [rtm2sip]\non = true\nacc_rule = \"1005;10[06-19]\"\n\
         [proxy]\non = true\nsip_account = \"1000\"\nsip_pwd = \"1234\"\nrtm_account = \"bridge\"\n\
         [sip]\nring_timeout = 2\n{extra}"
    );
    Arc::new(Config::from_toml_str(Path::new("test.toml"), &text).expect("test config"))
}

fn rig_with(extra: &str, media: FakeMedia) -> Rig {
    let browser = FakeBrowser::default();
    let (placed_tx, placed) = mpsc::unbounded_channel();
    let (config, config_rx) = watch::channel(config(extra));
    let events = EventBus::new();
    let metrics = Arc::new(Metrics::new());
    let manager = CallManager::new(
        browser.clone(),
        FakeSip { placed: placed_tx },
        media.clone(),
        config_rx,
        crate::ops::lifecycle::Lifecycle::new(),
        events.clone(),
        Arc::clone(&metrics),
    );
    Rig {
        manager,
        browser,
        media,
        placed,
        config,
        events,
        metrics,
    }
}

fn rig() -> Rig {
    rig_with("", FakeMedia::default())
}

fn invite(call_id: &str, uid: &str, callee: &str) -> BrowserEvent {
    BrowserEvent::Invite {
        call_id: call_id.into(),
        from_uid: uid.into(),
        callee: callee.into(),
        content: String::new(),
    }
}

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

async fn next_command(remote: &mut SipLegRemote) -> SipLegCommand {
    tokio::time::timeout(Duration::from_secs(5), remote.commands.recv())
        .await
        .expect("a SIP command")
        .expect("leg open")
}

fn local_states(seen: &[Seen]) -> Vec<(LocalState, Option<FailureReason>)> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Local(_, state, reason, _) => Some((*state, *reason)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn web_to_sip_answered_then_bye_from_phone_ends_and_forgets_the_call() {
    let mut rig = rig();
    rig.manager.handle_browser(invite("c1", "alice", "1005"));
    let (request, remote) = rig.placed.recv().await.expect("INVITE placed");
    assert_eq!(request.callee, "1005");
    assert_eq!(request.caller_id, "alice");
    assert_eq!(request.sdp_offer, "v=0 offer");
    assert_eq!(rig.manager.active(), 1);
    remote
        .events
        .send(SipLegEvent::Provisional {
            code: 180,
            sdp: None,
        })
        .await
        .unwrap();
    remote
        .events
        .send(SipLegEvent::Answered {
            sdp: "v=0 their answer".into(),
        })
        .await
        .unwrap();
    settle().await;
    assert_eq!(
        rig.manager.get("c1").expect("in progress").state,
        "established"
    );
    remote.events.send(SipLegEvent::RemoteBye).await.unwrap();
    settle().await;
    let seen = rig.browser.seen();
    assert_eq!(
        local_states(&seen),
        vec![
            (LocalState::SentToRemote, None),
            (LocalState::ReceivedByRemote, None),
            (LocalState::AcceptedByRemote, None)
        ]
    );
    assert!(
        seen.iter().any(|s| matches!(s, Seen::Peer(from, to, text)
            if from == "1005" && to == "alice" && text.contains("EndCall"))),
        "EndCall sent to the browser: {seen:?}"
    );
    assert_eq!(rig.manager.active(), 0, "call forgotten");
    assert_eq!(*rig.media.open.lock().unwrap(), 0, "media released");
}

#[tokio::test]
async fn number_outside_acc_rule_is_refused_without_sip_or_media() {
    let mut rig = rig();
    rig.manager.handle_browser(invite("c1", "alice", "2000"));
    settle().await;
    assert!(rig.placed.try_recv().is_err(), "no INVITE");
    assert_eq!(
        local_states(&rig.browser.seen()),
        vec![(LocalState::Failure, Some(FailureReason::InvalidArgument))]
    );
    assert_eq!(rig.manager.active(), 0);
    assert_eq!(*rig.media.open.lock().unwrap(), 0);
}

#[tokio::test]
async fn end_call_peer_message_sends_bye_only_for_the_senders_call() {
    let mut rig = rig();
    rig.manager.handle_browser(invite("c1", "alice", "1005"));
    let (_, mut remote) = rig.placed.recv().await.unwrap();
    remote
        .events
        .send(SipLegEvent::Answered { sdp: "x".into() })
        .await
        .unwrap();
    settle().await;
    // bob cannot hang up alice's call
    rig.manager.handle_browser(BrowserEvent::PeerMessage {
        from_uid: "bob".into(),
        to: "1005".into(),
        text: r#"{"Cmd":"EndCall"}"#.into(),
    });
    // nor can anyone cancel it by id
    rig.manager.handle_browser(BrowserEvent::Cancel {
        call_id: "c1".into(),
        from_uid: "bob".into(),
    });
    settle().await;
    assert_eq!(rig.manager.active(), 1);
    rig.manager.handle_browser(BrowserEvent::PeerMessage {
        from_uid: "alice".into(),
        to: "1005".into(),
        text: r#"{"Cmd":"EndCall"}"#.into(),
    });
    assert_eq!(next_command(&mut remote).await, SipLegCommand::Bye);
    settle().await;
    assert_eq!(rig.manager.active(), 0);
}

#[tokio::test]
async fn browser_cancel_sends_cancel_and_the_call_ends_when_the_invite_does() {
    let mut rig = rig();
    rig.manager.handle_browser(invite("c1", "alice", "1005"));
    let (_, mut remote) = rig.placed.recv().await.unwrap();
    rig.manager.handle_browser(BrowserEvent::Cancel {
        call_id: "c1".into(),
        from_uid: "alice".into(),
    });
    assert_eq!(next_command(&mut remote).await, SipLegCommand::Cancel);
    settle().await;
    assert_eq!(rig.manager.active(), 1, "waiting for the 487");
    remote
        .events
        .send(SipLegEvent::Failed {
            code: 487,
            reason: "Request Terminated".into(),
        })
        .await
        .unwrap();
    settle().await;
    assert_eq!(rig.manager.active(), 0);
    assert!(local_states(&rig.browser.seen()).contains(&(LocalState::Canceled, None)));
}

#[tokio::test(start_paused = true)]
async fn no_answer_in_time_cancels_and_fails_with_no_response() {
    let mut rig = rig();
    rig.manager.handle_browser(invite("c1", "alice", "1005"));
    let (_, mut remote) = rig.placed.recv().await.unwrap();
    // ring_timeout = 2 s in the test config; time is paused and auto-advances
    assert_eq!(next_command(&mut remote).await, SipLegCommand::Cancel);
    assert!(local_states(&rig.browser.seen())
        .contains(&(LocalState::Failure, Some(FailureReason::PeerNoResponse))));
    // the INVITE never finishes: the cancel guard releases the call anyway
    tokio::time::sleep(Duration::from_secs(40)).await;
    settle().await;
    assert_eq!(rig.manager.active(), 0);
}

fn incoming(call_id: &str, uid: &str, sdp: Option<&str>) -> (IncomingSipCall, SipLegRemote) {
    let (leg, remote) = SipLeg::pair();
    (
        IncomingSipCall {
            call_id: call_id.into(),
            target_uid: uid.into(),
            caller_number: "1001".into(),
            caller_display: Some("Desk".into()),
            sdp_offer: sdp.map(str::to_owned),
            sip_call_id: Some(format!("{call_id}@phone")),
            leg,
        },
        remote,
    )
}

#[tokio::test]
async fn sip_to_web_rings_after_delivery_and_answers_after_accept() {
    let rig = rig();
    rig.browser.online.lock().unwrap().push("alice".into());
    let (call, mut remote) = incoming("s1", "alice", Some("v=0 phone offer"));
    rig.manager.handle_incoming(call);
    settle().await;
    assert!(
        rig.browser
            .seen()
            .iter()
            .any(|s| matches!(s, Seen::Ring(uid, caller, _) if uid == "alice" && caller == "1001")),
        "{:?}",
        rig.browser.seen()
    );
    // Right after the invitation, the browser is asked to offer, so its media is up before it
    // accepts.
    let seen = rig.browser.seen();
    let ring = seen.iter().position(|s| matches!(s, Seen::Ring(..)));
    let prepare = seen
        .iter()
        .position(|s| matches!(s, Seen::Media(uid, p) if uid == "alice" && p["kind"] == "prepare"));
    assert!(ring.is_some() && prepare == ring.map(|r| r + 1), "{seen:?}");
    assert!(
        remote.commands.try_recv().is_err(),
        "no 180 before delivery"
    );
    rig.manager
        .handle_browser(BrowserEvent::InvitationReceived {
            call_id: "s1".into(),
            uid: "alice".into(),
        });
    assert_eq!(next_command(&mut remote).await, SipLegCommand::Ringing);
    // someone else's accept does nothing
    rig.manager.handle_browser(BrowserEvent::Accepted {
        call_id: "s1".into(),
        uid: "mallory".into(),
        response: String::new(),
    });
    settle().await;
    assert!(remote.commands.try_recv().is_err(), "no 200 for a stranger");
    assert_eq!(
        *rig.media.answered.lock().unwrap(),
        0,
        "no audio passes before the accept"
    );
    rig.manager.handle_browser(BrowserEvent::Accepted {
        call_id: "s1".into(),
        uid: "alice".into(),
        response: String::new(),
    });
    assert_eq!(
        next_command(&mut remote).await,
        SipLegCommand::Answer("v=0 answer".into())
    );
    assert_eq!(
        *rig.media.answered.lock().unwrap(),
        1,
        "media told with the 200"
    );
    // the browser's WebSocket closes mid-call: BYE
    rig.manager.handle_browser(BrowserEvent::SessionClosed {
        uid: "alice".into(),
    });
    assert_eq!(next_command(&mut remote).await, SipLegCommand::Bye);
    settle().await;
    assert_eq!(rig.manager.active(), 0);
}

#[tokio::test]
async fn sip_to_web_offline_user_gets_480() {
    let rig = rig();
    let (call, mut remote) = incoming("s1", "nobody", Some("v=0"));
    rig.manager.handle_incoming(call);
    match next_command(&mut remote).await {
        SipLegCommand::Reject { code, .. } => assert_eq!(code, 480),
        other => panic!("expected 480, got {other:?}"),
    }
    settle().await;
    assert_eq!(rig.manager.active(), 0);
    assert_eq!(*rig.media.open.lock().unwrap(), 0);
}

#[tokio::test]
async fn unusable_offer_is_refused_488_before_ringing() {
    let rig = rig_with(
        "",
        FakeMedia {
            refuse_offers: true,
            ..FakeMedia::default()
        },
    );
    rig.browser.online.lock().unwrap().push("alice".into());
    let (call, mut remote) = incoming("s1", "alice", Some("v=0 g729 only"));
    rig.manager.handle_incoming(call);
    match next_command(&mut remote).await {
        SipLegCommand::Reject { code, .. } => assert_eq!(code, 488),
        other => panic!("expected 488, got {other:?}"),
    }
    assert!(rig.browser.seen().is_empty(), "the browser never rang");
    assert_eq!(*rig.media.open.lock().unwrap(), 0);
}

#[tokio::test]
async fn limits_and_drain_refuse_new_calls_but_keep_calls_in_progress() {
    let mut rig = rig_with("[limits]\nmax_calls = 1\n", FakeMedia::default());
    rig.manager.handle_browser(invite("c1", "alice", "1005"));
    let (_, remote) = rig.placed.recv().await.unwrap();
    rig.manager.handle_browser(invite("c2", "bob", "1006"));
    settle().await;
    assert!(rig.placed.try_recv().is_err(), "second call refused");
    let bob_states: Vec<_> = rig
        .browser
        .seen()
        .into_iter()
        .filter(|s| matches!(s, Seen::Local(uid, ..) if uid == "bob"))
        .collect();
    assert!(
        matches!(&bob_states[..], [Seen::Local(_, LocalState::Failure, _, Some(r))] if r.contains("too many")),
        "{bob_states:?}"
    );
    // an incoming call over the limit gets 503
    let (call, mut phone) = incoming("s1", "carol", Some("v=0"));
    rig.manager.handle_incoming(call);
    assert!(matches!(
        next_command(&mut phone).await,
        SipLegCommand::Reject { code: 503, .. }
    ));

    // a reload raises the limit: new calls are accepted again
    rig.config
        .send(config("[limits]\nmax_calls = 5\n"))
        .expect("config watch");
    rig.manager.handle_browser(invite("c3", "bob", "1006"));
    let (request, _remote3) = rig.placed.recv().await.expect("accepted after reload");
    assert_eq!(request.callee, "1006");

    rig.manager.start_draining();
    rig.manager.handle_browser(invite("c4", "dave", "1007"));
    settle().await;
    assert!(rig.placed.try_recv().is_err(), "refused while draining");
    assert_eq!(rig.manager.active(), 2, "calls in progress go on");
    drop(remote);
    assert_eq!(rig.manager.wait_idle(Duration::from_millis(10)).await, 1);
    // counted in this manager's registry: bob's and carol's refusals, dave's, two calls started
    let m = &rig.metrics;
    assert_eq!(m.limits_hit(Limit::MaxCalls), 2);
    assert_eq!(m.limits_hit(Limit::Draining), 1);
    assert_eq!(m.calls_started.get(Direction::WebToSip).get(), 2);
    assert_eq!(m.calls_started.get(Direction::SipToWeb).get(), 0);
}

#[tokio::test]
async fn media_messages_reach_the_call_and_media_failure_ends_it() {
    let mut rig = rig();
    rig.manager.handle_browser(invite("c1", "alice", "1005"));
    let (_, mut remote) = rig.placed.recv().await.unwrap();
    remote
        .events
        .send(SipLegEvent::Answered { sdp: "x".into() })
        .await
        .unwrap();
    rig.manager.handle_browser(BrowserEvent::Media {
        call_id: "c1".into(),
        from_uid: "alice".into(),
        payload: serde_json::json!({"type": "offer"}),
    });
    settle().await;
    assert_eq!(rig.media.browser_messages.lock().unwrap().len(), 1);
    let media_tx = rig.media.events.lock().unwrap()[0].clone();
    media_tx
        .send(MediaEvent::ToBrowser(serde_json::json!({"type": "answer"})))
        .await
        .unwrap();
    settle().await;
    assert!(rig
        .browser
        .seen()
        .iter()
        .any(|s| matches!(s, Seen::Media(uid, p) if uid == "alice" && p["type"] == "answer")));
    media_tx
        .send(MediaEvent::Failed("ICE failed".into()))
        .await
        .unwrap();
    assert_eq!(next_command(&mut remote).await, SipLegCommand::Bye);
    settle().await;
    assert_eq!(rig.manager.active(), 0);
}

#[tokio::test]
async fn reoffer_is_answered_by_the_media() {
    let mut rig = rig();
    rig.manager.handle_browser(invite("c1", "alice", "1005"));
    let (_, remote) = rig.placed.recv().await.unwrap();
    remote
        .events
        .send(SipLegEvent::Answered { sdp: "x".into() })
        .await
        .unwrap();
    let (reply, answer) = tokio::sync::oneshot::channel();
    remote
        .events
        .send(SipLegEvent::Reoffer {
            sdp: Some("v=0 hold".into()),
            reply,
        })
        .await
        .unwrap();
    assert_eq!(answer.await.unwrap().as_deref(), Some("v=0 reanswer"));
}

#[tokio::test]
async fn a_dialog_that_vanishes_mid_call_ends_the_call() {
    let mut rig = rig();
    rig.manager.handle_browser(invite("c1", "alice", "1005"));
    let (_, remote) = rig.placed.recv().await.unwrap();
    remote
        .events
        .send(SipLegEvent::Answered { sdp: "x".into() })
        .await
        .unwrap();
    settle().await;
    drop(remote);
    settle().await;
    assert_eq!(rig.manager.active(), 0);
    assert!(rig
        .browser
        .seen()
        .iter()
        .any(|s| matches!(s, Seen::Peer(_, _, text) if text.contains("EndCall"))));
}

#[tokio::test]
async fn call_setups_over_the_per_second_limit_are_refused() {
    let mut rig = rig_with("[limits]\nmax_setups_per_sec = 2\n", FakeMedia::default());
    for (id, uid) in [("r1", "u1"), ("r2", "u2"), ("r3", "u3")] {
        rig.manager.handle_browser(invite(id, uid, "1005"));
    }
    settle().await;
    let mut placed = 0;
    while rig.placed.try_recv().is_ok() {
        placed += 1;
    }
    assert_eq!(placed, 2, "a burst of max_setups_per_sec is let through");
    let refused: Vec<_> = rig
        .browser
        .seen()
        .into_iter()
        .filter(|s| matches!(s, Seen::Local(uid, LocalState::Failure, _, Some(r)) if uid == "u3" && r.contains("per second")))
        .collect();
    assert_eq!(refused.len(), 1, "{:?}", rig.browser.seen());
}

/// The next `n` events of the stream (generous bound: the call tasks run on this runtime).
async fn stream_events(sub: &mut crate::events::Subscription, n: usize) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for _ in 0..n {
        let delivery = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("an event")
            .expect("bus alive");
        match delivery {
            crate::events::Delivery::Event(e) => out.push(serde_json::from_str(&e.json).unwrap()),
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

fn types(events: &[serde_json::Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn web_to_sip_call_events_follow_the_call_with_its_sip_call_id_code_and_rtm_state() {
    let mut rig = rig();
    let mut sub = rig.events.subscribe(None);
    rig.manager.handle_browser(invite("c1", "alice", "1005"));
    let (_, remote) = rig.placed.recv().await.expect("INVITE placed");
    for event in [
        SipLegEvent::Dialog {
            sip_call_id: "x1@bridge".into(),
        },
        SipLegEvent::Provisional {
            code: 180,
            sdp: None,
        },
        SipLegEvent::Answered { sdp: "v=0".into() },
        SipLegEvent::RemoteBye,
    ] {
        remote.events.send(event).await.unwrap();
    }
    let events = stream_events(&mut sub, 4).await;
    assert_eq!(
        types(&events),
        [
            "call.created",
            "call.ringing",
            "call.answered",
            "call.ended"
        ]
    );
    for e in &events {
        assert_eq!(
            (
                e["call_id"].as_str(),
                e["web_user"].as_str(),
                e["number"].as_str()
            ),
            (Some("c1"), Some("alice"), Some("1005"))
        );
        assert_eq!(e["direction"], "web_to_sip");
    }
    assert!(events[0]["sip_call_id"].is_null(), "no dialog yet");
    assert_eq!(events[1]["sip_call_id"], "x1@bridge");
    assert_eq!(events[1]["sip_code"], 180);
    let ended = &events[3];
    assert_eq!(ended["cause"], "sip_hangup");
    assert_eq!(ended["sip_code"], 200);
    assert_eq!(ended["rtm_state"], "ACCEPTED_BY_REMOTE");
    assert!(ended["talk_ms"].is_u64() && ended["duration_ms"].is_u64());
    let ids: Vec<u64> = events.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
}

#[tokio::test]
async fn refused_and_failed_calls_end_with_their_cause_code_and_rtm_reason() {
    let mut rig = rig();
    let mut sub = rig.events.subscribe(None);
    rig.manager.handle_browser(invite("c1", "alice", "2000"));
    let events = stream_events(&mut sub, 2).await;
    assert_eq!(types(&events), ["call.created", "call.ended"]);
    assert_eq!(events[1]["cause"], "rejected");
    assert!(events[1]["detail"].is_string());
    assert!(events[1]["sip_code"].is_null(), "nothing was sent");
    assert_eq!(events[1]["rtm_state"], "FAILURE");
    assert_eq!(events[1]["rtm_reason"], "INVALID_ARGUMENT");

    rig.manager.handle_browser(invite("c2", "alice", "1005"));
    let (_, remote) = rig.placed.recv().await.expect("INVITE placed");
    remote
        .events
        .send(SipLegEvent::Failed {
            code: 486,
            reason: "Busy Here".into(),
        })
        .await
        .unwrap();
    let events = stream_events(&mut sub, 2).await;
    assert_eq!(types(&events), ["call.created", "call.ended"]);
    assert_eq!(events[1]["cause"], "sip_failed");
    assert_eq!(events[1]["sip_code"], 486);
    assert_eq!(events[1]["rtm_state"], "REFUSED_BY_REMOTE");
    assert!(events[1]["talk_ms"].is_null());
}

#[tokio::test]
async fn sip_to_web_events_ring_on_delivery_and_a_phone_cancel_ends_with_487() {
    let rig = rig();
    rig.browser.online.lock().unwrap().push("alice".into());
    let mut sub = rig.events.subscribe(None);
    let (call, remote) = incoming("s1", "alice", Some("v=0 phone offer"));
    rig.manager.handle_incoming(call);
    rig.manager
        .handle_browser(BrowserEvent::InvitationReceived {
            call_id: "s1".into(),
            uid: "alice".into(),
        });
    let events = stream_events(&mut sub, 2).await;
    assert_eq!(types(&events), ["call.created", "call.ringing"]);
    assert_eq!(events[0]["direction"], "sip_to_web");
    assert_eq!(events[0]["sip_call_id"], "s1@phone");
    assert_eq!(events[0]["number"], "1001");
    assert!(events[1].get("sip_code").is_none());
    remote.events.send(SipLegEvent::Canceled).await.unwrap();
    let ended = stream_events(&mut sub, 1).await.remove(0);
    assert_eq!(ended["type"], "call.ended");
    assert_eq!(ended["cause"], "sip_canceled");
    assert_eq!(ended["sip_code"], 487);
    assert_eq!(ended["rtm_state"], "CANCELED");
}
