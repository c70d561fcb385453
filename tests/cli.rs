//! The `srbridge` binary as an operator uses it: version, config check, clear one-line
//! errors for bad files, and a clean exit on SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn srbridge() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_srbridge"));
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE");
    command
}

fn run(args: &[&str]) -> Output {
    srbridge().args(args).output().expect("srbridge runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts a refused config: exit 2, nothing on stdout, exactly one stderr line containing
/// every `needle`.
#[track_caller]
fn assert_refused(output: &Output, needles: &[&str]) -> String {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(output.stdout.is_empty(), "stdout: {}", text(&output.stdout));
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{stderr:?} should contain {needle:?}"
        );
    }
    stderr
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).expect("write config");
    path
}

#[test]
fn version_and_help() {
    let output = run(&["--version"]);
    assert!(output.status.success());
    assert_eq!(
        text(&output.stdout).trim(),
        format!("srbridge {}", env!("CARGO_PKG_VERSION"))
    );
    let output = run(&["--help"]);
    assert!(output.status.success());
    let help = text(&output.stdout);
    assert!(help.contains("check"), "{help}");
    assert!(help.contains("CONFIG"), "{help}");
}

#[test]
fn check_shipped_rtx_conf_masks_password_and_lists_warnings() {
    let output = run(&["check", "config/rtx.conf"]);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(stdout.contains("SRProxy rtx.conf"), "{stdout}");
    assert!(
        stdout.contains("sip_svr              = 127.0.0.1:5060"),
        "{stdout}"
    );
    assert!(
        stdout.contains("acc_rule             = 1005;10[06-19]"),
        "{stdout}"
    );
    assert!(stdout.contains("sip_pwd              = ***"), "{stdout}");
    assert!(!stdout.contains("1234"), "password shown: {stdout}");
    assert!(
        stdout.contains("[rtc]: anyRTC private-cloud settings"),
        "{stdout}"
    );
    assert!(stdout.contains("config OK"), "{stdout}");
}

#[test]
fn check_shipped_toml() {
    let output = run(&["check", "config/srbridge.toml"]);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(stdout.contains("srbridge TOML"), "{stdout}");
    assert!(stdout.contains("sip_pwd              = ***"), "{stdout}");
    assert!(!stdout.contains("1234"), "password shown: {stdout}");
    assert!(stdout.contains("warnings: none"), "{stdout}");
}

#[test]
fn check_refuses_bad_files_with_one_line_naming_file_line_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            write(d, "noport.conf", "[global]\nappid=a\nsip_svr=10.0.0.1\n"),
            "noport.conf:3: [global] sip_svr: \"10.0.0.1\" is not IP:port",
        ),
        (
            write(
                d,
                "rule.conf",
                "[global]\nappid=a\nsip_svr=127.0.0.1:5060\n[rtm2sip]\non=1\nacc_rule=1005;10[19-06]\n",
            ),
            "rule.conf:6: [rtm2sip] acc_rule: invalid token \"10[19-06]\"",
        ),
        (
            write(
                d,
                "proxy.conf",
                "[global]\nappid=a\nsip_svr=127.0.0.1:5060\n[proxy]\non=1\nsip_account=1000\n",
            ),
            "proxy.conf:5: [proxy] sip_pwd: required when [proxy] on=1",
        ),
        (
            write(d, "garbage.conf", "[global]\nappid=a\nthis line is wrong\n"),
            "garbage.conf:3: \"this line is wrong\" is not key=value",
        ),
        (
            write(
                d,
                "typo.toml",
                "[global]\nappid = \"a\"\nsip_svr = \"127.0.0.1:5060\"\n[limits]\nmax_call = 3\n",
            ),
            "typo.toml:5: [limits] max_call: unknown key",
        ),
        (
            write(
                d,
                "type.toml",
                "[global]\nappid = \"a\"\nsip_svr = \"127.0.0.1:5060\"\nsip_local_port = \"x\"\n",
            ),
            "type.toml:4: [global] sip_local_port: expected a whole number",
        ),
        (
            write(d, "syntax.toml", "[global]\nappid = \"a\nsip_svr = 1\n"),
            "syntax.toml:2: ",
        ),
    ];
    for (path, expected) in &cases {
        let path = path.to_str().expect("utf-8 path");
        let stderr = assert_refused(&run(&["check", path]), &[expected]);
        assert!(stderr.starts_with("srbridge: "), "{stderr}");
    }
}

#[test]
fn missing_file_is_one_line() {
    assert_refused(
        &run(&["check", "/nonexistent/rtx.conf"]),
        &["/nonexistent/rtx.conf: cannot read config file"],
    );
}

#[test]
fn run_refuses_bad_config_before_starting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "bad.conf",
        "[global]\nappid=a\nsip_svr=10.0.0.1\n",
    );
    let path = path.to_str().expect("utf-8");
    assert_refused(&run(&[path]), &["bad.conf:3: [global] sip_svr"]);
    assert_refused(&run(&["run", path]), &["bad.conf:3: [global] sip_svr"]);
}

/// Reads the child's stderr until the bridge says it is running; returns what it read.
fn wait_until_running(child: &mut Child) -> String {
    let stderr = child.stderr.take().expect("piped stderr");
    let mut seen = String::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("stderr line");
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("running;") {
            return seen;
        }
    }
    panic!("srbridge exited before running: {seen}");
}

/// Waits for exit; kills and fails after a generous bound so a hang cannot stall the suite.
fn wait_for_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("srbridge did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_then_sigterm(args: &[&str]) -> (String, std::process::ExitStatus) {
    let mut child = srbridge()
        .args(args)
        // The shipped configs listen on 0.0.0.0:8080; tests stay on loopback, any port.
        .env("SRBRIDGE_HTTP_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn srbridge");
    let log = wait_until_running(&mut child);
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
    // SAFETY: sends a signal to our own child process, whose pid we hold and have not reaped.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill(SIGTERM) failed");
    (log, wait_for_exit(&mut child))
}

#[test]
fn run_exits_cleanly_on_sigterm() {
    // The shipped rtx.conf logs to ./logs/srbridge.log: run a copy that logs to stderr.
    let dir = tempfile::tempdir().expect("temp dir");
    let shipped = std::fs::read_to_string("config/rtx.conf").expect("shipped rtx.conf");
    let to_stderr: String = shipped
        .lines()
        .filter(|line| !line.starts_with("file="))
        .map(|line| format!("{line}\n"))
        .collect();
    let rtx = write(dir.path(), "rtx.conf", &to_stderr);
    let (log, status) = run_then_sigterm(&[rtx.to_str().expect("utf-8 path")]);
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(
        log.contains("[rtc]: anyRTC private-cloud settings"),
        "warnings logged: {log}"
    );
    assert!(!log.contains("1234"), "password logged: {log}");

    let (_, status) = run_then_sigterm(&["run", "config/srbridge.toml"]);
    assert_eq!(status.code(), Some(0), "{status:?}");
}
