//! Offline speech quality (ITU-T P.862 PESQ, narrowband) and CPU of the bridge's SIP → browser
//! audio path, for the encoder settings in `[media] opus_*` and for G.711 loss concealment.
//!
//! espeak-ng speech at 8 kHz goes, as PCMU RTP, through the bridge's real `Downlink` (jitter
//! buffer, G.711 PLC, the encoder policy and libopus), then through a reference Opus decoder at
//! 48 kHz as a browser runs it (in-band FEC from the next packet when one is lost and the next
//! arrived, libopus PLC otherwise), with 0 % and 3 % random loss (seeded, the same pattern for
//! every setting) on the Opus packets; `tests/browser/pesq_score.py` resamples to 8 kHz and scores
//! against the speech sent. The speech plays twice; the second copy is scored, so the policy has
//! seen receiver reports (one every 5 s, as Chromium sends them for audio) by then.
//! CPU: the encoder's thread CPU time (not wall time: the machine may be busy), in-process, per
//! second of call, min and median of runs. It is measured on a twin encoder fed the very frames
//! the downlink encoded, with the settings the policy chose at each frame, because the
//! downlink's own tick also runs (in a debug build, unoptimised) Rust around libopus.
//!
//! Run: `cargo run --example audio_quality [-- --quick]` (needs espeak-ng, sox, python3 with
//! pesq numpy scipy: scripts/deps.sh). libopus is the system library, so its CPU figures are the
//! same in debug and release builds; the Rust around it is not optimised in a debug build.
//! Writes WAVs and `results.json` under `target/audio-quality/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use audiopus::coder::Decoder;
use audiopus::{Channels, SampleRate};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use srbridge::config::{Codec, OpusFec, OpusMode, OpusSettings};
use srbridge::media::g711;
use srbridge::media::opus::{OpusEncoder, MAX_OPUS_PACKET};
use srbridge::media::pipeline::{
    BrowserCodec, BrowserParams, Downlink, PipelineCounters, SipParams, FRAME,
};
use srbridge::media::plc::G711Concealer;
use srbridge::media::rtp::{RtpHeader, RtpPacket};

const TEXT: &str = "The birch canoe slid on the smooth planks. \
                    Glue the sheet to the dark blue background. \
                    It is easy to tell the depth of a well.";
/// Frames between two receiver reports: 5 s, Chromium's audio RTCP interval.
const REPORT_FRAMES: usize = 250;
const LOSS_SEED: u64 = 12;
const OPUS_PT: u8 = 111;
/// Samples per 20 ms at 48 kHz.
const FRAME_48K: usize = 960;

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run ({e}); install it with scripts/deps.sh"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The 8 kHz reference speech (as tests/browser_speech.rs makes it), as samples.
fn make_speech(dir: &Path) -> (PathBuf, Vec<i16>) {
    let raw = dir.join("espeak.wav");
    run(
        Command::new("espeak-ng")
            .args(["-v", "en-us", "-s", "150", "-w"])
            .arg(&raw)
            .arg(TEXT),
        "espeak-ng",
    );
    let reference = dir.join("speech-8k.wav");
    run(
        Command::new("sox")
            .arg(&raw)
            .args(["-r", "8000", "-b", "16", "-c", "1"])
            .arg(&reference)
            .args(["gain", "-n", "-3"]),
        "sox",
    );
    let samples = hound::WavReader::open(&reference)
        .expect("reference WAV")
        .into_samples::<i16>()
        .map(|s| s.expect("sample"))
        .collect();
    (reference, samples)
}

fn write_wav(path: &Path, rate: u32, samples: &[i16]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).expect("create WAV");
    for s in samples {
        w.write_sample(*s).expect("write WAV");
    }
    w.finalize().expect("finish WAV");
}

fn pesq(reference: &Path, recording: &Path) -> f64 {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/pesq_score.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(reference)
        .arg(recording)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "PESQ failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).expect("PESQ JSON");
    v["mos"].as_f64().expect("mos")
}

/// Twice the speech with 1 s of silence after each copy, in whole 20 ms frames; and the sample
/// where the second copy starts.
fn program(speech: &[i16]) -> (Vec<i16>, usize) {
    let mut one = speech.to_vec();
    one.extend(std::iter::repeat_n(0, 8000));
    let mut all = one.clone();
    all.extend_from_slice(&one);
    all.resize(all.len().div_ceil(FRAME) * FRAME, 0);
    (all, one.len())
}

/// Which packets a seeded random `loss` drops, out of `n`.
fn loss_pattern(n: usize, loss: f64, seed: u64) -> Vec<bool> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen::<f64>() < loss).collect()
}

/// PCMU RTP packets of `pcm`, one per 20 ms frame.
fn pcmu_packets(pcm: &[i16]) -> Vec<Vec<u8>> {
    pcm.chunks(FRAME)
        .enumerate()
        .map(|(k, frame)| {
            let mut codes = [0u8; FRAME];
            g711::ulaw_encode(frame, &mut codes);
            let mut packet = vec![0u8; 12 + FRAME];
            let header = RtpHeader {
                marker: k == 0,
                payload_type: 0,
                sequence: k as u16,
                timestamp: (k * FRAME) as u32,
                ssrc: 0x5150,
            };
            let n = header.write(&codes, &mut packet).expect("RTP header");
            packet.truncate(n);
            packet
        })
        .collect()
}

/// What one pass through the downlink produced.
struct Pass {
    opus: Vec<Vec<u8>>,
    /// Thread CPU time the encoder took.
    encode_time: Duration,
    fec_frames: usize,
}

/// The PBX's packets (`sip_lost` ones dropped) through the bridge's downlink to Opus; receiver
/// reports every 5 s from the browser's side, counting `opus_lost`.
fn downlink_pass(
    settings: OpusSettings,
    sip: &[Vec<u8>],
    sip_lost: &[bool],
    opus_lost: &[bool],
) -> Pass {
    let browser = BrowserParams {
        codec: BrowserCodec::Opus,
        payload_type: OPUS_PT,
        dtmf_pts: [None, None],
    };
    let mut down = Downlink::new(browser, Arc::new(PipelineCounters::default())).expect("downlink");
    down.set_sip(SipParams {
        codec: Codec::Pcmu,
        payload_type: 0,
        dtmf_pt: None,
        send: true,
    });
    down.set_opus(settings).expect("settings");
    let mut pass = Pass {
        opus: Vec::with_capacity(sip.len() + 4),
        encode_time: Duration::ZERO,
        fec_frames: 0,
    };
    let mut twin = OpusEncoder::new(down.encoder_settings()).expect("twin encoder");
    let mut twin_settings = down.encoder_settings();
    let mut twin_out = [0u8; MAX_OPUS_PACKET];
    let mut lost_in_report = 0;
    // Two more ticks than packets: the jitter buffer holds 20 ms.
    for k in 0..sip.len() + 2 {
        if let (Some(p), false) = (sip.get(k), sip_lost.get(k).copied().unwrap_or(false)) {
            down.push(&RtpPacket::parse(p).expect("RTP"), k as u64 * 20);
        }
        let frame = down.tick().expect("tick");
        pass.opus.push(frame.payload.to_vec());
        let pcm = *frame.pcm;
        if down.encoder_settings() != twin_settings {
            twin_settings = down.encoder_settings();
            twin.apply(twin_settings).expect("twin settings");
        }
        let started = thread_cpu_time();
        let n = twin.encode(&pcm, &mut twin_out).expect("twin encode");
        pass.encode_time += thread_cpu_time().saturating_sub(started);
        std::hint::black_box(n);
        if down.encoder_settings().fec {
            pass.fec_frames += 1;
        }
        lost_in_report += usize::from(opus_lost.get(k).copied().unwrap_or(false));
        if (k + 1) % REPORT_FRAMES == 0 {
            let fraction = lost_in_report as f32 / REPORT_FRAMES as f32;
            // RTCP carries the fraction in 1/256ths.
            let fraction = (fraction * 256.0).floor() / 256.0;
            down.on_loss_report(fraction, k as u64 * 20).expect("apply");
            lost_in_report = 0;
        }
    }
    pass
}

/// A browser's decoder: 48 kHz, FEC from the next packet for a lost one when it arrived, PLC
/// otherwise.
fn browser_decode(packets: &[Vec<u8>], lost: &[bool]) -> Vec<i16> {
    let mut dec = Decoder::new(SampleRate::Hz48000, Channels::Mono).expect("decoder");
    let mut out = Vec::with_capacity(packets.len() * FRAME_48K);
    let mut frame = [0i16; FRAME_48K];
    for (k, p) in packets.iter().enumerate() {
        let n = if !lost.get(k).copied().unwrap_or(false) {
            dec.decode(Some(&p[..]), &mut frame[..], false)
        } else {
            match packets.get(k + 1) {
                Some(next) if !lost.get(k + 1).copied().unwrap_or(false) => {
                    dec.decode(Some(&next[..]), &mut frame[..], true)
                }
                _ => dec.decode(None::<&[u8]>, &mut frame[..], false),
            }
        }
        .expect("decode");
        out.extend_from_slice(&frame[..n]);
    }
    out
}

/// CPU time of this thread so far.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Setting {
    name: &'static str,
    fec: OpusFec,
    bitrate: u32,
    bitrate_lossy: u32,
    mode: OpusMode,
}

const SETTINGS: &[Setting] = &[
    Setting {
        name: "FEC off @24",
        fec: OpusFec::Off,
        bitrate: 24_000,
        bitrate_lossy: 24_000,
        mode: OpusMode::Silk,
    },
    Setting {
        name: "FEC off @32",
        fec: OpusFec::Off,
        bitrate: 32_000,
        bitrate_lossy: 32_000,
        mode: OpusMode::Silk,
    },
    Setting {
        name: "FEC on @24",
        fec: OpusFec::On,
        bitrate: 24_000,
        bitrate_lossy: 24_000,
        mode: OpusMode::Silk,
    },
    Setting {
        name: "FEC on @32",
        fec: OpusFec::On,
        bitrate: 32_000,
        bitrate_lossy: 32_000,
        mode: OpusMode::Silk,
    },
    Setting {
        name: "auto 24/32",
        fec: OpusFec::Auto,
        bitrate: 24_000,
        bitrate_lossy: 32_000,
        mode: OpusMode::Silk,
    },
    Setting {
        name: "auto 32/32",
        fec: OpusFec::Auto,
        bitrate: 32_000,
        bitrate_lossy: 32_000,
        mode: OpusMode::Silk,
    },
    Setting {
        name: "auto 32/40",
        fec: OpusFec::Auto,
        bitrate: 32_000,
        bitrate_lossy: 40_000,
        mode: OpusMode::Silk,
    },
    Setting {
        name: "CELT, auto 32/40",
        fec: OpusFec::Auto,
        bitrate: 32_000,
        bitrate_lossy: 40_000,
        mode: OpusMode::Celt,
    },
    Setting {
        name: "CELT, auto 24/40",
        fec: OpusFec::Auto,
        bitrate: 24_000,
        bitrate_lossy: 40_000,
        mode: OpusMode::Celt,
    },
    Setting {
        name: "CELT, FEC off @32",
        fec: OpusFec::Off,
        bitrate: 32_000,
        bitrate_lossy: 32_000,
        mode: OpusMode::Celt,
    },
];

/// The scored part of a 48 kHz output: from where the second copy went in, to the end.
fn second_copy_48k(out: &[i16], second_at: usize) -> &[i16] {
    &out[(second_at * 6).min(out.len())..]
}

/// G.711 loss concealment alone, at 8 kHz: the PBX's packets with `lost` ones replaced by
/// silence (what the bridge did) or by the concealer's output.
fn g711_concealment(pcm: &[i16], lost: &[bool], conceal: bool) -> Vec<i16> {
    let mut plc = G711Concealer::new();
    let mut out = Vec::with_capacity(pcm.len());
    let mut frame = [0i16; FRAME];
    for (k, chunk) in pcm.chunks(FRAME).enumerate() {
        let mut codes = [0u8; FRAME];
        g711::ulaw_encode(chunk, &mut codes);
        g711::ulaw_decode(&codes, &mut frame);
        let good = if lost[k] { 0 } else { FRAME };
        if !conceal {
            frame[good..].fill(0);
        } else {
            plc.process(&mut frame, good);
        }
        out.extend_from_slice(&frame);
    }
    out
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runs = if quick { 1 } else { 5 };
    let complexities: &[u8] = if quick { &[5] } else { &[0, 3, 5, 8, 10] };
    // `--only TEXT`: the settings whose name holds TEXT (e.g. `--only CELT`).
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/audio-quality");
    std::fs::create_dir_all(&dir).expect("output dir");
    let (reference, speech) = make_speech(&dir);
    let (pcm, second_at) = program(&speech);
    let sip = pcmu_packets(&pcm);
    let frames = sip.len() + 2;
    let call_seconds = frames as f64 / 50.0;
    let no_loss = vec![false; frames];
    let mut results = Vec::new();

    println!("| setting | complexity | PESQ 0 % | PESQ 3 % | encoder CPU ms per call-second, min / median, 0 % | 3 % | FEC frames at 3 % |");
    println!("|---|---|---|---|---|---|---|");
    for setting in SETTINGS
        .iter()
        .filter(|s| only.as_ref().is_none_or(|o| s.name.contains(o.as_str())))
    {
        for &complexity in complexities {
            let settings = OpusSettings {
                complexity,
                complexity_busy: complexity,
                bitrate: setting.bitrate,
                bitrate_lossy: setting.bitrate_lossy,
                fec: setting.fec,
                mode: setting.mode,
                mode_busy: setting.mode,
            };
            let mut row = json!({"setting": setting.name, "complexity": complexity});
            let mut cells = Vec::new();
            for loss in [0.0, 0.03] {
                let lost = loss_pattern(frames, loss, LOSS_SEED);
                let mut cpu = Vec::new();
                let mut scored = None;
                for _ in 0..runs {
                    let pass = downlink_pass(settings, &sip, &no_loss, &lost);
                    cpu.push(pass.encode_time.as_secs_f64() * 1000.0 / call_seconds);
                    scored.get_or_insert(pass);
                }
                let pass = scored.expect("one run");
                let out = browser_decode(&pass.opus, &lost);
                let wav = dir.join(format!(
                    "down-{}-c{complexity}-loss{}.wav",
                    setting.name.replace([' ', '@', '/'], "_"),
                    (loss * 100.0) as u32
                ));
                write_wav(&wav, 48_000, second_copy_48k(&out, second_at));
                let mos = pesq(&reference, &wav);
                let min = cpu.iter().copied().fold(f64::INFINITY, f64::min);
                let med = median(&mut cpu);
                let key = format!("loss{}", (loss * 100.0) as u32);
                row[key] = json!({"mos": mos, "cpu_ms_min": min, "cpu_ms_median": med,
                    "fec_frames": pass.fec_frames, "frames": frames});
                cells.push((mos, min, med, pass.fec_frames));
            }
            println!(
                "| {} | {complexity} | {:.2} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {} of {frames} |",
                setting.name, cells[0].0, cells[1].0, cells[0].1, cells[0].2, cells[1].1, cells[1].2, cells[1].3
            );
            results.push(row);
        }
    }

    // G.711 concealment of lost PBX packets, alone at 8 kHz and through the whole downlink.
    let mut plc_rows = Vec::new();
    println!();
    println!("| PCMU from the PBX | PESQ 0 % | PESQ 3 % |");
    println!("|---|---|---|");
    for (name, conceal) in [("silence fill", false), ("G.711 PLC", true)] {
        let mut cells = Vec::new();
        for loss in [0.0, 0.03] {
            let lost = loss_pattern(frames, loss, LOSS_SEED + 1);
            let out = g711_concealment(&pcm, &lost, conceal);
            let wav = dir.join(format!(
                "g711-{}-loss{}.wav",
                name.replace(' ', "_"),
                (loss * 100.0) as u32
            ));
            write_wav(&wav, 8000, &out[second_at..]);
            cells.push(pesq(&reference, &wav));
        }
        println!("| {name}, 8 kHz | {:.2} | {:.2} |", cells[0], cells[1]);
        plc_rows.push(json!({"case": name, "loss0": cells[0], "loss3": cells[1]}));
    }
    let lost = loss_pattern(frames, 0.03, LOSS_SEED + 1);
    let settings = OpusSettings {
        fec: OpusFec::Off,
        ..OpusSettings::default()
    };
    let pass = downlink_pass(settings, &sip, &lost, &no_loss);
    let out = browser_decode(&pass.opus, &no_loss);
    let wav = dir.join("down-pcmu-loss3-plc.wav");
    write_wav(&wav, 48_000, second_copy_48k(&out, second_at));
    let mos = pesq(&reference, &wav);
    println!("| downlink (jitter buffer + PLC) → Opus, clean browser leg | | {mos:.2} |");
    plc_rows.push(json!({"case": "downlink with PLC, Opus clean", "loss3": mos}));

    let report =
        json!({"call_seconds": call_seconds, "runs": runs, "opus": results, "g711": plc_rows});
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&report).expect("JSON"),
    )
    .expect("write results");
    println!("\nresults: {}", dir.join("results.json").display());
}
