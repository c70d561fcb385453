//! rtpengine's `ng` control protocol, the messages only: a request is `<cookie> <bencoded dict>`
//! in one UDP datagram, the reply `<same cookie> <bencoded dict>` with `result` = `ok`, `error`
//! (with `error-reason`) or `pong`. Requests are built by typed builders for what the load tool
//! needs (offer, answer, delete, ping); sending, retrying and matching replies is the caller's.

use thiserror::Error;

use super::bencode::{Bencode, BencodeError};

/// Which kind of endpoint an SDP rtpengine produces is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// A browser: ICE, DTLS-SRTP, RTCP multiplexed on the RTP port.
    WebRtc,
    /// A SIP phone or gateway: plain RTP/AVP, RTCP on the next port, no ICE.
    PlainRtp,
}

impl Endpoint {
    /// The flags that turn rtpengine's output SDP into this kind of endpoint's.
    fn flags(self, entries: &mut Vec<(&'static str, Bencode)>) {
        match self {
            Endpoint::WebRtc => {
                entries.push(("transport-protocol", Bencode::str("UDP/TLS/RTP/SAVPF")));
                entries.push(("ICE", Bencode::str("force")));
                entries.push(("rtcp-mux", Bencode::strs(&["offer", "require"])));
                entries.push(("SDES", Bencode::strs(&["off"])));
                // A SIP offer has no a=mid, which WebRTC stacks require.
                entries.push(("flags", Bencode::strs(&["generate-mid"])));
            }
            Endpoint::PlainRtp => {
                entries.push(("transport-protocol", Bencode::str("RTP/AVP")));
                entries.push(("ICE", Bencode::str("remove")));
                entries.push(("DTLS", Bencode::str("off")));
                entries.push(("rtcp-mux", Bencode::strs(&["demux"])));
                entries.push(("SDES", Bencode::strs(&["off"])));
            }
        }
    }
}

/// What rtpengine does to the codecs of an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codecs {
    /// Passes the offered codecs through (both legs must share one).
    Relay,
    /// Offers `to` instead of `from` on the other leg and transcodes between them
    /// (`codec: { transcode: [to], mask: [from] }`), e.g. Opus from a browser to PCMU.
    Transcode {
        from: &'static str,
        to: &'static str,
    },
}

/// One call's identity at rtpengine: the SIP Call-ID and the tag of the party that offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRef {
    pub call_id: String,
    pub from_tag: String,
}

/// `offer`: `sdp` from the offering party; the reply holds the SDP for `toward`.
pub fn offer(call: &CallRef, sdp: &str, toward: Endpoint, codecs: Codecs) -> Bencode {
    let mut entries = base("offer", call);
    entries.push(("sdp", Bencode::str(sdp)));
    toward.flags(&mut entries);
    if let Codecs::Transcode { from, to } = codecs {
        entries.push((
            "codec",
            Bencode::dict([
                ("transcode", Bencode::strs(&[to])),
                ("mask", Bencode::strs(&[from])),
            ]),
        ));
    }
    Bencode::dict(entries)
}

/// `answer`: `sdp` from the answering party `to_tag`; the reply holds the SDP for `toward` (the
/// offerer).
pub fn answer(call: &CallRef, to_tag: &str, sdp: &str, toward: Endpoint) -> Bencode {
    let mut entries = base("answer", call);
    entries.push(("to-tag", Bencode::str(to_tag)));
    entries.push(("sdp", Bencode::str(sdp)));
    toward.flags(&mut entries);
    Bencode::dict(entries)
}

/// `delete`: ends the call and frees its ports.
pub fn delete(call: &CallRef) -> Bencode {
    Bencode::dict(base("delete", call))
}

/// `ping`: rtpengine answers `pong` (is it up?).
pub fn ping() -> Bencode {
    Bencode::dict([("command", Bencode::str("ping"))])
}

fn base(command: &str, call: &CallRef) -> Vec<(&'static str, Bencode)> {
    vec![
        ("command", Bencode::str(command)),
        ("call-id", Bencode::str(&call.call_id)),
        ("from-tag", Bencode::str(&call.from_tag)),
    ]
}

/// The datagram of request `body` under `cookie` (unique per request; a retransmission reuses it,
/// and rtpengine answers it from its cache).
pub fn datagram(cookie: &str, body: &Bencode) -> Vec<u8> {
    let mut out = cookie.as_bytes().to_vec();
    out.push(b' ');
    out.extend(body.encode());
    out
}

/// Why a reply is unusable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NgError {
    #[error("reply without a cookie")]
    NoCookie,
    #[error("reply is not bencode: {0}")]
    Bencode(#[from] BencodeError),
    #[error("reply has no `result`")]
    NoResult,
    #[error("rtpengine refused: {0}")]
    Refused(String),
    #[error("rtpengine's reply has no SDP")]
    NoSdp,
}

/// A successful reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// `ok` or `pong`.
    pub result: String,
    /// The rewritten SDP (offer, answer).
    pub sdp: Option<String>,
    /// `warning`, if rtpengine added one.
    pub warning: Option<String>,
}

impl Reply {
    /// The SDP, which offer and answer replies must carry.
    pub fn into_sdp(self) -> Result<String, NgError> {
        self.sdp.ok_or(NgError::NoSdp)
    }
}

/// Splits a reply datagram into its cookie and body: `Ok(None)` if the cookie is another
/// request's (a late reply to a retransmission), the reply (or rtpengine's error) otherwise.
pub fn parse_reply(datagram: &[u8], cookie: &str) -> Result<Option<Reply>, NgError> {
    let space = datagram
        .iter()
        .position(|b| *b == b' ')
        .ok_or(NgError::NoCookie)?;
    if &datagram[..space] != cookie.as_bytes() {
        return Ok(None);
    }
    let body = Bencode::decode(&datagram[space + 1..])?;
    let text = |key: &str| body.get(key).and_then(Bencode::as_str).map(str::to_owned);
    let result = text("result").ok_or(NgError::NoResult)?;
    if result == "error" {
        let reason = text("error-reason").unwrap_or_else(|| "(no reason given)".into());
        return Err(NgError::Refused(reason));
    }
    Ok(Some(Reply {
        result,
        sdp: text("sdp"),
        warning: text("warning"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> CallRef {
        CallRef {
            call_id: "c1".into(),
            from_tag: "web".into(),
        }
    }

    fn text(b: &Bencode, key: &str) -> String {
        b.get(key)
            .and_then(Bencode::as_str)
            .unwrap_or("")
            .to_owned()
    }

    #[test]
    fn a_transcoding_offer_toward_sip_removes_ice_and_dtls_and_swaps_opus_for_pcmu() {
        let o = offer(
            &call(),
            "v=0\r\n",
            Endpoint::PlainRtp,
            Codecs::Transcode {
                from: "opus",
                to: "PCMU",
            },
        );
        assert_eq!(text(&o, "command"), "offer");
        assert_eq!(text(&o, "call-id"), "c1");
        assert_eq!(text(&o, "from-tag"), "web");
        assert_eq!(text(&o, "sdp"), "v=0\r\n");
        assert_eq!(text(&o, "transport-protocol"), "RTP/AVP");
        assert_eq!(text(&o, "ICE"), "remove");
        assert_eq!(text(&o, "DTLS"), "off");
        let codec = o.get("codec").expect("codec");
        assert_eq!(codec.get("transcode"), Some(&Bencode::strs(&["PCMU"])));
        assert_eq!(codec.get("mask"), Some(&Bencode::strs(&["opus"])));
    }

    #[test]
    fn a_relayed_offer_toward_a_browser_forces_ice_and_leaves_codecs_alone() {
        let o = offer(&call(), "v=0\r\n", Endpoint::WebRtc, Codecs::Relay);
        assert_eq!(text(&o, "transport-protocol"), "UDP/TLS/RTP/SAVPF");
        assert_eq!(text(&o, "ICE"), "force");
        assert_eq!(
            o.get("rtcp-mux"),
            Some(&Bencode::strs(&["offer", "require"]))
        );
        assert_eq!(o.get("codec"), None);
        assert_eq!(o.get("flags"), Some(&Bencode::strs(&["generate-mid"])));
    }

    #[test]
    fn answer_carries_the_to_tag_and_delete_only_the_call() {
        let a = answer(&call(), "sip", "v=0\r\n", Endpoint::WebRtc);
        assert_eq!(text(&a, "command"), "answer");
        assert_eq!(text(&a, "to-tag"), "sip");
        let d = delete(&call());
        assert_eq!(
            d.encode(),
            b"d7:call-id2:c17:command6:delete8:from-tag3:webe".to_vec()
        );
        assert_eq!(datagram("k1", &ping()), b"k1 d7:command4:pinge".to_vec());
    }

    #[test]
    fn replies_give_the_sdp_or_rtpengine_s_reason() {
        let ok = parse_reply(b"k1 d6:result2:ok3:sdp5:v=0\r\ne", "k1")
            .unwrap()
            .unwrap();
        assert_eq!(ok.result, "ok");
        assert_eq!(ok.clone().into_sdp(), Ok("v=0\r\n".to_string()));
        let pong = parse_reply(b"k2 d6:result4:ponge", "k2").unwrap().unwrap();
        assert_eq!(pong.into_sdp(), Err(NgError::NoSdp));
        assert_eq!(
            parse_reply(b"k3 d6:result5:error12:error-reason12:Unknown calle", "k3"),
            Err(NgError::Refused("Unknown call".into()))
        );
    }

    #[test]
    fn bad_and_foreign_replies_are_told_apart() {
        assert_eq!(parse_reply(b"k9 d6:result2:oke", "k1"), Ok(None));
        assert_eq!(parse_reply(b"nocookie", "k1"), Err(NgError::NoCookie));
        assert_eq!(parse_reply(b"k1 d3:sdp0:e", "k1"), Err(NgError::NoResult));
        assert!(matches!(
            parse_reply(b"k1 d6:result2:o", "k1"),
            Err(NgError::Bencode(_))
        ));
        assert_eq!(
            parse_reply(b"k1 d6:result5:errore", "k1"),
            Err(NgError::Refused("(no reason given)".into()))
        );
    }
}
