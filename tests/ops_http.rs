//! The operator's HTTP side of the real binary: `/api/status`, `/metrics` (valid Prometheus
//! text), admin token, SIGHUP reload (good and broken config), SIGTERM drain, bind errors.

mod ops_support;
mod support;

use std::path::Path;
use std::process::Command;

use ops_support::*;
use support::ports::free_port;

fn write_config(
    dir: &Path,
    name: &str,
    http_port: u16,
    level: u8,
    extra: &str,
) -> std::path::PathBuf {
    let pbx_port = free_port(); // nothing listens there: the PBX is unreachable
    let path = dir.join(name);
    std::fs::write(
        &path,
        config_text(http_port, pbx_port, &dir.join("srbridge.log"), level, extra),
    )
    .unwrap();
    path
}

const PROXY: &str =
    "[proxy]\non = true\nsip_account = \"1000\"\nsip_pwd = \"pw-1234\"\nrtm_account = \"1000\"\n";

#[test]
fn status_json_metrics_and_health_without_token_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), "c.toml", port, 2, PROXY);
    let bridge = Bridge::start(&config, &dir.path().join("srbridge.log"), port);

    let health = bridge.get("/healthz", &[]);
    assert_eq!((health.status, health.body.trim()), (200, "ok"));

    let status = bridge.get("/api/status", &[]);
    assert_eq!(status.status, 200, "{status:?}");
    assert!(status
        .headers
        .to_ascii_lowercase()
        .contains("application/json"));
    let json: serde_json::Value = serde_json::from_str(&status.body).expect("JSON");
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    assert!(json["uptime_s"].is_u64(), "{json}");
    // An idle bridge still runs its listeners, SIP stack and timers.
    assert!(json["tasks"].as_u64().is_some_and(|n| n > 0), "{json}");
    assert_eq!(json["draining"], false);
    // Nothing answers at the PBX address: the bridge keeps trying to register.
    assert!(
        matches!(
            json["registration"]["state"].as_str(),
            Some("registering" | "failed")
        ),
        "{json}"
    );
    assert_eq!(json["registration"]["account"], "1000");
    assert!(json["registration"].get("last_error").is_some(), "{json}");
    assert!(json["pbx"]["address"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(
        matches!(json["pbx"]["reachable"].as_str(), Some("unknown" | "down")),
        "{json}"
    );
    assert!(json["pbx"].get("rtt_ms").is_some(), "{json}");
    assert_eq!(json["calls"], serde_json::json!([]));
    assert_eq!(json["users_logged_in"], 0);
    assert!(!status.body.contains("pw-1234"), "password in status");

    let call = bridge.get("/api/calls/no-such-call", &[]);
    assert_eq!(call.status, 404, "{call:?}");
    assert!(call.body.contains("no such call"), "{call:?}");

    let metrics = bridge.get("/metrics", &[]);
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.headers.contains("text/plain; version=0.0.4"),
        "{}",
        metrics.headers
    );
    let lines = metrics.body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let names: std::collections::HashSet<&str> =
        scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for name in [
        "srbridge_build_info",
        "srbridge_uptime_seconds",
        "srbridge_calls_started_total",
        "srbridge_calls_answered_total",
        "srbridge_calls_failed_total",
        "srbridge_calls_active",
        "srbridge_call_setup_seconds",
        "srbridge_rtp_packets_total",
        "srbridge_rtp_bytes_total",
        "srbridge_rtp_lost_total",
        "srbridge_rtp_jitter_seconds",
        "srbridge_transcode_seconds",
        "srbridge_registration_state",
        "srbridge_registration_attempts_total",
        "srbridge_registration_failures_total",
        "srbridge_pbx_up",
        "srbridge_ws_sessions",
        "srbridge_users_logged_in",
        "srbridge_errors_total",
        "srbridge_limits_hit_total",
    ] {
        assert!(
            names.contains(name),
            "{name} missing from\n{}",
            metrics.body
        );
    }
    let active = scrape
        .samples
        .iter()
        .find(|s| s.metric == "srbridge_calls_active")
        .unwrap();
    assert!(matches!(active.value, prometheus_parse::Value::Gauge(v) if v == 0.0));
    let build = scrape
        .samples
        .iter()
        .find(|s| s.metric == "srbridge_build_info")
        .unwrap();
    assert_eq!(build.labels.get("version"), Some(env!("CARGO_PKG_VERSION")));
}

#[test]
fn admin_token_guards_status_and_metrics_but_not_health() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(
        dir.path(),
        "c.toml",
        port,
        2,
        "admin_token = \"adm-7f3k\"\n",
    );
    let bridge = Bridge::start(&config, &dir.path().join("srbridge.log"), port);
    for path in ["/api/status", "/metrics", "/api/calls/x"] {
        let none = bridge.get(path, &[]);
        assert_eq!(none.status, 401, "{path} without token: {none:?}");
        assert!(
            none.headers.contains("www-authenticate: Bearer"),
            "{none:?}"
        );
        let wrong = bridge.get(path, &[("Authorization", "Bearer adm-7f3j")]);
        assert_eq!(wrong.status, 401, "{path} wrong token");
        let basic = bridge.get(path, &[("Authorization", "Basic adm-7f3k")]);
        assert_eq!(basic.status, 401, "{path} wrong scheme");
    }
    let ok = bridge.get("/api/status", &[("Authorization", "Bearer adm-7f3k")]);
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(ok.body.contains("\"version\""));
    let ok = bridge.get("/metrics", &[("authorization", "bearer adm-7f3k")]);
    assert_eq!(ok.status, 200);
    assert_eq!(bridge.get("/healthz", &[]).status, 200);
}

#[test]
fn sighup_applies_a_good_config_keeps_the_old_on_a_bad_one_and_sigterm_drains() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join("srbridge.log");
    let rule = "[rtm2sip]\non = true\nacc_rule = \"1005\"\n";
    let config = write_config(dir.path(), "c.toml", port, 2, rule);
    let text = std::fs::read_to_string(&config).unwrap();
    let mut bridge = Bridge::start(&config, &log, port);

    // At INFO, requests are not logged.
    assert_eq!(bridge.get("/healthz?before", &[]).status, 200);

    // Good change: level 2 -> 1 (DEBUG) and a new acc_rule.
    let good = text
        .replace("level = 2", "level = 1")
        .replace("acc_rule = \"1005\"", "acc_rule = \"1005;10[06-19]\"");
    std::fs::write(&config, good).unwrap();
    signal(bridge.pid(), libc::SIGHUP);
    wait_until("reload logged", || {
        read_log(&log).contains("config reloaded")
    });
    assert_eq!(bridge.get("/healthz?after", &[]).status, 200);
    wait_until("debug request line", || {
        read_log(&log).contains("path=/healthz")
    });
    let so_far = read_log(&log);
    assert!(so_far.contains("level_applied=true"), "{so_far}");
    assert_eq!(
        so_far.matches("path=/healthz").count(),
        1,
        "only after reload: {so_far}"
    );

    // A change that needs a restart is reported, not applied.
    let moved = std::fs::read_to_string(&config).unwrap().replace(
        &format!("127.0.0.1:{port}"),
        &format!("127.0.0.1:{}", free_port()),
    );
    std::fs::write(&config, moved).unwrap();
    signal(bridge.pid(), libc::SIGHUP);
    wait_until("restart warning", || {
        read_log(&log).contains("[http] listen changed; restart to apply it")
    });
    assert_eq!(
        bridge.get("/healthz", &[]).status,
        200,
        "still on the old port"
    );

    // Broken config: error logged, old config kept, bridge keeps serving.
    std::fs::write(
        &config,
        text.replace("acc_rule = \"1005\"", "acc_rule = \"10[9-1]\""),
    )
    .unwrap();
    signal(bridge.pid(), libc::SIGHUP);
    wait_until("reload failure logged", || {
        read_log(&log).contains("config reload failed, keeping the running config")
    });
    let after = read_log(&log);
    let failure = after
        .lines()
        .find(|l| l.contains("config reload failed"))
        .unwrap();
    assert!(
        failure.contains("ERROR") && failure.contains("acc_rule"),
        "{failure}"
    );
    assert!(
        bridge.child.try_wait().unwrap().is_none(),
        "bridge exited on a bad reload"
    );
    assert_eq!(bridge.get("/api/status", &[]).status, 200);

    signal(bridge.pid(), libc::SIGTERM);
    let status = bridge.wait_exit();
    assert_eq!(status.code(), Some(0), "{status:?}");
    let end = read_log(&log);
    assert!(
        end.contains("SIGTERM: draining, new calls refused"),
        "{end}"
    );
    assert!(end.contains("drain complete"), "{end}");
}

#[test]
fn taken_port_is_a_clear_error_and_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _taken = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let config = write_config(dir.path(), "c.toml", port, 2, "");
    let output = Command::new(env!("CARGO_BIN_EXE_srbridge"))
        .arg(&config)
        .env_remove("SRBRIDGE_HTTP_LISTEN")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on [http] listen 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(stderr.contains("in use"), "{stderr}");
}

#[test]
fn bad_http_listen_env_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "c.toml", free_port(), 2, "");
    let output = Command::new(env!("CARGO_BIN_EXE_srbridge"))
        .arg(&config)
        .env("SRBRIDGE_HTTP_LISTEN", "localhost:80")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("SRBRIDGE_HTTP_LISTEN"), "{stderr}");
}

fn openssl_cert(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs (scripts/deps.sh installs it)");
    assert!(status.status.success(), "{status:?}");
    (cert, key)
}

#[test]
fn https_when_tls_cert_and_key_are_set() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = openssl_cert(dir.path());
    let port = free_port();
    let tls = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let config = write_config(dir.path(), "c.toml", port, 2, &tls);
    let log = dir.path().join("srbridge.log");
    let _bridge = Bridge::start(&config, &log, port);
    assert!(read_log(&log).contains(&format!("https: [http] listen on 127.0.0.1:{port}")));
    let curl = |path: &str| {
        let o = Command::new("curl")
            .args(["-sS", "-m", "10", "--cacert"])
            .arg(&cert)
            .arg(format!("https://127.0.0.1:{port}{path}"))
            .output()
            .expect("curl runs");
        assert!(o.status.success(), "{o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(curl("/healthz").trim(), "ok");
    let status: serde_json::Value = serde_json::from_str(&curl("/api/status")).unwrap();
    assert_eq!(
        status["version"],
        env!("CARGO_PKG_VERSION"),
        "loopback peer seen over TLS"
    );
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = Command::new("curl")
        .args(["-sS", "-m", "5"])
        .arg(format!("http://127.0.0.1:{port}/healthz"))
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&plain.stdout).contains("ok"),
        "{plain:?}"
    );
}

#[test]
fn unusable_tls_key_stops_start_up_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = openssl_cert(dir.path());
    let bad_key = dir.path().join("bad-key.pem");
    std::fs::write(&bad_key, "not a key\n").unwrap();
    let tls = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        bad_key.display()
    );
    let config = write_config(dir.path(), "c.toml", free_port(), 2, &tls);
    let output = Command::new(env!("CARGO_BIN_EXE_srbridge"))
        .arg(&config)
        .env_remove("SRBRIDGE_HTTP_LISTEN")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("tls_key") && stderr.contains("bad-key.pem"),
        "{stderr}"
    );
}
