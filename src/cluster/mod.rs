//! Several bridges acting as one over a NATS server (`[cluster]`, `docs/cluster.md`).
//!
//! Each node tells the others who is logged in to its hub (joins, leaves and a periodic
//! heartbeat with the full list; a node not heard from for `presence_ttl` is taken for dead).
//! A phone call landing on node B for a user logged in to node A stays on B (SIP dialog and
//! media); only the browser's signalling crosses: B's call layer talks to a
//! [`ClusterBrowser`], which hands what is for a remote user to A over NATS, and A's hub hands
//! the browser's answers back. No media travels over NATS.
//!
//! [`core`] holds the rules without sockets (presence, which call's browser is where);
//! [`health`] says why NATS is unreachable (credentials, TLS, outage); [`wire`] is the JSON on
//! the NATS subjects; [`node`] is the tokio shell.

pub mod browser;
pub mod core;
pub mod health;
pub mod node;
pub mod wire;

pub use self::browser::ClusterBrowser;
pub use self::node::{Cluster, ClusterLink};
