//! The running bridge. For now: logging set up from the config, warnings reported, and a
//! clean exit on Ctrl-C / SIGTERM. The SIP, media and signalling parts plug in here.

use anyhow::Context;
use tracing_subscriber::EnvFilter;

use crate::config::Config;

/// Runs the bridge until Ctrl-C or SIGTERM, then returns `Ok` (exit code 0).
pub async fn run(config: Config) -> anyhow::Result<()> {
    init_logging(&config);
    tracing::info!(
        config = %config.source.display(),
        form = %config.form,
        pbx = %config.global.sip_svr,
        "srbridge {} starting",
        env!("CARGO_PKG_VERSION")
    );
    for warning in &config.warnings {
        tracing::warn!("config: {warning}");
    }
    wait_for_shutdown_signal().await?;
    tracing::info!("shutdown signal received, stopping");
    Ok(())
}

/// Installs a stderr subscriber at the configured level; `RUST_LOG` overrides it.
/// Does nothing if a subscriber is already set (e.g. in tests).
fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.log.level.filter_directive()));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn wait_for_shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot listen for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
