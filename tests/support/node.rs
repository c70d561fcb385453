//! The `srbridge` daemon as a process of its own, for a cluster node a test can kill (SIGKILL:
//! no goodbye on NATS, no BYE) while the rest of the cluster runs in the test process.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::ports;
use super::process::{print_log, ChildGuard};

/// A running daemon; killed on drop (its log printed if the test panicked).
pub struct Node {
    /// Its `[cluster] node_id`.
    pub id: String,
    http: SocketAddr,
    dir: TempDir,
    child: Option<ChildGuard>,
}

impl Node {
    /// Starts `srbridge` with `appid`, `sip_svr = pbx` (not registered: no `[proxy]`), HTTP on a
    /// free loopback port and `[cluster]` on `nats` as `id` with `ttl_s` seconds of presence TTL,
    /// plus `extra` sections (e.g. `[auth]`); waits until its HTTP port answers.
    pub async fn start(
        appid: &str,
        pbx: SocketAddr,
        nats: &str,
        id: &str,
        ttl_s: u64,
        extra: &str,
    ) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("srbridge-node-")
            .tempdir()
            .expect("temp dir for a node");
        let http = SocketAddr::from(([127, 0, 0, 1], ports::free_port()));
        let rtp = ports::free_port_range(10);
        let config = format!(
            r#"
[global]
appid = "{appid}"
sip_svr = "{pbx}"
sip_local_port = 0
[sip]
listen_ip = "127.0.0.1"
options_interval = 0
[media]
rtp_port_min = {rtp}
rtp_port_max = {rtp_max}
[http]
listen = "{http}"
[cluster]
nats = "{nats}"
node_id = "{id}"
presence_ttl = {ttl_s}
{extra}
"#,
            rtp_max = rtp + 9,
        );
        let path = dir.path().join("srbridge.toml");
        std::fs::write(&path, config).expect("node config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_srbridge"));
        cmd.arg(&path).env("RUST_LOG", "info");
        let child =
            ChildGuard::spawn(id, cmd, &dir.path().join("node.log")).expect("srbridge runs");
        let node = Node {
            id: id.to_string(),
            http,
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if tokio::net::TcpStream::connect(http).await.is_ok() {
                return node;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node {id} did not serve HTTP:\n{}", node.log());
    }

    /// `ws://…/ws`, its hub.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }

    /// Its HTTP address (`/api/status`, `/metrics`).
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// Kills it at once (SIGKILL).
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill_hard();
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_log(&format!("node {} log", self.id), &self.log());
        }
    }
}
