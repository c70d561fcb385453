//! CPU per call-second (50 frames of 20 ms) of the media pipeline, both directions, transcoding
//! (Opus ⇄ PCMU) and same-codec relay (PCMU ⇄ PCMU); and memory per call: bytes allocated to
//! build one call's pipeline state (both directions), counted by a global allocator and printed
//! before the timings.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, Criterion};
use srbridge::config::Codec;
use srbridge::media::g711;
use srbridge::media::opus::{OpusEncoder, OpusEncoderConfig, MAX_OPUS_PACKET};
use srbridge::media::pipeline::{
    BrowserCodec, BrowserParams, Downlink, PipelineCounters, SipParams, Uplink, FRAME,
};
use srbridge::media::rtp::{RtpHeader, RtpPacket};

struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn browser(codec: BrowserCodec, pt: u8) -> BrowserParams {
    BrowserParams {
        codec,
        payload_type: pt,
        dtmf_pts: [Some(110), Some(126)],
    }
}

const SIP: SipParams = SipParams {
    codec: Codec::Pcmu,
    payload_type: 0,
    dtmf_pt: Some(101),
    send: true,
};

fn tone(f: usize) -> [i16; FRAME] {
    let mut pcm = [0i16; FRAME];
    for (i, s) in pcm.iter_mut().enumerate() {
        let t = (f * FRAME + i) as f64 / 8000.0;
        *s = (16000.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()) as i16;
    }
    pcm
}

fn pipeline(codec: BrowserCodec, pt: u8) -> (Uplink, Downlink) {
    let c = Arc::new(PipelineCounters::default());
    let mut up = Uplink::new(browser(codec, pt), Arc::clone(&c)).unwrap();
    let mut down = Downlink::new(browser(codec, pt), c).unwrap();
    up.set_sip(SIP);
    down.set_sip(SIP);
    (up, down)
}

fn report_memory() {
    for (name, codec, pt) in [
        ("transcoding (Opus)", BrowserCodec::Opus, 111),
        ("relay (PCMU)", BrowserCodec::G711(Codec::Pcmu), 0),
    ] {
        let before = ALLOCATED.load(Ordering::Relaxed);
        let count = ALLOCATIONS.load(Ordering::Relaxed);
        let p = black_box(pipeline(codec, pt));
        let bytes = ALLOCATED.load(Ordering::Relaxed) - before;
        let n = ALLOCATIONS.load(Ordering::Relaxed) - count;
        let stack = std::mem::size_of_val(&p);
        println!(
            "memory per call, {name}: {bytes} bytes heap in {n} allocations + {stack} bytes inline"
        );
        drop(p);
    }
    // The hot path allocates nothing: count allocations over one call-second.
    let (mut up, mut down) = pipeline(BrowserCodec::Opus, 111);
    let (opus, g711_packets) = inputs();
    let count = ALLOCATIONS.load(Ordering::Relaxed);
    one_second_transcoding(&mut up, &mut down, &opus, &g711_packets, 0);
    println!(
        "allocations during one call-second of transcoding: {}",
        ALLOCATIONS.load(Ordering::Relaxed) - count
    );
    // Nor does a receiver report that turns FEC on, nor concealing lost G.711 packets.
    let (mut relay_up, mut relay_down) = pipeline(BrowserCodec::G711(Codec::Pcmu), 0);
    let count = ALLOCATIONS.load(Ordering::Relaxed);
    let _ = black_box(down.on_loss_report(0.05, 1000));
    one_second_transcoding(&mut up, &mut down, &opus, &g711_packets, 1);
    let (up, down) = (&mut relay_up, &mut relay_down);
    for (k, s) in g711_packets.iter().enumerate() {
        let p = RtpPacket::parse(s).unwrap();
        // Every seventh packet lost both ways.
        if k % 7 != 3 {
            up.push(0, p.sequence, p.timestamp, 1, p.payload, k as u64 * 20);
            down.push(&p, k as u64 * 20);
        }
        black_box(up.tick().packet);
        black_box(down.tick().unwrap().payload);
    }
    println!(
        "allocations during a lossy call-second (FEC on; G.711 relay concealing): {}",
        ALLOCATIONS.load(Ordering::Relaxed) - count
    );
}

/// 50 Opus payloads from a "browser" and 50 PCMU RTP packets from a "PBX".
fn inputs() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut enc = OpusEncoder::new(OpusEncoderConfig::default()).unwrap();
    let mut out = [0u8; MAX_OPUS_PACKET];
    let mut opus = Vec::new();
    let mut rtp = Vec::new();
    for f in 0..50 {
        let pcm = tone(f);
        let n = enc.encode(&pcm, &mut out).unwrap();
        opus.push(out[..n].to_vec());
        let mut codes = [0u8; FRAME];
        g711::ulaw_encode(&pcm, &mut codes);
        let mut packet = vec![0u8; 12 + FRAME];
        RtpHeader {
            marker: false,
            payload_type: 0,
            sequence: f as u16,
            timestamp: (f * FRAME) as u32,
            ssrc: 7,
        }
        .write(&codes, &mut packet)
        .unwrap();
        rtp.push(packet);
    }
    (opus, rtp)
}

/// One call-second: 50 packets in and 50 frames out, both directions. `round` keeps sequence
/// numbers and timestamps moving between iterations.
fn one_second_transcoding(
    up: &mut Uplink,
    down: &mut Downlink,
    opus: &[Vec<u8>],
    sip: &[Vec<u8>],
    round: u32,
) {
    for (f, (o, s)) in opus.iter().zip(sip).enumerate() {
        let k = round * 50 + f as u32;
        up.push(111, k as u16, k * 960, 1, o, u64::from(k) * 20);
        black_box(up.tick().packet);
        let mut p = RtpPacket::parse(s).unwrap();
        p.sequence = k as u16;
        p.timestamp = k * 160;
        down.push(&p, u64::from(k) * 20);
        black_box(down.tick().unwrap().payload);
    }
}

fn benches(c: &mut Criterion) {
    let (opus, sip) = inputs();
    let mut g = c.benchmark_group("pipeline per call-second (50 frames each way)");
    {
        let (mut up, mut down) = pipeline(BrowserCodec::Opus, 111);
        let mut round = 0;
        g.bench_function("Opus->PCMU + PCMU->Opus", |b| {
            b.iter(|| {
                one_second_transcoding(&mut up, &mut down, &opus, &sip, round);
                round += 1;
            })
        });
    }
    {
        let (mut up, _) = pipeline(BrowserCodec::Opus, 111);
        let mut round = 0u32;
        g.bench_function("Opus->PCMU only", |b| {
            b.iter(|| {
                for (f, o) in opus.iter().enumerate() {
                    let k = round * 50 + f as u32;
                    up.push(111, k as u16, k * 960, 1, o, u64::from(k) * 20);
                    black_box(up.tick().packet);
                }
                round += 1;
            })
        });
    }
    {
        let (_, mut down) = pipeline(BrowserCodec::Opus, 111);
        let mut round = 0u32;
        g.bench_function("PCMU->Opus only", |b| {
            b.iter(|| {
                for (f, s) in sip.iter().enumerate() {
                    let k = round * 50 + f as u32;
                    let mut p = RtpPacket::parse(s).unwrap();
                    p.sequence = k as u16;
                    p.timestamp = k * 160;
                    down.push(&p, u64::from(k) * 20);
                    black_box(down.tick().unwrap().payload);
                }
                round += 1;
            })
        });
    }
    {
        let (mut up, mut down) = pipeline(BrowserCodec::G711(Codec::Pcmu), 0);
        let mut round = 0u32;
        g.bench_function("relay PCMU<->PCMU", |b| {
            b.iter(|| {
                for s in &sip {
                    let k = round;
                    let p = RtpPacket::parse(s).unwrap();
                    up.push(0, k as u16, k * 160, 1, p.payload, u64::from(k) * 20);
                    black_box(up.tick().packet);
                    let mut p = p;
                    p.sequence = k as u16;
                    p.timestamp = k * 160;
                    down.push(&p, u64::from(k) * 20);
                    black_box(down.tick().unwrap().payload);
                    round += 1;
                }
            })
        });
    }
    g.finish();
}

criterion_group!(pipeline_benches, benches);

fn main() {
    report_memory();
    pipeline_benches();
    Criterion::default().configure_from_args().final_summary();
}
