//! A `nats-server` (Debian package, installed by scripts/deps.sh) on a free loopback port, as the
//! cluster tests' message bus. Stop and start it again on the same port to test an outage.

use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::ports;
use super::process::{print_log, ChildGuard};

/// A running NATS server; killed on drop (its log printed if the test panicked).
pub struct NatsServer {
    port: u16,
    dir: TempDir,
    child: Option<ChildGuard>,
    /// Options after the address and port (credentials, TLS).
    args: Vec<String>,
}

impl NatsServer {
    /// Starts `nats-server` on 127.0.0.1 and waits until it accepts connections.
    pub async fn start() -> NatsServer {
        NatsServer::start_with(&[]).await
    }

    /// Like [`NatsServer::start`] with more `nats-server` options, e.g. `--user u --pass p` or
    /// `--tls --tlscert … --tlskey …`.
    pub async fn start_with(args: &[&str]) -> NatsServer {
        let dir = tempfile::Builder::new()
            .prefix("srbridge-nats-")
            .tempdir()
            .expect("temp dir for nats-server");
        let mut nats = NatsServer {
            port: ports::free_port(),
            dir,
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        nats.spawn().await;
        nats
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `tls://127.0.0.1:PORT`, for a server started with `--tls`.
    pub fn tls_url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new("nats-server");
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        cmd.args(&self.args);
        let log = self.dir.path().join("nats.log");
        let child = ChildGuard::spawn("nats-server", cmd, &log)
            .expect("nats-server starts (scripts/deps.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "nats-server did not listen on {}:\n{}",
            self.port,
            self.log()
        );
    }

    /// Stops the server (clients see the connection drop).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill_hard();
        }
    }

    /// Starts it again on the same port.
    pub async fn start_again(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// Starts it again on the same port with other options (e.g. a changed password).
    pub async fn restart_with(&mut self, args: &[&str]) {
        self.args = args.iter().map(|a| a.to_string()).collect();
        self.start_again().await;
    }

    /// The server's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_log("nats-server log", &self.log());
        }
    }
}
