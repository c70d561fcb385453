//! The bridge's HTTP surface: the hub's WebSocket and JS client, the web-demo softphone page and
//! its assets, and `GET /api/webrtc` (the ICE servers browsers use for their peer connection).
//!
//! The page is embedded with `include_str!` so the binary is self-contained: no files to deploy.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::sync::watch;

use crate::config::Config;

/// The web-demo page.
const INDEX_HTML: &str = include_str!("../web-demo/index.html");
/// The page's script (an ES module importing `/sdk/rtm-client.js`).
const APP_JS: &str = include_str!("../web-demo/app.js");
/// The page's style sheet.
const APP_CSS: &str = include_str!("../web-demo/app.css");

/// One entry of `RTCConfiguration.iceServers`, as the browser expects it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceServer {
    /// `stun:`/`turn:`/`turns:` URLs.
    pub urls: Vec<String>,
    /// TURN user name (absent for STUN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN credential (absent for STUN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The body of `GET /api/webrtc`: what a browser needs before it creates its peer connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebRtcSettings {
    /// For `new RTCPeerConnection({ iceServers })`.
    #[serde(rename = "iceServers")]
    pub ice_servers: Vec<IceServer>,
    /// The app id browsers log in with, so the web-demo can prefill it (it is not a secret:
    /// every web app embeds it; tokens are what restrict logins).
    pub appid: String,
}

impl WebRtcSettings {
    /// The settings handed to browsers under `config`: `[media] stun_servers` and `[media] turn`.
    pub fn from_config(config: &Config) -> WebRtcSettings {
        let stun = config.media.stun_servers.iter().map(|url| IceServer {
            urls: vec![url.clone()],
            username: None,
            credential: None,
        });
        let turn = config.media.turn.iter().map(|t| IceServer {
            urls: vec![t.url.clone()],
            username: Some(t.username.clone()),
            credential: Some(t.credential.expose().to_string()),
        });
        WebRtcSettings {
            ice_servers: stun.chain(turn).collect(),
            appid: config.global.appid.clone(),
        }
    }
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

async fn webrtc_handler(State(config): State<watch::Receiver<Arc<Config>>>) -> impl IntoResponse {
    let settings = WebRtcSettings::from_config(&config.borrow());
    ([(header::CACHE_CONTROL, "no-store")], Json(settings))
}

/// All HTTP routes browsers use, with the hub's routes merged in. `config` is the bridge's live
/// configuration, so a reload changes the ICE servers handed to new calls.
pub fn router(hub: Router, config: watch::Receiver<Arc<Config>>) -> Router {
    let own = Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route("/api/webrtc", get(webrtc_handler))
        .with_state(config);
    hub.merge(own)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    fn config(extra: &str) -> Config {
        let text = format!(
            "[global]\nappid = \"demo-app\"\nsip_svr = \"127.0.0.1:5060\"\n[media]\n{extra}\n"
        );
        Config::from_toml_str(std::path::Path::new("web.toml"), &text).expect("config")
    }

    async fn get_body(router: Router, path: &str) -> (StatusCode, String, String) {
        let response = router
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let ctype = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, ctype, String::from_utf8(body.to_vec()).unwrap())
    }

    fn app(config: Config) -> Router {
        let (_tx, rx) = watch::channel(Arc::new(config));
        router(Router::new(), rx)
    }

    #[tokio::test]
    async fn webrtc_settings_list_stun_and_turn_servers_and_the_appid() {
        let c = config(
            "stun_servers = [\"stun:stun.example.org:3478\"]\n\
             [[media.turn]]\nurl = \"turn:turn.example.org:3478\"\nusername = \"u1\"\ncredential = \"s3cret\"\n",
        );
        let (status, ctype, body) = get_body(app(c), "/api/webrtc").await;
        assert_eq!(status, StatusCode::OK);
        assert!(ctype.starts_with("application/json"), "{ctype}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "iceServers": [
                    {"urls": ["stun:stun.example.org:3478"]},
                    {"urls": ["turn:turn.example.org:3478"], "username": "u1", "credential": "s3cret"}
                ],
                "appid": "demo-app"
            })
        );
    }

    #[tokio::test]
    async fn webrtc_settings_without_servers_are_an_empty_list() {
        let (_, _, body) = get_body(app(config("")), "/api/webrtc").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["iceServers"], serde_json::json!([]));
    }

    #[tokio::test]
    async fn page_and_assets_are_served_with_their_types() {
        for (path, want_type, needle) in [
            ("/", "text/html", "app.js"),
            ("/app.js", "text/javascript", "/sdk/rtm-client.js"),
            ("/app.css", "text/css", "{"),
        ] {
            let (status, ctype, body) = get_body(app(config("")), path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert!(ctype.starts_with(want_type), "{path}: {ctype}");
            assert!(body.contains(needle), "{path} lacks {needle}");
        }
    }

    #[tokio::test]
    async fn unknown_paths_are_not_found() {
        let (status, _, _) = get_body(app(config("")), "/nope.js").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
