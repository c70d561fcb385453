//! SDP offer/answer (RFC 4566, RFC 3264) for the SIP leg, sans-IO.
//!
//! The SIP side only ever needs one audio stream of plain RTP/AVP with G.711 and telephone-event,
//! so this is a small, strict-where-it-matters parser rather than a general SDP model: the lines
//! that decide where media goes (`m=`, `c=`, `rtpmap`, `ptime`, direction) are validated and a bad
//! one is a clear [`SdpError`]; everything else is skipped. It never panics on any input, and
//! input larger than [`MAX_SDP_LEN`] is refused before parsing.
//!
//! Directions are always seen from this side: [`Negotiated::direction`] says whether *we* may
//! send and/or receive.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::config::Codec;

/// Largest SDP body accepted; real ones are well under 2 KB.
pub const MAX_SDP_LEN: usize = 16 * 1024;
/// The telephone-event payload type offered when no other is configured.
pub const DEFAULT_DTMF_PT: u8 = 101;
/// Packet time we send and offer.
pub const PTIME_MS: u32 = 20;

const CLOCK_RATE: u32 = 8000;
const USER: &str = "srbridge";

/// Media direction (RFC 3264 §5.1), from the point of view of whoever states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Send and receive (the default).
    SendRecv,
    /// Send only (e.g. putting the other side on hold).
    SendOnly,
    /// Receive only (e.g. answering a hold).
    RecvOnly,
    /// Neither.
    Inactive,
}

impl Direction {
    fn from_flags(send: bool, recv: bool) -> Direction {
        match (send, recv) {
            (true, true) => Direction::SendRecv,
            (true, false) => Direction::SendOnly,
            (false, true) => Direction::RecvOnly,
            (false, false) => Direction::Inactive,
        }
    }

    /// Whether media may be sent.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether media is expected to be received.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    /// The same stream seen from the other end (their sendonly is our recvonly).
    pub fn reversed(self) -> Direction {
        Direction::from_flags(self.receives(), self.sends())
    }

    /// What both allow.
    pub fn intersect(self, other: Direction) -> Direction {
        Direction::from_flags(
            self.sends() && other.sends(),
            self.receives() && other.receives(),
        )
    }

    /// The SDP attribute name.
    pub fn attribute(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    fn parse(attr: &str) -> Option<Direction> {
        Some(match attr {
            "sendrecv" => Direction::SendRecv,
            "sendonly" => Direction::SendOnly,
            "recvonly" => Direction::RecvOnly,
            "inactive" => Direction::Inactive,
            _ => return None,
        })
    }
}

/// What this side puts into an offer or answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalMedia<'a> {
    /// Address for `o=` and `c=` (the public IP when behind NAT).
    pub ip: IpAddr,
    /// Our RTP port (even).
    pub port: u16,
    /// Codec preference, best first (`MediaConfig::codecs_for`); empty means PCMU.
    pub codecs: &'a [Codec],
    /// Payload type offered for telephone-event; outside 96..=127 means [`DEFAULT_DTMF_PT`].
    pub dtmf_pt: u8,
    /// `o=` session id: fixed for the whole call ([`new_session_id`]).
    pub session_id: u64,
    /// `o=` version: bumped ([`LocalMedia::bump_version`]) for every changed re-offer/re-answer.
    pub version: u64,
    /// What we want to do (SendOnly to put the peer on hold).
    pub direction: Direction,
}

impl LocalMedia<'_> {
    /// Increments the `o=` version, as RFC 3264 §8 requires for each new SDP of the same session
    /// (re-INVITE, UPDATE). Re-sending an unchanged SDP keeps the version.
    pub fn bump_version(&mut self) {
        self.version = self.version.wrapping_add(1);
    }

    fn dtmf_payload_type(&self) -> u8 {
        if (96..=127).contains(&self.dtmf_pt) {
            self.dtmf_pt
        } else {
            DEFAULT_DTMF_PT
        }
    }
}

/// A fresh `o=` session id (random, below 2^62 so every parser takes it).
pub fn new_session_id() -> u64 {
    rand::random::<u64>() >> 2
}

/// The outcome of offer/answer: where to send what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The peer's RTP address from `c=`/`m=` (the strict-source rule may later learn another). Unspecified
    /// (`0.0.0.0`) when the peer put the call on hold the RFC 2543 way.
    pub remote: SocketAddr,
    /// The codec both sides use.
    pub codec: Codec,
    /// The payload type to send it with (the peer's number for it).
    pub payload_type: u8,
    /// Telephone-event payload type, when both sides have it.
    pub dtmf_pt: Option<u8>,
    /// What we may do: send and/or receive.
    pub direction: Direction,
    /// The peer's requested packet time (`a=ptime`, default 20).
    pub ptime_ms: u32,
    /// The peer does not want our media (sendonly/inactive or `c=0.0.0.0`).
    pub on_hold: bool,
}

impl Negotiated {
    /// Samples in one packet at the peer's ptime (8 kHz clock): 160 for 20 ms.
    pub fn samples_per_packet(&self) -> u32 {
        self.ptime_ms * (CLOCK_RATE / 1000)
    }
}

/// Why an SDP body cannot be used; the SIP layer answers 488 (or 400 for garbage).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// Body larger than [`MAX_SDP_LEN`].
    #[error("SDP body too large: {len} bytes (limit {max})")]
    TooLarge {
        /// Body length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body does not start with `v=0`.
    #[error("not SDP: first line must be v=0")]
    MissingVersion,
    /// A line is not `<letter>=<value>`.
    #[error("SDP line {line}: not of the form x=value: {text:?}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// The start of the line.
        text: String,
    },
    /// An `m=` line is malformed.
    #[error("SDP line {line}: bad m= line ({reason}): {text:?}")]
    BadMedia {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: &'static str,
        /// The start of the line.
        text: String,
    },
    /// An `m=` port is not a number in 0..=65535.
    #[error("SDP line {line}: bad port {text:?}")]
    BadPort {
        /// 1-based line number.
        line: usize,
        /// The port text.
        text: String,
    },
    /// A `c=` line is malformed or names a host rather than an address.
    #[error("SDP line {line}: bad c= line ({reason}): {text:?}")]
    BadConnection {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: &'static str,
        /// The start of the line.
        text: String,
    },
    /// An attribute that matters (`rtpmap`, `ptime`) is malformed.
    #[error("SDP line {line}: bad attribute: {text:?}")]
    BadAttribute {
        /// 1-based line number.
        line: usize,
        /// The start of the line.
        text: String,
    },
    /// No `m=audio` line at all.
    #[error("SDP has no audio stream")]
    NoAudio,
    /// Audio only with a profile we cannot speak (SRTP, TCP).
    #[error("SDP audio uses unsupported transport {0:?} (only RTP/AVP)")]
    UnsupportedProfile(String),
    /// Every audio stream has port 0.
    #[error("SDP audio stream rejected (port 0)")]
    StreamRejected,
    /// The audio stream has no `c=` at media or session level.
    #[error("SDP audio stream has no connection address")]
    NoConnection,
    /// None of our codecs is in the peer's list.
    #[error("no common codec")]
    NoCommonCodec,
}

fn snippet(s: &str) -> String {
    s.chars().take(60).collect()
}

#[derive(Debug)]
struct RtpMap<'a> {
    pt: u8,
    name: &'a str,
    clock: u32,
}

#[derive(Debug)]
struct Media<'a> {
    kind: &'a str,
    port: u16,
    proto: &'a str,
    fmts: &'a str,
    conn: Option<IpAddr>,
    rtpmaps: Vec<RtpMap<'a>>,
    ptime: Option<u32>,
    direction: Option<Direction>,
}

impl Media<'_> {
    fn is_audio(&self) -> bool {
        self.kind.eq_ignore_ascii_case("audio")
    }

    fn is_rtp_avp(&self) -> bool {
        self.proto.eq_ignore_ascii_case("RTP/AVP") || self.proto.eq_ignore_ascii_case("RTP/AVPF")
    }

    /// Payload types in the peer's order (validated as numbers for RTP audio streams).
    fn payload_types(&self) -> impl Iterator<Item = u8> + '_ {
        self.fmts
            .split_ascii_whitespace()
            .filter_map(|f| f.parse().ok())
    }

    fn rtpmap(&self, pt: u8) -> Option<&RtpMap<'_>> {
        self.rtpmaps.iter().find(|m| m.pt == pt)
    }

    fn carries(&self, pt: u8, codec: Codec) -> bool {
        match self.rtpmap(pt) {
            Some(m) => m.clock == CLOCK_RATE && m.name.eq_ignore_ascii_case(codec.name()),
            None => pt == codec.payload_type(),
        }
    }

    fn telephone_event(&self) -> Option<u8> {
        self.payload_types().find(|pt| {
            self.rtpmap(*pt).is_some_and(|m| {
                m.clock == CLOCK_RATE && m.name.eq_ignore_ascii_case("telephone-event")
            })
        })
    }
}

#[derive(Debug)]
struct Session<'a> {
    conn: Option<IpAddr>,
    direction: Option<Direction>,
    media: Vec<Media<'a>>,
}

fn parse_connection(line: usize, value: &str) -> Result<IpAddr, SdpError> {
    let bad = |reason| SdpError::BadConnection {
        line,
        reason,
        text: snippet(value),
    };
    let mut parts = value.split_ascii_whitespace();
    let (Some(net), Some(family), Some(addr), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("expected IN IP4|IP6 <address>"));
    };
    if net != "IN" {
        return Err(bad("network type is not IN"));
    }
    // Multicast forms carry /ttl[/count]; the address is what comes before.
    let addr = addr.split('/').next().unwrap_or(addr);
    let ip: IpAddr = addr.parse().map_err(|_| bad("not a literal IP address"))?;
    match (family, ip) {
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) => Ok(ip),
        ("IP4" | "IP6", _) => Err(bad("address does not match its family")),
        _ => Err(bad("address type is not IP4 or IP6")),
    }
}

fn parse_media(line: usize, value: &str) -> Result<Media<'_>, SdpError> {
    let bad = |reason| SdpError::BadMedia {
        line,
        reason,
        text: snippet(value),
    };
    let mut parts = value.splitn(4, |c: char| c.is_ascii_whitespace());
    let kind = parts
        .next()
        .filter(|k| !k.is_empty())
        .ok_or(bad("no media type"))?;
    let port_text = parts.next().ok_or(bad("no port"))?;
    let proto = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or(bad("no transport"))?;
    let fmts = parts.next().map(str::trim).unwrap_or("");
    if fmts.is_empty() {
        return Err(bad("no formats"));
    }
    // `port/count` (RFC 4566 §5.14): only the port matters here.
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let (port_only, count) = port_text.split_once('/').unwrap_or((port_text, "1"));
    let port = if digits(port_only) && digits(count) {
        port_only.parse::<u16>().ok()
    } else {
        None
    }
    .ok_or_else(|| SdpError::BadPort {
        line,
        text: snippet(port_text),
    })?;
    let media = Media {
        kind,
        port,
        proto,
        fmts,
        conn: None,
        rtpmaps: Vec::new(),
        ptime: None,
        direction: None,
    };
    if media.is_audio() && media.is_rtp_avp() {
        for f in fmts.split_ascii_whitespace() {
            if !matches!(f.parse::<u8>(), Ok(pt) if pt <= 127) {
                return Err(bad("format is not an RTP payload type 0..=127"));
            }
        }
    }
    Ok(media)
}

fn parse_rtpmap(value: &str) -> Option<RtpMap<'_>> {
    let (pt, rest) = value.split_once(|c: char| c.is_ascii_whitespace())?;
    let pt: u8 = pt.parse().ok().filter(|pt| *pt <= 127)?;
    let mut enc = rest.trim().split('/');
    let name = enc.next().filter(|n| !n.is_empty())?;
    let clock: u32 = enc.next()?.parse().ok()?;
    Some(RtpMap { pt, name, clock })
}

fn parse_ptime(value: &str) -> Option<u32> {
    // Some stacks write "20.0".
    let int = value.trim().split('.').next()?;
    int.parse().ok().filter(|v| (1..=1000).contains(v))
}

fn parse(body: &str) -> Result<Session<'_>, SdpError> {
    if body.len() > MAX_SDP_LEN {
        return Err(SdpError::TooLarge {
            len: body.len(),
            max: MAX_SDP_LEN,
        });
    }
    let mut session = Session {
        conn: None,
        direction: None,
        media: Vec::new(),
    };
    let mut seen_version = false;
    for (i, raw) in body.split('\n').enumerate() {
        let line = i + 1;
        let text = raw.strip_suffix('\r').unwrap_or(raw);
        if text.trim().is_empty() {
            continue;
        }
        let bytes = text.as_bytes();
        // Control characters (a stray CR, NUL) are not allowed in SDP values (RFC 4566 §9).
        let control = bytes.iter().any(|b| b.is_ascii_control() && *b != b'\t');
        if bytes.len() < 2 || !bytes[0].is_ascii_lowercase() || bytes[1] != b'=' || control {
            if !seen_version {
                return Err(SdpError::MissingVersion);
            }
            return Err(SdpError::BadLine {
                line,
                text: snippet(text),
            });
        }
        // The first two bytes are ASCII, so index 2 is a char boundary.
        let (key, value) = (bytes[0], &text[2..]);
        if !seen_version {
            if key != b'v' || value.trim() != "0" {
                return Err(SdpError::MissingVersion);
            }
            seen_version = true;
            continue;
        }
        match key {
            b'm' => session.media.push(parse_media(line, value)?),
            b'c' => {
                let ip = parse_connection(line, value)?;
                match session.media.last_mut() {
                    Some(m) => m.conn = Some(ip),
                    None => session.conn = Some(ip),
                }
            }
            b'a' => {
                let (name, arg) = value.split_once(':').unwrap_or((value, ""));
                let name = name.trim();
                let Some(m) = session.media.last_mut() else {
                    if let Some(d) = Direction::parse(name) {
                        session.direction = Some(d);
                    }
                    continue;
                };
                if !m.is_audio() {
                    continue;
                }
                let bad = || SdpError::BadAttribute {
                    line,
                    text: snippet(text),
                };
                if let Some(d) = Direction::parse(name) {
                    m.direction = Some(d);
                } else if name == "rtpmap" {
                    m.rtpmaps.push(parse_rtpmap(arg).ok_or_else(bad)?);
                } else if name == "ptime" {
                    m.ptime = Some(parse_ptime(arg).ok_or_else(bad)?);
                }
            }
            _ => {}
        }
    }
    if !seen_version {
        return Err(SdpError::MissingVersion);
    }
    Ok(session)
}

impl Session<'_> {
    /// Index of the first audio stream we can use, or why there is none.
    fn usable_audio(&self) -> Result<usize, SdpError> {
        let mut unsupported = None;
        let mut rejected = false;
        for (i, m) in self.media.iter().enumerate() {
            if !m.is_audio() {
                continue;
            }
            if m.port == 0 {
                rejected = true;
            } else if !m.is_rtp_avp() {
                unsupported.get_or_insert(m.proto);
            } else {
                return Ok(i);
            }
        }
        if let Some(proto) = unsupported {
            Err(SdpError::UnsupportedProfile(snippet(proto)))
        } else if rejected {
            Err(SdpError::StreamRejected)
        } else {
            Err(SdpError::NoAudio)
        }
    }

    /// The peer's address for stream `m` and what the peer wants to do on it.
    fn endpoint(&self, m: &Media<'_>) -> Result<(SocketAddr, Direction, bool), SdpError> {
        let ip = m.conn.or(self.conn).ok_or(SdpError::NoConnection)?;
        let mut dir = m
            .direction
            .or(self.direction)
            .unwrap_or(Direction::SendRecv);
        // RFC 2543 hold: c=0.0.0.0 means "do not send to me".
        let zero = ip.is_unspecified();
        if zero {
            dir = dir.intersect(Direction::SendOnly);
        }
        let on_hold = !dir.receives();
        Ok((SocketAddr::new(ip, m.port), dir, on_hold))
    }
}

fn ip_family(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    }
}

fn write_session_header(out: &mut String, local: &LocalMedia<'_>) {
    let fam = ip_family(local.ip);
    let _ = write!(
        out,
        "v=0\r\no={USER} {} {} IN {fam} {}\r\ns={USER}\r\nc=IN {fam} {}\r\nt=0 0\r\n",
        local.session_id, local.version, local.ip, local.ip
    );
}

fn write_audio(
    out: &mut String,
    port: u16,
    codecs: &[(u8, Codec)],
    dtmf: Option<u8>,
    dir: Direction,
) {
    let _ = write!(out, "m=audio {port} RTP/AVP");
    for (pt, _) in codecs {
        let _ = write!(out, " {pt}");
    }
    if let Some(pt) = dtmf {
        let _ = write!(out, " {pt}");
    }
    out.push_str("\r\n");
    for (pt, codec) in codecs {
        let _ = write!(out, "a=rtpmap:{pt} {}/{CLOCK_RATE}\r\n", codec.name());
    }
    if let Some(pt) = dtmf {
        let _ = write!(
            out,
            "a=rtpmap:{pt} telephone-event/{CLOCK_RATE}\r\na=fmtp:{pt} 0-16\r\n"
        );
    }
    let _ = write!(out, "a=ptime:{PTIME_MS}\r\na={}\r\n", dir.attribute());
}

/// Builds our offer (initial INVITE, or re-INVITE after [`LocalMedia::bump_version`]).
pub fn build_offer(local: &LocalMedia<'_>) -> String {
    let mut codecs: Vec<(u8, Codec)> = Vec::with_capacity(local.codecs.len().max(1));
    for c in local.codecs {
        if !codecs.iter().any(|(_, have)| have == c) {
            codecs.push((c.payload_type(), *c));
        }
    }
    if codecs.is_empty() {
        codecs.push((Codec::Pcmu.payload_type(), Codec::Pcmu));
    }
    let mut out = String::with_capacity(320);
    write_session_header(&mut out, local);
    write_audio(
        &mut out,
        local.port,
        &codecs,
        Some(local.dtmf_payload_type()),
        local.direction,
    );
    out
}

/// Answers a peer's offer: picks the first of our codecs the offer carries, keeps its
/// telephone-event, mirrors its direction, rejects every other stream with port 0.
///
/// `Err` means no usable audio stream: the caller answers 488 Not Acceptable Here.
pub fn answer_offer(offer: &str, local: &LocalMedia<'_>) -> Result<(String, Negotiated), SdpError> {
    let session = parse(offer)?;
    let index = session.usable_audio()?;
    let media = &session.media[index];
    let (remote, their_dir, on_hold) = session.endpoint(media)?;
    let preference: &[Codec] = if local.codecs.is_empty() {
        &[Codec::Pcmu]
    } else {
        local.codecs
    };
    let (payload_type, codec) = preference
        .iter()
        .find_map(|c| {
            media
                .payload_types()
                .find(|pt| media.carries(*pt, *c))
                .map(|pt| (pt, *c))
        })
        .ok_or(SdpError::NoCommonCodec)?;
    let dtmf_pt = media.telephone_event();
    let direction = local.direction.intersect(their_dir.reversed());
    let ptime_ms = media.ptime.unwrap_or(PTIME_MS);

    let mut out = String::with_capacity(320);
    write_session_header(&mut out, local);
    for (i, m) in session.media.iter().enumerate() {
        if i == index {
            write_audio(
                &mut out,
                local.port,
                &[(payload_type, codec)],
                dtmf_pt,
                direction,
            );
        } else {
            let _ = write!(out, "m={} 0 {} {}\r\n", m.kind, m.proto, m.fmts);
        }
    }
    Ok((
        out,
        Negotiated {
            remote,
            codec,
            payload_type,
            dtmf_pt,
            direction,
            ptime_ms,
            on_hold,
        },
    ))
}

/// Reads the peer's answer to our offer of `offered` codecs (its first usable audio stream).
pub fn parse_answer(answer: &str, offered: &[Codec]) -> Result<Negotiated, SdpError> {
    let session = parse(answer)?;
    let media = &session.media[session.usable_audio()?];
    let (remote, their_dir, on_hold) = session.endpoint(media)?;
    let offered: &[Codec] = if offered.is_empty() {
        &[Codec::Pcmu]
    } else {
        offered
    };
    // The answerer's order is its preference; take its first codec that we offered.
    let (payload_type, codec) = media
        .payload_types()
        .find_map(|pt| {
            offered
                .iter()
                .find(|c| media.carries(pt, **c))
                .map(|c| (pt, *c))
        })
        .ok_or(SdpError::NoCommonCodec)?;
    Ok(Negotiated {
        remote,
        codec,
        payload_type,
        dtmf_pt: media.telephone_event(),
        direction: their_dir.reversed(),
        ptime_ms: media.ptime.unwrap_or(PTIME_MS),
        on_hold,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const BOTH: &[Codec] = &[Codec::Pcmu, Codec::Pcma];

    fn local(codecs: &[Codec]) -> LocalMedia<'_> {
        LocalMedia {
            ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
            port: 20000,
            codecs,
            dtmf_pt: 101,
            session_id: 42,
            version: 1,
            direction: Direction::SendRecv,
        }
    }

    /// An offer the way FreeSWITCH sends one (G722 first, which we do not speak).
    const FS_OFFER: &str = "v=0\r\n\
        o=FreeSWITCH 1700000000 1700000001 IN IP4 198.51.100.7\r\n\
        s=FreeSWITCH\r\n\
        c=IN IP4 198.51.100.7\r\n\
        t=0 0\r\n\
        m=audio 16384 RTP/AVP 9 8 0 101\r\n\
        a=rtpmap:9 G722/8000\r\n\
        a=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-16\r\n\
        a=ptime:20\r\n\
        a=sendrecv\r\n";

    fn offer_with(media: &str) -> String {
        format!("v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n{media}")
    }

    fn remote(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), port)
    }

    #[test]
    fn offer_is_exact_sdp_with_codecs_dtmf_ptime_and_direction() {
        let offer = build_offer(&local(BOTH));
        assert_eq!(
            offer,
            "v=0\r\n\
             o=srbridge 42 1 IN IP4 192.0.2.10\r\n\
             s=srbridge\r\n\
             c=IN IP4 192.0.2.10\r\n\
             t=0 0\r\n\
             m=audio 20000 RTP/AVP 0 8 101\r\n\
             a=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:8 PCMA/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\n\
             a=fmtp:101 0-16\r\n\
             a=ptime:20\r\n\
             a=sendrecv\r\n"
        );
    }

    #[test]
    fn offer_over_ipv6_with_preference_duplicates_and_bad_dtmf_pt() {
        let mut l = local(&[Codec::Pcma, Codec::Pcma, Codec::Pcmu]);
        l.ip = IpAddr::V6(Ipv6Addr::LOCALHOST);
        l.dtmf_pt = 8; // would collide with PCMA: falls back to 101
        l.direction = Direction::SendOnly;
        let offer = build_offer(&l);
        assert!(offer.contains("o=srbridge 42 1 IN IP6 ::1\r\n"));
        assert!(offer.contains("c=IN IP6 ::1\r\n"));
        assert!(offer.contains("m=audio 20000 RTP/AVP 8 0 101\r\n"));
        assert!(offer.contains("a=sendonly\r\n"));
        // No codecs configured still gives a usable offer.
        assert!(build_offer(&local(&[])).contains("m=audio 20000 RTP/AVP 0 101\r\n"));
    }

    #[test]
    fn our_offer_is_understood_by_our_answerer() {
        let offer = build_offer(&local(BOTH));
        let (answer, n) = answer_offer(&offer, &local(&[Codec::Pcma])).unwrap();
        assert_eq!(n.codec, Codec::Pcma);
        assert_eq!(n.payload_type, 8);
        assert_eq!(n.dtmf_pt, Some(101));
        assert_eq!(
            n.remote,
            "192.0.2.10:20000".parse::<std::net::SocketAddr>().unwrap()
        );
        let back = parse_answer(&answer, BOTH).unwrap();
        assert_eq!(back.codec, Codec::Pcma);
        assert_eq!(back.direction, Direction::SendRecv);
    }

    #[test]
    fn answer_picks_our_first_preference_the_offer_has() {
        let (answer, n) = answer_offer(FS_OFFER, &local(BOTH)).unwrap();
        assert_eq!(
            n,
            Negotiated {
                remote: remote(16384),
                codec: Codec::Pcmu,
                payload_type: 0,
                dtmf_pt: Some(101),
                direction: Direction::SendRecv,
                ptime_ms: 20,
                on_hold: false,
            }
        );
        assert_eq!(
            answer,
            "v=0\r\n\
             o=srbridge 42 1 IN IP4 192.0.2.10\r\n\
             s=srbridge\r\n\
             c=IN IP4 192.0.2.10\r\n\
             t=0 0\r\n\
             m=audio 20000 RTP/AVP 0 101\r\n\
             a=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\n\
             a=fmtp:101 0-16\r\n\
             a=ptime:20\r\n\
             a=sendrecv\r\n"
        );
        assert_eq!(n.samples_per_packet(), 160);
        let (_, n) = answer_offer(FS_OFFER, &local(&[Codec::Pcma, Codec::Pcmu])).unwrap();
        assert_eq!((n.codec, n.payload_type), (Codec::Pcma, 8));
    }

    #[test]
    fn codec_found_by_static_type_or_by_rtpmap_name() {
        // Static types without rtpmap lines.
        let (_, n) =
            answer_offer(&offer_with("m=audio 4000 RTP/AVP 8 0\r\n"), &local(BOTH)).unwrap();
        assert_eq!((n.codec, n.payload_type, n.dtmf_pt), (Codec::Pcmu, 0, None));
        // A dynamic type named in lower case.
        let offer = offer_with("m=audio 4000 RTP/AVP 97 96\r\na=rtpmap:97 pcma/8000\r\na=rtpmap:96 TELEPHONE-EVENT/8000\r\n");
        let (answer, n) = answer_offer(&offer, &local(BOTH)).unwrap();
        assert_eq!(
            (n.codec, n.payload_type, n.dtmf_pt),
            (Codec::Pcma, 97, Some(96))
        );
        assert!(answer.contains("m=audio 20000 RTP/AVP 97 96\r\n"));
        assert!(answer.contains("a=rtpmap:97 PCMA/8000\r\n"));
        assert!(answer.contains("a=rtpmap:96 telephone-event/8000\r\n"));
        // No telephone-event offered: none answered.
        assert!(
            !answer_offer(&offer_with("m=audio 4000 RTP/AVP 0\r\n"), &local(BOTH))
                .unwrap()
                .0
                .contains("telephone-event")
        );
    }

    #[test]
    fn wrong_clock_rate_or_unknown_codecs_are_no_common_codec() {
        let offer = offer_with("m=audio 4000 RTP/AVP 0 9 18\r\na=rtpmap:0 PCMU/16000\r\n");
        assert_eq!(
            answer_offer(&offer, &local(BOTH)),
            Err(SdpError::NoCommonCodec)
        );
        let opus = offer_with("m=audio 4000 RTP/AVP 111 101\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:101 telephone-event/8000\r\n");
        assert_eq!(
            answer_offer(&opus, &local(BOTH)),
            Err(SdpError::NoCommonCodec)
        );
        // PCMA only on our side, PCMU only offered.
        let pcmu = offer_with("m=audio 4000 RTP/AVP 0\r\n");
        assert_eq!(
            answer_offer(&pcmu, &local(&[Codec::Pcma])),
            Err(SdpError::NoCommonCodec)
        );
    }

    #[test]
    fn direction_is_mirrored() {
        for (theirs, ours, hold) in [
            ("sendrecv", Direction::SendRecv, false),
            ("sendonly", Direction::RecvOnly, true),
            ("recvonly", Direction::SendOnly, false),
            ("inactive", Direction::Inactive, true),
        ] {
            let offer = offer_with(&format!("m=audio 4000 RTP/AVP 0\r\na={theirs}\r\n"));
            let (answer, n) = answer_offer(&offer, &local(BOTH)).unwrap();
            assert_eq!(n.direction, ours, "{theirs}");
            assert_eq!(n.on_hold, hold, "{theirs}");
            assert!(answer.contains(&format!("a={}\r\n", ours.attribute())));
        }
        // Session-level attribute applies; media level overrides it.
        let offer = "v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\na=sendonly\r\nm=audio 4000 RTP/AVP 0\r\n";
        assert_eq!(
            answer_offer(offer, &local(BOTH)).unwrap().1.direction,
            Direction::RecvOnly
        );
        let offer = format!("{offer}a=sendrecv\r\n");
        assert_eq!(
            answer_offer(&offer, &local(BOTH)).unwrap().1.direction,
            Direction::SendRecv
        );
        // Our own hold (sendonly) combined with their sendrecv.
        let mut l = local(BOTH);
        l.direction = Direction::SendOnly;
        let (answer, n) = answer_offer(FS_OFFER, &l).unwrap();
        assert_eq!(n.direction, Direction::SendOnly);
        assert!(!n.on_hold);
        assert!(answer.contains("a=sendonly\r\n"));
    }

    #[test]
    fn old_style_hold_with_zero_address() {
        let offer = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
        let (answer, n) = answer_offer(offer, &local(BOTH)).unwrap();
        assert!(n.on_hold);
        assert!(n.remote.ip().is_unspecified());
        assert_eq!(n.direction, Direction::RecvOnly);
        assert!(answer.contains("a=recvonly\r\n"));
        let offer6 = "v=0\r\nc=IN IP6 ::\r\nm=audio 4000 RTP/AVP 0\r\na=inactive\r\n";
        let (_, n) = answer_offer(offer6, &local(BOTH)).unwrap();
        assert!(n.on_hold && n.remote.is_ipv6());
        assert_eq!(n.direction, Direction::Inactive);
    }

    #[test]
    fn media_level_connection_overrides_session_level_and_ipv6_works() {
        let offer = offer_with("m=audio 4000 RTP/AVP 0\r\nc=IN IP6 2001:db8::5\r\n");
        let (_, n) = answer_offer(&offer, &local(BOTH)).unwrap();
        assert_eq!(
            n.remote,
            "[2001:db8::5]:4000"
                .parse::<std::net::SocketAddr>()
                .unwrap()
        );
        // Only media-level c=.
        let offer = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 4002 RTP/AVP 8\r\nc=IN IP4 10.0.0.9\r\n";
        assert_eq!(
            answer_offer(offer, &local(BOTH)).unwrap().1.remote,
            "10.0.0.9:4002".parse::<std::net::SocketAddr>().unwrap()
        );
        // Multicast-style address with TTL.
        let offer = "v=0\r\nc=IN IP4 233.252.0.1/127\r\nm=audio 4000/2 RTP/AVP 0\r\n";
        assert_eq!(
            answer_offer(offer, &local(BOTH)).unwrap().1.remote,
            "233.252.0.1:4000".parse::<std::net::SocketAddr>().unwrap()
        );
    }

    #[test]
    fn other_streams_are_rejected_in_order_with_port_zero() {
        let offer = offer_with(
            "m=video 5000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
             m=audio 0 RTP/AVP 0\r\n\
             m=audio 4000 RTP/AVPF 8 0\r\n\
             m=application 6000 UDP/DTLS/SCTP webrtc-datachannel\r\n",
        );
        let (answer, n) = answer_offer(&offer, &local(BOTH)).unwrap();
        assert_eq!((n.remote.port(), n.codec), (4000, Codec::Pcmu));
        let m_lines: Vec<&str> = answer.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(
            m_lines,
            vec![
                "m=video 0 RTP/AVP 96",
                "m=audio 0 RTP/AVP 0",
                "m=audio 20000 RTP/AVP 0",
                "m=application 0 UDP/DTLS/SCTP webrtc-datachannel",
            ]
        );
    }

    #[test]
    fn ptime_is_read() {
        let offer = offer_with("m=audio 4000 RTP/AVP 0\r\na=ptime:30\r\n");
        assert_eq!(answer_offer(&offer, &local(BOTH)).unwrap().1.ptime_ms, 30);
        let offer = offer_with("m=audio 4000 RTP/AVP 0\r\na=ptime:20.0\r\n");
        assert_eq!(answer_offer(&offer, &local(BOTH)).unwrap().1.ptime_ms, 20);
    }

    #[test]
    fn lf_only_and_blank_lines_are_accepted() {
        let offer = FS_OFFER.replace("\r\n", "\n") + "\n\n";
        assert_eq!(
            answer_offer(&offer, &local(BOTH)).unwrap().1.codec,
            Codec::Pcmu
        );
    }

    fn err(offer: &str) -> SdpError {
        answer_offer(offer, &local(BOTH)).unwrap_err()
    }

    #[test]
    fn garbage_and_missing_parts_are_clear_errors() {
        assert_eq!(err(""), SdpError::MissingVersion);
        assert_eq!(err("hello world"), SdpError::MissingVersion);
        assert_eq!(
            err("v=1\r\nm=audio 1 RTP/AVP 0\r\n"),
            SdpError::MissingVersion
        );
        assert_eq!(
            err("o=- 1 1 IN IP4 1.2.3.4\r\nv=0\r\n"),
            SdpError::MissingVersion
        );
        assert_eq!(err("\u{1F600}=0"), SdpError::MissingVersion);
        assert!(matches!(
            err("v=0\r\nthis is not sdp\r\n"),
            SdpError::BadLine { line: 2, .. }
        ));
        assert!(matches!(
            err("v=0\r\nX=1\r\n"),
            SdpError::BadLine { line: 2, .. }
        ));
        assert_eq!(err("v=0\r\nc=IN IP4 1.2.3.4\r\n"), SdpError::NoAudio);
        assert_eq!(
            err(&offer_with("m=video 5000 RTP/AVP 96\r\n")),
            SdpError::NoAudio
        );
        assert_eq!(
            err("v=0\r\nm=audio 4000 RTP/AVP 0\r\n"),
            SdpError::NoConnection
        );
        assert_eq!(
            err(&offer_with("m=audio 0 RTP/AVP 0\r\n")),
            SdpError::StreamRejected
        );
        assert_eq!(
            err(&offer_with("m=audio 4000 RTP/SAVP 0\r\n")),
            SdpError::UnsupportedProfile("RTP/SAVP".into())
        );
        let huge = format!("{FS_OFFER}{}", "a=x\r\n".repeat(MAX_SDP_LEN / 5));
        assert!(matches!(err(&huge), SdpError::TooLarge { .. }));
    }

    #[test]
    fn bad_ports_are_errors() {
        for port in ["abc", "70000", "-1", "", "4000/x/", "+5"] {
            let offer = offer_with(&format!("m=audio {port} RTP/AVP 0\r\n"));
            let e = err(&offer);
            assert!(
                matches!(
                    e,
                    SdpError::BadPort { line: 6, .. } | SdpError::BadMedia { line: 6, .. }
                ),
                "{port:?}: {e:?}"
            );
        }
        assert!(matches!(
            err(&offer_with("m=audio 70000 RTP/AVP 0\r\n")),
            SdpError::BadPort { .. }
        ));
    }

    #[test]
    fn bad_media_lines_are_errors() {
        for m in [
            "m=audio",
            "m=audio 4000",
            "m=audio 4000 RTP/AVP",
            "m=audio 4000 RTP/AVP  ",
            "m=audio 4000 RTP/AVP PCMU",
            "m=audio 4000 RTP/AVP 0 300",
            "m=audio 4000 RTP/AVP 128",
            "m= 4000 RTP/AVP 0",
        ] {
            let e = err(&offer_with(&format!("{m}\r\n")));
            assert!(
                matches!(e, SdpError::BadMedia { line: 6, .. }),
                "{m:?}: {e:?}"
            );
        }
    }

    #[test]
    fn bad_connection_lines_are_errors() {
        for c in [
            "c=IN IP4 pbx.example.com",
            "c=IN IP4 2001:db8::1",
            "c=IN IP6 10.0.0.1",
            "c=IN IP5 10.0.0.1",
            "c=ATM IP4 10.0.0.1",
            "c=IN IP4",
            "c=IN IP4 10.0.0.1 extra",
            "c=IN IP4 999.0.0.1",
            "c=",
        ] {
            let offer = format!("v=0\r\n{c}\r\nm=audio 4000 RTP/AVP 0\r\n");
            let e = err(&offer);
            assert!(
                matches!(e, SdpError::BadConnection { line: 2, .. }),
                "{c:?}: {e:?}"
            );
        }
    }

    #[test]
    fn bad_attributes_that_matter_are_errors() {
        for a in [
            "a=rtpmap:",
            "a=rtpmap:0",
            "a=rtpmap:x PCMU/8000",
            "a=rtpmap:200 PCMU/8000",
            "a=rtpmap:0 PCMU",
            "a=rtpmap:0 PCMU/fast",
            "a=ptime:",
            "a=ptime:0",
            "a=ptime:soon",
            "a=ptime:99999999999",
        ] {
            let e = err(&offer_with(&format!("m=audio 4000 RTP/AVP 0\r\n{a}\r\n")));
            assert!(
                matches!(e, SdpError::BadAttribute { line: 7, .. }),
                "{a:?}: {e:?}"
            );
        }
        // Attributes of streams we reject, and ones we do not use, are not checked.
        let offer = offer_with("m=video 5000 RTP/AVP 96\r\na=rtpmap:96\r\nm=audio 4000 RTP/AVP 0\r\na=fmtp:garbage\r\na=weird\r\n");
        assert!(answer_offer(&offer, &local(BOTH)).is_ok());
    }

    #[test]
    fn errors_do_not_echo_huge_lines() {
        let long = "x".repeat(5000);
        let e = err(&offer_with(&format!("m=audio {long} RTP/AVP 0\r\n")));
        assert!(e.to_string().len() < 200, "{e}");
    }

    #[test]
    fn answer_is_parsed_in_the_answerers_order() {
        let answer = offer_with(
            "m=audio 5004 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\n",
        );
        let n = parse_answer(&answer, BOTH).unwrap();
        assert_eq!(
            n,
            Negotiated {
                remote: remote(5004),
                codec: Codec::Pcma,
                payload_type: 8,
                dtmf_pt: Some(101),
                direction: Direction::SendRecv,
                ptime_ms: 20,
                on_hold: false,
            }
        );
        // An answered codec we did not offer is skipped.
        let n = parse_answer(&answer, &[Codec::Pcmu]).unwrap();
        assert_eq!(n.codec, Codec::Pcmu);
    }

    #[test]
    fn answer_directions_and_rejections() {
        let recvonly = offer_with("m=audio 5004 RTP/AVP 0\r\na=recvonly\r\n");
        let n = parse_answer(&recvonly, BOTH).unwrap();
        assert_eq!(n.direction, Direction::SendOnly);
        assert!(!n.on_hold);
        let inactive = offer_with("m=audio 5004 RTP/AVP 0\r\na=inactive\r\n");
        assert_eq!(
            parse_answer(&inactive, BOTH).unwrap().direction,
            Direction::Inactive
        );
        assert_eq!(
            parse_answer(&offer_with("m=audio 0 RTP/AVP 0\r\n"), BOTH),
            Err(SdpError::StreamRejected)
        );
        assert_eq!(
            parse_answer(&offer_with("m=audio 5004 RTP/AVP 8\r\n"), &[Codec::Pcmu]),
            Err(SdpError::NoCommonCodec)
        );
        assert_eq!(
            parse_answer(&offer_with("m=video 5004 RTP/AVP 96\r\n"), BOTH),
            Err(SdpError::NoAudio)
        );
        assert_eq!(
            parse_answer(&offer_with("m=audio 5004 RTP/SAVP 0\r\n"), BOTH),
            Err(SdpError::UnsupportedProfile("RTP/SAVP".into()))
        );
        assert_eq!(
            parse_answer("v=0\r\nm=audio 5004 RTP/AVP 0\r\n", BOTH),
            Err(SdpError::NoConnection)
        );
        assert_eq!(
            parse_answer("SIP/2.0 200 OK", BOTH),
            Err(SdpError::MissingVersion)
        );
    }

    #[test]
    fn reinvite_bumps_version_and_keeps_session_id() {
        let mut l = local(BOTH);
        let first = build_offer(&l);
        l.bump_version();
        l.direction = Direction::SendOnly;
        let hold = build_offer(&l);
        assert!(first.contains("o=srbridge 42 1 "));
        assert!(hold.contains("o=srbridge 42 2 "));
        assert!(hold.contains("a=sendonly"));
        l.version = u64::MAX;
        l.bump_version();
        assert_eq!(l.version, 0);
        assert!(new_session_id() < 1 << 62);
    }

    /// Random edits of valid offers and answers, plus raw noise: never a panic, and whatever is
    /// accepted yields an answer we can read back.
    #[test]
    fn mutated_inputs_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5D9);
        let seeds = [
            FS_OFFER.to_string(),
            build_offer(&local(BOTH)),
            offer_with("m=video 5000 RTP/AVP 96\r\nm=audio 4000 RTP/AVP 97 8\r\na=rtpmap:97 PCMU/8000\r\nc=IN IP6 ::1\r\na=sendonly\r\n"),
        ];
        let alphabet = b"v=0 moca:/\r\n.-IP46 RTP/AVP 0 8 101 65535 \xff";
        for i in 0..20_000 {
            let mut bytes = seeds[i % seeds.len()].clone().into_bytes();
            for _ in 0..rng.gen_range(1..6) {
                let pos = rng.gen_range(0..=bytes.len());
                match rng.gen_range(0..5) {
                    0 if pos < bytes.len() => bytes[pos] = rng.gen(),
                    1 if pos < bytes.len() => {
                        bytes.remove(pos);
                    }
                    2 => bytes.insert(pos, alphabet[rng.gen_range(0..alphabet.len())]),
                    3 => bytes.truncate(pos),
                    _ => {
                        let end = rng.gen_range(pos..=bytes.len());
                        let chunk = bytes[pos..end].to_vec();
                        bytes.splice(pos..pos, chunk);
                    }
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Ok((answer, n)) = answer_offer(&text, &local(BOTH)) {
                let back = parse_answer(&answer, BOTH).expect("our own answer must parse");
                assert_eq!(back.codec, n.codec);
            }
            let _ = parse_answer(&text, BOTH);
        }
        for _ in 0..2_000 {
            let len = rng.gen_range(0..300);
            let noise: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let text = String::from_utf8_lossy(&noise);
            assert!(answer_offer(&text, &local(BOTH)).is_err() || text.starts_with("v=0"));
            let _ = parse_answer(&format!("v=0\r\n{text}"), BOTH);
        }
    }
}
