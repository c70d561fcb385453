//! Why the NATS connection is down, without sockets: fed the client's connection events, it says
//! what `/api/status` shows (`cluster.error`) and when the shell logs an ERROR (once per new
//! trouble, not once per retry: the client retries every second for as long as the bridge runs).

use async_nats::{ClientError, ConnectErrorKind, Event, ServerError};

/// What keeps this node off the NATS server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsTrouble {
    /// The server refused this node's credentials (or asked for some and got none).
    CredentialsRefused,
    /// The TLS handshake failed (untrusted server certificate, no TLS offered, or our client
    /// certificate refused).
    Tls,
    /// No server answers (refused, timed out, DNS).
    Unreachable,
}

impl NatsTrouble {
    /// The text of `/api/status` → `cluster.error` and of the ERROR line (never a secret: the
    /// client's events carry none).
    pub fn describe(self) -> &'static str {
        match self {
            NatsTrouble::CredentialsRefused => {
                "the NATS server refused this node's credentials (authorization violation): \
                 check [cluster] nats_user/nats_password or nats_token"
            }
            NatsTrouble::Tls => {
                "TLS with the NATS server failed: its certificate is not trusted \
                 ([cluster] nats_tls_ca), it offers no TLS, or it refused our client certificate"
            }
            NatsTrouble::Unreachable => "the NATS server cannot be reached",
        }
    }

    /// Worth an ERROR line: a setting to fix, not an outage to wait out.
    pub fn is_misconfiguration(self) -> bool {
        !matches!(self, NatsTrouble::Unreachable)
    }
}

/// What the shell does after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthChange {
    /// Nothing new to say.
    Same,
    /// A different trouble than before started.
    Trouble(NatsTrouble),
    /// Connected again after a trouble.
    Cleared,
}

/// The last trouble seen, cleared on connecting.
#[derive(Debug, Default)]
pub struct NatsHealth {
    trouble: Option<NatsTrouble>,
}

impl NatsHealth {
    /// Takes one of the client's events.
    pub fn on_event(&mut self, event: &Event) -> HealthChange {
        let next = match event {
            Event::Connected => None,
            Event::ClientError(ClientError::Other(kind)) => Some(classify(kind)),
            Event::ServerError(ServerError::AuthorizationViolation) => {
                Some(NatsTrouble::CredentialsRefused)
            }
            _ => return HealthChange::Same,
        };
        if next == self.trouble {
            return HealthChange::Same;
        }
        let was = std::mem::replace(&mut self.trouble, next);
        match next {
            Some(trouble) => HealthChange::Trouble(trouble),
            None if was.is_some() => HealthChange::Cleared,
            None => HealthChange::Same,
        }
    }

    /// The current trouble, if any.
    pub fn trouble(&self) -> Option<NatsTrouble> {
        self.trouble
    }
}

/// The client reports a failed connection attempt by its [`ConnectErrorKind`]'s text only.
fn classify(kind: &str) -> NatsTrouble {
    let is = |k: ConnectErrorKind| k.to_string() == kind;
    if is(ConnectErrorKind::AuthorizationViolation) || is(ConnectErrorKind::Authentication) {
        NatsTrouble::CredentialsRefused
    } else if is(ConnectErrorKind::Tls) {
        NatsTrouble::Tls
    } else {
        NatsTrouble::Unreachable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(kind: ConnectErrorKind) -> Event {
        Event::ClientError(ClientError::Other(kind.to_string()))
    }

    #[test]
    fn each_failed_attempt_is_classified_and_only_a_change_is_reported() {
        let mut health = NatsHealth::default();
        assert_eq!(
            health.on_event(&failed(ConnectErrorKind::AuthorizationViolation)),
            HealthChange::Trouble(NatsTrouble::CredentialsRefused)
        );
        // the client retries every second: the same trouble again is not news
        assert_eq!(
            health.on_event(&failed(ConnectErrorKind::AuthorizationViolation)),
            HealthChange::Same
        );
        assert_eq!(health.trouble(), Some(NatsTrouble::CredentialsRefused));
        assert_eq!(
            health.on_event(&failed(ConnectErrorKind::Tls)),
            HealthChange::Trouble(NatsTrouble::Tls)
        );
        for kind in [
            ConnectErrorKind::Io,
            ConnectErrorKind::TimedOut,
            ConnectErrorKind::Dns,
        ] {
            health.on_event(&failed(kind));
            assert_eq!(health.trouble(), Some(NatsTrouble::Unreachable));
        }
        assert_eq!(health.on_event(&Event::Connected), HealthChange::Cleared);
        assert_eq!(health.trouble(), None);
        assert_eq!(health.on_event(&Event::Connected), HealthChange::Same);
    }

    #[test]
    fn a_refusal_while_connected_and_nonce_signing_count_as_credentials() {
        let mut health = NatsHealth::default();
        assert_eq!(
            health.on_event(&Event::ServerError(ServerError::AuthorizationViolation)),
            HealthChange::Trouble(NatsTrouble::CredentialsRefused)
        );
        let mut health = NatsHealth::default();
        health.on_event(&failed(ConnectErrorKind::Authentication));
        assert_eq!(health.trouble(), Some(NatsTrouble::CredentialsRefused));
        // other events say nothing about why
        for event in [Event::Disconnected, Event::SlowConsumer(1), Event::Closed] {
            assert_eq!(health.on_event(&event), HealthChange::Same);
        }
        assert_eq!(health.trouble(), Some(NatsTrouble::CredentialsRefused));
    }

    #[test]
    fn only_settings_to_fix_are_misconfigurations() {
        assert!(NatsTrouble::CredentialsRefused.is_misconfiguration());
        assert!(NatsTrouble::Tls.is_misconfiguration());
        assert!(!NatsTrouble::Unreachable.is_misconfiguration());
    }
}
