//! Opus at the telephone rate: 8 kHz mono, 20 ms frames, for the browser ⇄ G.711 path.
//!
//! libopus resamples internally, so decoding a browser's 48 kHz stereo stream straight to 8 kHz mono
//! and encoding 8 kHz PCM for a browser needs no separate resampler. On the wire the Opus RTP clock
//! is always 48 kHz ([`OPUS_RTP_CLOCK`]): 20 ms is 960 timestamp units whatever rate the codec runs
//! at internally. Nothing here allocates per frame: callers pass the output buffers.

use audiopus::coder::{Decoder, Encoder, GenericCtl};
use audiopus::{Application, Bitrate, Channels, SampleRate, Signal};

pub use crate::config::OpusMode;

/// PCM sample rate on the telephone side.
pub const PCM_RATE: u32 = 8000;
/// Samples in one 20 ms frame at [`PCM_RATE`].
pub const FRAME_SAMPLES: usize = 160;
/// RTP clock rate of Opus in WebRTC (RFC 7587), whatever the codec's internal rate.
pub const OPUS_RTP_CLOCK: u32 = 48_000;
/// RTP timestamp units per 8 kHz sample on the Opus clock.
pub const OPUS_TICKS_PER_SAMPLE: u32 = OPUS_RTP_CLOCK / PCM_RATE;
/// Longest Opus packet duration (120 ms) in samples at [`PCM_RATE`]: the size a decode buffer needs
/// to take any packet a browser may send.
pub const MAX_PACKET_SAMPLES: usize = 960;
/// A buffer this large holds any encoded Opus packet (RFC 6716 §3.4 bounds a frame at 1275 bytes).
pub const MAX_OPUS_PACKET: usize = 1500;

/// libopus's `OPUS_SET_FORCE_MODE` request and its `MODE_CELT_ONLY` value (`opus_private.h`:
/// not in the public header, but the request libopus's own tools use to pick a coder; Debian's
/// libopus 1.3.1 here). `OPUS_AUTO` gives the choice back to libopus. Sent only when the mode
/// changes, so a bridge that never asks for CELT never uses it.
const OPUS_SET_FORCE_MODE_REQUEST: i32 = 11002;
const MODE_CELT_ONLY: i32 = 1002;

/// The coder that made an Opus packet, from its TOC byte (RFC 6716 §3.1: configurations 0–11
/// are SILK, 12–15 hybrid, 16–31 CELT), named as [`OpusMode`] prints: "silk", "hybrid" or
/// "celt"; `None` for an empty packet.
pub fn packet_coder(packet: &[u8]) -> Option<&'static str> {
    Some(match packet.first()? >> 3 {
        0..=11 => "silk",
        12..=15 => "hybrid",
        _ => "celt",
    })
}

/// Why an Opus call failed.
#[derive(Debug, thiserror::Error)]
pub enum OpusError {
    /// libopus refused the call (corrupt packet, bad setting, buffer too small).
    #[error("opus: {0}")]
    Codec(#[from] audiopus::Error),
    /// The caller's PCM buffer does not have the required length.
    #[error("opus: PCM buffer of {got} samples, need {need}")]
    BadFrameLength {
        /// Length passed.
        got: usize,
        /// Length required.
        need: usize,
    },
    /// An empty payload cannot be decoded (use [`OpusDecoder::conceal`] for a missing one).
    #[error("opus: empty packet")]
    EmptyPacket,
}

/// Decodes a browser's Opus stream to 8 kHz mono PCM, concealing losses.
pub struct OpusDecoder {
    inner: Decoder,
    /// Samples the last good packet decoded to: the length a concealed frame should have.
    last_samples: usize,
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusDecoder")
            .field("last_samples", &self.last_samples)
            .finish()
    }
}

impl OpusDecoder {
    /// A decoder producing 8 kHz mono.
    pub fn new() -> Result<Self, OpusError> {
        Ok(Self {
            inner: Decoder::new(SampleRate::Hz8000, Channels::Mono)?,
            last_samples: FRAME_SAMPLES,
        })
    }

    /// Decodes one packet into `out`, which must hold the packet's duration (160 samples per 20 ms;
    /// [`MAX_PACKET_SAMPLES`] takes any packet). Returns the number of samples written.
    pub fn decode(&mut self, packet: &[u8], out: &mut [i16]) -> Result<usize, OpusError> {
        if packet.is_empty() {
            return Err(OpusError::EmptyPacket);
        }
        let n = self.inner.decode(Some(packet), &mut out[..], false)?;
        self.last_samples = n.clamp(1, MAX_PACKET_SAMPLES);
        Ok(n)
    }

    /// Conceals one missing packet (packet-loss concealment), writing as many samples as the last
    /// packet had (at most `out.len()`). Repeated calls fade out smoothly.
    pub fn conceal(&mut self, out: &mut [i16]) -> Result<usize, OpusError> {
        let n = self.last_samples.min(out.len());
        Ok(self.inner.decode(None::<&[u8]>, &mut out[..n], false)?)
    }

    /// Recovers a missing packet from the in-band FEC data carried in the packet after it (`next`),
    /// writing the lost packet's duration (as the last packet's). Decode `next` itself afterwards.
    /// When `next` carries no FEC, libopus falls back to concealment.
    pub fn recover_from_next(&mut self, next: &[u8], out: &mut [i16]) -> Result<usize, OpusError> {
        if next.is_empty() {
            return self.conceal(out);
        }
        let n = self.last_samples.min(out.len());
        Ok(self.inner.decode(Some(next), &mut out[..n], true)?)
    }

    /// Forgets the stream (a new SSRC): the next packet decodes without history.
    pub fn reset(&mut self) -> Result<(), OpusError> {
        self.inner.reset_state()?;
        self.last_samples = FRAME_SAMPLES;
        Ok(())
    }
}

/// Encoder settings. The default is a loss-hardened stream (FEC on at 10 %), what a browser-like
/// test sender uses; toward browsers the bridge takes them from
/// [`EncoderPolicy`](crate::media::encoder_policy::EncoderPolicy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusEncoderConfig {
    /// Target bitrate, bits per second (narrowband speech is transparent at about 20 kb/s).
    pub bitrate_bps: i32,
    /// Encoder complexity 0..=10: CPU against quality.
    pub complexity: u8,
    /// Expected loss percentage: how much in-band FEC redundancy to spend (and how robust to
    /// make the prediction).
    pub packet_loss_percent: u8,
    /// In-band FEC (LBRR) on. SILK's: with [`OpusMode::Celt`] it has no effect.
    pub fec: bool,
    /// The coder.
    pub mode: OpusMode,
}

impl Default for OpusEncoderConfig {
    fn default() -> Self {
        Self {
            bitrate_bps: 24_000,
            complexity: 5,
            packet_loss_percent: 10,
            fec: true,
            mode: OpusMode::Silk,
        }
    }
}

/// Encodes 8 kHz mono PCM from the SIP side into Opus for a browser: VoIP mode, speech signal,
/// DTX off (a continuous stream keeps timestamps and the browser's jitter buffer simple).
pub struct OpusEncoder {
    inner: Encoder,
    /// The coder last asked of libopus (a new encoder chooses itself: SILK for narrowband voice).
    mode: OpusMode,
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusEncoder").finish_non_exhaustive()
    }
}

impl OpusEncoder {
    /// An encoder at 8 kHz mono with `config`.
    pub fn new(config: OpusEncoderConfig) -> Result<Self, OpusError> {
        let mut inner = Encoder::new(SampleRate::Hz8000, Channels::Mono, Application::Voip)?;
        inner.set_signal(Signal::Voice)?;
        inner.set_encoder_ctl_request(audiopus::ffi::OPUS_SET_DTX_REQUEST, 0)?;
        let mut encoder = Self {
            inner,
            mode: OpusMode::Silk,
        };
        encoder.apply(config)?;
        Ok(encoder)
    }

    /// Changes bitrate, complexity, FEC and expected loss in flight (no allocation); the next
    /// frame is encoded with them.
    pub fn apply(&mut self, config: OpusEncoderConfig) -> Result<(), OpusError> {
        self.inner
            .set_bitrate(Bitrate::BitsPerSecond(config.bitrate_bps))?;
        self.inner.set_complexity(config.complexity.min(10))?;
        self.inner.set_inband_fec(config.fec)?;
        self.inner
            .set_packet_loss_perc(config.packet_loss_percent.min(100))?;
        if config.mode != self.mode {
            let force_mode = match config.mode {
                OpusMode::Silk => audiopus::ffi::OPUS_AUTO,
                OpusMode::Celt => MODE_CELT_ONLY,
            };
            self.inner
                .set_encoder_ctl_request(OPUS_SET_FORCE_MODE_REQUEST, force_mode)?;
            self.mode = config.mode;
        }
        Ok(())
    }

    /// Encodes one 20 ms frame (exactly [`FRAME_SAMPLES`] samples) into `out`
    /// ([`MAX_OPUS_PACKET`] bytes is always enough); returns the packet length.
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, OpusError> {
        if pcm.len() != FRAME_SAMPLES {
            return Err(OpusError::BadFrameLength {
                got: pcm.len(),
                need: FRAME_SAMPLES,
            });
        }
        Ok(self.inner.encode(pcm, out)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sine at `freq` Hz, amplitude `amp` of full scale, starting at sample `start`.
    pub(crate) fn sine(freq: f64, amp: f64, start: usize, out: &mut [i16]) {
        for (i, s) in out.iter_mut().enumerate() {
            let t = (start + i) as f64 / f64::from(PCM_RATE);
            *s = (amp * 32767.0 * (2.0 * std::f64::consts::PI * freq * t).sin()) as i16;
        }
    }

    /// Frequency by counting zero crossings (good enough for a clean tone).
    pub(crate) fn zero_crossing_hz(pcm: &[i16]) -> f64 {
        let crossings = pcm.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
        crossings as f64 / 2.0 / (pcm.len() as f64 / f64::from(PCM_RATE))
    }

    pub(crate) fn rms(pcm: &[i16]) -> f64 {
        let sum: f64 = pcm.iter().map(|s| f64::from(*s).powi(2)).sum();
        (sum / pcm.len().max(1) as f64).sqrt()
    }

    pub(crate) fn max_step(pcm: &[i16]) -> i32 {
        pcm.windows(2)
            .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
            .max()
            .unwrap_or(0)
    }

    /// Encodes `frames` 20 ms frames of a tone; returns the packets.
    fn encode_tone(freq: f64, frames: usize) -> Vec<Vec<u8>> {
        let mut enc = OpusEncoder::new(OpusEncoderConfig::default()).unwrap();
        let mut pcm = [0i16; FRAME_SAMPLES];
        let mut out = [0u8; MAX_OPUS_PACKET];
        (0..frames)
            .map(|f| {
                sine(freq, 0.5, f * FRAME_SAMPLES, &mut pcm);
                let n = enc.encode(&pcm, &mut out).unwrap();
                out[..n].to_vec()
            })
            .collect()
    }

    #[test]
    fn tones_keep_their_frequency_and_level_through_encode_and_decode() {
        for freq in [440.0, 1000.0] {
            let packets = encode_tone(freq, 50);
            let mut dec = OpusDecoder::new().unwrap();
            let mut pcm = Vec::new();
            let mut frame = [0i16; MAX_PACKET_SAMPLES];
            for p in &packets {
                let n = dec.decode(p, &mut frame).unwrap();
                assert_eq!(n, FRAME_SAMPLES);
                pcm.extend_from_slice(&frame[..n]);
            }
            // Skip the codec's start-up (look-ahead and ramp).
            let steady = &pcm[1600..];
            let hz = zero_crossing_hz(steady);
            assert!(
                (hz - freq).abs() < freq * 0.03,
                "{freq} Hz came out as {hz}"
            );
            let input_rms = 0.5 * 32767.0 / 2f64.sqrt();
            let ratio_db = 20.0 * (rms(steady) / input_rms).log10();
            assert!(
                ratio_db.abs() < 2.0,
                "{freq} Hz level changed by {ratio_db:.1} dB"
            );
        }
    }

    #[test]
    fn each_mode_codes_with_its_coder_and_a_browser_hears_the_tone() {
        for (mode, coder) in [(OpusMode::Silk, "silk"), (OpusMode::Celt, "celt")] {
            let config = OpusEncoderConfig {
                bitrate_bps: 32_000,
                complexity: 0,
                packet_loss_percent: 0,
                fec: false,
                mode,
            };
            let mut enc = OpusEncoder::new(config).unwrap();
            // A browser decodes at 48 kHz.
            let mut browser = Decoder::new(SampleRate::Hz48000, Channels::Mono).unwrap();
            let mut pcm = [0i16; FRAME_SAMPLES];
            let mut out = [0u8; MAX_OPUS_PACKET];
            let mut heard = Vec::new();
            let mut frame = [0i16; 960];
            for f in 0..50 {
                sine(1000.0, 0.5, f * FRAME_SAMPLES, &mut pcm);
                let n = enc.encode(&pcm, &mut out).unwrap();
                assert_eq!(packet_coder(&out[..n]), Some(coder), "{mode} frame {f}");
                let got = browser
                    .decode(Some(&out[..n]), &mut frame[..], false)
                    .unwrap();
                heard.extend(frame[..got].iter().step_by(6));
            }
            let steady = &heard[1600..];
            let hz = zero_crossing_hz(steady);
            assert!(
                (hz - 1000.0).abs() < 30.0,
                "{mode}: 1000 Hz came out as {hz}"
            );
            let ratio_db = 20.0 * (rms(steady) / (0.5 * 32767.0 / 2f64.sqrt())).log10();
            assert!(
                ratio_db.abs() < 2.0,
                "{mode}: level changed by {ratio_db:.1} dB"
            );
        }
        // And the mode changes in flight, both ways: SILK → CELT after one transition frame
        // (libopus ends SILK with a frame carrying redundant CELT), CELT → SILK at once.
        let mut enc = OpusEncoder::new(OpusEncoderConfig::default()).unwrap();
        let mut pcm = [0i16; FRAME_SAMPLES];
        let mut out = [0u8; MAX_OPUS_PACKET];
        for (f, mode) in [OpusMode::Silk, OpusMode::Celt, OpusMode::Silk]
            .into_iter()
            .enumerate()
        {
            enc.apply(OpusEncoderConfig {
                mode,
                fec: false,
                ..OpusEncoderConfig::default()
            })
            .unwrap();
            for k in 0..5 {
                sine(440.0, 0.5, (f * 5 + k) * FRAME_SAMPLES, &mut pcm);
                let n = enc.encode(&pcm, &mut out).unwrap();
                let transition = mode == OpusMode::Celt && k == 0;
                if !transition {
                    assert_eq!(
                        packet_coder(&out[..n]).map(str::to_owned),
                        Some(mode.to_string()),
                        "switch {f}, frame {k}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_lost_packet_is_concealed_without_a_click() {
        let packets = encode_tone(440.0, 50);
        let mut dec = OpusDecoder::new().unwrap();
        let mut pcm = Vec::new();
        let mut frame = [0i16; MAX_PACKET_SAMPLES];
        for (i, p) in packets.iter().enumerate() {
            let n = if i == 25 || i == 26 {
                dec.conceal(&mut frame).unwrap()
            } else {
                dec.decode(p, &mut frame).unwrap()
            };
            assert_eq!(n, FRAME_SAMPLES);
            pcm.extend_from_slice(&frame[..n]);
        }
        let normal = max_step(&pcm[1600..20 * FRAME_SAMPLES]);
        let around_loss = max_step(&pcm[24 * FRAME_SAMPLES..29 * FRAME_SAMPLES]);
        assert!(
            around_loss <= normal * 2,
            "step {around_loss} around the loss, {normal} normally"
        );
        // Concealment keeps sound going rather than dropping to silence.
        assert!(rms(&pcm[25 * FRAME_SAMPLES..26 * FRAME_SAMPLES]) > 1000.0);
    }

    #[test]
    fn fec_recovers_a_lost_packet_from_the_next_one() {
        let packets = encode_tone(1000.0, 50);
        let mut dec = OpusDecoder::new().unwrap();
        let mut frame = [0i16; MAX_PACKET_SAMPLES];
        for p in &packets[..30] {
            dec.decode(p, &mut frame).unwrap();
        }
        // Packet 30 is lost; 31 carries its FEC copy.
        let n = dec.recover_from_next(&packets[31], &mut frame).unwrap();
        assert_eq!(n, FRAME_SAMPLES);
        let hz = zero_crossing_hz(&frame[..n]);
        assert!((hz - 1000.0).abs() < 100.0, "recovered frame at {hz} Hz");
        assert!(rms(&frame[..n]) > 3000.0, "recovered frame too quiet");
        assert_eq!(dec.decode(&packets[31], &mut frame).unwrap(), FRAME_SAMPLES);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut dec = OpusDecoder::new().unwrap();
        let mut frame = [0i16; MAX_PACKET_SAMPLES];
        assert!(matches!(
            dec.decode(&[], &mut frame),
            Err(OpusError::EmptyPacket)
        ));
        // A TOC byte announcing a 60 ms frame does not fit a 10-sample buffer.
        assert!(dec.decode(&[0x18, 0, 0], &mut frame[..10]).is_err());
        let mut enc = OpusEncoder::new(OpusEncoderConfig::default()).unwrap();
        let mut out = [0u8; MAX_OPUS_PACKET];
        assert!(matches!(
            enc.encode(&[0i16; 100], &mut out),
            Err(OpusError::BadFrameLength { got: 100, .. })
        ));
    }

    #[test]
    fn a_packet_from_a_48k_stereo_encoder_decodes_to_8k_mono() {
        // What a browser sends: fullband stereo 20 ms.
        let enc = Encoder::new(SampleRate::Hz48000, Channels::Stereo, Application::Voip).unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        let mut pcm48 = vec![0i16; 960 * 2];
        let mut out = [0u8; MAX_OPUS_PACKET];
        let mut frame = [0i16; MAX_PACKET_SAMPLES];
        let mut all = Vec::new();
        for f in 0..25 {
            for i in 0..960 {
                let t = (f * 960 + i) as f64 / 48_000.0;
                let v = (0.5 * 32767.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()) as i16;
                pcm48[2 * i] = v;
                pcm48[2 * i + 1] = v;
            }
            let n = enc.encode(&pcm48, &mut out).unwrap();
            let m = dec.decode(&out[..n], &mut frame).unwrap();
            assert_eq!(m, FRAME_SAMPLES);
            all.extend_from_slice(&frame[..m]);
        }
        let hz = zero_crossing_hz(&all[800..]);
        assert!((hz - 1000.0).abs() < 30.0, "got {hz} Hz");
    }
}
