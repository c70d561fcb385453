//! The test PBX: Kamailio 5.6 with `config/kamailio/kamailio.cfg` (accounts 1000-1019, password 1234,
//! `0<id>` routed to 1000's contact as FreeSWITCH with SRProxy's dialplan sends it: R-URI and To
//! rewritten to the contact, `X-Number: <sip:<id>@127.0.0.1>`, Remote-Party-ID). Started with
//! `start_with_defines(&[("DIALPLAN_RURI", "1")])` it keeps `0<id>` in the R-URI and adds no header.
//! See that file for the dialplan.
//!
//! Each [`Pbx`] has its own port (UDP and TCP on 127.0.0.1, same number), its own temp dir with the
//! config copy, runtime dir, pid file and log (`kamailio.log`), and runs as a foreground child
//! (`-DD -E`). The log is printed if the test panics while the `Pbx` is alive. Registrations live in
//! memory only, so a restart forgets them (like a FreeSWITCH restart forgets its sofia registrations).
//!
//! Quirks: Kamailio never treats another port of 127.0.0.1 as itself (`auto_aliases=no`, no `alias`), so
//! R-URIs must carry the PBX port (`sip:1001@127.0.0.1:PORT`); [`Pbx::uri`] builds them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::net::UdpSocket;

use super::ports;
use super::process::{print_log, ChildGuard};

/// Password of every PBX account.
pub const PASSWORD: &str = "1234";
/// The account the bridge registers as (SRProxy's proxy extension); `0<id>` calls go there.
pub const PROXY_ACCOUNT: &str = "1000";

/// A running Kamailio; killed on drop.
pub struct Pbx {
    port: u16,
    dir: TempDir,
    defines: Vec<(String, String)>,
    child: Option<ChildGuard>,
}

impl Pbx {
    /// Starts Kamailio on a fresh port and waits until it answers OPTIONS. Panics if it cannot start.
    pub async fn start() -> Pbx {
        Pbx::start_with_defines(&[]).await
    }

    /// Two PBXs on two ports of 127.0.0.1, started side by side (several-PBX tests).
    pub async fn start_two() -> (Pbx, Pbx) {
        tokio::join!(Pbx::start(), Pbx::start())
    }

    /// Like [`Pbx::start`], overriding `#!define`s of the config (e.g. `("FR_INV_TIMER", "5000")`).
    pub async fn start_with_defines(defines: &[(&str, &str)]) -> Pbx {
        let dir = tempfile::Builder::new()
            .prefix("srbridge-pbx-")
            .tempdir()
            .expect("temp dir for kamailio");
        let src = super::project_root().join("config/kamailio/kamailio.cfg");
        std::fs::copy(&src, dir.path().join("kamailio.cfg"))
            .unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
        std::fs::create_dir_all(dir.path().join("run")).expect("kamailio run dir");
        let mut pbx = Pbx {
            port: ports::free_port(),
            dir,
            defines: defines
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
        };
        pbx.spawn().await;
        pbx
    }

    /// UDP/TCP address of the PBX.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, the SIP domain of the accounts.
    pub fn domain(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `sip:<user>@127.0.0.1:PORT`.
    pub fn uri(&self, user: &str) -> String {
        format!("sip:{user}@{}", self.domain())
    }

    /// Path of Kamailio's log (stdout+stderr of all runs of this PBX).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("kamailio.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn print_log(&self) {
        print_log(&format!("kamailio log (port {})", self.port), &self.log());
    }

    /// Stops Kamailio (SIGTERM to its process group) and waits until the port is free again.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// Whether Kamailio is running (it has not exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_status().is_none(),
            None => false,
        }
    }

    /// Stops and starts Kamailio again on the same port; registrations are lost.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// Sends OPTIONS to the server itself; true on a 200 within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> bool {
        self.options(None, &[], timeout).await == Some(200)
    }

    /// Asks the PBX whether `user` has a registered contact (harness query, see kamailio.cfg).
    pub async fn is_registered(&self, user: &str) -> bool {
        self.options(
            Some(user),
            &["X-Harness-Query: registered"],
            Duration::from_secs(2),
        )
        .await
            == Some(200)
    }

    /// Waits until `user` is registered; panics with the PBX log after `timeout`.
    pub async fn wait_registered(&self, user: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.is_registered(user).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.print_log();
        panic!(
            "account {user} did not register at {} within {timeout:?}",
            self.addr()
        );
    }

    /// Waits until `user` has no registered contact; panics after `timeout`.
    pub async fn wait_unregistered(&self, user: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.is_registered(user).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "account {user} still registered at {} after {timeout:?}",
            self.addr()
        );
    }

    async fn spawn(&mut self) {
        let dir = self.dir.path();
        let run = dir.join("run");
        let mut cmd = Command::new("kamailio");
        cmd.current_dir(dir)
            .arg("-f")
            .arg(dir.join("kamailio.cfg"))
            .args(["-DD", "-E", "-m", "32", "-M", "8"])
            .arg("-Y")
            .arg(&run)
            .arg("-P")
            .arg(run.join("kamailio.pid"))
            .args(["-l", &format!("udp:127.0.0.1:{}", self.port)])
            .args(["-l", &format!("tcp:127.0.0.1:{}", self.port)]);
        for (name, value) in &self.defines {
            cmd.args(["-A", &format!("{name}={value}")]);
        }
        wait_port_free(self.port, Duration::from_secs(5)).await;
        let child = ChildGuard::spawn("kamailio", cmd, &self.log_path())
            .unwrap_or_else(|e| panic!("cannot run kamailio: {e} (install it: scripts/deps.sh)"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_status()) {
                self.print_log();
                panic!("kamailio exited during start-up: {status}");
            }
            if self.ping(Duration::from_millis(200)).await && tcp_accepts(self.port).await {
                return;
            }
            if Instant::now() > deadline {
                self.print_log();
                panic!(
                    "kamailio did not answer OPTIONS on {} within 15 s",
                    self.addr()
                );
            }
        }
    }

    /// One OPTIONS transaction over UDP; returns the final status code.
    async fn options(
        &self,
        user: Option<&str>,
        headers: &[&str],
        timeout: Duration,
    ) -> Option<u16> {
        let sock = UdpSocket::bind("127.0.0.1:0").await.ok()?;
        let local = sock.local_addr().ok()?;
        let target = match user {
            Some(user) => self.uri(user),
            None => format!("sip:{}", self.domain()),
        };
        let tag: u64 = rand::random();
        let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
        let msg = format!(
            "OPTIONS {target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};rport;branch=z9hG4bK{tag:x}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:harness@{local}>;tag={tag:x}\r\n\
             To: <{target}>\r\n\
             Call-ID: {tag:x}@harness\r\n\
             CSeq: 1 OPTIONS\r\n\
             {extra}Content-Length: 0\r\n\r\n"
        );
        sock.send_to(msg.as_bytes(), self.addr()).await.ok()?;
        let mut buf = vec![0u8; 4096];
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (n, _) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf))
                .await
                .ok()?
                .ok()?;
            let text = String::from_utf8_lossy(&buf[..n]);
            let code: u16 = text.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()?;
            if code >= 200 {
                return Some(code);
            }
        }
    }
}

async fn tcp_accepts(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

/// Waits until both UDP and TCP `port` can be bound (a previous Kamailio has let go of it).
async fn wait_port_free(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        if udp.is_ok() && tcp.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("port {port} still in use after {timeout:?}");
}

impl Drop for Pbx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_log();
        }
        self.stop();
    }
}

/// Kamailio's config file in the repository.
pub fn config_path() -> PathBuf {
    super::project_root().join("config/kamailio/kamailio.cfg")
}
