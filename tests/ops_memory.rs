//! Memory of the real binary after floods: a 5000-INVITE flood through the PBX (SIPp, each
//! INVITE answered 480 by the bridge: nobody is logged in) and 2000 idle unauthenticated
//! WebSockets. RSS must come back near where it was, and an idle WebSocket must stay cheap.
//! Measured (debug build, loaded 2-core box): an idle unauthenticated WebSocket ~8.6 KB (was
//! ~137 KB with tungstenite's 128 KiB read buffer); RSS back to +2 MB after 2000 of them closed
//! (was +150 MB, kept by glibc without `malloc_trim`); +6 MB 45 s after the INVITE flood.
//! Bounds are wide (a debug build on a loaded machine); the measured figures are printed.

mod ops_support;
mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ops_support::{http_get, Bridge};
use support::{ports, Pbx, Sipp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const APPID: &str = "ops-memory";

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// RSS after the bridge's memory trim (every 10 s) has had a chance to run.
async fn settled_rss_kb(pid: u32) -> u64 {
    tokio::time::sleep(Duration::from_secs(12)).await;
    rss_kb(pid)
}

async fn upgraded_from(last: u8, port: u16) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)),
            0,
        ))
        .unwrap();
    let mut s = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_returns_after_an_invite_flood_and_idle_websockets_stay_cheap() {
    let pbx = Pbx::start().await;
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
         [http]\nlisten = \"127.0.0.1:{port}\"\nlogin_timeout = 600\n\
         [limits]\nmax_setups_per_sec = 100000\n",
        rtp + 39,
        log.display(),
        pbx = pbx.addr(),
    );
    let config = dir.path().join("c.toml");
    std::fs::write(&config, text).unwrap();
    let bridge = {
        let (config, log) = (config.clone(), log.clone());
        tokio::task::spawn_blocking(move || Bridge::start(&config, &log, port))
            .await
            .unwrap()
    };
    let pid = bridge.pid();
    pbx.wait_registered("1000", Duration::from_secs(20)).await;
    let start = settled_rss_kb(pid).await;

    // 2000 upgraded WebSockets that never log in, 100 per source address.
    let mut sockets = Vec::new();
    for i in 0..2000u32 {
        sockets.push(upgraded_from(10 + (i / 100) as u8, port).await);
    }
    let with_ws = settled_rss_kb(pid).await;
    let per_ws = (with_ws.saturating_sub(start)) * 1024 / 2000;
    println!("2000 idle WebSockets: RSS {start} kB -> {with_ws} kB, {per_ws} B each");
    assert_eq!(http_get(port, "/healthz", &[]).status, 200);
    drop(sockets);
    let deadline = Instant::now() + Duration::from_secs(30);
    // This bridge's own gauge: the sessions are gone.
    let ws_sessions = || {
        let body = http_get(port, "/metrics", &[]).body;
        body.lines()
            .find_map(|l| l.strip_prefix("srbridge_ws_sessions "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    while ws_sessions() != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "sessions left: {:?}",
            ws_sessions()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after_ws = settled_rss_kb(pid).await;
    println!("after closing them: RSS {after_ws} kB");

    // 5000 INVITEs to an offline web user through the PBX, 250 per second.
    let t0 = Instant::now();
    let result = Sipp::new("uac_invite_rejected.xml")
        .service("0nobody")
        .key("caller", "1002")
        .auth("1002", "1234")
        .calls(5000)
        .arg("-r")
        .arg("250")
        .arg("-l")
        .arg("1000")
        .timeout(Duration::from_secs(240))
        .run(Some(pbx.addr()))
        .await;
    let peak_flood = rss_kb(pid);
    let after_flood = settled_rss_kb(pid).await;
    println!(
        "INVITE flood: {} s, SIPp exit {}, RSS {after_ws} kB -> peak {peak_flood} kB -> {after_flood} kB",
        t0.elapsed().as_secs(),
        result.exit_code
    );
    // Through Kamailio a 180 sometimes overtakes the 100 and SIPp counts that call as failed,
    // and a loaded machine makes it time out some: what matters is that the flood reached the
    // bridge (this bridge's own counter).
    let metrics = http_get(port, "/metrics", &[]).body;
    let started: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("srbridge_calls_started_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    println!("calls the bridge saw: {started}");
    assert!(
        started >= 1000.0,
        "the flood reached the bridge: {started} INVITEs"
    );
    // SIP transactions of the flood live on for their timers (32 s, RFC 3261 Timer H/J/K).
    tokio::time::sleep(Duration::from_secs(35)).await;
    let after_timers = settled_rss_kb(pid).await;
    println!("after the SIP transaction timers: RSS {after_timers} kB");

    // Wide bounds: the unfixed bridge grew by ~144 MB (release) for the flood and kept it,
    // and paid ~115 KB per idle WebSocket.
    assert!(per_ws < 48 * 1024, "{per_ws} B per idle WebSocket");
    assert!(
        after_ws < start + 32 * 1024,
        "RSS after the WebSockets closed {after_ws} kB vs {start} kB at start"
    );
    assert!(
        after_timers < start + 24 * 1024,
        "RSS after the flood {after_timers} kB vs {start} kB at start (peak {peak_flood} kB)"
    );
}
