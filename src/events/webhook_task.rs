//! The webhook's tokio shell: feeds the bus's events to a [`WebhookQueue`] and POSTs the batches
//! it hands out (hyper's HTTP/1 client, one connection per batch), reporting each outcome back.
//!
//! `[events] webhook_url` is read from the live config, so a SIGHUP can set, change or clear it.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use axum::http::{header, Request};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::bus::{Delivery, EventBus};
use super::webhook::{Batch, WebhookQueue, WebhookSettings};
use crate::config::WebhookUrl;
use crate::ops::lifecycle::ConfigWatch;

/// Why a POST did not count as delivered.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// TCP connect failed.
    #[error("cannot connect: {0}")]
    Connect(#[from] std::io::Error),
    /// HTTP-level failure (handshake, request, broken connection).
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built.
    #[error("bad request: {0}")]
    Request(#[from] axum::http::Error),
    /// The receiver answered with a non-2xx status.
    #[error("receiver answered {0}")]
    Status(u16),
    /// No answer within the request timeout.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
}

type Sending = Pin<Box<dyn Future<Output = Result<(), WebhookError>> + Send>>;

/// Starts the webhook task: it consumes `bus` until `stop`, posting to the configured URL. It
/// begins with the events already kept (those published while the bridge was starting, such as
/// the first `registration.changed`), so a receiver sees the sequence from its start.
pub fn spawn(
    bus: &EventBus,
    config: ConfigWatch,
    settings: WebhookSettings,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let subscription = bus.subscribe(Some(0));
    tokio::spawn(async move {
        let mut subscription = subscription;
        let mut queue = WebhookQueue::new(settings);
        let mut sending: Option<Sending> = None;
        let mut announced: Option<WebhookUrl> = None;
        loop {
            let url = config.borrow().events.webhook_url.clone();
            if url != announced {
                match &url {
                    Some(url) => tracing::info!(webhook = %url, "events webhook on"),
                    None if announced.is_some() => tracing::info!("events webhook off"),
                    None => {}
                }
                announced = url.clone();
            }
            if sending.is_none() {
                match &url {
                    Some(url) => {
                        if let Some(batch) = queue.next_batch(Instant::now()) {
                            let timeout = queue.settings().request_timeout;
                            sending = Some(Box::pin(post(url.clone(), batch, timeout)));
                        }
                    }
                    None => queue.clear(),
                }
            }
            let wake = queue.wake_at();
            tokio::select! {
                _ = stop.cancelled() => break,
                delivery = subscription.next() => match delivery {
                    Some(Delivery::Event(event)) if url.is_some() => queue.push(event),
                    Some(Delivery::Event(_)) => {}
                    Some(Delivery::Lagged(missed)) => {
                        tracing::warn!(missed, "webhook fell behind the event bus");
                        queue.lost(missed);
                    }
                    None => break,
                },
                result = in_flight(&mut sending), if sending.is_some() => {
                    sending = None;
                    let ok = result.is_ok();
                    match (result, queue.on_result(ok, Instant::now())) {
                        (Err(error), Some(wait)) => tracing::warn!(
                            %error,
                            retry_in_ms = wait.as_millis() as u64,
                            waiting = queue.len(),
                            dropped = queue.dropped(),
                            "webhook POST failed"
                        ),
                        _ => tracing::debug!(waiting = queue.len(), "webhook batch delivered"),
                    }
                },
                _ = sleep_until(wake), if wake.is_some() => {}
            }
        }
    })
}

async fn in_flight(sending: &mut Option<Sending>) -> Result<(), WebhookError> {
    match sending {
        Some(post) => post.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// POSTs one batch; `Ok` only for a 2xx answer.
async fn post(
    url: WebhookUrl,
    batch: Batch,
    timeout: std::time::Duration,
) -> Result<(), WebhookError> {
    let exchange = async {
        let stream = TcpStream::connect((url.host.as_str(), url.port)).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let connection = tokio::spawn(connection);
        let request = Request::post(url.path.as_str())
            .header(header::HOST, url.authority.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("srbridge/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(batch.body())))?;
        let response = sender.send_request(request).await;
        connection.abort();
        let status = response?.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(WebhookError::Status(status.as_u16()))
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(WebhookError::Timeout(timeout)))
}
