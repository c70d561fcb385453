//! The operator's HTTP endpoints: `GET /api/status`, `GET /api/calls/{id}`, `GET /api/events`
//! (the live event stream, docs/events.md), `GET /metrics` (admin) and `GET /healthz` (open: 200 `ok`, 503 `draining` after SIGTERM so a load
//! balancer stops sending new users).
//!
//! Admin access: with `[http] admin_token` set, requests need `Authorization: Bearer
//! <token>` (401 otherwise); without it, admin endpoints answer only loopback clients
//! (403 for others). The token is read from the live config, so SIGHUP can change it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::auth_log::{log_auth_failure, AuthFailure};
use super::lifecycle::{ConfigWatch, Lifecycle};
use super::metrics::Metrics;
use super::status::{StatusResponse, StatusSource};
use crate::events::{sse, EventBus};

/// What the endpoints need besides the status source.
#[derive(Clone)]
pub struct OpsContext {
    /// Live config (admin token).
    pub config: ConfigWatch,
    /// Uptime and drain state.
    pub lifecycle: Lifecycle,
    /// The bridge's events, for `/api/events`.
    pub events: EventBus,
    /// This bridge instance's registry, for `/metrics`.
    pub metrics: Arc<Metrics>,
}

#[derive(Clone)]
struct AppState {
    status: Arc<dyn StatusSource>,
    ctx: OpsContext,
}

/// Prometheus text exposition content type.
pub const METRICS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// `/healthz` only (for the public listener when status has its own).
pub fn health_router(ctx: OpsContext) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .with_state(ctx)
}

/// All ops endpoints: status, calls, metrics (admin) and health.
pub fn router(status: Arc<dyn StatusSource>, ctx: OpsContext) -> Router {
    let state = AppState {
        status,
        ctx: ctx.clone(),
    };
    let admin = Router::new()
        .route("/api/status", get(api_status))
        .route("/api/calls/{id}", get(api_call))
        .route("/api/events", get(api_events))
        .route("/metrics", get(prometheus))
        .route_layer(middleware::from_fn_with_state(ctx.clone(), require_admin))
        .with_state(state);
    admin.merge(health_router(ctx))
}

/// The whole public router: `extra` (the signalling hub, web-demo) merged with [`router`],
/// every request logged (debug; headers at trace, redacted).
pub fn build_router(extra: Router, status: Arc<dyn StatusSource>, ctx: OpsContext) -> Router {
    with_request_log(extra.merge(router(status, ctx)))
}

/// Adds the request log to a router.
pub fn with_request_log(router: Router) -> Router {
    router.layer(middleware::from_fn(log_request))
}

async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    tracing::trace!(%method, %uri, headers = ?req.headers(), "http request");
    let start = Instant::now();
    let response = next.run(req).await;
    tracing::debug!(
        %method,
        path = %uri.path(),
        status = response.status().as_u16(),
        us = start.elapsed().as_micros() as u64,
        "http"
    );
    response
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

async fn require_admin(State(ctx): State<OpsContext>, req: Request, next: Next) -> Response {
    let token = ctx.config.borrow().http.admin_token.clone();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip());
    let refused = |code: &str| {
        if let Some(ip) = peer {
            log_auth_failure(
                AuthFailure::Admin,
                ip,
                &[("code", code), ("path", req.uri().path())],
            );
        }
    };
    match token {
        Some(token) => {
            let ok = bearer(req.headers())
                .is_some_and(|given| constant_time_eq(given.as_bytes(), token.expose().as_bytes()));
            if !ok {
                refused("401");
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer realm=\"srbridge\"")],
                    Json(json!({"error": "admin token required (Authorization: Bearer ...)"})),
                )
                    .into_response();
            }
        }
        None => {
            let loopback = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .is_some_and(|ConnectInfo(peer)| peer.ip().is_loopback());
            if !loopback {
                refused("403");
                return (
                    StatusCode::FORBIDDEN,
                    Json(json!({
                        "error": "admin endpoints answer loopback clients only; set [http] admin_token for remote access"
                    })),
                )
                    .into_response();
            }
        }
    }
    next.run(req).await
}

async fn api_status(State(state): State<AppState>) -> Json<StatusResponse> {
    Json(StatusResponse {
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: state.ctx.lifecycle.uptime().as_secs(),
        draining: state.ctx.lifecycle.is_draining(),
        tasks: tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        snapshot: state.status.snapshot(),
    })
}

async fn api_call(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.status.call(&id) {
        Some(call) => Json(call).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such call in progress", "id": id})),
        )
            .into_response(),
    }
}

async fn api_events(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match sse::resume_after(&headers) {
        Ok(after) => sse::stream(&state.ctx.events, after).into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

async fn prometheus(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        state.ctx.metrics.render(&state.ctx.lifecycle),
    )
}

async fn healthz(State(ctx): State<OpsContext>) -> Response {
    if ctx.lifecycle.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing_and_comparison() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer".parse().unwrap());
        assert_eq!(bearer(&h), None);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
