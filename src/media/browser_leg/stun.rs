//! Just enough STUN (RFC 8489) to route an ICE binding request by its USERNAME and check its
//! MESSAGE-INTEGRITY before a datagram's source address is trusted: borrowed slices, no
//! allocation, so a flood of forged requests costs one HMAC each at most.

use hmac::{Hmac, Mac};
use sha1::Sha1;

const HEADER_LEN: usize = 20;
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const BINDING_REQUEST: u16 = 0x0001;
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const INTEGRITY_LEN: usize = 20;

/// An ICE connectivity check (a STUN Binding request with USERNAME), borrowed from a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingRequest<'a> {
    /// The recipient's username fragment: the part of USERNAME before the colon (RFC 8445
    /// §7.2.2), i.e. the ufrag of the leg the check is meant for.
    pub local_ufrag: &'a str,
    datagram: &'a [u8],
    /// Offset of the MESSAGE-INTEGRITY attribute's header, if present.
    integrity_at: Option<usize>,
}

/// Parses `datagram` as a STUN Binding request carrying USERNAME; `None` for anything else
/// (responses, indications, other protocols, truncated or malformed messages).
pub fn binding_request(datagram: &[u8]) -> Option<BindingRequest<'_>> {
    let header = datagram.get(..HEADER_LEN)?;
    if u16::from_be_bytes([header[0], header[1]]) != BINDING_REQUEST || header[4..8] != MAGIC_COOKIE
    {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let body = datagram.get(HEADER_LEN..HEADER_LEN + len)?;
    let mut at = 0;
    let mut username = None;
    let mut integrity_at = None;
    while at + 4 <= body.len() {
        let kind = u16::from_be_bytes([body[at], body[at + 1]]);
        let value_len = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        let value = body.get(at + 4..at + 4 + value_len)?;
        match kind {
            ATTR_USERNAME if integrity_at.is_none() => username = Some(value),
            ATTR_MESSAGE_INTEGRITY if integrity_at.is_none() => {
                if value_len != INTEGRITY_LEN {
                    return None;
                }
                integrity_at = Some(HEADER_LEN + at);
            }
            _ => {}
        }
        at += 4 + value_len.div_ceil(4) * 4;
    }
    let username = std::str::from_utf8(username?).ok()?;
    let local_ufrag = username.split_once(':').map_or(username, |(l, _)| l);
    if local_ufrag.is_empty() {
        return None;
    }
    Some(BindingRequest {
        local_ufrag,
        datagram,
        integrity_at,
    })
}

impl BindingRequest<'_> {
    /// Whether MESSAGE-INTEGRITY is present and is the HMAC-SHA1 of the message under the
    /// short-term key `pwd` (our `a=ice-pwd`), per RFC 8489 §14.5.
    pub fn verify(&self, pwd: &str) -> bool {
        let Some(at) = self.integrity_at else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(pwd.as_bytes()) else {
            return false;
        };
        // The length field covers the message up to the end of MESSAGE-INTEGRITY.
        let covered = (at + 4 + INTEGRITY_LEN - HEADER_LEN) as u16;
        mac.update(&self.datagram[..2]);
        mac.update(&covered.to_be_bytes());
        mac.update(&self.datagram[4..at]);
        mac.verify_slice(&self.datagram[at + 4..at + 4 + INTEGRITY_LEN])
            .is_ok()
    }
}

/// Builds a Binding request (for tests and the micro-benchmark): USERNAME `local:remote`,
/// MESSAGE-INTEGRITY under `pwd`.
pub fn build_binding_request(username: &str, pwd: &str, transaction: [u8; 12]) -> Vec<u8> {
    let mut m = Vec::with_capacity(128);
    m.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&MAGIC_COOKIE);
    m.extend_from_slice(&transaction);
    m.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
    m.extend_from_slice(&(username.len() as u16).to_be_bytes());
    m.extend_from_slice(username.as_bytes());
    m.resize(m.len().div_ceil(4) * 4, 0);
    let integrity_at = m.len();
    let covered = (integrity_at + 4 + INTEGRITY_LEN - HEADER_LEN) as u16;
    m[2..4].copy_from_slice(&covered.to_be_bytes());
    // HMAC takes keys of any length: this cannot fail.
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(pwd.as_bytes()) else {
        return Vec::new();
    };
    mac.update(&m);
    let tag = mac.finalize().into_bytes();
    m.extend_from_slice(&ATTR_MESSAGE_INTEGRITY.to_be_bytes());
    m.extend_from_slice(&(INTEGRITY_LEN as u16).to_be_bytes());
    m.extend_from_slice(&tag);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_request_names_its_recipient_and_verifies_with_its_password() {
        let m = build_binding_request("bridgeufrag:browser", "the-password-0123456789", [7; 12]);
        let req = binding_request(&m).expect("a binding request");
        assert_eq!(req.local_ufrag, "bridgeufrag");
        assert!(req.verify("the-password-0123456789"));
        assert!(!req.verify("another-password-0123456"));
    }

    #[test]
    fn a_tampered_request_fails_integrity() {
        let mut m = build_binding_request("bridgeufrag:browser", "pw-0123456789012345678", [1; 12]);
        m[12] ^= 1; // the transaction id is covered by the HMAC
        assert!(!binding_request(&m)
            .unwrap()
            .verify("pw-0123456789012345678"));
    }

    #[test]
    fn the_recipient_ufrag_of_a_webrtc_rs_request_is_found() {
        // A check built by webrtc-rs's own STUN code (its integrity is exercised end to end by
        // the single-port test, where a wrong HMAC would keep the call from connecting).
        use rtc::stun::message::{Message, TransactionId, BINDING_REQUEST as REQ};
        use rtc::stun::textattrs::Username;
        let mut m = Message::new();
        m.build(&[
            Box::new(REQ),
            Box::new(TransactionId::new()),
            Box::new(Username::new(
                rtc::stun::attributes::ATTR_USERNAME,
                "ours:theirs".to_owned(),
            )),
        ])
        .unwrap();
        let req = binding_request(&m.raw).unwrap();
        assert_eq!(req.local_ufrag, "ours");
        assert!(!req.verify("any"), "no MESSAGE-INTEGRITY: never verified");
    }

    #[test]
    fn other_datagrams_and_malformed_messages_are_not_requests() {
        assert_eq!(binding_request(&[]), None);
        assert_eq!(binding_request(&[0x80, 0, 0, 0]), None, "RTP");
        let good = build_binding_request("a:b", "pw-0123456789012345678", [0; 12]);
        let mut response = good.clone();
        response[0..2].copy_from_slice(&0x0101u16.to_be_bytes());
        assert_eq!(binding_request(&response), None, "a response");
        let mut no_cookie = good.clone();
        no_cookie[4] = 0;
        assert_eq!(binding_request(&no_cookie), None);
        // Every truncation of a valid request is refused without a panic.
        for n in 0..good.len() {
            let _ = binding_request(&good[..n]);
        }
        let mut long_attr = good.clone();
        long_attr[22..24].copy_from_slice(&0xFFFFu16.to_be_bytes());
        assert_eq!(binding_request(&long_attr), None, "attribute past the end");
        let mut empty_user = build_binding_request(":b", "pw-0123456789012345678", [0; 12]);
        assert_eq!(binding_request(&empty_user), None, "empty recipient ufrag");
        empty_user[20..22].copy_from_slice(&0x0020u16.to_be_bytes());
        assert_eq!(binding_request(&empty_user), None, "no USERNAME");
    }
}
