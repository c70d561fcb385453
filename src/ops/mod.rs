//! Operations: what an operator sees and controls (SPEC §5).
//!
//! * [`logging`] + [`redact`]: the `tracing` subscriber from `[log]` (levels 0-5, file with
//!   size rotation, SIGHUP level change) that never writes a password or token.
//! * [`auth_log`]: the fixed `AUTH_FAILURE kind=… src=…` line fail2ban reads.
//! * [`metrics`]: a bridge instance's Prometheus registry ([`metrics::Metrics`], passed to each
//!   part as an `Arc` when it is built).
//! * [`status`]: the [`status::StatusSource`] seam the SIP/call parts implement.
//! * [`http`]: `/api/status`, `/api/calls/{id}`, `/api/events`, `/metrics`, `/healthz` (admin auth).
//! * [`tls`]: HTTPS/WSS when `[http] tls_cert`/`tls_key` are set.
//! * [`serve`] + [`conn_gate`] + [`fd_limit`]: the HTTP accept loop: `TCP_NODELAY`, header-read
//!   timeout, connections per address, and a file-descriptor budget that keeps room for media.
//! * [`cpu_load`]: is the bridge short of CPU? (cheaper Opus encoding while it is).
//! * [`trim`]: freed heap returned to the system on a timer (RSS comes back after floods).
//! * [`lifecycle`]: drain on SIGTERM ([`lifecycle::Lifecycle`]) and config reload on SIGHUP
//!   ([`lifecycle::ConfigReloader`], published as a [`lifecycle::ConfigWatch`]).

pub mod auth_log;
pub mod conn_gate;
pub mod cpu_load;
mod encoded;
pub mod fd_limit;
pub mod http;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod redact;
pub mod serve;
pub mod status;
pub mod tls;
pub mod trim;

/// Which way a call (or its media) goes: the one [`crate::domain::Direction`].
pub use crate::domain::Direction;
