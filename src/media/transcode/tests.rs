use super::*;
use crate::media::opus::{MAX_OPUS_PACKET, PCM_RATE};

const OPUS_FRAME_TS: u32 = 960;

fn sine(freq: f64, amp: f64, start: usize, out: &mut [i16]) {
    for (i, s) in out.iter_mut().enumerate() {
        let t = (start + i) as f64 / f64::from(PCM_RATE);
        *s = (amp * 32767.0 * (2.0 * std::f64::consts::PI * freq * t).sin()) as i16;
    }
}

fn zero_crossing_hz(pcm: &[i16]) -> f64 {
    let crossings = pcm.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    crossings as f64 / 2.0 / (pcm.len() as f64 / f64::from(PCM_RATE))
}

fn rms(pcm: &[i16]) -> f64 {
    let sum: f64 = pcm.iter().map(|s| f64::from(*s).powi(2)).sum();
    (sum / pcm.len().max(1) as f64).sqrt()
}

fn max_step(pcm: &[i16]) -> i32 {
    pcm.windows(2)
        .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
        .max()
        .unwrap_or(0)
}

/// What a browser sends: `frames` 20 ms Opus packets of a tone (encoded at 8 kHz here; the
/// decoder does not care).
fn opus_tone(freq: f64, frames: usize) -> Vec<Vec<u8>> {
    use audiopus::{coder::Encoder, Application, Bitrate, Channels, SampleRate};
    // Like a browser: 48 kHz stereo, 32 kb/s, in-band FEC.
    let mut enc = Encoder::new(SampleRate::Hz48000, Channels::Stereo, Application::Voip).unwrap();
    enc.set_bitrate(Bitrate::BitsPerSecond(32_000)).unwrap();
    enc.set_inband_fec(true).unwrap();
    enc.set_packet_loss_perc(10).unwrap();
    let mut pcm = vec![0i16; 960 * 2];
    let mut out = [0u8; MAX_OPUS_PACKET];
    (0..frames)
        .map(|f| {
            for i in 0..960 {
                let t = (f * 960 + i) as f64 / 48_000.0;
                let v = (0.5 * 32767.0 * (2.0 * std::f64::consts::PI * freq * t).sin()) as i16;
                pcm[2 * i] = v;
                pcm[2 * i + 1] = v;
            }
            let n = enc.encode(&pcm, &mut out).unwrap();
            out[..n].to_vec()
        })
        .collect()
}

/// Feeds packets (index order given by `order`, skipping `lost`) one per 20 ms tick and pulls a
/// frame per tick; returns the PCM and the frame sources.
fn browser_run(
    packets: &[Vec<u8>],
    order: &[usize],
    lost: &[usize],
    extra_ticks: usize,
) -> (Vec<i16>, Vec<FrameSource>) {
    let mut t = BrowserToSip::with_defaults().unwrap();
    let mut pcm = Vec::new();
    let mut sources = Vec::new();
    let mut frame = [0i16; FRAME_SAMPLES];
    for (tick, &i) in order.iter().enumerate() {
        if !lost.contains(&i) {
            let seq = 1000u16.wrapping_add(i as u16);
            let ts = 5000u32.wrapping_add(i as u32 * OPUS_FRAME_TS);
            t.push(0xAB, seq, ts, &packets[i], tick as u64 * 20);
        }
        sources.push(t.pull(&mut frame));
        pcm.extend_from_slice(&frame);
    }
    for _ in 0..extra_ticks {
        sources.push(t.pull(&mut frame));
        pcm.extend_from_slice(&frame);
    }
    (pcm, sources)
}

#[test]
fn browser_tone_comes_out_as_the_same_tone_at_8k() {
    let packets = opus_tone(1000.0, 100);
    let order: Vec<usize> = (0..100).collect();
    let (pcm, sources) = browser_run(&packets, &order, &[], 0);
    let steady = &pcm[20 * FRAME_SAMPLES..];
    let hz = zero_crossing_hz(steady);
    assert!((hz - 1000.0).abs() < 20.0, "got {hz} Hz");
    let level_db = 20.0 * (rms(steady) / (0.5 * 32767.0 / 2f64.sqrt())).log10();
    assert!(level_db.abs() < 2.0, "level changed by {level_db:.1} dB");
    assert!(sources[5..].iter().all(|s| *s == FrameSource::Decoded));
}

/// Pushes packets in pairs every 40 ms (the pair's order given by `swap`) and pulls every 20 ms.
fn browser_pairs(packets: &[Vec<u8>], swap: bool, lost: &[usize]) -> (Vec<i16>, Vec<FrameSource>) {
    let mut t = BrowserToSip::with_defaults().unwrap();
    let mut pcm = Vec::new();
    let mut sources = Vec::new();
    let mut frame = [0i16; FRAME_SAMPLES];
    for pair in 0..packets.len() / 2 {
        let (first, second) = if swap {
            (2 * pair + 1, 2 * pair)
        } else {
            (2 * pair, 2 * pair + 1)
        };
        for i in [first, second] {
            if lost.contains(&i) {
                continue;
            }
            t.push(
                3,
                i as u16,
                i as u32 * OPUS_FRAME_TS,
                &packets[i],
                pair as u64 * 40,
            );
        }
        for _ in 0..2 {
            sources.push(t.pull(&mut frame));
            pcm.extend_from_slice(&frame);
        }
    }
    (pcm, sources)
}

#[test]
fn reordered_packets_play_exactly_as_in_order_ones() {
    let packets = opus_tone(440.0, 60);
    let (a, _) = browser_pairs(&packets, false, &[]);
    let (b, sources) = browser_pairs(&packets, true, &[]);
    assert_eq!(a, b, "reordering changed the audio");
    assert!(
        sources.iter().all(|s| *s == FrameSource::Decoded),
        "{sources:?}"
    );
    assert!(rms(&a[10 * FRAME_SAMPLES..]) > 8000.0);
}

#[test]
fn lost_packets_are_recovered_by_fec_when_the_next_one_is_buffered() {
    let packets = opus_tone(440.0, 80);
    let (clean, _) = browser_pairs(&packets, false, &[]);
    // Each lost packet is the first of a pair, so the second is buffered when it is due.
    let (pcm, sources) = browser_pairs(&packets, false, &[30, 50]);
    let normal = max_step(&clean[10 * FRAME_SAMPLES..]);
    let worst = max_step(&pcm[10 * FRAME_SAMPLES..]);
    assert!(
        worst <= normal * 3 / 2,
        "max step {worst}, normally {normal}"
    );
    assert!(
        sources.contains(&FrameSource::Fec),
        "FEC unused: {sources:?}"
    );
    // The tone goes on at its level through the losses.
    for w in pcm[10 * FRAME_SAMPLES..].chunks(FRAME_SAMPLES) {
        assert!(rms(w) > 4000.0, "a dip to rms {} in {sources:?}", rms(w));
    }
}

#[test]
fn packets_missing_at_playout_time_are_concealed_without_clicks() {
    // Packets arrive just in time (20 ms buffer), so a lost one is noticed only as an empty
    // buffer: PLC covers it and the late report of the loss must not add a second frame.
    let packets = opus_tone(440.0, 80);
    let order: Vec<usize> = (0..80).collect();
    let (clean, _) = browser_run(&packets, &order, &[], 0);
    let (pcm, sources) = browser_run(&packets, &order, &[30, 50, 51], 0);
    let normal = max_step(&clean[10 * FRAME_SAMPLES..]);
    let worst = max_step(&pcm[10 * FRAME_SAMPLES..]);
    // A click jumps by up to the full amplitude, about 3x the tone's largest step.
    assert!(
        worst <= normal * 3 / 2,
        "max step {worst}, normally {normal}"
    );
    for lost in [30usize, 50] {
        let around = &pcm[lost * FRAME_SAMPLES..(lost + 4) * FRAME_SAMPLES];
        assert!(rms(around) > 4000.0, "gap of silence at packet {lost}");
    }
    assert!(sources.contains(&FrameSource::Concealed));
    // Concealment did not push playout back: the stream still ends on time.
    assert_eq!(pcm.len(), clean.len());
    let tail = |p: &[i16]| rms(&p[p.len() - 10 * FRAME_SAMPLES..]);
    assert!((tail(&pcm) - tail(&clean)).abs() < 500.0);
}

#[test]
fn nothing_received_gives_silence() {
    let mut t = BrowserToSip::with_defaults().unwrap();
    let mut frame = [1i16; FRAME_SAMPLES];
    for _ in 0..10 {
        assert_eq!(t.pull(&mut frame), FrameSource::Silence);
        assert!(frame.iter().all(|s| *s == 0));
    }
    let (n, source) = t.pull_encoded(&Linear16, &mut [0u8; 320]);
    assert_eq!((n, source), (320, FrameSource::Silence));
}

#[test]
fn a_stream_that_stops_fades_to_silence_without_a_click() {
    let packets = opus_tone(440.0, 40);
    let order: Vec<usize> = (0..40).collect();
    let (pcm, sources) = browser_run(&packets, &order, &[], 50);
    let normal = max_step(&pcm[10 * FRAME_SAMPLES..30 * FRAME_SAMPLES]);
    assert!(max_step(&pcm[30 * FRAME_SAMPLES..]) <= normal);
    // A second of silence at the end, after a short fade.
    assert!(pcm[pcm.len() - 40 * FRAME_SAMPLES..]
        .iter()
        .all(|s| *s == 0));
    assert_eq!(sources.last(), Some(&FrameSource::Silence));
}

#[test]
fn a_new_ssrc_mid_call_keeps_the_audio_going() {
    let packets = opus_tone(1000.0, 100);
    let mut t = BrowserToSip::with_defaults().unwrap();
    let mut frame = [0i16; FRAME_SAMPLES];
    let mut pcm = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        // At packet 50 the browser switches SSRC, sequence and timestamp base.
        let (ssrc, seq, ts) = if i < 50 {
            (1, i as u16, i as u32 * OPUS_FRAME_TS)
        } else {
            (2, 40_000 + i as u16, 7_000_000 + i as u32 * OPUS_FRAME_TS)
        };
        t.push(ssrc, seq, ts, p, i as u64 * 20);
        t.pull(&mut frame);
        pcm.extend_from_slice(&frame);
    }
    let after = &pcm[60 * FRAME_SAMPLES..];
    assert!((zero_crossing_hz(after) - 1000.0).abs() < 20.0);
    assert!(rms(after) > 8000.0);
    assert_eq!(t.jitter_stats().restarts, 1);
}

#[test]
fn garbage_payloads_are_concealed_not_fatal() {
    let packets = opus_tone(440.0, 30);
    let mut t = BrowserToSip::with_defaults().unwrap();
    let mut frame = [0i16; FRAME_SAMPLES];
    for (i, p) in packets.iter().enumerate() {
        // A TOC byte for a 120 ms (code 3, 48 frames) packet with no data is invalid.
        let bad = [0xFFu8, 0xFF];
        let payload: &[u8] = if i == 20 { &bad } else { p };
        t.push(
            9,
            i as u16,
            i as u32 * OPUS_FRAME_TS,
            payload,
            i as u64 * 20,
        );
        t.pull(&mut frame);
    }
    assert_eq!(t.decode_errors(), 1);
}

fn l16(pcm: &[i16]) -> Vec<u8> {
    let mut out = vec![0u8; pcm.len() * 2];
    Linear16.encode(pcm, &mut out);
    out
}

/// Runs `frames` ticks of SIP → browser with a tone pushed in `ptime_samples` packets; returns the
/// decoded browser audio and the stamps.
fn sip_run(
    frames: usize,
    ptime_samples: usize,
    skip: impl Fn(usize) -> bool,
    seq_ts: impl Fn(usize) -> (u32, u16, u32),
) -> (Vec<i16>, Vec<OpusFrame>) {
    let mut t = SipToBrowser::new(
        Linear16,
        JitterConfig::audio(PCM_RATE),
        OpusEncoderConfig::default(),
        RtpClock::new(77, 65_500, u32::MAX - 5000, OPUS_TICKS_PER_SAMPLE),
    )
    .unwrap();
    let mut dec = OpusDecoder::new().unwrap();
    let mut out = [0u8; MAX_OPUS_PACKET];
    let mut frame = [0i16; MAX_PACKET_SAMPLES];
    let mut pcm_in = vec![0i16; ptime_samples];
    let mut audio = Vec::new();
    let mut stamps = Vec::new();
    let mut next_in = 0usize;
    for tick in 0..frames {
        let now_ms = tick as u64 * 20;
        while (next_in * ptime_samples) as u64 * 1000 / 8000 <= now_ms {
            if !skip(next_in) {
                sine(1000.0, 0.5, next_in * ptime_samples, &mut pcm_in);
                let (ssrc, seq, ts) = seq_ts(next_in);
                t.push(ssrc, seq, ts, &l16(&pcm_in), now_ms);
            }
            next_in += 1;
        }
        let f = t.pull(&mut out).unwrap();
        let n = dec.decode(&out[..f.len], &mut frame).unwrap();
        assert_eq!(n, FRAME_SAMPLES);
        audio.extend_from_slice(&frame[..n]);
        stamps.push(f);
    }
    (audio, stamps)
}

fn plain(i: usize) -> (u32, u16, u32) {
    (5, i as u16, i as u32 * 160)
}

#[test]
fn sip_tone_reaches_the_browser_as_opus_with_48k_timestamps() {
    let (audio, stamps) = sip_run(100, 160, |_| false, plain);
    let steady = &audio[20 * FRAME_SAMPLES..];
    assert!((zero_crossing_hz(steady) - 1000.0).abs() < 20.0);
    let level_db = 20.0 * (rms(steady) / (0.5 * 32767.0 / 2f64.sqrt())).log10();
    assert!(level_db.abs() < 2.0, "level changed by {level_db:.1} dB");
    assert!(stamps[0].stamp.marker && !stamps[1].stamp.marker);
    for w in stamps.windows(2) {
        assert_eq!(w[1].stamp.seq, w[0].stamp.seq.wrapping_add(1));
        assert_eq!(w[1].stamp.timestamp, w[0].stamp.timestamp.wrapping_add(960));
    }
}

#[test]
fn output_clock_is_derived_from_samples_so_it_never_drifts() {
    // An hour of 20 ms frames is 180_000 packets; the timestamp must land exactly.
    let mut clock = RtpClock::new(1, 0, 123, OPUS_TICKS_PER_SAMPLE);
    for _ in 0..180_000 {
        clock.stamp(160);
    }
    let s = clock.stamp(160);
    assert_eq!(s.timestamp, 123u32.wrapping_add(180_000 * 960));
    assert_eq!(s.seq, (180_000u32 % 65_536) as u16);
}

#[test]
fn sip_pauses_and_ssrc_changes_do_not_break_browser_timestamps() {
    // Packets 40..90 never come (the phone is on hold); from 90 on a new SSRC with new bases.
    let (audio, stamps) = sip_run(
        150,
        160,
        |i| (40..90).contains(&i),
        |i| {
            if i < 90 {
                plain(i)
            } else {
                (6, 30_000 + i as u16, 900_000 + i as u32 * 160)
            }
        },
    );
    for w in stamps.windows(2) {
        assert_eq!(w[1].stamp.seq, w[0].stamp.seq.wrapping_add(1));
        assert_eq!(w[1].stamp.timestamp, w[0].stamp.timestamp.wrapping_add(960));
    }
    let hold = &audio[60 * FRAME_SAMPLES..85 * FRAME_SAMPLES];
    assert!(
        rms(hold) < 100.0,
        "hold should be silent, rms {}",
        rms(hold)
    );
    let after = &audio[110 * FRAME_SAMPLES..];
    assert!((zero_crossing_hz(after) - 1000.0).abs() < 20.0);
}

#[test]
fn sip_40ms_packets_still_make_20ms_opus_frames() {
    let (audio, stamps) = sip_run(100, 320, |_| false, |i| (5, i as u16, i as u32 * 320));
    assert!(stamps[10..]
        .iter()
        .all(|f| f.source == FrameSource::Decoded));
    assert!((zero_crossing_hz(&audio[20 * FRAME_SAMPLES..]) - 1000.0).abs() < 20.0);
}

#[test]
fn a_lost_sip_packet_is_concealed_without_a_gap() {
    let (audio, stamps) = sip_run(80, 160, |i| i == 40, plain);
    assert!(stamps.iter().any(|f| f.source == FrameSource::Concealed));
    // No long silence in the middle of the tone: every 20 ms window keeps some level.
    for w in audio[20 * FRAME_SAMPLES..75 * FRAME_SAMPLES].chunks(FRAME_SAMPLES) {
        assert!(rms(w) > 1000.0, "a silent gap: rms {}", rms(w));
    }
}

#[test]
fn linear16_round_trips() {
    let pcm = [0i16, 1, -1, i16::MAX, i16::MIN, 1234];
    let mut bytes = [0u8; 12];
    assert_eq!(Linear16.encode(&pcm, &mut bytes), 12);
    assert_eq!(&bytes[..4], &[0, 0, 0, 1]);
    let mut back = [0i16; 6];
    assert_eq!(Linear16.decode(&bytes, &mut back), 6);
    assert_eq!(back, pcm);
    // An odd trailing byte is ignored, not read past.
    assert_eq!(Linear16.decode(&bytes[..3], &mut back), 1);
}

/// Measurement behind docs/audio.md "Jitter-buffer adaptation", Opus side: a browser clock 2 %
/// fast makes the buffer drop a packet now and then; libopus decodes the packet after the gap
/// from its own state, and the largest sample step must stay that of the tone.
#[test]
fn opus_frames_dropped_to_cut_delay_do_not_click() {
    let packets = opus_tone(440.0, 700);
    let mut rx = BrowserToSip::with_defaults().unwrap();
    let mut out = Vec::new();
    let mut frame = [0i16; FRAME_SAMPLES];
    let mut seq = 0usize;
    for tick in 0..600u64 {
        let sends = if tick % 50 == 49 { 2 } else { 1 };
        for _ in 0..sends {
            rx.push(
                1,
                seq as u16,
                seq as u32 * OPUS_FRAME_TS,
                &packets[seq],
                tick * 20,
            );
            seq += 1;
        }
        rx.pull(&mut frame);
        out.extend_from_slice(&frame);
    }
    assert!(rx.jitter_stats().trimmed >= 5);
    let mut clean = vec![0i16; out.len()];
    sine(440.0, 0.5, 0, &mut clean);
    let steady = &out[FRAME_SAMPLES * 25..];
    assert!(max_step(steady) <= max_step(&clean) * 13 / 10);
}
