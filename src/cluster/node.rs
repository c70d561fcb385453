//! The tokio shell around [`ClusterCore`]: the NATS connection, one driver task (presence in,
//! heartbeats out, node messages in, the TTL clock) and one publisher task, so what this node
//! says leaves in the order it was said.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::core::{ClusterCore, ForHub, Lapsed, PresenceOutcome, Route};
use super::health::{diagnose, HealthChange, NatsHealth, NatsTrouble};
use super::wire::{
    decode, encode, node_subject, NodeMsg, PresenceMsg, ToBrowser, PRESENCE_SUBJECT,
};
use crate::config::{ClusterConfig, NatsAuth};
use crate::events::Event;
use crate::ops::metrics::Metrics;
use crate::ops::status::{ClusterState, ClusterStatus};
use crate::signal::{BridgeEvent, Hub, LocalInvitationState, RemoteFailureReason};

/// Bound on one publish into the client (it buffers while reconnecting).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on the goodbye at shutdown.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on one diagnostic connection attempt.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

struct Shared {
    core: Mutex<ClusterCore>,
    outbox: mpsc::UnboundedSender<(String, Bytes)>,
    connected: AtomicBool,
    /// Why the connection is down, from the client's events and our diagnostic attempts.
    health: Mutex<NatsHealth>,
}

/// What the call layer's browser side needs from the cluster: where a call's browser is, and a
/// way to send it signalling. Cheap to clone.
#[derive(Clone)]
pub struct ClusterLink {
    shared: Arc<Shared>,
}

impl ClusterLink {
    fn core(&self) -> MutexGuard<'_, ClusterCore> {
        // Single inserts and removes: a poisoned lock still holds consistent tables.
        self.shared
            .core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish<T: serde::Serialize>(&self, subject: String, msg: &T) {
        // Only fails once the publisher task is gone (shutdown).
        let _ = self.shared.outbox.send((subject, encode(msg)));
    }

    /// Whether the NATS connection is up.
    pub fn connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Rings `uid` on the node it is logged in to; `false` when no node has it (or NATS is down).
    pub fn ring(&self, uid: &str, call_id: &str, caller: &str, content: &str) -> bool {
        if !self.connected() {
            return false;
        }
        let Some(node) = self.core().ring_remote(call_id, uid) else {
            return false;
        };
        info!(%call_id, %uid, %node, "browser is on another node: ringing it there");
        self.send(
            &node,
            ToBrowser::Ring {
                uid: uid.to_string(),
                call_id: call_id.to_string(),
                caller: caller.to_string(),
                content: content.to_string(),
            },
        );
        true
    }

    /// Sends `msg` to the browser node `node`.
    pub fn send(&self, node: &str, msg: ToBrowser) {
        let me = self.core().me().to_string();
        self.publish(node_subject(node), &NodeMsg::ToBrowser { from: me, msg });
    }

    /// The node holding the browser of `call_id`, a call run here, when not this one.
    pub fn browser_node(&self, call_id: &str) -> Option<String> {
        self.core().browser_node(call_id)
    }

    /// The node holding `uid`'s browser for one of the calls run here.
    pub fn browser_node_of_uid(&self, uid: &str) -> Option<String> {
        self.core().browser_node_of_uid(uid)
    }

    /// A call run here is over: the browser's node forgets it.
    pub fn released(&self, uid: &str, call_id: &str) {
        let node = self.core().call_released(call_id);
        if let Some(node) = node {
            self.send(
                &node,
                ToBrowser::Released {
                    uid: uid.to_string(),
                    call_id: call_id.to_string(),
                },
            );
        }
    }
}

/// This node's membership of the cluster.
#[derive(Clone)]
pub struct Cluster {
    link: ClusterLink,
    client: async_nats::Client,
    hub: Hub,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Cluster {
    /// Joins the cluster of `config`: connects to NATS (in the background: a server that is down
    /// is retried for as long as the bridge runs, and the bridge serves its own users meanwhile),
    /// reads presence and this node's subject, and starts the heartbeat. Browser events for calls
    /// run here, sent by other nodes, go to `to_calls` (the hub's channel to the call layer).
    pub async fn start(
        config: &ClusterConfig,
        hub: Hub,
        to_calls: mpsc::Sender<BridgeEvent>,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> anyhow::Result<(Cluster, Vec<JoinHandle<()>>)> {
        let url = config.nats_url();
        let (events_tx, events) = mpsc::unbounded_channel();
        let client = connect_options(config)
            .retry_on_initial_connect()
            .event_callback(move |event| {
                let _ = events_tx.send(event);
                async {}
            })
            .connect(url.as_str())
            .await
            .map_err(|e| anyhow::anyhow!("[cluster] nats {url}: {e}"))?;
        let presence = client
            .subscribe(PRESENCE_SUBJECT)
            .await
            .map_err(|e| anyhow::anyhow!("NATS subscribe: {e}"))?;
        let own = client
            .subscribe(node_subject(&config.node_id))
            .await
            .map_err(|e| anyhow::anyhow!("NATS subscribe: {e}"))?;
        let (outbox, outbox_rx) = mpsc::unbounded_channel();
        let link = ClusterLink {
            shared: Arc::new(Shared {
                core: Mutex::new(ClusterCore::new(&config.node_id, config.presence_ttl)),
                outbox,
                connected: AtomicBool::new(false),
                health: Mutex::new(NatsHealth::default()),
            }),
        };
        let (logins_tx, logins) = mpsc::unbounded_channel();
        let (probes, probe_outcomes) = mpsc::unbounded_channel();
        hub.watch_logins(logins_tx);
        metrics.set_cluster_connected(Some(false));
        info!(node = %config.node_id, nats = %url, "joining the cluster");
        let driver = Driver {
            link: link.clone(),
            client: client.clone(),
            hub: hub.clone(),
            to_calls,
            metrics,
            heartbeat: (config.presence_ttl / 5)
                .clamp(Duration::from_millis(200), Duration::from_secs(2)),
            url: url.clone(),
            config: config.clone(),
            probes,
        };
        let tasks = vec![
            tokio::spawn(publisher(
                client.clone(),
                link.clone(),
                outbox_rx,
                stop.clone(),
            )),
            tokio::spawn(driver.run(presence, own, logins, events, probe_outcomes, stop)),
        ];
        Ok((Cluster { link, client, hub }, tasks))
    }

    /// The call layer's view of the cluster.
    pub fn link(&self) -> ClusterLink {
        self.link.clone()
    }

    /// Routes an event of the local hub: one for a call run on another node goes there; what
    /// is for the call layer here is returned.
    pub fn route(&self, event: BridgeEvent) -> Option<BridgeEvent> {
        let route = self.link.core().route(event, Instant::now());
        match route {
            Route::Local(event) => Some(event),
            Route::Remote { to, local } => {
                let me = self.link.core().me().to_string();
                for (node, event) in to {
                    // The caller's cancel of a web ↔ web invitation is answered here, as the
                    // call layer answers it for SIP calls.
                    if let BridgeEvent::Cancel { call_id, from_uid } = &event {
                        self.hub.local_invitation_state(
                            from_uid,
                            call_id,
                            LocalInvitationState::Canceled,
                            None,
                            None,
                        );
                    }
                    debug!(%node, ?event, "browser event for a call on another node");
                    self.link.publish(
                        node_subject(&node),
                        &NodeMsg::FromBrowser {
                            from: me.clone(),
                            event,
                        },
                    );
                }
                local
            }
        }
    }

    /// What `/api/status` shows under `cluster`.
    pub fn status(&self) -> ClusterStatus {
        let connected = self.link.connected();
        let error = match connected {
            true => None,
            false => self.link.shared.trouble(),
        };
        let core = self.link.core();
        ClusterStatus {
            node_id: core.me().to_string(),
            state: if connected {
                ClusterState::Connected
            } else {
                ClusterState::Disconnected
            },
            error,
            peers: core.peers(),
            remote_users: core.remote_online().len(),
        }
    }

    /// Tells the other nodes this one is going (its users are offline at once, not after the
    /// TTL); best effort, bounded.
    pub async fn leave(&self) {
        if !self.link.connected() {
            return;
        }
        let me = self.link.core().me().to_string();
        let bye = encode(&PresenceMsg::Leave { node: me });
        let _ = tokio::time::timeout(LEAVE_TIMEOUT, async {
            let _ = self.client.publish(PRESENCE_SUBJECT, bye).await;
            let _ = self.client.flush().await;
        })
        .await;
    }
}

impl Shared {
    fn health(&self) -> MutexGuard<'_, NatsHealth> {
        // Each update is one call on a small state machine: a poisoned lock still holds a
        // consistent value.
        self.health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn trouble(&self) -> Option<String> {
        self.health().describe()
    }
}

/// The client's settings with `[cluster]`'s credentials and TLS: once connected, a lost
/// connection is retried every second at most for as long as the bridge runs.
fn connect_options(config: &ClusterConfig) -> async_nats::ConnectOptions {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("srbridge {}", config.node_id))
        .connection_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_secs(2))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 200).min(1000))
        });
    match &config.nats_auth {
        NatsAuth::None => {}
        NatsAuth::UserPassword { user, password } => {
            options = options.user_and_password(user.clone(), password.expose().to_string());
        }
        NatsAuth::Token(token) => options = options.token(token.expose().to_string()),
    }
    if let Some(tls) = &config.nats_tls {
        options = options.require_tls(true);
        if let Some(ca) = &tls.ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some(client) = &tls.client {
            options = options.add_client_certificate(client.cert.clone(), client.key.clone());
        }
    }
    options
}

/// Sends what the node says, in order; while NATS is down it is dropped (presence is re-sent
/// by the heartbeat, and calls across nodes end when the TTL lapses).
async fn publisher(
    client: async_nats::Client,
    link: ClusterLink,
    mut outbox: mpsc::UnboundedReceiver<(String, Bytes)>,
    stop: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            next = outbox.recv() => next,
            _ = stop.cancelled() => None,
        };
        let Some((subject, payload)) = next else {
            break;
        };
        if !link.connected() {
            debug!(%subject, "NATS down: cluster message dropped");
            continue;
        }
        match tokio::time::timeout(PUBLISH_TIMEOUT, client.publish(subject, payload)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(error = %e, "cluster message not published"),
            Err(_) => debug!("cluster publish timed out"),
        }
    }
}

struct Driver {
    link: ClusterLink,
    client: async_nats::Client,
    hub: Hub,
    to_calls: mpsc::Sender<BridgeEvent>,
    /// The bridge's registry (`srbridge_cluster_connected`).
    metrics: Arc<Metrics>,
    heartbeat: Duration,
    /// The server's URL, for log lines (holds no credentials).
    url: String,
    /// For diagnostic connection attempts.
    config: ClusterConfig,
    /// Their outcomes.
    probes: mpsc::UnboundedSender<Option<(NatsTrouble, String)>>,
}

impl Driver {
    async fn run(
        self,
        mut presence: async_nats::Subscriber,
        mut own: async_nats::Subscriber,
        mut logins: mpsc::UnboundedReceiver<Event>,
        mut nats_events: mpsc::UnboundedReceiver<async_nats::Event>,
        mut probe_outcomes: mpsc::UnboundedReceiver<Option<(NatsTrouble, String)>>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => self.on_tick().await,
                Some(event) = logins.recv() => self.on_login(event),
                Some(event) = nats_events.recv() => self.on_nats_event(&event),
                Some(outcome) = probe_outcomes.recv() => {
                    let change = self.link.shared.health().on_probe(outcome);
                    self.report(change);
                }
                Some(msg) = presence.next() => match decode::<PresenceMsg>(&msg.payload) {
                    Ok(msg) => {
                        let outcome = self.link.core().on_presence(msg, Instant::now());
                        self.on_presence(outcome).await;
                    }
                    Err(e) => debug!(error = %e, "presence message ignored"),
                },
                Some(msg) = own.next() => match decode::<NodeMsg>(&msg.payload) {
                    Ok(msg) => self.on_node_msg(msg).await,
                    Err(e) => debug!(error = %e, "node message ignored"),
                },
            }
        }
    }

    fn me(&self) -> String {
        self.link.core().me().to_string()
    }

    async fn on_tick(&self) {
        self.maybe_probe();
        let up = matches!(
            self.client.connection_state(),
            async_nats::connection::State::Connected
        );
        let was = self.link.shared.connected.swap(up, Ordering::Relaxed);
        if up != was {
            self.metrics.set_cluster_connected(Some(up));
            if up {
                info!("cluster: NATS connected");
            } else {
                warn!("cluster: NATS disconnected; serving this node's users only");
            }
        }
        let uids = self.hub.online_uids();
        self.link.publish(
            PRESENCE_SUBJECT.to_string(),
            &PresenceMsg::Heartbeat {
                node: self.me(),
                uids,
            },
        );
        let lapsed = self.link.core().expire(Instant::now());
        if !lapsed.nodes.is_empty() {
            self.hub.set_remote_online(self.link.core().remote_online());
        }
        // Also without a lapsed node: web ↔ web invitations nobody answered expire here.
        self.on_lapsed(lapsed).await;
    }

    /// The client's connection events.
    fn on_nats_event(&self, event: &async_nats::Event) {
        let change = self.link.shared.health().on_event(event);
        self.report(change);
        self.maybe_probe();
    }

    /// A new reason for being cut off is logged once (an ERROR when a setting is to blame).
    fn report(&self, change: HealthChange) {
        let text = self.link.shared.trouble().unwrap_or_default();
        match change {
            HealthChange::Trouble(trouble) if trouble.is_misconfiguration() => error!(
                nats = %self.url,
                "cluster: {text}; serving this node's users only (retrying every second)"
            ),
            HealthChange::Trouble(_) => debug!(nats = %self.url, "cluster: {text}"),
            HealthChange::Cleared => info!(nats = %self.url, "cluster: NATS accepts this node"),
            HealthChange::Same => {}
        }
    }

    /// Cut off for no clear reason: one connection attempt of our own, whose full error says
    /// why (the client's events do not).
    fn maybe_probe(&self) {
        if !self.link.shared.health().probe_due(Instant::now()) {
            return;
        }
        let (options, url, outcomes) = (
            connect_options(&self.config),
            self.url.clone(),
            self.probes.clone(),
        );
        tokio::spawn(async move {
            let outcome = match tokio::time::timeout(PROBE_TIMEOUT, options.connect(url)).await {
                // Connected: dropping the client closes the connection.
                Ok(Ok(_client)) => None,
                Ok(Err(e)) => Some(diagnose(&e)),
                Err(_) => Some((NatsTrouble::Unreachable, "timed out".to_string())),
            };
            let _ = outcomes.send(outcome);
        });
    }

    fn on_login(&self, event: Event) {
        let me = self.me();
        let msg = match event {
            Event::UserLogin { web_user } => {
                let at_ms = unix_ms();
                self.link.core().local_login(&web_user, at_ms);
                PresenceMsg::Login {
                    node: me,
                    uid: web_user,
                    at_ms,
                }
            }
            Event::UserLogout { web_user, .. } => {
                self.link.core().local_logout(&web_user);
                PresenceMsg::Logout {
                    node: me,
                    uid: web_user,
                }
            }
            _ => return,
        };
        self.link.publish(PRESENCE_SUBJECT.to_string(), &msg);
    }

    async fn on_presence(&self, outcome: PresenceOutcome) {
        if outcome.changed {
            self.hub.set_remote_online(self.link.core().remote_online());
        }
        if let Some(uid) = outcome.kick {
            info!(%uid, "newer login on another node: closing the session here");
            self.hub.logged_in_elsewhere(&uid);
        }
        self.on_lapsed(outcome.lapsed).await;
    }

    /// Nodes gone: their browsers' calls here end (BYE to the phone); browsers here of calls
    /// they ran are told the call is over.
    async fn on_lapsed(&self, lapsed: Lapsed) {
        for node in &lapsed.nodes {
            warn!(%node, "cluster node lapsed: its users are offline, its calls end");
        }
        for event in lapsed.to_calls {
            let _ = self.to_calls.send(event).await;
        }
        for action in lapsed.web_expired {
            self.web_to_hub("", action);
        }
        for (call_id, call) in lapsed.relayed {
            if call.answered {
                let text = json!({ "Cmd": "EndCall", "CallId": call_id }).to_string();
                let _ = self.hub.send_peer_message(&call.caller, &call.uid, &text);
            } else {
                self.hub.remote_invitation_canceled(&call.uid, &call_id);
            }
        }
    }

    async fn on_node_msg(&self, msg: NodeMsg) {
        match msg {
            NodeMsg::FromBrowser { from, event } => {
                let for_hub = self.link.core().web_event(&from, &event, Instant::now());
                let handled = !for_hub.is_empty();
                for action in for_hub {
                    self.web_to_hub(&from, action);
                }
                // A closed session may also end calls run here; anything else is done.
                if handled && !matches!(event, BridgeEvent::SessionClosed { .. }) {
                    return;
                }
                let event = self.link.core().event_from(&from, event);
                match event {
                    Some(event) => {
                        let _ = self.to_calls.send(event).await;
                    }
                    None => debug!(%from, "browser event for no call of that node ignored"),
                }
            }
            NodeMsg::ToBrowser { from, msg } => self.to_browser(from, msg),
        }
    }

    /// A browser on node `from` invites, answers or talks to a browser here (web ↔ web).
    fn web_to_hub(&self, from: &str, action: ForHub) {
        match action {
            ForHub::Invite {
                uid,
                call_id,
                caller,
                content,
            } => {
                info!(%call_id, %caller, %uid, node = %from, "invitation from a browser on another node");
                if let Err(e) = self
                    .hub
                    .send_remote_invitation(&uid, &call_id, &caller, &content)
                {
                    info!(%call_id, error = %e, "invitation from another node not delivered");
                    self.link.core().forget_web_call(&call_id);
                    self.link.publish(
                        node_subject(from),
                        &NodeMsg::FromBrowser {
                            from: self.me(),
                            event: BridgeEvent::SessionClosed { uid },
                        },
                    );
                }
            }
            ForHub::LocalState {
                uid,
                call_id,
                state,
                response,
                reason,
            } => self
                .hub
                .local_invitation_state(&uid, &call_id, state, response, reason),
            ForHub::Canceled { uid, call_id } => {
                self.hub.remote_invitation_canceled(&uid, &call_id)
            }
            ForHub::Expired { uid, call_id } => self.hub.remote_invitation_failed(
                &uid,
                &call_id,
                RemoteFailureReason::InvitationExpire,
            ),
            ForHub::Media {
                from: sender,
                uid,
                call_id,
                payload,
            } => {
                if let Err(e) = self.hub.send_media_from(&sender, &uid, &call_id, payload) {
                    debug!(error = %e, "media message from another node not delivered");
                }
            }
            ForHub::PeerMessage {
                from: sender,
                uid,
                text,
            } => {
                if let Err(e) = self.hub.send_peer_message(&sender, &uid, &text) {
                    debug!(error = %e, "peer message from another node not delivered");
                }
            }
        }
    }

    /// A call on node `from` talks to a browser here.
    fn to_browser(&self, from: String, msg: ToBrowser) {
        let relays = |call_id: &str, uid: &str| self.link.core().relays(call_id, uid, &from);
        match msg {
            ToBrowser::Ring {
                uid,
                call_id,
                caller,
                content,
            } => {
                // Remembered first: the browser's answer may come back at once.
                self.link.core().relay(&call_id, &uid, &from, &caller);
                if let Err(e) = self
                    .hub
                    .send_remote_invitation(&uid, &call_id, &caller, &content)
                {
                    info!(%call_id, error = %e, "ring from another node not delivered");
                    self.link.core().unrelay(&call_id, &from);
                    self.link.publish(
                        node_subject(&from),
                        &NodeMsg::FromBrowser {
                            from: self.me(),
                            event: BridgeEvent::SessionClosed { uid },
                        },
                    );
                }
            }
            ToBrowser::Cancel { uid, call_id } if relays(&call_id, &uid) => {
                self.hub.remote_invitation_canceled(&uid, &call_id);
            }
            ToBrowser::Expire { uid, call_id } if relays(&call_id, &uid) => {
                self.hub.remote_invitation_failed(
                    &uid,
                    &call_id,
                    RemoteFailureReason::InvitationExpire,
                );
            }
            ToBrowser::PeerMessage {
                from: sender,
                uid,
                text,
            } if self.link.core().relays_any(&uid, &from) => {
                if let Err(e) = self.hub.send_peer_message(&sender, &uid, &text) {
                    debug!(error = %e, "peer message from another node not delivered");
                }
            }
            ToBrowser::Media {
                uid,
                call_id,
                payload,
            } if relays(&call_id, &uid) => {
                if let Err(e) = self.hub.send_media(&uid, &call_id, payload) {
                    debug!(error = %e, "media message from another node not delivered");
                }
            }
            ToBrowser::Released { call_id, .. } => self.link.core().unrelay(&call_id, &from),
            other => debug!(%from, ?other, "message for no relayed call ignored"),
        }
    }
}
