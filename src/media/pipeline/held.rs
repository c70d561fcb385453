//! Frames for the browser produced before its leg can encrypt them.
//!
//! Until ICE and DTLS complete, the browser leg has no SRTP keys and a packet sent to it is lost.
//! When the leg is set up late (a client that offers only when it accepts), the phone's first
//! words after answer fall in that window; they are held here instead, at most `capacity` frames
//! (the oldest dropped and counted), and sent in order once SRTP is up. A slot's buffer grows on
//! its first use and is reused after, so a call whose leg was up in time costs no memory here.

use super::DownlinkFrame;
use crate::media::opus::MAX_OPUS_PACKET;
use crate::media::transcode::RtpStamp;

/// How many 20 ms frames are held at most: 500 ms, which covers the DTLS handshake after an
/// answer (220–390 ms measured on a loaded loopback) without leaving the browser a long backlog.
pub const HELD_FRAMES: usize = 25;

struct Slot {
    payload_type: u8,
    stamp: RtpStamp,
    payload: Vec<u8>,
}

/// A bounded FIFO of outgoing browser frames. See the module docs.
pub struct HeldFrames {
    slots: Vec<Slot>,
    /// Index of the oldest held frame.
    head: usize,
    len: usize,
    dropped: u64,
    held: u64,
}

/// One held frame, borrowed from the buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct HeldFrame<'a> {
    /// Payload type on the browser leg.
    pub payload_type: u8,
    /// Sequence number, timestamp, marker, as the pipeline stamped them.
    pub stamp: RtpStamp,
    /// The payload.
    pub payload: &'a [u8],
}

impl HeldFrames {
    /// Room for `capacity` frames (at least one).
    pub fn new(capacity: usize) -> HeldFrames {
        let slots = (0..capacity.max(1))
            .map(|_| Slot {
                payload_type: 0,
                stamp: RtpStamp {
                    seq: 0,
                    timestamp: 0,
                    marker: false,
                },
                payload: Vec::new(),
            })
            .collect();
        HeldFrames {
            slots,
            head: 0,
            len: 0,
            dropped: 0,
            held: 0,
        }
    }

    /// Holds a copy of `frame`; when full, the oldest frame is dropped (and counted).
    pub fn hold(&mut self, frame: &DownlinkFrame<'_>) {
        let capacity = self.slots.len();
        if self.len == capacity {
            self.head = (self.head + 1) % capacity;
            self.len -= 1;
            self.dropped += 1;
        }
        let slot = &mut self.slots[(self.head + self.len) % capacity];
        let len = frame.payload.len().min(MAX_OPUS_PACKET);
        slot.payload.clear();
        slot.payload.extend_from_slice(&frame.payload[..len]);
        slot.payload_type = frame.payload_type;
        slot.stamp = frame.stamp;
        self.len += 1;
        self.held += 1;
    }

    /// The oldest held frame, if any.
    pub fn front(&self) -> Option<HeldFrame<'_>> {
        (self.len > 0).then(|| {
            let slot = &self.slots[self.head];
            HeldFrame {
                payload_type: slot.payload_type,
                stamp: slot.stamp,
                payload: &slot.payload,
            }
        })
    }

    /// Forgets the oldest held frame (after it was sent).
    pub fn pop_front(&mut self) {
        if self.len > 0 {
            self.head = (self.head + 1) % self.slots.len();
            self.len -= 1;
        }
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Frames ever held, and of those, dropped because the buffer was full.
    pub fn totals(&self) -> (u64, u64) {
        (self.held, self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::pipeline::FRAME;

    fn frame(seq: u16, payload: &[u8]) -> DownlinkFrame<'_> {
        static PCM: [i16; FRAME] = [0; FRAME];
        DownlinkFrame {
            payload_type: 111,
            stamp: RtpStamp {
                seq,
                timestamp: u32::from(seq) * 960,
                marker: seq == 0,
            },
            payload,
            pcm: &PCM,
        }
    }

    #[test]
    fn frames_come_out_in_order_with_their_stamps() {
        let mut held = HeldFrames::new(4);
        held.hold(&frame(0, &[1, 2, 3]));
        held.hold(&frame(1, &[4]));
        let first = held.front().expect("a frame");
        assert_eq!(first.payload, &[1, 2, 3]);
        assert_eq!(first.stamp.seq, 0);
        assert!(first.stamp.marker);
        held.pop_front();
        assert_eq!(held.front().map(|f| f.payload.to_vec()), Some(vec![4]));
        held.pop_front();
        assert!(held.front().is_none());
        assert!(held.is_empty());
        assert_eq!(held.totals(), (2, 0));
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_counts_it() {
        let mut held = HeldFrames::new(3);
        for seq in 0..5u16 {
            held.hold(&frame(seq, &[seq as u8]));
        }
        assert_eq!(held.len(), 3);
        assert_eq!(held.totals(), (5, 2));
        let mut seqs = Vec::new();
        while let Some(f) = held.front() {
            seqs.push(f.stamp.seq);
            held.pop_front();
        }
        assert_eq!(seqs, vec![2, 3, 4]);
    }

    #[test]
    fn an_oversized_payload_is_cut_to_the_largest_packet_not_a_panic() {
        let mut held = HeldFrames::new(1);
        let big = vec![7u8; MAX_OPUS_PACKET + 100];
        held.hold(&frame(0, &big));
        assert_eq!(held.front().map(|f| f.payload.len()), Some(MAX_OPUS_PACKET));
        // Popping an empty buffer is harmless.
        held.pop_front();
        held.pop_front();
        assert!(held.is_empty());
    }
}
