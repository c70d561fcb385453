//! The running bridge: logging from `[log]`, the HTTP server(s), and signals (SIGTERM/SIGINT
//! drain then exit 0, a second one exits at once; SIGHUP reloads the config).
//!
//! [`run`] is what `main` calls. The SIP stack, signalling hub and call registry plug in
//! between [`App::start`] and [`App::serve`]: they take [`App::config_watch`],
//! [`App::lifecycle`] and [`App::metrics`] (the registry `/metrics` shows), and hand back a `Router` (the hub's `/ws`, the web-demo) to merge
//! and a [`StatusSource`] for `/api/status`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use futures::future::OptionFuture;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::events::EventBus;
use crate::ops::http::{build_router, health_router, router, with_request_log, OpsContext};
use crate::ops::lifecycle::{
    http_listen_override, ConfigReloader, ConfigWatch, Lifecycle, HTTP_LISTEN_ENV,
};
use crate::ops::logging;
use crate::ops::metrics::Metrics;
use crate::ops::serve::{serve, ConnLimits};
use crate::ops::status::StatusSource;

/// Runs the bridge until SIGTERM/SIGINT and the drain, then returns `Ok` (exit code 0).
/// Errors (log file, bind) are returned for `main` to print and exit non-zero.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let app = App::start(config)?;
    tokio::spawn(crate::ops::trim::trim_periodically());
    let bridge = crate::bridge::Bridge::start_parts(
        app.config_watch(),
        app.lifecycle(),
        app.events(),
        app.metrics(),
    )
    .await?;
    let result = app.serve(bridge.router(), bridge.status()).await;
    bridge.shutdown().await;
    result
}

/// A started bridge process: logging on, config published, signal handlers installed.
pub struct App {
    reloader: ConfigReloader,
    lifecycle: Lifecycle,
    events: EventBus,
    metrics: Arc<Metrics>,
    signals: Signals,
}

impl App {
    /// Sets up logging (file or stderr, redacted), logs the start and the config warnings,
    /// and installs the signal handlers (before anything reports itself running, so an
    /// early signal is never missed).
    pub fn start(config: Config) -> anyhow::Result<App> {
        let log = logging::init(&config.log)?;
        tracing::info!(
            config = %config.source.display(),
            form = %config.form,
            pbx = %config.global.sip_svr,
            log_level = %config.log.level,
            "srbridge {} starting",
            env!("CARGO_PKG_VERSION")
        );
        for warning in &config.warnings {
            tracing::warn!("config: {warning}");
        }
        match crate::ops::fd_limit::raise_nofile_limit() {
            Ok((before, now)) if now > before => {
                tracing::info!("file descriptor limit raised from {before} to {now}")
            }
            Ok((_, now)) => tracing::info!("file descriptor limit {now}"),
            Err(e) => tracing::warn!("cannot read the file descriptor limit: {e}"),
        }
        if config.auth.token_secret.is_none() {
            tracing::warn!(
                "[auth] token_secret is not set: anyone who knows the appid can log in as any \
                 uid (a second login with a uid in use is refused); set token_secret in production"
            );
        }
        let http_listen = http_listen_override().map_err(anyhow::Error::msg)?;
        if let Some(addr) = http_listen {
            tracing::info!("{HTTP_LISTEN_ENV}={addr} overrides [http] listen");
        }
        Ok(App {
            reloader: ConfigReloader::new(config, log, http_listen),
            lifecycle: Lifecycle::new(),
            events: EventBus::new(),
            metrics: Arc::new(Metrics::new()),
            signals: Signals::install()?,
        })
    }

    /// The config in force now.
    pub fn config(&self) -> Arc<Config> {
        self.reloader.current()
    }

    /// A receiver of the live config (a new `Arc<Config>` after each good SIGHUP).
    pub fn config_watch(&self) -> ConfigWatch {
        self.reloader.subscribe()
    }

    /// Drain state and the calls-in-progress count.
    pub fn lifecycle(&self) -> Lifecycle {
        self.lifecycle.clone()
    }

    /// Where the bridge's parts publish their events (`/api/events`, the webhook).
    pub fn events(&self) -> EventBus {
        self.events.clone()
    }

    /// This bridge's metrics registry (`/metrics`), for every part to count into.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// What the ops endpoints need.
    pub fn context(&self) -> OpsContext {
        OpsContext {
            config: self.config_watch(),
            lifecycle: self.lifecycle(),
            events: self.events(),
            metrics: self.metrics(),
        }
    }

    /// Binds `[http] listen` (serving `extra` plus the ops endpoints, or only `/healthz`
    /// beside `extra` when `status_listen` is set) and `status_listen`, then handles
    /// signals until the process should exit.
    pub async fn serve(self, extra: Router, status: Arc<dyn StatusSource>) -> anyhow::Result<()> {
        let config = self.config();
        let ctx = self.context();
        let (failed_tx, mut failed_rx) = mpsc::channel::<anyhow::Error>(2);
        let tls = match &config.http.tls {
            Some(tls) => Some(crate::ops::tls::acceptor(tls)?),
            None => None,
        };
        let tls = tls.as_ref();
        // One gate for both listeners: they share the process's descriptors.
        let limits = ConnLimits::from_config(&config, self.metrics());
        match config.http.status_listen {
            Some(status_addr) => {
                let public = with_request_log(extra.merge(health_router(ctx.clone())));
                let listen = config.http.listen;
                spawn_server("listen", listen, public, tls, &limits, &failed_tx).await?;
                let ops = with_request_log(router(status, ctx));
                spawn_server("status_listen", status_addr, ops, tls, &limits, &failed_tx).await?;
            }
            None => {
                let all = build_router(extra, status, ctx);
                let listen = config.http.listen;
                spawn_server("listen", listen, all, tls, &limits, &failed_tx).await?;
            }
        }
        tracing::info!("running; SIGTERM drains and stops, SIGHUP reloads the config");
        self.handle_signals(&mut failed_rx).await
    }

    async fn handle_signals(
        mut self,
        failed: &mut mpsc::Receiver<anyhow::Error>,
    ) -> anyhow::Result<()> {
        let mut drain: Option<Pin<Box<dyn Future<Output = bool> + Send>>> = None;
        loop {
            tokio::select! {
                name = stop_signal(&mut self.signals.terminate, &mut self.signals.interrupt) => {
                    let calls = self.lifecycle.calls_in_progress();
                    if drain.is_some() {
                        tracing::warn!("second stop signal ({name}): exiting now, {calls} calls in progress dropped");
                        return Ok(());
                    }
                    let timeout = self.config().shutdown.drain_timeout;
                    self.lifecycle.start_drain();
                    tracing::info!(
                        "{name}: draining, new calls refused; {calls} calls in progress, waiting up to {}s (send again to exit now)",
                        timeout.as_secs()
                    );
                    let lifecycle = self.lifecycle.clone();
                    drain = Some(Box::pin(async move { lifecycle.wait_calls_done(timeout).await }));
                }
                _ = self.signals.hangup.recv() => self.reload(),
                Some(done) = OptionFuture::from(drain.as_mut()) => {
                    if done {
                        tracing::info!("drain complete, no calls in progress; exiting");
                    } else {
                        tracing::warn!(
                            "drain timeout: {} calls still in progress, ending them; exiting",
                            self.lifecycle.calls_in_progress()
                        );
                    }
                    return Ok(());
                }
                Some(error) = failed.recv() => return Err(error),
            }
        }
    }

    fn reload(&self) {
        let path = self.config().source.clone();
        tracing::info!(config = %path.display(), "SIGHUP: reloading the config");
        match self.reloader.reload() {
            Ok(outcome) => {
                let config = self.config();
                for warning in &config.warnings {
                    tracing::warn!("config: {warning}");
                }
                for setting in &outcome.restart_required {
                    tracing::warn!("config reload: {setting} changed; restart to apply it");
                }
                tracing::info!(
                    log_level = %config.log.level,
                    level_applied = outcome.level_changed,
                    "config reloaded"
                );
            }
            Err(e) => {
                tracing::error!("config reload failed, keeping the running config: {e}");
            }
        }
    }
}

/// Binds `addr` now (so a taken port fails start-up with a clear message) and serves
/// `router` (over TLS when `tls` is given) in a task; a server that stops later reports
/// on `failed`.
async fn spawn_server(
    key: &str,
    addr: SocketAddr,
    router: Router,
    tls: Option<&TlsAcceptor>,
    limits: &ConnLimits,
    failed: &mpsc::Sender<anyhow::Error>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on [http] {key} {addr}"))?;
    let local = listener.local_addr().unwrap_or(addr);
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!("{scheme}: [http] {key} on {local}");
    let failed = failed.clone();
    let key = key.to_string();
    let tls = tls.cloned();
    let limits = limits.clone();
    tokio::spawn(async move {
        // Accept errors are retried inside; the loop ends only if `stop` does (never here).
        serve(listener, router, tls, limits, std::future::pending()).await;
        let error = anyhow::anyhow!("{scheme} server on {local} ([http] {key}) stopped");
        let _ = failed.send(error).await;
    });
    Ok(())
}

/// SIGTERM/SIGINT/SIGHUP listeners.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())
                .context("cannot install the SIGTERM handler")?,
            interrupt: signal(SignalKind::interrupt())
                .context("cannot install the SIGINT handler")?,
            hangup: signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?,
        })
    }
}

/// Next SIGTERM or SIGINT; returns its name for the log.
async fn stop_signal(terminate: &mut Signal, interrupt: &mut Signal) -> &'static str {
    tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    }
}
