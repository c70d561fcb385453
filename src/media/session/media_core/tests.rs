//! The media core fed datagrams, browser packets and time, without sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::config::Codec;
use crate::media::g711;
use crate::media::pipeline::{
    BrowserCodec, BrowserParams, Downlink, PipelineCounters, Uplink, FRAME,
};
use crate::media::rtp::{RtpHeader, RtpPacket};

const MS: Duration = Duration::from_millis(1);

/// What the core asked for, recorded.
#[derive(Default)]
struct Recorder {
    ready: bool,
    to_sip: Vec<(Vec<u8>, SocketAddr)>,
    to_browser: Vec<(u8, RtpStamp, Vec<u8>)>,
    events: Vec<MediaEvent>,
}

impl MediaIo for Recorder {
    fn send_sip(&mut self, packet: &[u8], to: SocketAddr) -> Option<usize> {
        self.to_sip.push((packet.to_vec(), to));
        Some(packet.len())
    }
    fn browser_ready(&self) -> bool {
        self.ready
    }
    fn send_browser(&mut self, payload_type: u8, stamp: RtpStamp, payload: &[u8]) {
        self.to_browser
            .push((payload_type, stamp, payload.to_vec()));
    }
    fn event(&mut self, event: MediaEvent) {
        self.events.push(event);
    }
}

fn phone() -> SocketAddr {
    "127.0.0.1:4000".parse().unwrap()
}

fn pcmu() -> SipParams {
    SipParams {
        codec: Codec::Pcmu,
        payload_type: 0,
        dtmf_pt: Some(101),
        send: true,
    }
}

/// A core for a call whose browser talks PCMU (so what it hears is plain to read), its SIP side
/// negotiated with the phone, the pipeline attached at `t0`.
fn core(t0: Instant, answered: bool, rtp_timeout: u64) -> MediaCore {
    core_counting_into(t0, answered, rtp_timeout, Arc::new(Metrics::new()))
}

/// [`core`], counting into `metrics`.
fn core_counting_into(
    t0: Instant,
    answered: bool,
    rtp_timeout: u64,
    metrics: Arc<Metrics>,
) -> MediaCore {
    let browser = BrowserParams {
        codec: BrowserCodec::G711(Codec::Pcmu),
        payload_type: 0,
        dtmf_pts: [None, Some(126)],
    };
    attached_core(
        t0,
        answered,
        rtp_timeout,
        metrics,
        browser,
        BusySignal::new(),
        None,
    )
}

/// A core whose SIP side is negotiated (PCMU) and whose browser leg talks `browser`, the
/// pipeline attached at `t0`, following `busy` (and ticking at a phase of `phases`, if any).
fn attached_core(
    t0: Instant,
    answered: bool,
    rtp_timeout: u64,
    metrics: Arc<Metrics>,
    browser: BrowserParams,
    busy: BusySignal,
    phases: Option<&Arc<TickPhases>>,
) -> MediaCore {
    let counters = Arc::new(PipelineCounters::default());
    let mut core = MediaCore::new(
        "call-1",
        SipRtpCore::default(),
        Arc::clone(&counters),
        Timeouts {
            rtp: Duration::from_secs(rtp_timeout),
            hold: Duration::ZERO,
        },
        answered,
        t0,
        metrics,
    )
    .with_busy_signal(busy);
    if let Some(phases) = phases {
        core = core.with_tick_phases(Arc::clone(phases));
    }
    core.set_sip(phone(), pcmu(), false);
    let up = Uplink::new(browser, Arc::clone(&counters)).unwrap();
    let down = Downlink::new(browser, counters).unwrap();
    core.attach(up, down, None, t0);
    core
}

/// One 20 ms μ-law packet of a 1 kHz tone (or of `fill` codes).
fn tone_packet(seq: u16, ssrc: u32) -> Vec<u8> {
    let mut pcm = [0i16; FRAME];
    for (i, s) in pcm.iter_mut().enumerate() {
        let t = (usize::from(seq) * FRAME + i) as f64 / 8000.0;
        *s = (16000.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()) as i16;
    }
    let mut codes = [0u8; FRAME];
    g711::ulaw_encode(&pcm, &mut codes);
    packet(0, seq, ssrc, &codes)
}

fn packet(pt: u8, seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let header = RtpHeader {
        marker: false,
        payload_type: pt,
        sequence: seq,
        timestamp: u32::from(seq) * FRAME as u32,
        ssrc,
    };
    let mut out = vec![0u8; 12 + payload.len()];
    let n = header.write(payload, &mut out).unwrap();
    out.truncate(n);
    out
}

fn rms_ulaw(codes: &[u8]) -> f64 {
    let mut pcm = vec![0i16; codes.len()];
    g711::ulaw_decode(codes, &mut pcm);
    (pcm.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / pcm.len().max(1) as f64).sqrt()
}

/// Runs the core from `from` for `frames` ticks with the phone sending its tone each tick.
fn talk(core: &mut MediaCore, io: &mut Recorder, from: Instant, seq: u16, frames: u16) -> Instant {
    let mut now = from;
    for s in seq..seq + frames {
        core.on_sip_datagram(&tone_packet(s, 7), false, phone(), now, io);
        core.on_timeout(now, io);
        now += 20 * MS;
    }
    now
}

#[test]
fn one_frame_each_way_every_20_ms_and_missed_frames_caught_up_after_a_stall() {
    let t0 = Instant::now();
    let mut core = core(t0, true, 0);
    let mut io = Recorder {
        ready: true,
        ..Recorder::default()
    };
    assert_eq!(core.next_deadline(), t0);
    core.on_timeout(t0, &mut io);
    assert_eq!((io.to_sip.len(), io.to_browser.len()), (1, 1));
    assert_eq!(io.to_sip[0].1, phone());
    assert_eq!(core.next_deadline(), t0 + 20 * MS);
    // Woken early: nothing is due.
    core.on_timeout(t0 + 19 * MS, &mut io);
    assert_eq!(io.to_sip.len(), 1);
    // A 100 ms stall: the five missed frames go out at once, the clock keeps its phase.
    core.on_timeout(t0 + 105 * MS, &mut io);
    assert_eq!((io.to_sip.len(), io.to_browser.len()), (6, 6));
    assert_eq!(core.next_deadline(), t0 + 120 * MS);
    let seqs: Vec<u16> = io
        .to_sip
        .iter()
        .map(|(p, _)| RtpPacket::parse(p).unwrap().sequence)
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
        "{seqs:?}"
    );
    assert_eq!(core.sip_stats().packets_out, 6);
}

#[test]
fn calls_attached_at_one_instant_take_their_frames_at_different_milliseconds() {
    let t0 = Instant::now();
    let phases = TickPhases::new(t0);
    let browser = BrowserParams {
        codec: BrowserCodec::G711(Codec::Pcmu),
        payload_type: 0,
        dtmf_pts: [None, Some(126)],
    };
    let attach = |phases: &Arc<TickPhases>| {
        let metrics = Arc::new(Metrics::new());
        attached_core(
            t0,
            true,
            0,
            metrics,
            browser,
            BusySignal::new(),
            Some(phases),
        )
    };
    // Twenty calls set up together: each millisecond of the 20 ms period gets one.
    let mut cores: Vec<MediaCore> = (0..20).map(|_| attach(&phases)).collect();
    let mut firsts: Vec<Duration> = cores.iter().map(|c| c.next_deadline() - t0).collect();
    firsts.sort();
    assert_eq!(firsts, (0..20).map(|ms| ms * MS).collect::<Vec<_>>());
    // A call keeps its phase: one frame each 20 ms from its first.
    let mut io = Recorder {
        ready: true,
        ..Recorder::default()
    };
    let third = &mut cores[3];
    let first = third.next_deadline();
    third.on_timeout(first, &mut io);
    assert_eq!(
        (io.to_sip.len(), third.next_deadline()),
        (1, first + 20 * MS)
    );
    // It ends; the next call set up takes the millisecond it left.
    drop(cores.remove(3));
    let next = attach(&phases);
    assert_eq!(next.next_deadline(), first);
}

#[test]
fn each_frame_is_timed_once_a_direction_and_the_phone_side_only_once_answered() {
    let t0 = Instant::now();
    let metrics = Arc::new(Metrics::new());
    let mut core = core_counting_into(t0, false, 0, Arc::clone(&metrics));
    let mut io = Recorder {
        ready: true,
        ..Recorder::default()
    };
    let timed = || {
        (
            metrics.transcode.web_to_sip.count(),
            metrics.transcode.sip_to_web.count(),
        )
    };
    // Three frames due at once (a stall): each timed, none toward the browser before the answer.
    core.on_timeout(t0 + 40 * MS, &mut io);
    assert_eq!(timed(), (3, 0));
    core.answered();
    core.on_timeout(t0 + 60 * MS, &mut io);
    assert_eq!(timed(), (4, 1));
    assert_eq!((io.to_sip.len(), io.to_browser.len()), (1, 1));
}

#[test]
fn a_frame_is_timed_from_its_transcoding_not_from_the_ticks_clock_reading() {
    // The shell reads the clock, then drains the sockets, then calls `on_timeout`: a tick whose
    // reading is 200 ms old (a slow drain, a stall) is not 200 ms of transcoding.
    let t0 = Instant::now()
        .checked_sub(Duration::from_millis(400))
        .expect("the monotonic clock is past 400 ms");
    let metrics = Arc::new(Metrics::new());
    let mut core = core_counting_into(t0, true, 0, Arc::clone(&metrics));
    let mut io = Recorder {
        ready: true,
        ..Recorder::default()
    };
    core.on_timeout(t0 + 200 * MS, &mut io);
    let transcode = &metrics.transcode;
    assert_eq!(transcode.web_to_sip.count(), 11);
    let spent = transcode.web_to_sip.sum() + transcode.sip_to_web.sum();
    assert!(
        spent < Duration::from_millis(50),
        "22 frames of PCMU timed at {spent:?}"
    );
}

#[test]
fn without_a_pipeline_only_the_metrics_and_the_watch_wake_the_task() {
    let t0 = Instant::now();
    let mut core = MediaCore::new(
        "call-1",
        SipRtpCore::default(),
        Arc::new(PipelineCounters::default()),
        Timeouts {
            rtp: Duration::from_secs(2),
            hold: Duration::ZERO,
        },
        true,
        t0,
        Arc::new(crate::ops::metrics::Metrics::new()),
    );
    assert_eq!(core.next_deadline(), t0 + PUBLISH_EVERY);
    core.established(t0);
    // The watch samples every quarter of the timeout.
    assert_eq!(core.next_deadline(), t0 + 500 * MS);
    let mut io = Recorder::default();
    core.on_timeout(t0 + 500 * MS, &mut io);
    assert_eq!(core.next_deadline(), t0 + 1000 * MS);
    assert!(io.to_sip.is_empty() && io.to_browser.is_empty() && io.events.is_empty());
    // Packets before the offer are read (the source rule learns, counters move), not played.
    core.set_sip(phone(), pcmu(), false);
    core.on_sip_datagram(&tone_packet(1, 7), false, phone(), t0, &mut io);
    assert_eq!(core.sip_stats().packets_in, 1);
    assert!(io.to_browser.is_empty());
}

#[test]
fn the_phone_is_heard_only_after_the_answer_and_from_its_first_packet_on() {
    let t0 = Instant::now();
    let mut core = core(t0, false, 0);
    let mut io = Recorder {
        ready: true,
        ..Recorder::default()
    };
    let now = talk(&mut core, &mut io, t0, 0, 25);
    assert!(
        io.to_sip.is_empty(),
        "nothing to the phone before the answer"
    );
    // Not even silence: a ringing page that does not play the track yet would queue it and
    // hear the phone's first words late.
    assert_eq!(
        io.to_browser.len(),
        0,
        "the browser was sent audio before it accepted"
    );

    core.answered();
    talk(&mut core, &mut io, now, 25, 25);
    assert!(!io.to_sip.is_empty(), "the browser is heard once answered");
    // The jitter buffer's delay, then the tone in every frame.
    let heard: Vec<f64> = io.to_browser.iter().map(|(_, _, p)| rms_ulaw(p)).collect();
    let onset = heard.iter().position(|r| *r > 5000.0).expect("tone heard");
    assert!(onset <= 5, "the tone only after {onset} frames: {heard:?}");
    assert!(heard[onset..].iter().all(|r| *r > 5000.0), "{heard:?}");
}

#[test]
fn frames_wait_for_the_browser_leg_and_go_out_in_order_once_it_can_encrypt() {
    let t0 = Instant::now();
    let mut core = core(t0, true, 0);
    let mut io = Recorder::default();
    let now = talk(&mut core, &mut io, t0, 0, 10);
    assert!(io.to_browser.is_empty());
    io.ready = true;
    talk(&mut core, &mut io, now, 10, 1);
    assert_eq!(io.to_browser.len(), 11);
    let seqs: Vec<u16> = io.to_browser.iter().map(|(_, s, _)| s.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
        "{seqs:?}"
    );
}

#[test]
fn a_flood_of_junk_and_strangers_is_counted_while_the_phone_plays_on() {
    let t0 = Instant::now();
    let mut core = core(t0, true, 0);
    let mut io = Recorder {
        ready: true,
        ..Recorder::default()
    };
    let stranger: SocketAddr = "127.0.0.66:4000".parse().unwrap();
    let mut now = t0;
    for s in 0..50u16 {
        core.on_sip_datagram(&tone_packet(s, 7), false, phone(), now, &mut io);
        for j in 0..20u16 {
            core.on_sip_datagram(&[0x55; 60], false, stranger, now, &mut io);
            core.on_sip_datagram(&tone_packet(s * 20 + j, 66), false, stranger, now, &mut io);
        }
        core.on_timeout(now, &mut io);
        now += 20 * MS;
    }
    let s = core.sip_stats();
    assert_eq!((s.dropped_malformed, s.dropped_source), (1000, 1000));
    assert_eq!(s.packets_in, 50);
    let toned = io
        .to_browser
        .iter()
        .filter(|(_, _, p)| rms_ulaw(p) > 5000.0)
        .count();
    assert!(
        toned >= 44,
        "only {toned} of 50 frames carried the phone's tone"
    );
    // The phone's tone, not the stranger's: the stranger's SSRC never reached the pipeline.
    assert_eq!(core.sip.target(), Some(phone()));
}

#[test]
fn dtmf_from_the_phone_goes_to_the_browser_and_the_browsers_keys_to_the_phone() {
    let t0 = Instant::now();
    let mut core = core(t0, true, 0);
    let mut io = Recorder {
        ready: true,
        ..Recorder::default()
    };
    // RFC 4733 event 5, end bit set.
    core.on_sip_datagram(
        &packet(101, 1, 7, &[5, 0x8A, 3, 0x20]),
        false,
        phone(),
        t0,
        &mut io,
    );
    assert!(
        matches!(&io.events[..], [MediaEvent::ToBrowser(v)] if v["kind"] == "dtmf" && v["digit"] == "5"),
        "{:?}",
        io.events
    );
    core.queue_digit('7');
    core.on_timeout(t0, &mut io);
    let (pt, payload) = {
        let p = RtpPacket::parse(&io.to_sip[0].0).unwrap();
        (p.payload_type, p.payload.to_vec())
    };
    assert_eq!((pt, payload[0]), (101, 7));
}

#[test]
fn a_silent_phone_ends_the_established_call_at_the_rtp_timeout_and_a_talking_one_does_not() {
    let t0 = Instant::now();
    let mut core = core(t0, true, 2);
    core.set_browser_consent(true);
    core.established(t0);
    let mut io = Recorder {
        ready: true,
        ..Recorder::default()
    };
    // Talking for 3 s: no timeout.
    let now = talk(&mut core, &mut io, t0, 0, 150);
    assert!(io.events.is_empty(), "{:?}", io.events);
    // Silent: ended between 2 s and 2.5 s later (checked every 0.5 s), once.
    let mut at = now;
    while io.events.is_empty() && at < now + Duration::from_secs(5) {
        at = core.next_deadline();
        core.on_timeout(at, &mut io);
    }
    let silent_for = at - now;
    assert!(
        silent_for >= Duration::from_secs(2) && silent_for <= Duration::from_millis(2520),
        "{silent_for:?}"
    );
    assert!(
        matches!(&io.events[..], [MediaEvent::Failed(m)] if m == "RTP timeout on the sip leg"),
        "{:?}",
        io.events
    );
    core.on_timeout(at + Duration::from_secs(3), &mut io);
    assert_eq!(io.events.len(), 1);
}

#[test]
fn a_re_invite_that_holds_the_call_stops_sending_to_the_phone() {
    let t0 = Instant::now();
    let mut core = core(t0, true, 0);
    let mut io = Recorder {
        ready: true,
        ..Recorder::default()
    };
    core.on_timeout(t0, &mut io);
    assert_eq!(io.to_sip.len(), 1);
    core.set_sip(
        phone(),
        SipParams {
            send: false,
            ..pcmu()
        },
        true,
    );
    core.on_timeout(t0 + 20 * MS, &mut io);
    assert_eq!(io.to_sip.len(), 1);
    // Resumed at a new address: media goes there.
    let moved: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    core.set_sip(moved, pcmu(), false);
    core.on_timeout(t0 + 40 * MS, &mut io);
    assert_eq!(io.to_sip.last().map(|(_, to)| *to), Some(moved));
}

/// Log lines written while `f` runs, on this thread only.
fn logged(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    text
}

#[test]
fn a_flood_of_bad_datagrams_is_summed_up_in_one_line_every_10_s_not_one_per_packet() {
    let t0 = Instant::now();
    let mut core = core(t0, true, 0);
    let mut io = Recorder {
        ready: true,
        ..Recorder::default()
    };
    let stranger: SocketAddr = "127.0.0.66:4000".parse().unwrap();
    let text = logged(|| {
        // 25 s of 100 junk datagrams per 20 ms beside the phone's audio.
        let mut now = t0;
        for s in 0..1250u16 {
            core.on_sip_datagram(&tone_packet(s, 7), false, phone(), now, &mut io);
            for _ in 0..100 {
                core.on_sip_datagram(&[0x55; 60], false, stranger, now, &mut io);
            }
            core.on_timeout(now, &mut io);
            now += 20 * MS;
        }
    });
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("datagrams refused"))
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines.iter().all(|l| l.contains("call_id=call-1")), "{text}");
    assert!(lines[0].contains("total_malformed="), "{text}");
    let others: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("datagrams refused") && !l.contains("browser leg ready"))
        .collect();
    assert!(others.is_empty(), "nothing else logged: {others:?}");
    assert_eq!(core.sip_stats().dropped_malformed, 125_000);
}

#[test]
fn the_opus_encoder_follows_the_bridges_cpu_within_a_second() {
    let t0 = Instant::now();
    let busy = BusySignal::new();
    let opus = BrowserParams {
        codec: BrowserCodec::Opus,
        payload_type: 111,
        dtmf_pts: [None, Some(126)],
    };
    let opus_core = |busy: &BusySignal| {
        attached_core(
            t0,
            true,
            0,
            Arc::new(Metrics::new()),
            opus,
            busy.clone(),
            None,
        )
    };
    let mut core = opus_core(&busy);
    let normal = crate::config::OpusSettings::default();
    let complexity = |core: &MediaCore| core.encoder_settings().map(|s| s.complexity);
    assert_eq!(complexity(&core), Some(normal.complexity));

    let mut io = Recorder {
        ready: true,
        ..Recorder::default()
    };
    busy.set(true);
    core.on_timeout(t0 + 500 * MS, &mut io);
    assert_eq!(
        complexity(&core),
        Some(normal.complexity),
        "read once a second"
    );
    core.on_timeout(t0 + 1000 * MS, &mut io);
    assert_eq!(complexity(&core), Some(normal.complexity_busy));
    busy.set(false);
    core.on_timeout(t0 + 2000 * MS, &mut io);
    assert_eq!(complexity(&core), Some(normal.complexity));

    // A call whose browser leg is answered while the bridge is busy starts cheap.
    busy.set(true);
    assert_eq!(complexity(&opus_core(&busy)), Some(normal.complexity_busy));
}
