//! `scripts/rtx.sh` and `scripts/watchdog.sh` managing the real binary as an operator would:
//! start, status, a refused second start, a crash (kill -9) repaired by the watchdog (cron
//! mode and `--loop`), stop (pid file and process gone), no restart after a deliberate stop.

mod ops_support;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use ops_support::*;
use support::ports::free_port;
use support::project_root;

struct Daemon {
    run_dir: PathBuf,
    config: PathBuf,
}

impl Daemon {
    fn script(&self, name: &str) -> Command {
        let mut cmd = Command::new(project_root().join("scripts").join(name));
        cmd.env("SRBRIDGE_BIN", env!("CARGO_BIN_EXE_srbridge"))
            .env("SRBRIDGE_RUN_DIR", &self.run_dir)
            .env_remove("SRBRIDGE_HTTP_LISTEN")
            .env_remove("SRBRIDGE_PID_FILE")
            .env_remove("SRBRIDGE_LOG_FILE")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    fn rtx(&self, args: &[&str]) -> Output {
        self.script("rtx.sh")
            .args(args)
            .output()
            .expect("rtx.sh runs")
    }

    fn pid_file(&self) -> PathBuf {
        self.run_dir.join("srbridge.pid")
    }

    fn pid(&self) -> u32 {
        std::fs::read_to_string(self.pid_file())
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for entry in std::fs::read_dir(&self.run_dir)
                .into_iter()
                .flatten()
                .flatten()
            {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "log") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    eprintln!("---- {} ----\n{text}", path.display());
                }
            }
        }
        // Never leave a daemon behind, whatever failed.
        if let Ok(text) = std::fs::read_to_string(self.pid_file()) {
            if let Ok(pid) = text.trim().parse::<i32>() {
                // SAFETY: kill(2) on the daemon this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

fn out(o: &Output) -> String {
    format!(
        "code {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn setup(dir: &Path) -> Daemon {
    let config = dir.join("c.toml");
    let text = config_text(
        free_port(),
        free_port(),
        &dir.join("srbridge.log"),
        2,
        "[shutdown]\ndrain_timeout = 2\n",
    );
    std::fs::write(&config, text).unwrap();
    Daemon {
        run_dir: dir.join("run"),
        config,
    }
}

struct Watchdog(Child);

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn rtx_sh_manages_the_daemon_and_the_watchdog_restarts_it_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let d = setup(dir.path());
    let config = d.config.to_str().unwrap();

    let o = d.rtx(&["status"]);
    assert_eq!(o.status.code(), Some(3), "not running yet: {}", out(&o));

    let o = d.rtx(&["start", config]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(stdout(&o).contains("srbridge started"), "{}", out(&o));
    let first = d.pid();
    assert!(alive(first));

    let o = d.rtx(&["status"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    let text = stdout(&o);
    assert!(text.contains(&format!("running (pid {first}")), "{text}");
    let json_line = text
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("status JSON");
    let json: serde_json::Value = serde_json::from_str(json_line).unwrap();
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));

    let o = d.rtx(&["start", config]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already running"),
        "{}",
        out(&o)
    );
    assert_eq!(d.pid(), first, "second start left the first alone");

    let o = d.rtx(&["reload"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    wait_until("reload in the log", || {
        read_log(&dir.path().join("srbridge.log")).contains("config reloaded")
    });

    // Crash: the watchdog (cron mode) restarts it.
    signal(first, libc::SIGKILL);
    wait_until("crashed process gone", || !alive(first));
    let o = d.rtx(&["status"]);
    assert_eq!(o.status.code(), Some(1), "dead with pid file: {}", out(&o));
    let o = d.script("watchdog.sh").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    let second = d.pid();
    assert_ne!(second, first, "restarted under a new pid");
    assert!(alive(second));
    assert_eq!(d.rtx(&["status"]).status.code(), Some(0));
    let watchdog_log = std::fs::read_to_string(d.run_dir.join("watchdog.log")).unwrap();
    assert!(watchdog_log.contains("restarting"), "{watchdog_log}");

    // --loop mode: crash again, the looping watchdog brings it back.
    let _watchdog = Watchdog(
        d.script("watchdog.sh")
            .args(["--loop", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    signal(second, libc::SIGKILL);
    // Healthy, not merely alive: a restart can still fail while the killed copy's sockets go
    // away, and then the watchdog tries again.
    wait_until("loop watchdog restart", || {
        std::fs::read_to_string(d.pid_file())
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .is_some_and(|pid| pid != second && alive(pid))
            && stdout(&d.rtx(&["status"])).contains("\"version\"")
    });
    let third = d.pid();

    // Deliberate stop: pid file and process gone, and the watchdog leaves it stopped.
    let o = d.rtx(&["stop"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(stdout(&o).contains("stopped"), "{}", out(&o));
    assert!(!d.pid_file().exists(), "pid file removed");
    assert!(!alive(third), "process gone");
    let o = d.script("watchdog.sh").output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    let o = d.rtx(&["status"]);
    assert_eq!(o.status.code(), Some(3), "still stopped: {}", out(&o));
    let log = read_log(&dir.path().join("srbridge.log"));
    assert!(log.contains("drain complete"), "stop drained: {log}");
}

#[test]
fn start_with_a_bad_config_fails_and_leaves_no_pid_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = setup(dir.path());
    std::fs::write(&d.config, "[global]\nappid = \"a\"\n").unwrap(); // no sip_svr
    let o = d.rtx(&["start", d.config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("not starting") && err.contains("sip_svr"),
        "{err}"
    );
    assert!(!d.pid_file().exists());
    let o = d.rtx(&["bogus"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("usage"));
}
