//! Browser → SIP. See the parent module.

use std::sync::Arc;

use super::{
    conceal_g711, fill_g711, BrowserCodec, BrowserParams, ByteFifo, DigitQueue, PipelineCounters,
    SipParams, DTMF_DURATION_SAMPLES, DTMF_VOLUME, FRAME, MAX_PAYLOAD,
};
use crate::config::Codec;
use crate::media::g711;
use crate::media::jitter::{JitterBuffer, JitterConfig};
use crate::media::opus::{OpusError, PCM_RATE};
use crate::media::plc::G711Concealer;
use crate::media::rtp::{
    dtmf_event, DtmfDetector, DtmfEvent, RtpHeader, TelephoneEvent, RTP_HEADER_LEN,
};
use crate::media::transcode::{BrowserToSip, FrameSource};

enum Decode {
    Opus(Box<BrowserToSip>),
    G711 {
        codec: Codec,
        jitter: Box<JitterBuffer>,
        fifo: ByteFifo,
        plc: Box<G711Concealer>,
        /// Scratch for the payload taken from `jitter` (Opus has its own in the transcoder).
        payload: Box<[u8]>,
    },
}

/// What one tick produced.
#[derive(Debug)]
pub struct UplinkFrame<'a> {
    /// The RTP packet for the PBX (`None` on hold or before the SIP side is negotiated).
    pub packet: Option<&'a [u8]>,
    /// This tick's browser audio at 8 kHz (for recording).
    pub pcm: &'a [i16; FRAME],
}

/// Browser → SIP pipeline state of one call.
pub struct Uplink {
    decode: Decode,
    browser: BrowserParams,
    detector: DtmfDetector,
    sip: Option<SipParams>,
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    marker: bool,
    digits: DigitQueue,
    /// `media.dtmf_mode = "info"`: keys leave through [`Uplink::take_info_digit`], not RTP.
    info_digits: bool,
    event: Option<(DtmfEvent, u32, u8)>,
    pcm: [i16; FRAME],
    codes: [u8; FRAME],
    packet: [u8; RTP_HEADER_LEN + FRAME],
    counters: Arc<PipelineCounters>,
}

impl Uplink {
    /// A pipeline for a browser sending `browser`. Its audio is always decoded, relayed G.711
    /// too: the concealer keeps its history, and recording reads it.
    pub fn new(
        browser: BrowserParams,
        counters: Arc<PipelineCounters>,
    ) -> Result<Uplink, OpusError> {
        let decode = match browser.codec {
            BrowserCodec::Opus => Decode::Opus(Box::new(BrowserToSip::with_defaults()?)),
            BrowserCodec::G711(codec) => Decode::G711 {
                codec,
                jitter: Box::new(JitterBuffer::new(JitterConfig::audio(PCM_RATE))),
                fifo: ByteFifo::new(),
                plc: Box::default(),
                payload: vec![0u8; MAX_PAYLOAD].into_boxed_slice(),
            },
        };
        Ok(Uplink {
            decode,
            browser,
            detector: DtmfDetector::default(),
            sip: None,
            ssrc: rand::random(),
            seq: rand::random(),
            timestamp: rand::random(),
            marker: true,
            digits: DigitQueue::default(),
            info_digits: false,
            event: None,
            pcm: [0; FRAME],
            codes: [0; FRAME],
            packet: [0; RTP_HEADER_LEN + FRAME],
            counters,
        })
    }

    /// The SIP side's (re)negotiated parameters. Resuming after hold marks a talkspurt.
    pub fn set_sip(&mut self, params: SipParams) {
        if params.send && !self.sip.is_some_and(|s| s.send) {
            self.marker = true;
        }
        if !params.send {
            self.event = None;
        }
        self.sip = Some(params);
    }

    /// The coming tick's time on the clock packets are pushed with: playout starts with a margin
    /// ([`JitterBuffer::set_now`]).
    pub fn set_now(&mut self, now_ms: u64) {
        match &mut self.decode {
            Decode::Opus(t) => t.set_now(now_ms),
            Decode::G711 { jitter, .. } => jitter.set_now(now_ms),
        }
    }

    /// Packets from the browser the jitter buffer gave up on, and its inter-arrival jitter (ms).
    pub fn jitter_report(&self) -> (u64, u32) {
        match &self.decode {
            Decode::Opus(t) => (t.jitter_stats().lost, t.jitter_ms()),
            Decode::G711 { jitter, .. } => (jitter.stats().lost, jitter.jitter_ms()),
        }
    }

    /// The SSRC of the stream toward the PBX.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Sends keys as SIP INFO instead of RFC 4733: the caller takes them with
    /// [`Uplink::take_info_digit`] after each tick.
    pub fn send_digits_as_info(&mut self, on: bool) {
        self.info_digits = on;
    }

    /// The next key for a SIP INFO, when keys go that way.
    pub fn take_info_digit(&mut self) -> Option<char> {
        if !self.info_digits {
            return None;
        }
        self.digits.pop().and_then(crate::media::rtp::dtmf_char)
    }

    /// Queues a DTMF key (`0-9*#A-D`) to send toward SIP; false for anything else or when the
    /// queue is full.
    pub fn queue_digit(&mut self, digit: char) -> bool {
        match dtmf_event(digit) {
            Some(event) => self.queue_event(event),
            None => false,
        }
    }

    fn queue_event(&mut self, event: u8) -> bool {
        let queued = self.digits.push(event);
        if !queued {
            PipelineCounters::bump(&self.counters.dtmf_dropped);
        }
        queued
    }

    /// One RTP packet from the browser, arrived at `arrival_ms`.
    pub fn push(
        &mut self,
        payload_type: u8,
        seq: u16,
        timestamp: u32,
        ssrc: u32,
        payload: &[u8],
        arrival_ms: u64,
    ) {
        // Any packet is a sign of life for the RTP timeout, keys and unknown payloads included.
        PipelineCounters::bump(&self.counters.from_browser);
        if self.browser.dtmf_pts.contains(&Some(payload_type)) {
            if let Ok(event) = TelephoneEvent::parse(payload) {
                if self.detector.on_packet(timestamp, &event).is_some() {
                    self.queue_event(event.event);
                }
            }
            return;
        }
        if payload_type != self.browser.payload_type {
            PipelineCounters::bump(&self.counters.unknown_payload);
            return;
        }
        match &mut self.decode {
            Decode::Opus(t) => {
                t.push(ssrc, seq, timestamp, payload, arrival_ms);
            }
            Decode::G711 { jitter, .. } => {
                jitter.push(ssrc, seq, timestamp, payload, arrival_ms);
            }
        }
    }

    /// The next 20 ms: call once per tick.
    pub fn tick(&mut self) -> UplinkFrame<'_> {
        let sip_codec = self.sip.map(|s| s.codec);
        // Decode (or take the codes of) this tick's audio whatever happens next, so the jitter
        // buffer and decoder keep time.
        let relay = match &mut self.decode {
            Decode::Opus(t) => {
                if t.pull(&mut self.pcm) == FrameSource::Silence {
                    PipelineCounters::bump(&self.counters.silent_ticks);
                }
                false
            }
            Decode::G711 {
                codec,
                jitter,
                fifo,
                plc,
                payload,
            } => {
                let fill = fill_g711(
                    jitter,
                    fifo,
                    payload,
                    &mut self.codes,
                    g711::silence(*codec),
                );
                if fill.received == 0 {
                    PipelineCounters::bump(&self.counters.silent_ticks);
                }
                conceal_g711(plc, *codec, sip_codec, fill, &mut self.codes, &mut self.pcm);
                true
            }
        };
        let timestamp = self.timestamp;
        self.timestamp = self.timestamp.wrapping_add(FRAME as u32);
        let Some(sip) = self.sip.filter(|s| s.send) else {
            return UplinkFrame {
                packet: None,
                pcm: &self.pcm,
            };
        };
        if self.event.is_none() && !self.info_digits {
            if let Some(dtmf_pt) = sip.dtmf_pt {
                if let Some(event) = self.digits.pop() {
                    let ev =
                        DtmfEvent::new(event, DTMF_VOLUME, DTMF_DURATION_SAMPLES, FRAME as u16);
                    self.event = Some((ev, timestamp, dtmf_pt));
                    PipelineCounters::bump(&self.counters.dtmf_to_sip);
                }
            } else {
                while self.digits.pop().is_some() {
                    PipelineCounters::bump(&self.counters.dtmf_dropped);
                }
            }
        }
        if let Some((ev, event_ts, pt)) = &mut self.event {
            if let Some((te, first)) = ev.next() {
                let header = RtpHeader {
                    marker: first,
                    payload_type: *pt,
                    sequence: self.seq,
                    timestamp: *event_ts,
                    ssrc: self.ssrc,
                };
                self.seq = self.seq.wrapping_add(1);
                let len = header.write(&te.to_bytes(), &mut self.packet).unwrap_or(0);
                return UplinkFrame {
                    packet: (len > 0).then_some(&self.packet[..len]),
                    pcm: &self.pcm,
                };
            }
            self.event = None;
        }
        if relay {
            if sip.codec == self.browser_law().unwrap_or(sip.codec) {
                PipelineCounters::bump(&self.counters.relayed);
            }
        } else {
            g711::encode(sip.codec, &self.pcm, &mut self.codes);
        }
        let header = RtpHeader {
            marker: std::mem::take(&mut self.marker),
            payload_type: sip.payload_type,
            sequence: self.seq,
            timestamp,
            ssrc: self.ssrc,
        };
        self.seq = self.seq.wrapping_add(1);
        let len = header.write(&self.codes, &mut self.packet).unwrap_or(0);
        PipelineCounters::bump(&self.counters.to_sip);
        UplinkFrame {
            packet: (len > 0).then_some(&self.packet[..len]),
            pcm: &self.pcm,
        }
    }

    fn browser_law(&self) -> Option<Codec> {
        match self.browser.codec {
            BrowserCodec::G711(c) => Some(c),
            BrowserCodec::Opus => None,
        }
    }

    /// Forgets queued keys (the call is ending or the SIP side changed).
    pub fn clear_digits(&mut self) {
        self.digits.clear();
    }
}
