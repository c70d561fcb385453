//! The media path allocates nothing per packet (issue #11): two browser legs
//! (`media::browser_leg::BrowserLeg`, the sans-IO core each call's media task drives) connected
//! in memory through ICE and DTLS, then Opus-sized packets protected on one and unprotected on
//! the other, with every heap allocation of this thread counted.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use srbridge::media::browser_leg::BrowserLeg;
use srbridge::media::webrtc_leg::WebRtcSettings;

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocations;

const OPUS_PT: u8 = 111;

/// Moves every queued datagram from each leg to the other until neither has anything to send.
fn carry(a: &mut BrowserLeg, b: &mut BrowserLeg, a_addr: SocketAddr, b_addr: SocketAddr) {
    loop {
        let mut moved = false;
        while let Some(t) = a.poll_transmit() {
            moved = true;
            b.handle_datagram(Instant::now(), b_addr, a_addr, &t.payload);
        }
        while let Some(t) = b.poll_transmit() {
            moved = true;
            a.handle_datagram(Instant::now(), a_addr, b_addr, &t.payload);
        }
        if !moved {
            return;
        }
    }
}

#[test]
fn a_connected_browser_leg_protects_and_unprotects_packets_without_allocating() {
    let a_addr: SocketAddr = "10.0.0.1:4000".parse().expect("address");
    let b_addr: SocketAddr = "10.0.0.2:5000".parse().expect("address");
    let settings = WebRtcSettings::default();
    let now = Instant::now();
    let (mut a, offer) = BrowserLeg::offer(now, &settings, &[a_addr]).expect("offer");
    let (mut b, answer) = BrowserLeg::answer(now, &settings, &[b_addr], &offer).expect("answer");
    a.accept_answer(now, &answer).expect("answer accepted");
    let start = Instant::now();
    while !(a.media_ready() && b.media_ready()) {
        assert!(start.elapsed() < Duration::from_secs(10), "no connection");
        carry(&mut a, &mut b, a_addr, b_addr);
        let now = Instant::now();
        a.handle_timeout(now);
        b.handle_timeout(now);
        while a.poll_event().is_some() {}
        while b.poll_event().is_some() {}
    }
    let payload = [0x5A_u8; 80];
    let mut one_packet = |seq: u16| {
        let now = Instant::now();
        a.send_rtp(now, OPUS_PT, seq, u32::from(seq) * 960, false, &payload)
            .expect("sent");
        let t = a.poll_transmit().expect("a datagram to send");
        b.handle_datagram(now, b_addr, a_addr, &t.payload);
        drop(t);
        let got = b.poll_rtp().expect("the packet arrived");
        assert_eq!(
            &got.payload[..],
            &payload[..],
            "the browser's payload, intact"
        );
    };
    // The first packets set the legs' buffers up (the switch to their own SRTP path, the
    // stream's state on each end).
    for seq in 0..100 {
        one_packet(seq);
    }
    let before = allocations();
    for seq in 100..1100 {
        one_packet(seq);
    }
    let per_packet = (allocations() - before) as f64 / 1000.0;
    assert!(
        per_packet < 0.01,
        "{per_packet:.2} allocations per packet protected and unprotected"
    );
}
