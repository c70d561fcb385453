//! What a datagram on a media port is, by its first byte (RFC 7983 §7), sans-IO.
//!
//! The SIP leg speaks plain RTP, so STUN or DTLS arriving there is a stranger's probe or garbage;
//! classifying it lets the leg count it under its own error kind instead of "malformed RTP".

/// The protocol family a datagram's first byte announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramKind {
    /// Empty datagram.
    Empty,
    /// STUN (first byte 0..=3).
    Stun,
    /// ZRTP (16..=19).
    Zrtp,
    /// DTLS (20..=63).
    Dtls,
    /// TURN ChannelData (64..=79).
    TurnChannel,
    /// RTP or RTCP (128..=191).
    Rtp,
    /// Anything else.
    Unknown,
}

/// Classifies `datagram` by its first byte as RFC 7983 demultiplexes media ports.
pub fn classify(datagram: &[u8]) -> DatagramKind {
    match datagram.first() {
        None => DatagramKind::Empty,
        Some(0..=3) => DatagramKind::Stun,
        Some(16..=19) => DatagramKind::Zrtp,
        Some(20..=63) => DatagramKind::Dtls,
        Some(64..=79) => DatagramKind::TurnChannel,
        Some(128..=191) => DatagramKind::Rtp,
        Some(_) => DatagramKind::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_first_byte_maps_to_its_rfc_7983_range() {
        assert_eq!(classify(&[]), DatagramKind::Empty);
        for b in 0u8..=255 {
            let want = match b {
                0..=3 => DatagramKind::Stun,
                16..=19 => DatagramKind::Zrtp,
                20..=63 => DatagramKind::Dtls,
                64..=79 => DatagramKind::TurnChannel,
                128..=191 => DatagramKind::Rtp,
                _ => DatagramKind::Unknown,
            };
            assert_eq!(classify(&[b, 0, 0]), want, "first byte {b}");
        }
    }

    #[test]
    fn real_first_bytes_are_recognised() {
        // STUN Binding Request, DTLS ClientHello record, an RTP v2 header.
        assert_eq!(classify(&[0x00, 0x01, 0x00, 0x00]), DatagramKind::Stun);
        assert_eq!(classify(&[22, 0xFE, 0xFD]), DatagramKind::Dtls);
        assert_eq!(classify(&[0x80, 0x00]), DatagramKind::Rtp);
    }
}
