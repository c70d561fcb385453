use std::sync::Arc;

use super::*;
use crate::media::opus::{OpusDecoder, OpusEncoder, OpusEncoderConfig, MAX_OPUS_PACKET};
use crate::media::plc::G711Concealer;
use crate::media::rtp::{RtpHeader, RtpPacket, TelephoneEvent};

const OPUS_PT: u8 = 111;
const TE48: u8 = 110;
const TE8: u8 = 126;

fn sine(freq: f64, start: usize, out: &mut [i16]) {
    for (i, s) in out.iter_mut().enumerate() {
        let t = (start + i) as f64 / 8000.0;
        *s = (0.5 * 32767.0 * (2.0 * std::f64::consts::PI * freq * t).sin()) as i16;
    }
}

fn zero_crossing_hz(pcm: &[i16]) -> f64 {
    let c = pcm.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    c as f64 / 2.0 / (pcm.len() as f64 / 8000.0)
}

fn rms(pcm: &[i16]) -> f64 {
    (pcm.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / pcm.len().max(1) as f64).sqrt()
}

fn browser(codec: BrowserCodec, pt: u8) -> BrowserParams {
    BrowserParams {
        codec,
        payload_type: pt,
        dtmf_pts: [Some(TE48), Some(TE8)],
    }
}

fn sip(codec: Codec) -> SipParams {
    SipParams {
        codec,
        payload_type: codec.payload_type(),
        dtmf_pt: Some(101),
        send: true,
    }
}

fn counters() -> Arc<PipelineCounters> {
    Arc::new(PipelineCounters::default())
}

/// Owned copy of a packet's header fields and payload.
fn parse(packet: &[u8]) -> (u8, u16, u32, bool, Vec<u8>) {
    let p = RtpPacket::parse(packet).unwrap();
    (
        p.payload_type,
        p.sequence,
        p.timestamp,
        p.marker,
        p.payload.to_vec(),
    )
}

#[test]
fn opus_from_the_browser_becomes_a_pcmu_tone_with_continuous_headers() {
    let c = counters();
    let mut up = Uplink::new(browser(BrowserCodec::Opus, OPUS_PT), Arc::clone(&c)).unwrap();
    up.set_sip(sip(Codec::Pcmu));
    let mut enc = OpusEncoder::new(OpusEncoderConfig::default()).unwrap();
    let (mut pcm, mut out) = ([0i16; FRAME], [0u8; MAX_OPUS_PACKET]);
    let mut got = Vec::new();
    let mut headers = Vec::new();
    for f in 0..50u16 {
        sine(1000.0, usize::from(f) * FRAME, &mut pcm);
        let n = enc.encode(&pcm, &mut out).unwrap();
        up.push(
            OPUS_PT,
            f,
            u32::from(f) * 960,
            9,
            &out[..n],
            u64::from(f) * 20,
        );
        let packet = up.tick().packet.expect("a packet every tick").to_vec();
        let (pt, seq, ts, marker, payload) = parse(&packet);
        assert_eq!(pt, 0);
        headers.push((seq, ts, marker));
        let mut dec = [0i16; FRAME];
        g711::ulaw_decode(&payload, &mut dec);
        got.extend_from_slice(&dec);
    }
    for w in headers.windows(2) {
        assert_eq!(w[1].0, w[0].0.wrapping_add(1));
        assert_eq!(w[1].1, w[0].1.wrapping_add(160));
        assert!(!w[1].2);
    }
    assert!(headers[0].2, "marker on the first packet");
    let steady = &got[20 * FRAME..];
    assert!((zero_crossing_hz(steady) - 1000.0).abs() < 30.0);
    assert!(rms(steady) > 8000.0);
    assert_eq!(PipelineCounters::get(&c.to_sip), 50);
}

#[test]
fn same_law_is_relayed_byte_for_byte_and_the_other_law_is_recoded() {
    for (sip_codec, expect_relay) in [(Codec::Pcmu, true), (Codec::Pcma, false)] {
        let c = counters();
        let mut up =
            Uplink::new(browser(BrowserCodec::G711(Codec::Pcmu), 0), Arc::clone(&c)).unwrap();
        up.set_sip(sip(sip_codec));
        let mut sent = Vec::new();
        let mut got = Vec::new();
        let mut pcm = [0i16; FRAME];
        let mut codes = [0u8; FRAME];
        for f in 0..20u16 {
            sine(440.0, usize::from(f) * FRAME, &mut pcm);
            g711::ulaw_encode(&pcm, &mut codes);
            sent.extend_from_slice(&codes);
            up.push(
                0,
                f + 1000,
                u32::from(f) * 160,
                5,
                &codes,
                u64::from(f) * 20,
            );
            let (pt, _, _, _, payload) = parse(up.tick().packet.unwrap());
            assert_eq!(pt, sip_codec.payload_type());
            got.extend(payload);
        }
        // The jitter buffer starts playing once 20 ms are held: no delay at this pace.
        if expect_relay {
            assert_eq!(got, sent, "relayed unchanged");
            assert_eq!(PipelineCounters::get(&c.relayed), 20);
        } else {
            let mut back = vec![0i16; got.len()];
            g711::alaw_decode(&got, &mut back);
            assert!((zero_crossing_hz(&back) - 440.0).abs() < 15.0);
            assert_eq!(PipelineCounters::get(&c.relayed), 0);
        }
    }
}

#[test]
fn nothing_from_the_browser_is_comfort_silence_not_garbage() {
    let mut up = Uplink::new(browser(BrowserCodec::Opus, OPUS_PT), counters()).unwrap();
    up.set_sip(sip(Codec::Pcmu));
    for _ in 0..10 {
        let (_, _, _, _, payload) = parse(up.tick().packet.unwrap());
        assert!(
            payload.iter().all(|c| *c == g711::ULAW_SILENCE),
            "{payload:?}"
        );
    }
    let mut down = Downlink::new(browser(BrowserCodec::Opus, OPUS_PT), counters()).unwrap();
    let mut dec = OpusDecoder::new().unwrap();
    let mut pcm = [0i16; 960];
    for _ in 0..10 {
        let frame = down.tick().unwrap();
        assert!(frame.pcm.iter().all(|s| *s == 0));
        let n = dec.decode(frame.payload, &mut pcm).unwrap();
        assert!(rms(&pcm[..n]) < 50.0);
    }
}

#[test]
fn hold_stops_sending_and_resume_continues_the_timeline_with_a_marker() {
    let mut up = Uplink::new(browser(BrowserCodec::Opus, OPUS_PT), counters()).unwrap();
    up.set_sip(sip(Codec::Pcmu));
    let (_, seq0, ts0, _, _) = parse(up.tick().packet.unwrap());
    up.set_sip(SipParams {
        send: false,
        ..sip(Codec::Pcmu)
    });
    for _ in 0..10 {
        assert!(up.tick().packet.is_none(), "nothing sent on hold");
    }
    up.set_sip(sip(Codec::Pcma));
    let (pt, seq, ts, marker, _) = parse(up.tick().packet.unwrap());
    assert_eq!(pt, 8, "codec changed by the re-INVITE");
    assert_eq!(seq, seq0.wrapping_add(1), "no sequence gap");
    assert_eq!(
        ts,
        ts0.wrapping_add(11 * 160),
        "timestamps follow the time on hold"
    );
    assert!(marker, "talkspurt after resume");
}

fn te_payload(event: u8, end: bool, duration: u16) -> [u8; 4] {
    TelephoneEvent {
        event,
        end,
        volume: 10,
        duration,
    }
    .to_bytes()
}

#[test]
fn browser_telephone_events_become_one_rfc4733_key_on_the_sip_clock() {
    let c = counters();
    let mut up = Uplink::new(browser(BrowserCodec::Opus, OPUS_PT), Arc::clone(&c)).unwrap();
    up.set_sip(sip(Codec::Pcmu));
    let (_, _, audio_ts, _, _) = parse(up.tick().packet.unwrap());
    // Chrome: telephone-event/48000, one timestamp per key, growing duration, 3 end packets.
    for (i, (end, d)) in [
        (false, 960),
        (false, 1920),
        (true, 4800),
        (true, 4800),
        (true, 4800),
    ]
    .into_iter()
    .enumerate()
    {
        up.push(TE48, 100 + i as u16, 48_000, 9, &te_payload(5, end, d), 0);
    }
    up.push(TE48, 200, 48_000 + 20_000, 9, &[1, 2], 0); // short: ignored
    let mut events = Vec::new();
    let mut audio_after = None;
    for _ in 0..10 {
        let (pt, _, ts, marker, payload) = parse(up.tick().packet.unwrap());
        if pt == 101 {
            events.push((ts, marker, TelephoneEvent::parse(&payload).unwrap()));
        } else if !events.is_empty() && audio_after.is_none() {
            audio_after = Some(ts);
        }
    }
    assert_eq!(events.len(), 7, "{events:?}");
    let start = events[0].0;
    assert_eq!(start, audio_ts.wrapping_add(160));
    assert!(events.iter().all(|e| e.0 == start && e.2.event == 5));
    assert!(events[0].1 && events[1..].iter().all(|e| !e.1));
    let durations: Vec<u16> = events.iter().map(|e| e.2.duration).collect();
    assert_eq!(durations, [160, 320, 480, 640, 800, 800, 800]);
    assert_eq!(events.iter().filter(|e| e.2.end).count(), 3);
    assert_eq!(audio_after, Some(start.wrapping_add(7 * 160)));
    assert_eq!(PipelineCounters::get(&c.dtmf_to_sip), 1);
    // The JSON fallback and a key without telephone-event on the SIP side.
    assert!(up.queue_digit('#'));
    assert!(!up.queue_digit('x'));
    up.set_sip(SipParams {
        dtmf_pt: None,
        ..sip(Codec::Pcmu)
    });
    let (pt, ..) = parse(up.tick().packet.unwrap());
    assert_eq!(pt, 0);
    assert_eq!(PipelineCounters::get(&c.dtmf_dropped), 1);
}

fn g711_packet(pt: u8, ssrc: u32, seq: u16, ts: u32, payload: &[u8], buf: &mut [u8]) -> usize {
    RtpHeader {
        marker: false,
        payload_type: pt,
        sequence: seq,
        timestamp: ts,
        ssrc,
    }
    .write(payload, buf)
    .unwrap()
}

#[test]
fn sip_g711_becomes_opus_with_a_timeline_immune_to_ssrc_changes_and_codec_switches() {
    let c = counters();
    let mut down = Downlink::new(browser(BrowserCodec::Opus, OPUS_PT), Arc::clone(&c)).unwrap();
    down.set_sip(sip(Codec::Pcmu));
    let mut dec = OpusDecoder::new().unwrap();
    let (mut pcm, mut codes, mut buf) = ([0i16; FRAME], [0u8; FRAME], [0u8; 200]);
    let mut out = [0i16; 960];
    let mut got = Vec::new();
    let mut stamps = Vec::new();
    for f in 0..60u32 {
        sine(440.0, f as usize * FRAME, &mut pcm);
        // After 30 frames: a re-INVITE to PCMA with a new SSRC and a new timestamp base.
        let (pt, ssrc, ts, seq) = if f < 30 {
            (0, 1, f * 160, f as u16)
        } else {
            (8, 2, 90_000 + f * 160, 20_000 + f as u16)
        };
        if pt == 0 {
            g711::ulaw_encode(&pcm, &mut codes);
        } else {
            g711::alaw_encode(&pcm, &mut codes);
        }
        let n = g711_packet(pt, ssrc, seq, ts, &codes, &mut buf);
        assert_eq!(
            down.push(&RtpPacket::parse(&buf[..n]).unwrap(), u64::from(f) * 20),
            None
        );
        let frame = down.tick().unwrap();
        assert_eq!(frame.payload_type, OPUS_PT);
        stamps.push(frame.stamp);
        let m = dec.decode(frame.payload, &mut out).unwrap();
        got.extend_from_slice(&out[..m]);
    }
    for w in stamps.windows(2) {
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1));
        assert_eq!(w[1].timestamp, w[0].timestamp.wrapping_add(960));
    }
    let after_switch = &got[40 * FRAME..];
    assert!((zero_crossing_hz(after_switch) - 440.0).abs() < 15.0);
    assert!(rms(after_switch) > 8000.0);
    assert!((zero_crossing_hz(&got[10 * FRAME..28 * FRAME]) - 440.0).abs() < 15.0);
}

#[test]
fn a_sip_key_is_reported_once_and_unknown_payloads_are_counted() {
    let c = counters();
    let mut down =
        Downlink::new(browser(BrowserCodec::G711(Codec::Pcmu), 0), Arc::clone(&c)).unwrap();
    down.set_sip(sip(Codec::Pcmu));
    let mut buf = [0u8; 64];
    let mut keys = Vec::new();
    for (i, (ev, ts, end)) in [
        (1, 800, false),
        (1, 800, false),
        (1, 800, true),
        (1, 800, true),
        (11, 2400, false),
        (11, 2400, true),
    ]
    .into_iter()
    .enumerate()
    {
        let n = g711_packet(101, 7, i as u16, ts, &te_payload(ev, end, 320), &mut buf);
        keys.extend(down.push(&RtpPacket::parse(&buf[..n]).unwrap(), 0));
    }
    assert_eq!(keys, ['1', '#']);
    assert_eq!(PipelineCounters::get(&c.dtmf_from_sip), 2);
    let n = g711_packet(18, 7, 10, 0, &[0; 20], &mut buf);
    assert_eq!(down.push(&RtpPacket::parse(&buf[..n]).unwrap(), 0), None);
    assert_eq!(PipelineCounters::get(&c.unknown_payload), 1);
    let n = g711_packet(101, 7, 11, 9999, &[1], &mut buf);
    assert_eq!(
        down.push(&RtpPacket::parse(&buf[..n]).unwrap(), 0),
        None,
        "short event"
    );
}

#[test]
fn corrupt_opus_is_concealed_not_a_crash() {
    let mut up = Uplink::new(browser(BrowserCodec::Opus, OPUS_PT), counters()).unwrap();
    up.set_sip(sip(Codec::Pcma));
    for f in 0..20u16 {
        up.push(
            OPUS_PT,
            f,
            u32::from(f) * 960,
            1,
            &[0xFF; 7],
            u64::from(f) * 20,
        );
        up.push(99, f, 0, 1, &[1, 2, 3], 0);
        assert!(up.tick().packet.is_some());
    }
}

#[test]
fn relayed_g711_to_the_browser_keeps_the_bytes() {
    let c = counters();
    let mut down =
        Downlink::new(browser(BrowserCodec::G711(Codec::Pcma), 8), Arc::clone(&c)).unwrap();
    down.set_sip(sip(Codec::Pcma));
    let mut buf = [0u8; 200];
    let mut sent = Vec::new();
    let mut got = Vec::new();
    let mut pcm = [0i16; FRAME];
    let mut codes = [0u8; FRAME];
    for f in 0..10u16 {
        sine(700.0, usize::from(f) * FRAME, &mut pcm);
        g711::alaw_encode(&pcm, &mut codes);
        sent.extend_from_slice(&codes);
        let n = g711_packet(8, 3, f, u32::from(f) * 160, &codes, &mut buf);
        down.push(&RtpPacket::parse(&buf[..n]).unwrap(), u64::from(f) * 20);
        let frame = down.tick().unwrap();
        assert_eq!(frame.payload_type, 8);
        got.extend_from_slice(frame.payload);
    }
    assert_eq!(got, sent);
    assert_eq!(PipelineCounters::get(&c.relayed), 10);
}

#[test]
fn in_info_mode_keys_are_handed_out_once_and_never_sent_as_rfc4733() {
    let mut up = Uplink::new(browser(BrowserCodec::Opus, OPUS_PT), counters()).unwrap();
    up.set_sip(sip(Codec::Pcmu));
    up.send_digits_as_info(true);
    for (i, end) in [false, true, true, true].into_iter().enumerate() {
        up.push(TE48, 100 + i as u16, 48_000, 9, &te_payload(4, end, 960), 0);
    }
    assert!(up.queue_digit('#'));
    let mut keys = Vec::new();
    for _ in 0..10 {
        let (pt, ..) = parse(up.tick().packet.unwrap());
        assert_eq!(pt, 0, "only audio goes out in RTP");
        keys.extend(up.take_info_digit());
    }
    assert_eq!(keys, ['4', '#']);
    // RFC 4733 mode hands nothing out.
    up.send_digits_as_info(false);
    assert!(up.queue_digit('1'));
    assert_eq!(up.take_info_digit(), None);
}

fn max_step(pcm: &[i16]) -> i32 {
    pcm.windows(2)
        .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
        .max()
        .unwrap_or(0)
}

#[test]
fn loss_the_browser_reports_turns_fec_on_with_more_bits_and_a_clean_path_has_none() {
    use crate::config::{OpusFec, OpusSettings};
    let mut down = Downlink::new(browser(BrowserCodec::Opus, OPUS_PT), counters()).unwrap();
    down.set_sip(sip(Codec::Pcmu));
    down.set_opus(OpusSettings {
        complexity: 5,
        complexity_busy: 0,
        bitrate: 16_000,
        bitrate_lossy: 32_000,
        fec: OpusFec::Auto,
        ..OpusSettings::default()
    })
    .unwrap();
    let (mut pcm, mut codes, mut buf) = ([0i16; FRAME], [0u8; FRAME], [0u8; 200]);
    let mut sent = |down: &mut Downlink, from: u32| -> usize {
        let mut bytes = 0;
        for f in from..from + 50 {
            sine(
                300.0 + f64::from(f % 7) * 50.0,
                f as usize * FRAME,
                &mut pcm,
            );
            g711::ulaw_encode(&pcm, &mut codes);
            let n = g711_packet(0, 1, f as u16, f * 160, &codes, &mut buf);
            down.push(&RtpPacket::parse(&buf[..n]).unwrap(), u64::from(f) * 20);
            bytes += down.tick().unwrap().payload.len();
        }
        bytes
    };
    let clean = sent(&mut down, 0);
    assert!(!down.encoder_settings().fec);
    assert_eq!(down.on_loss_report(0.0, 1000).unwrap(), None);
    let changed = down.on_loss_report(0.05, 2000).unwrap().expect("FEC on");
    assert!(changed.fec && changed.packet_loss_percent == 5);
    let lossy = sent(&mut down, 50);
    // 16 → 32 kb/s: the browser gets about twice the bytes per second.
    assert!(
        lossy as f64 > clean as f64 * 1.5,
        "{clean} bytes/s clean, {lossy} with loss"
    );
}

/// PBX audio (a tone) through the downlink with PCMU packets `lost`; the browser leg is PCMU.
fn relay_with_loss(lost: &[u32]) -> (Vec<i16>, Vec<i16>) {
    let mut down = Downlink::new(browser(BrowserCodec::G711(Codec::Pcmu), 0), counters()).unwrap();
    down.set_sip(sip(Codec::Pcmu));
    let (mut pcm, mut codes, mut buf) = ([0i16; FRAME], [0u8; FRAME], [0u8; 200]);
    let mut heard = Vec::new();
    let mut sent = Vec::new();
    for f in 0..60u32 {
        sine(440.0, f as usize * FRAME, &mut pcm);
        g711::ulaw_encode(&pcm, &mut codes);
        let mut decoded = [0i16; FRAME];
        g711::ulaw_decode(&codes, &mut decoded);
        sent.extend_from_slice(&decoded);
        if !lost.contains(&f) {
            let n = g711_packet(0, 1, f as u16, f * 160, &codes, &mut buf);
            down.push(&RtpPacket::parse(&buf[..n]).unwrap(), u64::from(f) * 20);
        }
        let frame = down.tick().unwrap();
        let mut out = [0i16; FRAME];
        g711::ulaw_decode(frame.payload, &mut out);
        heard.extend_from_slice(&out);
    }
    (heard, sent)
}

#[test]
fn a_lost_pbx_packet_is_concealed_not_silenced_and_clean_audio_relays_bit_exact() {
    let (clean, _) = relay_with_loss(&[]);
    let (heard, _) = relay_with_loss(&[30]);
    // Packets arriving on time play at once (20 ms of buffer). Frame 30 is missing at tick 30:
    // the buffer runs dry, so it waits for 40 ms of audio again (it grows by a frame) and frame
    // 30 is reported lost at tick 31: two ticks are concealed, the second one fading.
    let lost = &heard[30 * FRAME..31 * FRAME];
    assert!(
        rms(lost) > 0.7 * rms(&clean[30 * FRAME..31 * FRAME]),
        "{}",
        rms(lost)
    );
    assert!(rms(&heard[31 * FRAME..32 * FRAME]) > 0.4 * rms(&clean[31 * FRAME..32 * FRAME]));
    assert!(
        max_step(&heard[20 * FRAME..]) <= max_step(&clean[20 * FRAME..]) * 13 / 10,
        "a click around the loss"
    );
    // Away from the loss (and its blend back), the relay is untouched, one frame later.
    assert_eq!(&heard[..30 * FRAME], &clean[..30 * FRAME]);
    assert_eq!(&heard[33 * FRAME..], &clean[32 * FRAME..59 * FRAME]);
}

#[test]
fn a_lost_browser_g711_packet_is_concealed_toward_sip() {
    let run = |lost: Option<u32>| {
        let mut up = Uplink::new(browser(BrowserCodec::G711(Codec::Pcmu), 0), counters()).unwrap();
        up.set_sip(sip(Codec::Pcma));
        let (mut pcm, mut codes) = ([0i16; FRAME], [0u8; FRAME]);
        let mut heard = Vec::new();
        for f in 0..40u32 {
            sine(440.0, f as usize * FRAME, &mut pcm);
            g711::ulaw_encode(&pcm, &mut codes);
            if lost != Some(f) {
                up.push(0, f as u16, f * 160, 9, &codes, u64::from(f) * 20);
            }
            let packet = up.tick().packet.map(parse).expect("a packet");
            let mut out = [0i16; FRAME];
            g711::alaw_decode(&packet.4, &mut out);
            heard.extend_from_slice(&out);
        }
        heard
    };
    let clean = run(None);
    let heard = run(Some(20));
    let lost = &heard[20 * FRAME..21 * FRAME];
    assert!(rms(lost) > 0.7 * rms(&clean[20 * FRAME..21 * FRAME]));
    assert!(max_step(&heard[10 * FRAME..]) <= max_step(&clean[10 * FRAME..]) * 13 / 10);
}

/// A PBX whose clock runs 2 % fast (one extra 20 ms packet a second) into the G.711 path: the
/// jitter buffer drops a frame now and then to keep its delay bounded; returns what was played
/// (with `smooth`, through the concealer; without, the raw codes), the tone, and the drops.
fn fast_sender(smooth: bool) -> (Vec<i16>, Vec<i16>, u64) {
    use crate::media::jitter::{JitterBuffer, JitterConfig};
    let mut jitter = JitterBuffer::new(JitterConfig::audio(8000));
    let mut fifo = ByteFifo::new();
    let mut plc = G711Concealer::new();
    let mut payload = [0u8; MAX_PAYLOAD];
    let (mut pcm, mut codes) = ([0i16; FRAME], [0u8; FRAME]);
    let mut played = Vec::new();
    let mut clean = Vec::new();
    let mut seq = 0u16;
    for tick in 0..600u64 {
        let sends = if tick % 50 == 49 { 2 } else { 1 };
        for _ in 0..sends {
            let mut tone = [0i16; FRAME];
            sine(440.0, usize::from(seq) * FRAME, &mut tone);
            clean.extend_from_slice(&tone);
            let mut c = [0u8; FRAME];
            g711::ulaw_encode(&tone, &mut c);
            jitter.push(1, seq, u32::from(seq) * 160, &c, tick * 20);
            seq += 1;
        }
        let fill = fill_g711(&mut jitter, &mut fifo, &mut payload, &mut codes, 0xFF);
        if smooth {
            conceal_g711(&mut plc, Codec::Pcmu, None, fill, &mut codes, &mut pcm);
        } else {
            g711::ulaw_decode(&codes, &mut pcm);
        }
        played.extend_from_slice(&pcm);
    }
    (played, clean, jitter.stats().trimmed)
}

#[test]
fn a_frame_dropped_to_cut_delay_is_spliced_without_a_click() {
    let (raw, clean, trimmed) = fast_sender(false);
    assert!(trimmed >= 5, "only {trimmed} frames dropped");
    let limit = max_step(&clean) * 13 / 10;
    // Without the splice each drop is a jump in the tone's phase.
    assert!(max_step(&raw) > limit, "the raw cut should click");
    let (smoothed, _, _) = fast_sender(true);
    assert!(
        max_step(&smoothed) <= limit,
        "step {} against {limit}",
        max_step(&smoothed)
    );
    // The level holds through the splices.
    assert!(rms(&smoothed[FRAME * 50..]) > 0.9 * rms(&clean));
}
