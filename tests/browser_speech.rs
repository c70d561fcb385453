//! Speech quality through the whole bridge, scored with ITU-T P.862 (PESQ, narrowband), the line
//! issue #12 holds: a baresip phone calls the web-demo page in headless Chromium (raw microphone:
//! espeak-ng speech), the page lets it ring a second and answers, and both speak over WebRTC/Opus
//! ⇄ bridge ⇄ SIP/PCMU. Each side's recording holds the other side's looped speech about twice:
//! the last full copy (the steady state) is scored and held, the first (the call's first seconds,
//! while jitter buffers settle) is printed beside it. Three calls on a clean path,
//! then three with 3 % random loss on the browser leg (nftables in the test's network namespace,
//! on the bridge's WebRTC ports only, from the moment the call's audio path is up: set-up under
//! loss is not what is measured); each goal holds for the median of the three:
//!
//! * browser → SIP ≥ 3.85 and SIP → browser ≥ 3.9 clean; both ≥ 3.5 under loss;
//! * the first 300 ms the phone sends after the answer (a 1 kHz tone) reach the page whole;
//! * speech levels within ±1 dB of the source, both ways;
//! * G.711 relayed (the page made to offer only PCMU, so the bridge relays bytes): both ≥ 3.8,
//!   three more clean calls (the issue's "keep" row: 3.92–4.01 before the bridge was rebuilt).
//!
//! A busy host spoils live PESQ (see `browser/host_load.rs`): when the runs behind a median
//! below its goal were overloaded, the test prints the score, the load and "SKIPPED FOR LOAD"
//! instead of failing. Set-up failures, silence, the wrong signal (speech not found, tone of the
//! wrong pitch) and a loss rule that dropped nothing fail whatever the load.
//! Needs espeak-ng, sox, nftables and python3 with `pesq numpy scipy` (scripts/deps.sh).

#[allow(dead_code)]
#[path = "browser/driver.rs"]
mod driver;
#[path = "browser/host_load.rs"]
mod host_load;
#[path = "browser/packet_loss.rs"]
mod packet_loss;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use driver::Page;
use host_load::{Load, Probe};
use packet_loss::{LossCount, PacketLoss};
use serde_json::{json, Value};
use support::audio::{dominant_frequency, read_wav, rms_dbfs};
use support::{ports, Baresip, BaresipOptions};

const APPID: &str = "speech-test";
const T: Duration = Duration::from_secs(20);
/// Calls per condition; each goal holds for their median.
const RUNS: usize = 3;
/// What each call records: more than two copies of the other side's looped speech (~9 s each).
const RECORD_MS: u64 = 20_000;
/// How long the page lets a call ring (its audio path already up) before it accepts, as a person
/// would: a bridge that sent the ringing page audio had it queued in Chrome's jitter buffer and
/// played late and time-compressed after the answer (the first tone came 1.9 s late after 2 s).
const RING_MS: u64 = 1_000;
/// MOS-LQO goals (issue #12). The G.711 round trip itself scores 3.96–4.00.
const CLEAN_TO_SIP: f64 = 3.85;
const CLEAN_TO_WEB: f64 = 3.9;
const LOSSY_BOTH: f64 = 3.5;
/// G.711 relayed, both ways. The last copy of Chrome's looped fake microphone scores 3.88 even
/// relayed byte for byte (its first copy 3.93–4.00): the capture differs between copies.
const RELAY_BOTH: f64 = 3.8;
/// Random loss on the browser leg, % of its UDP packets each way.
const LOSS_PERCENT: u8 = 3;
/// Speech levels within this of the source, dB.
const LEVEL_TOLERANCE_DB: f64 = 1.0;
/// Below this waveform correlation with the reference, what came through is not the speech (hard
/// failure). Good calls reach 0.4–0.9: the browser's jitter buffer stretches time under loss.
const MIN_CORRELATION: f64 = 0.2;
/// Further than this from the source's level, the speech did not come through (hard failure).
const MAX_LEVEL_OFF_DB: f64 = 10.0;
/// The phone's first sound after the answer: this tone, for this long, then speech.
const FIRST_TONE_HZ: f64 = 1000.0;
const FIRST_TONE: Duration = Duration::from_millis(300);

const TEXT: &str = "The birch canoe slid on the smooth planks. \
                    Glue the sheet to the dark blue background. \
                    It is easy to tell the depth of a well.";

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

/// Speech WAVs: the 8 kHz reference, the browser's microphone (48 kHz, 1 s of silence after it,
/// it loops) and the phone's source (8 kHz: the 300 ms tone, 200 ms of silence, then the speech
/// five times, ~47 s: baresip restarts it each call and hangs up at its end).
struct Speech {
    reference: PathBuf,
    mic: PathBuf,
    phone: PathBuf,
}

fn make_speech(dir: &Path) -> Speech {
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
        "sox (reference)",
    );
    let mic = dir.join("speech-mic-48k.wav");
    run(
        Command::new("sox")
            .arg(&reference)
            .args(["-r", "48000", "-b", "16", "-c", "1"])
            .arg(&mic)
            .args(["pad", "0", "1"]),
        "sox (microphone)",
    );
    let speech_loop = dir.join("speech-loop-8k.wav");
    run(
        Command::new("sox")
            .arg(&reference)
            .arg(&speech_loop)
            .args(["pad", "0", "1", "repeat", "4"]),
        "sox (phone speech)",
    );
    let tone = dir.join("first-tone-8k.wav");
    run(
        Command::new("sox")
            .args(["-n", "-r", "8000", "-b", "16", "-c", "1"])
            .arg(&tone)
            .args(["synth", &format!("{}", FIRST_TONE.as_secs_f64())])
            .args(["sine", &format!("{FIRST_TONE_HZ}"), "vol", "0.3"])
            .args(["pad", "0", "0.2"]),
        "sox (first tone)",
    );
    let phone = dir.join("speech-phone-8k.wav");
    run(
        Command::new("sox").arg(&tone).arg(&speech_loop).arg(&phone),
        "sox (phone)",
    );
    Speech {
        reference,
        mic,
        phone,
    }
}

/// PESQ MOS-LQO (narrowband) of `recording` against `reference`.
fn pesq(reference: &Path, recording: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/pesq_score.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(reference)
        .arg(recording)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named"),
        "python3 lacks pesq/numpy/scipy: run scripts/deps.sh\n{stderr}"
    );
    assert!(
        out.status.success(),
        "PESQ scoring failed:\n{stdout}\n{stderr}"
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// One direction of one call, scored on the last full copy of the speech it carried (the steady
/// state: a fixed copy, so the figure does not jump between copies from run to run).
#[derive(Debug, Clone, Copy)]
struct Score {
    mos: f64,
    /// The first full copy's MOS-LQO: the call's first seconds, while jitter buffers settle.
    first_mos: f64,
    /// Active speech level against the source, dB.
    level_db: f64,
}

/// Scores `recording` against `reference`; fails at once when it is not the speech at all.
fn score(reference: &Path, recording: &Path, way: &str) -> Score {
    let result = pesq(reference, recording);
    let correlation = result["correlation"].as_f64().unwrap_or(0.0);
    let score = Score {
        mos: result["mos"].as_f64().unwrap_or(0.0),
        first_mos: result["first_mos"].as_f64().unwrap_or(0.0),
        level_db: result["level_db"].as_f64().unwrap_or(f64::NAN),
    };
    assert!(
        correlation >= MIN_CORRELATION && score.level_db.abs() <= MAX_LEVEL_OFF_DB,
        "{way}: what came through is not the speech that was sent (no audio, or noise): {result}"
    );
    score
}

/// One call: both directions, the phone's first tone as the page heard it, the host's load.
#[derive(Debug, Clone)]
struct Run {
    to_sip: Score,
    to_web: Score,
    first_tone: Duration,
    load: Load,
    /// The codec the page received (`getStats`), e.g. `audio/opus`.
    codec: String,
}

/// Whether a 20 ms frame at `rate` is the phone's first tone (energy and pitch).
fn is_first_tone(frame: &[f32], rate: u32) -> bool {
    rms_dbfs(frame) > -30.0 && (dominant_frequency(frame, rate) - FIRST_TONE_HZ).abs() < 50.0
}

/// How much of the phone's first tone the page played after the click on Accept (at sample
/// `accept_sample`, known to one 4096-sample block). Fails when the tone never came.
fn first_tone_heard(recording: &Path, accept_sample: usize) -> Duration {
    let (samples, rate) = read_wav(recording);
    let frame = rate as usize / 50;
    let from = accept_sample.saturating_sub(4096).min(samples.len());
    let frames: Vec<&[f32]> = samples[from..].chunks_exact(frame).collect();
    // The tone starts within 2 s of the answer (later, a speech frame could pass for it).
    let onset = frames.iter().take(100).position(|f| is_first_tone(f, rate));
    let Some(onset) = onset else {
        panic!(
            "the phone's first sound ({FIRST_TONE_HZ} Hz) did not reach the page within 2 s of the \
             answer: {:.1} dBFS at {:.0} Hz in the first second",
            rms_dbfs(&samples[from..(from + rate as usize).min(samples.len())]),
            dominant_frequency(
                &samples[from..(from + rate as usize).min(samples.len())],
                rate
            )
        );
    };
    // Every tone frame from the onset over the tone's length (and a frame at either edge): a
    // clipped start shortens it, a late one does not.
    let window = FIRST_TONE.as_millis() as usize / 20 + 2;
    let heard = frames[onset..]
        .iter()
        .take(window)
        .filter(|f| is_first_tone(f, rate))
        .count();
    Duration::from_millis(20 * heard as u64)
}

/// The bridge, the phone (1003, plays the tone and speech) and the page (carol, speaks).
struct Rig {
    _bridge: support::rig::BridgeRig,
    phone: Baresip,
    page: Page,
    speech: Speech,
    webrtc_ports: std::ops::RangeInclusive<u16>,
    dir: tempfile::TempDir,
}

async fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let speech = make_speech(dir.path());
    let webrtc = ports::free_port_range(20);
    // SRBRIDGE_SPEECH_MEDIA: extra `[media]` lines (e.g. `opus_narrowband = true`), to measure a
    // setting live against the defaults.
    let extra = std::env::var("SRBRIDGE_SPEECH_MEDIA").unwrap_or_default();
    if !extra.is_empty() {
        println!("PESQ bridge [media] settings: {extra}");
    }
    let bridge = support::rig::start_bridge(
        APPID,
        "",
        &format!(
            "webrtc_port_min = {webrtc}\nwebrtc_port_max = {}\n{extra}\n",
            webrtc + 19
        ),
        40,
    )
    .await;
    let phone = Baresip::start(
        bridge.pbx.addr(),
        "1003",
        BaresipOptions {
            auto_answer: false,
            play_wav: Some(speech.phone.clone()),
            record_dir: None,
        },
    )
    .await;
    phone.wait_registered(T).await;
    let mut page = Page::launch(&speech.mic).await;
    page.goto(&format!("{}/?audio=raw", bridge.base)).await;
    let logged_in = page.login("carol", APPID).await;
    assert_eq!(logged_in["phase"], "idle", "{logged_in:#}");
    Rig {
        _bridge: bridge,
        phone,
        page,
        speech,
        webrtc_ports: webrtc..=webrtc + 19,
        dir,
    }
}

/// The phone calls the page, which answers once its audio path is up (the early set-up) and
/// records; the page hangs up after [`RECORD_MS`]; both recordings are scored.
async fn call(rig: &mut Rig, label: &str, loss: Option<&mut LossCount>) -> Run {
    rig.phone.dial("0carol").await;
    let ringing = rig
        .page
        .cmd(json!({"cmd": "incoming", "timeoutMs": 20000}))
        .await;
    assert_eq!(ringing["incomingNumber"], "1003", "{ringing:#}");
    rig.page
        .cmd(json!({"cmd": "waitMedia", "mediaState": "connected", "timeoutMs": 20000}))
        .await;
    let lossy = loss
        .is_some()
        .then(|| PacketLoss::start(rig.webrtc_ports.clone(), LOSS_PERCENT));
    let file: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let heard = rig.dir.path().join(format!("{file}-page.wav"));
    let probe = Probe::start();
    let (accept_sample, jitter_buffer) =
        rig.page.accept_and_record(&heard, RECORD_MS, RING_MS).await;
    let load = probe.stop();
    // The bridge's RTCP reached the page and made sense there: its report blocks about the
    // page's audio (SRTCP protected by the bridge's own SRTP path) give Chrome a round trip
    // (from our LSR/DLSR). (Their loss is not checked: see packet_loss.rs on why the page's
    // direction barely loses anything here.)
    let reports = &jitter_buffer["bridgeReports"];
    let rtt_ms = reports["roundTripTimeMs"].as_u64();
    assert!(
        reports["roundTripTimeMeasurements"].as_u64().unwrap_or(0) > 0
            && rtt_ms.is_some_and(|ms| ms < 100),
        "{label}: the page got no usable report from the bridge: {jitter_buffer}"
    );
    rig.phone.wait_for("CALL_ESTABLISHED", T).await;
    rig.page
        .cmd(json!({"cmd": "click", "selector": "#hangup-btn"}))
        .await;
    rig.phone.wait_for("CALL_CLOSED", T).await;
    rig.page.wait_phase("idle").await;
    if let (Some(total), Some(rule)) = (loss, lossy) {
        let count = rule.count();
        total.seen += count.seen;
        total.dropped += count.dropped;
    }

    let phone_heard = rig
        .phone
        .received_wav()
        .expect("the phone recorded the call");
    // SRBRIDGE_KEEP_AUDIO=DIR keeps both recordings (to listen to, or score again).
    if let Some(keep) = std::env::var_os("SRBRIDGE_KEEP_AUDIO") {
        let keep = PathBuf::from(keep);
        let _ = std::fs::create_dir_all(&keep);
        let _ = std::fs::copy(&heard, keep.join(format!("{file}-page.wav")));
        let _ = std::fs::copy(&phone_heard, keep.join(format!("{file}-phone.wav")));
        let _ = std::fs::copy(&rig.speech.reference, keep.join("reference.wav"));
    }
    let run = Run {
        to_sip: score(&rig.speech.reference, &phone_heard, "browser -> SIP"),
        to_web: score(&rig.speech.reference, &heard, "SIP -> browser"),
        first_tone: first_tone_heard(&heard, accept_sample as usize),
        load,
        codec: jitter_buffer["codec"].as_str().unwrap_or("?").to_string(),
    };
    println!(
        "PESQ {label}: browser -> SIP {:.2} (first copy {:.2}, level {:+.1} dB), SIP -> browser \
         {:.2} (first copy {:.2}, level {:+.1} dB), first tone {} of {} ms; host: {}",
        run.to_sip.mos,
        run.to_sip.first_mos,
        run.to_sip.level_db,
        run.to_web.mos,
        run.to_web.first_mos,
        run.to_web.level_db,
        run.first_tone.as_millis(),
        FIRST_TONE.as_millis(),
        run.load
    );
    println!(
        "PESQ {label}: the browser's jitter buffer: {jitter_buffer}; this process (the bridge, \
         debug build) {:.1} ms CPU per call-second",
        run.load.own_cpu_ms_per_s
    );
    run
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Goals the runs missed; each names its figure, the goal and the load of its runs.
#[derive(Default)]
struct Verdict {
    /// Missed while the host was quiet: failures.
    failed: Vec<String>,
    /// Missed while most of the runs behind the median were overloaded: reported, not failed.
    skipped_for_load: Vec<String>,
}

impl Verdict {
    /// Checks that the median of `values` (one per run) passes `ok`; `goal` says it in words.
    fn check(
        &mut self,
        what: &str,
        runs: &[Run],
        values: Vec<f64>,
        goal: &str,
        ok: impl Fn(f64) -> bool,
    ) {
        let m = median(values.clone());
        let overloaded = runs.iter().filter(|r| r.load.overloaded()).count();
        let figures: Vec<String> = values.iter().map(|v| format!("{v:.2}")).collect();
        let line = format!(
            "{what}: median {m:.2} of [{}], goal {goal}",
            figures.join(", ")
        );
        if ok(m) {
            println!("PESQ {line}: ok");
        } else if 2 * overloaded > runs.len() {
            println!(
                "PESQ {line}: MISSED, SKIPPED FOR LOAD ({overloaded} of {} runs overloaded)",
                runs.len()
            );
            self.skipped_for_load.push(line);
        } else {
            println!("PESQ {line}: MISSED on a quiet host");
            self.failed.push(line);
        }
    }

    /// The MOS-LQO goals of one condition, both ways.
    fn check_runs(&mut self, condition: &str, runs: &[Run], to_sip: f64, to_web: f64) {
        let mos = |f: fn(&Run) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
        self.check(
            &format!("{condition} browser -> SIP MOS-LQO"),
            runs,
            mos(|r| r.to_sip.mos),
            &format!(">= {to_sip}"),
            |m| m >= to_sip,
        );
        self.check(
            &format!("{condition} SIP -> browser MOS-LQO"),
            runs,
            mos(|r| r.to_web.mos),
            &format!(">= {to_web}"),
            |m| m >= to_web,
        );
    }
}

#[tokio::test]
async fn speech_holds_the_pesq_line_clean_and_under_loss_from_the_first_syllable() {
    let mut rig = rig().await;
    let mut verdict = Verdict::default();

    let mut clean = Vec::new();
    for n in 1..=RUNS {
        clean.push(call(&mut rig, &format!("clean {n}/{RUNS}"), None).await);
    }
    verdict.check_runs("clean", &clean, CLEAN_TO_SIP, CLEAN_TO_WEB);
    let levels = |f: fn(&Run) -> f64| clean.iter().map(f).collect::<Vec<f64>>();
    for (way, values) in [
        ("browser -> SIP", levels(|r| r.to_sip.level_db)),
        ("SIP -> browser", levels(|r| r.to_web.level_db)),
    ] {
        verdict.check(
            &format!("clean {way} level against the source (dB)"),
            &clean,
            values,
            &format!("within ±{LEVEL_TOLERANCE_DB}"),
            |m| m.abs() <= LEVEL_TOLERANCE_DB,
        );
    }
    // The issue's check: the first 300 ms after the answer are heard (energy and pitch, counted
    // over the tone's length and a frame at either edge). While the bridge sent the ringing page
    // silence, Chrome queued it and time-compressed the start: 200-280 ms heard. Since it sends
    // nothing before the answer, 300-340 ms in every run; the bar leaves one frame of slack.
    verdict.check(
        "clean: the phone's first 300 ms heard by the page (ms)",
        &clean,
        levels(|r| r.first_tone.as_millis() as f64),
        ">= 280",
        |m| m >= 280.0,
    );

    let mut count = LossCount::default();
    let mut lossy = Vec::new();
    for n in 1..=RUNS {
        let label = format!("{LOSS_PERCENT} % loss {n}/{RUNS}");
        lossy.push(call(&mut rig, &label, Some(&mut count)).await);
    }
    let dropped_pct = 100.0 * count.dropped as f64 / count.seen.max(1) as f64;
    println!(
        "PESQ loss on the browser leg: {} of {} packets dropped ({dropped_pct:.1} %)",
        count.dropped, count.seen
    );
    assert!(
        (1.0..=6.0).contains(&dropped_pct) && count.seen > 1000,
        "the loss rule did not make {LOSS_PERCENT} % loss: {count:?}"
    );
    let to_sip: Vec<f64> = lossy.iter().map(|r| r.to_sip.mos).collect();
    verdict.check(
        &format!("{LOSS_PERCENT} % loss browser -> SIP MOS-LQO"),
        &lossy,
        to_sip,
        &format!(">= {LOSSY_BOTH}"),
        |m| m >= LOSSY_BOTH,
    );
    // Held since the score is taken on a fixed copy (the last): the medians of five runs on this
    // machine were 3.61-3.81; scoring whichever copy correlated best gave 2.68-3.86.
    let to_web: Vec<f64> = lossy.iter().map(|r| r.to_web.mos).collect();
    verdict.check(
        &format!("{LOSS_PERCENT} % loss SIP -> browser MOS-LQO"),
        &lossy,
        to_web,
        &format!(">= {LOSSY_BOTH}"),
        |m| m >= LOSSY_BOTH,
    );

    // G.711 relayed: the page offers only PCMU from now on.
    rig.page
        .cmd(json!({"cmd": "preferCodec", "mime": "audio/PCMU"}))
        .await;
    let mut relayed = Vec::new();
    for n in 1..=RUNS {
        let run = call(&mut rig, &format!("PCMU relay {n}/{RUNS}"), None).await;
        assert_eq!(run.codec, "audio/PCMU", "the page was to receive PCMU");
        relayed.push(run);
    }
    verdict.check_runs("PCMU relay", &relayed, RELAY_BOTH, RELAY_BOTH);

    assert_eq!(rig.page.page_errors().await, json!([]));
    if !verdict.skipped_for_load.is_empty() {
        println!(
            "PESQ SKIPPED FOR LOAD (the host was too busy to judge; not a failure): {:#?}",
            verdict.skipped_for_load
        );
    }
    assert!(
        verdict.failed.is_empty(),
        "goals missed on a quiet host: {:#?}",
        verdict.failed
    );
}
