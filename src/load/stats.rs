//! What a receiving peer measures of one RTP stream (loss from sequence gaps, RFC 3550
//! inter-arrival jitter per packet, audio level), and the percentiles the report needs. Fed
//! packets and arrival times; no I/O.

use std::time::Duration;

use serde::Serialize;

/// Jitter buckets: 0.1 ms up to 50 ms, then 1 ms up to 2 s; later values land in the last bucket.
const FINE_BUCKETS: usize = 500;
const COARSE_BUCKETS: usize = 1950;

/// A fixed-size histogram of milliseconds, cheap to fill per packet and to merge across calls.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; FINE_BUCKETS + COARSE_BUCKETS],
            total: 0,
        }
    }
}

impl Histogram {
    pub fn record(&mut self, ms: f64) {
        let ms = ms.max(0.0);
        let index = if ms < 50.0 {
            (ms * 10.0) as usize
        } else {
            (FINE_BUCKETS + (ms - 50.0) as usize).min(self.counts.len() - 1)
        };
        self.counts[index] += 1;
        self.total += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The upper edge of the bucket holding quantile `q` (0..=1); `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(if i < FINE_BUCKETS {
                    (i + 1) as f64 / 10.0
                } else {
                    50.0 + (i - FINE_BUCKETS + 1) as f64
                });
            }
        }
        None
    }
}

/// The receiving side of one stream within one measurement window.
#[derive(Debug, Clone, Default)]
pub struct ReceiveStats {
    received: u64,
    /// Extended sequence numbers (wrap-around unfolded) of the first and highest packet.
    first_seq: Option<i64>,
    highest_seq: i64,
    last_seq: i64,
    /// Arrival time and RTP timestamp of the previous packet, for jitter.
    previous: Option<(Duration, u32)>,
    jitter: Histogram,
    audio_energy: f64,
    audio_samples: u64,
}

impl ReceiveStats {
    /// One packet with `seq`/`timestamp` arrived at `arrival` (any fixed epoch); `clock_hz` is
    /// the RTP clock of its payload type.
    pub fn on_packet(&mut self, seq: u16, timestamp: u32, clock_hz: u32, arrival: Duration) {
        self.received += 1;
        let ext = match self.first_seq {
            None => {
                self.first_seq = Some(i64::from(seq));
                self.highest_seq = i64::from(seq);
                i64::from(seq)
            }
            Some(_) => {
                let step = seq.wrapping_sub(self.last_seq as u16) as i16;
                self.last_seq + i64::from(step)
            }
        };
        self.last_seq = ext;
        self.highest_seq = self.highest_seq.max(ext);
        if let Some(first) = self.first_seq {
            self.first_seq = Some(first.min(ext));
        }
        if let Some((prev_arrival, prev_ts)) = self.previous {
            let arrival_ms = arrival.as_secs_f64() * 1000.0 - prev_arrival.as_secs_f64() * 1000.0;
            let ticks = timestamp.wrapping_sub(prev_ts) as i32;
            let media_ms = f64::from(ticks) * 1000.0 / f64::from(clock_hz.max(1));
            self.jitter.record((arrival_ms - media_ms).abs());
        }
        self.previous = Some((arrival, timestamp));
    }

    /// Decoded audio of a packet, for the level of what came back.
    pub fn on_audio(&mut self, pcm: &[i16]) {
        self.audio_energy += pcm
            .iter()
            .map(|s| {
                let x = f64::from(*s) / 32768.0;
                x * x
            })
            .sum::<f64>();
        self.audio_samples += pcm.len() as u64;
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Packets the sender numbered between the first and highest one seen.
    pub fn expected(&self) -> u64 {
        match self.first_seq {
            Some(first) => (self.highest_seq - first + 1) as u64,
            None => 0,
        }
    }

    /// Packets missing from the numbering (duplicates can make up for losses).
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }

    pub fn jitter(&self) -> &Histogram {
        &self.jitter
    }

    /// RMS level of the decoded audio in dBFS (-120 for silence or nothing).
    pub fn level_dbfs(&self) -> f64 {
        if self.audio_samples == 0 {
            return -120.0;
        }
        let rms = (self.audio_energy / self.audio_samples as f64).sqrt();
        if rms <= 1e-6 {
            -120.0
        } else {
            20.0 * rms.log10()
        }
    }
}

/// Marks the start of a tagged payload: 0x5A 0xA5, then the packet's number and send time.
const TAG_MAGIC: [u8; 2] = [0x5A, 0xA5];
/// Bytes of a tag at the start of a payload.
pub const TAG_LEN: usize = 10;

/// End-to-end accounting for payloads that come back unchanged (a same-codec relay through an
/// echo): each sent payload starts with a tag (number, send time in ms), so the receiver knows
/// exactly which packets made the round trip and how long it took.
#[derive(Debug, Clone, Default)]
pub struct EchoTracker {
    returned: Vec<bool>,
    round_trip: Histogram,
}

impl EchoTracker {
    /// Writes the tag of packet `number`, sent at `sent_ms`, over the start of `payload`.
    pub fn tag(number: u32, sent_ms: u32, payload: &mut [u8]) {
        if let Some(head) = payload.get_mut(..TAG_LEN) {
            head[..2].copy_from_slice(&TAG_MAGIC);
            head[2..6].copy_from_slice(&number.to_be_bytes());
            head[6..10].copy_from_slice(&sent_ms.to_be_bytes());
        }
    }

    /// A payload came back at `now_ms`; untagged payloads (e.g. the bridge's own silence) are
    /// ignored. Numbers beyond `max_number` are taken for garbage.
    pub fn on_payload(&mut self, payload: &[u8], now_ms: u32, max_number: u32) {
        let Some(head) = payload.get(..TAG_LEN) else {
            return;
        };
        if head[..2] != TAG_MAGIC {
            return;
        }
        let number = u32::from_be_bytes([head[2], head[3], head[4], head[5]]);
        let sent = u32::from_be_bytes([head[6], head[7], head[8], head[9]]);
        if number > max_number {
            return;
        }
        let i = number as usize;
        if self.returned.len() <= i {
            self.returned.resize(i + 1, false);
        }
        if !std::mem::replace(&mut self.returned[i], true) {
            self.round_trip.record(f64::from(now_ms.wrapping_sub(sent)));
        }
    }

    /// How many of the packets numbered `from..to` came back.
    pub fn returned(&self, from: u32, to: u32) -> u64 {
        (from..to)
            .filter(|n| self.returned.get(*n as usize).copied().unwrap_or(false))
            .count() as u64
    }

    /// Round-trip times since the last [`EchoTracker::reset_round_trips`].
    pub fn round_trips(&self) -> &Histogram {
        &self.round_trip
    }

    pub fn reset_round_trips(&mut self) {
        self.round_trip = Histogram::default();
    }
}

/// p50/p99/max of a set of durations in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles; `None` for an empty set.
    pub fn of(values: &[f64]) -> Option<Percentiles> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Percentiles {
            p50: at(0.5),
            p99: at(0.99),
            max: v[v.len() - 1],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn a_steady_stream_has_no_loss_and_no_jitter() {
        let mut s = ReceiveStats::default();
        for i in 0..100u16 {
            s.on_packet(i, u32::from(i) * 160, 8000, ms(u64::from(i) * 20));
        }
        assert_eq!((s.received(), s.expected(), s.lost()), (100, 100, 0));
        assert_eq!(s.jitter().quantile(0.99), Some(0.1));
    }

    #[test]
    fn gaps_count_as_loss_across_the_sequence_wrap() {
        let mut s = ReceiveStats::default();
        let mut seq = 65530u16;
        for i in 0..20u32 {
            if i != 7 && i != 8 {
                s.on_packet(seq, i * 960, 48000, ms(u64::from(i) * 20));
            }
            seq = seq.wrapping_add(1);
        }
        assert_eq!((s.expected(), s.lost()), (20, 2));
    }

    #[test]
    fn reordered_and_duplicate_packets_do_not_inflate_loss() {
        let mut s = ReceiveStats::default();
        for (seq, at) in [(10u16, 0u64), (12, 40), (11, 41), (12, 42), (13, 60)] {
            s.on_packet(seq, u32::from(seq) * 160, 8000, ms(at));
        }
        assert_eq!(s.expected(), 4);
        assert_eq!(s.lost(), 0);
    }

    #[test]
    fn a_late_packet_shows_as_jitter() {
        let mut s = ReceiveStats::default();
        s.on_packet(1, 0, 8000, ms(0));
        s.on_packet(2, 160, 8000, ms(50)); // 30 ms late
        s.on_packet(3, 320, 8000, ms(60)); // 10 ms early relative to the late one
        let p99 = s.jitter().quantile(0.99).unwrap();
        assert!((29.9..=30.2).contains(&p99), "{p99}");
        assert_eq!(s.jitter().count(), 2);
    }

    #[test]
    fn huge_jitter_lands_in_the_last_bucket() {
        let mut h = Histogram::default();
        h.record(1e9);
        h.record(f64::NAN.max(0.0));
        assert_eq!(h.quantile(1.0), Some(2000.0));
        let mut other = Histogram::default();
        other.record(75.5);
        h.merge(&other);
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn level_of_a_half_scale_square_is_minus_6_dbfs() {
        let mut s = ReceiveStats::default();
        assert_eq!(s.level_dbfs(), -120.0);
        s.on_audio(&[16384, -16384, 16384, -16384]);
        assert!((s.level_dbfs() + 6.02).abs() < 0.01);
    }

    #[test]
    fn tagged_payloads_that_come_back_are_counted_once_with_their_round_trip() {
        let mut echo = EchoTracker::default();
        let mut sent = Vec::new();
        for n in 0..10u32 {
            let mut payload = vec![0xFFu8; 160];
            EchoTracker::tag(n, 1000 + n * 20, &mut payload);
            sent.push(payload);
        }
        for (n, p) in sent.iter().enumerate() {
            if n != 3 {
                echo.on_payload(p, 1000 + n as u32 * 20 + 30, 100);
            }
        }
        echo.on_payload(&sent[5], 5000, 100); // duplicate: neither counted nor timed again
        assert_eq!(echo.returned(0, 10), 9);
        assert_eq!(echo.returned(2, 5), 2);
        assert_eq!(echo.round_trips().count(), 9);
        assert_eq!(echo.round_trips().quantile(0.99), Some(30.1));
    }

    #[test]
    fn untagged_short_or_absurd_payloads_are_ignored() {
        let mut echo = EchoTracker::default();
        echo.on_payload(&[0xFF; 160], 0, 100);
        echo.on_payload(&[0x5A, 0xA5, 0], 0, 100);
        let mut p = vec![0u8; 20];
        EchoTracker::tag(u32::MAX, 0, &mut p);
        echo.on_payload(&p, 0, 100);
        EchoTracker::tag(1, 0, &mut [0u8; 4]); // too short to tag: left alone
        assert_eq!(echo.returned(0, 1000), 0);
        assert_eq!(echo.round_trips().count(), 0);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&v).unwrap();
        assert_eq!((p.p50, p.p99, p.max), (50.0, 99.0, 100.0));
        assert_eq!(Percentiles::of(&[]), None);
        assert_eq!(Percentiles::of(&[7.0]).unwrap().p99, 7.0);
    }
}
