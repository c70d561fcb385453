//! Which RTP source the SIP leg accepts and where it sends, sans-IO (strict RTP source).
//!
//! Plain symmetric latching (follow whoever sent the last packet) lets one packet from a
//! stranger redirect a call's audio. The rule here is the one of Asterisk's `strictrtp` and
//! rtpengine's strict-source mode:
//!
//! - media goes to the address from SDP until a source is learned, then to that source;
//! - a packet from the SDP IP (any port: NAT may rewrite it) is accepted and learned at once;
//! - any other source is learned only after a probation of [`SourceRules::probation_packets`]
//!   consecutive packets with one SSRC and consecutive sequence numbers, all arriving while
//!   the current source has been silent for at least [`SourceRules::quiet_after`] (a NAT
//!   rebinding, or a phone whose private SDP address differs from its public one);
//! - a new SDP address (re-INVITE, UPDATE) moves the target and starts over; an unchanged one
//!   keeps what was learned (a phone behind NAT on hold still gets our media).
//!
//! Packets from a source that is not accepted are dropped by the caller, never decoded.
//! An unspecified address or port 0 in SDP (hold, rejected stream) is no target.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Tunables of the strict-source rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceRules {
    /// Consecutive packets a new source must send before it is learned.
    pub probation_packets: u16,
    /// How long the current source must have been silent before another may be learned.
    pub quiet_after: Duration,
}

impl Default for SourceRules {
    /// Asterisk's `probation=4` plus one, and 2 s of silence: longer than any jitter burst,
    /// short enough that a NAT rebinding loses only a moment of audio.
    fn default() -> Self {
        SourceRules {
            probation_packets: 5,
            quiet_after: Duration::from_secs(2),
        }
    }
}

/// What the rule knows of one received RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpArrival {
    /// Where the datagram came from.
    pub source: SocketAddr,
    /// The packet's SSRC.
    pub ssrc: u32,
    /// The packet's sequence number.
    pub sequence: u16,
    /// When it arrived.
    pub at: Instant,
}

/// What to do with a received packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceVerdict {
    /// From the accepted source: use it.
    Accept,
    /// Use it; its source is now the accepted one and the send target moved there.
    Moved,
    /// Not from an accepted source: drop it unread and count it.
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Learned {
    addr: SocketAddr,
    last_seen: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Candidate {
    addr: SocketAddr,
    ssrc: u32,
    last_sequence: u16,
    packets: u16,
}

/// The strict-source state of one SIP leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StrictSource {
    rules: SourceRules,
    signalled: Option<SocketAddr>,
    learned: Option<Learned>,
    candidate: Option<Candidate>,
}

impl StrictSource {
    /// A rule with `rules` and no address yet.
    pub fn new(rules: SourceRules) -> StrictSource {
        StrictSource {
            rules,
            ..StrictSource::default()
        }
    }

    /// The address from the latest SDP (answer, or a re-INVITE's/UPDATE's offer).
    pub fn set_signalled(&mut self, addr: SocketAddr) {
        let addr = (!addr.ip().is_unspecified() && addr.port() != 0).then_some(addr);
        if addr != self.signalled {
            self.signalled = addr;
            self.learned = None;
            self.candidate = None;
        }
    }

    /// Decides on one valid RTP packet.
    pub fn on_packet(&mut self, packet: RtpArrival) -> SourceVerdict {
        if let Some(learned) = &mut self.learned {
            if learned.addr == packet.source {
                learned.last_seen = packet.at;
                self.candidate = None;
                return SourceVerdict::Accept;
            }
        }
        if self.signalled.map(|s| s.ip()) == Some(packet.source.ip()) {
            return self.learn(packet);
        }
        if let Some(learned) = self.learned {
            if packet.at.saturating_duration_since(learned.last_seen) < self.rules.quiet_after {
                // The current source is talking: a stranger gets nothing, not even probation.
                self.candidate = None;
                return SourceVerdict::Drop;
            }
        }
        let packets = match self.candidate {
            Some(c)
                if c.addr == packet.source
                    && c.ssrc == packet.ssrc
                    && packet.sequence == c.last_sequence.wrapping_add(1) =>
            {
                c.packets.saturating_add(1)
            }
            _ => 1,
        };
        if packets >= self.rules.probation_packets {
            return self.learn(packet);
        }
        self.candidate = Some(Candidate {
            addr: packet.source,
            ssrc: packet.ssrc,
            last_sequence: packet.sequence,
            packets,
        });
        SourceVerdict::Drop
    }

    fn learn(&mut self, packet: RtpArrival) -> SourceVerdict {
        let before = self.target();
        self.learned = Some(Learned {
            addr: packet.source,
            last_seen: packet.at,
        });
        self.candidate = None;
        if before == Some(packet.source) {
            SourceVerdict::Accept
        } else {
            SourceVerdict::Moved
        }
    }

    /// Where to send now.
    pub fn target(&self) -> Option<SocketAddr> {
        self.learned.map(|l| l.addr).or(self.signalled)
    }

    /// The source packets are accepted from, if one was learned since the last SDP change.
    pub fn learned(&self) -> Option<SocketAddr> {
        self.learned.map(|l| l.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A stream of packets from one source, one SSRC, 20 ms apart.
    struct Stream {
        source: SocketAddr,
        ssrc: u32,
        sequence: u16,
    }

    impl Stream {
        fn new(source: &str, ssrc: u32, sequence: u16) -> Stream {
            Stream {
                source: addr(source),
                ssrc,
                sequence,
            }
        }

        fn next(&mut self, at: Instant) -> RtpArrival {
            let p = RtpArrival {
                source: self.source,
                ssrc: self.ssrc,
                sequence: self.sequence,
                at,
            };
            self.sequence = self.sequence.wrapping_add(1);
            p
        }
    }

    const SDP: &str = "198.51.100.7:4000";
    const PTIME: Duration = Duration::from_millis(20);

    fn rule() -> StrictSource {
        let mut s = StrictSource::new(SourceRules::default());
        s.set_signalled(addr(SDP));
        s
    }

    #[test]
    fn media_goes_to_the_sdp_address_until_a_source_is_learned() {
        let mut s = StrictSource::default();
        assert_eq!(s.target(), None);
        s.set_signalled(addr(SDP));
        assert_eq!(s.target(), Some(addr(SDP)));
        assert_eq!(s.learned(), None);
    }

    #[test]
    fn the_sdp_address_itself_is_accepted_without_moving_the_target() {
        let mut s = rule();
        let mut phone = Stream::new(SDP, 1, 100);
        let t0 = Instant::now();
        assert_eq!(s.on_packet(phone.next(t0)), SourceVerdict::Accept);
        assert_eq!(s.learned(), Some(addr(SDP)));
        assert_eq!(s.on_packet(phone.next(t0 + PTIME)), SourceVerdict::Accept);
    }

    #[test]
    fn the_sdp_ip_on_another_port_is_learned_at_once() {
        let mut s = rule();
        let t0 = Instant::now();
        let mut nat = Stream::new("198.51.100.7:61000", 1, 5);
        assert_eq!(s.on_packet(nat.next(t0)), SourceVerdict::Moved);
        assert_eq!(s.target(), Some(addr("198.51.100.7:61000")));
        // Even while that source talks, its own host may move it (it is the signalled peer).
        let mut other_port = Stream::new("198.51.100.7:61002", 2, 9);
        assert_eq!(
            s.on_packet(other_port.next(t0 + PTIME)),
            SourceVerdict::Moved
        );
        assert_eq!(s.target(), Some(addr("198.51.100.7:61002")));
    }

    #[test]
    fn a_stranger_is_dropped_while_the_current_source_talks() {
        let mut s = rule();
        let t0 = Instant::now();
        let mut phone = Stream::new(SDP, 1, 100);
        let mut stranger = Stream::new("203.0.113.66:7078", 0xBAD, 1);
        s.on_packet(phone.next(t0));
        // A perfect stream from the stranger, far longer than probation, interleaved with the
        // phone's: never learned.
        for i in 1..500u32 {
            let at = t0 + PTIME * i;
            assert_eq!(s.on_packet(stranger.next(at)), SourceVerdict::Drop, "#{i}");
            assert_eq!(s.on_packet(phone.next(at)), SourceVerdict::Accept);
        }
        assert_eq!(s.target(), Some(addr(SDP)));
    }

    #[test]
    fn a_stranger_is_dropped_during_short_silences_of_the_current_source() {
        let mut s = rule();
        let t0 = Instant::now();
        let mut phone = Stream::new(SDP, 1, 100);
        s.on_packet(phone.next(t0));
        let mut stranger = Stream::new("203.0.113.66:7078", 7, 1);
        // 1.9 s of silence from the phone (under quiet_after): 95 perfect packets, all dropped.
        for i in 1..96u32 {
            assert_eq!(
                s.on_packet(stranger.next(t0 + PTIME * i)),
                SourceVerdict::Drop
            );
        }
        assert_eq!(s.learned(), Some(addr(SDP)));
    }

    #[test]
    fn a_new_source_is_learned_after_probation_once_the_old_one_is_quiet() {
        // A phone behind NAT (private SDP address) whose NAT rebinds to a new port.
        let mut s = StrictSource::new(SourceRules::default());
        s.set_signalled(addr("10.0.0.5:4000"));
        let t0 = Instant::now();
        let mut old = Stream::new("203.0.113.9:30000", 1, 100);
        for i in 0..5u32 {
            s.on_packet(old.next(t0 + PTIME * i));
        }
        assert_eq!(s.learned(), Some(addr("203.0.113.9:30000")));
        let quiet = t0 + PTIME * 4 + Duration::from_secs(2);
        let mut moved = Stream::new("203.0.113.9:30002", 1, 105);
        for i in 0..4u32 {
            assert_eq!(
                s.on_packet(moved.next(quiet + PTIME * i)),
                SourceVerdict::Drop
            );
            assert_eq!(s.target(), Some(addr("203.0.113.9:30000")));
        }
        assert_eq!(
            s.on_packet(moved.next(quiet + PTIME * 4)),
            SourceVerdict::Moved
        );
        assert_eq!(s.target(), Some(addr("203.0.113.9:30002")));
        assert_eq!(
            s.on_packet(moved.next(quiet + PTIME * 5)),
            SourceVerdict::Accept
        );
        // Now the old mapping is the stranger.
        assert_eq!(
            s.on_packet(old.next(quiet + PTIME * 6)),
            SourceVerdict::Drop
        );
        assert_eq!(s.target(), Some(addr("203.0.113.9:30002")));
    }

    #[test]
    fn the_sdp_address_takes_back_the_target_at_any_time() {
        let mut s = rule();
        let t0 = Instant::now();
        let mut public = Stream::new("203.0.113.9:30000", 1, 100);
        let quiet = t0 + Duration::from_secs(1);
        for i in 0..5u32 {
            s.on_packet(public.next(quiet + PTIME * i));
        }
        assert_eq!(s.target(), Some(addr("203.0.113.9:30000")));
        let mut phone = Stream::new(SDP, 2, 1);
        assert_eq!(
            s.on_packet(phone.next(quiet + PTIME * 5)),
            SourceVerdict::Moved
        );
        assert_eq!(s.target(), Some(addr(SDP)));
    }

    #[test]
    fn probation_applies_before_any_source_is_known() {
        // NAT: the SDP holds a private address, packets come from the public one.
        let mut s = StrictSource::new(SourceRules::default());
        s.set_signalled(addr("10.0.0.5:4000"));
        let t0 = Instant::now();
        let mut public = Stream::new("203.0.113.5:61000", 3, 65534);
        for i in 0..4u32 {
            assert_eq!(
                s.on_packet(public.next(t0 + PTIME * i)),
                SourceVerdict::Drop
            );
        }
        // The sequence wrapped from 65535 to 0 inside probation: still continuous.
        assert_eq!(
            s.on_packet(public.next(t0 + PTIME * 4)),
            SourceVerdict::Moved
        );
        assert_eq!(s.target(), Some(addr("203.0.113.5:61000")));
    }

    #[test]
    fn probation_restarts_on_a_gap_another_ssrc_or_another_source() {
        let t0 = Instant::now();
        let at = |i: u32| t0 + PTIME * i;
        let cand = addr("203.0.113.5:61000");
        let p = |seq: u16, ssrc: u32, source: SocketAddr, i: u32| RtpArrival {
            source,
            ssrc,
            sequence: seq,
            at: at(i),
        };
        let mut s = StrictSource::new(SourceRules::default());
        s.set_signalled(addr("10.0.0.5:4000"));
        // 4 good ones, then a sequence gap: starts over at 1.
        for i in 0..4u16 {
            assert_eq!(
                s.on_packet(p(10 + i, 1, cand, u32::from(i))),
                SourceVerdict::Drop
            );
        }
        assert_eq!(s.on_packet(p(20, 1, cand, 4)), SourceVerdict::Drop);
        // 3 more continuous (4 in a row), then another SSRC: starts over.
        for i in 0..3u16 {
            assert_eq!(s.on_packet(p(21 + i, 1, cand, 5)), SourceVerdict::Drop);
        }
        assert_eq!(s.on_packet(p(24, 2, cand, 6)), SourceVerdict::Drop);
        // 3 more (4 in a row with SSRC 2), then a packet from another address: starts over.
        for i in 0..3u16 {
            assert_eq!(s.on_packet(p(25 + i, 2, cand, 7)), SourceVerdict::Drop);
        }
        let other = addr("203.0.113.6:61000");
        assert_eq!(s.on_packet(p(28, 2, other, 8)), SourceVerdict::Drop);
        // Same address, same SSRC, repeated sequence number: not continuous.
        assert_eq!(s.on_packet(p(28, 2, cand, 9)), SourceVerdict::Drop);
        assert_eq!(s.learned(), None);
        // The other address sent one; four more continuous ones from it make five.
        let mut s2 = s;
        for i in 0..3u16 {
            assert_eq!(s2.on_packet(p(29 + i, 2, cand, 10)), SourceVerdict::Drop);
        }
        assert_eq!(s2.on_packet(p(32, 2, cand, 11)), SourceVerdict::Moved);
    }

    #[test]
    fn the_current_source_coming_back_ends_a_probation() {
        let mut s = rule();
        let t0 = Instant::now();
        let mut phone = Stream::new(SDP, 1, 100);
        s.on_packet(phone.next(t0));
        let quiet = t0 + Duration::from_secs(3);
        let mut stranger = Stream::new("203.0.113.66:7078", 7, 1);
        for i in 0..4u32 {
            s.on_packet(stranger.next(quiet + PTIME * i));
        }
        assert_eq!(
            s.on_packet(phone.next(quiet + PTIME * 4)),
            SourceVerdict::Accept
        );
        // The phone is talking again: the stranger's fifth packet is dropped, not learned.
        assert_eq!(
            s.on_packet(stranger.next(quiet + PTIME * 5)),
            SourceVerdict::Drop
        );
        assert_eq!(s.target(), Some(addr(SDP)));
    }

    #[test]
    fn a_new_sdp_address_moves_the_target_and_resets_the_rule() {
        let mut s = rule();
        let t0 = Instant::now();
        let mut nat = Stream::new("198.51.100.7:61000", 1, 5);
        s.on_packet(nat.next(t0));
        assert_eq!(s.target(), Some(addr("198.51.100.7:61000")));
        // The same SDP again (hold/unhold re-INVITE) keeps what was learned.
        s.set_signalled(addr(SDP));
        assert_eq!(s.target(), Some(addr("198.51.100.7:61000")));
        // A new address: media goes there at once; the old host is now a stranger.
        s.set_signalled(addr("192.0.2.20:5000"));
        assert_eq!(s.target(), Some(addr("192.0.2.20:5000")));
        assert_eq!(s.learned(), None);
        assert_eq!(s.on_packet(nat.next(t0 + PTIME)), SourceVerdict::Drop);
        let mut moved = Stream::new("192.0.2.20:5000", 9, 1);
        assert_eq!(s.on_packet(moved.next(t0 + PTIME)), SourceVerdict::Accept);
        assert_eq!(s.learned(), Some(addr("192.0.2.20:5000")));
        // The old host, now quiet-period-free stranger, cannot take over while this talks.
        for i in 2..20u32 {
            assert_eq!(s.on_packet(nat.next(t0 + PTIME * i)), SourceVerdict::Drop);
            s.on_packet(moved.next(t0 + PTIME * i));
        }
        assert_eq!(s.target(), Some(addr("192.0.2.20:5000")));
    }

    #[test]
    fn hold_addresses_are_no_target() {
        let mut s = rule();
        s.set_signalled(addr("0.0.0.0:5000"));
        assert_eq!(s.target(), None);
        s.set_signalled(addr("198.51.100.7:0"));
        assert_eq!(s.target(), None);
        s.set_signalled(addr("[::]:5000"));
        assert_eq!(s.target(), None);
    }

    #[test]
    fn a_clock_running_backwards_never_panics_and_counts_as_talking() {
        let mut s = rule();
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut phone = Stream::new(SDP, 1, 100);
        s.on_packet(phone.next(t0));
        let mut stranger = Stream::new("203.0.113.66:7078", 7, 1);
        for i in 0..10u32 {
            let at = t0 - PTIME * i;
            assert_eq!(s.on_packet(stranger.next(at)), SourceVerdict::Drop);
        }
    }
}
