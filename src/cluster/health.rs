//! Why the NATS connection is down, without sockets: fed the client's connection events and the
//! outcome of diagnostic connection attempts, it says what `/api/status` shows (`cluster.error`)
//! and when the shell logs an ERROR (once per new trouble, not once per retry: the client retries
//! every second for as long as the bridge runs).
//!
//! The client's events name a failed attempt by its error kind only, and a failed TLS handshake
//! arrives as a plain I/O error. So while the node is cut off for no clear reason, the shell
//! makes one attempt of its own now and then ([`NatsHealth::probe_due`]) and hands the full
//! error to [`diagnose`].

use std::time::{Duration, Instant};

use async_nats::{ClientError, ConnectError, ConnectErrorKind, Event, ServerError};

/// How often a node cut off for no clear reason makes a diagnostic attempt.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);

/// What keeps this node off the NATS server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsTrouble {
    /// The server refused this node's credentials (or asked for some and got none).
    CredentialsRefused,
    /// TLS failed: untrusted server certificate, no TLS offered, our client certificate
    /// refused, or the TLS files unusable.
    Tls,
    /// No server answers (refused, timed out, DNS).
    Unreachable,
}

impl NatsTrouble {
    /// What to do about it (the end of `cluster.error` and of the ERROR line).
    fn advice(self) -> &'static str {
        match self {
            NatsTrouble::CredentialsRefused => {
                "the NATS server refused this node's credentials (authorization violation): \
                 check [cluster] nats_user/nats_password or nats_token"
            }
            NatsTrouble::Tls => {
                "TLS with the NATS server failed: is its certificate signed by a CA in \
                 [cluster] nats_tls_ca, does it offer TLS, does it accept our client certificate?"
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

/// The last trouble seen (with the diagnostic attempt's error text, when it made one), cleared
/// on connecting.
#[derive(Debug, Default)]
pub struct NatsHealth {
    trouble: Option<(NatsTrouble, Option<String>)>,
    connected: bool,
    probing: bool,
    last_probe: Option<Instant>,
}

impl NatsHealth {
    /// Takes one of the client's events.
    pub fn on_event(&mut self, event: &Event) -> HealthChange {
        let next = match event {
            Event::Connected => {
                self.connected = true;
                let was = self.trouble.take();
                return match was {
                    Some(_) => HealthChange::Cleared,
                    None => HealthChange::Same,
                };
            }
            Event::Disconnected => {
                self.connected = false;
                return HealthChange::Same;
            }
            Event::ClientError(ClientError::Other(kind)) => classify(kind),
            Event::ServerError(ServerError::AuthorizationViolation) => {
                NatsTrouble::CredentialsRefused
            }
            _ => return HealthChange::Same,
        };
        self.connected = false;
        // A TLS failure shows up in events as an I/O error: keep what a probe found.
        let diagnosed = matches!(self.trouble, Some((NatsTrouble::Tls, Some(_))));
        if next == NatsTrouble::Unreachable && diagnosed {
            return HealthChange::Same;
        }
        self.set(next, None)
    }

    /// Whether the shell should make a diagnostic attempt now (it then reports the outcome to
    /// [`NatsHealth::on_probe`]): cut off for no clear reason, none running, none lately.
    pub fn probe_due(&mut self, now: Instant) -> bool {
        let unclear = matches!(
            self.trouble,
            Some((NatsTrouble::Unreachable | NatsTrouble::Tls, _))
        );
        let rested = self
            .last_probe
            .is_none_or(|at| now.duration_since(at) >= PROBE_EVERY);
        if self.connected || self.probing || !unclear || !rested {
            return false;
        }
        self.probing = true;
        self.last_probe = Some(now);
        true
    }

    /// The diagnostic attempt's outcome: `None` when it connected (the client will too).
    pub fn on_probe(&mut self, failure: Option<(NatsTrouble, String)>) -> HealthChange {
        self.probing = false;
        match failure {
            Some((trouble, detail)) if !self.connected => self.set(trouble, Some(detail)),
            _ => HealthChange::Same,
        }
    }

    fn set(&mut self, trouble: NatsTrouble, detail: Option<String>) -> HealthChange {
        let same_kind = self.trouble.as_ref().map(|(t, _)| *t) == Some(trouble);
        // A detail once found stays until a different trouble replaces it.
        let detail = match (&self.trouble, detail) {
            (Some((_, Some(old))), None) if same_kind => Some(old.clone()),
            (_, detail) => detail,
        };
        self.trouble = Some((trouble, detail));
        match same_kind {
            true => HealthChange::Same,
            false => HealthChange::Trouble(trouble),
        }
    }

    /// The current trouble, if any.
    pub fn trouble(&self) -> Option<NatsTrouble> {
        self.trouble.as_ref().map(|(t, _)| *t)
    }

    /// `/api/status` → `cluster.error` and the ERROR line's text (never a secret: neither the
    /// client's events nor its connect errors carry one).
    pub fn describe(&self) -> Option<String> {
        self.trouble.as_ref().map(|(trouble, detail)| match detail {
            Some(detail) => format!("{} ({detail})", trouble.advice()),
            None => trouble.advice().to_string(),
        })
    }
}

/// The client reports a failed connection attempt in events by its [`ConnectErrorKind`]'s text
/// only.
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

/// What a failed connection attempt's full error says: a TLS handshake failure is an I/O error
/// wrapping a rustls error.
pub fn diagnose(error: &ConnectError) -> (NatsTrouble, String) {
    use std::error::Error as _;
    let rustls_error = error
        .source()
        .and_then(|source| source.downcast_ref::<std::io::Error>())
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>());
    let trouble = match (error.kind(), rustls_error) {
        (_, Some(_)) | (ConnectErrorKind::Tls, _) => NatsTrouble::Tls,
        (ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication, _) => {
            NatsTrouble::CredentialsRefused
        }
        _ => NatsTrouble::Unreachable,
    };
    let detail = match rustls_error {
        Some(tls) => tls.to_string(),
        None => error.to_string(),
    };
    (trouble, detail.replace(['\n', '\r'], " "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_rustls::rustls::{self, CertificateError};

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
        assert!(health
            .describe()
            .is_some_and(|d| d.contains("refused this node's credentials")));
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
        assert_eq!((health.trouble(), health.describe()), (None, None));
        assert_eq!(health.on_event(&Event::Connected), HealthChange::Same);
    }

    #[test]
    fn a_refusal_while_connected_and_nonce_signing_count_as_credentials() {
        let mut health = NatsHealth::default();
        health.on_event(&Event::Connected);
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
    fn an_unclear_failure_is_probed_now_and_then_and_a_tls_finding_sticks() {
        let t0 = Instant::now();
        let mut health = NatsHealth::default();
        assert!(!health.probe_due(t0), "nothing wrong: no probe");
        health.on_event(&failed(ConnectErrorKind::Io));
        assert!(health.probe_due(t0));
        assert!(!health.probe_due(t0 + PROBE_EVERY), "one at a time");
        assert_eq!(
            health.on_probe(Some((
                NatsTrouble::Tls,
                "invalid peer certificate: UnknownIssuer".to_string()
            ))),
            HealthChange::Trouble(NatsTrouble::Tls)
        );
        let text = health.describe().expect("a trouble");
        assert!(
            text.contains("TLS") && text.contains("UnknownIssuer"),
            "{text}"
        );
        // the client's next attempts fail as plain I/O: the finding stays
        assert_eq!(
            health.on_event(&failed(ConnectErrorKind::Io)),
            HealthChange::Same
        );
        assert_eq!(health.trouble(), Some(NatsTrouble::Tls));
        assert!(!health.probe_due(t0 + PROBE_EVERY / 2), "not again so soon");
        assert!(health.probe_due(t0 + PROBE_EVERY));
        // the server is gone altogether now
        assert_eq!(
            health.on_probe(Some((NatsTrouble::Unreachable, "refused".to_string()))),
            HealthChange::Trouble(NatsTrouble::Unreachable)
        );
        // a probe that connects, or a result after the client connected, changes nothing
        assert!(health.probe_due(t0 + PROBE_EVERY * 2));
        assert_eq!(health.on_probe(None), HealthChange::Same);
        assert!(health.probe_due(t0 + PROBE_EVERY * 3));
        health.on_event(&Event::Connected);
        assert_eq!(
            health.on_probe(Some((NatsTrouble::Tls, "late".to_string()))),
            HealthChange::Same
        );
        assert_eq!(health.trouble(), None);
        assert!(!health.probe_due(t0 + PROBE_EVERY * 9), "connected");
    }

    #[test]
    fn credentials_refused_needs_no_probe() {
        let mut health = NatsHealth::default();
        health.on_event(&failed(ConnectErrorKind::AuthorizationViolation));
        assert!(!health.probe_due(Instant::now()));
    }

    #[test]
    fn diagnose_finds_the_tls_error_inside_an_io_error() {
        let handshake = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let (trouble, detail) =
            diagnose(&ConnectError::with_source(ConnectErrorKind::Io, handshake));
        assert_eq!(trouble, NatsTrouble::Tls);
        assert!(detail.contains("UnknownIssuer"), "{detail}");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let (trouble, _) = diagnose(&ConnectError::with_source(ConnectErrorKind::Io, refused));
        assert_eq!(trouble, NatsTrouble::Unreachable);
        let (trouble, _) = diagnose(&ConnectError::new(ConnectErrorKind::AuthorizationViolation));
        assert_eq!(trouble, NatsTrouble::CredentialsRefused);
        let unreadable = std::io::Error::other("could not load certs");
        let (trouble, detail) = diagnose(&ConnectError::with_source(
            ConnectErrorKind::Tls,
            unreadable,
        ));
        assert_eq!(trouble, NatsTrouble::Tls);
        assert!(detail.contains("could not load certs"), "{detail}");
    }

    #[test]
    fn only_settings_to_fix_are_misconfigurations() {
        assert!(NatsTrouble::CredentialsRefused.is_misconfiguration());
        assert!(NatsTrouble::Tls.is_misconfiguration());
        assert!(!NatsTrouble::Unreachable.is_misconfiguration());
    }
}
