//! An adaptive, bounded jitter/reorder buffer, one in front of each decoder.
//!
//! Packets arrive out of order, late, twice or not at all; the decoder wants them in sequence, one
//! frame at a time. The buffer holds a fixed number of preallocated slots indexed by sequence
//! number (no allocation per packet), delays playout by a target depth that follows the measured
//! inter-arrival jitter (RFC 3550 §6.4.1) between a minimum and a maximum (20–80 ms by default), and
//! tells the consumer when a packet is lost so it can conceal it (Opus PLC/FEC) instead of stalling.
//!
//! Memory: the payloads live in one contiguous arena shared by the slots, sized for the codec's
//! byte rate rather than `slots` × the largest payload (a 32-slot buffer of 1500-byte slots was
//! 48 KB, two per call; a G.711 arena is 5 KB, an Opus one 4 KB). Payloads are written one after
//! the other, wrapping at the end; a burst that fills it overwrites the oldest written packets,
//! which are counted as trimmed, as the playout trim would have dropped them anyway.
//!
//! It is sans-IO: arrival times are passed in as milliseconds, so it is tested without a clock.
//!
//! Playout phase: packets arrive on the sender's 20 ms grid, frames are taken on ours. When playout
//! starts with a packet that arrived just before the tick, every later packet has only that much
//! margin, and a few milliseconds of jitter make it miss its tick: the buffer runs dry mid-speech
//! and a whole frame is inserted (heard as a click, scored −0.2 PESQ). Told the tick's time
//! ([`JitterBuffer::set_now`]), the buffer starts (and restarts) playout only with a margin of at
//! least [`JitterBuffer::phase_guard_ms`], waiting one more frame otherwise: the frame is added to
//! the delay once, in the pause before speech, instead of later in the middle of a word.

/// Limits of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    /// RTP clock rate of the stream (48000 for Opus, 8000 for G.711).
    pub clock_rate: u32,
    /// Smallest playout delay, in milliseconds.
    pub min_delay_ms: u32,
    /// Largest playout delay, in milliseconds; deeper buffers are trimmed, so delay cannot creep.
    pub max_delay_ms: u32,
    /// Number of packet slots (a power of two); bounds memory and the reorder window.
    pub slots: usize,
    /// Largest payload kept; larger ones are dropped and counted.
    pub max_payload: usize,
    /// Bytes of payload held at once, shared by all slots (at least `max_payload`).
    pub arena_bytes: usize,
}

/// Arena of a G.711 buffer (8 kHz clock): a full window of 20 ms packets (32 × 160 bytes), so
/// a 20 ms G.711 stream is never cut short of what the slots allow; 60 ms packets fit ten.
const G711_ARENA: usize = 32 * 160;
/// Arena of an Opus buffer: eight 400-byte frames (160 kb/s), the 80 ms maximum delay plus a
/// burst of as much again and the space lost wrapping at the end, for five times the 32 kb/s the
/// bridge asks browsers for (`maxaveragebitrate`); voice at 32–64 kb/s (80–160-byte frames) fills
/// the whole window of slots. A browser sending the 1275-byte maximum (RFC 6716 §3.4, 510 kb/s)
/// still plays, with three frames held. Was eight maximum frames (10 KB per call, 4 here).
const OPUS_ARENA: usize = 4096;

impl JitterConfig {
    /// The defaults for a 20 ms audio stream at `clock_rate`: 20–80 ms, 32 slots, payloads up to
    /// 1500 bytes, an arena for G.711 at 8 kHz and for Opus at any other rate.
    pub fn audio(clock_rate: u32) -> Self {
        Self {
            clock_rate,
            min_delay_ms: 20,
            max_delay_ms: 80,
            slots: 32,
            max_payload: 1500,
            arena_bytes: if clock_rate == 8000 {
                G711_ARENA
            } else {
                OPUS_ARENA
            },
        }
    }
}

/// What happened to a pushed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Stored for playout.
    Stored,
    /// Already held, or already played: dropped.
    Duplicate,
    /// Arrived after its playout time: dropped.
    Late,
    /// Larger than `max_payload`: dropped.
    TooLarge,
    /// A new stream (SSRC change or a jump in sequence): the buffer restarted with this packet.
    Restarted,
}

/// What the consumer gets when it asks for the next frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Popped {
    /// The next packet; its payload was copied into the caller's buffer.
    Packet {
        /// Payload length in the caller's buffer.
        len: usize,
        /// RTP sequence number.
        seq: u16,
        /// RTP timestamp.
        timestamp: u32,
    },
    /// The next packet is missing while later ones exist: conceal it (PLC, or FEC from the next).
    Lost {
        /// The sequence number that is missing.
        seq: u16,
    },
    /// Nothing to play (not started, or ran dry): play comfort silence.
    Silence,
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Packets stored.
    pub stored: u64,
    /// Packets played out.
    pub played: u64,
    /// Packets reported lost.
    pub lost: u64,
    /// Packets dropped as late.
    pub late: u64,
    /// Packets dropped as duplicates.
    pub duplicates: u64,
    /// Packets dropped to bring the delay back under the maximum.
    pub trimmed: u64,
    /// Payloads too large to hold.
    pub too_large: u64,
    /// Times the stream restarted (SSRC change, sequence jump).
    pub restarts: u64,
    /// Times the buffer ran dry while playing.
    pub underruns: u64,
}

struct Slot {
    occupied: bool,
    seq: u16,
    timestamp: u32,
    /// Where the payload starts in the arena.
    offset: usize,
    len: usize,
}

impl Slot {
    /// Whether the held payload shares a byte with `start..end` of the arena.
    fn overlaps(&self, start: usize, end: usize) -> bool {
        self.occupied && self.len > 0 && self.offset < end && start < self.offset + self.len
    }
}

/// A sequence jump larger than this (either way) is a new stream, not reordering.
const MAX_SEQ_JUMP: u16 = 3000;

/// The buffer. See the module docs.
pub struct JitterBuffer {
    config: JitterConfig,
    slots: Vec<Slot>,
    /// The slots' payloads, written one after the other (see the module docs).
    arena: Box<[u8]>,
    /// Where the next payload is written in `arena`.
    write_at: usize,
    ssrc: Option<u32>,
    /// Next sequence number to play; `None` until the first packet.
    next_seq: Option<u16>,
    /// Highest sequence number stored (extended relative to `next_seq`).
    highest_seq: u16,
    playing: bool,
    /// Number of occupied slots.
    held: usize,
    /// RFC 3550 inter-arrival jitter, in RTP clock units, scaled by 16 for integer maths.
    jitter_q4: u64,
    last_transit: Option<i64>,
    /// Nominal frame length in RTP units, learned from timestamp steps between consecutive packets.
    frame_ts: u32,
    /// When the newest packet (`highest_seq`) arrived, ms.
    newest_arrival_ms: u64,
    /// The current tick's time on the arrival clock, when the consumer tells it.
    now_ms: Option<u64>,
    stats: JitterStats,
}

/// Signed distance from `b` to `a` in sequence space.
fn seq_delta(a: u16, b: u16) -> i32 {
    a.wrapping_sub(b) as i16 as i32
}

impl JitterBuffer {
    /// A buffer with all its memory allocated up front.
    pub fn new(config: JitterConfig) -> Self {
        let slots_count = config.slots.max(4).next_power_of_two();
        let slots = (0..slots_count)
            .map(|_| Slot {
                occupied: false,
                seq: 0,
                timestamp: 0,
                offset: 0,
                len: 0,
            })
            .collect();
        let arena_bytes = config.arena_bytes.max(config.max_payload);
        Self {
            config: JitterConfig {
                slots: slots_count,
                arena_bytes,
                ..config
            },
            slots,
            arena: vec![0u8; arena_bytes].into_boxed_slice(),
            write_at: 0,
            ssrc: None,
            next_seq: None,
            highest_seq: 0,
            playing: false,
            held: 0,
            jitter_q4: 0,
            last_transit: None,
            frame_ts: config.clock_rate / 50,
            newest_arrival_ms: 0,
            now_ms: None,
            stats: JitterStats::default(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Current inter-arrival jitter estimate in milliseconds.
    pub fn jitter_ms(&self) -> u32 {
        ((self.jitter_q4 / 16) * 1000 / u64::from(self.config.clock_rate.max(1))) as u32
    }

    /// The playout delay the buffer aims for now, in milliseconds.
    pub fn target_delay_ms(&self) -> u32 {
        let frame_ms = self.frame_ms().max(1);
        // Two jitter deviations plus one frame covers almost all arrivals; rounded up to frames.
        let wanted = frame_ms + 2 * self.jitter_ms();
        let frames = wanted.div_ceil(frame_ms);
        (frames * frame_ms).clamp(self.config.min_delay_ms, self.config.max_delay_ms)
    }

    /// The time of the tick about to take a frame, on the clock `push` gets arrival times on:
    /// lets playout start with a margin (see the module docs). Without it playout starts as soon
    /// as the target depth is buffered.
    pub fn set_now(&mut self, now_ms: u64) {
        self.now_ms = Some(now_ms);
    }

    /// The least time between a packet's arrival and the tick that plays it at playout start:
    /// twice the jitter plus 3 ms, at most half a frame.
    pub fn phase_guard_ms(&self) -> u32 {
        (2 * self.jitter_ms() + 3).min(self.frame_ms() / 2)
    }

    /// Whether starting playout now would leave the next packets too little margin, and one more
    /// frame of delay (still within the maximum) would fix it. Started now, the packet after the
    /// newest one plays `buffered` ms from now and arrives about a frame after the newest did.
    fn start_too_tight(&self) -> bool {
        let Some(now) = self.now_ms else {
            return false;
        };
        let buffered = u64::from(self.buffered_ms());
        let margin = (now.saturating_sub(self.newest_arrival_ms) + buffered)
            .saturating_sub(u64::from(self.frame_ms()));
        margin < u64::from(self.phase_guard_ms())
            && buffered + u64::from(self.frame_ms()) <= u64::from(self.config.max_delay_ms)
    }

    fn frame_ms(&self) -> u32 {
        self.frame_ts * 1000 / self.config.clock_rate.max(1)
    }

    /// How much audio is held from the next packet to play to the newest, in milliseconds.
    pub fn buffered_ms(&self) -> u32 {
        let Some(next) = self.next_seq else { return 0 };
        let span = seq_delta(self.highest_seq, next);
        if span < 0 || !self.any_stored() {
            return 0;
        }
        (span as u32 + 1) * self.frame_ms()
    }

    fn any_stored(&self) -> bool {
        self.held > 0
    }

    /// Frees the slot holding `seq`, if it does; true when it did.
    fn take_slot(&mut self, seq: u16) -> bool {
        let idx = self.index(seq);
        let slot = &mut self.slots[idx];
        if slot.occupied && slot.seq == seq {
            slot.occupied = false;
            self.held -= 1;
            true
        } else {
            false
        }
    }

    fn index(&self, seq: u16) -> usize {
        usize::from(seq) & (self.config.slots - 1)
    }

    fn clear(&mut self) {
        for slot in &mut self.slots {
            slot.occupied = false;
        }
        self.held = 0;
        self.write_at = 0;
        self.next_seq = None;
        self.playing = false;
        self.last_transit = None;
    }

    fn update_jitter(&mut self, timestamp: u32, arrival_ms: u64) {
        let arrival_ts = (arrival_ms as i64) * i64::from(self.config.clock_rate) / 1000;
        let transit = arrival_ts - i64::from(timestamp);
        if let Some(last) = self.last_transit {
            let d = (transit - last).unsigned_abs();
            // J += (|D| - J) / 16, kept scaled by 16.
            self.jitter_q4 = self.jitter_q4 + d - (self.jitter_q4 + 8) / 16;
        }
        self.last_transit = Some(transit);
    }

    /// Where a payload of `len` bytes (at most the arena's size) goes in the arena: after the last
    /// one written, or at the start when it does not fit before the end. Held packets in the way
    /// are given up (counted as trimmed).
    fn make_room(&mut self, len: usize) -> usize {
        let at = if self.write_at + len > self.arena.len() {
            0
        } else {
            self.write_at
        };
        for slot in &mut self.slots {
            if slot.overlaps(at, at + len) {
                slot.occupied = false;
                self.held -= 1;
                self.stats.trimmed += 1;
            }
        }
        at
    }

    /// Stores a packet that arrived at `arrival_ms` (any monotonic millisecond clock).
    pub fn push(
        &mut self,
        ssrc: u32,
        seq: u16,
        timestamp: u32,
        payload: &[u8],
        arrival_ms: u64,
    ) -> Pushed {
        if payload.len() > self.config.max_payload {
            self.stats.too_large += 1;
            return Pushed::TooLarge;
        }
        let mut outcome = Pushed::Stored;
        let new_stream = match (self.ssrc, self.next_seq) {
            (Some(old), _) if old != ssrc => true,
            (_, Some(next)) => {
                let d = seq_delta(seq, next);
                d > i32::from(MAX_SEQ_JUMP) || d < -i32::from(MAX_SEQ_JUMP)
            }
            _ => false,
        };
        if new_stream {
            self.clear();
            self.stats.restarts += 1;
            outcome = Pushed::Restarted;
        }
        self.ssrc = Some(ssrc);
        let next = *self.next_seq.get_or_insert(seq);
        let ahead = seq_delta(seq, next);
        if ahead < 0 {
            if self.playing {
                self.stats.late += 1;
                return Pushed::Late;
            }
            // Before playout starts, an earlier packet simply becomes the first one to play.
            self.next_seq = Some(seq);
        }
        // Beyond the window: make room by giving up on the oldest packets.
        let window = self.config.slots as i32;
        if let Some(next) = self.next_seq {
            let over = seq_delta(seq, next) - (window - 1);
            if over > 0 {
                for k in 0..over {
                    if self.take_slot(next.wrapping_add(k as u16)) {
                        self.stats.trimmed += 1;
                    }
                }
                self.next_seq = Some(next.wrapping_add(over as u16));
            }
        }
        let idx = self.index(seq);
        {
            let slot = &self.slots[idx];
            if slot.occupied && slot.seq == seq {
                self.stats.duplicates += 1;
                return Pushed::Duplicate;
            }
        }
        let at = self.make_room(payload.len());
        let had_stored = self.any_stored();
        let slot = &mut self.slots[idx];
        if !slot.occupied {
            self.held += 1;
        }
        slot.occupied = true;
        slot.seq = seq;
        slot.timestamp = timestamp;
        slot.offset = at;
        slot.len = payload.len();
        self.arena[at..at + payload.len()].copy_from_slice(payload);
        self.write_at = at + payload.len();
        self.stats.stored += 1;

        // Learn the frame length from consecutive packets (10–120 ms are plausible).
        let prev = seq.wrapping_sub(1);
        let prev_slot = &self.slots[self.index(prev)];
        if prev_slot.occupied && prev_slot.seq == prev {
            let step = timestamp.wrapping_sub(prev_slot.timestamp);
            let rate = self.config.clock_rate;
            if step >= rate / 100 && step <= rate * 12 / 100 {
                self.frame_ts = step;
            }
        }
        if !had_stored || seq_delta(seq, self.highest_seq) > 0 {
            self.highest_seq = seq;
            self.newest_arrival_ms = arrival_ms;
        }
        if outcome == Pushed::Stored {
            self.update_jitter(timestamp, arrival_ms);
        }
        outcome
    }

    /// The payload of the packet after the one just reported [`Popped::Lost`], if it is here:
    /// Opus in-band FEC recovers the lost frame from it.
    pub fn peek_next(&self) -> Option<&[u8]> {
        let next = self.next_seq?;
        let slot = &self.slots[self.index(next)];
        (slot.occupied && slot.seq == next)
            .then(|| &self.arena[slot.offset..slot.offset + slot.len])
    }

    /// Takes the next frame to decode, copying its payload into `out` (at least `max_payload` long
    /// to be sure to fit; a shorter buffer gets a truncated payload). Call once per frame time.
    pub fn pop(&mut self, out: &mut [u8]) -> Popped {
        let Some(next) = self.next_seq else {
            return Popped::Silence;
        };
        if !self.any_stored() {
            if self.playing {
                self.playing = false;
                self.stats.underruns += 1;
            }
            return Popped::Silence;
        }
        if !self.playing {
            if self.buffered_ms() < self.target_delay_ms() || self.start_too_tight() {
                return Popped::Silence;
            }
            self.playing = true;
        }
        // Too deep (a burst, or a sender whose clock runs fast): skip the oldest to keep delay bounded.
        while self.buffered_ms() > self.config.max_delay_ms + self.frame_ms() {
            let seq = self.next_seq.unwrap_or(next);
            if self.take_slot(seq) {
                self.stats.trimmed += 1;
            }
            self.next_seq = Some(seq.wrapping_add(1));
        }
        let seq = self.next_seq.unwrap_or(next);
        self.next_seq = Some(seq.wrapping_add(1));
        let idx = self.index(seq);
        if self.take_slot(seq) {
            let slot = &self.slots[idx];
            let len = slot.len.min(out.len());
            out[..len].copy_from_slice(&self.arena[slot.offset..slot.offset + len]);
            self.stats.played += 1;
            Popped::Packet {
                len,
                seq,
                timestamp: slot.timestamp,
            }
        } else {
            self.stats.lost += 1;
            Popped::Lost { seq }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: u32 = 960; // 20 ms at 48 kHz

    fn buf() -> JitterBuffer {
        JitterBuffer::new(JitterConfig::audio(48_000))
    }

    fn payload(seq: u16) -> [u8; 4] {
        let b = seq.to_be_bytes();
        [b[0], b[1], 0xAA, 0x55]
    }

    fn push(jb: &mut JitterBuffer, seq: u16, at_ms: u64) -> Pushed {
        jb.push(7, seq, u32::from(seq) * FRAME, &payload(seq), at_ms)
    }

    fn pop_seq(jb: &mut JitterBuffer) -> Option<u16> {
        let mut out = [0u8; 1500];
        match jb.pop(&mut out) {
            Popped::Packet { len, seq, .. } => {
                assert_eq!(&out[..len], &payload(seq));
                Some(seq)
            }
            _ => None,
        }
    }

    #[test]
    fn waits_for_the_minimum_depth_then_plays_in_order() {
        let mut jb = buf();
        push(&mut jb, 100, 0);
        let mut out = [0u8; 1500];
        // 20 ms held: exactly the minimum target, so playout starts.
        assert_eq!(jb.target_delay_ms(), 20);
        assert!(matches!(jb.pop(&mut out), Popped::Packet { seq: 100, .. }));
        assert_eq!(jb.pop(&mut out), Popped::Silence, "ran dry");
        assert_eq!(jb.stats().underruns, 1);
    }

    #[test]
    fn reordered_packets_come_out_in_sequence() {
        let mut jb = buf();
        for (i, seq) in [10u16, 12, 11, 14, 13].into_iter().enumerate() {
            assert_eq!(push(&mut jb, seq, i as u64 * 20), Pushed::Stored);
        }
        let got: Vec<_> = (0..5).filter_map(|_| pop_seq(&mut jb)).collect();
        assert_eq!(got, vec![10, 11, 12, 13, 14]);
    }

    #[test]
    fn a_missing_packet_is_reported_lost_and_the_next_can_be_peeked_for_fec() {
        let mut jb = buf();
        push(&mut jb, 1, 0);
        push(&mut jb, 3, 40);
        let mut out = [0u8; 1500];
        assert!(matches!(jb.pop(&mut out), Popped::Packet { seq: 1, .. }));
        assert_eq!(jb.pop(&mut out), Popped::Lost { seq: 2 });
        assert_eq!(jb.peek_next(), Some(&payload(3)[..]));
        assert!(matches!(jb.pop(&mut out), Popped::Packet { seq: 3, .. }));
        assert_eq!(jb.stats().lost, 1);
    }

    #[test]
    fn duplicates_and_late_packets_are_dropped() {
        let mut jb = buf();
        push(&mut jb, 5, 0);
        assert_eq!(push(&mut jb, 5, 1), Pushed::Duplicate);
        push(&mut jb, 6, 20);
        assert_eq!(pop_seq(&mut jb), Some(5));
        assert_eq!(push(&mut jb, 4, 25), Pushed::Late);
        assert_eq!(push(&mut jb, 5, 25), Pushed::Late);
        assert_eq!(pop_seq(&mut jb), Some(6));
        assert_eq!(jb.stats().duplicates, 1);
        assert_eq!(jb.stats().late, 2);
    }

    #[test]
    fn sequence_wraps_around() {
        let mut jb = buf();
        for (i, seq) in [65534u16, 65535, 0, 1].into_iter().enumerate() {
            push(&mut jb, seq, i as u64 * 20);
        }
        let got: Vec<_> = (0..4).filter_map(|_| pop_seq(&mut jb)).collect();
        assert_eq!(got, vec![65534, 65535, 0, 1]);
    }

    #[test]
    fn a_new_ssrc_restarts_the_stream() {
        let mut jb = buf();
        push(&mut jb, 100, 0);
        push(&mut jb, 101, 20);
        assert_eq!(jb.push(9, 5000, 0, &payload(5000), 40), Pushed::Restarted);
        assert_eq!(pop_seq(&mut jb), Some(5000));
        assert_eq!(jb.stats().restarts, 1);
    }

    #[test]
    fn a_large_sequence_jump_restarts_instead_of_waiting() {
        let mut jb = buf();
        push(&mut jb, 100, 0);
        assert_eq!(pop_seq(&mut jb), Some(100));
        assert_eq!(push(&mut jb, 40_000, 20), Pushed::Restarted);
        assert_eq!(pop_seq(&mut jb), Some(40_000));
    }

    #[test]
    fn target_delay_grows_with_jitter_and_stays_within_bounds() {
        let mut jb = buf();
        // Steady 20 ms arrivals: minimum delay.
        for seq in 0..50u16 {
            push(&mut jb, seq, u64::from(seq) * 20);
            pop_seq(&mut jb);
        }
        assert_eq!(jb.target_delay_ms(), 20);
        // Arrivals swinging ±15 ms: deeper, but never above 80 ms.
        for seq in 50..200u16 {
            let wobble = if seq % 2 == 0 { 15 } else { 0 };
            push(&mut jb, seq, u64::from(seq) * 20 + wobble);
            pop_seq(&mut jb);
        }
        let t = jb.target_delay_ms();
        assert!(t > 20 && t <= 80, "target {t} ms");
        // Wild jitter is capped at the maximum.
        for seq in 200..400u16 {
            let wobble = if seq % 2 == 0 { 300 } else { 0 };
            push(&mut jb, seq, u64::from(seq) * 20 + wobble);
        }
        assert_eq!(jb.target_delay_ms(), 80);
    }

    #[test]
    fn a_burst_is_trimmed_so_delay_stays_bounded() {
        let mut jb = buf();
        // 20 packets (400 ms) arrive at once, e.g. after a network stall.
        for seq in 0..20u16 {
            push(&mut jb, seq, 0);
        }
        let mut out = [0u8; 1500];
        assert!(matches!(jb.pop(&mut out), Popped::Packet { .. }));
        assert!(jb.buffered_ms() <= 100, "held {} ms", jb.buffered_ms());
        assert!(jb.stats().trimmed > 0);
    }

    #[test]
    fn a_fast_sender_clock_does_not_make_delay_creep() {
        // The sender produces 1% more packets than we play: without trimming the delay would grow
        // by 10 ms every second.
        let mut jb = buf();
        let mut seq = 0u16;
        let mut out = [0u8; 1500];
        for tick in 0..3000u64 {
            push(&mut jb, seq, tick * 20);
            seq = seq.wrapping_add(1);
            if tick % 100 == 99 {
                push(&mut jb, seq, tick * 20);
                seq = seq.wrapping_add(1);
            }
            jb.pop(&mut out);
        }
        assert!(
            jb.buffered_ms() <= 100,
            "delay crept to {} ms",
            jb.buffered_ms()
        );
    }

    /// Packets on the sender's grid that land 1 ms before our ticks, and every fourth one 2 ms
    /// after: started on the first packet, playout runs dry at the first late one; told the
    /// tick's time, the buffer starts a frame later and never runs dry.
    fn tight_phase(tell_time: bool) -> JitterStats {
        let mut jb = buf();
        let mut out = [0u8; 1500];
        let arrival = |n: u16| 20 * u64::from(n) + if n % 4 == 3 { 22 } else { 19 };
        let mut next = 0u16;
        let mut played = Vec::new();
        for tick in (20..10_000).step_by(20) {
            while arrival(next) <= tick {
                push(&mut jb, next, arrival(next));
                next += 1;
            }
            if tell_time {
                jb.set_now(tick);
            }
            if let Popped::Packet { seq, .. } = jb.pop(&mut out) {
                played.push(seq);
            }
        }
        if tell_time {
            assert!(played.windows(2).all(|w| w[1] == w[0] + 1), "{played:?}");
        }
        jb.stats()
    }

    #[test]
    fn playout_starts_with_a_margin_so_a_little_jitter_never_runs_it_dry() {
        // Untold, the first late packet runs it dry (a frame inserted mid-stream, then the
        // extra frame of delay stays).
        assert_eq!(tight_phase(false).underruns, 1, "{:?}", tight_phase(false));
        let stats = tight_phase(true);
        assert_eq!((stats.underruns, stats.lost), (0, 0), "{stats:?}");
        assert!(stats.played >= 495, "{stats:?}");
    }

    #[test]
    fn packets_beyond_the_window_push_out_the_oldest() {
        let mut jb = buf();
        push(&mut jb, 0, 0);
        assert_eq!(push(&mut jb, 100, 0), Pushed::Stored);
        let mut out = [0u8; 1500];
        // Everything before 100 - 31 was given up; the first pop is within the window.
        match jb.pop(&mut out) {
            Popped::Packet { seq, .. } | Popped::Lost { seq } => assert!(seq >= 69),
            Popped::Silence => {}
        }
    }

    #[test]
    fn oversized_payloads_are_refused() {
        let mut jb = buf();
        assert_eq!(jb.push(1, 1, 0, &[0u8; 1501], 0), Pushed::TooLarge);
        assert_eq!(jb.stats().too_large, 1);
    }

    /// A payload of `len` bytes that tells which packet it is.
    fn numbered(seq: u16, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (usize::from(seq) * 31 + i) as u8)
            .collect()
    }

    #[test]
    fn oversized_payloads_are_refused_without_disturbing_held_packets() {
        for rate in [8000, 48_000] {
            let mut jb = JitterBuffer::new(JitterConfig::audio(rate));
            let step = rate / 50;
            jb.push(1, 1, 0, &numbered(1, 160), 0);
            // Larger than the G.711 arena and than any slot: refused, whatever the codec.
            for len in [1501, 6000, 65_000] {
                assert_eq!(jb.push(1, 2, step, &vec![9u8; len], 20), Pushed::TooLarge);
            }
            assert_eq!(jb.stats().too_large, 3);
            assert_eq!(jb.push(1, 2, step, &numbered(2, 1500), 20), Pushed::Stored);
            let mut out = [0u8; 1500];
            for seq in 1..=2u16 {
                match jb.pop(&mut out) {
                    Popped::Packet { len, seq: got, .. } => {
                        assert_eq!(got, seq);
                        assert_eq!(&out[..len], &numbered(seq, len)[..], "rate {rate}");
                    }
                    other => panic!("rate {rate}: {other:?}"),
                }
            }
            assert_eq!(jb.stats().trimmed, 0, "rate {rate}");
        }
    }

    /// Frames `0..count` of `size` bytes pushed at `arrival(seq)` (those arriving together, the
    /// later one first), a pop every 20 ms until `until_ms`, each popped frame checked intact.
    /// Returns the sequence numbers played, in order, and the buffer's stats.
    fn play_arriving(
        count: u16,
        size: usize,
        arrival: impl Fn(u16) -> u64,
        until_ms: u64,
    ) -> (Vec<u16>, JitterStats) {
        let mut jb = buf();
        let mut out = [0u8; 1500];
        let mut pending: Vec<u16> = (0..count).collect();
        let mut played = Vec::new();
        for tick in (10..until_ms).step_by(20) {
            let mut due: Vec<u16> = pending
                .iter()
                .copied()
                .filter(|&seq| arrival(seq) <= tick)
                .collect();
            due.sort_by_key(|&seq| (arrival(seq), std::cmp::Reverse(seq)));
            for seq in due {
                jb.push(
                    7,
                    seq,
                    u32::from(seq) * FRAME,
                    &numbered(seq, size),
                    arrival(seq),
                );
            }
            pending.retain(|&seq| arrival(seq) > tick);
            jb.set_now(tick);
            if let Popped::Packet { len, seq, .. } = jb.pop(&mut out) {
                assert_eq!(&out[..len], &numbered(seq, size)[..], "packet {seq}");
                played.push(seq);
            }
        }
        (played, jb.stats())
    }

    #[test]
    fn opus_at_five_times_the_asked_bitrate_plays_intact_while_the_arena_wraps() {
        // 400-byte frames (160 kb/s) arriving in bursts of four every 80 ms, last first: the
        // delay grows to its 80 ms maximum, and the arena holds all of it.
        let (played, stats) = play_arriving(300, 400, |n| 80 * u64::from(n / 4) + 65, 6000);
        assert_eq!(stats.trimmed, 0, "{stats:?}");
        assert!(played.len() >= 290, "{stats:?}");
        assert!(
            played[50..].windows(2).all(|w| w[1] == w[0] + 1),
            "{played:?}"
        );
    }

    #[test]
    fn opus_at_the_largest_frame_size_still_plays_in_order() {
        // A browser ignoring the asked bitrate: 1275-byte frames (510 kb/s) arriving in pairs
        // every 40 ms, the later one first. The arena holds three of them; a pair waiting beside
        // the frame in play must fit for every frame to play intact, none given up for room (an
        // arena of one such frame fails this).
        let (played, stats) = play_arriving(200, 1275, |n| 40 * u64::from(n / 2) + 25, 4200);
        assert_eq!(stats.trimmed, 0, "{stats:?}");
        assert!(played.len() >= 195, "{stats:?}");
        assert!(played.windows(2).all(|w| w[1] == w[0] + 1), "{played:?}");
    }

    #[test]
    fn a_g711_buffer_holds_a_full_window_of_20_ms_packets() {
        let mut jb = JitterBuffer::new(JitterConfig::audio(8000));
        for seq in 0..32u16 {
            jb.push(1, seq, u32::from(seq) * 160, &numbered(seq, 160), 0);
        }
        assert_eq!(jb.stats().trimmed, 0);
        assert_eq!(jb.buffered_ms(), 640);
    }

    #[test]
    fn a_burst_larger_than_the_arena_gives_up_the_oldest_and_plays_the_newest_intact() {
        let mut jb = buf();
        // 20 maximum-size frames at once: more than the arena holds.
        for seq in 0..20u16 {
            jb.push(7, seq, u32::from(seq) * FRAME, &numbered(seq, 1275), 0);
        }
        assert!(jb.stats().trimmed > 0);
        let mut out = [0u8; 1500];
        let mut played = Vec::new();
        for _ in 0..20 {
            if let Popped::Packet { len, seq, .. } = jb.pop(&mut out) {
                assert_eq!(&out[..len], &numbered(seq, 1275)[..], "packet {seq}");
                played.push(seq);
            }
        }
        assert_eq!(played.last(), Some(&19), "{played:?}");
        assert!(played.windows(2).all(|w| w[1] == w[0] + 1), "{played:?}");
    }

    #[test]
    fn learns_the_frame_length_from_timestamps() {
        let mut jb = JitterBuffer::new(JitterConfig::audio(8000));
        // 60 ms G.711 frames (480 ticks at 8 kHz).
        jb.push(1, 1, 0, &[0; 480], 0);
        jb.push(1, 2, 480, &[0; 480], 60);
        assert_eq!(jb.buffered_ms(), 120);
        assert_eq!(jb.target_delay_ms(), 60);
    }
}
