//! The JS client (`/sdk/rtm-client.js`) in headless Chromium against the hub served in-process:
//! two users in two pages ring each other, accept, exchange media and a peer message.
//! Needs node, `node_modules/playwright-core` (scripts/deps.sh runs `npm ci`) and /usr/bin/chromium;
//! when one is missing the test fails and says which.

#[allow(dead_code)]
#[path = "support/ports.rs"]
mod ports;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use axum::response::Html;
use axum::routing::get;
use serde_json::{json, Value};
use srbridge::config::Secret;
use srbridge::signal::{mint_token, Hub, HubSettings};
use tokio::process::Command;
use tokio::sync::mpsc;

const SECRET: &str = "browser-test-secret";
const PAGE: &str = include_str!("browser/hub_page.html");
const CHROMIUM: &str = "/usr/bin/chromium";

fn check_prerequisites(root: &Path) {
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is not installed: run scripts/deps.sh (Debian package nodejs)"
    );
    assert!(
        root.join("node_modules/playwright-core/package.json")
            .exists(),
        "node_modules/playwright-core is missing: run scripts/deps.sh (it runs `npm ci`)"
    );
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/deps.sh (Debian package chromium)"
    );
}

#[tokio::test]
async fn js_client_rings_accepts_and_messages_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    check_prerequisites(root);

    let (tx, _bridge) = mpsc::channel(64);
    let hub = Hub::new(
        HubSettings {
            appid: "app".into(),
            // Tokens on: a second login of bob takes over (without them it is refused).
            token_secret: Some(Secret::new(SECRET)),
            bridge_uid: "proxy".into(),
            max_sessions: 100,
            max_content: 8192,
            sip_account: None,
            sip_numbers: None,
            login_timeout: Duration::from_secs(10),
            max_token_ttl: Duration::from_secs(86_400),
            allowed_origins: Vec::new(),
        },
        tx,
        Default::default(),
    );
    let port = ports::free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let app = hub
        .router()
        .route("/test/hub.html", get(|| async { Html(PAGE) }));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let tokens = json!({
        "alice": mint_token(SECRET, "alice", expiry),
        "bob": mint_token(SECRET, "bob", expiry),
    });
    let child = Command::new("node")
        .arg(root.join("tests/browser/hub_client.mjs"))
        .arg(format!("http://127.0.0.1:{port}"))
        .arg(tokens.to_string())
        .current_dir(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the browser script finishes within 120 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "browser script failed ({}):\n{stderr}\n{stdout}",
        output.status
    );
    let r: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("browser script printed no JSON ({e}):\n{stdout}\n{stderr}"));

    assert_eq!(r["pageErrors"], json!([]), "{r:#}");
    assert_eq!(r["aliceLogin"], "CONNECTED");
    assert_eq!(r["bobLogin"], "CONNECTED");
    assert_eq!(r["query"], json!({"bob": true, "carol": false}));
    assert_eq!(
        r["subscribed"],
        json!(["PeersOnlineStatusChanged", {"bob": "ONLINE"}])
    );

    // bob's page rang with alice's content, accepted, and alice's invitation followed.
    assert_eq!(
        r["bobRang"],
        json!([
            "RemoteInvitationReceived",
            "alice",
            "{\"Mode\":1,\"Conference\":false}",
            "INVITATION_RECEIVED"
        ])
    );
    assert_eq!(r["bobAcceptState"], "ACCEPTED");
    assert_eq!(
        r["bobAcceptedEvent"],
        json!(["RemoteInvitationAccepted", "ACCEPTED"])
    );
    assert_eq!(r["call"]["sentState"], "SENT_TO_REMOTE");
    assert_eq!(r["call"]["response"], "ok-from-bob");
    assert_eq!(r["call"]["state"], "ACCEPTED_BY_REMOTE");
    assert_eq!(
        r["call"]["events"],
        json!(["LocalInvitationReceivedByPeer", "LocalInvitationAccepted"])
    );
    assert_eq!(r["call"]["callIdLooksLikeUuid"], true);
    assert_eq!(
        r["bobMedia"],
        json!(["Media", {"sdp": "v=0 test-offer"}, "alice"])
    );

    assert_eq!(r["message"], json!({"hasPeerReceived": true}));
    assert_eq!(
        r["bobMessage"],
        json!(["MessageFromPeer", "hello bob", "alice"])
    );

    assert_eq!(r["wrongAppid"]["code"], "WRONG_APPID");
    assert_eq!(r["wrongAppid"]["isError"], true);
    assert_eq!(
        r["wrongAppid"]["states"],
        json!(["CONNECTING/LOGIN", "DISCONNECTED/LOGIN_FAILURE"])
    );
    assert_eq!(
        r["callSelf"],
        json!({"code": "INVALID_ARGUMENT", "reason": "INVALID_ARGUMENT", "state": "FAILURE"})
    );

    assert_eq!(r["bob2Login"], "CONNECTED");
    assert_eq!(
        r["bobReplaced"],
        json!(["ConnectionStateChanged", "ABORTED", "REMOTE_LOGIN"])
    );
    assert_eq!(r["aliceLogout"], "DISCONNECTED");
    let states: Vec<&Value> = r["aliceLog"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e[0] == "ConnectionStateChanged")
        .collect();
    assert_eq!(
        states,
        vec![
            &json!(["ConnectionStateChanged", "CONNECTING", "LOGIN"]),
            &json!(["ConnectionStateChanged", "CONNECTED", "LOGIN_SUCCESS"]),
            &json!(["ConnectionStateChanged", "DISCONNECTED", "LOGOUT"]),
        ]
    );
}
