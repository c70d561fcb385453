//! The real binary's log file at level 0 SENSITIVE: rotated at `max_file_size` with a
//! bounded number of old files, and no password or token in any of them although
//! request headers and URIs (with credentials in them) are logged at that level.

mod ops_support;
mod support;

use ops_support::*;
use support::ports::free_port;

const SECRETS: &[&str] = &[
    "pw-Q7x1",   // [proxy] sip_pwd
    "adm-Z9k2",  // [http] admin_token, sent as Authorization: Bearer
    "tsec-M3v8", // [auth] token_secret
    "qtok-R5n6", // ?token= in a request URI
    "hdr-W2c4",  // X-Token request header
];

#[test]
fn level_0_log_rotates_bounded_and_never_shows_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let log = logs.join("srbridge.log");
    let port = free_port();
    let extra = "admin_token = \"adm-Z9k2\"\n\
                 [proxy]\non = true\nsip_account = \"1000\"\nsip_pwd = \"pw-Q7x1\"\nrtm_account = \"1000\"\n\
                 [auth]\ntoken_secret = \"tsec-M3v8\"\n";
    let text = config_text(port, free_port(), &log, 0, extra)
        .replace("[log]\n", "[log]\nmax_file_size = 1\nmax_files = 2\n");
    let config = dir.path().join("c.toml");
    std::fs::write(&config, text).unwrap();
    let mut bridge = Bridge::start(&config, &log, port);

    // ~8 KB per request line at trace: 600 requests ≈ 5 MB ≈ 5 rotations of 1 MB.
    let pad = "p".repeat(8000);
    for i in 0..600 {
        let path = format!("/api/status?n={i}&pad={pad}&token=qtok-R5n6");
        let response = bridge.get(
            &path,
            &[
                ("Authorization", "Bearer adm-Z9k2"),
                ("X-Token", "hdr-W2c4"),
            ],
        );
        assert_eq!(response.status, 200, "request {i}");
    }
    signal(bridge.pid(), libc::SIGTERM);
    assert_eq!(bridge.wait_exit().code(), Some(0));

    let mut names: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["srbridge.log", "srbridge.log.1", "srbridge.log.2"],
        "live file + max_files=2 old ones"
    );
    let mut all = String::new();
    for name in &names {
        let path = logs.join(name);
        let size = std::fs::metadata(&path).unwrap().len();
        // BytesSurpassed: a file ends at the first whole line past 1 MB.
        assert!(size <= 1024 * 1024 + 64 * 1024, "{name}: {size} bytes");
        all.push_str(&std::fs::read_to_string(&path).unwrap());
    }
    for secret in SECRETS {
        assert!(!all.contains(secret), "{secret} found in the logs");
    }
    // The trace lines really were written (so the check above means something).
    assert!(all.contains("http request"), "no trace request lines");
    assert!(
        all.contains("\"authorization\": \"***\""),
        "header not masked as expected"
    );
    assert!(
        all.contains("\"x-token\": \"***\""),
        "x-token not masked as expected"
    );
    assert!(
        all.contains("&token=***"),
        "URI token not masked as expected"
    );
    assert!(
        all.contains("drain complete"),
        "the end of the run is in the live file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn level_0_log_holds_no_login_token_ice_password_or_cookie_in_any_encoding() {
    const ICE_PWD: &str = "icepw-K8j3v0Lq2Xz";
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("srbridge.log");
    let port = free_port();
    let extra = "admin_token = \"adm-Z9k2\"\n\
                 [proxy]\non = true\nsip_account = \"1000\"\nsip_pwd = \"pw-Q7x1\"\nrtm_account = \"bridge\"\n\
                 [auth]\ntoken_secret = \"tsec-M3v8\"\n";
    let config = dir.path().join("c.toml");
    std::fs::write(&config, config_text(port, free_port(), &log, 0, extra)).unwrap();
    let mut bridge = Bridge::start(&config, &log, port);

    let expiry = 4_000_000_000u64.min(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600,
    );
    let url = format!("ws://127.0.0.1:{port}/ws");
    let mut tokens = Vec::new();
    for i in 0..200 {
        let uid = format!("user{i}");
        let token = srbridge::signal::mint_token("tsec-M3v8", &uid, expiry);
        let mut client = support::WsClient::connect(&url).await;
        let answer = client
            .request(serde_json::json!({
                "type": "login", "v": 1, "uid": uid, "appid": "ops-test", "token": token
            }))
            .await;
        assert_eq!(answer["type"], "ok", "login {i}: {answer}");
        let sdp = format!("v=0\r\na=ice-ufrag:u{i}\r\na=ice-pwd:{ICE_PWD}\r\n");
        client.send_raw(
            &serde_json::json!({"type": "media", "callId": format!("c{i}"), "payload": {"sdp": sdp}})
                .to_string(),
        );
        let _ = client.request(serde_json::json!({"type": "ping"})).await;
        tokens.push(token);
    }
    for _ in 0..20 {
        let response = bridge.get(
            "/api/status",
            &[
                ("Cookie", "session=adm-Z9k2; theme=dark"),
                ("Authorization", "Bearer adm-Z9k2"),
            ],
        );
        assert_eq!(response.status, 200);
    }
    signal(bridge.pid(), libc::SIGTERM);
    assert_eq!(bridge.wait_exit().code(), Some(0));

    let text = read_log(&log);
    assert!(text.contains("http request"), "level 0 lines were written");
    let everything = format!("{text}\n{}", support::log_scan::decoded_spans(&text));
    for secret in ["pw-Q7x1", "adm-Z9k2", "tsec-M3v8", ICE_PWD] {
        assert!(!everything.contains(secret), "{secret} found in the log");
    }
    for token in &tokens {
        let mac = token.split_once(':').unwrap().1;
        assert!(
            !everything.contains(mac),
            "login token {token} found in the log"
        );
    }
}
