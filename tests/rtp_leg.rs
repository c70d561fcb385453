//! The SIP side's RTP leg on real loopback sockets: port allocation from the configured range,
//! symmetric RTP latching, malformed traffic, and a G.711 tone carried between two legs.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::time::Duration;

use srbridge::media::g711;
use srbridge::media::rtp::{RtpHeader, RtpPacket, RtpSender};
use srbridge::media::rtp_leg::{PortAllocator, PortRange, RtpLeg, RtpLegError};
use support::audio::{assert_tone, tone};
use support::ports::free_port_range;
use tokio::net::UdpSocket;
use tokio::time::timeout;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Guards against a hang only; no test asserts on timing.
const HANG: Duration = Duration::from_secs(10);

/// An allocator over `pairs` fresh RTP/RTCP pairs nobody else uses; returns it and the first port.
fn allocator(pairs: u16) -> (PortAllocator, u16) {
    let first = free_port_range(2 * pairs);
    let range = PortRange::new(first, first + 2 * pairs - 1).unwrap();
    (PortAllocator::new(range), first)
}

fn rtp_packet(seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 12 + payload.len()];
    let h = RtpHeader {
        marker: false,
        payload_type: 0,
        sequence: seq,
        timestamp: u32::from(seq) * 160,
        ssrc: 0xCAFE,
    };
    let n = h.write(payload, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

async fn peer() -> UdpSocket {
    UdpSocket::bind((LOOPBACK, 0)).await.unwrap()
}

/// A socket on another loopback address than the SDP peers' 127.0.0.1: a different host.
async fn stranger() -> UdpSocket {
    UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 66), 0))
        .await
        .unwrap()
}

fn rtp_from(ssrc: u32, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = rtp_packet(seq, payload);
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p
}

async fn recv_on(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 1500];
    let (n, from) = timeout(HANG, sock.recv_from(&mut buf))
        .await
        .expect("nothing arrived")
        .unwrap();
    (buf[..n].to_vec(), from)
}

async fn leg_recv(leg: &mut RtpLeg) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 1500];
    let (n, from) = timeout(HANG, leg.recv(&mut buf))
        .await
        .expect("no RTP arrived")
        .unwrap();
    (buf[..n].to_vec(), from)
}

#[tokio::test]
async fn legs_get_even_rtp_and_odd_rtcp_ports_until_the_range_is_exhausted() {
    let (alloc, first) = allocator(3);
    let legs: Vec<RtpLeg> = (0..3)
        .map(|_| RtpLeg::bind(LOOPBACK, &alloc).unwrap())
        .collect();
    let ports: Vec<u16> = legs.iter().map(|l| l.local_addr().port()).collect();
    assert_eq!(ports, vec![first, first + 2, first + 4]);
    for leg in &legs {
        assert_eq!(leg.local_addr().ip(), LOOPBACK);
        assert_eq!(leg.rtcp_addr().unwrap().port(), leg.local_addr().port() + 1);
    }
    assert_eq!(alloc.in_use(), 3);
    let err = RtpLeg::bind(LOOPBACK, &alloc).unwrap_err();
    assert!(
        matches!(err, RtpLegError::Exhausted { in_use: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&first.to_string()), "{err}");
}

#[tokio::test]
async fn ports_in_use_by_another_program_are_skipped() {
    let (alloc, first) = allocator(3);
    // Someone else holds the first pair's RTP port and the second pair's RTCP port.
    let _a = StdUdpSocket::bind((LOOPBACK, first)).unwrap();
    let _b = StdUdpSocket::bind((LOOPBACK, first + 3)).unwrap();
    let leg = RtpLeg::bind(LOOPBACK, &alloc).unwrap();
    assert_eq!(leg.local_addr().port(), first + 4);
    assert!(matches!(
        RtpLeg::bind(LOOPBACK, &alloc),
        Err(RtpLegError::Exhausted { in_use: 1, .. })
    ));
}

#[tokio::test]
async fn ports_come_back_when_the_leg_is_dropped() {
    let (alloc, first) = allocator(1);
    let leg = RtpLeg::bind(LOOPBACK, &alloc).unwrap();
    assert!(RtpLeg::bind(LOOPBACK, &alloc).is_err());
    drop(leg);
    assert_eq!(alloc.in_use(), 0);
    // Both ports are really closed, and the allocator hands them out again.
    drop(StdUdpSocket::bind((LOOPBACK, first)).unwrap());
    drop(StdUdpSocket::bind((LOOPBACK, first + 1)).unwrap());
    let again = RtpLeg::bind(LOOPBACK, &alloc).unwrap();
    assert_eq!(again.local_addr().port(), first);
}

#[tokio::test]
async fn an_address_that_is_not_local_is_a_bind_error_not_exhaustion() {
    let (alloc, _) = allocator(2);
    let err = RtpLeg::bind(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), &alloc).unwrap_err();
    assert!(matches!(err, RtpLegError::Bind { .. }), "{err}");
    assert_eq!(alloc.in_use(), 0);
}

#[tokio::test]
async fn media_goes_to_the_sdp_address_then_follows_the_rtp_source() {
    let (alloc, _) = allocator(1);
    let mut leg = RtpLeg::bind(LOOPBACK, &alloc).unwrap();
    assert!(matches!(
        leg.send(&rtp_packet(1, b"x")).await,
        Err(RtpLegError::NoRemote)
    ));

    let sdp_peer = peer().await;
    leg.set_remote(sdp_peer.local_addr().unwrap());
    leg.send(&rtp_packet(1, b"to-sdp")).await.unwrap();
    let (got, from) = recv_on(&sdp_peer).await;
    assert_eq!(RtpPacket::parse(&got).unwrap().payload, b"to-sdp");
    assert_eq!(from, leg.local_addr());

    // The phone is behind NAT: its RTP comes from another address.
    let nat = peer().await;
    nat.send_to(&rtp_packet(7, b"hello"), leg.local_addr())
        .await
        .unwrap();
    let (got, from) = leg_recv(&mut leg).await;
    assert_eq!(from, nat.local_addr().unwrap());
    assert_eq!(RtpPacket::parse(&got).unwrap().payload, b"hello");
    assert_eq!(leg.remote(), Some(nat.local_addr().unwrap()));
    leg.send(&rtp_packet(2, b"to-nat")).await.unwrap();
    let (got, _) = recv_on(&nat).await;
    assert_eq!(RtpPacket::parse(&got).unwrap().payload, b"to-nat");

    // NAT rebinding: the source moves again and media follows.
    let rebound = peer().await;
    rebound
        .send_to(&rtp_packet(8, b"moved"), leg.local_addr())
        .await
        .unwrap();
    leg_recv(&mut leg).await;
    leg.send(&rtp_packet(3, b"to-rebound")).await.unwrap();
    let (got, _) = recv_on(&rebound).await;
    assert_eq!(RtpPacket::parse(&got).unwrap().payload, b"to-rebound");

    // A re-INVITE with a new address: media goes there until its RTP arrives.
    let moved = peer().await;
    leg.set_remote(moved.local_addr().unwrap());
    leg.send(&rtp_packet(4, b"to-new-sdp")).await.unwrap();
    let (got, _) = recv_on(&moved).await;
    assert_eq!(RtpPacket::parse(&got).unwrap().payload, b"to-new-sdp");

    let stats = leg.stats();
    assert_eq!(stats.packets_out, 4);
    assert_eq!(stats.packets_in, 2);
    assert_eq!(stats.relatched, 2);
    assert_eq!(stats.dropped_malformed, 0);
}

#[tokio::test]
async fn malformed_datagrams_are_counted_dropped_and_never_latched() {
    let (alloc, _) = allocator(1);
    let mut leg = RtpLeg::bind(LOOPBACK, &alloc).unwrap();
    let sdp_peer = peer().await;
    leg.set_remote(sdp_peer.local_addr().unwrap());

    let attacker = peer().await;
    let mut stun = [0u8; 20];
    stun[1] = 1; // STUN binding request
    let mut rtcp = [0u8; 8];
    rtcp[0] = 0x80;
    rtcp[1] = 201; // RTCP receiver report
    let mut bad_padding = rtp_packet(1, b"ab");
    bad_padding[0] |= 0x20;
    *bad_padding.last_mut().unwrap() = 200;
    let mut dtls = [0u8; 13];
    dtls[0] = 22; // DTLS handshake record
    dtls[1..3].copy_from_slice(&[0xFE, 0xFD]);
    for d in [&b"hi"[..], &stun, &dtls, &rtcp, &bad_padding, &[0u8; 0]] {
        attacker.send_to(d, leg.local_addr()).await.unwrap();
    }
    // Larger than the receive buffer: possibly truncated, dropped.
    attacker
        .send_to(&rtp_packet(2, &[0xFF; 400]), leg.local_addr())
        .await
        .unwrap();
    let phone = peer().await;
    phone
        .send_to(&rtp_packet(3, b"real"), leg.local_addr())
        .await
        .unwrap();

    let mut buf = [0u8; 300];
    let (n, from) = timeout(HANG, leg.recv(&mut buf)).await.unwrap().unwrap();
    assert_eq!(from, phone.local_addr().unwrap());
    assert_eq!(RtpPacket::parse(&buf[..n]).unwrap().payload, b"real");
    assert_eq!(leg.remote(), Some(phone.local_addr().unwrap()));
    let stats = leg.stats();
    assert_eq!(stats.dropped_malformed, 4);
    assert_eq!(stats.stun_in, 1);
    assert_eq!(stats.dtls_in, 1);
    assert_eq!(stats.rtcp_in, 1);
    assert_eq!(stats.packets_in, 1);
    assert_eq!(stats.bytes_in, n as u64);
}

/// Sends `secs` of a `freq` tone as 20 ms μ-law packets from `from` (to its remote).
async fn send_tone(from: &mut RtpLeg, freq: f64, secs: u64) -> usize {
    let samples: Vec<i16> = tone(freq, 0.5, Duration::from_secs(secs), 8000)
        .iter()
        .map(|s| (s * 32767.0) as i16)
        .collect();
    let mut sender = RtpSender::random(8000);
    let mut payload = [0u8; 160];
    let mut packet = [0u8; 1500];
    let mut sent = 0;
    for (i, frame) in samples.chunks_exact(160).enumerate() {
        let n = g711::ulaw_encode(frame, &mut payload);
        let header = sender.audio(Duration::from_millis(20 * i as u64), 0, 160);
        let len = header.write(&payload[..n], &mut packet).unwrap();
        from.send(&packet[..len]).await.unwrap();
        sent += 1;
        if i % 10 == 9 {
            // Let the receiver drain its socket buffer now and then.
            tokio::task::yield_now().await;
        }
    }
    sent
}

/// Receives `count` packets, puts their decoded audio in sequence order, returns f32 samples.
async fn receive_tone(on: &mut RtpLeg, count: usize) -> Vec<f32> {
    let mut frames: Vec<(u16, Vec<i16>)> = Vec::with_capacity(count);
    let mut buf = [0u8; 1500];
    for _ in 0..count {
        let (n, _) = timeout(HANG, on.recv(&mut buf)).await.unwrap().unwrap();
        let p = RtpPacket::parse(&buf[..n]).unwrap();
        assert_eq!(p.payload_type, 0);
        let mut pcm = vec![0i16; p.payload.len()];
        g711::ulaw_decode(p.payload, &mut pcm);
        frames.push((p.sequence, pcm));
    }
    let base = frames[0].0;
    frames.sort_by_key(|(seq, _)| seq.wrapping_sub(base));
    frames
        .into_iter()
        .flat_map(|(_, pcm)| pcm)
        .map(|s| f32::from(s) / 32768.0)
        .collect()
}

#[tokio::test]
async fn a_ulaw_tone_crosses_two_legs_in_both_directions() {
    let (alloc, _) = allocator(2);
    let mut bridge = RtpLeg::bind(LOOPBACK, &alloc).unwrap();
    let mut phone = RtpLeg::bind(LOOPBACK, &alloc).unwrap();
    bridge.set_remote(phone.local_addr());
    phone.set_remote(bridge.local_addr());

    let (sent, heard) = tokio::join!(
        send_tone(&mut bridge, 1000.0, 1),
        receive_tone(&mut phone, 50)
    );
    assert_eq!(sent, 50);
    assert_tone(&heard, 8000, 1000.0, 5.0, -12.0);

    let (_, heard) = tokio::join!(
        send_tone(&mut phone, 440.0, 1),
        receive_tone(&mut bridge, 50)
    );
    assert_tone(&heard, 8000, 440.0, 5.0, -12.0);
    assert_eq!(bridge.stats().packets_in, 50);
    assert_eq!(phone.stats().bytes_in, 50 * 172);
}

#[tokio::test]
async fn a_stranger_cannot_take_over_while_the_phone_talks() {
    let (alloc, _) = allocator(1);
    let mut leg = RtpLeg::bind(LOOPBACK, &alloc).unwrap();
    let phone = peer().await;
    leg.set_remote(phone.local_addr().unwrap());
    let attacker = stranger().await;

    // The stranger sends a perfect stream (one SSRC, consecutive sequence numbers) in between
    // the phone's packets; every packet the leg hands out is the phone's.
    for seq in 0..40u16 {
        attacker
            .send_to(&rtp_from(0xBAD, seq, b"evil"), leg.local_addr())
            .await
            .unwrap();
        phone
            .send_to(&rtp_from(0xCAFE, seq, b"real"), leg.local_addr())
            .await
            .unwrap();
        let (got, from) = leg_recv(&mut leg).await;
        assert_eq!(from, phone.local_addr().unwrap());
        assert_eq!(RtpPacket::parse(&got).unwrap().payload, b"real");
    }
    // Our media still goes to the phone, not to the stranger.
    assert_eq!(leg.remote(), Some(phone.local_addr().unwrap()));
    leg.send(&rtp_packet(1, b"to-phone")).await.unwrap();
    let (got, _) = recv_on(&phone).await;
    assert_eq!(RtpPacket::parse(&got).unwrap().payload, b"to-phone");
    let stats = leg.stats();
    assert_eq!(stats.packets_in, 40);
    assert_eq!(stats.relatched, 0);
    // The last stranger packet may still be queued; all before it were counted.
    assert!(stats.dropped_source >= 39, "{stats:?}");
}

#[tokio::test]
async fn a_phone_behind_nat_is_learned_after_probation_and_media_follows() {
    let (alloc, _) = allocator(1);
    let mut leg = RtpLeg::bind(LOOPBACK, &alloc).unwrap();
    // The SDP names a private address nobody listens on; RTP comes from the NAT's address.
    leg.set_remote("127.0.0.1:9".parse().unwrap());
    let nat = stranger().await;
    for seq in 100..105u16 {
        nat.send_to(&rtp_from(0x5EED, seq, b"hi"), leg.local_addr())
            .await
            .unwrap();
    }
    // The first four are probation; the fifth is handed out and moves the target.
    let (got, from) = leg_recv(&mut leg).await;
    assert_eq!(from, nat.local_addr().unwrap());
    assert_eq!(RtpPacket::parse(&got).unwrap().sequence, 104);
    assert_eq!(leg.remote(), Some(nat.local_addr().unwrap()));
    leg.send(&rtp_packet(1, b"to-nat")).await.unwrap();
    let (got, _) = recv_on(&nat).await;
    assert_eq!(RtpPacket::parse(&got).unwrap().payload, b"to-nat");
    let stats = leg.stats();
    assert_eq!(stats.dropped_source, 4);
    assert_eq!(stats.relatched, 1);
}
