//! Masks credentials in formatted log text, so that no level (not even 0 SENSITIVE, which
//! logs whole SIP messages and JSON bodies) ever writes a password or token to a log.
//!
//! The config's `Secret` type already prints `***`; this is the second line of defence for
//! values that arrive from the network or are formatted by code that does not know they are
//! secret. It runs on every formatted event (never on the media path) and understands:
//!
//! * headers `Authorization:` / `Proxy-Authorization:` (SIP or HTTP): the value up to the end
//!   of the line (a real newline or an escaped `\r`/`\n` in Debug output);
//! * any key whose name contains `token`, `password`, `passwd`, `pwd`, `secret`,
//!   `credential`, `apikey`/`api_key`/`api-key` followed by `:` or `=`: JSON (`"token":"x"`,
//!   also escaped `\"token\":\"x\"`), tracing fields (`token=x`), query strings, INI lines;
//! * `Bearer <token>` anywhere;
//! * `Cookie:` / `Set-Cookie:` header values (an admin or session token may ride in a cookie);
//! * hex (`0x7b22…`), base64 and `[123, 34, …]` byte-array spans whose decoded bytes mention any
//!   of the keys above (a WebSocket frame dump carrying a login token): the whole span is masked.

use std::borrow::Cow;

/// What a masked value is replaced with (same as `Secret`'s Display).
pub const MASK: &str = "***";

const KEYWORDS: &[&str] = &[
    "token",
    "password",
    "passwd",
    "pwd",
    "secret",
    "credential",
    "authorization",
    "apikey",
    "api_key",
    "api-key",
    "cookie",
    "bearer",
];

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Returns `text` with every credential value replaced by [`MASK`]; borrows when nothing
/// needed masking (the common case).
pub fn redact(text: &str) -> Cow<'_, str> {
    let masked = redact_text(text);
    let spans = super::encoded::secret_spans(&masked, &mentions_secret);
    if spans.is_empty() {
        return masked;
    }
    let mut out = String::with_capacity(masked.len());
    let mut copied = 0;
    for (from, to) in spans {
        out.push_str(&masked[copied..from]);
        out.push_str(MASK);
        copied = to;
    }
    out.push_str(&masked[copied..]);
    Cow::Owned(out)
}

/// Whether decoded bytes (as text) name a credential: such a span is masked whole.
fn mentions_secret(decoded: &str) -> bool {
    let lower = decoded.to_ascii_lowercase();
    KEYWORDS.iter().any(|k| lower.contains(k))
}

/// The text rules: keys, headers and `Bearer`.
fn redact_text(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0; // bytes of `text` already copied into `out`
    let mut i = 0;
    while i < bytes.len() {
        if !is_ident(bytes[i]) || (i > 0 && is_ident(bytes[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_ident(bytes[i]) {
            i += 1;
        }
        let ident = text[start..i].to_ascii_lowercase();
        let span = if ident == "bearer" {
            bearer_value(bytes, i)
        } else if KEYWORDS.iter().any(|k| ident.contains(k)) {
            let whole_line = ident.contains("authorization") || ident.contains("cookie");
            keyed_value(bytes, i, whole_line)
        } else {
            None
        };
        if let Some((from, to)) = span {
            let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
            o.push_str(&text[copied..from]);
            o.push_str(MASK);
            copied = to;
            i = to;
        }
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut o) => {
            o.push_str(&text[copied..]);
            Cow::Owned(o)
        }
    }
}

/// `Bearer   abc.def` → the span of `abc.def`.
fn bearer_value(b: &[u8], mut i: usize) -> Option<(usize, usize)> {
    let spaces = i;
    while i < b.len() && b[i] == b' ' {
        i += 1;
    }
    if i == spaces {
        return None;
    }
    let from = i;
    while i < b.len() && !b[i].is_ascii_whitespace() && !matches!(b[i], b'"' | b'\\' | b',') {
        i += 1;
    }
    (i > from).then_some((from, i))
}

/// After a sensitive key: skips a closing quote (`"` or `\"`), spaces and `:`/`=`, then
/// finds the value's span.
fn keyed_value(b: &[u8], mut i: usize, to_line_end: bool) -> Option<(usize, usize)> {
    if b.get(i) == Some(&b'\\') && b.get(i + 1) == Some(&b'"') {
        i += 2;
    } else if b.get(i) == Some(&b'"') {
        i += 1;
    }
    while b.get(i) == Some(&b' ') {
        i += 1;
    }
    if !matches!(b.get(i), Some(b':' | b'=')) {
        return None;
    }
    i += 1;
    while b.get(i) == Some(&b' ') {
        i += 1;
    }
    let from = i;
    let to = if b.get(i) == Some(&b'\\') && b.get(i + 1) == Some(&b'"') {
        // escaped quoted value (Debug of a JSON string): up to the next \"
        let inner = i + 2;
        let mut j = inner;
        while j < b.len() && !(b[j] == b'\\' && b.get(j + 1) == Some(&b'"')) {
            j += 1;
        }
        return (j > inner).then_some((inner, j));
    } else if b.get(i) == Some(&b'"') {
        let inner = i + 1;
        let mut j = inner;
        while j < b.len() && b[j] != b'"' {
            if b[j] == b'\\' {
                j += 1;
            }
            j += 1;
        }
        let j = j.min(b.len());
        return (j > inner).then_some((inner, j));
    } else if to_line_end {
        let mut j = i;
        while j < b.len()
            && b[j] != b'\r'
            && b[j] != b'\n'
            && !(b[j] == b'\\' && matches!(b.get(j + 1), Some(b'r' | b'n')))
        {
            j += 1;
        }
        j
    } else {
        let mut j = i;
        while j < b.len()
            && !b[j].is_ascii_whitespace()
            && !matches!(b[j], b',' | b';' | b'&' | b'}' | b']' | b')' | b'"' | b'\\')
        {
            j += 1;
        }
        j
    };
    (to > from).then_some((from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> String {
        redact(s).into_owned()
    }

    #[test]
    fn sip_authorization_headers_masked_to_line_end() {
        let msg = "REGISTER sip:pbx SIP/2.0\r\nAuthorization: Digest username=\"1000\", \
                   response=\"0123abcd\"\r\nProxy-Authorization: Digest response=\"ffee\"\r\n\
                   Via: SIP/2.0/UDP 127.0.0.1\r\n";
        let out = r(msg);
        assert!(!out.contains("0123abcd") && !out.contains("ffee"), "{out}");
        assert!(out.contains("Authorization: ***\r\n"), "{out}");
        assert!(out.contains("Proxy-Authorization: ***\r\n"), "{out}");
        assert!(out.contains("Via: SIP/2.0/UDP 127.0.0.1"), "{out}");
    }

    #[test]
    fn debug_escaped_sip_message_masked_to_escaped_newline() {
        let out =
            r(r#"msg="INVITE x\r\nauthorization: Digest response=\"beef\"\r\nTo: <sip:1005>""#);
        assert!(!out.contains("beef"), "{out}");
        assert!(
            out.contains(r"authorization: ***\r\nTo: <sip:1005>"),
            "{out}"
        );
    }

    #[test]
    fn json_and_escaped_json_tokens_masked() {
        let out = r(r#"{"Cmd":"Login","token":"s3cr3t","UserId":"alice"}"#);
        assert_eq!(out, r#"{"Cmd":"Login","token":"***","UserId":"alice"}"#);
        let out = r(r#"body="{\"Token\": \"s3cr3t\", \"x\":1}""#);
        assert_eq!(out, r#"body="{\"Token\": \"***\", \"x\":1}""#);
        let out = r(r#"{"sip_pwd": "1234", "admin_token":"t"}"#);
        assert_eq!(out, r#"{"sip_pwd": "***", "admin_token":"***"}"#);
    }

    #[test]
    fn sdp_ice_password_masked() {
        let sdp = "v=0\r\na=ice-ufrag:F7gI\r\na=ice-pwd:x9cml/YzichV2+XlhiMu8g\r\na=fingerprint:sha-256 AB:CD\r\n";
        let out = r(sdp);
        assert!(!out.contains("x9cml"), "{out}");
        assert!(out.contains("a=ice-pwd:***\r\n"), "{out}");
        assert!(
            out.contains("a=ice-ufrag:F7gI") && out.contains("sha-256 AB:CD"),
            "{out}"
        );
    }

    #[test]
    fn fields_queries_and_bearer_masked() {
        assert_eq!(r("login token=abc user=bob"), "login token=*** user=bob");
        assert_eq!(
            r("GET /ws?user=a&token=xyz&x=1"),
            "GET /ws?user=a&token=***&x=1"
        );
        assert_eq!(
            r(r#"headers={"authorization": "Bearer abc", "host": "h"}"#),
            r#"headers={"authorization": "***", "host": "h"}"#
        );
        assert_eq!(r("sent Bearer abc.def to"), "sent Bearer *** to");
        assert_eq!(r("password = hunter2"), "password = ***");
    }

    #[test]
    fn innocent_text_untouched_and_borrowed() {
        for s in [
            "call_id=abc state=answered from=alice",
            "login refused: bad token",
            "tokenless",
            "Authorization",
            "token=",
            "",
            "ünïcode token: ✓ done",
        ] {
            let out = redact(s);
            if s.starts_with("ünï") {
                assert_eq!(out, "ünïcode token: *** done");
            } else {
                assert!(matches!(out, Cow::Borrowed(_)), "{s:?} -> {out:?}");
            }
        }
    }

    #[test]
    fn cookie_headers_masked_whole() {
        let out = r("GET / HTTP/1.1\r\nCookie: sid=adm-Z9k2; theme=dark\r\nHost: h\r\n");
        assert_eq!(out, "GET / HTTP/1.1\r\nCookie: ***\r\nHost: h\r\n");
        let out = r(r#"headers={"cookie": "admin=adm-Z9k2", "host": "h"}"#);
        assert_eq!(out, r#"headers={"cookie": "***", "host": "h"}"#);
        assert_eq!(r("set-cookie: a=b\n"), "set-cookie: ***\n");
    }

    #[test]
    fn hex_and_base64_frames_with_secrets_masked_whole() {
        use base64::Engine;
        let frame = r#"{"type":"login","uid":"alice","token":"1900000000:ab12"}"#;
        let hex = hex::encode(frame);
        let out = r(&format!("received frame payload: 0x{hex} done"));
        assert_eq!(out, "received frame payload: *** done");
        let b64 = base64::engine::general_purpose::STANDARD.encode("a=ice-pwd:x9cml/YzichV2");
        assert_eq!(r(&format!("sdp {b64}")), "sdp ***");
        // A harmless frame stays readable (and borrowed).
        let harmless = format!("payload: 0x{}", hex::encode(r#"{"type":"ping","id":1}"#));
        assert!(matches!(redact(&harmless), Cow::Borrowed(_)));
    }

    #[test]
    fn unterminated_quotes_mask_to_end() {
        assert_eq!(r(r#"{"token":"abc"#), r#"{"token":"***"#);
        assert_eq!(r(r#"x \"pwd\":\"abc"#), r#"x \"pwd\":\"***"#);
    }
}
