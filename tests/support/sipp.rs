//! SIPp 3.6.1 runs against the test PBX, with scenarios from `tests/sipp/`.
//!
//! Scenarios there: `register.xml` (REGISTER with auth; `-key expires`), `register_once.xml` (expects the
//! authenticated REGISTER to be refused with 401/403), `uac_invite.xml` (INVITE with 407 auth, 200, ACK,
//! hold `-d` ms, BYE; `-key caller`), `uas_answer.xml` (answers one INVITE and logs `X-Number=` and
//! `RURI=` lines to the log file), `uac_invite_rejected.xml` (INVITE that must fail with 404/480).
//!
//! Every run has its own temp dir holding SIPp's message trace, error trace, `<log>` output, screen and
//! stdout; all are in [`SippResult`]. Local SIP, media and control ports are always chosen by
//! [`super::ports`] (SIPp's defaults 5060/6000/8888 would collide). Quirk: SIPp substitutes `-key`
//! values only inside messages, not in attributes such as `<pause milliseconds=...>` (use `-d`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use super::ports;
use super::process::{print_log, ChildGuard};

/// A SIPp invocation being built.
#[derive(Debug, Clone)]
pub struct Sipp {
    scenario: PathBuf,
    args: Vec<String>,
    local_port: Option<u16>,
    timeout: Duration,
    calls: u32,
}

/// Outcome and traces of a finished SIPp run.
#[derive(Debug, Clone)]
pub struct SippResult {
    /// SIPp's exit code: 0 all calls succeeded, 1 some failed, 97/99 other ends, 255/254 fatal.
    pub exit_code: i32,
    /// Whether SIPp was killed because it outlived its time limit.
    pub timed_out: bool,
    /// `-trace_msg`: every message sent and received.
    pub messages: String,
    /// `-trace_logs`: `<log>` actions of the scenario.
    pub logs: String,
    /// `-trace_err`: unexpected messages etc.
    pub errors: String,
    /// `-trace_screen`: final statistics screen.
    pub screen: String,
    /// SIPp's stdout/stderr.
    pub output: String,
    /// Local SIP port SIPp used.
    pub local_port: u16,
}

impl SippResult {
    pub fn success(&self) -> bool {
        self.exit_code == 0 && !self.timed_out
    }

    /// Panics with all traces unless every call succeeded.
    pub fn assert_success(&self) {
        if !self.success() {
            self.print();
            panic!(
                "sipp failed (exit {}, timed out: {})",
                self.exit_code, self.timed_out
            );
        }
    }

    /// Everything SIPp wrote, for failure messages.
    pub fn print(&self) {
        print_log("sipp output", &self.output);
        print_log("sipp errors", &self.errors);
        print_log("sipp messages", &self.messages);
        print_log("sipp logs", &self.logs);
    }

    /// Status codes of all responses received, in order (from the message trace).
    pub fn received_status_codes(&self) -> Vec<u16> {
        let mut codes = Vec::new();
        let mut lines = self.messages.lines();
        while let Some(line) = lines.next() {
            if line.contains("message received") {
                for l in lines.by_ref() {
                    let l = l.trim();
                    if l.is_empty() {
                        continue;
                    }
                    if let Some(rest) = l.strip_prefix("SIP/2.0 ") {
                        if let Some(code) = rest.get(..3).and_then(|c| c.parse().ok()) {
                            codes.push(code);
                        }
                    }
                    break;
                }
            }
        }
        codes
    }
}

impl Sipp {
    /// A run of `scenario`: a file name in `tests/sipp/` (e.g. "register.xml"), a path, or a built-in
    /// SIPp scenario written as "builtin:uac"/"builtin:uas".
    pub fn new(scenario: &str) -> Sipp {
        let scenario = if scenario.starts_with("builtin:") || Path::new(scenario).is_absolute() {
            PathBuf::from(scenario)
        } else {
            super::project_root().join("tests/sipp").join(scenario)
        };
        Sipp {
            scenario,
            args: Vec::new(),
            local_port: None,
            timeout: Duration::from_secs(20),
            calls: 1,
        }
    }

    /// `-s`: the R-URI user / service (for register.xml the account being registered).
    pub fn service(self, user: &str) -> Sipp {
        self.arg("-s").arg(user)
    }

    /// `-au`/`-ap`: digest credentials used for 401/407 challenges.
    pub fn auth(self, user: &str, password: &str) -> Sipp {
        self.arg("-au").arg(user).arg("-ap").arg(password)
    }

    /// `-key name value`: `[name]` in the scenario's messages.
    pub fn key(self, name: &str, value: &str) -> Sipp {
        self.arg("-key").arg(name).arg(value)
    }

    /// `-m`: number of calls before SIPp exits (default 1).
    pub fn calls(mut self, count: u32) -> Sipp {
        self.calls = count;
        self
    }

    /// `-d`: duration of `<pause/>` in ms.
    pub fn pause_ms(self, ms: u64) -> Sipp {
        self.arg("-d").arg(&ms.to_string())
    }

    /// Overall limit: SIPp gets `-timeout` and is killed a bit later (default 20 s).
    pub fn timeout(mut self, timeout: Duration) -> Sipp {
        self.timeout = timeout;
        self
    }

    /// `-p`: local SIP port (default: a fresh free port).
    pub fn local_port(mut self, port: u16) -> Sipp {
        self.local_port = Some(port);
        self
    }

    /// `-t t1`: TCP instead of UDP.
    pub fn tcp(self) -> Sipp {
        self.arg("-t").arg("t1")
    }

    /// Any other SIPp argument.
    pub fn arg(mut self, arg: &str) -> Sipp {
        self.args.push(arg.to_string());
        self
    }

    /// Runs SIPp towards `target` (None for a UAS) until it exits or its time limit passes.
    pub async fn run(self, target: Option<SocketAddr>) -> SippResult {
        let mut process = self.spawn(target);
        let limit = process.limit;
        process.wait(limit).await
    }

    /// Starts SIPp in the background, e.g. as a UAS; collect its result with [`SippProcess::wait`].
    pub fn spawn(self, target: Option<SocketAddr>) -> SippProcess {
        let dir = tempfile::Builder::new()
            .prefix("srbridge-sipp-")
            .tempdir()
            .expect("temp dir for sipp");
        let local_port = self.local_port.unwrap_or_else(ports::free_port);
        let media_port = ports::free_port_range(4);
        let control_port = ports::free_port();
        let d = dir.path();
        let mut cmd = Command::new("sipp");
        cmd.current_dir(d);
        if let Some(target) = target {
            cmd.arg(target.to_string());
        }
        match self
            .scenario
            .to_str()
            .and_then(|s| s.strip_prefix("builtin:"))
        {
            Some(name) => cmd.args(["-sn", name]),
            None => cmd.arg("-sf").arg(&self.scenario),
        };
        let secs = self.timeout.as_secs().max(1);
        cmd.args(["-i", "127.0.0.1", "-mi", "127.0.0.1", "-nostdin"])
            .args(["-p", &local_port.to_string()])
            .args(["-mp", &media_port.to_string()])
            .args(["-cp", &control_port.to_string()])
            .args(["-m", &self.calls.to_string()])
            .args(["-timeout", &format!("{secs}s"), "-timeout_error"])
            .args(["-trace_msg", "-message_file"])
            .arg(d.join("messages.log"))
            .args(["-trace_err", "-error_file"])
            .arg(d.join("errors.log"))
            .args(["-trace_logs", "-log_file"])
            .arg(d.join("logs.log"))
            .args(["-trace_screen", "-screen_file"])
            .arg(d.join("screen.log"))
            .args(&self.args);
        let child = ChildGuard::spawn("sipp", cmd, &d.join("output.log")).unwrap_or_else(|e| {
            panic!("cannot run sipp: {e} (install sip-tester: scripts/deps.sh)")
        });
        SippProcess {
            child,
            dir,
            local_port,
            limit: self.timeout + Duration::from_secs(5),
            done: false,
        }
    }
}

/// A SIPp running in the background; killed on drop.
pub struct SippProcess {
    child: ChildGuard,
    dir: TempDir,
    local_port: u16,
    limit: Duration,
    done: bool,
}

impl SippProcess {
    /// Local SIP port of this SIPp (e.g. the contact it registered).
    pub fn local_port(&self) -> u16 {
        self.local_port
    }

    /// The `<log>` output so far (e.g. `X-Number=` lines of uas_answer.xml).
    pub fn logs_so_far(&self) -> String {
        read(&self.dir.path().join("logs.log"))
    }

    /// The message trace so far (`-trace_msg`).
    pub fn messages_so_far(&self) -> String {
        read(&self.dir.path().join("messages.log"))
    }

    /// Waits until SIPp exits (killing it after `timeout`) and returns its traces.
    pub async fn wait(&mut self, timeout: Duration) -> SippResult {
        let status = self.child.wait(timeout).await;
        let timed_out = status.is_none();
        let status = match status {
            Some(s) => Some(s),
            None => self.child.kill(),
        };
        self.done = true;
        let d = self.dir.path();
        SippResult {
            exit_code: status.and_then(|s| s.code()).unwrap_or(-1),
            timed_out,
            messages: read(&d.join("messages.log")),
            logs: read(&d.join("logs.log")),
            errors: read(&d.join("errors.log")),
            screen: read(&d.join("screen.log")),
            output: read(&d.join("output.log")),
            local_port: self.local_port,
        }
    }
}

impl Drop for SippProcess {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.done {
            print_log("sipp output", &read(&self.dir.path().join("output.log")));
            print_log(
                "sipp messages",
                &read(&self.dir.path().join("messages.log")),
            );
        }
        self.child.kill();
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Registers `account` (password `password`) at `pbx` from local port `local_port` with `expires`
/// seconds, via register.xml.
pub async fn register(
    pbx: SocketAddr,
    account: &str,
    password: &str,
    local_port: u16,
    expires: u32,
) -> SippResult {
    Sipp::new("register.xml")
        .service(account)
        .auth(account, password)
        .key("expires", &expires.to_string())
        .local_port(local_port)
        .timeout(Duration::from_secs(10))
        .run(Some(pbx))
        .await
}

/// A SIPp UAS reachable as `account`: registers from a fresh port, then runs `scenario` (e.g.
/// "uas_answer.xml") on that port in the background for `calls` calls.
pub async fn registered_uas(
    pbx: SocketAddr,
    account: &str,
    scenario: &str,
    calls: u32,
    timeout: Duration,
) -> SippProcess {
    let port = ports::free_port();
    let reg = register(pbx, account, super::pbx::PASSWORD, port, 300).await;
    reg.assert_success();
    Sipp::new(scenario)
        .service(account)
        .local_port(port)
        .calls(calls)
        .timeout(timeout)
        .spawn(None)
}
