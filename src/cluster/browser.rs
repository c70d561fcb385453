//! The call layer's browser side in a cluster: a user logged in here is reached through the
//! local hub, one logged in to another node through NATS. Calls do not know the difference.

use serde_json::Value;

use super::node::ClusterLink;
use super::wire::ToBrowser;
use crate::call::machine::{FailureReason, LocalState};
use crate::call::ports::BrowserSide;

/// The local hub `L`, plus the other nodes when `[cluster]` is set (without it, `L` alone).
pub struct ClusterBrowser<L> {
    local: L,
    cluster: Option<ClusterLink>,
}

impl<L> ClusterBrowser<L> {
    /// `local` alone, or with the cluster's other nodes.
    pub fn new(local: L, cluster: Option<ClusterLink>) -> ClusterBrowser<L> {
        ClusterBrowser { local, cluster }
    }

    /// The cluster link when the browser of `call_id` is on another node.
    fn remote_call(&self, call_id: &str) -> Option<(&ClusterLink, String)> {
        let link = self.cluster.as_ref()?;
        link.browser_node(call_id).map(|node| (link, node))
    }
}

impl<L: BrowserSide> BrowserSide for ClusterBrowser<L> {
    fn local_state(
        &self,
        uid: &str,
        call_id: &str,
        state: LocalState,
        response: Option<String>,
        reason: Option<FailureReason>,
    ) {
        // Browsers invite through their own node, which runs those calls itself.
        self.local
            .local_state(uid, call_id, state, response, reason);
    }

    fn ring(&self, uid: &str, call_id: &str, caller: &str, content: &str) -> bool {
        if self.local.ring(uid, call_id, caller, content) {
            return true;
        }
        let Some(link) = &self.cluster else {
            return false;
        };
        link.ring(uid, call_id, caller, content)
    }

    fn cancel_remote(&self, uid: &str, call_id: &str) {
        match self.remote_call(call_id) {
            Some((link, node)) => link.send(
                &node,
                ToBrowser::Cancel {
                    uid: uid.to_string(),
                    call_id: call_id.to_string(),
                },
            ),
            None => self.local.cancel_remote(uid, call_id),
        }
    }

    fn expire_remote(&self, uid: &str, call_id: &str) {
        match self.remote_call(call_id) {
            Some((link, node)) => link.send(
                &node,
                ToBrowser::Expire {
                    uid: uid.to_string(),
                    call_id: call_id.to_string(),
                },
            ),
            None => self.local.expire_remote(uid, call_id),
        }
    }

    fn peer_message(&self, from: &str, uid: &str, text: &str) {
        let node = self
            .cluster
            .as_ref()
            .and_then(|link| link.browser_node_of_uid(uid).map(|n| (link, n)));
        match node {
            Some((link, node)) => link.send(
                &node,
                ToBrowser::PeerMessage {
                    from: from.to_string(),
                    uid: uid.to_string(),
                    text: text.to_string(),
                },
            ),
            None => self.local.peer_message(from, uid, text),
        }
    }

    fn media(&self, uid: &str, call_id: &str, payload: Value) {
        match self.remote_call(call_id) {
            Some((link, node)) => link.send(
                &node,
                ToBrowser::Media {
                    uid: uid.to_string(),
                    call_id: call_id.to_string(),
                    payload,
                },
            ),
            None => self.local.media(uid, call_id, payload),
        }
    }

    fn released(&self, uid: &str, call_id: &str) {
        if let Some(link) = &self.cluster {
            link.released(uid, call_id);
        }
        self.local.released(uid, call_id);
    }
}
