//! Registration of the proxy account: a sans-IO policy (what the outcome of a REGISTER means and
//! when to try again) and the task, one per PBX, that drives rsipstack's `Registration` with it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rsipstack::dialog::registration::Registration;
use rsipstack::sip::StatusCodeKind;
use tracing::{info, warn};

use super::status::RegState;
use super::ua::UaInner;

/// How one REGISTER ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RegisterOutcome {
    /// 2xx: the binding holds for this many seconds.
    Accepted { granted_secs: u32 },
    /// A final non-2xx (after digest auth, if the PBX challenged).
    Refused { code: u16, reason: String },
    /// No final response in time.
    NoAnswer,
    /// The request could not be sent (socket/connection error).
    Transport(String),
}

/// Refresh and back-off rules: refresh at 3/4 of the granted time, back off exponentially after
/// failures (doubling from `min_backoff`, capped at `max_backoff`) so a wrong password or a dead
/// PBX never causes a tight loop.
#[derive(Debug, Clone)]
pub(crate) struct RegisterPolicy {
    account: String,
    requested: u32,
    min_backoff: Duration,
    max_backoff: Duration,
    failures: u32,
}

impl RegisterPolicy {
    pub(crate) fn new(
        account: &str,
        requested: Duration,
        min_backoff: Duration,
        max_backoff: Duration,
    ) -> Self {
        RegisterPolicy {
            account: account.to_string(),
            requested: requested.as_secs().clamp(1, u32::MAX as u64) as u32,
            min_backoff: min_backoff.max(Duration::from_millis(10)),
            max_backoff: max_backoff.max(min_backoff),
            failures: 0,
        }
    }

    /// The `Expires` we ask for.
    pub(crate) fn requested_secs(&self) -> u32 {
        self.requested
    }

    /// The state to show after `outcome` and how long to wait before the next REGISTER.
    pub(crate) fn on_outcome(
        &mut self,
        outcome: &RegisterOutcome,
        now: Instant,
    ) -> (RegState, Duration) {
        match outcome {
            RegisterOutcome::Accepted { granted_secs } => {
                self.failures = 0;
                let granted = if *granted_secs == 0 {
                    self.requested
                } else {
                    *granted_secs
                };
                let lifetime = Duration::from_secs(granted as u64);
                let refresh = (lifetime * 3 / 4).max(Duration::from_secs(1));
                (
                    RegState::Registered {
                        until: now + lifetime,
                    },
                    refresh,
                )
            }
            failure => {
                let wait = self.backoff();
                self.failures = self.failures.saturating_add(1);
                (
                    RegState::Failed {
                        error: self.describe(failure),
                        retry_at: now + wait,
                    },
                    wait,
                )
            }
        }
    }

    fn backoff(&self) -> Duration {
        let factor = 1u32 << self.failures.min(16);
        self.min_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    fn describe(&self, outcome: &RegisterOutcome) -> String {
        let account = &self.account;
        match outcome {
            RegisterOutcome::Accepted { .. } => String::new(),
            RegisterOutcome::Refused {
                code: code @ (401 | 407),
                reason,
            } => format!(
                "{code} {reason}: wrong credentials for account {account} (check proxy.sip_pwd)"
            ),
            RegisterOutcome::Refused { code: 403, reason } => format!(
                "403 {reason}: the PBX refused account {account} (wrong password or unknown account)"
            ),
            RegisterOutcome::Refused { code, reason } => format!("{code} {reason}"),
            RegisterOutcome::NoAnswer => "no answer from the PBX (timeout)".to_string(),
            RegisterOutcome::Transport(e) => format!("cannot reach the PBX: {e}"),
        }
    }
}

/// Runs until `stop` is cancelled for PBX `index`: REGISTER, refresh, back off, re-register at
/// once when the PBX comes back (`PbxLink::reregister`); while the PBX should not hold the
/// registration (an active/backup standby) it stays unregistered. Finally unregisters
/// (Expires: 0) if registered.
pub(crate) async fn run(ua: Arc<UaInner>, index: usize, mut policy: RegisterPolicy) {
    let (Some(credential), Some(link)) = (ua.credential.clone(), ua.pbxs.get(index)) else {
        return;
    };
    let pbx = link.addr;
    let server = match ua.registrar_uri(pbx) {
        Ok(uri) => uri,
        Err(e) => {
            warn!(%pbx, error = %e, "cannot build the registrar URI; registration disabled");
            ua.set_reg_state(
                index,
                RegState::Failed {
                    error: e.to_string(),
                    retry_at: Instant::now(),
                },
            );
            return;
        }
    };
    let mut registration = Registration::new(ua.endpoint.clone(), Some(credential));
    registration.contact = Some(ua.contact_header(&ua.account));
    let stop = ua.stop_register.clone();
    let mut registered = false;
    loop {
        if !ua.should_register(index) {
            // standby: give the binding up (the active PBX holds it) and wait for a change
            if registered {
                unregister(&ua, &mut registration, &server, pbx).await;
                registered = false;
            }
            ua.set_reg_state(index, RegState::Disabled);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = link.reregister.notified() => continue,
            }
        }
        ua.set_reg_state(index, RegState::Registering);
        let attempt = tokio::time::timeout(
            ua.opts.request_timeout,
            registration.register(server.clone(), Some(policy.requested_secs())),
        );
        let result = tokio::select! {
            _ = stop.cancelled() => break,
            r = attempt => r,
        };
        let outcome = match result {
            Err(_) => RegisterOutcome::NoAnswer,
            Ok(Err(e)) => RegisterOutcome::Transport(e.to_string()),
            Ok(Ok(resp)) if resp.status_code.kind() == StatusCodeKind::Successful => {
                RegisterOutcome::Accepted {
                    granted_secs: registration.granted_expires.unwrap_or(0),
                }
            }
            Ok(Ok(resp)) => RegisterOutcome::Refused {
                code: resp.status_code.code(),
                reason: resp
                    .wire_reason
                    .clone()
                    .unwrap_or_else(|| resp.status_code.text().to_string()),
            },
        };
        let m = &ua.opts.metrics;
        m.registration_attempts.inc();
        if !matches!(outcome, RegisterOutcome::Accepted { .. }) {
            m.registration_failures.inc();
        }
        let (state, wait) = policy.on_outcome(&outcome, Instant::now());
        match &state {
            RegState::Registered { .. } => {
                if !registered {
                    info!(account = %ua.account, %pbx, "registered");
                }
                registered = true;
            }
            RegState::Failed { error, .. } => {
                registered = false;
                warn!(account = %ua.account, %pbx, error = %error, retry_in_ms = wait.as_millis() as u64, "registration failed");
            }
            _ => {}
        }
        ua.set_reg_state(index, state);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
            _ = link.reregister.notified() => {
                if ua.should_register(index) {
                    info!(account = %ua.account, %pbx, "PBX is back: registering again now");
                }
            }
        }
    }
    if registered {
        unregister(&ua, &mut registration, &server, pbx).await;
    }
    ua.set_reg_state(index, RegState::Disabled);
}

/// REGISTER with Expires: 0, bounded by `unregister_timeout`.
async fn unregister(
    ua: &UaInner,
    registration: &mut Registration,
    server: &rsipstack::sip::Uri,
    pbx: std::net::SocketAddr,
) {
    let unregister = tokio::time::timeout(
        ua.opts.unregister_timeout,
        registration.register(server.clone(), Some(0)),
    );
    match unregister.await {
        Ok(Ok(resp)) if resp.status_code.kind() == StatusCodeKind::Successful => {
            info!(account = %ua.account, %pbx, "unregistered")
        }
        Ok(Ok(resp)) => {
            warn!(account = %ua.account, %pbx, status = %resp.status_code, "unregister refused")
        }
        Ok(Err(e)) => warn!(account = %ua.account, %pbx, error = %e, "unregister failed"),
        Err(_) => warn!(account = %ua.account, %pbx, "unregister timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RegisterPolicy {
        RegisterPolicy::new(
            "1000",
            Duration::from_secs(300),
            Duration::from_secs(1),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn success_refreshes_at_three_quarters_of_the_granted_time() {
        let mut p = policy();
        let now = Instant::now();
        let (state, wait) = p.on_outcome(&RegisterOutcome::Accepted { granted_secs: 120 }, now);
        assert_eq!(wait, Duration::from_secs(90));
        assert!(
            matches!(state, RegState::Registered { until } if until == now + Duration::from_secs(120))
        );
        let (_, wait) = p.on_outcome(&RegisterOutcome::Accepted { granted_secs: 0 }, now);
        assert_eq!(
            wait,
            Duration::from_secs(225),
            "no granted value: the requested 300 s"
        );
        let (_, wait) = p.on_outcome(&RegisterOutcome::Accepted { granted_secs: 1 }, now);
        assert_eq!(
            wait,
            Duration::from_secs(1),
            "never faster than once a second"
        );
    }

    #[test]
    fn failures_back_off_exponentially_up_to_the_cap_and_reset_on_success() {
        let mut p = policy();
        let now = Instant::now();
        let waits: Vec<u64> = (0..9)
            .map(|_| p.on_outcome(&RegisterOutcome::NoAnswer, now).1.as_secs())
            .collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        p.on_outcome(&RegisterOutcome::Accepted { granted_secs: 60 }, now);
        let (_, wait) = p.on_outcome(&RegisterOutcome::NoAnswer, now);
        assert_eq!(wait, Duration::from_secs(1));
    }

    #[test]
    fn wrong_credentials_are_named_clearly() {
        let mut p = policy();
        let now = Instant::now();
        let forbidden = RegisterOutcome::Refused {
            code: 403,
            reason: "Forbidden".into(),
        };
        let (state, _) = p.on_outcome(&forbidden, now);
        let RegState::Failed { error, .. } = state else {
            panic!("{state:?}")
        };
        assert!(error.starts_with("403 Forbidden"), "{error}");
        assert!(error.contains("wrong password"), "{error}");
        let unauthorized = RegisterOutcome::Refused {
            code: 401,
            reason: "Unauthorized".into(),
        };
        let (state, _) = p.on_outcome(&unauthorized, now);
        let RegState::Failed { error, .. } = state else {
            panic!("{state:?}")
        };
        assert!(error.starts_with("401 Unauthorized"), "{error}");
        assert!(error.contains("wrong credentials"), "{error}");
        assert!(!error.contains("1234"), "never the password");
        let (state, _) = p.on_outcome(
            &RegisterOutcome::Transport("connection refused".into()),
            now,
        );
        assert!(
            matches!(state, RegState::Failed { ref error, .. } if error.contains("connection refused"))
        );
    }
}
