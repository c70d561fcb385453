//! SIP → browser. See the parent module.

use std::sync::Arc;

use super::{
    conceal_g711, fill_g711, BrowserCodec, BrowserParams, ByteFifo, PipelineCounters, SipParams,
    FRAME, MAX_PAYLOAD,
};
use crate::config::{Codec, OpusSettings};
use crate::media::encoder_policy::EncoderPolicy;
use crate::media::g711;
use crate::media::jitter::{JitterBuffer, JitterConfig};
use crate::media::opus::{
    OpusEncoder, OpusEncoderConfig, OpusError, MAX_OPUS_PACKET, OPUS_TICKS_PER_SAMPLE, PCM_RATE,
};
use crate::media::plc::G711Concealer;
use crate::media::rtp::{DtmfDetector, RtpPacket, TelephoneEvent};
use crate::media::transcode::{RtpClock, RtpStamp};

/// What one tick produced for the browser.
#[derive(Debug)]
pub struct DownlinkFrame<'a> {
    /// Payload type on the browser leg.
    pub payload_type: u8,
    /// Sequence number, timestamp, marker.
    pub stamp: RtpStamp,
    /// The payload (Opus packet or 160 G.711 codes).
    pub payload: &'a [u8],
    /// This tick's SIP-side audio at 8 kHz (for recording; always filled: the concealer keeps
    /// its history).
    pub pcm: &'a [i16; FRAME],
}

/// SIP → browser pipeline state of one call.
pub struct Downlink {
    jitter: JitterBuffer,
    fifo: ByteFifo,
    /// The law of what is buffered: from the payload type of the packets (0 or 8).
    sip_codec: Codec,
    dtmf_pt: Option<u8>,
    detector: DtmfDetector,
    browser: BrowserParams,
    encoder: Option<OpusEncoder>,
    /// Bitrate/FEC/complexity of `encoder`, following the browser's receiver reports.
    policy: EncoderPolicy,
    /// Conceals lost packets from the PBX.
    plc: Box<G711Concealer>,
    clock: RtpClock,
    payload: Box<[u8]>,
    codes: [u8; FRAME],
    pcm: [i16; FRAME],
    out: Box<[u8]>,
    counters: Arc<PipelineCounters>,
}

impl Downlink {
    /// A pipeline sending to a browser that negotiated `browser`, with the default Opus settings.
    pub fn new(
        browser: BrowserParams,
        counters: Arc<PipelineCounters>,
    ) -> Result<Downlink, OpusError> {
        Downlink::with_opus(browser, OpusSettings::default(), counters)
    }

    /// A pipeline whose Opus encoder is built once with the configured settings (`[media]
    /// opus_*`), not built with defaults and reconfigured.
    pub fn with_opus(
        browser: BrowserParams,
        opus: OpusSettings,
        counters: Arc<PipelineCounters>,
    ) -> Result<Downlink, OpusError> {
        let policy = EncoderPolicy::new(opus);
        let (encoder, ticks) = match browser.codec {
            BrowserCodec::Opus => (
                Some(OpusEncoder::new(policy.settings())?),
                OPUS_TICKS_PER_SAMPLE,
            ),
            BrowserCodec::G711(_) => (None, 1),
        };
        Ok(Downlink {
            jitter: JitterBuffer::new(JitterConfig::audio(PCM_RATE)),
            fifo: ByteFifo::new(),
            sip_codec: Codec::Pcmu,
            dtmf_pt: None,
            detector: DtmfDetector::default(),
            browser,
            encoder,
            policy,
            plc: Box::default(),
            clock: RtpClock::random(ticks),
            payload: vec![0u8; MAX_PAYLOAD].into_boxed_slice(),
            codes: [0; FRAME],
            pcm: [0; FRAME],
            out: vec![0u8; MAX_OPUS_PACKET].into_boxed_slice(),
            counters,
        })
    }

    /// The configured Opus settings (`[media] opus_*`); the policy starts over from them.
    pub fn set_opus(&mut self, settings: OpusSettings) -> Result<(), OpusError> {
        self.policy = EncoderPolicy::new(settings);
        self.apply_encoder(self.policy.settings())
    }

    /// The browser's RTCP receiver report about our stream: fraction lost (0..=1) at `now_ms`.
    /// Returns the encoder settings when the report changed them.
    pub fn on_loss_report(
        &mut self,
        fraction_lost: f32,
        now_ms: u64,
    ) -> Result<Option<OpusEncoderConfig>, OpusError> {
        let changed = self.policy.on_loss_report(fraction_lost, now_ms);
        if let Some(settings) = changed {
            self.apply_encoder(settings)?;
        }
        Ok(changed)
    }

    /// The bridge became short of CPU, or calm again (`ops::cpu_load`): the encoder's
    /// complexity follows. Returns the encoder settings when they changed.
    pub fn set_busy(&mut self, busy: bool) -> Result<Option<OpusEncoderConfig>, OpusError> {
        let changed = self.policy.set_busy(busy);
        if let Some(settings) = changed {
            self.apply_encoder(settings)?;
        }
        Ok(changed)
    }

    /// Whether the browser gets Opus (else G.711 is relayed and no encoder runs).
    pub fn encodes_opus(&self) -> bool {
        self.encoder.is_some()
    }

    /// The settings the Opus encoder runs with now.
    pub fn encoder_settings(&self) -> OpusEncoderConfig {
        self.policy.settings()
    }

    fn apply_encoder(&mut self, settings: OpusEncoderConfig) -> Result<(), OpusError> {
        match self.encoder.as_mut() {
            Some(encoder) => encoder.apply(settings),
            None => Ok(()),
        }
    }

    /// The SIP side's (re)negotiated parameters.
    pub fn set_sip(&mut self, params: SipParams) {
        self.sip_codec = params.codec;
        self.dtmf_pt = params.dtmf_pt;
    }

    /// The coming tick's time on the clock packets are pushed with: playout starts with a margin
    /// ([`JitterBuffer::set_now`]).
    pub fn set_now(&mut self, now_ms: u64) {
        self.jitter.set_now(now_ms);
    }

    /// Packets from the PBX the jitter buffer gave up on, and its inter-arrival jitter (ms).
    pub fn jitter_report(&self) -> (u64, u32) {
        (self.jitter.stats().lost, self.jitter.jitter_ms())
    }

    /// SSRC of the stream to the browser.
    pub fn ssrc(&self) -> u32 {
        self.clock.ssrc
    }

    /// One RTP packet from the SIP side; returns a DTMF key when this packet starts one.
    pub fn push(&mut self, packet: &RtpPacket<'_>, arrival_ms: u64) -> Option<char> {
        if self.dtmf_pt == Some(packet.payload_type) {
            let event = TelephoneEvent::parse(packet.payload).ok()?;
            let digit = self.detector.on_packet(packet.timestamp, &event)?;
            PipelineCounters::bump(&self.counters.dtmf_from_sip);
            return Some(digit);
        }
        let codec = match packet.payload_type {
            0 => Codec::Pcmu,
            8 => Codec::Pcma,
            _ => {
                PipelineCounters::bump(&self.counters.unknown_payload);
                return None;
            }
        };
        if codec != self.sip_codec {
            // A codec change (re-INVITE): what is buffered in the old law is dropped.
            self.fifo.clear();
            self.sip_codec = codec;
        }
        self.jitter.push(
            packet.ssrc,
            packet.sequence,
            packet.timestamp,
            packet.payload,
            arrival_ms,
        );
        None
    }

    /// The next 20 ms for the browser: call once per tick.
    pub fn tick(&mut self) -> Result<DownlinkFrame<'_>, OpusError> {
        let from = self.sip_codec;
        let fill = fill_g711(
            &mut self.jitter,
            &mut self.fifo,
            &mut self.payload,
            &mut self.codes,
            g711::silence(from),
        );
        if fill.received == 0 {
            PipelineCounters::bump(&self.counters.silent_ticks);
        }
        let to = match self.browser.codec {
            BrowserCodec::G711(to) => Some(to),
            BrowserCodec::Opus => None,
        };
        conceal_g711(
            &mut self.plc,
            from,
            to,
            fill,
            &mut self.codes,
            &mut self.pcm,
        );
        let len = match (self.browser.codec, self.encoder.as_mut()) {
            (BrowserCodec::Opus, Some(encoder)) => encoder.encode(&self.pcm, &mut self.out)?,
            (BrowserCodec::G711(to), _) => {
                if to == from {
                    PipelineCounters::bump(&self.counters.relayed);
                }
                self.out[..FRAME].copy_from_slice(&self.codes);
                FRAME
            }
            (BrowserCodec::Opus, None) => 0,
        };
        PipelineCounters::bump(&self.counters.to_browser);
        Ok(DownlinkFrame {
            payload_type: self.browser.payload_type,
            stamp: self.clock.stamp(FRAME as u32),
            payload: &self.out[..len],
            pcm: &self.pcm,
        })
    }
}
