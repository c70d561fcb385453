//! The calls in progress: creates a [`Call`] per invitation or INVITE, routes every later event to
//! its call, runs each call as its own task, and forgets it when it ends.
//!
//! Each call task owns its state machine, its SIP dialog handle, its media and its timer, and
//! carries out the machine's actions; nothing is shared between calls but the registry below (taken
//! only when a call starts, changes phase or ends: never per packet).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, watch, Notify};
use tracing::Instrument;

use super::machine::{
    Action, Call, CallPolicy, Direction, EndReason, Event, FailureReason, HubAction, LocalState,
    Phase, SipAction,
};
use super::ports::{
    BrowserSide, CallMedia, IncomingSipCall, MediaError, MediaEvent, MediaFactory,
    OutgoingCallRequest, SipLeg, SipLegCommand, SipLegEvent, SipSide,
};
use crate::config::Config;
use crate::events::{CallEnd, CallFacts, Event as StreamEvent, EventBus};
use crate::ops::lifecycle::{CallGuard, Lifecycle};
use crate::ops::metrics::{Limit, Metrics};

/// What the browser side reports (defined with the other ports).
pub use super::ports::BrowserEvent;

/// A call in progress, as the status API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CallInfo {
    /// The call id (the invitation id for browser calls).
    pub id: String,
    /// Who started the call (`web_to_sip` or `sip_to_web` in JSON).
    pub direction: Direction,
    /// The web user.
    pub uid: String,
    /// The SIP party.
    pub sip_number: String,
    /// `setup`, `ringing`, `cancelling`, `established`.
    pub state: &'static str,
    /// Seconds since the call started.
    pub duration_s: f64,
    /// Seconds since it was answered, once it has been.
    pub talk_s: Option<f64>,
    #[serde(skip)]
    started: Instant,
    #[serde(skip)]
    answered: Option<Instant>,
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Setup => "setup",
        Phase::Ringing => "ringing",
        Phase::Cancelling => "cancelling",
        Phase::Established => "established",
        Phase::Ended => "ended",
    }
}

/// Input routed to one call's task.
#[derive(Debug)]
enum CallInput {
    Machine(Event),
    Media(serde_json::Value),
}

struct Slot {
    info: CallInfo,
    input: mpsc::UnboundedSender<CallInput>,
    /// Counts the call for the drain and `srbridge_calls_active` until the call is forgotten.
    _guard: CallGuard,
}

/// Token bucket for `limits.max_setups_per_sec`.
struct SetupRate {
    tokens: f64,
    at: Instant,
}

struct Inner<B, S, M> {
    browser: B,
    sip: S,
    media: M,
    config: watch::Receiver<Arc<Config>>,
    calls: Mutex<HashMap<String, Slot>>,
    lifecycle: Lifecycle,
    setups: Mutex<SetupRate>,
    idle: Notify,
    events: EventBus,
    metrics: Arc<Metrics>,
}

/// The calls in progress and the rules for starting new ones. Cheap to clone.
pub struct CallManager<B, S, M> {
    inner: Arc<Inner<B, S, M>>,
}

impl<B, S, M> Clone for CallManager<B, S, M> {
    fn clone(&self) -> Self {
        CallManager {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// Why a new call was refused before it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Draining,
    TooManyCalls,
    TooManySetups,
    DuplicateId,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::Draining => "the bridge is shutting down",
            Refusal::TooManyCalls => "too many calls in progress",
            Refusal::TooManySetups => "too many new calls per second",
            Refusal::DuplicateId => "duplicate call id",
        }
    }

    fn count(self, metrics: &Metrics) {
        let limit = match self {
            Refusal::Draining => Limit::Draining,
            Refusal::TooManyCalls => Limit::MaxCalls,
            Refusal::TooManySetups => Limit::MaxSetupsPerSec,
            Refusal::DuplicateId => return,
        };
        metrics.limit_hit(limit);
    }
}

impl<B: BrowserSide, S: SipSide, M: MediaFactory> CallManager<B, S, M> {
    /// A manager with no calls. `config` is re-read at each call start, so a reload changes
    /// `acc_rule`, limits and timeouts for new calls without touching those in progress.
    /// `lifecycle` is the process's drain state: while it drains, new calls are refused.
    /// Each call's `call.*` events go to `events`.
    pub fn new(
        browser: B,
        sip: S,
        media: M,
        config: watch::Receiver<Arc<Config>>,
        lifecycle: Lifecycle,
        events: EventBus,
        metrics: Arc<Metrics>,
    ) -> Self {
        let burst = f64::from(config.borrow().limits.max_setups_per_sec);
        CallManager {
            inner: Arc::new(Inner {
                browser,
                sip,
                media,
                config,
                calls: Mutex::new(HashMap::new()),
                lifecycle,
                setups: Mutex::new(SetupRate {
                    tokens: burst,
                    at: Instant::now(),
                }),
                idle: Notify::new(),
                events,
                metrics,
            }),
        }
    }

    fn calls(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        // A panic while holding this lock cannot leave the map half-updated (single inserts and
        // removes), so a poisoned lock is still usable.
        self.inner
            .calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The browser side's event for the bridge.
    pub fn handle_browser(&self, event: BrowserEvent) {
        match event {
            BrowserEvent::Invite {
                call_id,
                from_uid,
                callee,
                content,
            } => self.start_web_to_sip(call_id, from_uid, callee, content),
            BrowserEvent::Cancel { call_id, from_uid } => self.route(
                &call_id,
                &from_uid,
                CallInput::Machine(Event::BrowserCanceled),
            ),
            BrowserEvent::InvitationReceived { call_id, uid } => self.route(
                &call_id,
                &uid,
                CallInput::Machine(Event::InvitationDelivered),
            ),
            BrowserEvent::Accepted { call_id, uid, .. } => {
                self.route(&call_id, &uid, CallInput::Machine(Event::BrowserAccepted))
            }
            BrowserEvent::Refused {
                call_id,
                uid,
                response,
            } => self.route(
                &call_id,
                &uid,
                CallInput::Machine(Event::BrowserRefused { response }),
            ),
            BrowserEvent::PeerMessage { from_uid, to, text } => {
                self.peer_message(&from_uid, &to, &text)
            }
            BrowserEvent::Media {
                call_id,
                from_uid,
                payload,
            } => self.route(&call_id, &from_uid, CallInput::Media(payload)),
            BrowserEvent::SessionClosed { uid } => {
                let inputs: Vec<_> = self
                    .calls()
                    .values()
                    .filter(|slot| slot.info.uid == uid)
                    .map(|slot| slot.input.clone())
                    .collect();
                for input in inputs {
                    let _ = input.send(CallInput::Machine(Event::BrowserGone));
                }
            }
        }
    }

    /// Sends input to a call, if it exists and belongs to `uid` (a browser cannot touch
    /// another user's call).
    fn route(&self, call_id: &str, uid: &str, input: CallInput) {
        let calls = self.calls();
        match calls.get(call_id) {
            Some(slot) if slot.info.uid == uid => {
                let _ = slot.input.send(input);
            }
            Some(_) => tracing::warn!(call_id, uid, "event for another user's call ignored"),
            None => tracing::debug!(call_id, uid, "event for an unknown or ended call ignored"),
        }
    }

    /// `{"Cmd":"EndCall"}` from a browser ends its call with `to` (or its only call).
    fn peer_message(&self, from_uid: &str, to: &str, text: &str) {
        if !is_end_call(text) {
            tracing::debug!(
                from_uid,
                to,
                "peer message to the bridge ignored (not EndCall)"
            );
            return;
        }
        let input = {
            let calls = self.calls();
            let mine: Vec<&Slot> = calls
                .values()
                .filter(|slot| slot.info.uid == from_uid)
                .collect();
            let exact = mine.iter().find(|slot| slot.info.sip_number == to);
            match (exact, mine.as_slice()) {
                (Some(slot), _) => Some(slot.input.clone()),
                (None, [only]) => Some(only.input.clone()),
                _ => None,
            }
        };
        match input {
            Some(input) => {
                let _ = input.send(CallInput::Machine(Event::BrowserHangup));
            }
            None => tracing::debug!(from_uid, to, "EndCall matches no call"),
        }
    }

    /// Checks the limits and the drain; on success the call counts as in progress until the
    /// guard is dropped.
    fn admit(&self, call_id: &str) -> Result<CallGuard, Refusal> {
        let result = self.check_admission(call_id).and_then(|()| {
            self.inner
                .lifecycle
                .try_start_call()
                .ok_or(Refusal::Draining)
        });
        if let Err(refusal) = &result {
            refusal.count(&self.inner.metrics);
        }
        result
    }

    fn check_admission(&self, call_id: &str) -> Result<(), Refusal> {
        if self.inner.lifecycle.is_draining() {
            return Err(Refusal::Draining);
        }
        let (max_calls, per_sec) = {
            let config = self.inner.config.borrow();
            (
                config.limits.max_calls as usize,
                f64::from(config.limits.max_setups_per_sec),
            )
        };
        {
            let calls = self.calls();
            if calls.contains_key(call_id) {
                return Err(Refusal::DuplicateId);
            }
            if calls.len() >= max_calls {
                return Err(Refusal::TooManyCalls);
            }
        }
        let mut rate = self
            .inner
            .setups
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(rate.at).as_secs_f64() * per_sec;
        rate.tokens = (rate.tokens + refill).min(per_sec.max(1.0));
        rate.at = now;
        if rate.tokens < 1.0 {
            return Err(Refusal::TooManySetups);
        }
        rate.tokens -= 1.0;
        Ok(())
    }

    fn start_web_to_sip(&self, call_id: String, from_uid: String, callee: String, content: String) {
        let span = tracing::info_span!("call", call_id = %call_id);
        let _entered = span.enter();
        tracing::info!(from = %from_uid, to = %callee, "browser invitation");
        let guard = match self.admit(&call_id) {
            Ok(guard) => guard,
            Err(refusal) => {
                tracing::warn!(reason = refusal.reason(), "invitation refused");
                self.inner.browser.local_state(
                    &from_uid,
                    &call_id,
                    LocalState::Failure,
                    Some(serde_json::json!({ "Reason": refusal.reason() }).to_string()),
                    Some(match refusal {
                        Refusal::DuplicateId => FailureReason::InvalidArgument,
                        _ => FailureReason::Other,
                    }),
                );
                return;
            }
        };
        let config = Arc::clone(&self.inner.config.borrow());
        let allowed = |number: &str| config.may_call(number);
        let policy = CallPolicy {
            number_allowed: &allowed,
            pstn_prefix: config.pstn.as_ref().map(|p| p.prefix.as_str()),
            ring_timeout: config.sip.ring_timeout,
        };
        let (call, actions) = Call::web_to_sip(&call_id, &from_uid, &callee, &content, &policy);
        if call.phase() == Phase::Ended {
            // Refused before anything was sent: no task, no media.
            let mut task = CallTask::detached(self.clone(), call_id, call);
            task.announce();
            task.apply_sync(actions);
            return;
        }
        let (media, media_events) =
            match self
                .inner
                .media
                .create(&call_id, Direction::WebToSip, call.sip_number())
            {
                Ok(media) => media,
                Err(e) => {
                    tracing::warn!(error = %e, "no media for the call");
                    self.inner.browser.local_state(
                        &from_uid,
                        &call_id,
                        LocalState::Failure,
                        Some(serde_json::json!({ "Reason": e.to_string() }).to_string()),
                        Some(FailureReason::Other),
                    );
                    return;
                }
            };
        let input = self.register(&call_id, &call, guard);
        let task = CallTask::new(self.clone(), call_id, call, media, media_events, input);
        task.announce();
        drop(_entered);
        tokio::spawn(task.run(actions, None).instrument(span));
    }

    /// An INVITE arrived on the proxy account.
    pub fn handle_incoming(&self, incoming: IncomingSipCall) {
        let IncomingSipCall {
            call_id,
            target_uid,
            caller_number,
            caller_display,
            sdp_offer,
            sip_call_id,
            leg,
        } = incoming;
        let span = tracing::info_span!("call", call_id = %call_id);
        let _entered = span.enter();
        tracing::info!(from = %caller_number, to = %target_uid, "incoming SIP call");
        let guard = match self.admit(&call_id) {
            Ok(guard) => guard,
            Err(refusal) => {
                tracing::warn!(reason = refusal.reason(), "INVITE refused");
                leg.send(SipLegCommand::Reject {
                    code: 503,
                    reason: "Service Unavailable".into(),
                });
                return;
            }
        };
        let (mut media, media_events) =
            match self
                .inner
                .media
                .create(&call_id, Direction::SipToWeb, &caller_number)
            {
                Ok(media) => media,
                Err(e) => {
                    tracing::warn!(error = %e, "no media for the call");
                    leg.send(SipLegCommand::Reject {
                        code: 503,
                        reason: "Service Unavailable".into(),
                    });
                    return;
                }
            };
        // Negotiate the SIP side first: an INVITE we cannot answer is refused with 488 before the
        // browser ever rings.
        let answer = match sdp_offer.as_deref() {
            Some(offer) => media.sip_answer(offer),
            None => media.sip_offer(),
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                tracing::warn!(error = %e, "INVITE refused: 488");
                media.close();
                leg.send(SipLegCommand::Reject {
                    code: 488,
                    reason: "Not Acceptable Here".into(),
                });
                return;
            }
        };
        let config = Arc::clone(&self.inner.config.borrow());
        let allowed = |number: &str| config.may_call(number);
        let policy = CallPolicy {
            number_allowed: &allowed,
            pstn_prefix: None,
            ring_timeout: config.sip.ring_timeout,
        };
        let (call, actions) = Call::sip_to_web(
            &call_id,
            &caller_number,
            caller_display.as_deref(),
            &target_uid,
            &policy,
        );
        let input = self.register(&call_id, &call, guard);
        let mut task = CallTask::new(self.clone(), call_id, call, media, media_events, input);
        task.sip_answer = Some(answer);
        task.report.sip_call_id = sip_call_id;
        task.announce();
        drop(_entered);
        tokio::spawn(task.run(actions, Some(leg)).instrument(span));
    }

    fn register(
        &self,
        call_id: &str,
        call: &Call,
        guard: CallGuard,
    ) -> mpsc::UnboundedReceiver<CallInput> {
        let (tx, rx) = mpsc::unbounded_channel();
        let now = Instant::now();
        self.calls().insert(
            call_id.to_string(),
            Slot {
                info: CallInfo {
                    id: call_id.to_string(),
                    direction: call.direction(),
                    uid: call.uid().to_string(),
                    sip_number: call.sip_number().to_string(),
                    state: phase_name(call.phase()),
                    duration_s: 0.0,
                    talk_s: None,
                    started: now,
                    answered: None,
                },
                input: tx,
                _guard: guard,
            },
        );
        self.inner.metrics.calls_started.get(call.direction()).inc();
        rx
    }

    fn update_phase(&self, call_id: &str, phase: Phase) {
        if let Some(slot) = self.calls().get_mut(call_id) {
            slot.info.state = phase_name(phase);
            if phase == Phase::Established && slot.info.answered.is_none() {
                let now = Instant::now();
                slot.info.answered = Some(now);
                let m = &self.inner.metrics;
                m.calls_answered.get(slot.info.direction).inc();
                m.call_setup.observe(now.duration_since(slot.info.started));
            }
        }
    }

    fn forget(&self, call_id: &str) {
        let (removed, empty) = {
            let mut calls = self.calls();
            let removed = calls.remove(call_id);
            (removed, calls.is_empty())
        };
        if let Some(slot) = removed {
            self.inner.browser.released(&slot.info.uid, call_id);
        }
        if empty {
            self.inner.idle.notify_waiters();
        }
    }

    /// The calls in progress, for the status API.
    pub fn list(&self) -> Vec<CallInfo> {
        let now = Instant::now();
        let mut list: Vec<CallInfo> = self
            .calls()
            .values()
            .map(|slot| with_durations(&slot.info, now))
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    /// One call in progress, for `GET /api/calls/{id}`.
    pub fn get(&self, call_id: &str) -> Option<CallInfo> {
        let now = Instant::now();
        self.calls()
            .get(call_id)
            .map(|slot| with_durations(&slot.info, now))
    }

    /// How many calls are in progress.
    pub fn active(&self) -> usize {
        self.calls().len()
    }

    /// From now on, new calls are refused (SIGTERM drain); calls in progress go on.
    pub fn start_draining(&self) {
        self.inner.lifecycle.start_drain();
    }

    /// Hangs up every call in progress (as if each browser went away: BYE, CANCEL or 480 as the
    /// call's state needs) and waits up to `limit` for them to end; returns how many remain.
    pub async fn end_all(&self, limit: Duration) -> usize {
        let inputs: Vec<_> = self.calls().values().map(|s| s.input.clone()).collect();
        for input in inputs {
            let _ = input.send(CallInput::Machine(Event::BrowserGone));
        }
        self.wait_idle(limit).await
    }

    /// Waits until no call is in progress, or `limit` passes; returns the calls still there.
    pub async fn wait_idle(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.inner.idle.notified();
            if self.active() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.active();
            }
        }
    }
}

fn with_durations(info: &CallInfo, now: Instant) -> CallInfo {
    let mut info = info.clone();
    info.duration_s = now.duration_since(info.started).as_secs_f64();
    info.talk_s = info
        .answered
        .map(|answered| now.duration_since(answered).as_secs_f64());
    info
}

/// Whether a peer message is ARCall's hang-up command.
fn is_end_call(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get("Cmd").and_then(|c| c.as_str()).map(str::to_owned))
        .is_some_and(|cmd| cmd.eq_ignore_ascii_case("EndCall"))
}

/// One call's task: its machine, dialog, media and timer.
struct CallTask<B, S, M: MediaFactory> {
    manager: CallManager<B, S, M>,
    call_id: String,
    call: Call,
    media: Option<M::Media>,
    media_events: Option<mpsc::Receiver<MediaEvent>>,
    input: Option<mpsc::UnboundedReceiver<CallInput>>,
    leg: Option<SipLeg>,
    /// SIP → web: the SDP answer sent with 200 OK.
    sip_answer: Option<String>,
    timer: Option<tokio::time::Instant>,
    /// Events the task feeds itself (e.g. the browser turned out to be offline).
    pending: Vec<Event>,
    /// What the event stream reports about this call.
    report: CallReport,
}

/// The facts of one call the `call.*` events carry, gathered as the task carries out its actions.
struct CallReport {
    sip_call_id: Option<String>,
    started: Instant,
    answered: Option<Instant>,
    /// The phase the stream (and the registry) last heard of.
    phase: Phase,
    /// The latest provisional response (web → SIP).
    progress_code: Option<u16>,
    /// The INVITE's final response, sent or received.
    final_code: Option<u16>,
    /// The last RTM invitation state and failure reason the browser was given.
    rtm_state: Option<&'static str>,
    rtm_reason: Option<&'static str>,
}

impl CallReport {
    fn new(phase: Phase) -> Self {
        CallReport {
            sip_call_id: None,
            started: Instant::now(),
            answered: None,
            phase,
            progress_code: None,
            final_code: None,
            rtm_state: None,
            rtm_reason: None,
        }
    }

    /// Notes what an event says about the INVITE's outcome.
    fn note(&mut self, event: &Event) {
        match event {
            Event::SipProgress { code } => self.progress_code = Some(*code),
            Event::SipAnswered => self.final_code = Some(200),
            Event::SipFailed { code, .. } => self.final_code = Some(*code),
            Event::SipCanceled => self.final_code = Some(487),
            _ => {}
        }
    }
}

impl<B: BrowserSide, S: SipSide, M: MediaFactory> CallTask<B, S, M> {
    fn new(
        manager: CallManager<B, S, M>,
        call_id: String,
        call: Call,
        media: M::Media,
        media_events: mpsc::Receiver<MediaEvent>,
        input: mpsc::UnboundedReceiver<CallInput>,
    ) -> Self {
        CallTask {
            manager,
            call_id,
            call,
            media: Some(media),
            media_events: Some(media_events),
            input: Some(input),
            leg: None,
            sip_answer: None,
            timer: None,
            pending: Vec::new(),
            report: CallReport::new(Phase::Setup),
        }
    }

    /// A call refused before it started: only its first actions are carried out.
    fn detached(manager: CallManager<B, S, M>, call_id: String, call: Call) -> Self {
        CallTask {
            manager,
            call_id,
            call,
            media: None,
            media_events: None,
            input: None,
            leg: None,
            sip_answer: None,
            timer: None,
            pending: Vec::new(),
            report: CallReport::new(Phase::Setup),
        }
    }

    fn browser(&self) -> &B {
        &self.manager.inner.browser
    }

    fn facts(&self) -> CallFacts {
        CallFacts {
            call_id: self.call_id.clone(),
            sip_call_id: self.report.sip_call_id.clone(),
            direction: self.call.direction(),
            web_user: self.call.uid().to_string(),
            number: self.call.sip_number().to_string(),
        }
    }

    fn publish(&self, event: StreamEvent) {
        self.manager.inner.events.publish(event);
    }

    /// `call.created`.
    fn announce(&self) {
        self.publish(StreamEvent::CallCreated { call: self.facts() });
    }

    /// Tells the registry and the stream about a new phase (`call.ringing`, `call.answered`;
    /// `call.ended` comes from the end action, which knows why).
    fn sync_phase(&mut self) {
        let phase = self.call.phase();
        if phase == self.report.phase {
            return;
        }
        self.report.phase = phase;
        self.manager.update_phase(&self.call_id, phase);
        match phase {
            Phase::Ringing => self.publish(StreamEvent::CallRinging {
                call: self.facts(),
                sip_code: self.report.progress_code,
            }),
            Phase::Established => {
                // The media watches (RTP timeout) start with the answer.
                if let Some(media) = self.media.as_mut() {
                    media.established();
                }
                let now = Instant::now();
                self.report.answered = Some(now);
                self.publish(StreamEvent::CallAnswered {
                    call: self.facts(),
                    setup_ms: now.duration_since(self.report.started).as_millis() as u64,
                });
            }
            Phase::Setup | Phase::Cancelling | Phase::Ended => {}
        }
    }

    /// Feeds one event to the machine and carries out what it says.
    fn handle(&mut self, event: Event) {
        self.report.note(&event);
        let actions = self.call.handle(event);
        self.apply_sync(actions);
    }

    fn apply_sync(&mut self, actions: Vec<Action>) {
        for action in actions {
            self.apply(action);
        }
    }

    fn apply(&mut self, action: Action) {
        let uid = self.call.uid().to_string();
        match action {
            Action::Hub(hub) => match hub {
                HubAction::LocalState {
                    state,
                    response,
                    reason,
                } => {
                    tracing::info!(state = ?state, reason = ?reason, "invitation state");
                    self.report.rtm_state =
                        Some(crate::signal::LocalInvitationState::from(state).as_str());
                    self.report.rtm_reason =
                        reason.map(|r| crate::signal::FailureReason::from(r).as_str());
                    self.browser()
                        .local_state(&uid, &self.call_id, state, response, reason);
                }
                HubAction::SendRemoteInvitation {
                    to_uid,
                    caller,
                    content,
                } => {
                    if self
                        .browser()
                        .ring(&to_uid, &self.call_id, &caller, &content)
                    {
                        tracing::info!(to = %to_uid, "browser invited");
                        // Lets the browser offer now, so ICE and DTLS complete while it rings
                        // and the phone's first words after the 200 OK are heard (a client
                        // that ignores it offers when it accepts, as before).
                        self.browser().media(
                            &to_uid,
                            &self.call_id,
                            serde_json::json!({ "kind": "prepare" }),
                        );
                    } else {
                        tracing::info!(to = %to_uid, "browser user offline");
                        self.pending.push(Event::BrowserOffline);
                    }
                }
                HubAction::CancelRemoteInvitation => {
                    self.report.rtm_state =
                        Some(crate::signal::RemoteInvitationState::Canceled.as_str());
                    self.browser().cancel_remote(&uid, &self.call_id)
                }
                HubAction::ExpireRemoteInvitation => {
                    self.report.rtm_state =
                        Some(crate::signal::RemoteInvitationState::Failure.as_str());
                    self.report.rtm_reason =
                        Some(crate::signal::RemoteFailureReason::InvitationExpire.as_str());
                    self.browser().expire_remote(&uid, &self.call_id)
                }
                HubAction::EndCall => {
                    let text = serde_json::json!({ "Cmd": "EndCall", "CallId": self.call_id });
                    self.browser()
                        .peer_message(self.call.sip_number(), &uid, &text.to_string());
                }
            },
            Action::Sip(sip) => self.apply_sip(sip),
            Action::ArmRingTimer(after) => {
                self.timer = Some(tokio::time::Instant::now() + after);
            }
            Action::CancelRingTimer => self.timer = None,
            Action::Ended(reason) => self.ended(reason),
        }
    }

    fn apply_sip(&mut self, action: SipAction) {
        match action {
            SipAction::Invite {
                callee,
                caller_id,
                headers,
                via_pstn,
            } => {
                let offer = match self.media.as_mut().map(|m| m.sip_offer()) {
                    Some(Ok(offer)) => offer,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "no SDP offer");
                        self.pending.push(Event::SipFailed {
                            code: 503,
                            reason: e.to_string(),
                        });
                        return;
                    }
                    None => return,
                };
                tracing::info!(to = %callee, caller = %caller_id, pstn = via_pstn, "INVITE");
                self.leg = Some(self.manager.inner.sip.place_call(OutgoingCallRequest {
                    call_id: self.call_id.clone(),
                    callee,
                    caller_id,
                    headers,
                    via_pstn,
                    sdp_offer: offer,
                }));
            }
            SipAction::Cancel => self.send_leg(SipLegCommand::Cancel),
            SipAction::Bye => self.send_leg(SipLegCommand::Bye),
            SipAction::Ringing => self.send_leg(SipLegCommand::Ringing),
            SipAction::Answer => {
                self.report.final_code = Some(200);
                if let Some(media) = self.media.as_mut() {
                    media.answered();
                }
                let answer = self.sip_answer.clone().unwrap_or_default();
                self.send_leg(SipLegCommand::Answer(answer));
            }
            SipAction::Reject { code, reason } => {
                self.report.final_code = Some(code);
                self.send_leg(SipLegCommand::Reject {
                    code,
                    reason: reason.to_string(),
                })
            }
        }
    }

    fn send_leg(&self, command: SipLegCommand) {
        tracing::debug!(command = ?command, "to SIP");
        if let Some(leg) = &self.leg {
            leg.send(command);
        }
    }

    fn ended(&mut self, reason: EndReason) {
        tracing::info!(reason = ?reason, "call ended");
        let failed_code = match &reason {
            EndReason::SipFailed(code) => Some(*code),
            EndReason::Rejected(_) => Some(0),
            EndReason::NoAnswer => Some(408),
            EndReason::BrowserOffline => Some(480),
            EndReason::BrowserRefused => Some(486),
            _ => None,
        };
        if let Some(code) = failed_code {
            self.manager.inner.metrics.call_failed(code);
        }
        let now = Instant::now();
        let detail = match &reason {
            EndReason::Rejected(why) => Some((*why).to_string()),
            _ => None,
        };
        self.publish(StreamEvent::CallEnded {
            call: self.facts(),
            end: CallEnd {
                cause: reason.label(),
                detail,
                sip_code: self.report.final_code,
                rtm_state: self.report.rtm_state,
                rtm_reason: self.report.rtm_reason,
                duration_ms: now.duration_since(self.report.started).as_millis() as u64,
                talk_ms: self
                    .report
                    .answered
                    .map(|at| now.duration_since(at).as_millis() as u64),
            },
        });
        if let Some(media) = self.media.as_mut() {
            media.close();
        }
    }

    fn feed(&mut self, event: Event) {
        self.handle(event);
        while let Some(next) = self.pending.pop() {
            self.handle(next);
        }
        self.sync_phase();
    }

    // Not an `async fn`: that keeps its arguments twice in the future, once as arguments and
    // once as the locals they are moved into (rust-lang/rust#62958): 0.6–2.8 KB per call.
    #[allow(clippy::manual_async_fn)]
    fn run(
        mut self,
        first: Vec<Action>,
        leg: Option<SipLeg>,
    ) -> impl std::future::Future<Output = ()> + Send {
        async move {
            if leg.is_some() {
                self.leg = leg;
            }
            self.apply_sync(first);
            while let Some(next) = self.pending.pop() {
                self.handle(next);
            }
            self.sync_phase();
            let mut input = self.input.take();
            let mut media_events = self.media_events.take();
            while self.call.phase() != Phase::Ended {
                let timer = self.timer;
                tokio::select! {
                    event = next_leg_event(&mut self.leg) => self.on_sip(event),
                    msg = recv_opt(&mut input) => match msg {
                        Some(CallInput::Machine(event)) => self.feed(event),
                        Some(CallInput::Media(payload)) => {
                            if let Some(media) = self.media.as_mut() {
                                // Boxed: setting up the browser leg is a large future, and inline it
                                // would stay part of this task's memory for the whole call.
                                Box::pin(media.browser_message(payload)).await;
                            }
                        }
                        None => input = None,
                    },
                    event = recv_opt(&mut media_events) => match event {
                        Some(MediaEvent::ToBrowser(payload)) => {
                            let uid = self.call.uid().to_string();
                            self.browser().media(&uid, &self.call_id, payload);
                        }
                        Some(MediaEvent::SipDtmf(digit)) => {
                            self.send_leg(SipLegCommand::Dtmf(digit));
                        }
                        Some(MediaEvent::Failed(why)) => {
                            tracing::warn!(error = %why, "media failed");
                            self.feed(Event::MediaFailed);
                        }
                        None => media_events = None,
                    },
                    _ = sleep_opt(timer) => {
                        self.timer = None;
                        self.feed(Event::RingTimeout);
                    }
                }
            }
            if let Some(media) = self.media.as_mut() {
                media.close();
            }
            self.manager.forget(&self.call_id);
            // Dropping the leg tells the SIP adapter nothing more will be asked of the dialog.
            drop(self.leg.take());
        }
    }

    fn on_sip(&mut self, event: Option<SipLegEvent>) {
        let Some(event) = event else {
            // The dialog is gone without a word (adapter stopped): treat like a transport failure.
            self.leg = None;
            let event = match self.call.phase() {
                Phase::Established => Event::SipHangup,
                _ => Event::SipFailed {
                    code: 503,
                    reason: "SIP dialog lost".into(),
                },
            };
            self.feed(event);
            return;
        };
        match event {
            SipLegEvent::Dialog { sip_call_id } => {
                match &self.report.sip_call_id {
                    Some(first) => {
                        tracing::info!(%sip_call_id, previous = %first, "SIP dialog retried")
                    }
                    None => tracing::debug!(%sip_call_id, "SIP dialog"),
                }
                self.report.sip_call_id = Some(sip_call_id);
            }
            SipLegEvent::Provisional { code, sdp } => {
                tracing::info!(code, early_media = sdp.is_some(), "SIP progress");
                if let Some(sdp) = sdp {
                    self.remote_sdp(&sdp);
                }
                self.feed(Event::SipProgress { code });
            }
            SipLegEvent::Answered { sdp } => {
                tracing::info!("SIP answered");
                self.remote_sdp(&sdp);
                self.feed(Event::SipAnswered);
            }
            SipLegEvent::Failed { code, reason } => {
                tracing::info!(code, reason = %reason, "SIP failed");
                self.feed(Event::SipFailed { code, reason });
            }
            SipLegEvent::Canceled => {
                tracing::info!("SIP CANCEL");
                self.feed(Event::SipCanceled);
            }
            SipLegEvent::RemoteBye => {
                tracing::info!("SIP BYE");
                self.feed(Event::SipHangup);
            }
            SipLegEvent::Reoffer { sdp, reply } => {
                tracing::info!(with_sdp = sdp.is_some(), "SIP re-offer");
                let answer = self
                    .media
                    .as_mut()
                    .and_then(|m| m.sip_reoffer(sdp.as_deref()));
                let _ = reply.send(answer);
            }
            SipLegEvent::Terminated => {
                self.leg = None;
                let event = match self.call.phase() {
                    Phase::Established => Event::SipHangup,
                    Phase::Cancelling => Event::SipFailed {
                        code: 487,
                        reason: "Request Terminated".into(),
                    },
                    _ => Event::SipFailed {
                        code: 503,
                        reason: "SIP dialog terminated".into(),
                    },
                };
                self.feed(event);
            }
        }
    }

    fn remote_sdp(&mut self, sdp: &str) {
        if let Some(media) = self.media.as_mut() {
            if let Err(e) = media.sip_remote_answer(sdp) {
                tracing::warn!(error = %e, "SIP side's SDP not usable");
                if matches!(e, MediaError::NoCommonCodec(_) | MediaError::BadSdp(_)) {
                    self.pending.push(Event::MediaFailed);
                }
            }
        }
    }
}

async fn next_leg_event(leg: &mut Option<SipLeg>) -> Option<SipLegEvent> {
    match leg {
        Some(leg) => leg.events.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_opt<T>(rx: &mut Option<impl Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv_item().await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Bounded and unbounded receivers, read the same way.
trait Receiver<T> {
    fn recv_item(&mut self) -> impl std::future::Future<Output = Option<T>> + Send;
}

impl<T: Send> Receiver<T> for mpsc::Receiver<T> {
    fn recv_item(&mut self) -> impl std::future::Future<Output = Option<T>> + Send {
        self.recv()
    }
}

impl<T: Send> Receiver<T> for mpsc::UnboundedReceiver<T> {
    fn recv_item(&mut self) -> impl std::future::Future<Output = Option<T>> + Send {
        self.recv()
    }
}
