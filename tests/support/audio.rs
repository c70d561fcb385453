//! Audio by content: write tone WAVs, and check what a peer recorded (level and dominant frequency).
//!
//! Samples are `f32` in [-1, 1]; levels are dBFS of RMS (a full-scale sine is -3 dBFS).

use std::path::Path;
use std::time::Duration;

use rustfft::{num_complex::Complex, FftPlanner};

/// Writes a 16-bit mono WAV with a sine of `freq_hz` at `amplitude` (0..=1 of full scale).
/// `freq_hz == 0.0` writes silence. Rates used in tests: 8000 (PCMU, baresip) and 48000 (Opus).
pub fn write_tone_wav(
    path: &Path,
    freq_hz: f64,
    amplitude: f64,
    duration: Duration,
    sample_rate: u32,
) {
    let samples = tone(freq_hz, amplitude, duration, sample_rate);
    write_wav(path, &samples, sample_rate);
}

/// A sine as samples (see [`write_tone_wav`]).
pub fn tone(freq_hz: f64, amplitude: f64, duration: Duration, sample_rate: u32) -> Vec<f32> {
    let n = (duration.as_secs_f64() * f64::from(sample_rate)).round() as usize;
    (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(sample_rate);
            (amplitude * (2.0 * std::f64::consts::PI * freq_hz * t).sin()) as f32
        })
        .collect()
}

/// Writes samples as a 16-bit mono WAV.
pub fn write_wav(path: &Path, samples: &[f32], sample_rate: u32) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    for s in samples {
        let v = (f64::from(*s) * 32767.0).round().clamp(-32768.0, 32767.0) as i16;
        writer.write_sample(v).expect("write wav sample");
    }
    writer
        .finalize()
        .unwrap_or_else(|e| panic!("finish {}: {e}", path.display()));
}

/// Reads a 16-bit integer WAV (first channel) as samples plus its sample rate.
pub fn read_wav(path: &Path) -> (Vec<f32>, u32) {
    let reader =
        hound::WavReader::open(path).unwrap_or_else(|e| panic!("open WAV {}: {e}", path.display()));
    let spec = reader.spec();
    assert_eq!(
        spec.sample_format,
        hound::SampleFormat::Int,
        "{}: only integer PCM WAVs",
        path.display()
    );
    assert_eq!(
        spec.bits_per_sample,
        16,
        "{}: only 16-bit WAVs",
        path.display()
    );
    let channels = usize::from(spec.channels.max(1));
    let samples: Vec<f32> = reader
        .into_samples::<i16>()
        .step_by(channels)
        .map(|s| f32::from(s.unwrap_or(0)) / 32768.0)
        .collect();
    (samples, spec.sample_rate)
}

/// RMS level in dBFS (-inf-safe: silence gives -120).
pub fn rms_dbfs(samples: &[f32]) -> f64 {
    if samples.is_empty() {
        return -120.0;
    }
    let sum: f64 = samples.iter().map(|s| f64::from(*s) * f64::from(*s)).sum();
    let rms = (sum / samples.len() as f64).sqrt();
    if rms <= 1e-6 {
        -120.0
    } else {
        20.0 * rms.log10()
    }
}

/// The loud part: 20 ms windows within 20 dB of the loudest window and above -60 dBFS, concatenated.
/// Leading/trailing silence, ringback gaps and jitter-buffer warm-up are dropped this way.
pub fn loud_part(samples: &[f32], sample_rate: u32) -> Vec<f32> {
    let win = (sample_rate as usize / 50).max(1);
    let levels: Vec<f64> = samples.chunks(win).map(rms_dbfs).collect();
    let peak = levels.iter().cloned().fold(-120.0, f64::max);
    let threshold = (peak - 20.0).max(-60.0);
    samples
        .chunks(win)
        .zip(&levels)
        .filter(|(_, level)| **level >= threshold)
        .flat_map(|(chunk, _)| chunk.iter().copied())
        .collect()
}

/// Frequency (Hz) of the strongest FFT bin, refined by parabolic interpolation; 0 for empty input.
pub fn dominant_frequency(samples: &[f32], sample_rate: u32) -> f64 {
    let n = samples.len().min(1 << 16);
    if n < 16 {
        return 0.0;
    }
    let mut buf: Vec<Complex<f32>> = samples[..n]
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let hann = 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / (n - 1) as f32).cos();
            Complex::new(s * hann, 0.0)
        })
        .collect();
    FftPlanner::<f32>::new()
        .plan_fft_forward(n)
        .process(&mut buf);
    let mags: Vec<f64> = buf[..n / 2].iter().map(|c| f64::from(c.norm())).collect();
    let (k, _) =
        mags.iter().enumerate().skip(1).fold(
            (1, 0.0),
            |best, (i, m)| if *m > best.1 { (i, *m) } else { best },
        );
    let offset = if k + 1 < mags.len() {
        let (a, b, c) = (mags[k - 1], mags[k], mags[k + 1]);
        let denom = a - 2.0 * b + c;
        if denom.abs() > 1e-12 {
            0.5 * (a - c) / denom
        } else {
            0.0
        }
    } else {
        0.0
    };
    (k as f64 + offset) * f64::from(sample_rate) / n as f64
}

/// What a recording contains.
#[derive(Debug, Clone, PartialEq)]
pub struct ToneAnalysis {
    /// Seconds of audio analysed (whole input).
    pub total_secs: f64,
    /// Seconds of the loud part.
    pub loud_secs: f64,
    /// RMS of the loud part, dBFS.
    pub rms_dbfs: f64,
    /// Dominant frequency of the loud part, Hz.
    pub frequency_hz: f64,
}

pub fn analyse(samples: &[f32], sample_rate: u32) -> ToneAnalysis {
    let loud = loud_part(samples, sample_rate);
    ToneAnalysis {
        total_secs: samples.len() as f64 / f64::from(sample_rate),
        loud_secs: loud.len() as f64 / f64::from(sample_rate),
        rms_dbfs: rms_dbfs(&loud),
        frequency_hz: dominant_frequency(&loud, sample_rate),
    }
}

/// Asserts the loud part is a tone of `expected_hz` (± `tolerance_hz`) at `min_dbfs` or louder and lasts
/// at least 0.2 s; returns the analysis for further checks.
pub fn assert_tone(
    samples: &[f32],
    sample_rate: u32,
    expected_hz: f64,
    tolerance_hz: f64,
    min_dbfs: f64,
) -> ToneAnalysis {
    let a = analyse(samples, sample_rate);
    let ok_len = a.loud_secs >= 0.2;
    let ok_level = a.rms_dbfs >= min_dbfs;
    let ok_freq = (a.frequency_hz - expected_hz).abs() <= tolerance_hz;
    assert!(
        ok_len && ok_level && ok_freq,
        "expected a {expected_hz} Hz (±{tolerance_hz}) tone at >= {min_dbfs} dBFS for >= 0.2 s, got \
         {:.1} Hz at {:.1} dBFS over {:.2} s of loud audio ({:.2} s recorded at {sample_rate} Hz){}",
        a.frequency_hz,
        a.rms_dbfs,
        a.loud_secs,
        a.total_secs,
        if a.total_secs == 0.0 { " -- nothing was recorded" } else { "" }
    );
    a
}

/// [`assert_tone`] on a WAV file.
pub fn assert_wav_tone(
    path: &Path,
    expected_hz: f64,
    tolerance_hz: f64,
    min_dbfs: f64,
) -> ToneAnalysis {
    let (samples, rate) = read_wav(path);
    assert_tone(&samples, rate, expected_hz, tolerance_hz, min_dbfs)
}
