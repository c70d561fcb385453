//! The assembled bridge: the SIP user agent, the signalling hub, the call manager and the media
//! path, wired through the call layer's ports, plus the HTTP server browsers connect to.
//!
//! The adapters here are deliberately thin: each maps one module's handle onto a
//! [`crate::call::ports`] trait, so the call logic never sees rsipstack, axum or webrtc types.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::call::machine::{FailureReason, LocalState};
use crate::call::manager::{CallInfo, CallManager};
use crate::call::ports::{
    BrowserSide, IncomingSipCall, OutgoingCallRequest, SipLeg, SipLegCommand, SipLegEvent,
    SipLegRemote, SipSide,
};
use crate::cluster::{Cluster, ClusterBrowser};
use crate::config::Config;
use crate::events::webhook::WebhookSettings;
use crate::events::{webhook_task, EventBus};
use crate::media::session::SessionFactory;
use crate::ops::cpu_load::{watch_cpu, BusySignal};
use crate::ops::http::{build_router, OpsContext};
use crate::ops::lifecycle::{ConfigWatch, Lifecycle};
use crate::ops::metrics::{Metrics, PbxSeries};
use crate::ops::serve::{serve, ConnLimits};
use crate::ops::status::{
    CallStatus, PbxEntryStatus, PbxStatus, Reachability, RegistrationState as OpsRegistration,
    RegistrationStatus, StatusSnapshot, StatusSource,
};
use crate::signal::{self, Hub, HubSettings};
use crate::sip::{
    IncomingCall, OutgoingInvite, PbxState, RegistrationState, SipCall, SipStatus, SipUa, UaOptions,
};

/// The browser side of calls: the hub.
#[derive(Clone)]
pub struct HubBrowser(Hub);

impl BrowserSide for HubBrowser {
    fn local_state(
        &self,
        uid: &str,
        call_id: &str,
        state: LocalState,
        response: Option<String>,
        reason: Option<FailureReason>,
    ) {
        // SENT_TO_REMOTE is the hub's `ok` answer to `invite`; the browser already has it.
        if state == LocalState::SentToRemote {
            return;
        }
        self.0
            .local_invitation_state(uid, call_id, state.into(), response, reason.map(Into::into));
    }

    fn ring(&self, uid: &str, call_id: &str, caller: &str, content: &str) -> bool {
        self.0
            .send_remote_invitation(uid, call_id, caller, content)
            .is_ok()
    }

    fn cancel_remote(&self, uid: &str, call_id: &str) {
        self.0.remote_invitation_canceled(uid, call_id);
    }

    fn expire_remote(&self, uid: &str, call_id: &str) {
        self.0.remote_invitation_failed(
            uid,
            call_id,
            signal::RemoteFailureReason::InvitationExpire,
        );
    }

    fn peer_message(&self, from: &str, uid: &str, text: &str) {
        if let Err(e) = self.0.send_peer_message(from, uid, text) {
            tracing::debug!(error = %e, "peer message not delivered");
        }
    }

    fn media(&self, uid: &str, call_id: &str, payload: serde_json::Value) {
        if let Err(e) = self.0.send_media(uid, call_id, payload) {
            tracing::debug!(error = %e, "media message not delivered");
        }
    }
}

/// The SIP side of calls: the user agent. Each dialog is driven by a small task that turns the
/// call layer's commands into [`SipCall`] calls and its events into [`SipLegEvent`]s.
#[derive(Clone)]
pub struct UaSip {
    ua: SipUa,
    pstn: Option<SocketAddr>,
}

impl SipSide for UaSip {
    fn place_call(&self, request: OutgoingCallRequest) -> SipLeg {
        let (leg, remote) = SipLeg::pair();
        let ua = self.ua.clone();
        let gateway = if request.via_pstn { self.pstn } else { None };
        let invite = OutgoingInvite {
            log_id: request.call_id.clone(),
            callee: request.callee,
            caller_id: request.caller_id,
            headers: request.headers,
            gateway,
            sdp_offer: request.sdp_offer,
        };
        let span = tracing::info_span!("call", call_id = %request.call_id);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                match ua.place_call(invite).await {
                    Ok(call) => {
                        let sip_call_id = call.sip_call_id();
                        let _ = remote
                            .events
                            .send(SipLegEvent::Dialog { sip_call_id })
                            .await;
                        drive_dialog(call, remote).await
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "INVITE not sent");
                        let _ = remote
                            .events
                            .send(SipLegEvent::Failed {
                                code: 503,
                                reason: e.to_string(),
                            })
                            .await;
                    }
                }
            },
            span,
        ));
        leg
    }
}

/// Runs one dialog until it ends or the call layer lets go of it (dropping [`SipCall`] ends the
/// dialog: BYE, CANCEL or 480 as its state requires).
async fn drive_dialog(mut call: SipCall, mut remote: SipLegRemote) {
    loop {
        tokio::select! {
            event = call.next_event() => match event {
                Some(event) => {
                    let last = matches!(event, SipLegEvent::Terminated);
                    if remote.events.send(event).await.is_err() || last {
                        break;
                    }
                }
                None => {
                    let _ = remote.events.send(SipLegEvent::Terminated).await;
                    break;
                }
            },
            command = remote.commands.recv() => {
                let Some(command) = command else { break };
                let result = match command {
                    SipLegCommand::Ringing => call.ringing(),
                    SipLegCommand::Answer(sdp) => call.answer(sdp),
                    SipLegCommand::Reject { code, reason } => call.reject(code, &reason),
                    SipLegCommand::Cancel => call.cancel().await,
                    SipLegCommand::Bye => call.bye().await,
                    SipLegCommand::Dtmf(digit) => call.send_dtmf_info(digit).await,
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "SIP command not carried out");
                }
            }
        }
    }
}

fn incoming_call(incoming: IncomingCall) -> IncomingSipCall {
    let (leg, remote) = SipLeg::pair();
    let call_id = incoming.call.log_id().to_string();
    let sip_call_id = Some(incoming.call.sip_call_id());
    let span = tracing::info_span!("call", call_id = %call_id);
    tokio::spawn(tracing::Instrument::instrument(
        drive_dialog(incoming.call, remote),
        span,
    ));
    IncomingSipCall {
        call_id,
        target_uid: incoming.target_uid,
        caller_number: incoming.caller_number,
        caller_display: incoming.caller_display,
        sdp_offer: incoming.sdp_offer,
        sip_call_id,
        leg,
    }
}

/// The call manager with the real ports (browsers here or, with `[cluster]`, on other nodes).
pub type Calls = CallManager<ClusterBrowser<HubBrowser>, UaSip, SessionFactory>;

/// A running bridge: SIP, hub, calls and media. [`Bridge::start`] also serves HTTP (for tests and
/// embedding); the daemon (`app::run`) uses [`Bridge::start_parts`] and serves HTTP itself.
pub struct Bridge {
    http_addr: Option<SocketAddr>,
    sip: SipUa,
    hub: Hub,
    calls: Calls,
    config: ConfigWatch,
    /// Set when this bridge owns its config (started with [`Bridge::start`]).
    config_tx: Option<watch::Sender<Arc<Config>>>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    media_ports: Arc<crate::media::rtp_leg::PortAllocator>,
    /// The browser legs' ports when set apart from the RTP range.
    webrtc_ports: Option<crate::media::rtp_leg::PortAllocator>,
    events: EventBus,
    /// This node's cluster membership, with `[cluster]`.
    cluster: Option<Cluster>,
    metrics: Arc<Metrics>,
}

/// The address the PBX reaches us on, for SDP: the configured public IP, else the SIP contact's.
fn sdp_address(config: &Config, contact: SocketAddr) -> IpAddr {
    config
        .media
        .public_ip
        .or(config.sip.public_ip)
        .unwrap_or_else(|| contact.ip())
}

impl Bridge {
    /// Starts everything, HTTP included (`[http] listen`, with the ops endpoints), with a
    /// config of its own ([`Bridge::reload`] replaces it). Fails, leaving nothing running,
    /// when a socket cannot be bound.
    pub async fn start(config: Config) -> anyhow::Result<Bridge> {
        let listen = config.http.listen;
        let (config_tx, config_rx) = watch::channel(Arc::new(config));
        let lifecycle = Lifecycle::new();
        let events = EventBus::new();
        let metrics = Arc::new(Metrics::new());
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on [http] listen {listen}"))?;
        let http_addr = listener.local_addr().context("HTTP listener address")?;
        let mut bridge = Bridge::start_parts(
            config_rx.clone(),
            lifecycle.clone(),
            events.clone(),
            Arc::clone(&metrics),
        )
        .await?;
        let limits = ConnLimits::from_config(&config_rx.borrow(), Arc::clone(&metrics));
        let ctx = OpsContext {
            config: config_rx,
            lifecycle,
            events,
            metrics,
        };
        let router = build_router(bridge.router(), bridge.status(), ctx);
        let stop = bridge.stop.clone();
        bridge.tasks.push(tokio::spawn(async move {
            serve(listener, router, None, limits, stop.cancelled_owned()).await;
        }));
        bridge.http_addr = Some(http_addr);
        bridge.config_tx = Some(config_tx);
        Ok(bridge)
    }

    /// Starts the SIP user agent, the hub and the call manager, following `config` (reloads
    /// apply to new calls) and `lifecycle` (the drain), publishing to `events` (and its
    /// webhook) and counting into `metrics`. HTTP is the caller's: serve [`Bridge::router`] and
    /// [`Bridge::status`], and `metrics` on `/metrics`.
    pub async fn start_parts(
        config: ConfigWatch,
        lifecycle: Lifecycle,
        events: EventBus,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Bridge> {
        let current = Arc::clone(&config.borrow());
        let stop = CancellationToken::new();
        let ua_options = UaOptions {
            events: Some(events.clone()),
            metrics: Arc::clone(&metrics),
            ..UaOptions::default()
        };
        let (sip, mut incoming) = SipUa::start_with(&current, stop.child_token(), ua_options)
            .await
            .context("SIP user agent")?;
        let (bridge_tx, mut bridge_rx) = mpsc::channel(1024);
        let hub = Hub::new(
            HubSettings::from_config(&current),
            bridge_tx.clone(),
            Arc::clone(&metrics),
        );
        hub.publish_events_to(events.clone());
        let mut tasks = Vec::new();
        let cluster = match &current.cluster {
            Some(cluster_config) => {
                let (cluster, cluster_tasks) = Cluster::start(
                    cluster_config,
                    hub.clone(),
                    bridge_tx,
                    Arc::clone(&metrics),
                    stop.child_token(),
                )
                .await
                .context("cluster")?;
                tasks.extend(cluster_tasks);
                Some(cluster)
            }
            None => None,
        };

        let bind_ip = current.sip.listen_ip;
        let sdp_ip = sdp_address(&current, sip.contact_addr());
        let pstn = current.pstn.as_ref().and_then(|p| p.addr.socket_addr());
        let busy = BusySignal::new();
        tasks.push(tokio::spawn(watch_cpu(
            config.clone(),
            busy.clone(),
            Arc::clone(&metrics),
        )));
        let media = SessionFactory::new(config.clone(), bind_ip, sdp_ip, Arc::clone(&metrics))
            .map_err(|e| anyhow::anyhow!("media: {e}"))?
            .with_busy_signal(busy);
        let media_ports = media.port_allocator();
        let webrtc_ports = media.webrtc_port_allocator();
        let calls = CallManager::new(
            ClusterBrowser::new(HubBrowser(hub.clone()), cluster.as_ref().map(Cluster::link)),
            UaSip {
                ua: sip.clone(),
                pstn,
            },
            media,
            config.clone(),
            lifecycle.clone(),
            events.clone(),
            Arc::clone(&metrics),
        );

        tasks.push(webhook_task::spawn(
            &events,
            config.clone(),
            WebhookSettings::default(),
            stop.child_token(),
        ));
        {
            let (calls, cluster) = (calls.clone(), cluster.clone());
            tasks.push(tokio::spawn(async move {
                while let Some(event) = bridge_rx.recv().await {
                    // A browser here answering a call run on another node: it goes there.
                    let event = match &cluster {
                        Some(cluster) => cluster.route(event),
                        None => Some(event),
                    };
                    if let Some(event) = event {
                        calls.handle_browser(event);
                    }
                }
            }));
        }
        {
            let calls = calls.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(call) = incoming.recv().await {
                    calls.handle_incoming(incoming_call(call));
                }
            }));
        }
        {
            // The drain (SIGTERM) closes the doors everywhere new calls come in.
            let (hub, sip, lifecycle) = (hub.clone(), sip.clone(), lifecycle.clone());
            tasks.push(tokio::spawn(async move {
                lifecycle.draining().await;
                hub.set_accepting(false);
                sip.set_accepting(false);
                tracing::info!("draining: new invitations and INVITEs are refused");
            }));
        }
        {
            let (hub, sip, metrics) = (hub.clone(), sip.clone(), Arc::clone(&metrics));
            tasks.push(tokio::spawn(publish_gauges(hub, sip, metrics)));
        }
        {
            // Reloads reach the hub: reserved ids, origins, timeouts apply to the next login.
            let (hub, mut config) = (hub.clone(), config.clone());
            tasks.push(tokio::spawn(async move {
                while config.changed().await.is_ok() {
                    let settings = HubSettings::from_config(&config.borrow_and_update());
                    hub.set_settings(settings);
                }
            }));
        }
        tracing::info!(sip = %sip.local_addr(), "bridge started");
        Ok(Bridge {
            http_addr: None,
            sip,
            hub,
            calls,
            config,
            config_tx: None,
            stop,
            tasks,
            media_ports,
            webrtc_ports,
            events,
            cluster,
            metrics,
        })
    }

    /// The browser-facing routes: the hub's WebSocket and JS client, and the web-demo.
    pub fn router(&self) -> Router {
        crate::web::router(self.hub.router(), self.config.clone())
    }

    /// What `/api/status` and `/api/calls/{id}` show.
    pub fn status(&self) -> Arc<dyn StatusSource> {
        Arc::new(BridgeStatus {
            sip: self.sip.clone(),
            hub: self.hub.clone(),
            calls: self.calls.clone(),
            cluster: self.cluster.clone(),
            account: self
                .config
                .borrow()
                .proxy
                .as_ref()
                .map(|p| p.sip_account.clone()),
        })
    }

    /// Where browsers connect (`ws://…/ws`, the web-demo at `/`), when this bridge serves HTTP.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The SIP socket's address.
    pub fn sip_addr(&self) -> SocketAddr {
        self.sip.local_addr()
    }

    /// Registration and PBX reachability.
    pub fn sip_status(&self) -> SipStatus {
        self.sip.status()
    }

    /// Calls in progress.
    pub fn calls(&self) -> Vec<CallInfo> {
        self.calls.list()
    }

    /// One call in progress.
    pub fn call(&self, id: &str) -> Option<CallInfo> {
        self.calls.get(id)
    }

    /// Port pairs held by calls' SIP (RTP) and browser (ICE) legs; 0 when every call released
    /// its media.
    pub fn media_ports_in_use(&self) -> usize {
        self.media_ports.in_use() + self.webrtc_ports.as_ref().map_or(0, |p| p.in_use())
    }

    /// Where this bridge's events are published (`/api/events`).
    pub fn events(&self) -> &EventBus {
        &self.events
    }

    /// This bridge's metrics registry (what its `/metrics` shows).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The signalling hub.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Applies a re-read configuration to new calls (`acc_rule`, limits, timeouts, codecs), for
    /// a bridge started with [`Bridge::start`] (the daemon reloads through its own watch).
    pub fn reload(&self, config: Config) {
        if let Some(tx) = &self.config_tx {
            tx.send_replace(Arc::new(config));
        }
    }

    /// Ends the calls still in progress (BYE/CANCEL/480 as their state needs), unregisters,
    /// and stops the HTTP server and the tasks.
    pub async fn shutdown(self) {
        if let Some(cluster) = &self.cluster {
            cluster.leave().await;
        }
        let left = self.calls.end_all(Duration::from_secs(3)).await;
        if left > 0 {
            tracing::warn!(calls = left, "calls did not end in time");
        }
        self.sip.shutdown().await;
        self.stop.cancel();
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Keeps the registration, PBX and session gauges of `/metrics` current.
async fn publish_gauges(hub: Hub, sip: SipUa, m: Arc<Metrics>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let status = sip.status();
        m.set_registration(registration_state(&status.registration));
        m.set_pbx_ping(match status.pbx {
            PbxState::Up { rtt_ms } => Some(Duration::from_millis(rtt_ms)),
            _ => None,
        });
        m.set_pbxs(
            status
                .pbxs
                .iter()
                .map(|p| PbxSeries {
                    pbx: p.addr.clone(),
                    reachable: match p.reachability {
                        PbxState::Up { .. } => Some(true),
                        PbxState::Down { .. } => Some(false),
                        PbxState::Unknown => None,
                    },
                    registration: registration_state(&p.registration),
                })
                .collect(),
        );
        m.ws_sessions.set(hub.session_count() as i64);
        m.users_logged_in.set(hub.online_count() as i64);
    }
}

fn registration_state(state: &RegistrationState) -> OpsRegistration {
    match state {
        RegistrationState::Disabled => OpsRegistration::Disabled,
        RegistrationState::Registering => OpsRegistration::Registering,
        RegistrationState::Registered { .. } => OpsRegistration::Registered,
        RegistrationState::Failed { .. } => OpsRegistration::Failed,
    }
}

fn reachability(state: &PbxState) -> (Reachability, Option<f64>) {
    match state {
        PbxState::Up { rtt_ms } => (Reachability::Up, Some(*rtt_ms as f64)),
        PbxState::Down { .. } => (Reachability::Down, None),
        PbxState::Unknown => (Reachability::Unknown, None),
    }
}

/// The status API's view of the bridge.
struct BridgeStatus {
    sip: SipUa,
    hub: Hub,
    calls: Calls,
    cluster: Option<Cluster>,
    account: Option<String>,
}

fn call_status(info: CallInfo) -> CallStatus {
    CallStatus {
        direction: info.direction,
        id: info.id,
        web_user: info.uid,
        sip_number: info.sip_number,
        state: info.state.to_string(),
        duration_s: info.duration_s,
        sip_call_id: None,
    }
}

impl StatusSource for BridgeStatus {
    fn snapshot(&self) -> StatusSnapshot {
        let sip = self.sip.status();
        let last_error = match &sip.registration {
            RegistrationState::Failed { last_error, .. } => Some(last_error.clone()),
            _ => None,
        };
        let (reachable, rtt_ms) = reachability(&sip.pbx);
        let pbxs = sip
            .pbxs
            .iter()
            .map(|p| {
                let (reachable, rtt_ms) = reachability(&p.reachability);
                PbxEntryStatus {
                    address: p.addr.clone(),
                    weight: p.weight,
                    priority: p.priority,
                    reachable,
                    rtt_ms,
                    registration: registration_state(&p.registration),
                    last_error: match &p.registration {
                        RegistrationState::Failed { last_error, .. } => Some(last_error.clone()),
                        _ => None,
                    },
                }
            })
            .collect();
        StatusSnapshot {
            registration: RegistrationStatus {
                state: registration_state(&sip.registration),
                account: self.account.clone(),
                last_error,
            },
            pbx: PbxStatus {
                address: sip.pbx_addr.clone(),
                reachable,
                rtt_ms,
            },
            pbxs,
            calls: self.calls.list().into_iter().map(call_status).collect(),
            users_logged_in: self.hub.online_count(),
            cluster: self.cluster.as_ref().map(Cluster::status),
        }
    }

    fn call(&self, id: &str) -> Option<CallStatus> {
        self.calls.get(id).map(call_status)
    }
}
