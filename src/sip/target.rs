//! Which web user an incoming INVITE is for, from what a PBX actually sends (sans-IO).
//!
//! FreeSWITCH with SRProxy's dialplan (`^0(.+)$` → `sip_h_X-Number=<sip:$1@${domain_name}>`,
//! then `bridge user/1000@…`) rewrites the Request-URI and To to the proxy account's contact, so
//! the target is only in the header, as a name-addr. Other PBXs put a bare user or a URI there,
//! or leave the dialled `0<id>` in the Request-URI. [`resolve`] takes them in that order.

/// Why no web user can be taken from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unresolved {
    /// The number is incomplete: an empty user, or the dial prefix alone (484).
    Incomplete,
    /// Nobody by that name can exist here: not dialled with our prefix, too long, control
    /// characters, bad percent-encoding, a scheme we do not know (404).
    NotFound,
}

impl Unresolved {
    /// The SIP final response for it.
    pub(crate) fn status(self) -> (u16, &'static str) {
        match self {
            Unresolved::Incomplete => (484, "Address Incomplete"),
            Unresolved::NotFound => (404, "Not Found"),
        }
    }
}

/// The raw parts of the request the target can come from (not yet decoded).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TargetSources<'a> {
    /// Value of the configured target header (`[sip] target_header`, default `X-Number`).
    pub header: Option<&'a str>,
    /// Request-URI user part.
    pub ruri_user: Option<&'a str>,
    /// To URI user part.
    pub to_user: Option<&'a str>,
}

/// Longest web user id the hub can have.
const MAX_UID_BYTES: usize = 128;

/// The web user id: the target header's user when the header is there and not blank, else the
/// Request-URI user without `dial_prefix`, else the To user without it.
pub(crate) fn resolve(
    sources: &TargetSources<'_>,
    dial_prefix: &str,
) -> Result<String, Unresolved> {
    if let Some(value) = sources.header.map(str::trim).filter(|v| !v.is_empty()) {
        return header_user(value);
    }
    let from_ruri = dialled(sources.ruri_user, dial_prefix);
    let dialled = match from_ruri {
        Dialled::Absent | Dialled::NotOurs => match dialled(sources.to_user, dial_prefix) {
            Dialled::Absent if from_ruri == Dialled::Absent => return Err(Unresolved::Incomplete),
            Dialled::Absent => return Err(Unresolved::NotFound),
            other => other,
        },
        other => other,
    };
    match dialled {
        Dialled::Uid(uid) => Ok(uid),
        Dialled::PrefixOnly => Err(Unresolved::Incomplete),
        Dialled::Bad(why) => Err(why),
        Dialled::Absent | Dialled::NotOurs => Err(Unresolved::NotFound),
    }
}

/// The user named by a target header: `alice`, `sip:alice@host`, `sips:…`, `tel:…`, or a
/// name-addr with parameters (`"Alice" <sip:alice@host;user=phone>;x=y`).
pub(crate) fn header_user(value: &str) -> Result<String, Unresolved> {
    let value = value.trim();
    let uri = match angle_bracketed(value)? {
        Some(inner) => {
            let inner = inner.trim();
            if scheme_rest(inner).is_none() {
                return Err(Unresolved::NotFound);
            }
            inner
        }
        None => value,
    };
    let raw_user = match scheme_rest(uri) {
        Some((Scheme::Tel, rest)) => until_any(rest, &[';', '?']),
        Some((Scheme::Sip, rest)) => match rest.split_once('@') {
            Some((userinfo, _host)) => until_any(userinfo, &[':', ';']),
            // `sip:host`: a URI without a user names nobody
            None => "",
        },
        // a bare user, possibly with a host (`alice@host`)
        None => until_any(uri, &['@']),
    };
    web_uid(raw_user)
}

/// A user part made into a web user id: percent-decoded, trimmed, short and printable.
fn web_uid(raw: &str) -> Result<String, Unresolved> {
    let decoded = percent_decode(raw).ok_or(Unresolved::NotFound)?;
    let uid = decoded.trim();
    if uid.is_empty() {
        return Err(Unresolved::Incomplete);
    }
    if uid.len() > MAX_UID_BYTES || uid.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Unresolved::NotFound);
    }
    Ok(uid.to_string())
}

/// What a Request-URI or To user says about the dialled web user.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Dialled {
    Uid(String),
    /// Only the prefix was dialled.
    PrefixOnly,
    /// No user (or a blank one).
    Absent,
    /// Not dialled with our prefix (e.g. `1000`, the proxy account FreeSWITCH rewrites to).
    NotOurs,
    Bad(Unresolved),
}

fn dialled(user: Option<&str>, dial_prefix: &str) -> Dialled {
    let Some(raw) = user.map(str::trim).filter(|u| !u.is_empty()) else {
        return Dialled::Absent;
    };
    let Some(decoded) = percent_decode(raw) else {
        return Dialled::Bad(Unresolved::NotFound);
    };
    let Some(rest) = decoded.trim().strip_prefix(dial_prefix) else {
        return Dialled::NotOurs;
    };
    if rest.trim().is_empty() {
        return Dialled::PrefixOnly;
    }
    match web_uid(rest) {
        Ok(uid) => Dialled::Uid(uid),
        Err(why) => Dialled::Bad(why),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Sip,
    Tel,
}

/// `sip:`/`sips:`/`tel:` (any case) and what follows it.
fn scheme_rest(uri: &str) -> Option<(Scheme, &str)> {
    let (scheme, rest) = uri.split_once(':')?;
    if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
        Some((Scheme::Sip, rest))
    } else if scheme.eq_ignore_ascii_case("tel") {
        Some((Scheme::Tel, rest))
    } else {
        None
    }
}

/// The text between `<` and `>` of a name-addr (after an optional quoted display name), `None`
/// when the value has no `<`; an unclosed bracket or quote is no address.
fn angle_bracketed(value: &str) -> Result<Option<&str>, Unresolved> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in value.char_indices() {
        if in_quotes {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_quotes = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_quotes = true,
            '<' => {
                let rest = &value[i + 1..];
                return match rest.find('>') {
                    Some(end) => Ok(Some(&rest[..end])),
                    None => Err(Unresolved::NotFound),
                };
            }
            _ => {}
        }
    }
    if in_quotes {
        return Err(Unresolved::NotFound);
    }
    Ok(None)
}

fn until_any<'a>(text: &'a str, stops: &[char]) -> &'a str {
    text.split(|c| stops.contains(&c)).next().unwrap_or("")
}

/// RFC 3986 percent-decoding to UTF-8; `None` for a `%` without two hex digits or bytes that are
/// not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            // from_str_radix alone would take a sign: `%+1`
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(value: &str) -> Result<String, Unresolved> {
        resolve(
            &TargetSources {
                header: Some(value),
                ruri_user: Some("1000"),
                to_user: Some("1000"),
            },
            "0",
        )
    }

    fn ok(uid: &str) -> Result<String, Unresolved> {
        Ok(uid.to_string())
    }

    #[test]
    fn every_form_a_pbx_sends_names_the_user() {
        for (value, uid) in [
            ("alice", "alice"),
            ("  alice  ", "alice"),
            ("alice@127.0.0.1", "alice"),
            ("sip:alice@127.0.0.1", "alice"),
            ("SIP:alice@pbx.example.com:5060;transport=tcp", "alice"),
            ("sips:alice@pbx.example.com", "alice"),
            ("sip:alice:secret@host", "alice"),
            ("tel:+4930123456", "+4930123456"),
            ("tel:+4930123456;phone-context=example.com", "+4930123456"),
            ("<sip:alice@127.0.0.1>", "alice"),
            ("<sip:alice@127.0.0.1:5400>", "alice"),
            ("\"Alice\" <sip:alice@host;user=phone>;x=y", "alice"),
            ("\"Smith, <Alice>\" <sip:alice@host>", "alice"),
            ("Alice <sips:alice@host?subject=hi>", "alice"),
            ("<tel:+4930123456>", "+4930123456"),
            ("< sip:alice@host >", "alice"),
            ("sip:%61lice@host", "alice"),
            ("<sip:j%C3%BCrgen@host>", "jürgen"),
            ("sip:%20alice%20@host", "alice"),
            ("bob.smith-2", "bob.smith-2"),
        ] {
            assert_eq!(header(value), ok(uid), "{value:?}");
        }
    }

    #[test]
    fn the_freeswitch_trace_reaches_alice() {
        // SRProxy's dialplan on FreeSWITCH 1.10: R-URI and To are 1000's contact.
        let sources = TargetSources {
            header: Some("<sip:alice@127.0.0.1>"),
            ruri_user: Some("1000"),
            to_user: Some("1000"),
        };
        assert_eq!(resolve(&sources, "0"), ok("alice"));
    }

    #[test]
    fn bad_header_forms_are_refused_never_panic() {
        let long = "a".repeat(300);
        let long_uri = format!("<sip:{long}@host>");
        for (value, why) in [
            ("<sip:@host>", Unresolved::Incomplete),
            ("sip:@host", Unresolved::Incomplete),
            ("sip:host", Unresolved::Incomplete),
            ("<sip:%20@host>", Unresolved::Incomplete),
            ("\"Alice\" <>", Unresolved::NotFound),
            ("<sip:alice@host", Unresolved::NotFound),
            ("\"Alice <sip:alice@host>", Unresolved::NotFound),
            ("<http://example.com/alice>", Unresolved::NotFound),
            ("<alice>", Unresolved::NotFound),
            (long.as_str(), Unresolved::NotFound),
            (long_uri.as_str(), Unresolved::NotFound),
            ("al\u{7}ice", Unresolved::NotFound),
            ("<sip:al%00ice@host>", Unresolved::NotFound),
            ("<sip:al%0d%0aice@host>", Unresolved::NotFound),
            ("<sip:a%2@host>", Unresolved::NotFound),
            ("<sip:a%zzb@host>", Unresolved::NotFound),
            ("sip:a%@host", Unresolved::NotFound),
            ("<sip:%ff%fe@host>", Unresolved::NotFound),
            ("a b", Unresolved::NotFound),
            ("sip:%C3@host", Unresolved::NotFound),
        ] {
            assert_eq!(header(value), Err(why), "{value:?}");
        }
        // odd inputs of every kind: an answer, never a panic
        for value in [
            "<",
            ">",
            "\"",
            "\\",
            "<>",
            "%",
            "sip:",
            "tel:",
            ":",
            "@",
            "é<é>é",
            "<sip:€@x>",
        ] {
            let _ = header(value);
        }
    }

    #[test]
    fn without_a_header_the_request_uri_then_the_to_user_is_used() {
        let uid = |header, ruri, to, prefix| {
            resolve(
                &TargetSources {
                    header,
                    ruri_user: ruri,
                    to_user: to,
                },
                prefix,
            )
        };
        assert_eq!(uid(None, Some("0alice"), Some("0alice"), "0"), ok("alice"));
        assert_eq!(
            uid(Some("   "), Some("0bob"), None, "0"),
            ok("bob"),
            "blank header"
        );
        assert_eq!(
            uid(None, Some("1000"), Some("0carol"), "0"),
            ok("carol"),
            "To"
        );
        assert_eq!(uid(None, None, Some("0carol"), "0"), ok("carol"), "To only");
        assert_eq!(uid(None, Some("0%64ave"), None, "0"), ok("dave"), "decoded");
        assert_eq!(
            uid(None, Some("bob"), None, ""),
            ok("bob"),
            "no prefix configured"
        );
        assert_eq!(
            uid(None, Some("99erin"), None, "99"),
            ok("erin"),
            "longer prefix"
        );
    }

    #[test]
    fn without_a_header_bad_or_foreign_users_are_refused() {
        let uid = |ruri, to| {
            resolve(
                &TargetSources {
                    header: None,
                    ruri_user: ruri,
                    to_user: to,
                },
                "0",
            )
        };
        // FreeSWITCH without X-Number: nothing dialled with the prefix is left
        assert_eq!(uid(Some("1000"), Some("1000")), Err(Unresolved::NotFound));
        assert_eq!(uid(Some("1234"), None), Err(Unresolved::NotFound));
        assert_eq!(uid(None, None), Err(Unresolved::Incomplete));
        assert_eq!(uid(Some("0"), None), Err(Unresolved::Incomplete));
        assert_eq!(uid(Some("1000"), Some("0")), Err(Unresolved::Incomplete));
        assert_eq!(uid(Some("0a%zz"), None), Err(Unresolved::NotFound));
        assert_eq!(uid(Some("%zz"), None), Err(Unresolved::NotFound));
        assert_eq!(uid(Some("0a%01b"), None), Err(Unresolved::NotFound));
        let long = format!("0{}", "b".repeat(300));
        assert_eq!(uid(Some(&long), None), Err(Unresolved::NotFound));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%41%2b"), Some("aA+".into()));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%+1"), None);
        assert_eq!(percent_decode("%e2%82%ac"), Some("€".into()));
        assert_eq!(percent_decode("%e2%82"), None);
    }
}
