//! The one auth-failure log line, in a fixed format that fail2ban (`config/fail2ban/`) reads:
//!
//! ```text
//! AUTH_FAILURE kind=<sip_peer|login|token|admin> src=<ip> <key=value ...>
//! ```
//!
//! It is logged at WARN on its own target ([`TARGET`]), which the log filter keeps on at every
//! level but NONE, so the default level (INFO) and ERROR both show it. Values are reduced to
//! characters that cannot end the line or forge another `src=` (no spaces, no `=`, no control
//! characters) and never carry a secret: callers pass what was refused, not what was presented.

use std::net::IpAddr;

/// The `tracing` target of the line (kept at WARN by the log filter whatever the level).
pub const TARGET: &str = "srbridge_auth";

/// What was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// A SIP request from an address that is neither the PBX nor an allowed peer.
    SipPeer,
    /// A hub login refused for its appid or user id.
    Login,
    /// A hub login refused for its token (missing, bad signature, expired).
    Token,
    /// An admin HTTP request refused 401/403.
    Admin,
}

impl AuthFailure {
    /// The `kind=` value.
    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::SipPeer => "sip_peer",
            AuthFailure::Login => "login",
            AuthFailure::Token => "token",
            AuthFailure::Admin => "admin",
        }
    }
}

/// Longest value kept per field (longer ones are cut).
const MAX_VALUE: usize = 64;

/// The line for `kind` from `src` with `fields` (`key`, `value`) appended in order.
pub fn auth_failure_line(kind: AuthFailure, src: IpAddr, fields: &[(&str, &str)]) -> String {
    let mut line = format!("AUTH_FAILURE kind={} src={src}", kind.label());
    for (key, value) in fields {
        line.push(' ');
        line.push_str(&clean(key));
        line.push('=');
        line.push_str(&clean(value));
    }
    line
}

/// Logs [`auth_failure_line`] at WARN on [`TARGET`].
pub fn log_auth_failure(kind: AuthFailure, src: IpAddr, fields: &[(&str, &str)]) {
    tracing::warn!(target: TARGET, "{}", auth_failure_line(kind, src, fields));
}

/// Keeps `[A-Za-z0-9._:/@+-]`, replaces anything else with `_`, cuts at [`MAX_VALUE`].
fn clean(value: &str) -> String {
    let mut out: String = value
        .chars()
        .take(MAX_VALUE)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._:/@+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() {
        out.push('-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_has_the_documented_shape() {
        let src: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(
            auth_failure_line(AuthFailure::SipPeer, src, &[("method", "BYE")]),
            "AUTH_FAILURE kind=sip_peer src=192.0.2.7 method=BYE"
        );
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            auth_failure_line(AuthFailure::Admin, v6, &[("path", "/api/status")]),
            "AUTH_FAILURE kind=admin src=2001:db8::1 path=/api/status"
        );
        assert_eq!(
            auth_failure_line(AuthFailure::Token, src, &[]),
            "AUTH_FAILURE kind=token src=192.0.2.7"
        );
    }

    #[test]
    fn values_cannot_forge_a_source_or_break_the_line() {
        let src: IpAddr = "192.0.2.7".parse().unwrap();
        let line = auth_failure_line(
            AuthFailure::Login,
            src,
            &[
                (
                    "uid",
                    "x src=10.0.0.1\nAUTH_FAILURE kind=login src=10.0.0.2",
                ),
                ("e", ""),
            ],
        );
        assert_eq!(line.matches("src=").count(), 1, "{line}");
        assert!(!line.contains('\n'), "{line}");
        assert!(line.ends_with(" e=-"), "{line}");
        let long = "a".repeat(500);
        let line = auth_failure_line(AuthFailure::Login, src, &[("uid", &long)]);
        assert!(line.len() < 120, "{line}");
    }
}
