//! Process lifecycle: the drain after SIGTERM and config reload on SIGHUP.
//!
//! * [`Lifecycle`] (cheap to clone): call [`Lifecycle::try_start_call`] when a call
//!   begins and keep the returned [`CallGuard`] for the call's life; it returns `None`
//!   while draining, so new calls are refused (answer 503 / refuse the invitation) and
//!   the drain ends when the last guard drops. `/metrics` reads its
//!   `srbridge_calls_active` from the guards. [`Lifecycle::draining`] resolves when
//!   the drain starts, for listeners that should stop accepting.
//! * [`ConfigWatch`]: the current `Arc<Config>`; a successful SIGHUP reload publishes a new
//!   one (`changed().await`, then `borrow().clone()`). Settings that need new sockets are
//!   not re-applied: [`restart_required`] names them and the reload logs a warning.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::logging::LogHandle;
use crate::config::{Config, ConfigError};

/// The live config; see the module doc.
pub type ConfigWatch = watch::Receiver<Arc<Config>>;

struct Inner {
    started: Instant,
    draining: watch::Sender<bool>,
    calls: watch::Sender<usize>,
}

/// Drain state and calls in progress, shared by every part of the bridge.
#[derive(Clone)]
pub struct Lifecycle {
    inner: Arc<Inner>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle::new()
    }
}

impl Lifecycle {
    /// Not draining, no calls.
    pub fn new() -> Self {
        Lifecycle {
            inner: Arc::new(Inner {
                started: Instant::now(),
                draining: watch::channel(false).0,
                calls: watch::channel(0).0,
            }),
        }
    }

    /// Time since this lifecycle (the process) started.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// True once SIGTERM started the drain: accept no new calls or sessions.
    pub fn is_draining(&self) -> bool {
        *self.inner.draining.borrow()
    }

    /// Starts the drain; returns false if it had already started.
    pub fn start_drain(&self) -> bool {
        self.inner
            .draining
            .send_if_modified(|d| !std::mem::replace(d, true))
    }

    /// Resolves when the drain starts (at once if it has).
    pub async fn draining(&self) {
        let mut rx = self.inner.draining.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Registers a call in progress, or `None` while draining (refuse the call).
    pub fn try_start_call(&self) -> Option<CallGuard> {
        if self.is_draining() {
            return None;
        }
        self.inner.calls.send_modify(|n| *n += 1);
        Some(CallGuard {
            lifecycle: self.clone(),
        })
    }

    /// Calls in progress now.
    pub fn calls_in_progress(&self) -> usize {
        *self.inner.calls.borrow()
    }

    /// Waits until no call is in progress or `timeout` passes; true when all ended.
    pub async fn wait_calls_done(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.calls.subscribe();
        let done = tokio::time::timeout(timeout, rx.wait_for(|n| *n == 0)).await;
        done.is_ok()
    }
}

/// One call in progress; dropping it ends the call for the drain (and for
/// `srbridge_calls_active`, which is read from the guards).
#[must_use = "the call counts as ended when this guard is dropped"]
pub struct CallGuard {
    lifecycle: Lifecycle,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.lifecycle
            .inner
            .calls
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Settings that changed between `old` and `new` but only take effect after a restart
/// (sockets and the log file are opened once).
pub fn restart_required(old: &Config, new: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    let mut check = |name: &str, differs: bool| {
        if differs {
            changed.push(name.to_string());
        }
    };
    check("[http] listen", old.http.listen != new.http.listen);
    check(
        "[http] status_listen",
        old.http.status_listen != new.http.status_listen,
    );
    check(
        "[http] tls_cert/tls_key",
        old.http.tls.as_ref().map(|t| (&t.cert, &t.key))
            != new.http.tls.as_ref().map(|t| (&t.cert, &t.key)),
    );
    check(
        "[http] header_timeout",
        old.http.header_timeout != new.http.header_timeout,
    );
    check(
        "[limits] max_conns_per_ip",
        old.limits.max_conns_per_ip != new.limits.max_conns_per_ip,
    );
    check(
        "[limits] fd_reserve",
        old.limits.fd_reserve != new.limits.fd_reserve,
    );
    check(
        "[global] sip_local_port",
        old.global.sip_local_port != new.global.sip_local_port,
    );
    // the PBX set, its health rules and the registration tasks are built once at start
    check("[global] sip_svr", old.global.sip_svr != new.global.sip_svr);
    check(
        "[sip] register/pbx_down_after/pbx_up_after",
        (
            old.sip.register_mode,
            old.sip.pbx_down_after,
            old.sip.pbx_up_after,
        ) != (
            new.sip.register_mode,
            new.sip.pbx_down_after,
            new.sip.pbx_up_after,
        ),
    );
    check("[sip] listen_ip", old.sip.listen_ip != new.sip.listen_ip);
    check("[sip] transport", old.sip.transport != new.sip.transport);
    check(
        "[media] webrtc_single_port",
        old.media.webrtc_single_port != new.media.webrtc_single_port,
    );
    check("[log] file", old.log.file != new.log.file);
    check(
        "[log] max_file_size",
        old.log.max_file_size_mb != new.log.max_file_size_mb,
    );
    check("[log] max_files", old.log.max_files != new.log.max_files);
    changed
}

/// What a successful reload did.
#[derive(Debug, Default)]
pub struct ReloadOutcome {
    /// Whether the log level was applied (false if unchanged or `RUST_LOG` is set).
    pub level_changed: bool,
    /// Settings that changed but need a restart.
    pub restart_required: Vec<String>,
}

/// Environment variable that overrides `[http] listen` (rtx.conf has no `[http]` section;
/// containers and tests pick the address without editing the file).
pub const HTTP_LISTEN_ENV: &str = "SRBRIDGE_HTTP_LISTEN";

/// Reads [`HTTP_LISTEN_ENV`]; an unparseable value is an error naming the variable.
pub fn http_listen_override() -> Result<Option<SocketAddr>, String> {
    match std::env::var(HTTP_LISTEN_ENV) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{HTTP_LISTEN_ENV}={v:?} is not an IP:port address")),
        _ => Ok(None),
    }
}

/// Re-reads the config file and publishes it; the one owner of the config sender.
pub struct ConfigReloader {
    path: PathBuf,
    tx: watch::Sender<Arc<Config>>,
    log: LogHandle,
    http_listen: Option<SocketAddr>,
}

impl ConfigReloader {
    /// Starts publishing `config`; reloads read `config.source` again. `http_listen`
    /// (from [`http_listen_override`]) replaces `[http] listen` now and on every reload.
    pub fn new(mut config: Config, log: LogHandle, http_listen: Option<SocketAddr>) -> Self {
        if let Some(addr) = http_listen {
            config.http.listen = addr;
        }
        ConfigReloader {
            path: config.source.clone(),
            tx: watch::channel(Arc::new(config)).0,
            log,
            http_listen,
        }
    }

    /// A receiver of the live config for another part of the bridge.
    pub fn subscribe(&self) -> ConfigWatch {
        self.tx.subscribe()
    }

    /// The config in force.
    pub fn current(&self) -> Arc<Config> {
        self.tx.borrow().clone()
    }

    /// Loads and validates the file; on error nothing changes (the old config stays in
    /// force). On success publishes the new config and applies the log level.
    pub fn reload(&self) -> Result<ReloadOutcome, ConfigError> {
        let mut new = Config::load(&self.path)?;
        if let Some(addr) = self.http_listen {
            new.http.listen = addr;
        }
        let old = self.current();
        let restart_required = restart_required(&old, &new);
        let level_changed = if new.log.level != old.log.level {
            match self.log.set_level(new.log.level) {
                Ok(changed) => changed,
                Err(e) => {
                    tracing::error!("reload: {e}");
                    false
                }
            }
        } else {
            false
        };
        self.tx.send_replace(Arc::new(new));
        Ok(ReloadOutcome {
            level_changed,
            restart_required,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(extra: &str) -> Config {
        Config::from_toml_str(
            Path::new("t.toml"),
            &format!("[global]\nappid = \"a\"\nsip_svr = \"127.0.0.1:5060\"\n{extra}"),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn drain_refuses_new_calls_and_waits_for_running_ones() {
        let lc = Lifecycle::new();
        let call = lc.try_start_call().expect("not draining");
        assert_eq!(lc.calls_in_progress(), 1);
        assert!(lc.start_drain());
        assert!(!lc.start_drain(), "second start is a no-op");
        assert!(lc.is_draining());
        lc.draining().await;
        assert!(lc.try_start_call().is_none(), "new calls refused");
        let waiter = tokio::spawn({
            let lc = lc.clone();
            async move { lc.wait_calls_done(Duration::from_secs(30)).await }
        });
        drop(call);
        assert!(waiter.await.unwrap(), "drain ends when the last call ends");
        assert_eq!(lc.calls_in_progress(), 0);
    }

    #[tokio::test]
    async fn drain_gives_up_after_the_timeout() {
        let lc = Lifecycle::new();
        let _call = lc.try_start_call().unwrap();
        lc.start_drain();
        assert!(!lc.wait_calls_done(Duration::from_millis(50)).await);
        assert_eq!(lc.calls_in_progress(), 1);
    }

    #[test]
    fn restart_required_names_the_pbx_list_and_its_health_rules() {
        let old = config("");
        let new = Config::from_toml_str(
            Path::new("t.toml"),
            "[global]\nappid = \"a\"\nsip_svr = \"127.0.0.1:5060,127.0.0.1:5070\"\n[sip]\nregister = \"active_backup\"\n",
        )
        .unwrap();
        assert_eq!(
            restart_required(&old, &new),
            vec![
                "[global] sip_svr".to_string(),
                "[sip] register/pbx_down_after/pbx_up_after".to_string()
            ]
        );
    }

    #[test]
    fn restart_required_names_socket_and_log_file_settings_only() {
        let old = config("[http]\nlisten = \"127.0.0.1:8080\"\n");
        let same = config("[http]\nlisten = \"127.0.0.1:8080\"\n[log]\nlevel = 0\n");
        assert!(restart_required(&old, &same).is_empty());
        let new = Config::from_toml_str(
            Path::new("t.toml"),
            "[global]\nappid = \"a\"\nsip_svr = \"127.0.0.1:5060\"\nsip_local_port = 5090\n\
             [http]\nlisten = \"127.0.0.1:8081\"\n[sip]\ntransport = \"tcp\"\n",
        )
        .unwrap();
        assert_eq!(
            restart_required(&old, &new),
            [
                "[http] listen",
                "[global] sip_local_port",
                "[sip] transport"
            ]
        );
    }

    #[test]
    fn restart_required_names_the_single_webrtc_port() {
        let old = config("[media]\nwebrtc_single_port = 3478\n");
        let new = config("[media]\nwebrtc_single_port = 3479\n");
        assert_eq!(restart_required(&old, &new), ["[media] webrtc_single_port"]);
    }

    #[test]
    fn reload_publishes_valid_and_keeps_old_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let body = |rule: &str| {
            format!(
                "[global]\nappid = \"a\"\nsip_svr = \"127.0.0.1:5060\"\n\
                 [rtm2sip]\non = true\nacc_rule = \"{rule}\"\n"
            )
        };
        std::fs::write(&path, body("1005")).unwrap();
        let reloader = ConfigReloader::new(Config::load(&path).unwrap(), LogHandle::inert(), None);
        let mut watch = reloader.subscribe();
        assert!(!reloader.current().may_call("1006"));

        std::fs::write(&path, body("1005;1006")).unwrap();
        let outcome = reloader.reload().unwrap();
        assert!(outcome.restart_required.is_empty());
        assert!(watch.has_changed().unwrap());
        assert!(watch.borrow_and_update().may_call("1006"));

        std::fs::write(&path, body("10[9-1]")).unwrap();
        let err = reloader.reload().unwrap_err().to_string();
        assert!(err.contains("acc_rule"), "{err}");
        assert!(!watch.has_changed().unwrap(), "nothing published");
        assert!(reloader.current().may_call("1006"), "old config kept");
    }
}
