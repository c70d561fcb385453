#![allow(dead_code)]
//! Shared by the `ops_*` tests: write a config, run the real `srbridge` binary on it, talk
//! HTTP/1.1 to it over loopback, signal it, read its log file.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Generous bound for anything a test waits for (a loaded 2-core CI machine).
pub const WAIT: Duration = Duration::from_secs(60);

/// A minimal native config on loopback: `http.listen` on `http_port`, the PBX on a closed
/// loopback port, OS-chosen SIP port, `extra` appended (later sections win nothing: use
/// only sections not given here).
pub fn config_text(
    http_port: u16,
    pbx_port: u16,
    log_file: &Path,
    level: u8,
    extra: &str,
) -> String {
    format!(
        "[global]\nappid = \"ops-test\"\nsip_svr = \"127.0.0.1:{pbx_port}\"\nsip_local_port = 0\n\
         [log]\nlevel = {level}\nfile = \"{}\"\n\
         [http]\nlisten = \"127.0.0.1:{http_port}\"\n{extra}",
        log_file.display()
    )
}

/// Polls `cond` every 20 ms until it holds or [`WAIT`] passes.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Everything in the log file so far ("" if not there yet).
pub fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: plain kill(2) on a pid the test started.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// The bridge run directly (not through rtx.sh), killed on drop.
pub struct Bridge {
    pub child: Child,
    pub log: PathBuf,
    pub port: u16,
}

impl Bridge {
    /// Starts `srbridge CONFIG` and waits until its log says it is running.
    pub fn start(config: &Path, log: &Path, port: u16) -> Bridge {
        Bridge::start_limited(config, log, port, None)
    }

    /// Like [`Bridge::start`], with `RLIMIT_NOFILE` soft and hard set to `nofile` when given
    /// (so the bridge cannot raise it).
    pub fn start_limited(config: &Path, log: &Path, port: u16, nofile: Option<u64>) -> Bridge {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(env!("CARGO_BIN_EXE_srbridge"));
        if let Some(n) = nofile {
            // SAFETY: only setrlimit (async-signal-safe) runs between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command
            .arg(config)
            .env_remove("RUST_LOG")
            .env_remove("SRBRIDGE_HTTP_LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn srbridge");
        let mut bridge = Bridge {
            child,
            log: log.to_path_buf(),
            port,
        };
        wait_until("srbridge running", || {
            if let Ok(Some(status)) = bridge.child.try_wait() {
                panic!("srbridge exited early ({status}): {}", read_log(log));
            }
            read_log(log).contains("running;")
        });
        bridge
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        http_get(self.port, path, headers)
    }

    /// Waits for exit after a signal.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "srbridge did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

/// `GET path` on 127.0.0.1:port with `Connection: close`.
pub fn http_get(port: u16, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Response {
        status,
        headers: head.to_string(),
        body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}
