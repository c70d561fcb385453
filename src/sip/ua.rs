//! The SIP user agent: binds the transport, runs rsipstack's endpoint, registers the proxy
//! account, pings the PBX, turns incoming INVITEs into [`IncomingCall`]s and places outgoing calls.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rsipstack::dialog::authenticate::Credential;
use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::dialog::invitation::InviteOption;
use rsipstack::sip::prelude::{HeadersExt, ToTypedHeader};
use rsipstack::sip::{Header, Method, Request, SipMessage, StatusCode, Transport, Uri};
use rsipstack::transaction::endpoint::{EndpointInnerRef, EndpointOption, MessageInspector};
use rsipstack::transaction::transaction::Transaction;
use rsipstack::transaction::TransactionReceiver;
use rsipstack::transport::udp::{UdpConnection, UdpInner};
use rsipstack::transport::{SipAddr, TransportLayer};
use rsipstack::EndpointBuilder;
use tokio::sync::{mpsc, Notify, OnceCell};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn, Instrument};

use super::call::{self, CallDirection, CallStart, IncomingCall, OutgoingInvite, SipCall};
use super::door::ALLOW;
use super::doorman::{serve_tcp, Door, DoorInspector, DoorUdp, TcpWatch};
use super::error::SipError;
use super::inbound::{screen_invite, InviteFacts, PeerPolicy, Screening};
use super::pbx_set::{PbxSet, PingResult, Transition};
use super::session_timer::{TimerPolicy, UasAnswer};
use super::status::{PbxInternal, PbxState, RegState, RegistrationState, SipPbxStatus, SipStatus};
use super::target::TargetSources;
use super::tcp_gate::TcpGate;
use super::{options, register};
use crate::config::{Config, Host, RegisterMode, SipConfig, SipTransport};
use crate::events::{Event, EventBus};
use crate::ops::metrics::Metrics;

/// An in-dialog request on its way to the call's driver, boxed: a channel allocates room for 32
/// messages up front, and 32 unboxed transactions are ~29 KB held by every call.
pub(crate) type DoorRequest = Box<Transaction>;

/// Retry-After (seconds) on the 503 sent to new INVITEs while draining.
const DRAIN_RETRY_AFTER: &str = "60";

/// Tunables that are not in the config file (tests shorten them).
#[derive(Debug, Clone)]
pub struct UaOptions {
    /// First retry delay after a failed REGISTER (doubles up to `register_backoff_max`).
    pub register_backoff_min: Duration,
    /// Longest delay between REGISTER retries.
    pub register_backoff_max: Duration,
    /// How long one REGISTER may take before it counts as unanswered.
    pub request_timeout: Duration,
    /// How long shutdown waits for the unregister.
    pub unregister_timeout: Duration,
    /// Incoming calls queued for the call layer before new ones get 503.
    pub incoming_queue: usize,
    /// RFC 3261 T1 (RTT estimate, default 500 ms); all transaction timers scale with it
    /// (64*T1 is the INVITE timeout and the wait for an ACK). Tests shorten it.
    pub t1: Duration,
    /// Where registration and PBX reachability changes are published, if anywhere.
    pub events: Option<EventBus>,
    /// Where REGISTERs, refusals at the door and expired sessions are counted (the bridge's
    /// registry; a UA of its own gets a fresh one).
    pub metrics: Arc<Metrics>,
}

impl Default for UaOptions {
    fn default() -> Self {
        UaOptions {
            register_backoff_min: Duration::from_secs(2),
            register_backoff_max: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            unregister_timeout: Duration::from_secs(2),
            incoming_queue: 64,
            t1: Duration::from_millis(500),
            events: None,
            metrics: Arc::new(Metrics::new()),
        }
    }
}

/// One PBX's registration bookkeeping (its health is in the UA's [`PbxSet`]).
pub(crate) struct PbxLink {
    pub(crate) addr: SocketAddr,
    reg_state: Mutex<RegState>,
    /// The last registration state published as an event.
    reg_announced: Mutex<Option<RegState>>,
    /// Poked when this PBX answers again after being down, or (active/backup) when the active
    /// PBX may have changed.
    pub(crate) reregister: Notify,
}

impl PbxLink {
    fn new(addr: SocketAddr) -> Self {
        PbxLink {
            addr,
            reg_state: Mutex::new(RegState::Disabled),
            reg_announced: Mutex::new(None),
            reregister: Notify::new(),
        }
    }
}

/// Cheap, cloneable handle to the running UA. It runs (endpoint, registration, pings, dispatcher)
/// until [`SipUa::shutdown`] or the start-up token is cancelled, not until the last handle drops.
#[derive(Clone)]
pub struct SipUa {
    inner: Arc<UaInner>,
}

/// Shared state of the UA (used by the registration, ping and call tasks).
pub(crate) struct UaInner {
    pub(crate) endpoint: EndpointInnerRef,
    pub(crate) dialogs: Arc<DialogLayer>,
    pub(crate) local_addr: SocketAddr,
    pub(crate) contact_addr: SocketAddr,
    pub(crate) transport: SipTransport,
    /// The configured PBXs in file order; indexes match `health`.
    pub(crate) pbxs: Vec<PbxLink>,
    /// Up/down of each PBX and the choice of where calls and registrations go.
    health: Mutex<PbxSet>,
    register_mode: RegisterMode,
    pub(crate) account: String,
    pub(crate) credential: Option<Credential>,
    pub(crate) opts: UaOptions,
    sip: SipConfig,
    peers: PeerPolicy,
    active_calls: AtomicUsize,
    /// Off while the bridge drains: new INVITEs get 503 with Retry-After.
    accepting: AtomicBool,
    /// Cancelled last: stops the endpoint, pings and dispatcher.
    pub(crate) token: CancellationToken,
    /// Cancelled first on shutdown: the registration tasks unregister and end.
    pub(crate) stop_register: CancellationToken,
    register_tasks: Mutex<Vec<JoinHandle<()>>>,
    shutdown_done: OnceCell<()>,
    /// Per SIP Call-ID, the call driver that takes its in-dialog requests in arrival order.
    doors: Mutex<HashMap<String, mpsc::UnboundedSender<DoorRequest>>>,
}

impl std::fmt::Debug for SipUa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipUa")
            .field("local_addr", &self.inner.local_addr)
            .field(
                "pbxs",
                &self.inner.pbxs.iter().map(|p| p.addr).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl SipUa {
    /// Starts the UA with default tunables; see [`SipUa::start_with`].
    pub async fn start(
        config: &Config,
        shutdown: CancellationToken,
    ) -> Result<(SipUa, mpsc::Receiver<IncomingCall>), SipError> {
        SipUa::start_with(config, shutdown, UaOptions::default()).await
    }

    /// Binds `sip.listen_ip:global.sip_local_port` (UDP, plus TCP on the same port when
    /// `sip.transport = tcp`), starts the endpoint, registration and pings. When `shutdown` is
    /// cancelled the UA unregisters and stops, like [`SipUa::shutdown`].
    pub async fn start_with(
        config: &Config,
        shutdown: CancellationToken,
        opts: UaOptions,
    ) -> Result<(SipUa, mpsc::Receiver<IncomingCall>), SipError> {
        let mut pbx_addrs = Vec::new();
        for entry in config.global.sip_svr.entries() {
            pbx_addrs.push(resolve(&entry.addr.host, entry.addr.port).await?);
        }
        let health = PbxSet::new(
            config
                .global
                .sip_svr
                .entries()
                .iter()
                .zip(&pbx_addrs)
                .map(|(entry, addr)| (*addr, entry.weight, entry.priority))
                .collect(),
            config.sip.pbx_down_after,
            config.sip.pbx_up_after,
        );
        // the address toward the first PBX is the one we advertise
        let pbx = pbx_addrs[0];
        let sip = config.sip.clone();
        let token = CancellationToken::new();

        let bind = SocketAddr::new(sip.listen_ip, config.global.sip_local_port);
        let std_socket = std::net::UdpSocket::bind(bind).map_err(|source| SipError::Bind {
            transport: "udp",
            addr: bind,
            source,
        })?;
        let local_addr = std_socket.local_addr().map_err(|source| SipError::Bind {
            transport: "udp",
            addr: bind,
            source,
        })?;
        let contact_ip = advertised_ip(sip.public_ip, local_addr.ip(), pbx);
        let contact_addr = SocketAddr::new(contact_ip, local_addr.port());
        let external = (contact_addr != local_addr).then_some(contact_addr);

        let peers = PeerPolicy {
            pbxs: pbx_addrs.iter().map(SocketAddr::ip).collect(),
            allowed: door_peers(config, &sip).await,
        };
        let door = Arc::new(Door::new(
            peers.clone(),
            sip.user_agent.clone(),
            Arc::clone(&opts.metrics),
        ));
        let transport_layer = TransportLayer::new(token.child_token());
        transport_layer.set_stream_idle_timeout(sip.tcp_idle_timeout);
        let tcp_listener = if sip.transport == SipTransport::Tcp {
            // same port for TCP, accepted by the door's own loop (per-IP cap, first message)
            let listener =
                std::net::TcpListener::bind(local_addr).map_err(|source| SipError::Bind {
                    transport: "tcp",
                    addr: local_addr,
                    source,
                })?;
            let listener = listener
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(listener))
                .map_err(|source| SipError::Bind {
                    transport: "tcp",
                    addr: local_addr,
                    source,
                })?;
            Some(listener)
        } else {
            None
        };
        std_socket
            .set_nonblocking(true)
            .map_err(|source| SipError::Bind {
                transport: "udp",
                addr: bind,
                source,
            })?;
        let socket =
            tokio::net::UdpSocket::from_std(std_socket).map_err(|source| SipError::Bind {
                transport: "udp",
                addr: bind,
                source,
            })?;
        let udp = UdpConnection::attach(
            UdpInner {
                conn: Arc::new(DoorUdp::new(socket, door.clone())),
                addr: SipAddr {
                    r#type: Some(Transport::Udp),
                    addr: local_addr.into(),
                },
            },
            external,
            Some(token.child_token()),
        )
        .await;
        transport_layer.add_transport(udp.into());

        let tcp_watch = TcpWatch::shared(
            TcpGate::new(sip.tcp_max_per_ip as usize, sip.tcp_first_message_timeout),
            Arc::clone(&opts.metrics),
        );
        let t1 = opts.t1.max(Duration::from_millis(10));
        let endpoint = EndpointBuilder::new()
            .with_option(EndpointOption {
                t1,
                t1x64: t1 * 64,
                // Call-IDs end in our own address, not the stack's default domain
                callid_suffix: Some(contact_addr.ip().to_string()),
                ..EndpointOption::default()
            })
            .with_cancel_token(token.child_token())
            .with_transport_layer(transport_layer)
            .with_user_agent(&sip.user_agent)
            .with_allows(vec![
                Method::Invite,
                Method::Ack,
                Method::Cancel,
                Method::Bye,
                Method::Options,
                Method::Info,
                Method::Update,
            ])
            .with_inspector(Box::new(TraceInspector {
                server: sip.user_agent.clone(),
            }))
            .with_transport_inspector(Box::new(DoorInspector {
                door,
                watch: tcp_watch.clone(),
            }))
            .build();
        let incoming = endpoint.incoming_transactions()?;
        let endpoint_inner = endpoint.inner.clone();
        tokio::spawn(async move { endpoint.serve().await });
        if let Some(listener) = tcp_listener {
            let local = SipAddr {
                r#type: Some(Transport::Tcp),
                addr: external.unwrap_or(local_addr).into(),
            };
            let layer = endpoint_inner.clone();
            tokio::spawn(serve_tcp(
                listener,
                local,
                tcp_watch,
                move |connection| layer.transport_layer.add_connection(connection),
                token.child_token(),
            ));
        }
        let dialogs = Arc::new(DialogLayer::new(endpoint_inner.clone()));

        let (account, credential) = match &config.proxy {
            Some(proxy) => (
                proxy.sip_account.clone(),
                Some(Credential {
                    username: proxy.sip_account.clone(),
                    password: proxy.sip_pwd.expose().to_string(),
                    realm: None,
                    auth_username: None,
                }),
            ),
            None => ("srbridge".to_string(), None),
        };

        let inner = Arc::new(UaInner {
            endpoint: endpoint_inner,
            dialogs,
            local_addr,
            contact_addr,
            transport: sip.transport,
            pbxs: pbx_addrs.iter().copied().map(PbxLink::new).collect(),
            health: Mutex::new(health),
            register_mode: sip.register_mode,
            account,
            credential,
            opts: opts.clone(),
            peers,
            sip,
            active_calls: AtomicUsize::new(0),
            accepting: AtomicBool::new(true),
            token,
            stop_register: CancellationToken::new(),
            register_tasks: Mutex::new(Vec::new()),
            shutdown_done: OnceCell::new(),
            doors: Mutex::new(HashMap::new()),
        });
        info!(local = %local_addr, contact = %contact_addr, pbx = %config.global.sip_svr, transport = %inner.transport, "SIP user agent started");

        if inner.transport == SipTransport::Tcp {
            // one connection per PBX, opened before registration and pings race to open two
            for link in &inner.pbxs {
                let target = inner.sipaddr(link.addr);
                if let Err(e) = inner.endpoint.transport_layer.lookup(&target, None).await {
                    warn!(pbx = %link.addr, error = %e, "cannot connect to the PBX over TCP yet");
                }
            }
        }
        let (calls_tx, calls_rx) = mpsc::channel(opts.incoming_queue.max(1));
        tokio::spawn(dispatch(inner.clone(), incoming, calls_tx));
        if inner.credential.is_some() {
            let policy = register::RegisterPolicy::new(
                &inner.account,
                inner.sip.register_expires,
                opts.register_backoff_min,
                opts.register_backoff_max,
            );
            let mut tasks = lock(&inner.register_tasks);
            for index in 0..inner.pbxs.len() {
                if inner.should_register(index) {
                    inner.set_reg_state(index, RegState::Registering);
                }
                tasks.push(tokio::spawn(register::run(
                    inner.clone(),
                    index,
                    policy.clone(),
                )));
            }
        }
        if !inner.sip.options_interval.is_zero() {
            for index in 0..inner.pbxs.len() {
                tokio::spawn(options::run(
                    inner.clone(),
                    index,
                    inner.sip.options_interval,
                ));
            }
        }
        let ua = SipUa { inner };
        let watcher = ua.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => watcher.shutdown().await,
                _ = watcher.inner.token.cancelled() => {}
            }
        });
        Ok((ua, calls_rx))
    }

    /// The bound SIP address (UDP; TCP uses the same port).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The address the PBX is told to reach us at (Contact/Via).
    pub fn contact_addr(&self) -> SocketAddr {
        self.inner.contact_addr
    }

    /// Registration, PBX reachability (each PBX and overall) and call count for the status API.
    pub fn status(&self) -> SipStatus {
        let now = Instant::now();
        let pbxs: Vec<SipPbxStatus> = {
            let health = lock(&self.inner.health);
            self.inner
                .pbxs
                .iter()
                .zip(health.iter())
                .map(|(link, pbx)| SipPbxStatus {
                    addr: link.addr.to_string(),
                    weight: pbx.weight,
                    priority: pbx.priority,
                    reachability: pbx.state().show(now),
                    registration: lock(&link.reg_state).show(now),
                })
                .collect()
        };
        SipStatus {
            registration: overall_registration(&pbxs),
            pbx: overall_reachability(&pbxs),
            pbx_addr: self.inner.pbxs[0].addr.to_string(),
            pbxs,
            transport: self.inner.transport.to_string(),
            contact_addr: self.inner.contact_addr.to_string(),
            active_calls: self.inner.active_calls.load(Ordering::Relaxed),
            dialogs: self.inner.dialogs.len(),
        }
    }

    /// While off (the bridge drains for shutdown), new INVITEs are answered 503 with
    /// Retry-After and outgoing calls still in progress go on.
    pub fn set_accepting(&self, on: bool) {
        self.inner.accepting.store(on, Ordering::Release);
    }

    /// Sends an INVITE for `invite` (digest auth with the proxy credentials when challenged) and
    /// returns its handle at once; progress comes as events.
    pub async fn place_call(&self, invite: OutgoingInvite) -> Result<SipCall, SipError> {
        let ua = &self.inner;
        if ua.token.is_cancelled() || ua.stop_register.is_cancelled() {
            return Err(SipError::Shutdown);
        }
        if invite.callee.is_empty()
            || !invite
                .callee
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.!~*'()&=+$,;?/%#".contains(c))
        {
            return Err(SipError::Invalid(format!(
                "callee {:?} is not a SIP user part",
                invite.callee
            )));
        }
        for (name, value) in &invite.headers {
            let bad_name = name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if bad_name || value.chars().any(|c| c == '\r' || c == '\n') {
                return Err(SipError::Invalid(format!("header {name:?} cannot be sent")));
            }
        }
        // a PSTN gateway is tried alone; PBXs in the set's order, the next one on failover
        let mut targets: std::collections::VecDeque<SocketAddr> = match invite.gateway {
            Some(gateway) => [gateway].into(),
            None => {
                let order = lock(&ua.health).call_order(|n| rand::random::<u32>() % n.max(1));
                order.into_iter().map(|i| ua.pbxs[i].addr).collect()
            }
        };
        let Some(target) = targets.pop_front() else {
            return Err(SipError::Invalid("no PBX configured".into()));
        };
        let attempt = ua.send_invite(&invite, target).await?;
        Ok(call::start(CallStart {
            ua: ua.clone(),
            log_id: invite.log_id.clone(),
            direction: CallDirection::WebToSip,
            dialog: attempt.dialog,
            states: attempt.states,
            invite: Some(attempt.handle),
            offer: Some(invite.sdp_offer.clone()),
            failover: Some(call::Failover {
                invite,
                target,
                next: targets,
            }),
        }))
    }

    /// Unregisters (Expires: 0, bounded wait) and stops the endpoint; idempotent. Calls still up
    /// are not hung up first: drain them (BYE) before calling this.
    pub async fn shutdown(&self) {
        let ua = self.inner.clone();
        self.inner
            .shutdown_done
            .get_or_init(|| async move {
                info!("SIP user agent shutting down");
                ua.stop_register.cancel();
                let tasks = std::mem::take(&mut *lock(&ua.register_tasks));
                let limit = ua.opts.unregister_timeout + Duration::from_secs(1);
                for task in tasks {
                    if tokio::time::timeout(limit, task).await.is_err() {
                        warn!("registration task did not stop in time");
                    }
                }
                ua.token.cancel();
            })
            .await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl UaInner {
    /// Builds and sends the INVITE for `invite` to `target` (a PBX or the PSTN gateway).
    pub(crate) async fn send_invite(
        &self,
        invite: &OutgoingInvite,
        target: SocketAddr,
    ) -> Result<call::InviteAttempt, SipError> {
        let callee = self.uri(Some(&invite.callee), target)?;
        let caller = parse_uri(&format!("sip:{}@{}", self.account, target))?;
        let caller_id = call::sanitize(&invite.caller_id);
        let mut headers = Vec::new();
        if !caller_id.is_empty() {
            let identity = format!("\"{caller_id}\" <sip:{}@{}>", user_part(&caller_id), target);
            headers.push(Header::Other(
                "P-Asserted-Identity".into(),
                identity.clone(),
            ));
            headers.push(Header::Other(
                "Remote-Party-ID".into(),
                format!("{identity};party=calling;screen=yes;privacy=off"),
            ));
        }
        for (name, value) in &invite.headers {
            headers.push(Header::Other(name.clone(), value.clone()));
        }
        // RFC 4028: offer a session timer; the 2xx says who refreshes
        headers.extend(call::other_headers(self.timer_policy().offer(None)));
        let option = InviteOption {
            caller_display_name: (!caller_id.is_empty()).then_some(caller_id),
            caller,
            callee,
            destination: Some(self.sipaddr(target)),
            content_type: Some("application/sdp".to_string()),
            offer: Some(invite.sdp_offer.clone().into_bytes()),
            contact: self.contact_uri(&self.account)?,
            credential: self.credential.clone(),
            headers: Some(headers),
            ..Default::default()
        };
        let (state_tx, states) = self.dialogs.new_dialog_state_channel();
        // rsipstack keeps retrying a refused TCP connect until Timer B (64*T1): check first, so
        // an unreachable PBX fails the call at once with 503
        let unreachable = match self.transport {
            SipTransport::Tcp => self
                .endpoint
                .transport_layer
                .lookup(&self.sipaddr(target), None)
                .await
                .err(),
            SipTransport::Udp => None,
        };
        let (dialog, handle) = match unreachable {
            None => self.dialogs.do_invite_async(option, state_tx)?,
            Some(e) => {
                warn!(call_id = %invite.log_id, target = %target, error = %e, "cannot connect");
                let (dialog, _unsent) =
                    self.dialogs.create_client_invite_dialog(option, state_tx)?;
                (dialog, tokio::spawn(async move { Err(e) }))
            }
        };
        info!(call_id = %invite.log_id, callee = %invite.callee, target = %target, sip_call_id = %dialog.id().call_id, "outgoing call");
        trace!(call_id = %invite.log_id, sdp = ?invite.sdp_offer, "offer SDP");
        Ok(call::InviteAttempt {
            dialog,
            states,
            handle,
        })
    }

    /// Whether PBX `index` should hold the registration now (`[sip] register`).
    pub(crate) fn should_register(&self, index: usize) -> bool {
        lock(&self.health).should_register(self.register_mode, index)
    }

    pub(crate) fn set_reg_state(&self, index: usize, state: RegState) {
        let Some(link) = self.pbxs.get(index) else {
            return;
        };
        if let Some(events) = &self.opts.events {
            let mut announced = lock(&link.reg_announced);
            if RegState::announces(announced.as_ref(), &state) {
                events.publish(Event::RegistrationChanged {
                    account: self.account.clone(),
                    pbx: link.addr.to_string(),
                    registration: state.show(Instant::now()),
                });
                *announced = Some(state.clone());
            }
        }
        *lock(&link.reg_state) = state;
    }

    /// An OPTIONS result for PBX `index`: updates its health, publishes `pbx.up/down`, and wakes
    /// the registrations that may have to act (the PBX came back, or the active one changed).
    pub(crate) fn on_ping(&self, index: usize, result: &PingResult) -> Transition {
        self.update_health(index, |set, now| set.on_ping(index, result, now))
    }

    /// A call to PBX `addr` failed on the transport: it is down until its pings are answered
    /// again. Without pings nothing would bring it back, so then it is left as it was.
    pub(crate) fn on_call_transport_error(&self, addr: SocketAddr, error: &str) {
        if self.sip.options_interval.is_zero() {
            return;
        }
        let index = lock(&self.health).index_of(addr);
        if let Some(index) = index {
            let transition =
                self.update_health(index, |set, now| set.on_transport_error(index, error, now));
            if transition == Transition::WentDown {
                warn!(pbx = %addr, error, "PBX marked down after a transport error");
            }
        }
    }

    fn update_health(
        &self,
        index: usize,
        change: impl FnOnce(&mut PbxSet, Instant) -> Transition,
    ) -> Transition {
        let (old, new, transition) = {
            let mut set = lock(&self.health);
            let old = set.get(index).map(|p| p.state().clone());
            let transition = change(&mut set, Instant::now());
            let new = set.get(index).map(|p| p.state().clone());
            (old, new, transition)
        };
        if transition != Transition::None {
            match self.register_mode {
                RegisterMode::All if transition == Transition::CameBack => {
                    if let Some(link) = self.pbxs.get(index) {
                        link.reregister.notify_one();
                    }
                }
                RegisterMode::All => {}
                RegisterMode::ActiveBackup => {
                    for link in &self.pbxs {
                        link.reregister.notify_one();
                    }
                }
            }
        }
        let (Some(events), Some(old), Some(new), Some(link)) =
            (&self.opts.events, old, new, self.pbxs.get(index))
        else {
            return transition;
        };
        let pbx = link.addr.to_string();
        match (old, new) {
            (PbxInternal::Up { .. }, PbxInternal::Up { .. })
            | (PbxInternal::Down { .. }, PbxInternal::Down { .. })
            | (_, PbxInternal::Unknown) => {}
            (_, PbxInternal::Up { rtt_ms }) => {
                events.publish(Event::PbxUp { pbx, rtt_ms });
            }
            (_, PbxInternal::Down { error, .. }) => {
                events.publish(Event::PbxDown { pbx, error });
            }
        }
        transition
    }

    pub(crate) fn call_started(&self) {
        self.active_calls.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn call_ended(&self) {
        self.active_calls.fetch_sub(1, Ordering::Relaxed);
    }

    /// Our side of RFC 4028 negotiation (`[sip] session_expires`, `min_se`).
    pub(crate) fn timer_policy(&self) -> TimerPolicy {
        TimerPolicy {
            session_expires: self.sip.session_expires,
            min_se: self.sip.min_se,
        }
    }

    /// The in-dialog requests of `sip_call_id` from now on, in arrival order (`None` if another
    /// call already has that Call-ID: its requests then take the unordered path).
    pub(crate) fn open_door(
        &self,
        sip_call_id: &str,
    ) -> Option<mpsc::UnboundedReceiver<DoorRequest>> {
        let mut doors = lock(&self.doors);
        if doors.contains_key(sip_call_id) {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        doors.insert(sip_call_id.to_string(), tx);
        Some(rx)
    }

    /// No more requests for `sip_call_id` reach its driver.
    pub(crate) fn close_door(&self, sip_call_id: &str) {
        lock(&self.doors).remove(sip_call_id);
    }

    /// Passes an in-dialog request (not an ACK) to its call's driver; gives it back when no
    /// driver takes it.
    fn to_door(&self, tx: Transaction) -> Option<Transaction> {
        if tx.original.method == Method::Ack || !has_to_tag(&tx) {
            return Some(tx);
        }
        let Ok(call_id) = tx.original.call_id_header().map(|c| c.value().to_string()) else {
            return Some(tx);
        };
        match lock(&self.doors).get(&call_id) {
            Some(door) => door.send(Box::new(tx)).err().map(|e| *e.0),
            None => Some(tx),
        }
    }

    fn rs_transport(&self) -> Transport {
        match self.transport {
            SipTransport::Udp => Transport::Udp,
            SipTransport::Tcp => Transport::Tcp,
        }
    }

    /// Where to send requests for `addr` with the configured transport.
    pub(crate) fn sipaddr(&self, addr: SocketAddr) -> SipAddr {
        SipAddr {
            r#type: Some(self.rs_transport()),
            addr: addr.into(),
        }
    }

    pub(crate) fn pbx_sipaddr(&self, index: usize) -> SipAddr {
        self.sipaddr(self.pbxs[index.min(self.pbxs.len() - 1)].addr)
    }

    fn transport_param(&self) -> &'static str {
        match self.transport {
            SipTransport::Udp => "",
            SipTransport::Tcp => ";transport=tcp",
        }
    }

    /// `sip:[user@]addr[;transport=tcp]`; the port is always present (Kamailio needs it).
    fn uri(&self, user: Option<&str>, addr: SocketAddr) -> Result<Uri, SipError> {
        let user = user.map(|u| format!("{u}@")).unwrap_or_default();
        parse_uri(&format!("sip:{user}{addr}{}", self.transport_param()))
    }

    /// The REGISTER Request-URI of PBX `addr`: the PBX itself.
    pub(crate) fn registrar_uri(&self, addr: SocketAddr) -> Result<Uri, SipError> {
        self.uri(None, addr)
    }

    /// Our Contact URI for `user`.
    pub(crate) fn contact_uri(&self, user: &str) -> Result<Uri, SipError> {
        self.uri(Some(user), self.contact_addr)
    }

    /// Our Contact header for `user` (registration).
    pub(crate) fn contact_header(&self, user: &str) -> rsipstack::sip::typed::Contact {
        let uri = self.contact_uri(user).unwrap_or_else(|_| Uri {
            scheme: Some(rsipstack::sip::Scheme::Sip),
            host_with_port: self.contact_addr.into(),
            ..Default::default()
        });
        rsipstack::sip::typed::Contact {
            display_name: None,
            uri,
            params: vec![],
        }
    }

    /// An out-of-dialog request to PBX `index` (OPTIONS pings), with a Via for the connection it
    /// will actually use.
    pub(crate) async fn out_of_dialog_request(
        &self,
        index: usize,
        method: Method,
        seq: u32,
        tag: String,
    ) -> Result<Request, SipError> {
        let pbx = self.pbxs[index.min(self.pbxs.len() - 1)].addr;
        let target = self.sipaddr(pbx);
        let via = match self.transport {
            SipTransport::Udp => self.endpoint.get_via(None, None)?,
            SipTransport::Tcp => {
                let (connection, _) = self.endpoint.transport_layer.lookup(&target, None).await?;
                self.endpoint
                    .get_via(Some(connection.get_addr().clone()), None)?
            }
        };
        let ruri = self.registrar_uri(pbx)?;
        let from = rsipstack::sip::typed::From {
            display_name: None,
            uri: parse_uri(&format!("sip:{}@{}", self.account, pbx))?,
            params: vec![],
        }
        .with_tag(tag.into());
        let to = rsipstack::sip::typed::To {
            display_name: None,
            uri: ruri.clone(),
            params: vec![],
        };
        let mut request = self
            .endpoint
            .make_request(method, ruri, via, from, to, seq, None);
        request
            .headers
            .push(Header::Contact(self.contact_header(&self.account).into()));
        request.headers.push(Header::ContentLength(0u32.into()));
        Ok(request)
    }
}

/// The registration to show as the bridge's own: registered if any PBX holds it, else the
/// first PBX that tries (one PBX: exactly its state).
fn overall_registration(pbxs: &[SipPbxStatus]) -> RegistrationState {
    let states = || pbxs.iter().map(|p| &p.registration);
    states()
        .find(|r| matches!(r, RegistrationState::Registered { .. }))
        .or_else(|| states().find(|r| !matches!(r, RegistrationState::Disabled)))
        .cloned()
        .unwrap_or(RegistrationState::Disabled)
}

/// Reachability as a whole: up if any PBX is (the fastest RTT), down if all are, else unknown.
fn overall_reachability(pbxs: &[SipPbxStatus]) -> PbxState {
    let fastest_up = pbxs
        .iter()
        .filter_map(|p| match p.reachability {
            PbxState::Up { rtt_ms } => Some(rtt_ms),
            _ => None,
        })
        .min();
    if let Some(rtt_ms) = fastest_up {
        return PbxState::Up { rtt_ms };
    }
    match pbxs.first() {
        Some(first)
            if pbxs
                .iter()
                .all(|p| matches!(p.reachability, PbxState::Down { .. })) =>
        {
            first.reachability.clone()
        }
        _ => PbxState::Unknown,
    }
}

fn parse_uri(text: &str) -> Result<Uri, SipError> {
    Uri::try_from(text).map_err(|e| SipError::Invalid(format!("URI {text}: {e}")))
}

/// A caller id made fit for the user part of a URI.
fn user_part(caller_id: &str) -> String {
    let user: String = caller_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.!~*'()".contains(*c))
        .collect();
    if user.is_empty() {
        "anonymous".to_string()
    } else {
        user
    }
}

/// The IP to put in Contact/Via: `public_ip`, else the bound IP, else (bound to 0.0.0.0) the local
/// IP the OS uses toward the PBX.
fn advertised_ip(public_ip: Option<IpAddr>, bound: IpAddr, pbx: SocketAddr) -> IpAddr {
    if let Some(ip) = public_ip {
        return ip;
    }
    if !bound.is_unspecified() {
        return bound;
    }
    let any: SocketAddr = if pbx.is_ipv4() {
        "0.0.0.0:0".parse().unwrap_or(pbx)
    } else {
        "[::]:0".parse().unwrap_or(pbx)
    };
    std::net::UdpSocket::bind(any)
        .and_then(|s| {
            s.connect(pbx)?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(bound)
}

async fn resolve(host: &Host, port: u16) -> Result<SocketAddr, SipError> {
    match host {
        Host::Ip(ip) => Ok(SocketAddr::new(*ip, port)),
        Host::Name(name) => tokio::net::lookup_host((name.as_str(), port))
            .await
            .map_err(|e| SipError::Resolve(name.clone(), e.to_string()))?
            .next()
            .ok_or_else(|| SipError::Resolve(name.clone(), "no address".into())),
    }
}

/// Besides the PBX and `allowed_peers`, the PSTN gateway may send requests (its BYEs).
async fn door_peers(config: &Config, sip: &SipConfig) -> Vec<IpAddr> {
    let mut allowed = sip.allowed_peers.clone();
    if let Some(pstn) = &config.pstn {
        match resolve(&pstn.addr.host, pstn.addr.port).await {
            Ok(gateway) => allowed.push(gateway.ip()),
            Err(e) => warn!(error = %e, "PSTN gateway not resolved: its requests will be refused"),
        }
    }
    allowed
}

/// Logs every SIP message at trace level only (bodies are SENSITIVE; passwords never appear:
/// digest responses are hashes), and names us in `Server` on responses (rsipstack puts its
/// `User-Agent` on every message).
struct TraceInspector {
    server: String,
}

impl MessageInspector for TraceInspector {
    fn before_send(&self, mut msg: SipMessage, dest: Option<&SipAddr>) -> SipMessage {
        if let SipMessage::Response(response) = &mut msg {
            response
                .headers
                .retain(|h| !matches!(h, Header::UserAgent(_) | Header::Server(_)));
            response
                .headers
                .push(Header::Server(self.server.clone().into()));
        }
        trace!(dest = ?dest.map(|d| d.to_string()), message = ?msg.to_string(), "SIP send");
        msg
    }

    fn after_received(&self, msg: SipMessage, from: Option<&SipAddr>) -> SipMessage {
        trace!(from = ?from.map(|d| d.to_string()), message = ?msg.to_string(), "SIP received");
        msg
    }
}

/// Routes every new server transaction: in-dialog requests to their dialog, OPTIONS answered,
/// INVITEs screened and turned into calls.
async fn dispatch(
    ua: Arc<UaInner>,
    mut incoming: TransactionReceiver,
    calls: mpsc::Sender<IncomingCall>,
) {
    loop {
        let tx = tokio::select! {
            _ = ua.token.cancelled() => break,
            tx = incoming.recv() => match tx {
                Some(tx) => tx,
                None => break,
            },
        };
        // in-dialog requests of a call go to its driver here, in arrival order: a BYE must not
        // overtake the re-INVITE just ahead of it
        let Some(tx) = ua.to_door(tx) else { continue };
        let ua = ua.clone();
        let calls = calls.clone();
        tokio::spawn(async move { handle_request(ua, tx, calls).await });
    }
    debug!("SIP dispatcher stopped");
}

fn source_of(tx: &Transaction) -> Option<SocketAddr> {
    tx.connection
        .as_ref()
        .and_then(|c| c.get_remote_addr())
        .and_then(|a| a.get_socketaddr().ok())
}

async fn reply_logged(tx: &mut Transaction, code: StatusCode, headers: Vec<Header>) {
    if let Err(e) = tx.reply_with(code, headers, None).await {
        debug!(error = %e, "reply failed");
    }
}

fn has_to_tag(tx: &Transaction) -> bool {
    tx.original
        .to_header()
        .ok()
        .and_then(|t| t.tag().ok().flatten())
        .is_some()
}

async fn handle_request(ua: Arc<UaInner>, mut tx: Transaction, calls: mpsc::Sender<IncomingCall>) {
    let method = tx.original.method;
    let in_dialog = has_to_tag(&tx);
    let source = source_of(&tx);
    if in_dialog {
        match ua.dialogs.match_dialog(&tx) {
            Some(mut dialog) => {
                if matches!(method, Method::Invite | Method::Update) {
                    await_ack(&dialog).await;
                }
                if let Err(e) = dialog.handle(&mut tx).await {
                    debug!(%method, error = %e, "in-dialog request");
                }
            }
            None if method == Method::Ack => {}
            None => {
                debug!(%method, source = ?source, "request for an unknown dialog: 481");
                reply_logged(&mut tx, StatusCode::CallTransactionDoesNotExist, vec![]).await;
            }
        }
        return;
    }
    match method {
        Method::Options => {
            debug!(source = ?source, "OPTIONS answered 200");
            reply_logged(
                &mut tx,
                StatusCode::OK,
                vec![
                    Header::Allow(ALLOW.into()),
                    Header::Accept("application/sdp".into()),
                ],
            )
            .await;
        }
        Method::Invite => incoming_invite(ua, tx, source, calls).await,
        Method::Ack => {}
        Method::Bye | Method::Cancel => {
            reply_logged(&mut tx, StatusCode::CallTransactionDoesNotExist, vec![]).await
        }
        _ => {
            reply_logged(
                &mut tx,
                StatusCode::MethodNotAllowed,
                vec![Header::Allow(ALLOW.into())],
            )
            .await
        }
    }
}

/// A re-INVITE can overtake the ACK of our 200 (both cross the PBX): let the ACK land first so
/// the dialog treats it as a re-offer, not as a second initial INVITE.
async fn await_ack(dialog: &rsipstack::dialog::dialog::Dialog) {
    use rsipstack::dialog::dialog::DialogState;
    let deadline = Instant::now() + Duration::from_secs(2);
    while matches!(dialog.state(), DialogState::WaitAck(..)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn incoming_invite(
    ua: Arc<UaInner>,
    mut tx: Transaction,
    source: Option<SocketAddr>,
    calls: mpsc::Sender<IncomingCall>,
) {
    let Some(source) = source else {
        warn!("INVITE without a source address: 400");
        reply_logged(&mut tx, StatusCode::BadRequest, vec![]).await;
        return;
    };
    let req = tx.original.clone();
    let target_header = req.header_value(&ua.sip.target_header);
    let to_user = req
        .to_header()
        .ok()
        .and_then(|t| t.uri().ok())
        .and_then(|uri| uri.user().map(str::to_string));
    let facts = InviteFacts {
        source,
        target: TargetSources {
            header: target_header.as_deref(),
            ruri_user: req.uri.user(),
            to_user: to_user.as_deref(),
        },
    };
    let target_uid = match screen_invite(&facts, &ua.peers, &ua.sip.dial_prefix) {
        Screening::Accept { target_uid } => target_uid,
        Screening::Refuse { code, reason } => {
            info!(%source, code, reason, ruri = %req.uri, target_header = ?target_header, "incoming INVITE refused");
            reply_logged(&mut tx, StatusCode::from(code), vec![]).await;
            return;
        }
    };
    if ua.token.is_cancelled() || ua.stop_register.is_cancelled() {
        reply_logged(&mut tx, StatusCode::ServiceUnavailable, vec![]).await;
        return;
    }
    let timer = ua
        .timer_policy()
        .answer(&call::timer_headers(&req.headers, false));
    if let UasAnswer::TooBrief { min_se } = timer {
        info!(%source, min_se, "incoming INVITE's session interval below min_se: 422");
        let min_se = Header::Other("Min-SE".into(), min_se.to_string());
        reply_logged(&mut tx, StatusCode::SessionIntervalTooSmall, vec![min_se]).await;
        return;
    }
    if !ua.accepting.load(Ordering::Acquire) {
        info!(%source, "incoming INVITE refused while draining: 503");
        reply_logged(
            &mut tx,
            StatusCode::ServiceUnavailable,
            vec![Header::Other(
                "Retry-After".into(),
                DRAIN_RETRY_AFTER.into(),
            )],
        )
        .await;
        return;
    }
    // at once, before anything can delay us: the PBX stops retransmitting
    if let Err(e) = tx.send_trying().await {
        debug!(error = %e, "100 Trying not sent");
    }
    let (caller_number, caller_display) = match req.from_header().and_then(|f| f.typed()) {
        Ok(from) => (
            from.uri.user().unwrap_or_default().to_string(),
            from.display_name.filter(|d| !d.is_empty()),
        ),
        Err(_) => (String::new(), None),
    };
    let contact = match ua.contact_uri(&ua.account) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot build our Contact: 500");
            reply_logged(&mut tx, StatusCode::ServerInternalError, vec![]).await;
            return;
        }
    };
    let (state_tx, states) = ua.dialogs.new_dialog_state_channel();
    let dialog = match ua
        .dialogs
        .get_or_create_server_invite(&tx, state_tx, None, Some(contact))
    {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %e, "cannot create a dialog for the INVITE: 500");
            reply_logged(&mut tx, StatusCode::ServerInternalError, vec![]).await;
            return;
        }
    };
    let log_id = format!("in-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let sdp_offer = (!req.body.is_empty()).then(|| String::from_utf8_lossy(&req.body).into_owned());
    info!(call_id = %log_id, %source, target_uid = %target_uid, caller = %caller_number, sip_call_id = %dialog.id().call_id, "incoming call");
    if let Some(sdp) = &sdp_offer {
        trace!(call_id = %log_id, sdp = ?sdp, "offer SDP");
    }
    let call = call::start(CallStart {
        ua: ua.clone(),
        log_id: log_id.clone(),
        direction: CallDirection::SipToWeb,
        dialog: dialog.clone(),
        states,
        invite: None,
        offer: None,
        failover: None,
    });
    // drives the INVITE server transaction: 100 Trying now, then our answer, ACK or CANCEL
    let mut server_dialog = dialog;
    let span = tracing::info_span!("sip_invite", call_id = %log_id);
    tokio::spawn(
        async move {
            if let Err(e) = server_dialog.handle(&mut tx).await {
                debug!(error = %e, "INVITE transaction");
            }
        }
        .instrument(span),
    );
    let incoming = IncomingCall {
        call,
        target_uid,
        caller_number,
        caller_display,
        sdp_offer,
        source,
    };
    if let Err(e) = calls.try_send(incoming) {
        let incoming = match e {
            mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
        };
        warn!(call_id = %log_id, "no room for the incoming call: 503");
        let _ = incoming.call.reject(503, "Service Unavailable");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_ip_is_public_then_bound_then_the_route_to_the_pbx() {
        let pbx: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let public: IpAddr = "203.0.113.7".parse().unwrap();
        let bound: IpAddr = "127.0.0.1".parse().unwrap();
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        assert_eq!(advertised_ip(Some(public), bound, pbx), public);
        assert_eq!(advertised_ip(None, bound, pbx), bound);
        let picked = advertised_ip(None, any, pbx);
        assert!(!picked.is_unspecified(), "never 0.0.0.0 in headers");
        assert_eq!(picked, bound, "the address used toward a loopback PBX");
    }

    fn pbx(reachability: PbxState, registration: RegistrationState) -> SipPbxStatus {
        SipPbxStatus {
            addr: "10.0.0.1:5060".into(),
            weight: 1,
            priority: 1,
            reachability,
            registration,
        }
    }

    #[test]
    fn the_bridge_is_registered_and_up_when_any_pbx_is() {
        let failed = RegistrationState::Failed {
            last_error: "timeout".into(),
            retry_in: 4,
        };
        let registered = RegistrationState::Registered { expires_in: 90 };
        let down = PbxState::Down {
            since_secs: 3,
            last_error: "no answer to OPTIONS".into(),
        };
        let up = |rtt_ms| PbxState::Up { rtt_ms };
        let one = [pbx(down.clone(), failed.clone())];
        assert_eq!(overall_registration(&one), failed, "one PBX: its own state");
        assert_eq!(overall_reachability(&one), down);
        let two = [
            pbx(down.clone(), failed.clone()),
            pbx(up(7), registered.clone()),
        ];
        assert_eq!(overall_registration(&two), registered);
        assert_eq!(overall_reachability(&two), up(7));
        let standby = [
            pbx(PbxState::Unknown, RegistrationState::Disabled),
            pbx(up(9), RegistrationState::Registering),
            pbx(up(3), RegistrationState::Disabled),
        ];
        assert_eq!(
            overall_registration(&standby),
            RegistrationState::Registering,
            "an active/backup standby does not hide the active one"
        );
        assert_eq!(overall_reachability(&standby), up(3), "the fastest");
        let unknown = [
            pbx(down, failed),
            pbx(PbxState::Unknown, RegistrationState::Disabled),
        ];
        assert_eq!(overall_reachability(&unknown), PbxState::Unknown);
    }

    #[test]
    fn caller_ids_become_valid_uri_users() {
        assert_eq!(user_part("alice"), "alice");
        assert_eq!(user_part("al ice<>@"), "alice");
        assert_eq!(user_part("张三"), "anonymous");
    }
}
