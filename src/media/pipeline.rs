//! The per-call media pipeline between the browser leg and the SIP leg, sans-IO.
//!
//! Two independent directions, each fed packets as they arrive and pulled once per 20 ms tick by
//! its own ticker in the session shell (`media::session`):
//!
//! * [`Uplink`] (browser → SIP): Opus through a jitter buffer and libopus (decoding straight to
//!   8 kHz, PLC/FEC on loss) to the negotiated G.711 law; or, when the browser sends G.711, the
//!   payload as is (same law: relay without decoding) or re-coded byte by byte (other law). The
//!   browser's telephone-events (and `{"kind":"dtmf"}` fallbacks) become RFC 4733 packets on the
//!   SIP side's 8 kHz clock and payload type.
//! * [`Downlink`] (SIP → browser): G.711 through a jitter buffer, then Opus-encoded at 8 kHz input
//!   or relayed/re-coded as G.711; RFC 4733 keys from the SIP side are reported once per key.
//!
//! A lost or late G.711 packet (either way) is concealed (`media::plc`, G.711 Appendix I style)
//! rather than played as 20 ms of silence; received G.711 away from a loss is relayed bit-exact.
//!
//! Outgoing timestamps count samples produced (160 per tick; ×6 on the 48 kHz Opus clock), never
//! input timestamps or wall time, so the two clocks cannot drift, and hold, re-INVITEs and SSRC
//! changes on the input never show as jumps on the output. Nothing here allocates, locks or logs
//! per packet: all buffers are allocated in `new`, counters are relaxed atomics.

mod downlink;
mod held;
mod uplink;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};

pub use downlink::{Downlink, DownlinkFrame};
pub use held::{HeldFrame, HeldFrames, HELD_FRAMES};
pub use uplink::{Uplink, UplinkFrame};

use crate::config::Codec;
use crate::media::g711;
use crate::media::opus::FRAME_SAMPLES;
use crate::media::plc::G711Concealer;
use crate::media::webrtc_leg::{LegCodec, NegotiatedCodecs};
use crate::sip::sdp::Negotiated;

/// Samples per 20 ms tick at 8 kHz.
pub const FRAME: usize = FRAME_SAMPLES;
/// Length of a DTMF key sent toward SIP: 100 ms at 8 kHz (what phones and RTCDTMFSender use).
pub const DTMF_DURATION_SAMPLES: u16 = 800;
/// Power level of generated DTMF events, -dBm0.
pub const DTMF_VOLUME: u8 = 10;
/// Largest RTP payload taken from either side.
pub const MAX_PAYLOAD: usize = 1500;

/// What the browser leg sends and receives audio as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrowserCodec {
    /// Opus, 48 kHz RTP clock.
    Opus,
    /// G.711 of the given law, 8 kHz clock.
    G711(Codec),
}

/// The browser side of the negotiation, as the pipeline needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrowserParams {
    /// The audio codec in use.
    pub codec: BrowserCodec,
    /// Its payload type on the browser leg.
    pub payload_type: u8,
    /// telephone-event payload types the browser may send (48 kHz and 8 kHz flavours).
    pub dtmf_pts: [Option<u8>; 2],
}

impl BrowserParams {
    /// From the WebRTC leg's negotiation; `None` without a usable audio codec.
    pub fn from_negotiated(n: &NegotiatedCodecs) -> Option<BrowserParams> {
        let (codec, payload_type) = match n.preferred? {
            LegCodec::Opus => (BrowserCodec::Opus, n.opus?),
            LegCodec::Pcmu => (BrowserCodec::G711(Codec::Pcmu), n.pcmu?),
            LegCodec::Pcma => (BrowserCodec::G711(Codec::Pcma), n.pcma?),
            _ => return None,
        };
        Some(BrowserParams {
            codec,
            payload_type,
            dtmf_pts: [n.telephone_event_48k, n.telephone_event_8k],
        })
    }
}

/// The SIP side of the negotiation, as the pipeline needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipParams {
    /// The G.711 law in use.
    pub codec: Codec,
    /// Its payload type toward the PBX.
    pub payload_type: u8,
    /// telephone-event payload type, when negotiated.
    pub dtmf_pt: Option<u8>,
    /// Whether we may send (false on hold: their sendonly/inactive or `c=0.0.0.0`).
    pub send: bool,
}

impl SipParams {
    /// From the SDP offer/answer outcome.
    pub fn from_negotiated(n: &Negotiated) -> SipParams {
        SipParams {
            codec: n.codec,
            payload_type: n.payload_type,
            dtmf_pt: n.dtmf_pt,
            send: n.direction.sends() && !n.on_hold && !n.remote.ip().is_unspecified(),
        }
    }
}

/// One call's media counters (relaxed atomics; read any time for metrics and tests).
#[derive(Debug, Default)]
pub struct PipelineCounters {
    /// Audio packets sent to the SIP side.
    pub to_sip: AtomicU64,
    /// Audio packets sent to the browser.
    pub to_browser: AtomicU64,
    /// Of those sent either way, payloads relayed without decoding.
    pub relayed: AtomicU64,
    /// DTMF keys sent toward SIP as RFC 4733 events.
    pub dtmf_to_sip: AtomicU64,
    /// DTMF keys received from SIP and reported to the browser.
    pub dtmf_from_sip: AtomicU64,
    /// DTMF keys dropped (no telephone-event negotiated with the SIP side, or queue full).
    pub dtmf_dropped: AtomicU64,
    /// Packets with a payload type the call did not negotiate.
    pub unknown_payload: AtomicU64,
    /// Ticks that produced concealed or silent audio because nothing usable had arrived.
    pub silent_ticks: AtomicU64,
    /// RTP packets received from the browser (the RTP timeout watches it).
    pub from_browser: AtomicU64,
}

impl PipelineCounters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// G.711 codes waiting to be handed out 160 at a time (packets may be 10–60 ms).
pub(crate) struct ByteFifo {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl ByteFifo {
    pub(crate) fn new() -> Self {
        Self {
            buf: vec![0u8; FRAME + MAX_PAYLOAD].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Appends as much of `data` as fits.
    pub(crate) fn put(&mut self, data: &[u8]) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = data.len().min(self.buf.len() - self.end);
        self.buf[self.end..self.end + n].copy_from_slice(&data[..n]);
        self.end += n;
    }

    pub(crate) fn take(&mut self, out: &mut [u8]) -> usize {
        let n = (self.end - self.start).min(out.len());
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        n
    }

    pub(crate) fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }
}

/// What [`fill_g711`] put in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct G711Fill {
    /// Codes, from the start, that are received audio (the rest is for the concealer).
    pub(crate) received: usize,
    /// Where audio starts that does not continue what came before it: the jitter buffer dropped
    /// packets there to cut its delay.
    pub(crate) splice_at: Option<usize>,
}

/// Fills `codes` with the next 160 G.711 codes from `jitter` (through `fifo`), silence where
/// nothing is there.
pub(crate) fn fill_g711(
    jitter: &mut crate::media::jitter::JitterBuffer,
    fifo: &mut ByteFifo,
    payload: &mut [u8],
    codes: &mut [u8; FRAME],
    silence: u8,
) -> G711Fill {
    use crate::media::jitter::Popped;
    let mut filled = fifo.take(codes);
    let mut splice_at = None;
    while filled < FRAME {
        let trimmed = jitter.stats().trimmed;
        match jitter.pop(payload) {
            Popped::Packet { len, .. } => {
                if jitter.stats().trimmed != trimmed {
                    splice_at = Some(filled);
                }
                fifo.put(&payload[..len]);
                filled += fifo.take(&mut codes[filled..]);
            }
            Popped::Lost { .. } | Popped::Silence => {
                codes[filled..].fill(silence);
                break;
            }
        }
    }
    G711Fill {
        received: filled,
        splice_at,
    }
}

/// One frame of G.711 `codes` of law `from`, as [`fill_g711`] filled it, made ready for law
/// `to`: lost codes concealed and a splice smoothed by `plc` (the frame's audio left in `pcm`),
/// the codes re-coded. Received audio away from a loss or splice is relayed bit-exact.
pub(crate) fn conceal_g711(
    plc: &mut G711Concealer,
    from: Codec,
    to: Option<Codec>,
    fill: G711Fill,
    codes: &mut [u8; FRAME],
    pcm: &mut [i16; FRAME],
) {
    g711::decode(from, codes, pcm);
    let received = fill.received;
    let altered = received < FRAME || plc.concealing() || fill.splice_at.is_some();
    match fill.splice_at {
        Some(at) if at <= received => {
            let (before, after) = pcm.split_at_mut(at);
            plc.process(before, at);
            plc.splice();
            plc.process(after, received - at);
        }
        _ => plc.process(pcm, received),
    }
    match to {
        Some(to) if altered => {
            g711::encode(to, pcm, codes);
        }
        Some(to) => recode(from, to, codes),
        None => {}
    }
}

/// Re-codes G.711 codes from one law to the other in place (no-op for the same law).
pub(crate) fn recode(from: Codec, to: Codec, codes: &mut [u8]) {
    match (from, to) {
        (Codec::Pcmu, Codec::Pcma) => {
            for c in codes {
                *c = g711::alaw_encode_sample(g711::ulaw_decode_sample(*c));
            }
        }
        (Codec::Pcma, Codec::Pcmu) => {
            for c in codes {
                *c = g711::ulaw_encode_sample(g711::alaw_decode_sample(*c));
            }
        }
        _ => {}
    }
}

/// Browser DTMF keys waiting to go out, in order (fixed capacity).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DigitQueue {
    events: [u8; 32],
    head: usize,
    len: usize,
}

impl DigitQueue {
    pub(crate) fn push(&mut self, event: u8) -> bool {
        if self.len == self.events.len() {
            return false;
        }
        let i = (self.head + self.len) % self.events.len();
        self.events[i] = event;
        self.len += 1;
        true
    }

    pub(crate) fn pop(&mut self) -> Option<u8> {
        if self.len == 0 {
            return None;
        }
        let e = self.events[self.head];
        self.head = (self.head + 1) % self.events.len();
        self.len -= 1;
        Some(e)
    }

    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }
}
