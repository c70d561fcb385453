//! The two bits of SDP the rtpengine calls need that no party writes for them: the SIP side's
//! (SIPp's echo, which has no SDP of its own outside a SIP dialog) and a browser's with its
//! gathered candidates inline (rtpengine takes no trickled candidates over `ng`). Text in, text
//! out.

use std::net::SocketAddr;

use serde_json::Value;

/// What a plain SIP phone at `media` says: PCMU on RTP/AVP, RTCP on the next port.
pub fn plain_pcmu(media: SocketAddr, session_id: u64) -> String {
    let family = if media.is_ipv4() { "IP4" } else { "IP6" };
    let ip = media.ip();
    format!(
        "v=0\r\n\
         o=- {session_id} 1 IN {family} {ip}\r\n\
         s=-\r\n\
         c=IN {family} {ip}\r\n\
         t=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\n\
         a=rtpmap:0 PCMU/8000\r\n\
         a=ptime:20\r\n\
         a=sendrecv\r\n",
        port = media.port()
    )
}

/// The `candidate:…` attribute of a trickled candidate (`RTCIceCandidateInit` JSON); `None`
/// for the end-of-candidates marker or anything else.
pub fn candidate_attribute(json: &str) -> Option<String> {
    let value: Value = serde_json::from_str(json).ok()?;
    let line = value.get("candidate")?.as_str()?.trim();
    line.starts_with("candidate:").then(|| line.to_string())
}

/// The address of a `candidate:<foundation> <component> <transport> <priority> <ip> <port> …`.
fn candidate_address(candidate: &str) -> Option<(&str, u16)> {
    let mut fields = candidate.split_whitespace().skip(4);
    let ip = fields.next()?;
    let port = fields.next()?.parse().ok()?;
    Some((ip, port))
}

/// `sdp` with `a=<candidate>` lines and `a=end-of-candidates` added to its (one) audio section,
/// and the first candidate's address on its `m=` and `c=` lines, as a browser's SDP reads once
/// gathering completed (webrtc-rs writes port 0 there before, which reads as a refused stream).
/// Lines end in CRLF whatever `sdp` used.
pub fn with_candidates(sdp: &str, candidates: &[String]) -> String {
    let default = candidates.first().and_then(|c| candidate_address(c));
    let mut out = String::with_capacity(sdp.len() + candidates.len() * 100 + 32);
    for line in sdp.lines().filter(|l| !l.trim().is_empty()) {
        if line.starts_with("a=candidate:") || line == "a=end-of-candidates" {
            continue;
        }
        match (default, line.strip_prefix("m=audio ")) {
            (Some((_, port)), Some(rest)) => {
                let protocol_and_formats = rest.split_once(' ').map_or("", |(_, r)| r);
                out.push_str(&format!("m=audio {port} {protocol_and_formats}"));
            }
            (Some((ip, _)), None) if line.starts_with("c=IN ") => {
                let family = if ip.contains(':') { "IP6" } else { "IP4" };
                out.push_str(&format!("c=IN {family} {ip}"));
            }
            _ => out.push_str(line),
        }
        out.push_str("\r\n");
    }
    for c in candidates {
        out.push_str("a=");
        out.push_str(c);
        out.push_str("\r\n");
    }
    out.push_str("a=end-of-candidates\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_echo_s_sdp_offers_pcmu_at_its_port() {
        let sdp = plain_pcmu("127.0.0.1:6000".parse().unwrap(), 7);
        assert!(sdp.contains("c=IN IP4 127.0.0.1\r\n"), "{sdp}");
        assert!(sdp.contains("m=audio 6000 RTP/AVP 0\r\n"), "{sdp}");
        assert!(sdp.contains("o=- 7 1 IN IP4"), "{sdp}");
        let v6 = plain_pcmu("[::1]:6000".parse().unwrap(), 7);
        assert!(v6.contains("c=IN IP6 ::1\r\n"), "{v6}");
    }

    #[test]
    fn candidates_come_from_the_trickle_json_and_markers_are_skipped() {
        let json = r#"{"candidate":"candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}"#;
        assert_eq!(
            candidate_attribute(json).as_deref(),
            Some("candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host")
        );
        assert_eq!(candidate_attribute(r#"{"candidate":""}"#), None);
        assert_eq!(candidate_attribute("null"), None);
        assert_eq!(candidate_attribute("not json"), None);
        assert_eq!(candidate_attribute(r#"{"candidate":"a=evil"}"#), None);
    }

    #[test]
    fn candidates_go_inline_once_and_the_first_one_is_the_default_address() {
        let sdp =
            "v=0\nm=audio 0 UDP/TLS/RTP/SAVPF 111\nc=IN IP4 0.0.0.0\na=candidate:old\na=mid:0\n\n";
        let out = with_candidates(
            sdp,
            &[
                "candidate:new 1 udp 1 127.0.0.1 5000 typ host".into(),
                "candidate:two 1 udp 1 ::1 6000 typ host".into(),
            ],
        );
        assert_eq!(
            out,
            "v=0\r\nm=audio 5000 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 127.0.0.1\r\na=mid:0\r\n\
             a=candidate:new 1 udp 1 127.0.0.1 5000 typ host\r\n\
             a=candidate:two 1 udp 1 ::1 6000 typ host\r\na=end-of-candidates\r\n"
        );
    }

    #[test]
    fn without_a_usable_candidate_the_address_lines_stay() {
        let sdp = "m=audio 9 RTP/AVP 0\r\nc=IN IP4 0.0.0.0\r\n";
        for candidates in [
            vec![],
            vec!["candidate:x 1 udp 1 127.0.0.1 notaport".to_string()],
        ] {
            let out = with_candidates(sdp, &candidates);
            assert!(out.starts_with(sdp), "{out}");
        }
    }
}
