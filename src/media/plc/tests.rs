use super::*;
use rand::{Rng, SeedableRng};

const FRAME: usize = 160;

fn sine(freq: f64, amp: f64, start: usize, out: &mut [i16]) {
    for (i, s) in out.iter_mut().enumerate() {
        let t = (start + i) as f64 / 8000.0;
        *s = (amp * 32767.0 * (2.0 * std::f64::consts::PI * freq * t).sin()) as i16;
    }
}

fn max_step(pcm: &[i16]) -> i32 {
    pcm.windows(2)
        .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
        .max()
        .unwrap_or(0)
}

fn rms(pcm: &[i16]) -> f64 {
    (pcm.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / pcm.len().max(1) as f64).sqrt()
}

/// A tone through seeded random loss of whole 20 ms frames; returns the output, which frames
/// were lost, and the clean tone.
fn through_loss(freq: f64, loss: f64, frames: usize, seed: u64) -> (Vec<i16>, Vec<bool>, Vec<i16>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut plc = G711Concealer::new();
    let mut out = Vec::new();
    let mut clean = Vec::new();
    let mut lost = Vec::new();
    let mut frame = [0i16; FRAME];
    for k in 0..frames {
        sine(freq, 0.5, k * FRAME, &mut frame);
        clean.extend_from_slice(&frame);
        // The first second is always received: the concealer needs history.
        let is_lost = k >= 50 && rng.gen::<f64>() < loss;
        plc.process(&mut frame, if is_lost { 0 } else { FRAME });
        out.extend_from_slice(&frame);
        lost.push(is_lost);
    }
    (out, lost, clean)
}

#[test]
fn received_audio_passes_through_unchanged() {
    let mut plc = G711Concealer::new();
    let mut frame = [0i16; FRAME];
    for k in 0..20 {
        sine(440.0, 0.5, k * FRAME, &mut frame);
        let copy = frame;
        plc.process(&mut frame, FRAME);
        assert_eq!(frame, copy);
    }
    assert!(!plc.concealing());
}

#[test]
fn a_sine_through_loss_has_no_clicks_and_keeps_its_energy() {
    for freq in [150.0, 440.0, 1000.0] {
        for loss in [0.01, 0.05, 0.10] {
            let (out, lost, clean) = through_loss(freq, loss, 1000, 7);
            let clean_step = max_step(&clean);
            let step = max_step(&out);
            assert!(
                step as f64 <= clean_step as f64 * 1.3,
                "{freq} Hz, {loss} loss: max step {step} against {clean_step} in the tone"
            );
            // Energy in the concealed frames: a single loss is at full level (the attenuation
            // only starts after 10 ms and reaches silence after 60 ms).
            let mut concealed = Vec::new();
            for (k, l) in lost.iter().enumerate() {
                let single = *l && !lost[k - 1] && !lost.get(k + 1).copied().unwrap_or(false);
                if single {
                    concealed.extend_from_slice(&out[k * FRAME..(k + 1) * FRAME]);
                }
            }
            assert!(!concealed.is_empty(), "{loss}: no single losses");
            let ratio = rms(&concealed) / rms(&clean);
            assert!(
                ratio > 0.7 && ratio < 1.1,
                "{freq} Hz, {loss} loss: concealed frames at {ratio:.2} of the level"
            );
            let total = rms(&out) / rms(&clean);
            assert!(
                total > 0.95,
                "{freq} Hz, {loss} loss: overall level {total:.2}"
            );
        }
    }
}

#[test]
fn silence_fill_would_click_where_concealment_does_not() {
    // The reference point for the test above: the same loss filled with silence.
    let (_, lost, clean) = through_loss(440.0, 0.05, 400, 7);
    let mut silenced = clean.clone();
    for (k, l) in lost.iter().enumerate() {
        if *l {
            silenced[k * FRAME..(k + 1) * FRAME].fill(0);
        }
    }
    assert!(max_step(&silenced) as f64 > max_step(&clean) as f64 * 1.5);
}

#[test]
fn a_long_loss_fades_to_silence_and_audio_returns_smoothly() {
    let mut plc = G711Concealer::new();
    let mut frame = [0i16; FRAME];
    let mut out = Vec::new();
    let mut clean = Vec::new();
    for k in 0..30 {
        sine(200.0, 0.5, k * FRAME, &mut frame);
        clean.extend_from_slice(&frame);
        plc.process(&mut frame, if (10..15).contains(&k) { 0 } else { FRAME });
        out.extend_from_slice(&frame);
    }
    // The first 10 ms of the loss at full level, silent from 60 ms on.
    let first = rms(&out[10 * FRAME..10 * FRAME + 80]);
    assert!(first > 0.8 * rms(&clean), "first 10 ms at {first}");
    assert!(rms(&out[10 * FRAME + 480..15 * FRAME]) < 1.0);
    // Back to the received audio after the blend.
    assert_eq!(&out[16 * FRAME..], &clean[16 * FRAME..]);
    assert!(max_step(&out) <= max_step(&clean) * 13 / 10);
}

#[test]
fn a_frame_partly_received_is_concealed_from_where_it_stops() {
    let mut plc = G711Concealer::new();
    let mut frame = [0i16; FRAME];
    let mut out = Vec::new();
    for k in 0..20 {
        sine(300.0, 0.5, k * FRAME, &mut frame);
        let received = if k == 10 { 100 } else { FRAME };
        let copy = frame;
        plc.process(&mut frame, received);
        if k == 10 {
            assert_eq!(frame[..100], copy[..100]);
        }
        out.extend_from_slice(&frame);
    }
    let mut clean = vec![0i16; out.len()];
    sine(300.0, 0.5, 0, &mut clean);
    assert!(max_step(&out) <= max_step(&clean) * 13 / 10);
}

#[test]
fn loss_before_any_audio_is_silence() {
    let mut plc = G711Concealer::new();
    let mut frame = [123i16; FRAME];
    plc.process(&mut frame, 0);
    assert!(frame.iter().all(|s| *s == 0));
}

#[test]
fn history_kept_in_bulk_matches_sample_by_sample() {
    // Frames of odd lengths wrap the ring at every offset; a loss after them conceals the same
    // way whether the history came in whole frames or a sample at a time.
    let mut bulk = G711Concealer::new();
    let mut single = G711Concealer::new();
    let mut tone = vec![0i16; 4000];
    sine(230.0, 0.5, 0, &mut tone);
    let mut start = 0;
    for len in [1usize, 7, 160, 511, 512, 513, 1000].iter().cycle().take(9) {
        let end = (start + len).min(tone.len());
        let mut chunk = tone[start..end].to_vec();
        let n = chunk.len();
        bulk.process(&mut chunk, n);
        for s in &tone[start..end] {
            single.process(&mut [*s], 1);
        }
        start = end;
    }
    let (mut a, mut b) = ([0i16; FRAME], [0i16; FRAME]);
    bulk.process(&mut a, 0);
    single.process(&mut b, 0);
    assert_eq!(a, b);
    assert!(rms(&a) > 1000.0);
}
