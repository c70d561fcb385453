//! The real binary under connection abuse on its HTTP/WebSocket port: silent, slowloris and
//! never-logged-in WebSocket connections are closed within `[http] header_timeout` /
//! `login_timeout`, one address cannot hold more than `[limits] max_conns_per_ip`, `/healthz`
//! answers throughout, nothing stays ESTABLISHED afterwards, and with a low descriptor limit a
//! flood of connects leaves room for a call. Also the Origin check and reserved uids through
//! the real WebSocket.

mod ops_support;
mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ops_support::{config_text, http_get, read_log, Bridge};
use serde_json::json;
use support::{ports, Baresip, Pbx, WsClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const APPID: &str = "ops-test";

/// A TCP connection to the bridge from source address `127.0.0.<last>`.
async fn connect_from(last: u8, port: u16) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)),
            0,
        ))
        .unwrap();
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap()
}

/// Reads until the bridge closes the connection (EOF or reset); how long that took.
async fn closed_within(stream: &mut TcpStream, bound: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((start + bound).into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

/// Whether the bridge has not closed `stream` (nothing to read and no EOF right now).
async fn still_open(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    tokio::time::timeout(Duration::from_millis(50), stream.peek(&mut buf))
        .await
        .is_err()
}

/// ESTABLISHED TCP sockets whose local port is `port` (the bridge's side of its connections).
fn established_on(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            cols.len() > 3
                && cols[3] == "01"
                && cols[1]
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                    == Some(port)
        })
        .count()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn healthz(port: u16) -> u16 {
    http_get(port, "/healthz", &[]).status
}

fn write_config(dir: &Path, port: u16, extra: &str) -> (PathBuf, PathBuf) {
    let log = dir.join("srbridge.log");
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        config_text(port, ports::free_port(), &log, 2, extra),
    )
    .unwrap();
    (config, log)
}

async fn start(config: &Path, log: &Path, port: u16, nofile: Option<u64>) -> Bridge {
    let (config, log) = (config.to_path_buf(), log.to_path_buf());
    tokio::task::spawn_blocking(move || Bridge::start_limited(&config, &log, port, nofile))
        .await
        .unwrap()
}

const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
                       Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                       Sec-WebSocket-Version: 13\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_partial_and_unlogged_connections_are_closed_and_healthz_answers() {
    let dir = tempfile::tempdir().unwrap();
    let port = ports::free_port();
    let extra = "header_timeout = 6\nlogin_timeout = 6\n[limits]\nmax_conns_per_ip = 100\n";
    let (config, log) = write_config(dir.path(), port, extra);
    let bridge = start(&config, &log, port, None).await;
    let baseline_fds = open_fds(bridge.pid());

    // 100 silent (127.0.0.2), 100 slowloris (127.0.0.3), 100 upgraded WebSockets that never
    // log in (127.0.0.4).
    let mut silent = Vec::new();
    let mut partial = Vec::new();
    let mut upgraded = Vec::new();
    let opened = Instant::now();
    for _ in 0..100 {
        silent.push(connect_from(2, port).await);
        let mut p = connect_from(3, port).await;
        p.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a")
            .await
            .unwrap();
        partial.push(p);
        let mut u = connect_from(4, port).await;
        u.write_all(UPGRADE.as_bytes()).await.unwrap();
        upgraded.push(u);
    }
    for u in &mut upgraded {
        let mut head = [0u8; 12];
        u.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 101", "upgrade answered");
    }
    let started = Instant::now();

    // The 101st connection from one address is closed at once, while the 100 stay.
    let mut extra = connect_from(2, port).await;
    let took = closed_within(&mut extra, Duration::from_secs(5)).await;
    assert!(
        took.is_some(),
        "the connection over max_conns_per_ip was not closed"
    );
    assert!(
        still_open(&mut silent[0]).await,
        "the admitted ones are still open"
    );

    // /healthz answers from another address meanwhile, and keeps answering while the
    // slowloris connections dribble.
    assert_eq!(
        tokio::task::spawn_blocking(move || healthz(port))
            .await
            .unwrap(),
        200
    );
    for p in partial.iter_mut().take(20) {
        let _ = p.write_all(b"b").await;
    }
    assert_eq!(
        tokio::task::spawn_blocking(move || healthz(port))
            .await
            .unwrap(),
        200
    );

    // Every attacker connection is closed by the bridge within the timeout (+ a margin for
    // a loaded machine).
    let bound = Duration::from_secs(6 + 20);
    assert!(closed_within(&mut silent[0], bound).await.is_some());
    assert!(
        opened.elapsed() >= Duration::from_secs(5),
        "closed by the timeout, not at once ({:?})",
        opened.elapsed()
    );
    for (kind, streams) in [
        ("silent", &mut silent),
        ("partial headers", &mut partial),
        ("never logged in", &mut upgraded),
    ] {
        for (i, s) in streams.iter_mut().enumerate() {
            let left = bound.saturating_sub(started.elapsed());
            assert!(
                closed_within(s, left).await.is_some(),
                "{kind} connection {i} still open after {:?}",
                started.elapsed()
            );
        }
    }
    drop((silent, partial, upgraded, extra));

    // Nothing stays ESTABLISHED, the descriptors come back.
    let deadline = Instant::now() + Duration::from_secs(30);
    while established_on(port) > 0 || open_fds(bridge.pid()) > baseline_fds + 5 {
        assert!(
            Instant::now() < deadline,
            "{} ESTABLISHED, {} fds (baseline {baseline_fds})",
            established_on(port),
            open_fds(bridge.pid())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        tokio::task::spawn_blocking(move || healthz(port))
            .await
            .unwrap(),
        200
    );
    assert!(
        read_log(&log).contains("http connection refused"),
        "refusal logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_few_descriptors_a_connect_flood_leaves_room_for_a_call() {
    let pbx = Pbx::start().await;
    let callee: Baresip = support::baresip::silent_phone(&pbx, "1001", true).await;
    let dir = tempfile::tempdir().unwrap();
    let port = ports::free_port();
    let rtp = ports::free_port_range(40);
    let log = dir.path().join("srbridge.log");
    let text = format!(
        "[global]\nappid = \"{APPID}\"\nsip_svr = \"{pbx}\"\nsip_local_port = 0\n\
         [rtm2sip]\non = true\nacc_rule = \"10[01-19]\"\n\
         [proxy]\non = true\nsip_account = \"1000\"\nsip_pwd = \"1234\"\nrtm_account = \"bridge\"\n\
         [sip]\nlisten_ip = \"127.0.0.1\"\n\
         [media]\nrtp_port_min = {rtp}\nrtp_port_max = {}\n\
         [log]\nlevel = 2\nfile = \"{}\"\n\
         [http]\nlisten = \"127.0.0.1:{port}\"\nheader_timeout = 120\n\
         [limits]\nmax_conns_per_ip = 1000\n",
        rtp + 39,
        log.display(),
        pbx = pbx.addr(),
    );
    let config = dir.path().join("c.toml");
    std::fs::write(&config, text).unwrap();
    // A shell's limit, cut further: 256 descriptors, 64 of them kept for media by default.
    let bridge = start(&config, &log, port, Some(256)).await;
    let url = format!("ws://127.0.0.1:{port}/ws");
    let mut alice = WsClient::login(&url, APPID, "alice").await;

    // 400 silent connects: more than the descriptors the bridge has.
    let mut flood = Vec::new();
    for _ in 0..400 {
        flood.push(connect_from(5, port).await);
    }
    // Wait until the bridge has taken them all in (admitted or closed at once).
    let mut refused = 0;
    for s in &mut flood {
        if !still_open(s).await {
            refused += 1;
        }
    }
    assert!(
        refused > 0,
        "some connections were refused by the fd budget"
    );
    assert!(
        read_log(&log).contains("file descriptors open"),
        "the fd budget refusal is logged"
    );

    // A call still sets up: its RTP socket gets a descriptor from the reserve.
    let ok = alice.invite("fd1", "1001", "").await;
    assert_eq!(ok["type"], "ok", "{ok}");
    alice
        .wait_local_state("fd1", "ACCEPTED_BY_REMOTE", Duration::from_secs(20))
        .await;
    callee
        .wait_for("CALL_ESTABLISHED", Duration::from_secs(20))
        .await;
    let text = read_log(&log);
    assert!(!text.contains("Too many open files"), "{text}");
    drop(flood);
    let deadline = Instant::now() + Duration::from_secs(30);
    while established_on(port) > 1 {
        assert!(
            Instant::now() < deadline,
            "{} ESTABLISHED",
            established_on(port)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(bridge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_origins_and_sip_ids_are_refused_on_the_real_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let port = ports::free_port();
    let extra = "allowed_origins = [\"https://app.example.com\"]\n\
                 [rtm2sip]\non = true\nacc_rule = \"10[01-19]\"\n\
                 [proxy]\non = true\nsip_account = \"1000\"\nsip_pwd = \"pw\"\nrtm_account = \"bridge\"\n";
    let (config, log) = write_config(dir.path(), port, extra);
    let _bridge = start(&config, &log, port, None).await;
    let url = format!("ws://127.0.0.1:{port}/ws");

    let with_origin = |origin: &str| {
        let mut request = url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
        request
    };
    // A page from another site: 403 before any WebSocket exists.
    match tokio_tungstenite::connect_async(with_origin("http://evil.example")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("evil.example was not refused: {:?}", other.map(|_| ())),
    }
    // The bridge's own page, a configured origin, and a non-browser client (no Origin).
    for origin in [
        format!("http://127.0.0.1:{port}"),
        "https://app.example.com".into(),
    ] {
        let (mut ws, response) = tokio_tungstenite::connect_async(with_origin(&origin))
            .await
            .unwrap_or_else(|e| panic!("{origin}: {e}"));
        assert_eq!(response.status(), 101, "{origin}");
        let _ = ws.close(None).await;
        while ws.next().await.is_some() {}
    }

    // Ids the bridge routes to SIP cannot log in; look-alikes are refused with INVALID_UID.
    let mut c = WsClient::connect(&url).await;
    for (uid, code) in [
        ("1005", "RESERVED_UID"),
        ("1000", "RESERVED_UID"),
        ("bridge", "RESERVED_UID"),
        ("１００５", "INVALID_UID"),
        ("1005 ", "INVALID_UID"),
        ("alice\u{202E}", "INVALID_UID"),
    ] {
        let answer = c
            .request(json!({"type": "login", "v": 1, "uid": uid, "appid": APPID}))
            .await;
        assert_eq!(answer["code"], code, "{uid:?}: {answer}");
    }
    let ok = c
        .request(json!({"type": "login", "v": 1, "uid": "1020", "appid": APPID}))
        .await;
    assert_eq!(
        ok["type"], "ok",
        "a number outside acc_rule is a web id: {ok}"
    );
    // Without tokens, nobody else may log in as 1020 now.
    let mut other = WsClient::connect(&url).await;
    let taken = other
        .request(json!({"type": "login", "v": 1, "uid": "1020", "appid": APPID}))
        .await;
    assert_eq!(taken["code"], "UID_IN_USE", "{taken}");
    assert!(
        read_log(&log).contains("token_secret is not set"),
        "the start-up warning that anyone can be anyone"
    );
}
