//! The cluster's rules without sockets: who is logged in on which node, which node is alive,
//! and where each cross-node call's other half is. The shell feeds it messages and the time and
//! carries out what it returns.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::wire::PresenceMsg;
use crate::signal::core::{INVITATION_TIMEOUT, RECEIVE_TIMEOUT};
use crate::signal::{BridgeEvent, FailureReason, LocalInvitationState};

/// A node heard from, with its users.
#[derive(Debug)]
struct Peer {
    uids: HashSet<String>,
    last_heard: Instant,
}

/// A call run here whose browser is logged in to another node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RemoteBrowser {
    uid: String,
    node: String,
}

/// A call run on another node whose browser is logged in here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayedCall {
    /// The browser user.
    pub uid: String,
    /// The node running the call.
    pub node: String,
    /// The SIP caller (the sender of the `EndCall` a lapsed node's calls get).
    pub caller: String,
    /// The browser accepted: a lapse ends it with `EndCall`, not by cancelling the invitation.
    pub answered: bool,
}

/// A web ↔ web invitation (then call) between a user here and one on another node. Each node's
/// hub sees the other user as the bridge: the caller's hub as a callee it invited, the callee's
/// hub as the caller of its remote invitation.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WebCall {
    local_uid: String,
    peer_uid: String,
    node: String,
    /// The user here is the caller (else the callee).
    caller_here: bool,
    /// The callee confirmed it (`received`): the hub's receive timeout no longer applies.
    received: bool,
    /// Accepted: no expiry any more.
    answered: bool,
    created: Instant,
}

/// What another node's browser did to a web ↔ web call or a user here: for the hub here.
#[derive(Debug, Clone, PartialEq)]
pub enum ForHub {
    /// Ring `uid` here: `caller` on another node invites them.
    Invite {
        /// The callee here.
        uid: String,
        /// The call.
        call_id: String,
        /// The caller there.
        caller: String,
        /// The invitation content.
        content: String,
    },
    /// The caller's invitation here moved on (the callee there received, accepted, refused).
    LocalState {
        /// The caller here.
        uid: String,
        /// The call.
        call_id: String,
        /// The new state.
        state: LocalInvitationState,
        /// The callee's response string.
        response: Option<String>,
        /// Why it failed.
        reason: Option<FailureReason>,
    },
    /// The caller there cancelled: the callee here's invitation is `CANCELED`.
    Canceled {
        /// The callee here.
        uid: String,
        /// The call.
        call_id: String,
    },
    /// Nobody answered in time: the callee here's invitation fails as expired.
    Expired {
        /// The callee here.
        uid: String,
        /// The call.
        call_id: String,
    },
    /// Media signalling from the other browser.
    Media {
        /// The sender there (what the browser here sees as `from`).
        from: String,
        /// The user here.
        uid: String,
        /// The call.
        call_id: String,
        /// The message.
        payload: Value,
    },
    /// A peer message from a user there to a user here.
    PeerMessage {
        /// The sender there.
        from: String,
        /// The user here.
        uid: String,
        /// The text.
        text: String,
    },
}

/// What a presence message means here.
#[derive(Debug, Default, PartialEq)]
pub struct PresenceOutcome {
    /// The set of users online elsewhere changed (give the hub [`ClusterCore::remote_online`]).
    pub changed: bool,
    /// A newer login elsewhere replaces this local user's session.
    pub kick: Option<String>,
    /// A node left: its calls here end (see [`Lapsed`]).
    pub lapsed: Lapsed,
}

/// What follows from nodes that stopped (heartbeat lapsed, or they left).
#[derive(Debug, Default, PartialEq)]
pub struct Lapsed {
    /// The nodes.
    pub nodes: Vec<String>,
    /// For the call layer here: the browsers of calls run here are gone.
    pub to_calls: Vec<BridgeEvent>,
    /// Calls run by those nodes whose browser is here: tell the browser they ended.
    pub relayed: Vec<(String, RelayedCall)>,
    /// Web ↔ web invitations across nodes nobody answered in time (each side expires its own).
    pub web_expired: Vec<ForHub>,
}

/// Where a browser's event goes.
#[derive(Debug, PartialEq)]
pub enum Route {
    /// To the call layer here.
    Local(BridgeEvent),
    /// To the nodes running the user's calls (and, for `SessionClosed`, here too).
    Remote {
        /// `(node, event)` pairs.
        to: Vec<(String, BridgeEvent)>,
        /// Also for the call layer here.
        local: Option<BridgeEvent>,
    },
}

/// Presence and cross-node call routing of one node.
#[derive(Debug)]
pub struct ClusterCore {
    me: String,
    ttl: Duration,
    peers: HashMap<String, Peer>,
    /// Local users and when they logged in (Unix ms), for "the newest login wins".
    local_logins: HashMap<String, u64>,
    /// call id → where its browser is, for calls run here.
    remote_browsers: HashMap<String, RemoteBrowser>,
    /// call id → who runs it, for calls whose browser is here.
    relayed: HashMap<String, RelayedCall>,
    /// call id → the other end, for web ↔ web calls between a user here and one elsewhere.
    web_calls: HashMap<String, WebCall>,
}

impl ClusterCore {
    /// Node `me`; peers not heard from for `ttl` are taken for dead.
    pub fn new(me: &str, ttl: Duration) -> ClusterCore {
        ClusterCore {
            me: me.to_string(),
            ttl,
            peers: HashMap::new(),
            local_logins: HashMap::new(),
            remote_browsers: HashMap::new(),
            relayed: HashMap::new(),
            web_calls: HashMap::new(),
        }
    }

    /// This node's id.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The live nodes heard from, sorted.
    pub fn peers(&self) -> Vec<String> {
        let mut peers: Vec<String> = self.peers.keys().cloned().collect();
        peers.sort();
        peers
    }

    /// Users logged in to other nodes.
    pub fn remote_online(&self) -> HashSet<String> {
        self.peers
            .values()
            .flat_map(|p| p.uids.iter().cloned())
            .collect()
    }

    /// The node `uid` is logged in to, if another one (the first by name when, briefly, two).
    pub fn node_of(&self, uid: &str) -> Option<String> {
        let mut nodes: Vec<&String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.uids.contains(uid))
            .map(|(n, _)| n)
            .collect();
        nodes.sort();
        nodes.first().map(|n| n.to_string())
    }

    /// A local login (from our hub), at Unix ms `at_ms`.
    pub fn local_login(&mut self, uid: &str, at_ms: u64) {
        self.local_logins.insert(uid.to_string(), at_ms);
    }

    /// A local logout.
    pub fn local_logout(&mut self, uid: &str) {
        self.local_logins.remove(uid);
    }

    /// A presence message from NATS (our own echoes are ignored).
    pub fn on_presence(&mut self, msg: PresenceMsg, now: Instant) -> PresenceOutcome {
        let mut outcome = PresenceOutcome::default();
        let node = match &msg {
            PresenceMsg::Heartbeat { node, .. }
            | PresenceMsg::Login { node, .. }
            | PresenceMsg::Logout { node, .. }
            | PresenceMsg::Leave { node } => node.clone(),
        };
        if node == self.me {
            return outcome;
        }
        if let PresenceMsg::Leave { .. } = msg {
            outcome.changed = self.peers.get(&node).is_some_and(|p| !p.uids.is_empty());
            outcome.lapsed = self.drop_nodes(vec![node]);
            return outcome;
        }
        let before = self.remote_online();
        let peer = self.peers.entry(node.clone()).or_insert_with(|| Peer {
            uids: HashSet::new(),
            last_heard: now,
        });
        peer.last_heard = now;
        match msg {
            PresenceMsg::Heartbeat { uids, .. } => peer.uids = uids.into_iter().collect(),
            PresenceMsg::Login { uid, at_ms, .. } => {
                peer.uids.insert(uid.clone());
                // The newest login keeps the uid; equal times go to the greater node id.
                if let Some(&here) = self.local_logins.get(&uid) {
                    if (here, self.me.as_str()) < (at_ms, node.as_str()) {
                        outcome.kick = Some(uid);
                    }
                }
            }
            PresenceMsg::Logout { uid, .. } => {
                peer.uids.remove(&uid);
            }
            PresenceMsg::Leave { .. } => {}
        }
        outcome.changed = self.remote_online() != before;
        outcome
    }

    /// Drops the peers not heard from for the TTL.
    pub fn expire(&mut self, now: Instant) -> Lapsed {
        let dead: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| now.duration_since(p.last_heard) >= self.ttl)
            .map(|(n, _)| n.clone())
            .collect();
        let mut lapsed = self.drop_nodes(dead);
        // The hub's own timers for a web ↔ web invitation: confirmed within the receive
        // timeout, answered within the invitation timeout.
        let mut expired: Vec<(String, WebCall)> = self
            .web_calls
            .iter()
            .filter(|(_, w)| {
                let age = now.saturating_duration_since(w.created);
                !w.answered
                    && (age >= INVITATION_TIMEOUT || (!w.received && age >= RECEIVE_TIMEOUT))
            })
            .map(|(id, w)| (id.clone(), w.clone()))
            .collect();
        expired.sort_by(|a, b| a.0.cmp(&b.0));
        for (call_id, web) in expired {
            self.web_calls.remove(&call_id);
            lapsed.web_expired.push(if web.caller_here {
                ForHub::LocalState {
                    uid: web.local_uid,
                    call_id,
                    state: LocalInvitationState::Failure,
                    response: None,
                    reason: Some(if web.received {
                        FailureReason::InvitationExpire
                    } else {
                        FailureReason::PeerNoResponse
                    }),
                }
            } else {
                ForHub::Expired {
                    uid: web.local_uid,
                    call_id,
                }
            });
        }
        lapsed
    }

    fn drop_nodes(&mut self, mut nodes: Vec<String>) -> Lapsed {
        nodes.retain(|n| self.peers.remove(n).is_some());
        nodes.sort();
        let mut lapsed = Lapsed::default();
        if nodes.is_empty() {
            return lapsed;
        }
        let mut gone_uids: Vec<String> = Vec::new();
        self.remote_browsers.retain(|_, b| {
            if nodes.contains(&b.node) {
                gone_uids.push(b.uid.clone());
                false
            } else {
                true
            }
        });
        gone_uids.sort();
        gone_uids.dedup();
        lapsed.to_calls = gone_uids
            .into_iter()
            .map(|uid| BridgeEvent::SessionClosed { uid })
            .collect();
        let mut relayed: Vec<(String, RelayedCall)> = Vec::new();
        self.relayed.retain(|call_id, r| {
            if nodes.contains(&r.node) {
                relayed.push((call_id.clone(), r.clone()));
                false
            } else {
                true
            }
        });
        relayed.sort_by(|a, b| a.0.cmp(&b.0));
        lapsed.relayed = relayed;
        self.web_calls.retain(|_, w| !nodes.contains(&w.node));
        lapsed.nodes = nodes;
        lapsed
    }

    // ---- the node running the call ----

    /// The call `call_id` rings `uid` on another node: returns that node, remembering it for
    /// the call's later messages; `None` when nobody else has `uid` logged in.
    pub fn ring_remote(&mut self, call_id: &str, uid: &str) -> Option<String> {
        let node = self.node_of(uid)?;
        self.remote_browsers.insert(
            call_id.to_string(),
            RemoteBrowser {
                uid: uid.to_string(),
                node: node.clone(),
            },
        );
        Some(node)
    }

    /// The node holding the browser of call `call_id` run here, if remote.
    pub fn browser_node(&self, call_id: &str) -> Option<String> {
        self.remote_browsers.get(call_id).map(|b| b.node.clone())
    }

    /// The node holding `uid`'s browser for a call run here (for messages without a call id).
    pub fn browser_node_of_uid(&self, uid: &str) -> Option<String> {
        self.remote_browsers
            .values()
            .find(|b| b.uid == uid)
            .map(|b| b.node.clone())
    }

    /// A call run here ended: forget where its browser was (returns that node).
    pub fn call_released(&mut self, call_id: &str) -> Option<String> {
        self.remote_browsers.remove(call_id).map(|b| b.node)
    }

    /// Whether `from` may speak for this browser event: it must hold the browser of the call
    /// (a node cannot touch calls it was not asked to ring). `SessionClosed` from a node ends
    /// only the calls whose browser is on that node.
    pub fn event_from(&mut self, from: &str, event: BridgeEvent) -> Option<BridgeEvent> {
        let owns = |call_id: &str, uid: &str| {
            self.remote_browsers
                .get(call_id)
                .is_some_and(|b| b.node == from && b.uid == uid)
        };
        let allowed = match &event {
            BridgeEvent::InvitationReceived { call_id, uid }
            | BridgeEvent::Accepted { call_id, uid, .. }
            | BridgeEvent::Refused { call_id, uid, .. }
            | BridgeEvent::Media {
                call_id,
                from_uid: uid,
                ..
            } => owns(call_id, uid),
            BridgeEvent::PeerMessage { from_uid, .. }
            | BridgeEvent::SessionClosed { uid: from_uid } => self
                .remote_browsers
                .values()
                .any(|b| b.node == from && &b.uid == from_uid),
            BridgeEvent::Invite { .. } | BridgeEvent::Cancel { .. } => false,
        };
        if let BridgeEvent::SessionClosed { uid } = &event {
            self.remote_browsers
                .retain(|_, b| !(b.node == from && &b.uid == uid));
        }
        allowed.then_some(event)
    }

    // ---- the node holding the browser ----

    /// `uid`'s browser here was rung for call `call_id` run on `node`.
    pub fn relay(&mut self, call_id: &str, uid: &str, node: &str, caller: &str) {
        self.relayed.insert(
            call_id.to_string(),
            RelayedCall {
                uid: uid.to_string(),
                node: node.to_string(),
                caller: caller.to_string(),
                answered: false,
            },
        );
    }

    /// Whether `node` runs the relayed call `call_id` of `uid` (what it may still send it).
    pub fn relays(&self, call_id: &str, uid: &str, node: &str) -> bool {
        self.relayed
            .get(call_id)
            .is_some_and(|r| r.uid == uid && r.node == node)
    }

    /// Whether `node` runs any relayed call of `uid` (peer messages carry no call id).
    pub fn relays_any(&self, uid: &str, node: &str) -> bool {
        self.relayed
            .values()
            .any(|r| r.uid == uid && r.node == node)
    }

    /// The node running call `call_id` forgot it.
    pub fn unrelay(&mut self, call_id: &str, node: &str) {
        if self.relayed.get(call_id).is_some_and(|r| r.node == node) {
            self.relayed.remove(call_id);
        }
    }

    /// Where an event of our hub goes: to the node running the call when it is a relayed one.
    pub fn route(&mut self, event: BridgeEvent, now: Instant) -> Route {
        if let Some(node) = self.route_web(&event, now) {
            let local = match &event {
                BridgeEvent::SessionClosed { .. } => Some(event.clone()),
                _ => None,
            };
            return Route::Remote {
                to: vec![(node, event)],
                local,
            };
        }
        if let BridgeEvent::Accepted { call_id, uid, .. } = &event {
            if let Some(r) = self.relayed.get_mut(call_id).filter(|r| &r.uid == uid) {
                r.answered = true;
            }
        }
        let owner = |call_id: &str, uid: &str| {
            self.relayed
                .get(call_id)
                .filter(|r| r.uid == uid)
                .map(|r| r.node.clone())
        };
        let node = match &event {
            BridgeEvent::InvitationReceived { call_id, uid }
            | BridgeEvent::Accepted { call_id, uid, .. }
            | BridgeEvent::Refused { call_id, uid, .. }
            | BridgeEvent::Media {
                call_id,
                from_uid: uid,
                ..
            } => owner(call_id, uid),
            BridgeEvent::PeerMessage { from_uid, .. } => {
                // EndCall names the number, not the call: the user's relayed calls' nodes get
                // it, unless the user has none.
                let nodes = self.nodes_relaying(from_uid);
                if nodes.is_empty() {
                    return Route::Local(event);
                }
                return Route::Remote {
                    to: nodes.into_iter().map(|n| (n, event.clone())).collect(),
                    local: None,
                };
            }
            BridgeEvent::SessionClosed { uid } => {
                let nodes = self.nodes_relaying(uid);
                self.relayed.retain(|_, r| &r.uid != uid);
                if nodes.is_empty() {
                    return Route::Local(event);
                }
                return Route::Remote {
                    to: nodes.into_iter().map(|n| (n, event.clone())).collect(),
                    local: Some(event),
                };
            }
            BridgeEvent::Invite { .. } | BridgeEvent::Cancel { .. } => None,
        };
        match node {
            Some(node) => Route::Remote {
                to: vec![(node, event)],
                local: None,
            },
            None => Route::Local(event),
        }
    }

    /// The node an event of a web ↔ web call (or a peer message) to a user elsewhere goes to.
    fn route_web(&mut self, event: &BridgeEvent, now: Instant) -> Option<String> {
        let ours = |web: &HashMap<String, WebCall>, call_id: &str, uid: &str| {
            web.get(call_id)
                .filter(|w| w.local_uid == uid)
                .map(|w| w.node.clone())
        };
        match event {
            // The hub hands the bridge invitations to anyone not logged in here.
            BridgeEvent::Invite {
                call_id,
                from_uid,
                callee,
                ..
            } => {
                let node = self.node_of(callee)?;
                self.web_calls.insert(
                    call_id.clone(),
                    WebCall {
                        local_uid: from_uid.clone(),
                        peer_uid: callee.clone(),
                        node: node.clone(),
                        caller_here: true,
                        received: false,
                        answered: false,
                        created: now,
                    },
                );
                Some(node)
            }
            BridgeEvent::Cancel { call_id, from_uid }
            | BridgeEvent::Refused {
                call_id,
                uid: from_uid,
                ..
            } => {
                let node = ours(&self.web_calls, call_id, from_uid)?;
                self.web_calls.remove(call_id);
                Some(node)
            }
            BridgeEvent::Accepted { call_id, uid, .. } => {
                let node = ours(&self.web_calls, call_id, uid)?;
                if let Some(web) = self.web_calls.get_mut(call_id) {
                    web.answered = true;
                }
                Some(node)
            }
            BridgeEvent::InvitationReceived { call_id, uid } => {
                let node = ours(&self.web_calls, call_id, uid)?;
                if let Some(web) = self.web_calls.get_mut(call_id) {
                    web.received = true;
                }
                Some(node)
            }
            BridgeEvent::Media {
                call_id,
                from_uid: uid,
                ..
            } => ours(&self.web_calls, call_id, uid),
            BridgeEvent::PeerMessage { to, .. } => self.node_of(to),
            BridgeEvent::SessionClosed { uid } => {
                // The other ends' nodes learn it from presence; the web calls are over.
                self.web_calls.retain(|_, w| &w.local_uid != uid);
                None
            }
        }
    }

    /// A browser event from `from` about a web ↔ web call with a user here, or a peer message
    /// to one: what the hub here must do (nothing: not such an event).
    pub fn web_event(&mut self, from: &str, event: &BridgeEvent, now: Instant) -> Vec<ForHub> {
        let BridgeEvent::SessionClosed { uid } = event else {
            return self.web_event_one(from, event, now).into_iter().collect();
        };
        // A callee gone before answering: the caller here hears PEER_OFFLINE (the hub ignores
        // it for calls already answered).
        let mut gone: Vec<(String, String)> = self
            .web_calls
            .iter()
            .filter(|(_, w)| &w.peer_uid == uid && w.node == from)
            .map(|(id, w)| (id.clone(), w.local_uid.clone()))
            .collect();
        gone.sort();
        for (call_id, _) in &gone {
            self.web_calls.remove(call_id);
        }
        gone.into_iter()
            .map(|(call_id, local)| ForHub::LocalState {
                uid: local,
                call_id,
                state: LocalInvitationState::Failure,
                response: None,
                reason: Some(FailureReason::PeerOffline),
            })
            .collect()
    }

    fn web_event_one(&mut self, from: &str, event: &BridgeEvent, now: Instant) -> Option<ForHub> {
        let theirs = |web: &HashMap<String, WebCall>, call_id: &str, uid: &str| {
            web.get(call_id)
                .filter(|w| w.peer_uid == uid && w.node == from)
                .map(|w| w.local_uid.clone())
        };
        let state =
            |uid: String, call_id: &str, state, response: Option<&String>| ForHub::LocalState {
                uid,
                call_id: call_id.to_string(),
                state,
                response: response.cloned(),
                reason: None,
            };
        match event {
            BridgeEvent::Invite {
                call_id,
                from_uid,
                callee,
                content,
            } => {
                if !self.local_logins.contains_key(callee) || self.web_calls.contains_key(call_id) {
                    return None;
                }
                self.web_calls.insert(
                    call_id.clone(),
                    WebCall {
                        local_uid: callee.clone(),
                        peer_uid: from_uid.clone(),
                        node: from.to_string(),
                        caller_here: false,
                        received: false,
                        answered: false,
                        created: now,
                    },
                );
                Some(ForHub::Invite {
                    uid: callee.clone(),
                    call_id: call_id.clone(),
                    caller: from_uid.clone(),
                    content: content.clone(),
                })
            }
            BridgeEvent::Cancel { call_id, from_uid } => {
                let uid = theirs(&self.web_calls, call_id, from_uid)?;
                self.web_calls.remove(call_id);
                Some(ForHub::Canceled {
                    uid,
                    call_id: call_id.clone(),
                })
            }
            BridgeEvent::InvitationReceived { call_id, uid } => {
                let local = theirs(&self.web_calls, call_id, uid)?;
                if let Some(web) = self.web_calls.get_mut(call_id) {
                    web.received = true;
                }
                Some(state(
                    local,
                    call_id,
                    LocalInvitationState::ReceivedByRemote,
                    None,
                ))
            }
            BridgeEvent::Accepted {
                call_id,
                uid,
                response,
            } => {
                let local = theirs(&self.web_calls, call_id, uid)?;
                if let Some(web) = self.web_calls.get_mut(call_id) {
                    web.answered = true;
                }
                Some(state(
                    local,
                    call_id,
                    LocalInvitationState::AcceptedByRemote,
                    Some(response),
                ))
            }
            BridgeEvent::Refused {
                call_id,
                uid,
                response,
            } => {
                let local = theirs(&self.web_calls, call_id, uid)?;
                self.web_calls.remove(call_id);
                Some(state(
                    local,
                    call_id,
                    LocalInvitationState::RefusedByRemote,
                    Some(response),
                ))
            }
            BridgeEvent::Media {
                call_id,
                from_uid,
                payload,
            } => {
                let uid = theirs(&self.web_calls, call_id, from_uid)?;
                Some(ForHub::Media {
                    from: from_uid.clone(),
                    uid,
                    call_id: call_id.clone(),
                    payload: payload.clone(),
                })
            }
            BridgeEvent::PeerMessage { from_uid, to, text } => {
                if !self.local_logins.contains_key(to) {
                    return None;
                }
                Some(ForHub::PeerMessage {
                    from: from_uid.clone(),
                    uid: to.clone(),
                    text: text.clone(),
                })
            }
            BridgeEvent::SessionClosed { .. } => None,
        }
    }

    /// A web ↔ web invitation from another node could not be delivered here.
    pub fn forget_web_call(&mut self, call_id: &str) {
        self.web_calls.remove(call_id);
    }

    fn nodes_relaying(&self, uid: &str) -> Vec<String> {
        let mut nodes: Vec<String> = self
            .relayed
            .values()
            .filter(|r| r.uid == uid)
            .map(|r| r.node.clone())
            .collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    /// Calls in flight across nodes (run here with a remote browser, relayed here).
    pub fn cross_calls(&self) -> (usize, usize) {
        (self.remote_browsers.len(), self.relayed.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(5);

    fn heartbeat(node: &str, uids: &[&str]) -> PresenceMsg {
        PresenceMsg::Heartbeat {
            node: node.into(),
            uids: uids.iter().map(|u| u.to_string()).collect(),
        }
    }

    fn accepted(call_id: &str, uid: &str) -> BridgeEvent {
        BridgeEvent::Accepted {
            call_id: call_id.into(),
            uid: uid.into(),
            response: String::new(),
        }
    }

    #[test]
    fn presence_follows_heartbeats_logins_and_logouts_and_ignores_our_echo() {
        let t0 = Instant::now();
        let mut b = ClusterCore::new("b", TTL);
        assert_eq!(
            b.on_presence(heartbeat("b", &["me"]), t0),
            PresenceOutcome::default()
        );
        assert!(b.remote_online().is_empty());
        assert!(b.on_presence(heartbeat("a", &["alice"]), t0).changed);
        assert_eq!(b.node_of("alice").as_deref(), Some("a"));
        assert!(!b.on_presence(heartbeat("a", &["alice"]), t0).changed);
        let login = PresenceMsg::Login {
            node: "c".into(),
            uid: "carol".into(),
            at_ms: 1,
        };
        assert!(b.on_presence(login, t0).changed);
        assert_eq!(b.peers(), vec!["a".to_string(), "c".to_string()]);
        let logout = PresenceMsg::Logout {
            node: "c".into(),
            uid: "carol".into(),
        };
        assert!(b.on_presence(logout, t0).changed);
        assert_eq!(b.node_of("carol"), None);
    }

    #[test]
    fn the_newest_login_keeps_the_uid_ties_go_to_the_greater_node() {
        let t0 = Instant::now();
        let mut b = ClusterCore::new("b", TTL);
        b.local_login("alice", 100);
        let older = PresenceMsg::Login {
            node: "a".into(),
            uid: "alice".into(),
            at_ms: 99,
        };
        assert_eq!(b.on_presence(older, t0).kick, None);
        let newer = PresenceMsg::Login {
            node: "a".into(),
            uid: "alice".into(),
            at_ms: 101,
        };
        assert_eq!(b.on_presence(newer, t0).kick.as_deref(), Some("alice"));
        let tie_lower = PresenceMsg::Login {
            node: "a".into(),
            uid: "alice".into(),
            at_ms: 100,
        };
        assert_eq!(b.on_presence(tie_lower, t0).kick, None);
        let tie_greater = PresenceMsg::Login {
            node: "c".into(),
            uid: "alice".into(),
            at_ms: 100,
        };
        assert_eq!(
            b.on_presence(tie_greater, t0).kick.as_deref(),
            Some("alice")
        );
        b.local_logout("alice");
        let later = PresenceMsg::Login {
            node: "a".into(),
            uid: "alice".into(),
            at_ms: 500,
        };
        assert_eq!(b.on_presence(later, t0).kick, None, "no session here");
    }

    #[test]
    fn a_node_silent_for_the_ttl_lapses_and_its_browsers_calls_end() {
        let t0 = Instant::now();
        let mut b = ClusterCore::new("b", TTL);
        b.on_presence(heartbeat("a", &["alice", "ann"]), t0);
        b.on_presence(heartbeat("c", &["carol"]), t0);
        assert_eq!(b.ring_remote("call-1", "alice").as_deref(), Some("a"));
        assert_eq!(b.ring_remote("call-2", "carol").as_deref(), Some("c"));
        assert_eq!(b.ring_remote("call-3", "nobody"), None);
        b.on_presence(heartbeat("c", &["carol"]), t0 + Duration::from_secs(3));
        assert_eq!(b.expire(t0 + Duration::from_secs(4)), Lapsed::default());
        let lapsed = b.expire(t0 + TTL);
        assert_eq!(lapsed.nodes, vec!["a".to_string()]);
        assert_eq!(
            lapsed.to_calls,
            vec![BridgeEvent::SessionClosed {
                uid: "alice".into()
            }]
        );
        assert_eq!(b.browser_node("call-1"), None);
        assert_eq!(b.browser_node("call-2").as_deref(), Some("c"));
        assert_eq!(b.node_of("ann"), None);
        // A graceful leave drops the node at once.
        let outcome = b.on_presence(PresenceMsg::Leave { node: "c".into() }, t0);
        assert!(outcome.changed);
        assert_eq!(outcome.lapsed.nodes, vec!["c".to_string()]);
        assert!(b.remote_online().is_empty());
    }

    #[test]
    fn browser_answers_go_to_the_node_running_the_call() {
        let mut a = ClusterCore::new("a", TTL);
        a.relay("call-1", "alice", "b", "1002");
        match a.route(accepted("call-1", "alice"), Instant::now()) {
            Route::Remote { to, local: None } => {
                assert_eq!(to, vec![("b".to_string(), accepted("call-1", "alice"))])
            }
            other => panic!("{other:?}"),
        }
        // Someone else's answer for that call id stays local (the call layer refuses it).
        assert_eq!(
            a.route(accepted("call-1", "mallory"), Instant::now()),
            Route::Local(accepted("call-1", "mallory"))
        );
        let end = BridgeEvent::PeerMessage {
            from_uid: "alice".into(),
            to: "1002".into(),
            text: "{\"Cmd\":\"EndCall\"}".into(),
        };
        assert!(matches!(
            a.route(end, Instant::now()),
            Route::Remote { local: None, .. }
        ));
        let closed = BridgeEvent::SessionClosed {
            uid: "alice".into(),
        };
        match a.route(closed.clone(), Instant::now()) {
            Route::Remote { to, local } => {
                assert_eq!(to, vec![("b".to_string(), closed.clone())]);
                assert_eq!(local, Some(closed.clone()));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            a.route(closed.clone(), Instant::now()),
            Route::Local(closed)
        );
    }

    #[test]
    fn a_lapsed_call_node_ends_answered_calls_and_cancels_ringing_ones() {
        let t0 = Instant::now();
        let mut a = ClusterCore::new("a", TTL);
        a.on_presence(heartbeat("b", &[]), t0);
        a.relay("ringing", "ann", "b", "1003");
        a.relay("talking", "alice", "b", "1002");
        a.route(accepted("talking", "alice"), Instant::now());
        let lapsed = a.expire(t0 + TTL);
        let calls: Vec<(&str, bool)> = lapsed
            .relayed
            .iter()
            .map(|(id, r)| (id.as_str(), r.answered))
            .collect();
        assert_eq!(calls, vec![("ringing", false), ("talking", true)]);
        assert!(!a.relays_any("alice", "b"));
    }

    #[test]
    fn web_to_web_invitations_go_to_the_callees_node_and_answers_come_back() {
        let t0 = Instant::now();
        let mut a = ClusterCore::new("a", TTL);
        let mut c = ClusterCore::new("c", TTL);
        a.local_login("alice", 1);
        c.local_login("carol", 1);
        a.on_presence(heartbeat("c", &["carol"]), t0);
        c.on_presence(heartbeat("a", &["alice"]), t0);
        let invite = BridgeEvent::Invite {
            call_id: "w1".into(),
            from_uid: "alice".into(),
            callee: "carol".into(),
            content: "{}".into(),
        };
        let Route::Remote { to, local: None } = a.route(invite.clone(), Instant::now()) else {
            panic!("the invitation leaves a");
        };
        assert_eq!(to, vec![("c".to_string(), invite.clone())]);
        assert_eq!(
            c.web_event("a", &invite, Instant::now()),
            vec![ForHub::Invite {
                uid: "carol".into(),
                call_id: "w1".into(),
                caller: "alice".into(),
                content: "{}".into(),
            }]
        );
        // A node cannot invite for someone else's call id twice, nor reach a user not here.
        assert!(c.web_event("a", &invite, Instant::now()).is_empty());
        let stray = BridgeEvent::Invite {
            call_id: "w9".into(),
            from_uid: "alice".into(),
            callee: "nobody".into(),
            content: String::new(),
        };
        assert!(c.web_event("a", &stray, Instant::now()).is_empty());
        let accept = accepted("w1", "carol");
        let Route::Remote { to, .. } = c.route(accept.clone(), Instant::now()) else {
            panic!("the answer leaves c");
        };
        assert_eq!(to, vec![("a".to_string(), accept.clone())]);
        assert_eq!(
            a.web_event("c", &accept, Instant::now()),
            vec![ForHub::LocalState {
                uid: "alice".into(),
                call_id: "w1".into(),
                state: LocalInvitationState::AcceptedByRemote,
                response: Some(String::new()),
                reason: None,
            }]
        );
        // The callee's media reaches the caller as sent by the callee, not by the bridge.
        let answer = BridgeEvent::Media {
            call_id: "w1".into(),
            from_uid: "carol".into(),
            payload: serde_json::json!({"kind": "answer"}),
        };
        assert!(matches!(
            c.route(answer.clone(), Instant::now()),
            Route::Remote { .. }
        ));
        assert_eq!(
            a.web_event("c", &answer, Instant::now()),
            vec![ForHub::Media {
                from: "carol".into(),
                uid: "alice".into(),
                call_id: "w1".into(),
                payload: serde_json::json!({"kind": "answer"}),
            }]
        );
        // Only the callee's node speaks for the callee.
        assert!(a.web_event("b", &accept, Instant::now()).is_empty());
        // The callee's session closes: the caller's invitation fails as offline.
        let closed = BridgeEvent::SessionClosed {
            uid: "carol".into(),
        };
        assert_eq!(
            a.web_event("c", &closed, Instant::now()),
            vec![ForHub::LocalState {
                uid: "alice".into(),
                call_id: "w1".into(),
                state: LocalInvitationState::Failure,
                response: None,
                reason: Some(FailureReason::PeerOffline),
            }]
        );
        assert!(a.web_event("c", &closed, Instant::now()).is_empty());
        // Peer messages go to the node of their addressee.
        let hello = BridgeEvent::PeerMessage {
            from_uid: "alice".into(),
            to: "carol".into(),
            text: "hi".into(),
        };
        assert!(matches!(
            a.route(hello.clone(), Instant::now()),
            Route::Remote { .. }
        ));
        assert_eq!(
            c.web_event("a", &hello, Instant::now()),
            vec![ForHub::PeerMessage {
                from: "alice".into(),
                uid: "carol".into(),
                text: "hi".into(),
            }]
        );
    }

    #[test]
    fn unanswered_web_invitations_across_nodes_expire_on_both_sides_as_on_one_hub() {
        let t0 = Instant::now();
        let mut a = ClusterCore::new("a", Duration::from_secs(600));
        let mut c = ClusterCore::new("c", Duration::from_secs(600));
        c.local_login("carol", 1);
        a.on_presence(heartbeat("c", &["carol"]), t0);
        let invite = |call_id: &str| BridgeEvent::Invite {
            call_id: call_id.into(),
            from_uid: "alice".into(),
            callee: "carol".into(),
            content: String::new(),
        };
        for id in ["unconfirmed", "confirmed", "answered"] {
            a.route(invite(id), t0);
            c.web_event("a", &invite(id), t0);
        }
        for id in ["confirmed", "answered"] {
            let received = BridgeEvent::InvitationReceived {
                call_id: id.into(),
                uid: "carol".into(),
            };
            assert!(matches!(
                c.route(received.clone(), t0),
                Route::Remote { .. }
            ));
            a.web_event("c", &received, t0);
        }
        c.route(accepted("answered", "carol"), t0);
        a.web_event("c", &accepted("answered", "carol"), t0);
        let failed = |call_id: &str, reason| ForHub::LocalState {
            uid: "alice".into(),
            call_id: call_id.into(),
            state: LocalInvitationState::Failure,
            response: None,
            reason: Some(reason),
        };
        let expired = |call_id: &str| ForHub::Expired {
            uid: "carol".into(),
            call_id: call_id.into(),
        };
        // Not confirmed within the hub's receive timeout: PEER_NO_RESPONSE, as on one hub.
        let before = t0 + RECEIVE_TIMEOUT - Duration::from_millis(1);
        assert!(a.expire(before).web_expired.is_empty());
        assert!(c.expire(before).web_expired.is_empty());
        let at = t0 + RECEIVE_TIMEOUT;
        assert_eq!(
            a.expire(at).web_expired,
            vec![failed("unconfirmed", FailureReason::PeerNoResponse)]
        );
        assert_eq!(c.expire(at).web_expired, vec![expired("unconfirmed")]);
        // Confirmed but not answered within the invitation timeout: INVITATION_EXPIRE.
        let before = t0 + INVITATION_TIMEOUT - Duration::from_millis(1);
        assert!(a.expire(before).web_expired.is_empty());
        assert!(c.expire(before).web_expired.is_empty());
        let at = t0 + INVITATION_TIMEOUT;
        assert_eq!(
            a.expire(at).web_expired,
            vec![failed("confirmed", FailureReason::InvitationExpire)]
        );
        assert_eq!(c.expire(at).web_expired, vec![expired("confirmed")]);
        // The answered call never expires.
        assert!(a.expire(at + INVITATION_TIMEOUT).web_expired.is_empty());
        assert!(c.expire(at + INVITATION_TIMEOUT).web_expired.is_empty());
    }

    #[test]
    fn a_node_may_only_speak_for_browsers_it_was_asked_to_ring() {
        let t0 = Instant::now();
        let mut b = ClusterCore::new("b", TTL);
        b.on_presence(heartbeat("a", &["alice"]), t0);
        b.on_presence(heartbeat("c", &["carol"]), t0);
        b.ring_remote("call-1", "alice");
        assert_eq!(
            b.event_from("a", accepted("call-1", "alice")),
            Some(accepted("call-1", "alice"))
        );
        assert_eq!(b.event_from("c", accepted("call-1", "alice")), None);
        assert_eq!(b.event_from("a", accepted("call-1", "carol")), None);
        assert_eq!(b.event_from("a", accepted("call-9", "alice")), None);
        let invite = BridgeEvent::Invite {
            call_id: "x".into(),
            from_uid: "alice".into(),
            callee: "1002".into(),
            content: String::new(),
        };
        assert_eq!(b.event_from("a", invite), None);
        let closed = BridgeEvent::SessionClosed {
            uid: "alice".into(),
        };
        assert_eq!(b.event_from("c", closed.clone()), None);
        assert_eq!(b.event_from("a", closed.clone()), Some(closed));
        assert_eq!(b.browser_node("call-1"), None);
        assert_eq!(b.call_released("call-1"), None);
    }
}
