//! What `GET /api/status` and `GET /api/calls/{id}` report, and the [`StatusSource`] seam
//! through which the SIP and call parts supply it (the HTTP side only reads).

use serde::Serialize;

use super::Direction;

/// Implemented by whatever knows the live state (the SIP stack and call registry). Called
/// once per status request, off the media path; keep it cheap (copy out, no I/O).
pub trait StatusSource: Send + Sync + 'static {
    /// Registration, reachability, calls and users right now.
    fn snapshot(&self) -> StatusSnapshot;
    /// One call by its id (the same id logs carry as `call_id`).
    fn call(&self, id: &str) -> Option<CallStatus>;
}

/// PBX registration state of the bridge's own account (`[proxy]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistrationState {
    /// `[proxy] on=0`: the bridge does not register.
    Disabled,
    /// Not registered (not tried yet, or expired).
    Unregistered,
    /// REGISTER sent, waiting for the answer.
    Registering,
    /// The PBX accepted the registration.
    Registered,
    /// The PBX refused or did not answer; see `last_error`.
    Failed,
}

impl RegistrationState {
    /// Every state, in label order.
    pub const ALL: &'static [RegistrationState] = &[
        RegistrationState::Disabled,
        RegistrationState::Unregistered,
        RegistrationState::Registering,
        RegistrationState::Registered,
        RegistrationState::Failed,
    ];

    /// The JSON/Prometheus label.
    pub fn label(self) -> &'static str {
        match self {
            RegistrationState::Disabled => "disabled",
            RegistrationState::Unregistered => "unregistered",
            RegistrationState::Registering => "registering",
            RegistrationState::Registered => "registered",
            RegistrationState::Failed => "failed",
        }
    }
}

/// Registration part of the status.
#[derive(Debug, Clone, Serialize)]
pub struct RegistrationStatus {
    /// Current state.
    pub state: RegistrationState,
    /// SIP account registered (`[proxy] sip_account`), if any.
    pub account: Option<String>,
    /// Why the last attempt failed (e.g. `"403 Forbidden"`, `"no answer"`).
    pub last_error: Option<String>,
}

/// PBX reachability from OPTIONS pings (like FreeSWITCH `gwlist up/down`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reachability {
    /// The last ping was answered.
    Up,
    /// The last ping got no answer.
    Down,
    /// No ping done yet (or pinging disabled).
    Unknown,
}

/// PBX part of the status.
#[derive(Debug, Clone, Serialize)]
pub struct PbxStatus {
    /// `[global] sip_svr`.
    pub address: String,
    /// Up/down/unknown.
    pub reachable: Reachability,
    /// Last OPTIONS round trip in milliseconds.
    pub rtt_ms: Option<f64>,
}

/// One configured PBX (`sip_svr` may list several): reachability and the registration there.
#[derive(Debug, Clone, Serialize)]
pub struct PbxEntryStatus {
    /// `ip:port`.
    pub address: String,
    /// Share of new calls among PBXs of the same priority.
    pub weight: u32,
    /// Lower is preferred.
    pub priority: u32,
    /// Up/down/unknown (OPTIONS pings, transport errors of calls).
    pub reachable: Reachability,
    /// Last OPTIONS round trip in milliseconds.
    pub rtt_ms: Option<f64>,
    /// The proxy account's registration at this PBX (`disabled` on an active/backup standby).
    pub registration: RegistrationState,
    /// Why the last REGISTER there failed.
    pub last_error: Option<String>,
}

/// One call in progress.
#[derive(Debug, Clone, Serialize)]
pub struct CallStatus {
    /// Call id (as in logs).
    pub id: String,
    /// Who called whom.
    pub direction: Direction,
    /// The browser user's id.
    pub web_user: String,
    /// The SIP number (callee for web→SIP, caller for SIP→web).
    pub sip_number: String,
    /// Call state, e.g. `"ringing"`, `"answered"`, `"ending"`.
    pub state: String,
    /// Seconds since the call started.
    pub duration_s: f64,
    /// SIP Call-ID of the PBX leg, when there is one.
    pub sip_call_id: Option<String>,
}

/// Everything a [`StatusSource`] reports.
#[derive(Debug, Clone, Serialize)]
pub struct StatusSnapshot {
    /// Registration of `[proxy]`.
    pub registration: RegistrationStatus,
    /// PBX reachability (up when any PBX is).
    pub pbx: PbxStatus,
    /// Every configured PBX, in config order.
    pub pbxs: Vec<PbxEntryStatus>,
    /// Calls in progress.
    pub calls: Vec<CallStatus>,
    /// Browser users logged in to the hub.
    pub users_logged_in: usize,
    /// The cluster, with `[cluster]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
}

/// Whether a clustered bridge reaches the other nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterState {
    /// NATS is up: users of every node are reachable.
    Connected,
    /// NATS is down: this bridge serves its own users only.
    Disconnected,
}

/// `cluster` in `/api/status`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// `[cluster] node_id`.
    pub node_id: String,
    /// The NATS connection.
    pub state: ClusterState,
    /// Why it is down, when known: credentials refused, TLS failed, or unreachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The other nodes heard from within the presence TTL.
    pub peers: Vec<String>,
    /// Users logged in to those nodes.
    pub remote_users: usize,
}

/// The `/api/status` body: the snapshot plus process facts the ops layer owns.
#[derive(Debug, Clone, Serialize)]
pub struct StatusResponse {
    /// Crate version.
    pub version: &'static str,
    /// Seconds since start.
    pub uptime_s: u64,
    /// True after SIGTERM while calls finish.
    pub draining: bool,
    /// Tokio tasks alive in the bridge's runtime: back to its idle figure once calls and
    /// sessions are gone (a leak shows here first; `srbridge-load --soak` reads it).
    pub tasks: usize,
    /// The rest.
    #[serde(flatten)]
    pub snapshot: StatusSnapshot,
}
