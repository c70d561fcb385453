//! The Opus ⇄ G.711 transcoding core, sans-IO: packets and arrival times in, 20 ms frames out.
//!
//! * [`BrowserToSip`]: Opus RTP from the browser (48 kHz RTP clock) through a jitter buffer and the
//!   Opus decoder to 8 kHz PCM, one 160-sample frame per pull, with loss concealment (FEC from the
//!   next packet when it is there, PLC otherwise), a short fade when the stream stops and silence
//!   when nothing is coming.
//! * [`SipToBrowser`]: G.711 RTP from the SIP side (8 kHz clock) through a jitter buffer to Opus
//!   packets with their own continuous sequence numbers and 48 kHz timestamps, derived from the
//!   count of 8 kHz samples sent × 6, so the two clocks cannot drift apart and pauses or SSRC
//!   changes on the input do not show on the output.
//!
//! The G.711 step is the [`SampleCodec`] trait, so `media::g711` (μ-law or A-law) plugs in; the
//! caller's tokio shell calls `pull` every 20 ms. All buffers are allocated up front.

use crate::media::jitter::{JitterBuffer, JitterConfig, JitterStats, Popped, Pushed};
use crate::media::opus::{
    OpusDecoder, OpusEncoder, OpusEncoderConfig, OpusError, FRAME_SAMPLES, MAX_PACKET_SAMPLES,
    OPUS_TICKS_PER_SAMPLE,
};

/// A sample codec on the SIP side (G.711 μ-law/A-law, or linear PCM): one byte string per frame.
pub trait SampleCodec {
    /// Encodes `pcm` into `out`; returns the bytes written (G.711: one per sample).
    fn encode(&self, pcm: &[i16], out: &mut [u8]) -> usize;
    /// Decodes `payload` into `out`; returns the samples written (at most `out.len()`).
    fn decode(&self, payload: &[u8], out: &mut [i16]) -> usize;
}

/// 16-bit big-endian linear PCM (RTP "L16", RFC 3551 §4.5.11): feeds already-decoded PCM through
/// [`SipToBrowser`] and stands in for G.711 in tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct Linear16;

impl SampleCodec for Linear16 {
    fn encode(&self, pcm: &[i16], out: &mut [u8]) -> usize {
        let n = pcm.len().min(out.len() / 2);
        for (s, b) in pcm[..n].iter().zip(out.chunks_exact_mut(2)) {
            b.copy_from_slice(&s.to_be_bytes());
        }
        n * 2
    }

    fn decode(&self, payload: &[u8], out: &mut [i16]) -> usize {
        let n = (payload.len() / 2).min(out.len());
        for (b, s) in payload.chunks_exact(2).zip(out[..n].iter_mut()) {
            *s = i16::from_be_bytes([b[0], b[1]]);
        }
        n
    }
}

/// Where the audio of a pulled frame came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSource {
    /// Decoded from received packets.
    Decoded,
    /// Part of it recovered from the next packet's in-band FEC.
    Fec,
    /// Part of it concealed (PLC) for a lost packet or a stream that just stopped.
    Concealed,
    /// Nothing to play: silence.
    Silence,
}

impl FrameSource {
    /// The worse of two sources, for a frame assembled from several pieces.
    fn worst(self, other: Self) -> Self {
        fn rank(s: FrameSource) -> u8 {
            match s {
                FrameSource::Decoded => 0,
                FrameSource::Fec => 1,
                FrameSource::Concealed => 2,
                FrameSource::Silence => 3,
            }
        }
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

/// Consecutive sequence numbers and timestamps for an outgoing RTP stream.
///
/// The timestamp advances by samples sent × `ticks_per_sample` (6 for Opus at 48 kHz fed from
/// 8 kHz, 1 for G.711), never by wall time, so it cannot drift against the audio it stamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpClock {
    /// SSRC of the stream.
    pub ssrc: u32,
    seq: u16,
    timestamp: u32,
    ticks_per_sample: u32,
    first: bool,
}

/// Sequence number, timestamp and marker for one outgoing packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpStamp {
    /// RTP sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Marker bit: set on the first packet of the stream.
    pub marker: bool,
}

impl RtpClock {
    /// A clock starting at the given values.
    pub fn new(ssrc: u32, first_seq: u16, first_timestamp: u32, ticks_per_sample: u32) -> Self {
        Self {
            ssrc,
            seq: first_seq,
            timestamp: first_timestamp,
            ticks_per_sample,
            first: true,
        }
    }

    /// A clock with random SSRC, sequence and timestamp (RFC 3550 §5.1).
    pub fn random(ticks_per_sample: u32) -> Self {
        Self::new(
            rand::random(),
            rand::random(),
            rand::random(),
            ticks_per_sample,
        )
    }

    /// Stamps a packet carrying `samples` 8 kHz samples and advances the clock past it.
    pub fn stamp(&mut self, samples: u32) -> RtpStamp {
        let stamp = RtpStamp {
            seq: self.seq,
            timestamp: self.timestamp,
            marker: self.first,
        };
        self.first = false;
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self
            .timestamp
            .wrapping_add(samples.wrapping_mul(self.ticks_per_sample));
        stamp
    }
}

/// Frames of PLC used to fade out a stream that stopped before playing silence.
const FADE_FRAMES: u32 = 3;

/// Decoded PCM waiting to be handed out, 160 samples at a time (packets may be 10–120 ms).
struct PcmFifo {
    buf: Box<[i16]>,
    start: usize,
    end: usize,
}

impl PcmFifo {
    fn new() -> Self {
        Self {
            buf: vec![0i16; FRAME_SAMPLES + MAX_PACKET_SAMPLES].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    fn len(&self) -> usize {
        self.end - self.start
    }

    /// Room to append a whole packet, moving what is left to the front first.
    fn spare(&mut self) -> &mut [i16] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    fn take(&mut self, out: &mut [i16]) -> usize {
        let n = self.len().min(out.len());
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        n
    }
}

/// Applies a linear gain ramp from `from` to `to` over `pcm`.
fn ramp(pcm: &mut [i16], from: f32, to: f32) {
    let n = pcm.len().max(1) as f32;
    for (i, s) in pcm.iter_mut().enumerate() {
        let g = from + (to - from) * (i as f32 / n);
        *s = (f32::from(*s) * g) as i16;
    }
}

/// Browser → SIP: Opus RTP in, 8 kHz PCM (or G.711 bytes) out every 20 ms. See the module docs.
pub struct BrowserToSip {
    jitter: JitterBuffer,
    decoder: OpusDecoder,
    payload: Box<[u8]>,
    pcm: PcmFifo,
    /// True once audio was decoded and until the stream faded out.
    playing: bool,
    /// PLC frames played since the stream ran dry.
    fade_run: u32,
    /// Of those, how many the jitter buffer has not yet reported lost: they were already
    /// concealed, so concealing them again would only add delay.
    covered: u32,
    decode_errors: u64,
}

impl BrowserToSip {
    /// A transcoder with a jitter buffer configured by `jitter` (its clock rate must be 48000).
    pub fn new(jitter: JitterConfig) -> Result<Self, OpusError> {
        Ok(Self {
            payload: vec![0u8; jitter.max_payload].into_boxed_slice(),
            jitter: JitterBuffer::new(jitter),
            decoder: OpusDecoder::new()?,
            pcm: PcmFifo::new(),
            playing: false,
            fade_run: 0,
            covered: 0,
            decode_errors: 0,
        })
    }

    /// A transcoder with the default 20–80 ms jitter buffer at the Opus RTP clock.
    pub fn with_defaults() -> Result<Self, OpusError> {
        Self::new(JitterConfig::audio(crate::media::opus::OPUS_RTP_CLOCK))
    }

    /// Queues one Opus RTP payload that arrived at `arrival_ms` (any monotonic millisecond clock).
    pub fn push(
        &mut self,
        ssrc: u32,
        seq: u16,
        timestamp: u32,
        payload: &[u8],
        arrival_ms: u64,
    ) -> Pushed {
        let pushed = self.jitter.push(ssrc, seq, timestamp, payload, arrival_ms);
        if pushed == Pushed::Restarted {
            // A new stream: decoding it with the old one's history would smear the two.
            // Reset cannot fail on a valid decoder; a failure leaves the old state, which is harmless.
            let _ = self.decoder.reset();
        }
        pushed
    }

    /// The next 20 ms of PCM, into `out`. Call once every 20 ms.
    pub fn pull(&mut self, out: &mut [i16; FRAME_SAMPLES]) -> FrameSource {
        let mut source = FrameSource::Decoded;
        let mut filled = self.pcm.take(out);
        while filled < FRAME_SAMPLES {
            let Some(piece) = self.refill() else {
                continue;
            };
            source = source.worst(piece);
            if piece == FrameSource::Silence {
                out[filled..].fill(0);
                break;
            }
            filled += self.pcm.take(&mut out[filled..]);
        }
        source
    }

    /// [`pull`](Self::pull), then encode the frame with `codec` (G.711) into `out` (160 bytes).
    /// Returns the bytes written and where the audio came from.
    pub fn pull_encoded(
        &mut self,
        codec: &impl SampleCodec,
        out: &mut [u8],
    ) -> (usize, FrameSource) {
        let mut pcm = [0i16; FRAME_SAMPLES];
        let source = self.pull(&mut pcm);
        (codec.encode(&pcm, out), source)
    }

    /// Decodes the next packet (or conceals it) into the FIFO; `None` when the packet was
    /// already covered by concealment and nothing was added.
    fn refill(&mut self) -> Option<FrameSource> {
        Some(match self.jitter.pop(&mut self.payload) {
            Popped::Packet { len, .. } => {
                self.covered = 0;
                let spare = self.pcm.spare();
                match self.decoder.decode(&self.payload[..len], spare) {
                    Ok(n) => {
                        self.pcm.commit(n);
                        self.playing = true;
                        self.fade_run = 0;
                        FrameSource::Decoded
                    }
                    Err(_) => {
                        self.decode_errors += 1;
                        self.conceal()
                    }
                }
            }
            Popped::Lost { .. } if self.covered > 0 => {
                self.covered -= 1;
                return None;
            }
            Popped::Lost { .. } => {
                let recovered = match self.jitter.peek_next() {
                    Some(next) => {
                        let spare = self.pcm.spare();
                        self.decoder.recover_from_next(next, spare).ok()
                    }
                    None => None,
                };
                match recovered {
                    Some(n) if n > 0 => {
                        self.pcm.commit(n);
                        FrameSource::Fec
                    }
                    _ => self.conceal(),
                }
            }
            Popped::Silence => {
                if !self.playing {
                    return Some(FrameSource::Silence);
                }
                if self.fade_run >= FADE_FRAMES {
                    self.playing = false;
                    return Some(FrameSource::Silence);
                }
                // The stream ran dry: let PLC carry on for a moment and fade it to silence.
                // The first frame at full level (the packet may just be late), then down to zero.
                let gain = |k: u32| (1.0 - k as f32 / (FADE_FRAMES - 1) as f32).max(0.0);
                let (from, to) = if self.fade_run == 0 {
                    (1.0, 1.0)
                } else {
                    (gain(self.fade_run - 1), gain(self.fade_run))
                };
                self.fade_run += 1;
                let spare = self.pcm.spare();
                let limit = spare.len().min(FRAME_SAMPLES);
                match self.decoder.conceal(&mut spare[..limit]) {
                    Ok(n) if n > 0 => {
                        ramp(&mut spare[..n], from, to);
                        self.pcm.commit(n);
                        self.covered += 1;
                        FrameSource::Concealed
                    }
                    _ => FrameSource::Silence,
                }
            }
        })
    }

    fn conceal(&mut self) -> FrameSource {
        let spare = self.pcm.spare();
        match self.decoder.conceal(spare) {
            Ok(n) if n > 0 => {
                self.pcm.commit(n);
                FrameSource::Concealed
            }
            _ => {
                // No history to conceal from: a frame of silence keeps the cadence.
                let n = spare.len().min(FRAME_SAMPLES);
                spare[..n].fill(0);
                self.pcm.commit(n);
                FrameSource::Silence
            }
        }
    }

    /// Jitter-buffer counters.
    pub fn jitter_stats(&self) -> JitterStats {
        self.jitter.stats()
    }

    /// The incoming stream's inter-arrival jitter estimate, in milliseconds.
    pub fn jitter_ms(&self) -> u32 {
        self.jitter.jitter_ms()
    }

    /// The coming tick's time on the arrival clock ([`JitterBuffer::set_now`]).
    pub fn set_now(&mut self, now_ms: u64) {
        self.jitter.set_now(now_ms);
    }

    /// Packets libopus could not decode (concealed instead).
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors
    }
}

/// One Opus packet ready for the browser: its length in the caller's buffer and its RTP header
/// fields on the 48 kHz clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusFrame {
    /// Payload length in the caller's buffer.
    pub len: usize,
    /// Sequence number, timestamp, marker.
    pub stamp: RtpStamp,
    /// Where the audio came from.
    pub source: FrameSource,
}

/// SIP → browser: G.711 (or any [`SampleCodec`]) RTP in, 20 ms Opus packets out. See the module
/// docs.
pub struct SipToBrowser<C: SampleCodec> {
    codec: C,
    jitter: JitterBuffer,
    encoder: OpusEncoder,
    clock: RtpClock,
    payload: Box<[u8]>,
    pcm: PcmFifo,
    /// The last frame decoded, mirrored and faded to conceal a lost packet.
    last: Box<[i16]>,
    last_len: usize,
    playing: bool,
}

impl<C: SampleCodec> SipToBrowser<C> {
    /// A transcoder decoding with `codec`, buffering per `jitter` (clock rate 8000), encoding with
    /// `opus`, stamping output with `clock` (use 6 ticks per sample, e.g. `RtpClock::random(6)`).
    pub fn new(
        codec: C,
        jitter: JitterConfig,
        opus: OpusEncoderConfig,
        clock: RtpClock,
    ) -> Result<Self, OpusError> {
        Ok(Self {
            codec,
            payload: vec![0u8; jitter.max_payload].into_boxed_slice(),
            jitter: JitterBuffer::new(jitter),
            encoder: OpusEncoder::new(opus)?,
            clock,
            pcm: PcmFifo::new(),
            last: vec![0i16; MAX_PACKET_SAMPLES].into_boxed_slice(),
            last_len: 0,
            playing: false,
        })
    }

    /// Defaults: 20–80 ms jitter buffer at 8 kHz, default Opus settings, random output clock.
    pub fn with_defaults(codec: C) -> Result<Self, OpusError> {
        Self::new(
            codec,
            JitterConfig::audio(crate::media::opus::PCM_RATE),
            OpusEncoderConfig::default(),
            RtpClock::random(OPUS_TICKS_PER_SAMPLE),
        )
    }

    /// SSRC of the Opus stream sent to the browser.
    pub fn ssrc(&self) -> u32 {
        self.clock.ssrc
    }

    /// Queues one G.711 RTP payload that arrived at `arrival_ms`.
    pub fn push(
        &mut self,
        ssrc: u32,
        seq: u16,
        timestamp: u32,
        payload: &[u8],
        arrival_ms: u64,
    ) -> Pushed {
        self.jitter.push(ssrc, seq, timestamp, payload, arrival_ms)
    }

    /// The next 20 ms as an Opus packet in `out` (1500 bytes is always enough). Call every 20 ms:
    /// the output stream never pauses, so its timestamps stay continuous.
    pub fn pull(&mut self, out: &mut [u8]) -> Result<OpusFrame, OpusError> {
        let mut pcm = [0i16; FRAME_SAMPLES];
        let mut source = FrameSource::Decoded;
        let mut filled = self.pcm.take(&mut pcm);
        while filled < FRAME_SAMPLES {
            let piece = self.refill();
            source = source.worst(piece);
            if piece == FrameSource::Silence {
                pcm[filled..].fill(0);
                break;
            }
            filled += self.pcm.take(&mut pcm[filled..]);
        }
        let len = self.encoder.encode(&pcm, out)?;
        Ok(OpusFrame {
            len,
            stamp: self.clock.stamp(FRAME_SAMPLES as u32),
            source,
        })
    }

    fn refill(&mut self) -> FrameSource {
        match self.jitter.pop(&mut self.payload) {
            Popped::Packet { len, .. } => {
                let spare = self.pcm.spare();
                let n = self.codec.decode(&self.payload[..len], spare);
                if n == 0 {
                    return self.conceal();
                }
                let n = n.min(self.last.len());
                self.last[..n].copy_from_slice(&spare[..n]);
                self.last_len = n;
                self.pcm.commit(n);
                self.playing = true;
                FrameSource::Decoded
            }
            Popped::Lost { .. } => self.conceal(),
            Popped::Silence => {
                if self.playing {
                    // The stream stopped: fade out what was playing rather than cut it.
                    self.playing = false;
                    self.conceal()
                } else {
                    FrameSource::Silence
                }
            }
        }
    }

    /// Conceals one lost frame: the last frame played backwards (so it joins without a jump) and
    /// faded out.
    fn conceal(&mut self) -> FrameSource {
        if self.last_len == 0 {
            return FrameSource::Silence;
        }
        let n = self.last_len;
        let spare = self.pcm.spare();
        let n = n.min(spare.len());
        for (i, s) in spare[..n].iter_mut().enumerate() {
            *s = self.last[n - 1 - i];
        }
        ramp(&mut spare[..n], 1.0, 0.0);
        self.pcm.commit(n);
        // A second loss in a row conceals from silence, not from the same frame again.
        self.last[..n].fill(0);
        FrameSource::Concealed
    }

    /// Jitter-buffer counters.
    pub fn jitter_stats(&self) -> JitterStats {
        self.jitter.stats()
    }
}

#[cfg(test)]
mod tests;
