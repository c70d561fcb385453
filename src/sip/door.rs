//! The SIP door (sans-IO): every request is checked here, on its raw bytes, before rsipstack's
//! transaction and dialog layers see it (RFC 3261 §8.2 and §18.3). A bad request is answered
//! statelessly (400, 403, 405, 501, 505, 513) and goes no further; one that cannot be answered
//! (no Via) is dropped. Keep-alives and the peers' responses pass untouched; responses from anyone
//! else are dropped.
//!
//! Order of the checks: size, framing and start line, header lines, the mandatory headers, then
//! the sender (only the configured PBXs and `allowed_peers` may send requests, in or out of a dialog: SPEC §6),
//! then the method.

use std::net::IpAddr;

use rsipstack::sip::prelude::{HeadersExt, ToTypedHeader};
use rsipstack::sip::{Method, SipMessage, Uri};

use super::inbound::PeerPolicy;
use crate::ops::metrics::ErrorKind;

/// Methods the bridge handles; sent in `Allow`.
pub(crate) const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE";
const SUPPORTED: [Method; 7] = [
    Method::Invite,
    Method::Ack,
    Method::Cancel,
    Method::Bye,
    Method::Options,
    Method::Info,
    Method::Update,
];

/// What to do with one incoming message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Hand it to the stack (a good request, a response or a keep-alive).
    Pass,
    /// Answer `code` (built by [`Rejection::response`]) and drop it.
    Reject(Rejection),
    /// Drop it without an answer (no Via to answer to, or an ACK).
    Drop {
        /// The `srbridge_errors_total` kind.
        kind: ErrorKind,
        /// Why, for the log.
        why: &'static str,
        /// The request's method token as sent, `-` if none (for the log).
        method: String,
    },
}

/// A request refused with a status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    /// Status code of the answer.
    pub code: u16,
    /// Its reason phrase.
    pub reason: &'static str,
    /// The `srbridge_errors_total` kind.
    pub kind: ErrorKind,
    /// Why, for the log.
    pub why: &'static str,
    /// The request's method token as sent (for the log).
    pub method: String,
    /// The headers the answer copies (Via, From, To, Call-ID, CSeq), as sent.
    echo: Vec<(String, String)>,
}

/// Checks one message of `raw.len()` bytes from `source`; `max_len` is the most the transport
/// takes (larger is 513).
pub(crate) fn check(raw: &[u8], max_len: usize, source: IpAddr, peers: &PeerPolicy) -> Verdict {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Verdict::Pass;
    }
    let head = Head::parse(raw);
    if raw.starts_with(b"SIP/") {
        // we only send requests to the PBX and the PSTN gateway: a response from anyone else is
        // forged (it could answer or fail our INVITE)
        if !peers.allows(source) {
            return Verdict::Drop {
                kind: ErrorKind::SipPeerRefused,
                why: "response from a stranger",
                method: "response".to_string(),
            };
        }
        return Verdict::Pass;
    }
    let reject = |code, reason, kind, why| head.reject(code, reason, kind, why);
    if raw.len() > max_len {
        return reject(513, "Message Too Large", ErrorKind::SipOversize, "oversize");
    }
    let Some(head_end) = head.end else {
        return reject(400, "Bad Request", ErrorKind::SipParse, "no end of headers");
    };
    if let Some(why) = head.flaw {
        return reject(400, "Bad Request", ErrorKind::SipParse, why);
    }
    let Some((method, uri, version)) = head.request_line() else {
        return reject(400, "Bad Request", ErrorKind::SipParse, "bad request line");
    };
    if version != "SIP/2.0" {
        return if version.starts_with("SIP/") {
            reject(
                505,
                "Version Not Supported",
                ErrorKind::SipParse,
                "SIP version",
            )
        } else {
            reject(400, "Bad Request", ErrorKind::SipParse, "bad request line")
        };
    }
    if method.is_empty() || !method.bytes().all(is_token_char) {
        return reject(400, "Bad Request", ErrorKind::SipParse, "bad method token");
    }
    for name in ["from", "to", "call-id", "cseq"] {
        match head.count(name) {
            0 => return reject(400, "Bad Request", ErrorKind::SipParse, "missing header"),
            1 => {}
            _ => return reject(400, "Bad Request", ErrorKind::SipParse, "repeated header"),
        }
    }
    match head.value("cseq").and_then(parse_cseq) {
        None => return reject(400, "Bad Request", ErrorKind::SipParse, "bad CSeq"),
        Some((_, m)) if m != method => {
            return reject(400, "Bad Request", ErrorKind::SipParse, "CSeq method")
        }
        Some(_) => {}
    }
    if head.count("content-length") > 1 {
        return reject(400, "Bad Request", ErrorKind::SipParse, "repeated header");
    }
    if let Some(value) = head.value("content-length") {
        let body = raw.len() - head_end;
        match parse_digits(value) {
            None => {
                return reject(
                    400,
                    "Bad Request",
                    ErrorKind::SipParse,
                    "bad Content-Length",
                )
            }
            Some(len) if len > body => {
                return reject(
                    400,
                    "Bad Request",
                    ErrorKind::SipParse,
                    "Content-Length too big",
                )
            }
            Some(_) => {}
        }
    }
    if head.count("max-forwards") > 1
        || head
            .value("max-forwards")
            .is_some_and(|v| parse_digits(v).is_none_or(|n| n > 255))
    {
        return reject(400, "Bad Request", ErrorKind::SipParse, "bad Max-Forwards");
    }
    if Uri::try_from(uri).is_err() {
        return reject(400, "Bad Request", ErrorKind::SipParse, "bad Request-URI");
    }
    if !peers.allows(source) {
        return reject(
            403,
            "Forbidden",
            ErrorKind::SipPeerRefused,
            "peer not allowed",
        );
    }
    // methods are case-sensitive (RFC 3261 §7.1): `invite` is not INVITE
    match Method::all().into_iter().find(|m| m.to_string() == method) {
        None => {
            return reject(
                501,
                "Not Implemented",
                ErrorKind::SipMethod,
                "unknown method",
            )
        }
        Some(m) if !SUPPORTED.contains(&m) => {
            return reject(
                405,
                "Method Not Allowed",
                ErrorKind::SipMethod,
                "method not allowed",
            )
        }
        Some(_) => {}
    }
    if !stack_parses(raw) {
        return reject(400, "Bad Request", ErrorKind::SipParse, "unparsable header");
    }
    Verdict::Pass
}

/// What rsipstack will need from the request parses: the message, Via, From, To, CSeq.
fn stack_parses(raw: &[u8]) -> bool {
    let Ok(SipMessage::Request(req)) = SipMessage::try_from(raw) else {
        return false;
    };
    req.via_header().is_ok_and(|v| v.typed().is_ok())
        && req.from_header().is_ok_and(|h| h.typed().is_ok())
        && req.to_header().is_ok_and(|h| h.typed().is_ok())
        && req.cseq_header().is_ok_and(|h| h.typed().is_ok())
        && req.call_id_header().is_ok()
}

impl Rejection {
    /// The stateless answer (RFC 3261 §8.2.6): the request's Via, From, To (with a tag added
    /// when it has none), Call-ID and CSeq, `Allow` on 405/501, `Server: server`.
    pub(crate) fn response(&self, server: &str) -> Vec<u8> {
        let mut out = format!("SIP/2.0 {} {}\r\n", self.code, self.reason);
        for (name, value) in &self.echo {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            if name == "To" && !has_tag(value) {
                out.push_str(";tag=");
                out.push_str(&to_tag(&self.echo));
            }
            out.push_str("\r\n");
        }
        if matches!(self.code, 405 | 501) {
            out.push_str("Allow: ");
            out.push_str(ALLOW);
            out.push_str("\r\n");
        }
        if !server.is_empty() {
            out.push_str("Server: ");
            out.push_str(server);
            out.push_str("\r\n");
        }
        out.push_str("Content-Length: 0\r\n\r\n");
        out.into_bytes()
    }
}

/// The header section of a message, split into logical lines (folds joined).
struct Head {
    start: String,
    /// `(lower-case full name, name as sent, value)`.
    headers: Vec<(String, String, String)>,
    /// Offset of the body (after the blank line), if the header section ends.
    end: Option<usize>,
    /// The first structural flaw found in the header lines.
    flaw: Option<&'static str>,
}

impl Head {
    fn parse(raw: &[u8]) -> Head {
        let (section, end) = match find(raw, b"\r\n\r\n") {
            Some(i) => (&raw[..i], Some(i + 4)),
            None => (raw, None),
        };
        let (text, mut flaw) = match std::str::from_utf8(section) {
            Ok(t) => (std::borrow::Cow::Borrowed(t), None),
            Err(_) => (
                String::from_utf8_lossy(section),
                Some("header section is not UTF-8"),
            ),
        };
        let mut lines = text.split("\r\n");
        let start = lines.next().unwrap_or_default().to_string();
        let mut headers: Vec<(String, String, String)> = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t']) {
                match headers.last_mut() {
                    Some((_, _, value)) => {
                        value.push(' ');
                        value.push_str(line.trim());
                    }
                    None => {
                        flaw.get_or_insert("continuation without a header");
                    }
                }
                continue;
            }
            let Some((name, value)) = line.split_once(':') else {
                flaw.get_or_insert("header line without a colon");
                continue;
            };
            let name = name.trim_end_matches([' ', '\t']);
            if name.is_empty() || !name.bytes().all(is_token_char) {
                flaw.get_or_insert("bad header name");
                continue;
            }
            if line.contains(['\r', '\n', '\0']) {
                flaw.get_or_insert("control character in a header");
            }
            headers.push((full_name(name), name.to_string(), value.trim().to_string()));
        }
        Head {
            start,
            headers,
            end,
            flaw,
        }
    }

    fn count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _, _)| n == name).count()
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, v)| v.as_str())
    }

    /// `(method, Request-URI, version)`: exactly three parts separated by single spaces.
    fn request_line(&self) -> Option<(&str, &str, &str)> {
        let mut parts = self.start.split(' ');
        let (method, uri, version) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || uri.is_empty() {
            return None;
        }
        Some((method, uri, version))
    }

    /// The request's method token as sent (for logs), if the start line has one.
    fn method(&self) -> String {
        self.start
            .split(' ')
            .next()
            .filter(|m| !m.is_empty() && m.len() <= 32 && m.bytes().all(is_token_char))
            .unwrap_or("-")
            .to_string()
    }

    /// A rejection answered with this request's headers, or a drop when there is no Via to
    /// answer to or the request is an ACK (never answered: RFC 3261 §17.2.1).
    fn reject(
        &self,
        code: u16,
        reason: &'static str,
        kind: ErrorKind,
        why: &'static str,
    ) -> Verdict {
        let method = self.method();
        if self.count("via") == 0 {
            return Verdict::Drop {
                kind,
                why: if kind == ErrorKind::SipOversize {
                    why
                } else {
                    "no Via"
                },
                method,
            };
        }
        if method == "ACK" {
            return Verdict::Drop { kind, why, method };
        }
        let echo = self
            .headers
            .iter()
            .filter_map(|(n, _, v)| {
                let name = match n.as_str() {
                    "via" => "Via",
                    "from" => "From",
                    "to" => "To",
                    "call-id" => "Call-ID",
                    "cseq" => "CSeq",
                    _ => return None,
                };
                Some((name.to_string(), v.clone()))
            })
            .collect();
        Verdict::Reject(Rejection {
            code,
            reason,
            kind,
            why,
            method,
            echo,
        })
    }
}

/// The full lower-case name of a header (compact forms expanded: RFC 3261 §7.3.3).
fn full_name(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    match lower.as_str() {
        "v" => "via",
        "f" => "from",
        "t" => "to",
        "i" => "call-id",
        "l" => "content-length",
        "m" => "contact",
        "c" => "content-type",
        _ => return lower,
    }
    .to_string()
}

/// RFC 3261 `token` characters.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// A plain decimal number (no sign, no spaces inside), at most 9 digits.
fn parse_digits(value: &str) -> Option<usize> {
    let v = value.trim();
    if v.is_empty() || v.len() > 9 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// `CSeq: <number below 2^31> <method>`.
fn parse_cseq(value: &str) -> Option<(u32, &str)> {
    let mut parts = value.split_ascii_whitespace();
    let (seq, method) = (parts.next()?, parts.next()?);
    if parts.next().is_some() || !seq.bytes().all(|b| b.is_ascii_digit()) || seq.len() > 10 {
        return None;
    }
    let seq: u64 = seq.parse().ok()?;
    (seq < 1 << 31).then_some((seq as u32, method))
}

fn has_tag(to: &str) -> bool {
    // parameters follow the URI (after `>` for a name-addr)
    let params = to.rsplit_once('>').map_or(to, |(_, p)| p);
    params
        .split(';')
        .skip(1)
        .any(|p| p.trim().to_ascii_lowercase().starts_with("tag="))
}

/// A To tag that is the same for retransmissions of one request (stateless answers).
fn to_tag(echo: &[(String, String)]) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    echo.hash(&mut hasher);
    format!("sr{:012x}", hasher.finish() & 0xffff_ffff_ffff)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 8192;

    fn pbx() -> IpAddr {
        "127.0.0.1".parse().unwrap()
    }

    fn peers() -> PeerPolicy {
        PeerPolicy {
            pbxs: vec![pbx()],
            allowed: vec!["127.0.0.3".parse().unwrap()],
        }
    }

    /// A good OPTIONS; `edit` changes its text before the check.
    fn options_with(edit: impl Fn(String) -> String) -> Vec<u8> {
        edit(
            "OPTIONS sip:1000@127.0.0.1:5060 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:5062;rport;branch=z9hG4bK-1\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:probe@127.0.0.1>;tag=a1\r\n\
             To: <sip:1000@127.0.0.1>\r\n\
             Call-ID: c1@probe\r\n\
             CSeq: 7 OPTIONS\r\n\
             Content-Length: 0\r\n\r\n"
                .to_string(),
        )
        .into_bytes()
    }

    fn verdict(raw: &[u8]) -> Verdict {
        check(raw, MAX, pbx(), &peers())
    }

    fn code_of(v: &Verdict) -> Option<u16> {
        match v {
            Verdict::Reject(r) => Some(r.code),
            _ => None,
        }
    }

    fn rejected(raw: &[u8]) -> Rejection {
        match verdict(raw) {
            Verdict::Reject(r) => r,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn good_requests_responses_and_keepalives_pass() {
        assert_eq!(verdict(&options_with(|s| s)), Verdict::Pass);
        let body = "v=0\r\n";
        let invite = options_with(|s| {
            s.replace("OPTIONS sip", "INVITE sip")
                .replace("7 OPTIONS", "7 INVITE")
                .replace("Content-Length: 0\r\n\r\n", "")
                + &format!(
                    "Content-Type: application/sdp\r\nl: {}\r\n\r\n{body}",
                    body.len()
                )
        });
        assert_eq!(verdict(&invite), Verdict::Pass);
        let compact = options_with(|s| {
            s.replace("Via:", "v:")
                .replace("From:", "f:")
                .replace("To:", "t:")
                .replace("Call-ID:", "i:")
        });
        assert_eq!(verdict(&compact), Verdict::Pass);
        assert_eq!(verdict(b"\r\n\r\n"), Verdict::Pass);
        assert_eq!(
            verdict(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP x;branch=z9hG4bK1\r\n\r\n"),
            Verdict::Pass
        );
        // a body longer than Content-Length is cut by the stack (§18.3), not refused
        let longer = options_with(|s| s + "trailing");
        assert_eq!(verdict(&longer), Verdict::Pass);
        let folded = options_with(|s| s.replace("Max-Forwards: 70\r\n", "Subject: a\r\n  b\r\n"));
        assert_eq!(verdict(&folded), Verdict::Pass);
    }

    #[test]
    fn cseq_method_other_than_the_requests_is_400() {
        let r = rejected(&options_with(|s| s.replace("7 OPTIONS", "7 INVITE")));
        assert_eq!((r.code, r.why), (400, "CSeq method"));
        assert_eq!(r.kind, ErrorKind::SipParse);
        for bad in [
            "CSeq: x OPTIONS",
            "CSeq: 7",
            "CSeq: -1 OPTIONS",
            "CSeq: 4294967296 OPTIONS",
        ] {
            let r = rejected(&options_with(|s| s.replace("CSeq: 7 OPTIONS", bad)));
            assert_eq!((r.code, r.why), (400, "bad CSeq"), "{bad}");
        }
    }

    #[test]
    fn content_length_larger_than_the_datagram_negative_or_unparsable_is_400() {
        for (value, why) in [
            ("5", "Content-Length too big"),
            ("-1", "bad Content-Length"),
            ("abc", "bad Content-Length"),
            ("", "bad Content-Length"),
            ("99999999999999999999", "bad Content-Length"),
            ("1 2", "bad Content-Length"),
        ] {
            let r = rejected(&options_with(|s| {
                s.replace("Content-Length: 0", &format!("Content-Length: {value}"))
            }));
            assert_eq!((r.code, r.why), (400, why), "Content-Length: {value}");
        }
        let twice =
            options_with(|s| s.replace("Content-Length: 0\r\n", "Content-Length: 0\r\nl: 0\r\n"));
        assert_eq!(code_of(&verdict(&twice)), Some(400));
    }

    #[test]
    fn header_line_without_a_colon_is_400() {
        let r = rejected(&options_with(|s| {
            s.replace("Max-Forwards: 70", "Max-Forwards 70")
        }));
        assert_eq!((r.code, r.why), (400, "header line without a colon"));
        let r = rejected(&options_with(|s| {
            s.replace("Max-Forwards: 70", "Bad Name: 1")
        }));
        assert_eq!((r.code, r.why), (400, "bad header name"));
        let r = rejected(&options_with(|s| {
            s.replace("Max-Forwards: 70", "Max-Forwards: many")
        }));
        assert_eq!((r.code, r.why), (400, "bad Max-Forwards"));
    }

    #[test]
    fn missing_or_repeated_mandatory_headers_are_400_and_no_via_is_dropped() {
        for line in [
            "From: <sip:probe@127.0.0.1>;tag=a1\r\n",
            "To: <sip:1000@127.0.0.1>\r\n",
            "Call-ID: c1@probe\r\n",
            "CSeq: 7 OPTIONS\r\n",
        ] {
            let r = rejected(&options_with(|s| s.replace(line, "")));
            assert_eq!((r.code, r.why), (400, "missing header"), "without {line}");
            let r = rejected(&options_with(|s| s.replace(line, &format!("{line}{line}"))));
            assert_eq!((r.code, r.why), (400, "repeated header"), "twice {line}");
        }
        // Max-Forwards is not required of what a UAS accepts
        let r = verdict(&options_with(|s| s.replace("Max-Forwards: 70\r\n", "")));
        assert_eq!(r, Verdict::Pass);
        let no_via = options_with(|s| {
            s.replace(
                "Via: SIP/2.0/UDP 127.0.0.1:5062;rport;branch=z9hG4bK-1\r\n",
                "",
            )
        });
        assert!(matches!(
            verdict(&no_via),
            Verdict::Drop {
                kind: ErrorKind::SipParse,
                why: "no Via",
                ..
            }
        ));
        assert!(matches!(
            verdict(b"\x16\x03\x01garbage\x00\xff"),
            Verdict::Drop {
                kind: ErrorKind::SipParse,
                ..
            }
        ));
    }

    #[test]
    fn sip_3_0_is_505_and_a_bad_request_line_is_400() {
        let r = rejected(&options_with(|s| s.replace("5060 SIP/2.0", "5060 SIP/3.0")));
        assert_eq!((r.code, r.reason), (505, "Version Not Supported"));
        for line in [
            "OPTIONS sip:1000@127.0.0.1:5060 HTTP/1.1",
            "OPTIONS  sip:1000@127.0.0.1:5060 SIP/2.0",
            "OPTIONS sip:1000@127.0.0.1:5060",
            "OPTIONS sip:1000@127.0.0.1:5060 SIP/2.0 extra",
            "OPTIONS sip: SIP/2.0",
        ] {
            let r = rejected(&options_with(|s| {
                s.replace("OPTIONS sip:1000@127.0.0.1:5060 SIP/2.0", line)
            }));
            assert_eq!(r.code, 400, "{line}");
        }
    }

    #[test]
    fn unknown_methods_are_501_and_unsupported_ones_405_both_with_allow() {
        let foo = options_with(|s| s.replace("OPTIONS", "FOO"));
        let r = rejected(&foo);
        assert_eq!((r.code, r.kind), (501, ErrorKind::SipMethod));
        let text = String::from_utf8(r.response("srbridge")).unwrap();
        assert!(text.contains(&format!("\r\nAllow: {ALLOW}\r\n")), "{text}");
        for m in [
            "MESSAGE",
            "SUBSCRIBE",
            "REGISTER",
            "REFER",
            "PUBLISH",
            "NOTIFY",
            "PRACK",
        ] {
            let r = rejected(&options_with(|s| s.replace("OPTIONS", m)));
            assert_eq!(r.code, 405, "{m}");
            let text = String::from_utf8(r.response("x")).unwrap();
            assert!(text.contains("\r\nAllow: INVITE,"), "{text}");
        }
        let lower = options_with(|s| s.replace("OPTIONS", "options"));
        assert_eq!(
            code_of(&verdict(&lower)),
            Some(501),
            "methods are case-sensitive"
        );
    }

    #[test]
    fn oversize_is_513_or_dropped_without_via() {
        let big = options_with(|s| s + &"x".repeat(MAX));
        let r = rejected(&big);
        assert_eq!((r.code, r.kind), (513, ErrorKind::SipOversize));
        assert!(matches!(
            verdict(&vec![b'x'; MAX + 1]),
            Verdict::Drop {
                kind: ErrorKind::SipOversize,
                ..
            }
        ));
    }

    #[test]
    fn strangers_get_403_and_their_acks_are_dropped() {
        let stranger: IpAddr = "127.0.0.2".parse().unwrap();
        for m in [
            "BYE", "CANCEL", "INVITE", "UPDATE", "INFO", "OPTIONS", "REFER",
        ] {
            let raw = options_with(|s| s.replace("OPTIONS", m));
            match check(&raw, MAX, stranger, &peers()) {
                Verdict::Reject(r) => {
                    assert_eq!((r.code, r.kind), (403, ErrorKind::SipPeerRefused), "{m}");
                    assert_eq!(r.method, m);
                }
                other => panic!("{m}: {other:?}"),
            }
        }
        let ack = options_with(|s| s.replace("OPTIONS", "ACK"));
        assert!(matches!(
            check(&ack, MAX, stranger, &peers()),
            Verdict::Drop {
                kind: ErrorKind::SipPeerRefused,
                ..
            }
        ));
        let allowed: IpAddr = "127.0.0.3".parse().unwrap();
        assert_eq!(check(&ack, MAX, allowed, &peers()), Verdict::Pass);
        // a forged final answer to one of our INVITEs
        let ok = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\n\r\n";
        assert!(matches!(
            check(ok, MAX, stranger, &peers()),
            Verdict::Drop {
                kind: ErrorKind::SipPeerRefused,
                ..
            }
        ));
        assert_eq!(check(ok, MAX, allowed, &peers()), Verdict::Pass);
    }

    #[test]
    fn the_answer_copies_the_dialog_headers_and_adds_a_stable_to_tag() {
        let raw = options_with(|s| {
            s.replace("7 OPTIONS", "7 INVITE").replace(
                "Via: SIP",
                "Via: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK-0\r\nVia: SIP",
            )
        });
        let r = rejected(&raw);
        let text = String::from_utf8(r.response("srbridge")).unwrap();
        assert!(text.starts_with("SIP/2.0 400 Bad Request\r\n"), "{text}");
        let vias: Vec<&str> = text.lines().filter(|l| l.starts_with("Via: ")).collect();
        assert_eq!(vias.len(), 2, "{text}");
        assert!(vias[0].contains("10.0.0.9"), "order kept: {text}");
        assert!(
            text.contains("\r\nFrom: <sip:probe@127.0.0.1>;tag=a1\r\n"),
            "{text}"
        );
        assert!(
            text.contains("\r\nTo: <sip:1000@127.0.0.1>;tag=sr"),
            "{text}"
        );
        assert!(text.contains("\r\nCall-ID: c1@probe\r\n"), "{text}");
        assert!(text.contains("\r\nCSeq: 7 INVITE\r\n"), "{text}");
        assert!(text.contains("\r\nServer: srbridge\r\n"), "{text}");
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"), "{text}");
        assert!(!text.contains("Allow:"), "{text}");
        assert_eq!(
            text,
            String::from_utf8(rejected(&raw).response("srbridge")).unwrap()
        );
        // a To that has a tag keeps it
        let tagged = options_with(|s| {
            s.replace("7 OPTIONS", "7 BYE").replace(
                "To: <sip:1000@127.0.0.1>",
                "To: <sip:1000@127.0.0.1>;tag=b2",
            )
        });
        let text = String::from_utf8(rejected(&tagged).response("")).unwrap();
        assert!(
            text.contains("\r\nTo: <sip:1000@127.0.0.1>;tag=b2\r\n"),
            "{text}"
        );
        assert!(!text.contains("Server:"), "{text}");
    }

    #[test]
    fn headers_the_stack_cannot_read_are_400_not_a_panic() {
        for (from, to) in [
            ("From: <sip:probe@127.0.0.1>;tag=a1", "From: <<<"),
            ("To: <sip:1000@127.0.0.1>", "To: "),
            (
                "Via: SIP/2.0/UDP 127.0.0.1:5062;rport;branch=z9hG4bK-1",
                "Via: nonsense",
            ),
            ("Max-Forwards: 70", "Max-Forwards: 70\0"),
        ] {
            let v = verdict(&options_with(|s| s.replace(from, to)));
            assert_eq!(code_of(&v), Some(400), "{to:?}: {v:?}");
        }
        let mut not_utf8 = options_with(|s| s);
        not_utf8.splice(20..20, [0xffu8, 0xfe]);
        assert_eq!(code_of(&verdict(&not_utf8)), Some(400));
    }
}
