//! Cost of the SIP leg's per-packet work: G.711 on one 20 ms frame, and an RTP packet
//! built and parsed around it.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use srbridge::media::g711;
use srbridge::media::rtp::{RtpPacket, RtpSender};
use std::time::Duration;

fn frame() -> [i16; 160] {
    let mut pcm = [0i16; 160];
    for (i, s) in pcm.iter_mut().enumerate() {
        *s = (12000.0 * (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / 8000.0).sin()) as i16;
    }
    pcm
}

fn g711_frames(c: &mut Criterion) {
    let pcm = frame();
    let mut codes = [0u8; 160];
    let mut out = [0i16; 160];
    c.bench_function("ulaw_encode_20ms", |b| {
        b.iter(|| g711::ulaw_encode(black_box(&pcm), &mut codes))
    });
    g711::ulaw_encode(&pcm, &mut codes);
    c.bench_function("ulaw_decode_20ms", |b| {
        b.iter(|| g711::ulaw_decode(black_box(&codes), &mut out))
    });
    c.bench_function("alaw_encode_20ms", |b| {
        b.iter(|| g711::alaw_encode(black_box(&pcm), &mut codes))
    });
    g711::alaw_encode(&pcm, &mut codes);
    c.bench_function("alaw_decode_20ms", |b| {
        b.iter(|| g711::alaw_decode(black_box(&codes), &mut out))
    });
}

fn rtp_packet(c: &mut Criterion) {
    let pcm = frame();
    let mut sender = RtpSender::new(1, 0, 0, 8000);
    let mut payload = [0u8; 160];
    let mut packet = [0u8; 1500];
    let mut t = 0u64;
    c.bench_function("rtp_packetize_ulaw_20ms", |b| {
        b.iter(|| {
            t += 20;
            let n = g711::ulaw_encode(black_box(&pcm), &mut payload);
            let h = sender.audio(Duration::from_millis(t), 0, 160);
            h.write(&payload[..n], &mut packet).unwrap_or(0)
        })
    });
    let len = sender
        .audio(Duration::from_millis(t + 20), 0, 160)
        .write(&payload, &mut packet)
        .unwrap_or(0);
    c.bench_function("rtp_parse", |b| {
        b.iter(|| RtpPacket::parse(black_box(&packet[..len])).map(|p| p.payload.len()))
    });
}

criterion_group!(benches, g711_frames, rtp_packet);
criterion_main!(benches);
