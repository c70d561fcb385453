//! The running bridge. For now: logging set up from the config, warnings reported, and a
//! clean exit on Ctrl-C / SIGTERM. The SIP, media and signalling parts plug in here.

use std::io::IsTerminal;

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
    let shutdown = ShutdownSignal::install()?;
    tracing::info!("running; Ctrl-C or SIGTERM stops");
    shutdown.wait().await;
    tracing::info!("shutdown signal received, stopping");
    Ok(())
}

/// Installs a stderr subscriber at the configured level; `RUST_LOG` overrides it.
/// Does nothing if a subscriber is already set (e.g. in tests).
fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.log.level.filter_directive()));
    // No colour codes in redirected output; a closed stderr (daemon, dropped pipe) must not
    // turn a failed log write into a panic.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false)
        .try_init();
}

/// SIGTERM/Ctrl-C listeners, installed before the bridge reports itself running so a
/// signal sent right after that message is never missed.
struct ShutdownSignal {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignal {
            terminate: signal(SignalKind::terminate())
                .context("cannot install the SIGTERM handler")?,
            interrupt: signal(SignalKind::interrupt())
                .context("cannot install the SIGINT handler")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}
