//! [`SrtpPath`]: a connected browser leg's media, protected and unprotected here rather than in
//! the `rtc` pipeline, sans-IO.
//!
//! Once ICE and DTLS are done the leg takes the DTLS-SRTP contexts out of its peer connection
//! (`take_srtp_contexts`, the one method vendor/rtc adds) and every RTP and RTCP datagram goes
//! through this instead: a datagram is authenticated and decrypted in place of being moved by
//! value through eight handlers and an interceptor chain (what a relayed packet cost in rtc),
//! and a packet to send is one header write and one encryption. `rtc` keeps ICE (consent) and
//! DTLS (close_notify).
//!
//! Taking the keys means taking RTCP too: SRTCP packets from two senders with one SSRC would
//! collide on their SRTCP index, so the leg's peer connection runs no report interceptors and
//! this writes the reports RFC 3550 asks of an audio sender and receiver, once a second: a
//! sender report with one report block about the browser's stream (the browser's encoder reads
//! its loss fraction to turn on in-band FEC), or a receiver report while we send nothing.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use rtc::rtcp::receiver_report::ReceiverReport as RtcpReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::sender_report::SenderReport as RtcpSenderReport;
use rtc::shared::marshal::{Marshal, Unmarshal};
use rtc::shared::util::is_rtcp;
use rtc::srtp::context::Context;

use crate::media::rtp::{RtpError, RtpHeader, RTP_HEADER_LEN};
use crate::media::webrtc_leg::{report_about, InboundRtp, ReceiverReport};

/// How often reports go out (rtc's report interceptors' default, which this replaces).
pub(super) const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Room in [`SrtpPath`]'s packet buffer: a tick's few packets each way (an Opus frame is about
/// 100 bytes protected, PCMU 200); more in flight at once only means an allocation.
const PACKETS_CAPACITY: usize = 2048;

/// Seconds from the NTP epoch (1900) to the Unix epoch.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// Why a packet of ours could not be protected.
#[derive(Debug, thiserror::Error)]
pub(super) enum ProtectError {
    /// The header could not be written (a payload type over 127).
    #[error("RTP header: {0}")]
    Rtp(#[from] RtpError),
    /// The SRTP context refused it (e.g. its packet limit reached).
    #[error("SRTP: {0}")]
    Srtp(#[from] rtc::shared::error::Error),
}

/// What one protected datagram from the browser turned out to be.
#[derive(Debug)]
pub(super) enum Unprotected {
    /// An RTP packet, authenticated and decrypted.
    Rtp(InboundRtp),
    /// RTCP; with the report block about our stream if it carried one.
    Rtcp(Option<ReceiverReport>),
    /// Failed authentication, a replay, or not RTP/RTCP at all: dropped and counted.
    Rejected,
}

/// A connected leg's SRTP and RTCP. See the module docs.
pub(super) struct SrtpPath {
    /// Protects what we send (RTP and RTCP).
    local: Context,
    /// Unprotects what the browser sends.
    remote: Context,
    /// Our stream's SSRC.
    ssrc: u32,
    /// Header and payload of the packet being protected (reused).
    plain: Vec<u8>,
    /// Where packets are protected and unprotected: each is split off as its own handle on
    /// this one allocation, which comes back (is reused) once the handles of the tick's
    /// packets are dropped, so a packet costs no allocation (vendor/rtc-srtp).
    packets: BytesMut,
    sent: Option<SentStream>,
    received: Option<ReceivedStream>,
    /// The browser's last sender report: its NTP time's middle 32 bits and when it came.
    last_sender_report: Option<(u32, Instant)>,
    next_report: Instant,
    rejected: u64,
}

/// What a sender report says about our stream.
struct SentStream {
    packets: u32,
    octets: u32,
    last_timestamp: u32,
    last_sent: Instant,
    clock_rate: u32,
}

/// RFC 3550 appendix A.1, A.3 and A.8 for the browser's stream.
struct ReceivedStream {
    ssrc: u32,
    base_seq: u32,
    max_seq: u16,
    cycles: u32,
    received: u32,
    expected_prior: u32,
    received_prior: u32,
    /// Interarrival jitter in RTP timestamp units, ×16 (the RFC's integer form).
    jitter_x16: u32,
    last_transit: Option<u32>,
    /// Arrivals are counted from here, in RTP units, for the transit times.
    epoch: Instant,
}

impl SrtpPath {
    /// Takes over with the peer connection's contexts at `now`.
    pub(super) fn new(now: Instant, ssrc: u32, local: Context, remote: Context) -> Self {
        SrtpPath {
            local,
            remote,
            ssrc,
            plain: Vec::with_capacity(1500),
            packets: BytesMut::with_capacity(PACKETS_CAPACITY),
            sent: None,
            received: None,
            last_sender_report: None,
            next_report: now + REPORT_INTERVAL,
            rejected: 0,
        }
    }

    /// Datagrams dropped: authentication failed, replayed, or unparsable.
    pub(super) fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Unprotects one datagram from the browser (first byte 128..=191). `clock_rate` gives the
    /// RTP clock of an audio payload type, `None` for others (telephone-event's timestamp
    /// stands still through an event and would read as jitter).
    pub(super) fn unprotect(
        &mut self,
        now: Instant,
        datagram: &[u8],
        clock_rate: impl Fn(u8) -> Option<u32>,
    ) -> Unprotected {
        if is_rtcp(datagram) {
            return self.unprotect_rtcp(now, datagram);
        }
        let mut header_bytes = datagram;
        let Ok(header) = rtc::rtp::Header::unmarshal(&mut header_bytes) else {
            self.rejected += 1;
            return Unprotected::Rejected;
        };
        if self
            .remote
            .decrypt_rtp_with_header_into(datagram, &header, &mut self.packets)
            .is_err()
        {
            self.rejected += 1;
            return Unprotected::Rejected;
        }
        let Ok(packet) = rtc::rtp::Packet::unmarshal(&mut self.packets.split().freeze()) else {
            self.rejected += 1;
            return Unprotected::Rejected;
        };
        let rtp = InboundRtp::from(packet);
        self.count_received(now, &rtp, clock_rate(rtp.payload_type));
        Unprotected::Rtp(rtp)
    }

    fn unprotect_rtcp(&mut self, now: Instant, datagram: &[u8]) -> Unprotected {
        let Ok(plain) = self.remote.decrypt_rtcp(datagram) else {
            self.rejected += 1;
            return Unprotected::Rejected;
        };
        let Ok(packets) = rtc::rtcp::packet::unmarshal(&mut plain.freeze()) else {
            self.rejected += 1;
            return Unprotected::Rejected;
        };
        for packet in &packets {
            if let Some(sr) = packet.as_any().downcast_ref::<RtcpSenderReport>() {
                self.last_sender_report = Some(((sr.ntp_time >> 16) as u32, now));
            }
        }
        Unprotected::Rtcp(report_about(self.ssrc, &packets))
    }

    fn count_received(&mut self, now: Instant, rtp: &InboundRtp, clock_rate: Option<u32>) {
        let stream = match &mut self.received {
            Some(s) if s.ssrc == rtp.ssrc => s,
            _ => {
                // A new source (the browser's first packet, or it changed SSRC): start over.
                self.received = Some(ReceivedStream {
                    ssrc: rtp.ssrc,
                    base_seq: u32::from(rtp.seq),
                    max_seq: rtp.seq,
                    cycles: 0,
                    received: 0,
                    expected_prior: 0,
                    received_prior: 0,
                    jitter_x16: 0,
                    last_transit: None,
                    epoch: now,
                });
                match &mut self.received {
                    Some(s) => s,
                    None => return,
                }
            }
        };
        stream.received = stream.received.wrapping_add(1);
        let ahead = rtp.seq.wrapping_sub(stream.max_seq);
        if ahead != 0 && ahead < 0x8000 {
            if rtp.seq < stream.max_seq {
                stream.cycles = stream.cycles.wrapping_add(1 << 16);
            }
            stream.max_seq = rtp.seq;
        }
        if let Some(rate) = clock_rate {
            let arrival =
                (now.duration_since(stream.epoch).as_secs_f64() * f64::from(rate)) as u64 as u32;
            let transit = arrival.wrapping_sub(rtp.timestamp);
            if let Some(last) = stream.last_transit {
                let d = transit.wrapping_sub(last) as i32;
                let d = d.unsigned_abs();
                // J += (|D| - J) / 16, kept ×16 as RFC 3550 A.8 does.
                stream.jitter_x16 = stream
                    .jitter_x16
                    .wrapping_add(d)
                    .wrapping_sub((stream.jitter_x16 + 8) >> 4);
            }
            stream.last_transit = Some(transit);
        }
    }

    /// Protects one RTP packet of ours: returns the datagram to send. `clock_rate` is the
    /// payload type's RTP clock, for the sender report's timestamp.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn protect_rtp(
        &mut self,
        now: Instant,
        payload_type: u8,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
        clock_rate: Option<u32>,
    ) -> Result<BytesMut, ProtectError> {
        self.plain.resize(RTP_HEADER_LEN + payload.len(), 0);
        RtpHeader {
            marker,
            payload_type,
            sequence: seq,
            timestamp,
            ssrc: self.ssrc,
        }
        .write(payload, &mut self.plain)?;
        let header = rtc::rtp::Header {
            version: 2,
            marker,
            payload_type,
            sequence_number: seq,
            timestamp,
            ssrc: self.ssrc,
            ..Default::default()
        };
        self.local
            .encrypt_rtp_with_header_into(&self.plain, &header, &mut self.packets)?;
        let protected = self.packets.split();
        let sent = self.sent.get_or_insert(SentStream {
            packets: 0,
            octets: 0,
            last_timestamp: timestamp,
            last_sent: now,
            clock_rate: 8000,
        });
        sent.packets = sent.packets.wrapping_add(1);
        sent.octets = sent.octets.wrapping_add(payload.len() as u32);
        if let Some(rate) = clock_rate {
            sent.last_timestamp = timestamp;
            sent.last_sent = now;
            sent.clock_rate = rate;
        }
        Ok(protected)
    }

    /// When the next report is due.
    pub(super) fn poll_timeout(&self) -> Instant {
        self.next_report
    }

    /// The report due at `now`, protected, if one is: a sender report once we have sent, a
    /// receiver report while we only receive, nothing before either.
    pub(super) fn poll_report(&mut self, now: Instant) -> Option<BytesMut> {
        if now < self.next_report {
            return None;
        }
        self.next_report = now + REPORT_INTERVAL;
        let block: Vec<ReceptionReport> = self.report_block(now).into_iter().collect();
        let plain = match &self.sent {
            Some(sent) => {
                let elapsed = now.saturating_duration_since(sent.last_sent);
                let advance = (elapsed.as_secs_f64() * f64::from(sent.clock_rate)) as u64 as u32;
                RtcpSenderReport {
                    ssrc: self.ssrc,
                    ntp_time: ntp_now(),
                    rtp_time: sent.last_timestamp.wrapping_add(advance),
                    packet_count: sent.packets,
                    octet_count: sent.octets,
                    reports: block,
                    profile_extensions: Bytes::new(),
                }
                .marshal()
                .ok()?
            }
            None if !block.is_empty() => RtcpReceiverReport {
                ssrc: self.ssrc,
                reports: block,
                profile_extensions: Bytes::new(),
            }
            .marshal()
            .ok()?,
            None => return None,
        };
        self.local.encrypt_rtcp(&plain).ok()
    }

    fn report_block(&mut self, now: Instant) -> Option<ReceptionReport> {
        let s = self.received.as_mut()?;
        let extended_max = s.cycles.wrapping_add(u32::from(s.max_seq));
        let expected = extended_max.wrapping_sub(s.base_seq).wrapping_add(1);
        let total_lost = expected.saturating_sub(s.received).min(0x7f_ffff);
        let expected_interval = expected.wrapping_sub(s.expected_prior);
        let received_interval = s.received.wrapping_sub(s.received_prior);
        s.expected_prior = expected;
        s.received_prior = s.received;
        let lost_interval = i64::from(expected_interval) - i64::from(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / i64::from(expected_interval)).min(255) as u8
        };
        let (last_sender_report, delay) = match self.last_sender_report {
            Some((lsr, at)) => {
                let waited = now.saturating_duration_since(at).as_secs_f64();
                (lsr, (waited * 65536.0) as u32)
            }
            None => (0, 0),
        };
        Some(ReceptionReport {
            ssrc: s.ssrc,
            fraction_lost,
            total_lost,
            last_sequence_number: extended_max,
            jitter: s.jitter_x16 >> 4,
            last_sender_report,
            delay,
        })
    }
}

/// The wall clock as a 64-bit NTP timestamp.
fn ntp_now() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// Where a connected leg's media goes: our socket's address and the browser's, the selected ICE
/// pair's.
pub(super) type MediaRoute = (SocketAddr, SocketAddr);

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::srtp::protection_profile::ProtectionProfile;

    const KEY: [u8; 16] = [7; 16];
    const SALT: [u8; 14] = [9; 14];

    fn context() -> Context {
        let provider = rtc::crypto::default_provider().expect("crypto provider");
        Context::new(
            &KEY,
            &SALT,
            ProtectionProfile::Aes128CmHmacSha1_80,
            Some(rtc::srtp::option::srtp_replay_protection(64)),
            Some(rtc::srtp::option::srtcp_replay_protection(64)),
            provider.crypto(),
        )
        .expect("context")
    }

    /// Two ends sharing one key pair each way, as DTLS-SRTP leaves them.
    fn pair(now: Instant) -> (SrtpPath, SrtpPath) {
        (
            SrtpPath::new(now, 0x1111, context(), context()),
            SrtpPath::new(now, 0x2222, context(), context()),
        )
    }

    fn opus(pt: u8) -> Option<u32> {
        (pt == 111).then_some(48_000)
    }

    #[test]
    fn a_packet_protected_on_one_end_reads_back_on_the_other() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let wire = a
            .protect_rtp(now, 111, 7, 960, true, b"opus frame", Some(48_000))
            .expect("protect");
        assert_ne!(&wire[12..22], b"opus frame", "payload must be encrypted");
        match b.unprotect(now, &wire, opus) {
            Unprotected::Rtp(rtp) => {
                assert_eq!(
                    (
                        rtp.payload_type,
                        rtp.seq,
                        rtp.timestamp,
                        rtp.ssrc,
                        rtp.marker
                    ),
                    (111, 7, 960, 0x1111, true)
                );
                assert_eq!(&rtp.payload[..], b"opus frame");
            }
            other => panic!("expected RTP, got {other:?}"),
        }
    }

    #[test]
    fn tampered_replayed_and_garbage_datagrams_are_rejected_and_counted() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let wire = a
            .protect_rtp(now, 111, 1, 0, false, b"frame", Some(48_000))
            .expect("protect");
        let mut tampered = wire.to_vec();
        tampered[13] ^= 1;
        assert!(matches!(
            b.unprotect(now, &tampered, opus),
            Unprotected::Rejected
        ));
        assert!(matches!(b.unprotect(now, &wire, opus), Unprotected::Rtp(_)));
        assert!(
            matches!(b.unprotect(now, &wire, opus), Unprotected::Rejected),
            "a replay must not pass"
        );
        assert!(matches!(
            b.unprotect(now, &[0x80, 0x6f, 0, 1], opus),
            Unprotected::Rejected
        ));
        assert!(matches!(
            b.unprotect(now, &[0x80, 200, 0, 1, 0, 0], opus),
            Unprotected::Rejected
        ));
        assert_eq!(b.rejected(), 4);
    }

    #[test]
    fn nothing_is_reported_before_any_media() {
        let now = Instant::now();
        let (mut a, _) = pair(now);
        assert!(a.poll_report(now).is_none(), "not due yet");
        assert!(a.poll_report(now + REPORT_INTERVAL).is_none());
    }

    #[test]
    fn the_report_tells_the_browser_what_we_lost_and_what_we_sent() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        // a sends 10 packets, the 4th and 5th are lost on the way.
        for seq in 0u16..10 {
            let t = now + Duration::from_millis(20 * u64::from(seq));
            let wire = a
                .protect_rtp(
                    t,
                    111,
                    seq,
                    u32::from(seq) * 960,
                    false,
                    &[1; 40],
                    Some(48_000),
                )
                .expect("protect");
            if seq != 3 && seq != 4 {
                assert!(matches!(b.unprotect(t, &wire, opus), Unprotected::Rtp(_)));
            }
        }
        // b's receiver report reaches a with the block about a's stream.
        let at = now + REPORT_INTERVAL;
        let rr = b.poll_report(at).expect("b received: a receiver report");
        match a.unprotect(at, &rr, opus) {
            Unprotected::Rtcp(Some(report)) => {
                assert_eq!(report.total_lost, 2);
                assert!((report.fraction_lost - 0.2).abs() < 0.01, "{report:?}");
            }
            other => panic!("expected a report about a's stream, got {other:?}"),
        }
        // a's sender report parses as one, with its counts.
        let sr = a.poll_report(at).expect("a sent: a sender report");
        let plain = context().decrypt_rtcp(&sr).expect("decrypt");
        let packets = rtc::rtcp::packet::unmarshal(&mut plain.freeze()).expect("parse");
        let sr = packets[0]
            .as_any()
            .downcast_ref::<RtcpSenderReport>()
            .expect("a sender report");
        assert_eq!(
            (sr.ssrc, sr.packet_count, sr.octet_count),
            (0x1111, 10, 400)
        );
        // 9 × 960 at 180 ms, then 820 ms more at 48 kHz.
        assert_eq!(sr.rtp_time, 9 * 960 + 39_360);
        assert!(sr.reports.is_empty(), "a received nothing from b");
    }

    #[test]
    fn sequence_wrap_is_not_counted_as_loss() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        for seq in [65_533u16, 65_534, 65_535, 0, 1, 2] {
            let wire = a
                .protect_rtp(now, 111, seq, 0, false, &[1; 10], Some(48_000))
                .expect("protect");
            assert!(matches!(b.unprotect(now, &wire, opus), Unprotected::Rtp(_)));
        }
        let block = b.report_block(now).expect("block");
        assert_eq!(block.total_lost, 0);
        assert_eq!(block.last_sequence_number, (1 << 16) + 2);
    }
}
