//! The bridge's HTTP surface: the hub's WebSocket and JS client, and the web-demo page.

use axum::response::Html;
use axum::routing::get;
use axum::Router;

/// The web-demo page, embedded so the binary is self-contained.
const INDEX_HTML: &str = include_str!("../web-demo/index.html");

/// All HTTP routes browsers use, with the hub's routes merged in.
pub fn router(hub: Router) -> Router {
    hub.route("/", get(|| async { Html(INDEX_HTML) }))
}
