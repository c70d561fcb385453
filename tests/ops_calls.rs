//! The daemon (the real `srbridge` binary) with calls in progress: SIGTERM drains (new calls
//! refused, the open call goes on and ends normally, then exit 0), SIGHUP changes `acc_rule`
//! without dropping a call, and `/api/status` shows the registration and the call.

mod ops_support;
mod support;

use std::path::Path;
use std::time::Duration;

use ops_support::{http_get, read_log, signal, Bridge};
use serde_json::{json, Value};
use support::{ports, Baresip, Pbx, WsClient};

const APPID: &str = "ops-calls";
const T: Duration = Duration::from_secs(15);

fn write_config(dir: &Path, pbx: &Pbx, http_port: u16, acc_rule: &str) -> std::path::PathBuf {
    let rtp = ports::free_port_range(40);
    let text = format!(
        "[global]\nappid = \"{APPID}\"\nsip_svr = \"{pbx}\"\nsip_local_port = 0\n\
         [rtm2sip]\non = true\nacc_rule = \"{acc_rule}\"\n\
         [proxy]\non = true\nsip_account = \"1000\"\nsip_pwd = \"1234\"\nrtm_account = \"bridge\"\n\
         [sip]\nlisten_ip = \"127.0.0.1\"\n\
         [media]\nrtp_port_min = {rtp}\nrtp_port_max = {}\n\
         [log]\nlevel = 2\nfile = \"{}\"\n\
         [http]\nlisten = \"127.0.0.1:{http_port}\"\n\
         [shutdown]\ndrain_timeout = 30\n",
        rtp + 39,
        dir.join("srbridge.log").display(),
        pbx = pbx.addr(),
    );
    let path = dir.join("srbridge.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

async fn phone(pbx: &Pbx, account: &str, auto_answer: bool) -> Baresip {
    support::baresip::silent_phone(pbx, account, auto_answer).await
}

async fn status(port: u16) -> Value {
    let response = tokio::task::spawn_blocking(move || http_get(port, "/api/status", &[]))
        .await
        .expect("status request");
    assert_eq!(response.status, 200, "{response:?}");
    serde_json::from_str(&response.body).expect("status JSON")
}

async fn wait_status(port: u16, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..150 {
        let s = status(port).await;
        if pred(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("status never showed {what}: {}", status(port).await);
}

async fn start_bridge(config: &Path, dir: &Path, port: u16) -> Bridge {
    let (config, log) = (config.to_path_buf(), dir.join("srbridge.log"));
    let bridge = tokio::task::spawn_blocking(move || Bridge::start(&config, &log, port))
        .await
        .expect("bridge start");
    wait_status(port, "registered", |s| {
        s["registration"]["state"] == "registered"
    })
    .await;
    bridge
}

async fn call(url: &str, uid: &str, call_id: &str, number: &str) -> WsClient {
    let mut browser = WsClient::login(url, APPID, uid).await;
    let ok = browser.invite(call_id, number, "").await;
    assert_eq!(ok["type"], "ok", "{ok}");
    browser
        .wait_local_state(call_id, "ACCEPTED_BY_REMOTE", T)
        .await;
    browser
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_refuses_new_calls_while_the_open_call_goes_on_and_ends_normally() {
    let pbx = Pbx::start().await;
    let callee = phone(&pbx, "1001", true).await;
    let dialler = phone(&pbx, "1002", false).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = ports::free_port();
    let config = write_config(dir.path(), &pbx, port, "10[01-19]");
    let mut bridge = start_bridge(&config, dir.path(), port).await;
    let url = format!("ws://127.0.0.1:{port}/ws");

    let mut alice = call(&url, "alice", "d1", "1001").await;
    callee.wait_for("CALL_ESTABLISHED", T).await;
    let s = wait_status(port, "the call established", |s| {
        s["calls"][0]["state"] == "established"
    })
    .await;
    assert_eq!(s["calls"][0]["web_user"], "alice", "{s}");
    assert_eq!(s["calls"][0]["sip_number"], "1001", "{s}");
    assert_eq!(s["calls"][0]["direction"], "web_to_sip", "{s}");
    assert_eq!(s["users_logged_in"], 1, "{s}");
    assert_eq!(s["pbx"]["reachable"], "up", "{s}");

    signal(bridge.pid(), libc::SIGTERM);
    wait_status(port, "draining", |s| s["draining"] == true).await;
    // a new invitation from a browser is refused with a clear reason
    let mut bob = WsClient::login(&url, APPID, "bob").await;
    let refused = bob.invite("d2", "1001", "").await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "DRAINING", "{refused}");
    // a new INVITE from a phone gets 503 + Retry-After from the bridge (a proxy such as Kamailio
    // passes it on as 500, RFC 3261 §16.7, keeping the reason phrase)
    dialler.dial("0alice").await;
    let closed = dialler.wait_for("CALL_CLOSED", T).await;
    assert!(closed.param.contains("Service Unavailable"), "{closed:?}");
    assert!(
        read_log(&dir.path().join("srbridge.log")).contains("refused while draining: 503"),
        "the bridge refused the INVITE itself"
    );

    // the open call goes on
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !callee.events().iter().any(|e| e.kind == "CALL_CLOSED"),
        "the call in progress was dropped"
    );
    assert!(bridge.child.try_wait().expect("try_wait").is_none());
    // ... and ends normally; then the bridge exits 0
    alice
        .request(json!({"type": "peer_message", "to": "1001", "text": "{\"Cmd\":\"EndCall\"}"}))
        .await;
    callee.wait_for("CALL_CLOSED", T).await;
    let exit = tokio::task::spawn_blocking(move || bridge.wait_exit())
        .await
        .expect("wait");
    assert!(exit.success(), "exit status {exit}");
    let log = read_log(&dir.path().join("srbridge.log"));
    assert!(log.contains("drain complete"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_makes_a_new_number_callable_without_dropping_the_call() {
    let pbx = Pbx::start().await;
    let first = phone(&pbx, "1001", true).await;
    let second = phone(&pbx, "1002", true).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = ports::free_port();
    let config = write_config(dir.path(), &pbx, port, "1001");
    let bridge = start_bridge(&config, dir.path(), port).await;
    let url = format!("ws://127.0.0.1:{port}/ws");

    let _alice = call(&url, "alice", "h1", "1001").await;
    first.wait_for("CALL_ESTABLISHED", T).await;

    let mut bob = WsClient::login(&url, APPID, "bob").await;
    bob.invite("h2", "1002", "").await;
    let failed = bob.wait_local_state("h2", "FAILURE", T).await;
    assert_eq!(failed["reason"], "INVALID_ARGUMENT", "{failed}");

    write_config(dir.path(), &pbx, port, "1001;1002");
    signal(bridge.pid(), libc::SIGHUP);
    let log_path = dir.path().join("srbridge.log");
    for _ in 0..100 {
        if read_log(&log_path).contains("config reloaded") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(read_log(&log_path).contains("config reloaded"));

    bob.invite("h3", "1002", "").await;
    bob.wait_local_state("h3", "ACCEPTED_BY_REMOTE", T).await;
    second.wait_for("CALL_ESTABLISHED", T).await;
    let s = wait_status(port, "two calls", |s| {
        s["calls"].as_array().is_some_and(|c| c.len() == 2)
    })
    .await;
    assert!(
        s["calls"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] == "established"),
        "{s}"
    );
    assert!(
        !first.events().iter().any(|e| e.kind == "CALL_CLOSED"),
        "the first call was dropped by the reload"
    );
}
