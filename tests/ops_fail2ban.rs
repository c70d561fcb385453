//! The auth-failure line (issue 10 item 8): the real binary, at the default log level, refuses a
//! SIP stranger, a hub login with a wrong appid, one with a bad token and an admin request with a
//! wrong token, each from its own 127.0.0.x address; `fail2ban-regex` with the shipped filter
//! (`config/fail2ban/filter.d/srbridge.conf`) must find each address in the bridge's log file.

mod ops_support;
mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use ops_support::*;
use support::ports::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// A TCP connection to `to` from `ip` (any port).
async fn connect_from(ip: [u8; 4], to: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from((ip, 0))).expect("bind");
    socket.connect(to).await.expect("connect")
}

/// Logs in on the hub from `ip` and returns the answer's error code.
async fn hub_login_from(ip: [u8; 4], http: SocketAddr, login: serde_json::Value) -> String {
    let stream = connect_from(ip, http).await;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{http}/ws"), stream)
        .await
        .expect("websocket");
    ws.send(Message::Text(login.to_string().into()))
        .await
        .expect("send login");
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer")
            .expect("open")
            .expect("frame");
        if let Message::Text(text) = frame {
            let v: serde_json::Value = serde_json::from_str(text.as_str()).expect("JSON");
            if v["type"] == "error" {
                return v["code"].as_str().unwrap_or_default().to_string();
            }
        }
    }
}

#[tokio::test]
async fn fail2ban_filter_finds_every_kind_of_refusal_with_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("srbridge.log");
    let http_port = free_port();
    let sip_port = free_port();
    let config = dir.path().join("c.toml");
    let text = config_text(http_port, free_port(), &log, 2, "").replace(
        "sip_local_port = 0",
        &format!("sip_local_port = {sip_port}"),
    ) + "admin_token = \"adm-f2b-secret\"\n\
           [sip]\nlisten_ip = \"127.0.0.1\"\noptions_interval = 0\n\
           [auth]\ntoken_secret = \"tok-f2b-secret\"\n";
    std::fs::write(&config, text).unwrap();
    let bridge = Bridge::start(&config, &log, http_port);
    let http = SocketAddr::from(([127, 0, 0, 1], http_port));
    let sip = SocketAddr::from(([127, 0, 0, 1], sip_port));

    // sip_peer: OPTIONS from a stranger
    let stranger = tokio::net::UdpSocket::bind("127.0.0.2:0")
        .await
        .expect("bind");
    let local = stranger.local_addr().unwrap();
    let options = format!(
        "OPTIONS sip:{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bKf2b\r\n\
         Max-Forwards: 70\r\nFrom: <sip:scan@{local}>;tag=f1\r\nTo: <sip:{sip}>\r\n\
         Call-ID: f2b@scan\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    stranger
        .send_to(options.as_bytes(), sip)
        .await
        .expect("send");
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), stranger.recv_from(&mut buf))
        .await
        .expect("answer")
        .expect("recv");
    assert!(
        buf[..n].starts_with(b"SIP/2.0 403"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    // login: wrong appid; token: a forged one (valid form, expiry in ten minutes, wrong MAC)
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let code = hub_login_from(
        [127, 0, 0, 4],
        http,
        serde_json::json!({"type": "login", "id": 1, "v": 1, "uid": "alice", "appid": "wrong"}),
    )
    .await;
    assert_eq!(code, "WRONG_APPID");
    let code = hub_login_from(
        [127, 0, 0, 5],
        http,
        serde_json::json!({"type": "login", "id": 1, "v": 1, "uid": "alice", "appid": "ops-test",
                           "token": format!("{expiry}:{}", "00".repeat(32))}),
    )
    .await;
    assert_eq!(code, "TOKEN_INVALID");

    // admin: a wrong bearer token
    let mut admin = connect_from([127, 0, 0, 6], http).await;
    admin
        .write_all(
            format!(
                "GET /api/status HTTP/1.1\r\nHost: {http}\r\nAuthorization: Bearer guess\r\n\
                 Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("send");
    let mut response = String::new();
    admin.read_to_string(&mut response).await.expect("read");
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");

    let expected = [
        ("sip_peer", "127.0.0.2"),
        ("login", "127.0.0.4"),
        ("token", "127.0.0.5"),
        ("admin", "127.0.0.6"),
    ];
    wait_until("four AUTH_FAILURE lines", || {
        read_log(&log).matches("AUTH_FAILURE").count() >= expected.len()
    });
    let text = read_log(&log);
    for (kind, ip) in expected {
        assert!(
            text.lines().any(
                |l| l.contains(&format!("AUTH_FAILURE kind={kind} src={ip} "))
                    && l.contains(" WARN ")
            ),
            "no {kind} line for {ip}:\n{text}"
        );
    }
    for secret in ["adm-f2b-secret", "tok-f2b-secret", "guess"] {
        assert!(!text.contains(secret), "{secret} in the log");
    }

    let filter = support::project_root().join("config/fail2ban/filter.d/srbridge.conf");
    let out = Command::new("fail2ban-regex")
        .arg("-v")
        .arg(&log)
        .arg(&filter)
        .output()
        .expect("run fail2ban-regex (Debian package fail2ban: scripts/deps.sh)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // -v lists each hit as "|      <ip>  <date>" under the failregex
    let hits: Vec<&str> = report
        .lines()
        .filter_map(|l| l.strip_prefix('|')?.split_whitespace().next())
        .filter(|w| w.starts_with("127."))
        .collect();
    let mut sorted = hits.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec!["127.0.0.2", "127.0.0.4", "127.0.0.5", "127.0.0.6"],
        "one hit per refusal, each with its source:\n{report}"
    );
    assert!(
        report.contains(&format!("{} matched", expected.len())),
        "{report}"
    );
    drop(bridge);
}
