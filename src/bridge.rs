//! The assembled bridge: the SIP user agent, the signalling hub, the call manager and the media
//! path, wired through the call layer's ports, plus the HTTP server browsers connect to.
//!
//! The adapters here are deliberately thin: each maps one module's handle onto a
//! [`crate::call::ports`] trait, so the call logic never sees rsipstack, axum or webrtc types.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::call::machine::{FailureReason, LocalState};
use crate::call::manager::{BrowserEvent, CallInfo, CallManager};
use crate::call::ports::{
    BrowserSide, IncomingSipCall, OutgoingCallRequest, SipLeg, SipLegCommand, SipLegEvent,
    SipLegRemote, SipSide,
};
use crate::config::Config;
use crate::media::session::SessionFactory;
use crate::signal::{self, BridgeEvent, Hub, HubSettings};
use crate::sip::{IncomingCall, OutgoingInvite, SipCall, SipCallEvent, SipStatus, SipUa};

/// The browser side of calls: the hub.
#[derive(Clone)]
pub struct HubBrowser(Hub);

fn hub_state(state: LocalState) -> signal::LocalInvitationState {
    use signal::LocalInvitationState as S;
    match state {
        LocalState::SentToRemote => S::SentToRemote,
        LocalState::ReceivedByRemote => S::ReceivedByRemote,
        LocalState::AcceptedByRemote => S::AcceptedByRemote,
        LocalState::RefusedByRemote => S::RefusedByRemote,
        LocalState::Canceled => S::Canceled,
        LocalState::Failure => S::Failure,
    }
}

fn hub_reason(reason: FailureReason) -> signal::FailureReason {
    use signal::FailureReason as R;
    match reason {
        FailureReason::PeerOffline => R::PeerOffline,
        FailureReason::PeerNoResponse => R::PeerNoResponse,
        FailureReason::InvalidArgument => R::InvalidArgument,
        FailureReason::Other => R::Unknown,
    }
}

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
        self.0.local_invitation_state(
            uid,
            call_id,
            hub_state(state),
            response,
            reason.map(hub_reason),
        );
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
                    Ok(call) => drive_dialog(call, remote).await,
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

fn leg_event(event: SipCallEvent) -> SipLegEvent {
    match event {
        SipCallEvent::Provisional { code, sdp } => SipLegEvent::Provisional { code, sdp },
        SipCallEvent::Answered { sdp } => SipLegEvent::Answered { sdp },
        SipCallEvent::Failed { code, reason } => SipLegEvent::Failed { code, reason },
        SipCallEvent::Canceled => SipLegEvent::Canceled,
        SipCallEvent::RemoteBye => SipLegEvent::RemoteBye,
        SipCallEvent::Reoffer { sdp, reply } => SipLegEvent::Reoffer { sdp, reply },
        SipCallEvent::Terminated => SipLegEvent::Terminated,
    }
}

/// Runs one dialog until it ends or the call layer lets go of it (dropping [`SipCall`] ends the
/// dialog: BYE, CANCEL or 480 as its state requires).
async fn drive_dialog(mut call: SipCall, mut remote: SipLegRemote) {
    loop {
        tokio::select! {
            event = call.next_event() => match event {
                Some(event) => {
                    let last = matches!(event, SipCallEvent::Terminated);
                    if remote.events.send(leg_event(event)).await.is_err() || last {
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
        leg,
    }
}

fn browser_event(event: BridgeEvent) -> BrowserEvent {
    match event {
        BridgeEvent::LocalInvitation {
            call_id,
            from_uid,
            callee,
            content,
        } => BrowserEvent::Invite {
            call_id,
            from_uid,
            callee,
            content,
        },
        BridgeEvent::LocalInvitationCanceled { call_id, from_uid } => {
            BrowserEvent::Cancel { call_id, from_uid }
        }
        BridgeEvent::RemoteInvitationReceived { call_id, uid } => {
            BrowserEvent::InvitationReceived { call_id, uid }
        }
        BridgeEvent::RemoteInvitationAccepted {
            call_id,
            uid,
            response,
        } => BrowserEvent::Accepted {
            call_id,
            uid,
            response,
        },
        BridgeEvent::RemoteInvitationRefused {
            call_id,
            uid,
            response,
        } => BrowserEvent::Refused {
            call_id,
            uid,
            response,
        },
        BridgeEvent::PeerMessage { from_uid, to, text } => {
            BrowserEvent::PeerMessage { from_uid, to, text }
        }
        BridgeEvent::Media {
            call_id,
            from_uid,
            payload,
        } => BrowserEvent::Media {
            call_id,
            from_uid,
            payload,
        },
        BridgeEvent::SessionClosed { uid } => BrowserEvent::SessionClosed { uid },
    }
}

/// The call manager with the real ports.
pub type Calls = CallManager<HubBrowser, UaSip, SessionFactory>;

/// A running bridge.
pub struct Bridge {
    http_addr: SocketAddr,
    sip: SipUa,
    hub: Hub,
    calls: Calls,
    config: watch::Sender<Arc<Config>>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
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
    /// Binds the SIP and HTTP sockets, registers to the PBX and starts serving. Fails (and
    /// leaves nothing running) when a socket cannot be bound.
    pub async fn start(config: Config) -> anyhow::Result<Bridge> {
        let stop = CancellationToken::new();
        let (sip, mut incoming) = SipUa::start(&config, stop.child_token())
            .await
            .context("SIP user agent")?;
        let (bridge_tx, mut bridge_rx) = mpsc::channel(1024);
        let hub = Hub::new(HubSettings::from_config(&config), bridge_tx);

        let listener = tokio::net::TcpListener::bind(config.http.listen)
            .await
            .with_context(|| format!("cannot listen for HTTP on {}", config.http.listen))?;
        let http_addr = listener.local_addr().context("HTTP listener address")?;

        let bind_ip = config.sip.listen_ip;
        let sdp_ip = sdp_address(&config, sip.contact_addr());
        let pstn = config.pstn.as_ref().and_then(|p| p.addr.socket_addr());
        let (config_tx, config_rx) = watch::channel(Arc::new(config));
        let media = SessionFactory::new(config_rx.clone(), bind_ip, sdp_ip)
            .map_err(|e| anyhow::anyhow!("media: {e}"))?;
        let calls = CallManager::new(
            HubBrowser(hub.clone()),
            UaSip {
                ua: sip.clone(),
                pstn,
            },
            media,
            config_rx,
        );

        let mut tasks = Vec::new();
        {
            let calls = calls.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(event) = bridge_rx.recv().await {
                    calls.handle_browser(browser_event(event));
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
        let router = crate::web::router(hub.router(), config_tx.subscribe());
        {
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let server = axum::serve(listener, router)
                    .with_graceful_shutdown(async move { stop.cancelled().await });
                if let Err(e) = server.await {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            }));
        }
        tracing::info!(http = %http_addr, sip = %sip.local_addr(), "bridge started");
        Ok(Bridge {
            http_addr,
            sip,
            hub,
            calls,
            config: config_tx,
            stop,
            tasks,
        })
    }

    /// Where browsers connect (`ws://…/ws`, the web-demo at `/`).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
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

    /// The signalling hub.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Applies a re-read configuration to new calls (`acc_rule`, limits, timeouts, codecs).
    pub fn reload(&self, config: Config) {
        self.config.send_replace(Arc::new(config));
    }

    /// Refuses new calls from now on (SIP 503, invitations `DRAINING`) and waits up to `limit`
    /// for the calls in progress; returns how many were still there.
    pub async fn drain(&self, limit: Duration) -> usize {
        self.calls.start_draining();
        self.hub.set_accepting(false);
        self.calls.wait_idle(limit).await
    }

    /// Stops everything: unregisters, closes the HTTP server and the tasks.
    pub async fn shutdown(self) {
        self.sip.shutdown().await;
        self.stop.cancel();
        for task in self.tasks {
            task.abort();
        }
    }
}
