//! RTP (RFC 3550) packets and RFC 4733 telephone-events for the SIP leg, sans-IO.
//!
//! Parsing borrows from the datagram and writing fills a caller-provided buffer, so a packet costs
//! no allocation. [`RtpSender`] keeps one outgoing stream's SSRC, sequence number and timestamp
//! consistent across silence and DTMF, the way phones and PBXes expect (RFC 3551 §4.1: marker on
//! the first packet of a talkspurt, timestamp following wall-clock time across gaps).

use std::time::Duration;

/// Fixed RTP header size (no CSRCs, no extension).
pub const RTP_HEADER_LEN: usize = 12;

/// Why a datagram is not a usable RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    /// Shorter than the headers it announces.
    #[error("RTP packet too short: {len} bytes, need {need}")]
    TooShort {
        /// Datagram length.
        len: usize,
        /// Bytes the headers require.
        need: usize,
    },
    /// Not RTP version 2 (STUN, DTLS, garbage).
    #[error("not RTP version 2 (version {0})")]
    BadVersion(u8),
    /// Padding count of zero or larger than the payload.
    #[error("invalid RTP padding length {0}")]
    BadPadding(u8),
    /// An RTCP packet multiplexed on the RTP port (RFC 5761): not media, skip it.
    #[error("RTCP packet (type {0}) on the RTP port")]
    Rtcp(u8),
    /// The output buffer cannot hold the packet.
    #[error("output buffer too small: need {need} bytes, have {have}")]
    BufferTooSmall {
        /// Bytes required.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// Payload type above 127 in a header to be written.
    #[error("invalid RTP payload type {0}")]
    BadPayloadType(u8),
}

/// A header extension (RFC 3550 §5.3.1), kept opaque: the bridge never interprets one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpExtension<'a> {
    /// The profile-defined 16-bit identifier.
    pub profile: u16,
    /// Extension data (a multiple of 4 bytes).
    pub data: &'a [u8],
}

/// A parsed RTP packet borrowing the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    /// Marker bit: start of a talkspurt (audio) or of a DTMF event.
    pub marker: bool,
    /// Payload type (0..=127).
    pub payload_type: u8,
    /// Sequence number.
    pub sequence: u16,
    /// Media timestamp in clock-rate units.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    csrc: &'a [u8],
    /// Header extension, if present.
    pub extension: Option<RtpExtension<'a>>,
    /// Payload with padding removed.
    pub payload: &'a [u8],
}

impl<'a> RtpPacket<'a> {
    /// Parses a datagram received on an RTP port.
    ///
    /// RTCP multiplexed on the same port is reported as [`RtpError::Rtcp`] so callers can skip
    /// it without counting it as malformed.
    pub fn parse(buf: &'a [u8]) -> Result<Self, RtpError> {
        // RFC 5761 §4: second byte 192..=223 is an RTCP packet type (SR 200, RR 201, ...);
        // the smallest RTCP packet (an empty RR) is 8 bytes.
        if buf.len() >= 8 && buf[0] >> 6 == 2 && (192..=223).contains(&buf[1]) {
            return Err(RtpError::Rtcp(buf[1]));
        }
        if buf.len() < RTP_HEADER_LEN {
            return Err(RtpError::TooShort {
                len: buf.len(),
                need: RTP_HEADER_LEN,
            });
        }
        let version = buf[0] >> 6;
        if version != 2 {
            return Err(RtpError::BadVersion(version));
        }
        let padding = buf[0] & 0x20 != 0;
        let has_ext = buf[0] & 0x10 != 0;
        let csrc_count = usize::from(buf[0] & 0x0F);
        let mut offset = RTP_HEADER_LEN + 4 * csrc_count;
        if buf.len() < offset {
            return Err(RtpError::TooShort {
                len: buf.len(),
                need: offset,
            });
        }
        let csrc = &buf[RTP_HEADER_LEN..offset];
        let extension = if has_ext {
            if buf.len() < offset + 4 {
                return Err(RtpError::TooShort {
                    len: buf.len(),
                    need: offset + 4,
                });
            }
            let profile = u16::from_be_bytes([buf[offset], buf[offset + 1]]);
            let words = usize::from(u16::from_be_bytes([buf[offset + 2], buf[offset + 3]]));
            let start = offset + 4;
            let end = start + 4 * words;
            if buf.len() < end {
                return Err(RtpError::TooShort {
                    len: buf.len(),
                    need: end,
                });
            }
            offset = end;
            Some(RtpExtension {
                profile,
                data: &buf[start..end],
            })
        } else {
            None
        };
        let mut end = buf.len();
        if padding {
            let count = buf[end - 1];
            if count == 0 || usize::from(count) > end - offset {
                return Err(RtpError::BadPadding(count));
            }
            end -= usize::from(count);
        }
        Ok(RtpPacket {
            marker: buf[1] & 0x80 != 0,
            payload_type: buf[1] & 0x7F,
            sequence: u16::from_be_bytes([buf[2], buf[3]]),
            timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
            csrc,
            extension,
            payload: &buf[offset..end],
        })
    }

    /// Contributing sources (set by mixers).
    pub fn csrcs(&self) -> impl Iterator<Item = u32> + 'a {
        self.csrc
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// What goes into an outgoing packet's header (no CSRCs, no extension: the bridge is an endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    /// Marker bit.
    pub marker: bool,
    /// Payload type (0..=127).
    pub payload_type: u8,
    /// Sequence number.
    pub sequence: u16,
    /// Media timestamp.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
}

impl RtpHeader {
    /// Writes this header and `payload` into `out`; returns the packet length.
    pub fn write(&self, payload: &[u8], out: &mut [u8]) -> Result<usize, RtpError> {
        if self.payload_type > 127 {
            return Err(RtpError::BadPayloadType(self.payload_type));
        }
        let len = RTP_HEADER_LEN + payload.len();
        if out.len() < len {
            return Err(RtpError::BufferTooSmall {
                need: len,
                have: out.len(),
            });
        }
        out[0] = 0x80;
        out[1] = self.payload_type | if self.marker { 0x80 } else { 0 };
        out[2..4].copy_from_slice(&self.sequence.to_be_bytes());
        out[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        out[RTP_HEADER_LEN..len].copy_from_slice(payload);
        Ok(len)
    }
}

/// An RFC 4733 telephone-event payload: one DTMF key press (or tone) and how long it has lasted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code: 0-9 digits, 10 `*`, 11 `#`, 12-15 A-D, 16 flash.
    pub event: u8,
    /// Set on the last packets of the event.
    pub end: bool,
    /// Power level in -dBm0, 0..=63.
    pub volume: u8,
    /// Duration so far in timestamp units (8000 Hz: 160 per 20 ms).
    pub duration: u16,
}

/// Size of one telephone-event payload.
pub const TELEPHONE_EVENT_LEN: usize = 4;

impl TelephoneEvent {
    /// Parses the first event of a telephone-event payload (extra events are ignored).
    pub fn parse(payload: &[u8]) -> Result<Self, RtpError> {
        if payload.len() < TELEPHONE_EVENT_LEN {
            return Err(RtpError::TooShort {
                len: payload.len(),
                need: TELEPHONE_EVENT_LEN,
            });
        }
        Ok(TelephoneEvent {
            event: payload[0],
            end: payload[1] & 0x80 != 0,
            volume: payload[1] & 0x3F,
            duration: u16::from_be_bytes([payload[2], payload[3]]),
        })
    }

    /// The 4-byte payload (reserved bit zero, volume limited to 63).
    pub fn to_bytes(&self) -> [u8; TELEPHONE_EVENT_LEN] {
        let d = self.duration.to_be_bytes();
        [
            self.event,
            (self.volume & 0x3F) | if self.end { 0x80 } else { 0 },
            d[0],
            d[1],
        ]
    }

    /// The event as a DTMF character, if it is one (`0-9 * # A-D`).
    pub fn digit(&self) -> Option<char> {
        dtmf_char(self.event)
    }
}

/// RFC 4733 event code to its DTMF character.
pub fn dtmf_char(event: u8) -> Option<char> {
    Some(match event {
        0..=9 => char::from(b'0' + event),
        10 => '*',
        11 => '#',
        12..=15 => char::from(b'A' + event - 12),
        _ => return None,
    })
}

/// DTMF character (`0-9 * # A-D`, case-insensitive) to its RFC 4733 event code.
pub fn dtmf_event(digit: char) -> Option<u8> {
    Some(match digit.to_ascii_uppercase() {
        d @ '0'..='9' => d as u8 - b'0',
        '*' => 10,
        '#' => 11,
        d @ 'A'..='D' => d as u8 - b'A' + 12,
        _ => return None,
    })
}

/// Packets of one outgoing telephone-event (RFC 4733 §2.5), one item per packet interval: the duration grows each packet, and the final one is sent three times with
/// the end bit so a lost packet does not leave the key pressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfEvent {
    event: u8,
    volume: u8,
    step: u16,
    total: u16,
    sent: u16,
    end_sent: u8,
}

impl DtmfEvent {
    /// How often the final packet is repeated.
    pub const END_REPEATS: u8 = 3;

    /// An event of `duration_samples` (e.g. 800 = 100 ms at 8 kHz) sent every `step_samples`
    /// (160 = 20 ms); `volume` in -dBm0 (10 is usual).
    pub fn new(event: u8, volume: u8, duration_samples: u16, step_samples: u16) -> Self {
        let step = step_samples.max(1);
        DtmfEvent {
            event,
            volume: volume.min(63),
            step,
            total: duration_samples.max(step),
            sent: 0,
            end_sent: 0,
        }
    }
}

/// Yields each packet's payload and whether it is the event's first packet (marker bit).
impl Iterator for DtmfEvent {
    type Item = (TelephoneEvent, bool);

    fn next(&mut self) -> Option<(TelephoneEvent, bool)> {
        let first = self.sent == 0 && self.end_sent == 0;
        if self.sent < self.total {
            self.sent = self.sent.saturating_add(self.step).min(self.total);
        }
        let end = self.sent >= self.total;
        if end {
            if self.end_sent >= Self::END_REPEATS {
                return None;
            }
            self.end_sent += 1;
        }
        Some((
            TelephoneEvent {
                event: self.event,
                end,
                volume: self.volume,
                duration: self.sent,
            },
            first,
        ))
    }
}

/// Turns received telephone-event packets into key presses, each reported once although its
/// packets repeat (growing duration, triple end packets) and may arrive out of order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DtmfDetector {
    /// RTP timestamp of the last event reported.
    last: Option<u32>,
}

impl DtmfDetector {
    /// Feeds one telephone-event packet; returns the key when this packet starts a new event.
    pub fn on_packet(&mut self, timestamp: u32, event: &TelephoneEvent) -> Option<char> {
        if let Some(last) = self.last {
            // Same event, or a straggler from an earlier one (timestamp not ahead of it).
            if timestamp == last || (timestamp.wrapping_sub(last) as i32) < 0 {
                return None;
            }
        }
        self.last = Some(timestamp);
        event.digit()
    }
}

/// One outgoing RTP stream's header state.
///
/// Sequence numbers increase by one per packet sent, whatever is sent. Audio timestamps increase
/// by the samples of each packet while packets follow each other in real time; after a gap
/// (silence not sent, hold, a DTMF event) the timestamp jumps by the wall-clock time elapsed,
/// rounded to whole frames, and the packet carries the marker bit as a talkspurt start. Times are
/// passed in (`now` from any monotonic origin), so it is tested without a clock.
#[derive(Debug, Clone)]
pub struct RtpSender {
    ssrc: u32,
    clock_rate: u32,
    sequence: u16,
    /// Timestamp of the next audio packet if it follows without a gap.
    next_timestamp: u32,
    /// When the last audio packet was sent, and how many samples it held.
    last_audio: Option<(Duration, u32)>,
    /// The next audio packet starts a talkspurt.
    talkspurt: bool,
}

impl RtpSender {
    /// A stream starting at `sequence`/`timestamp` (pick both at random, RFC 3550 §5.1).
    pub fn new(ssrc: u32, sequence: u16, timestamp: u32, clock_rate: u32) -> Self {
        RtpSender {
            ssrc,
            clock_rate: clock_rate.max(1),
            sequence,
            next_timestamp: timestamp,
            last_audio: None,
            talkspurt: true,
        }
    }

    /// A stream with random SSRC, sequence and timestamp.
    pub fn random(clock_rate: u32) -> Self {
        Self::new(rand::random(), rand::random(), rand::random(), clock_rate)
    }

    /// The stream's SSRC.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The sequence number the next packet will carry.
    pub fn next_sequence(&self) -> u16 {
        self.sequence
    }

    fn samples_between(&self, from: Duration, to: Duration) -> u64 {
        let elapsed = to.saturating_sub(from);
        (elapsed.as_nanos() * u128::from(self.clock_rate) / 1_000_000_000) as u64
    }

    /// The timestamp that corresponds to `now` on this stream's clock.
    pub fn timestamp_at(&self, now: Duration) -> u32 {
        match self.last_audio {
            Some((at, samples)) => {
                let elapsed = self.samples_between(at, now);
                // `next_timestamp` is last packet's timestamp + its samples.
                self.next_timestamp
                    .wrapping_sub(samples)
                    .wrapping_add(elapsed as u32)
            }
            None => self.next_timestamp,
        }
    }

    /// Header for an audio packet of `samples` samples sent at `now`.
    pub fn audio(&mut self, now: Duration, payload_type: u8, samples: u32) -> RtpHeader {
        let mut marker = self.talkspurt;
        let mut timestamp = self.next_timestamp;
        if let Some((at, prev_samples)) = self.last_audio {
            let elapsed = self.samples_between(at, now);
            // More than one frame late: a gap, not jitter.
            if elapsed > 2 * u64::from(prev_samples) {
                let frame = u64::from(samples.max(1));
                let frames = (elapsed + frame / 2) / frame;
                let advanced = (frames * frame).max(u64::from(prev_samples));
                timestamp = self
                    .next_timestamp
                    .wrapping_sub(prev_samples)
                    .wrapping_add(advanced as u32);
                marker = true;
            }
        }
        self.talkspurt = false;
        self.last_audio = Some((now, samples));
        self.next_timestamp = timestamp.wrapping_add(samples);
        self.header(marker, payload_type, timestamp)
    }

    /// Marks the next audio packet as a talkspurt start (e.g. after unhold or re-INVITE).
    pub fn mark_talkspurt(&mut self) {
        self.talkspurt = true;
    }

    /// Timestamp for a telephone-event starting at `now`: all its packets carry it (RFC 4733 §2.5).
    pub fn event_timestamp(&self, now: Duration) -> u32 {
        self.timestamp_at(now)
    }

    /// Header for one telephone-event packet; `first` sets the marker on the event's first packet.
    pub fn event(&mut self, payload_type: u8, event_timestamp: u32, first: bool) -> RtpHeader {
        self.header(first, payload_type, event_timestamp)
    }

    fn header(&mut self, marker: bool, payload_type: u8, timestamp: u32) -> RtpHeader {
        let h = RtpHeader {
            marker,
            payload_type,
            sequence: self.sequence,
            timestamp,
            ssrc: self.ssrc,
        };
        self.sequence = self.sequence.wrapping_add(1);
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn write_then_parse_round_trips() {
        let h = RtpHeader {
            marker: true,
            payload_type: 8,
            sequence: 0xFFFE,
            timestamp: 0xDEAD_BEEF,
            ssrc: 0x1234_5678,
        };
        let payload = [0xD5u8; 160];
        let mut buf = [0u8; 200];
        let len = h.write(&payload, &mut buf).unwrap();
        assert_eq!(len, 172);
        assert_eq!(&buf[..2], &[0x80, 0x88]);
        let p = RtpPacket::parse(&buf[..len]).unwrap();
        assert!(p.marker);
        assert_eq!(p.payload_type, 8);
        assert_eq!(p.sequence, 0xFFFE);
        assert_eq!(p.timestamp, 0xDEAD_BEEF);
        assert_eq!(p.ssrc, 0x1234_5678);
        assert_eq!(p.payload, &payload[..]);
        assert_eq!(p.extension, None);
        assert_eq!(p.csrcs().count(), 0);
    }

    #[test]
    fn write_refuses_small_buffer_and_bad_payload_type() {
        let mut h = RtpHeader {
            marker: false,
            payload_type: 0,
            sequence: 1,
            timestamp: 2,
            ssrc: 3,
        };
        let mut buf = [0u8; 20];
        assert_eq!(
            h.write(&[0; 9], &mut buf),
            Err(RtpError::BufferTooSmall { need: 21, have: 20 })
        );
        h.payload_type = 128;
        assert_eq!(h.write(&[], &mut buf), Err(RtpError::BadPayloadType(128)));
    }

    #[test]
    fn parses_csrc_extension_and_padding() {
        let mut pkt = vec![
            0xB2, 0x00, 0, 1, 0, 0, 0, 160, 0, 0, 0, 9, // V=2 P X CC=2, PT 0
            0, 0, 0, 0xAA, 0, 0, 0, 0xBB, // CSRCs
            0xBE, 0xDE, 0, 1, 1, 2, 3, 4, // extension, one word
        ];
        pkt.extend_from_slice(&[7, 7, 7]); // payload
        pkt.extend_from_slice(&[0, 0, 3]); // 3 bytes padding
        let p = RtpPacket::parse(&pkt).unwrap();
        assert_eq!(p.csrcs().collect::<Vec<_>>(), vec![0xAA, 0xBB]);
        assert_eq!(
            p.extension,
            Some(RtpExtension {
                profile: 0xBEDE,
                data: &[1, 2, 3, 4]
            })
        );
        assert_eq!(p.payload, &[7, 7, 7]);
        assert_eq!(p.ssrc, 9);
    }

    #[test]
    fn malformed_packets_are_clear_errors() {
        assert_eq!(
            RtpPacket::parse(&[0x80; 5]),
            Err(RtpError::TooShort { len: 5, need: 12 })
        );
        assert_eq!(
            RtpPacket::parse(&[]),
            Err(RtpError::TooShort { len: 0, need: 12 })
        );
        // STUN binding request starts with 0x00 0x01.
        let mut stun = [0u8; 20];
        stun[1] = 1;
        assert_eq!(RtpPacket::parse(&stun), Err(RtpError::BadVersion(0)));
        // CSRC count beyond the datagram.
        let mut p = [0u8; 16];
        p[0] = 0x82;
        assert_eq!(
            RtpPacket::parse(&p),
            Err(RtpError::TooShort { len: 16, need: 20 })
        );
        // Extension header missing, then extension longer than the datagram.
        let mut p = [0u8; 14];
        p[0] = 0x90;
        assert_eq!(
            RtpPacket::parse(&p),
            Err(RtpError::TooShort { len: 14, need: 16 })
        );
        let mut p = [0u8; 20];
        p[0] = 0x90;
        p[15] = 2;
        assert_eq!(
            RtpPacket::parse(&p),
            Err(RtpError::TooShort { len: 20, need: 24 })
        );
        // Padding of zero and padding longer than the payload.
        let mut p = [0u8; 14];
        p[0] = 0xA0;
        assert_eq!(RtpPacket::parse(&p), Err(RtpError::BadPadding(0)));
        p[13] = 3;
        assert_eq!(RtpPacket::parse(&p), Err(RtpError::BadPadding(3)));
        // Padding that exactly consumes the payload is fine.
        p[13] = 2;
        assert_eq!(RtpPacket::parse(&p).unwrap().payload, &[] as &[u8]);
    }

    #[test]
    fn rtcp_on_the_rtp_port_is_recognised() {
        for pt in [200u8, 201, 202, 203, 204, 205, 206] {
            let mut p = [0u8; 8];
            p[0] = 0x81;
            p[1] = pt;
            assert_eq!(RtpPacket::parse(&p), Err(RtpError::Rtcp(pt)));
        }
        // PT 72 with marker is byte 200, but PT 72 without marker (byte 72) is RTP.
        let mut p = [0u8; 12];
        p[0] = 0x80;
        p[1] = 72;
        assert_eq!(RtpPacket::parse(&p).unwrap().payload_type, 72);
    }

    #[test]
    fn never_panics_on_any_short_input() {
        let mut rng_state = 0x9E37_79B9_7F4A_7C15u64;
        let mut buf = [0u8; 64];
        for _ in 0..50_000 {
            for b in buf.iter_mut() {
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                *b = rng_state as u8;
            }
            buf[0] = (buf[0] & 0x3F) | 0x80; // mostly version 2 to reach the deep checks
            let len = (rng_state >> 32) as usize % buf.len();
            if let Ok(p) = RtpPacket::parse(&buf[..len]) {
                assert!(p.payload.len() <= len);
            }
        }
    }

    #[test]
    fn telephone_event_round_trip() {
        let e = TelephoneEvent {
            event: 11,
            end: true,
            volume: 10,
            duration: 1280,
        };
        let bytes = e.to_bytes();
        assert_eq!(bytes, [11, 0x8A, 0x05, 0x00]);
        assert_eq!(TelephoneEvent::parse(&bytes), Ok(e));
        assert_eq!(e.digit(), Some('#'));
        // The reserved bit is ignored on parse; volume is limited to 6 bits on write.
        let p = TelephoneEvent::parse(&[5, 0x7F, 0, 160, 99]).unwrap();
        assert_eq!((p.event, p.end, p.volume, p.duration), (5, false, 63, 160));
        let loud = TelephoneEvent { volume: 200, ..e };
        assert_eq!(loud.to_bytes()[1] & 0x3F, 200 & 0x3F);
        assert_eq!(
            TelephoneEvent::parse(&[1, 2, 3]),
            Err(RtpError::TooShort { len: 3, need: 4 })
        );
    }

    #[test]
    fn dtmf_characters_map_both_ways() {
        for (c, e) in [
            ('0', 0),
            ('9', 9),
            ('*', 10),
            ('#', 11),
            ('A', 12),
            ('d', 15),
        ] {
            assert_eq!(dtmf_event(c), Some(e));
            assert_eq!(dtmf_char(e), Some(c.to_ascii_uppercase()));
        }
        assert_eq!(dtmf_event('x'), None);
        assert_eq!(dtmf_char(16), None);
    }

    #[test]
    fn continuous_audio_advances_by_samples_with_one_marker() {
        let mut s = RtpSender::new(7, 65534, u32::MAX - 100, 8000);
        let h: Vec<RtpHeader> = (0..4).map(|i| s.audio(ms(20 * i), 0, 160)).collect();
        assert_eq!(
            h.iter().map(|h| h.sequence).collect::<Vec<_>>(),
            vec![65534, 65535, 0, 1]
        );
        assert_eq!(
            h.iter().map(|h| h.timestamp).collect::<Vec<_>>(),
            vec![u32::MAX - 100, 59, 219, 379]
        );
        assert_eq!(
            h.iter().map(|h| h.marker).collect::<Vec<_>>(),
            vec![true, false, false, false]
        );
        assert!(h.iter().all(|h| h.ssrc == 7 && h.payload_type == 0));
    }

    #[test]
    fn jitter_in_send_time_does_not_move_timestamps() {
        let mut s = RtpSender::new(1, 0, 0, 8000);
        let times = [0, 27, 38, 61, 80, 100];
        let ts: Vec<u32> = times
            .iter()
            .map(|t| s.audio(ms(*t), 0, 160).timestamp)
            .collect();
        assert_eq!(ts, vec![0, 160, 320, 480, 640, 800]);
    }

    #[test]
    fn silence_gap_keeps_sequence_and_follows_wall_clock() {
        let mut s = RtpSender::new(1, 100, 1000, 8000);
        s.audio(ms(0), 0, 160);
        s.audio(ms(20), 0, 160);
        // One second of silence not sent.
        let h = s.audio(ms(1020), 0, 160);
        assert_eq!(h.sequence, 102);
        assert_eq!(h.timestamp, 1000 + 160 + 8000);
        assert!(h.marker);
        let next = s.audio(ms(1040), 0, 160);
        assert_eq!(next.timestamp, h.timestamp + 160);
        assert!(!next.marker);
    }

    #[test]
    fn dtmf_event_shares_sequence_and_holds_its_timestamp() {
        let mut s = RtpSender::new(1, 10, 0, 8000);
        s.audio(ms(0), 0, 160);
        let ts = s.event_timestamp(ms(20));
        assert_eq!(ts, 160);
        let first = s.event(101, ts, true);
        let second = s.event(101, ts, false);
        assert_eq!((first.sequence, second.sequence), (11, 12));
        assert!(first.marker && !second.marker);
        assert_eq!(second.timestamp, 160);
        // Audio after a 200 ms event resumes on the wall clock, as a new talkspurt.
        let a = s.audio(ms(220), 0, 160);
        assert_eq!(a.sequence, 13);
        assert_eq!(a.timestamp, 160 + 1600);
        assert!(a.marker);
    }

    #[test]
    fn talkspurt_can_be_marked_explicitly() {
        let mut s = RtpSender::new(1, 0, 0, 8000);
        s.audio(ms(0), 0, 160);
        s.mark_talkspurt();
        let h = s.audio(ms(20), 0, 160);
        assert!(h.marker);
        assert_eq!(h.timestamp, 160);
    }

    #[test]
    fn dtmf_event_packets_grow_then_end_three_times() {
        let mut e = DtmfEvent::new(5, 10, 800, 160);
        let packets: Vec<(TelephoneEvent, bool)> = e.by_ref().collect();
        let durations: Vec<u16> = packets.iter().map(|(p, _)| p.duration).collect();
        assert_eq!(durations, vec![160, 320, 480, 640, 800, 800, 800]);
        let ends: Vec<bool> = packets.iter().map(|(p, _)| p.end).collect();
        assert_eq!(ends, vec![false, false, false, false, true, true, true]);
        let firsts: Vec<bool> = packets.iter().map(|(_, f)| *f).collect();
        assert_eq!(firsts, vec![true, false, false, false, false, false, false]);
        assert!(packets.iter().all(|(p, _)| p.event == 5 && p.volume == 10));
        assert_eq!(e.next(), None);
        // A duration shorter than one step still sends one (ending) step.
        let mut short = DtmfEvent::new(1, 99, 0, 160);
        let (p, first) = short.next().unwrap();
        assert!(first && p.end && p.duration == 160 && p.volume == 63);
    }

    #[test]
    fn dtmf_detector_reports_each_key_once() {
        let mut d = DtmfDetector::default();
        let mut sent = Vec::new();
        let mut seen = Vec::new();
        for (i, key) in ['1', '#', '1'].into_iter().enumerate() {
            let ts = 1000u32.wrapping_add(i as u32 * 4000).wrapping_sub(2000);
            let mut e = DtmfEvent::new(dtmf_event(key).unwrap(), 10, 800, 160);
            for (p, _) in e.by_ref() {
                seen.extend(d.on_packet(ts, &TelephoneEvent::parse(&p.to_bytes()).unwrap()));
            }
            sent.push(key);
        }
        assert_eq!(seen, sent);
        // A late packet of an earlier event is not a new key.
        let old = TelephoneEvent {
            event: 3,
            end: true,
            volume: 10,
            duration: 800,
        };
        assert_eq!(d.on_packet(0, &old), None);
        assert_eq!(d.on_packet(9000, &old), Some('3'));
    }
}
