//! G.711 μ-law (PCMU) and A-law (PCMA): the codecs every SIP phone and PBX speaks.
//!
//! Bit-exact with the ITU-T G.711 / G.191 reference (`g711.c`): encoding truncates 16-bit linear
//! samples to 14 (μ-law) or 13 (A-law) bits and picks the quantisation interval, decoding returns
//! the interval's reconstruction value scaled back to 16 bits. Decoding uses 256-entry tables built
//! at compile time; encoding is a few integer operations. Slices in, slices out: nothing allocates,
//! so it is safe on the per-packet path.

use crate::config::Codec;

const ULAW_BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 8159; // 14-bit magnitude limit

const fn ulaw_decode_one(code: u8) -> i16 {
    let u = !code;
    let t = ((((u & 0x0F) as i32) << 3) + ULAW_BIAS) << ((u & 0x70) >> 4);
    (if u & 0x80 != 0 {
        ULAW_BIAS - t
    } else {
        t - ULAW_BIAS
    }) as i16
}

const fn alaw_decode_one(code: u8) -> i16 {
    let a = code ^ 0x55;
    let mut t = ((a & 0x0F) as i32) << 4;
    let seg = ((a & 0x70) >> 4) as i32;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => t = (t + 0x108) << (seg - 1),
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

const fn build_table(alaw: bool) -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = if alaw {
            alaw_decode_one(i as u8)
        } else {
            ulaw_decode_one(i as u8)
        };
        i += 1;
    }
    table
}

static ULAW_TABLE: [i16; 256] = build_table(false);
static ALAW_TABLE: [i16; 256] = build_table(true);

/// Segment number (0..=7) of a value whose top set bit is at or above bit `base`; 8 when too large.
#[inline]
fn segment(value: i32, base: u32) -> u32 {
    // value >> base is 0 for segment 0, 1 for segment 1, 2..3 for segment 2, ...
    32 - ((value >> base) as u32).leading_zeros()
}

/// One linear sample to μ-law.
#[inline]
pub fn ulaw_encode_sample(sample: i16) -> u8 {
    let mut v = i32::from(sample) >> 2;
    let mask: u8 = if v < 0 {
        v = -v;
        0x7F
    } else {
        0xFF
    };
    v = v.min(ULAW_CLIP) + (ULAW_BIAS >> 2);
    // Segment ends are 0x3F, 0x7F, ... 0x1FFF: segment = bit length of (v >> 6).
    let seg = segment(v, 6);
    let code = if seg >= 8 {
        0x7F
    } else {
        ((seg << 4) as u8) | (((v >> (seg + 1)) & 0x0F) as u8)
    };
    code ^ mask
}

/// One μ-law code to a linear sample.
#[inline]
pub fn ulaw_decode_sample(code: u8) -> i16 {
    ULAW_TABLE[usize::from(code)]
}

/// One linear sample to A-law.
#[inline]
pub fn alaw_encode_sample(sample: i16) -> u8 {
    let mut v = i32::from(sample) >> 3;
    let mask: u8 = if v >= 0 {
        0xD5
    } else {
        v = -v - 1;
        0x55
    };
    // Segment ends are 0x1F, 0x3F, 0x7F, ... 0xFFF: segment = bit length of (v >> 5).
    let seg = segment(v, 5);
    let code = if seg >= 8 {
        0x7F
    } else if seg < 2 {
        ((seg << 4) as u8) | (((v >> 1) & 0x0F) as u8)
    } else {
        ((seg << 4) as u8) | (((v >> seg) & 0x0F) as u8)
    };
    code ^ mask
}

/// One A-law code to a linear sample.
#[inline]
pub fn alaw_decode_sample(code: u8) -> i16 {
    ALAW_TABLE[usize::from(code)]
}

/// Encodes `pcm` into `out` as μ-law; returns the number of codes written (the shorter length).
pub fn ulaw_encode(pcm: &[i16], out: &mut [u8]) -> usize {
    let n = pcm.len().min(out.len());
    for (o, s) in out[..n].iter_mut().zip(&pcm[..n]) {
        *o = ulaw_encode_sample(*s);
    }
    n
}

/// Decodes μ-law `codes` into `out`; returns the number of samples written (the shorter length).
pub fn ulaw_decode(codes: &[u8], out: &mut [i16]) -> usize {
    let n = codes.len().min(out.len());
    for (o, c) in out[..n].iter_mut().zip(&codes[..n]) {
        *o = ULAW_TABLE[usize::from(*c)];
    }
    n
}

/// Encodes `pcm` into `out` as A-law; returns the number of codes written (the shorter length).
pub fn alaw_encode(pcm: &[i16], out: &mut [u8]) -> usize {
    let n = pcm.len().min(out.len());
    for (o, s) in out[..n].iter_mut().zip(&pcm[..n]) {
        *o = alaw_encode_sample(*s);
    }
    n
}

/// Decodes A-law `codes` into `out`; returns the number of samples written (the shorter length).
pub fn alaw_decode(codes: &[u8], out: &mut [i16]) -> usize {
    let n = codes.len().min(out.len());
    for (o, c) in out[..n].iter_mut().zip(&codes[..n]) {
        *o = ALAW_TABLE[usize::from(*c)];
    }
    n
}

/// Encodes with the negotiated codec (the SIP leg's [`Codec`]); returns codes written.
pub fn encode(codec: Codec, pcm: &[i16], out: &mut [u8]) -> usize {
    match codec {
        Codec::Pcmu => ulaw_encode(pcm, out),
        Codec::Pcma => alaw_encode(pcm, out),
    }
}

/// Decodes with the negotiated codec; returns samples written.
pub fn decode(codec: Codec, codes: &[u8], out: &mut [i16]) -> usize {
    match codec {
        Codec::Pcmu => ulaw_decode(codes, out),
        Codec::Pcma => alaw_decode(codes, out),
    }
}

/// The code to send for silence in `codec`.
pub fn silence(codec: Codec) -> u8 {
    match codec {
        Codec::Pcmu => ULAW_SILENCE,
        Codec::Pcma => ALAW_SILENCE,
    }
}

/// The G.711 code of digital silence, used to fill gaps without encoding zeros.
pub const ULAW_SILENCE: u8 = 0xFF;
/// A-law's code closest to zero (+8).
pub const ALAW_SILENCE: u8 = 0xD5;

#[cfg(test)]
mod tests {
    use super::*;

    /// μ-law reconstruction values straight from the G.711 tables (14-bit domain, ×4 to 16 bits):
    /// segment 0 decodes to 0, 2, .., 30; segment s ≥ 1 starts at decision level 31, 95, 223, ..
    /// with step 2^(s+1), and returns the middle of each interval. Bits are sent inverted.
    fn ulaw_reference(code: u8) -> i16 {
        let u = !code;
        let positive = u & 0x80 == 0;
        let seg = u32::from((u >> 4) & 7);
        let q = i32::from(u & 0x0F);
        let magnitude14 = if seg == 0 {
            2 * q
        } else {
            let start = [0, 31, 95, 223, 479, 991, 2015, 4063][seg as usize];
            let step = 2 << seg;
            start + step * q + step / 2
        };
        let v = magnitude14 * 4;
        (if positive { v } else { -v }) as i16
    }

    /// A-law reconstruction values from the G.711 tables (13-bit domain, ×8 to 16 bits): segments
    /// 0 and 1 have step 2, segment s ≥ 2 step 2^s, decision levels start at 0, 32, 64, 128, ..;
    /// even bits are sent inverted (XOR 0x55) and the sign bit is 1 for positive values.
    fn alaw_reference(code: u8) -> i16 {
        let a = code ^ 0x55;
        let positive = a & 0x80 != 0;
        let seg = usize::from((a >> 4) & 7);
        let q = i32::from(a & 0x0F);
        let start = [0, 32, 64, 128, 256, 512, 1024, 2048][seg];
        let step = if seg < 2 { 2 } else { 1 << seg };
        let v = (start + step * q + step / 2) * 8;
        (if positive { v } else { -v }) as i16
    }

    #[test]
    fn ulaw_known_reference_values() {
        assert_eq!(ulaw_decode_sample(0xFF), 0);
        assert_eq!(ulaw_decode_sample(0x7F), 0);
        assert_eq!(ulaw_decode_sample(0x80), 32124);
        assert_eq!(ulaw_decode_sample(0x00), -32124);
        assert_eq!(ulaw_decode_sample(0xFE), 8);
        assert_eq!(ulaw_decode_sample(0x7E), -8);
        assert_eq!(ulaw_encode_sample(0), 0xFF);
        assert_eq!(ulaw_encode_sample(32124), 0x80);
        assert_eq!(ulaw_encode_sample(i16::MAX), 0x80);
        assert_eq!(ulaw_encode_sample(-32124), 0x00);
        assert_eq!(ulaw_encode_sample(i16::MIN), 0x00);
    }

    #[test]
    fn alaw_known_reference_values() {
        assert_eq!(alaw_decode_sample(0xD5), 8);
        assert_eq!(alaw_decode_sample(0x55), -8);
        assert_eq!(alaw_decode_sample(0xAA), 32256);
        assert_eq!(alaw_decode_sample(0x2A), -32256);
        assert_eq!(alaw_encode_sample(0), 0xD5);
        assert_eq!(alaw_encode_sample(8), 0xD5);
        assert_eq!(alaw_encode_sample(-8), 0x55);
        assert_eq!(alaw_encode_sample(i16::MAX), 0xAA);
        assert_eq!(alaw_encode_sample(i16::MIN), 0x2A);
    }

    #[test]
    fn full_decode_tables_match_the_itu_tables() {
        for code in 0..=255u8 {
            assert_eq!(
                ulaw_decode_sample(code),
                ulaw_reference(code),
                "μ-law {code:#04x}"
            );
            assert_eq!(
                alaw_decode_sample(code),
                alaw_reference(code),
                "A-law {code:#04x}"
            );
        }
    }

    #[test]
    fn encode_of_decode_gives_back_every_code() {
        for code in 0..=255u8 {
            assert_eq!(
                alaw_encode_sample(alaw_decode_sample(code)),
                code,
                "A-law {code:#04x}"
            );
            // μ-law has two zeros (0xFF and 0x7F); zero encodes to the positive one.
            let expected = if code == 0x7F { 0xFF } else { code };
            assert_eq!(
                ulaw_encode_sample(ulaw_decode_sample(code)),
                expected,
                "μ-law {code:#04x}"
            );
        }
    }

    #[test]
    fn every_sample_lands_in_a_nearby_monotonic_level() {
        let mut prev_u = i16::MIN;
        let mut prev_a = i16::MIN;
        for s in i16::MIN..=i16::MAX {
            let u = ulaw_decode_sample(ulaw_encode_sample(s));
            let a = alaw_decode_sample(alaw_encode_sample(s));
            assert!(u >= prev_u && a >= prev_a, "not monotonic at {s}");
            prev_u = u;
            prev_a = a;
            // Error is within one quantisation step of that magnitude (clipping aside).
            // (The larger magnitude picks the step: a sample near a segment edge may round up.)
            let mag = i32::from(s).abs();
            if mag < 32000 {
                let mag_u = mag.max(i32::from(u).abs());
                let step_u = 8 << segment((mag_u >> 2) + 33, 6).min(7);
                assert!(
                    (i32::from(u) - i32::from(s)).abs() <= step_u,
                    "μ-law {s} -> {u}"
                );
                let mag_a = mag.max(i32::from(a).abs());
                let step_a = 8 << segment(mag_a >> 3, 5).clamp(1, 7);
                assert!(
                    (i32::from(a) - i32::from(s)).abs() <= step_a,
                    "A-law {s} -> {a}"
                );
            }
        }
    }

    #[test]
    fn slice_functions_stop_at_the_shorter_buffer() {
        let pcm = [0i16, 1000, -1000, 32000];
        let mut codes = [0u8; 3];
        assert_eq!(ulaw_encode(&pcm, &mut codes), 3);
        let mut back = [0i16; 8];
        assert_eq!(ulaw_decode(&codes, &mut back), 3);
        assert_eq!(&back[3..], &[0; 5]);
        assert_eq!(alaw_encode(&pcm, &mut codes), 3);
        assert_eq!(alaw_decode(&codes, &mut back[..2]), 2);
        assert_eq!(ulaw_encode(&[], &mut codes), 0);
    }

    /// Power of `freq` in `x` (Goertzel), normalised so a full-scale sine gives 0.5.
    fn goertzel_power(x: &[f64], freq: f64, rate: f64) -> f64 {
        let w = 2.0 * std::f64::consts::PI * freq / rate;
        let coeff = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0, 0.0);
        for &v in x {
            let s = v + coeff * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        let p = s1 * s1 + s2 * s2 - coeff * s1 * s2;
        2.0 * p / (x.len() as f64 * x.len() as f64)
    }

    fn tone_round_trip(encode: fn(i16) -> u8, decode: fn(u8) -> i16) {
        let rate = 8000.0;
        // 1 kHz and 440 Hz at -10 dBFS, one second.
        for freq in [1000.0, 440.0] {
            let amp = 32767.0 * 10f64.powf(-10.0 / 20.0);
            let input: Vec<i16> = (0..8000)
                .map(|i| (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / rate).sin()) as i16)
                .collect();
            let output: Vec<f64> = input
                .iter()
                .map(|s| f64::from(decode(encode(*s))))
                .collect();
            let input_f: Vec<f64> = input.iter().map(|s| f64::from(*s)).collect();
            let p_in = goertzel_power(&input_f, freq, rate);
            let p_out = goertzel_power(&output, freq, rate);
            let level_db = 10.0 * (p_out / p_in).log10();
            assert!(
                level_db.abs() < 0.2,
                "{freq} Hz level changed by {level_db} dB"
            );
            // Everything that is not the tone is quantisation noise: G.711 gives ~38 dB SNR.
            let total: f64 = output.iter().map(|v| v * v).sum::<f64>() / output.len() as f64;
            let noise = total - p_out;
            let snr = 10.0 * (p_out / noise).log10();
            assert!(snr > 30.0, "{freq} Hz SNR only {snr} dB");
            // And the tone is where it was: another frequency carries nothing.
            let off = goertzel_power(&output, freq * 1.37, rate);
            assert!(off < p_out * 1e-3, "energy leaked to another frequency");
        }
    }

    #[test]
    fn ulaw_tone_keeps_frequency_and_level() {
        tone_round_trip(ulaw_encode_sample, ulaw_decode_sample);
    }

    #[test]
    fn alaw_tone_keeps_frequency_and_level() {
        tone_round_trip(alaw_encode_sample, alaw_decode_sample);
    }

    #[test]
    fn codec_dispatch_matches_the_specific_functions() {
        let pcm = [0i16, 100, -100, 20000, -20000];
        let (mut a, mut b) = ([0u8; 5], [0u8; 5]);
        encode(Codec::Pcma, &pcm, &mut a);
        alaw_encode(&pcm, &mut b);
        assert_eq!(a, b);
        encode(Codec::Pcmu, &pcm, &mut a);
        ulaw_encode(&pcm, &mut b);
        assert_eq!(a, b);
        let mut out = [0i16; 5];
        assert_eq!(decode(Codec::Pcmu, &a, &mut out), 5);
        assert_eq!(out[3], ulaw_decode_sample(a[3]));
        decode(Codec::Pcma, &[silence(Codec::Pcma)], &mut out);
        assert_eq!(out[0], 8);
        decode(Codec::Pcmu, &[silence(Codec::Pcmu)], &mut out);
        assert_eq!(out[0], 0);
    }
}
