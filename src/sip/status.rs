//! What the status API shows about SIP: registration and PBX reachability (like FreeSWITCH's
//! `sofia status gateway` / `gwlist`).

use serde::Serialize;
use std::time::Instant;

/// Snapshot of the UA for the status API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SipStatus {
    /// Registration of the proxy account: registered if any PBX holds it.
    pub registration: RegistrationState,
    /// Reachability from the OPTIONS pings: up if any PBX answers.
    pub pbx: PbxState,
    /// Where the (first) PBX is (`ip:port`).
    pub pbx_addr: String,
    /// Each configured PBX, in config order.
    pub pbxs: Vec<SipPbxStatus>,
    /// `udp` or `tcp`.
    pub transport: String,
    /// The address we put in Contact/Via.
    pub contact_addr: String,
    /// Calls the UA is handling right now (one driver task each).
    pub active_calls: usize,
    /// SIP dialogs rsipstack still holds (should follow `active_calls` back to 0).
    pub dialogs: usize,
}

/// One PBX of `sip_svr`: its place in the choice, health and registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SipPbxStatus {
    /// `ip:port`.
    pub addr: String,
    /// Share of calls among PBXs of the same priority.
    pub weight: u32,
    /// Lower is preferred.
    pub priority: u32,
    /// Up/down from pings and call transport errors.
    pub reachability: PbxState,
    /// The proxy account's registration there (`disabled` on an active/backup standby).
    pub registration: RegistrationState,
}

/// Registration of `proxy.sip_account` at the PBX.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RegistrationState {
    /// `[proxy] on=0`: no account to register.
    Disabled,
    /// A REGISTER is in flight (first one, or after a failure).
    Registering,
    /// The PBX accepted the binding; it is refreshed before it expires.
    Registered {
        /// Seconds until the binding expires at the PBX.
        expires_in: u64,
    },
    /// The last attempt failed; the next one comes after `retry_in` seconds.
    Failed {
        /// Human-readable reason, e.g. "403 Forbidden: ...".
        last_error: String,
        /// Seconds until the next attempt.
        retry_in: u64,
    },
}

/// Reachability of the PBX.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PbxState {
    /// No ping answered or failed yet (or pinging is off).
    Unknown,
    /// The last OPTIONS was answered.
    Up {
        /// Round-trip time of the last OPTIONS in ms.
        rtt_ms: u64,
    },
    /// The last OPTIONS was not answered.
    Down {
        /// Seconds since the PBX stopped answering.
        since_secs: u64,
        /// Why the ping failed.
        last_error: String,
    },
}

/// Internal registration state with deadlines (converted to seconds when shown).
#[derive(Debug, Clone)]
pub(crate) enum RegState {
    Disabled,
    Registering,
    Registered { until: Instant },
    Failed { error: String, retry_at: Instant },
}

/// Internal PBX state with timestamps.
#[derive(Debug, Clone)]
pub(crate) enum PbxInternal {
    Unknown,
    Up { rtt_ms: u64 },
    Down { since: Instant, error: String },
}

impl RegState {
    /// Whether going from the last announced state to `next` is a `registration.changed`: a new
    /// kind of state, except the Registering of a refresh or a retry (it would flap every time).
    pub(crate) fn announces(last: Option<&RegState>, next: &RegState) -> bool {
        match (last, next) {
            (
                Some(RegState::Registered { .. } | RegState::Failed { .. }),
                RegState::Registering,
            ) => false,
            (Some(last), next) => std::mem::discriminant(last) != std::mem::discriminant(next),
            (None, _) => true,
        }
    }

    pub(crate) fn show(&self, now: Instant) -> RegistrationState {
        match self {
            RegState::Disabled => RegistrationState::Disabled,
            RegState::Registering => RegistrationState::Registering,
            RegState::Registered { until } => RegistrationState::Registered {
                expires_in: until.saturating_duration_since(now).as_secs(),
            },
            RegState::Failed { error, retry_at } => RegistrationState::Failed {
                last_error: error.clone(),
                retry_in: retry_at.saturating_duration_since(now).as_secs(),
            },
        }
    }
}

impl PbxInternal {
    pub(crate) fn show(&self, now: Instant) -> PbxState {
        match self {
            PbxInternal::Unknown => PbxState::Unknown,
            PbxInternal::Up { rtt_ms } => PbxState::Up { rtt_ms: *rtt_ms },
            PbxInternal::Down { since, error } => PbxState::Down {
                since_secs: now.saturating_duration_since(*since).as_secs(),
                last_error: error.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshes_and_retries_are_not_registration_changes() {
        let now = Instant::now();
        let registered = RegState::Registered { until: now };
        let failed = |e: &str| RegState::Failed {
            error: e.into(),
            retry_at: now,
        };
        let announces = RegState::announces;
        assert!(announces(None, &RegState::Registering));
        assert!(announces(Some(&RegState::Disabled), &RegState::Registering));
        assert!(announces(Some(&RegState::Registering), &registered));
        assert!(
            !announces(Some(&registered), &RegState::Registering),
            "refresh"
        );
        assert!(!announces(Some(&registered), &registered));
        assert!(announces(Some(&registered), &failed("timeout")));
        assert!(
            !announces(Some(&failed("a")), &RegState::Registering),
            "retry"
        );
        assert!(!announces(Some(&failed("a")), &failed("b")));
        assert!(announces(Some(&failed("a")), &registered));
        assert!(
            announces(Some(&registered), &RegState::Disabled),
            "unregistered"
        );
    }
}
