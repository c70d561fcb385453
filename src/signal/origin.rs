//! Which web pages may open the hub's WebSocket (`[http] allowed_origins`).
//!
//! Browsers send `Origin` on every WebSocket upgrade and a page cannot forge it, so checking it
//! stops a page from another site (`evil.example`) logging in through a visitor's browser. The
//! bridge's own origin (the `Origin` whose host and port are the request's `Host`) is always
//! allowed, configured origins too, any origin only when `*` is configured. A request without
//! `Origin` does not come from a browser page (native apps, scripts, `wscat`) and is allowed:
//! tokens, not the Origin check, are what restricts such clients.

use std::fmt;

/// One `[http] allowed_origins` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigin {
    /// `*`: any page.
    Any,
    /// `scheme://host[:port]`.
    Exact(Origin),
}

/// A web origin: scheme, lower-case host, port (the scheme's default when not written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

impl fmt::Display for AllowedOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowedOrigin::Any => f.write_str("*"),
            AllowedOrigin::Exact(origin) => origin.fmt(f),
        }
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// `host[:port]` (IPv6 in brackets) → lower-case host and optional port.
fn split_authority(authority: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{authority:?}: unclosed ["))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("{authority:?}: bad port"))?,
            ),
        };
        (format!("[{host}]"), port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', ' ', '?', '#']) {
        return Err(format!("{authority:?}: not a host"));
    }
    let port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("{authority:?}: bad port"))?,
        ),
        None => None,
    };
    Ok((host.to_ascii_lowercase(), port))
}

/// Parses an `Origin` header value or config entry: `http(s)://host[:port]`, nothing after.
pub fn parse_origin(text: &str) -> Result<Origin, String> {
    let (scheme, rest) = text
        .split_once("://")
        .ok_or_else(|| format!("{text:?} is not scheme://host[:port]"))?;
    let scheme = scheme.to_ascii_lowercase();
    let default = default_port(&scheme)
        .ok_or_else(|| format!("{text:?}: the scheme must be http or https"))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = split_authority(authority)?;
    Ok(Origin {
        scheme,
        host,
        port: port.unwrap_or(default),
    })
}

/// Parses one `[http] allowed_origins` entry (`*` or an origin).
pub fn parse_allowed_origin(text: &str) -> Result<AllowedOrigin, String> {
    if text == "*" {
        return Ok(AllowedOrigin::Any);
    }
    parse_origin(text).map(AllowedOrigin::Exact)
}

/// Whether a WebSocket upgrade with these `Origin` and `Host` headers may proceed.
pub fn origin_allowed(origin: Option<&str>, host: Option<&str>, allowed: &[AllowedOrigin]) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    if allowed.contains(&AllowedOrigin::Any) {
        return true;
    }
    let Ok(origin) = parse_origin(origin) else {
        // "null" (sandboxed frames, file:) and anything unreadable.
        return false;
    };
    let own = host
        .and_then(|h| split_authority(h).ok())
        .is_some_and(|(host, port)| {
            host == origin.host && port.unwrap_or(origin.port) == origin.port
        });
    own || allowed.contains(&AllowedOrigin::Exact(origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(list: &[&str]) -> Vec<AllowedOrigin> {
        list.iter()
            .map(|s| parse_allowed_origin(s).unwrap())
            .collect()
    }

    #[test]
    fn own_origin_is_allowed_by_default() {
        let none = allowed(&[]);
        let ok = |origin, host| origin_allowed(Some(origin), Some(host), &none);
        assert!(ok("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(ok("https://Bridge.Example", "bridge.example"));
        assert!(ok("https://bridge.example", "bridge.example:443"));
        assert!(ok("http://[::1]:8080", "[::1]:8080"));
        assert!(!ok("http://evil.example", "bridge.example"));
        assert!(!ok("http://bridge.example:8081", "bridge.example:8080"));
        assert!(!ok("https://bridge.example", "bridge.example:8080"));
        assert!(!ok("null", "bridge.example"));
        assert!(!ok("garbage", "bridge.example"));
        assert!(
            !origin_allowed(Some("http://a.example"), None, &none),
            "no Host: only configured origins"
        );
    }

    #[test]
    fn configured_and_wildcard_origins() {
        let list = allowed(&["https://app.example.com", "http://localhost:3000/"]);
        let ok = |origin| origin_allowed(Some(origin), Some("bridge:8080"), &list);
        assert!(ok("https://app.example.com"));
        assert!(ok("https://APP.example.com:443"));
        assert!(ok("http://localhost:3000"));
        assert!(!ok("http://app.example.com"), "scheme matters");
        assert!(!ok("http://localhost:3001"));
        let any = allowed(&["*"]);
        assert!(origin_allowed(Some("http://evil.example"), Some("b"), &any));
        assert!(origin_allowed(Some("null"), Some("b"), &any));
    }

    #[test]
    fn missing_origin_is_a_non_browser_client_and_allowed() {
        assert!(origin_allowed(None, Some("bridge:8080"), &[]));
    }

    #[test]
    fn bad_config_entries_are_explained() {
        for (bad, needle) in [
            ("app.example.com", "scheme://"),
            ("ftp://x", "http or https"),
            ("https://x/path", "not a host"),
            ("https://x:0", "bad port"),
            ("https://x:99999", "bad port"),
            ("https://", "not a host"),
            ("https://[::1", "unclosed"),
        ] {
            let e = parse_allowed_origin(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }
}
