//! MICRO-BENCHMARK (it explains, it does not prove): the per-packet cost of the browser leg, the
//! sans-IO core (`media::browser_leg::BrowserLeg`) against the async shell (`WebRtcLeg`).
//!
//! * `core/in-memory`: one 20 ms Opus-sized packet through two connected cores, no socket:
//!   `send_rtp` + `poll_transmit` (SRTP protect) on one, `handle_datagram` + `poll_rtp` (SRTP
//!   unprotect) on the other. Allocations per packet are counted and printed first.
//! * `core/loopback-udp`: the same with each core on a blocking UDP socket on 127.0.0.1, one
//!   thread, no runtime: what a call actor pays, minus its wake-ups.
//! * `webrtc_leg/loopback-udp`: the same packet through two connected `WebRtcLeg`s (the current
//!   media path: tokio tasks, channels, interceptors), one packet in flight at a time.
//!
//! * `*/answer`: call set-up, a leg built and answering an offer.
//! * `receive/*`: one datagram from a browser's socket to the call's media task, 32 in flight,
//!   on a socket of the call's own (`recv_from`) against the shared port of
//!   `[media] webrtc_single_port` (the port's reader: `recvfrom`, demux, the call's queue; the
//!   call: `recv` and the copy into its buffer). One current-thread runtime, so both wake-ups
//!   are counted.
//!
//! Timings are process CPU time (user + system, from `getrusage`) per packet, not wall time, so
//! waiting on the other core or the scheduler is not counted. The box is shared: compare runs
//! taken side by side, never a figure alone.

use std::hint::black_box;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use srbridge::media::browser_leg::single_port::{PortShare, SinglePort};
use srbridge::media::browser_leg::stun::build_binding_request;
use srbridge::media::browser_leg::{BrowserLeg, BrowserLegEvent, IceCredentials};
use srbridge::media::webrtc_leg::{LegChannels, LegEvent, LegState, WebRtcLeg, WebRtcSettings};

#[path = "../tests/support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocations;

/// Process CPU time (user + system) so far.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a rusage into the pointer it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

const PAYLOAD: [u8; 80] = [0x5A; 80];
const OPUS_PT: u8 = 111;

/// Two cores, each optionally on a socket.
struct Pair {
    a: BrowserLeg,
    b: BrowserLeg,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
    sockets: Option<(UdpSocket, UdpSocket)>,
    seq: u16,
    buf: Vec<u8>,
}

impl Pair {
    fn new(on_sockets: bool) -> Pair {
        let (sockets, a_addr, b_addr) = if on_sockets {
            let sa = UdpSocket::bind("127.0.0.1:0").unwrap();
            let sb = UdpSocket::bind("127.0.0.1:0").unwrap();
            for s in [&sa, &sb] {
                s.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
            }
            let (a, b) = (sa.local_addr().unwrap(), sb.local_addr().unwrap());
            (Some((sa, sb)), a, b)
        } else {
            (
                None,
                "10.0.0.1:4000".parse().unwrap(),
                "10.0.0.2:5000".parse().unwrap(),
            )
        };
        let now = Instant::now();
        let s = WebRtcSettings::default();
        let (mut a, offer) = BrowserLeg::offer(now, &s, &[a_addr]).unwrap();
        let (b, answer) = BrowserLeg::answer(now, &s, &[b_addr], &offer).unwrap();
        a.accept_answer(now, &answer).unwrap();
        let mut pair = Pair {
            a,
            b,
            a_addr,
            b_addr,
            sockets,
            seq: 0,
            buf: vec![0; 2048],
        };
        let start = Instant::now();
        while !(pair.a.media_ready() && pair.b.media_ready()) {
            assert!(start.elapsed() < Duration::from_secs(10), "no connection");
            pair.carry();
            let now = Instant::now();
            pair.a.handle_timeout(now);
            pair.b.handle_timeout(now);
            while pair.a.poll_event().is_some() {}
            while pair.b.poll_event().is_some() {}
        }
        pair
    }

    /// Moves every queued datagram across (through the sockets when there are some).
    fn carry(&mut self) {
        for _ in 0..8 {
            let mut moved = false;
            while let Some(t) = self.a.poll_transmit() {
                moved = true;
                match &self.sockets {
                    Some((sa, _)) => {
                        sa.send_to(&t.payload, t.to).unwrap();
                    }
                    None => {
                        self.b
                            .handle_datagram(Instant::now(), self.b_addr, self.a_addr, &t.payload)
                    }
                }
            }
            while let Some(t) = self.b.poll_transmit() {
                moved = true;
                match &self.sockets {
                    Some((_, sb)) => {
                        sb.send_to(&t.payload, t.to).unwrap();
                    }
                    None => {
                        self.a
                            .handle_datagram(Instant::now(), self.a_addr, self.b_addr, &t.payload)
                    }
                }
            }
            if let Some((sa, sb)) = &self.sockets {
                while let Ok((n, from)) = sb.recv_from(&mut self.buf) {
                    self.b
                        .handle_datagram(Instant::now(), self.b_addr, from, &self.buf[..n]);
                    moved = true;
                }
                while let Ok((n, from)) = sa.recv_from(&mut self.buf) {
                    self.a
                        .handle_datagram(Instant::now(), self.a_addr, from, &self.buf[..n]);
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// One packet from a to b; returns its payload length as b saw it.
    fn one_packet(&mut self) -> usize {
        let now = Instant::now();
        self.seq = self.seq.wrapping_add(1);
        self.a
            .send_rtp(
                now,
                OPUS_PT,
                self.seq,
                u32::from(self.seq) * 960,
                false,
                &PAYLOAD,
            )
            .unwrap();
        let t = self.a.poll_transmit().unwrap();
        let n = match &self.sockets {
            Some((sa, sb)) => {
                sa.send_to(&t.payload, t.to).unwrap();
                let (n, from) = sb.recv_from(&mut self.buf).unwrap();
                self.b
                    .handle_datagram(now, self.b_addr, from, &self.buf[..n]);
                n
            }
            None => {
                self.b
                    .handle_datagram(now, self.b_addr, self.a_addr, &t.payload);
                t.payload.len()
            }
        };
        drop(t);
        let mut got = 0;
        while let Some(p) = self.b.poll_rtp() {
            got = p.payload.len();
        }
        assert!(n > 0 && got == PAYLOAD.len(), "the packet arrived");
        got
    }
}

fn core_in_memory(c: &mut Criterion) {
    let mut pair = Pair::new(false);
    for _ in 0..100 {
        pair.one_packet();
    }
    let before = allocations();
    for _ in 0..1000 {
        pair.one_packet();
    }
    let per_packet = (allocations() - before) as f64 / 1000.0;
    println!("core: {per_packet:.1} heap allocations per packet (protect + unprotect, both ends)");
    c.bench_function("core/in-memory: one packet a→b", |bench| {
        bench.iter_custom(|iters| {
            let start = cpu_time();
            for _ in 0..iters {
                black_box(pair.one_packet());
            }
            cpu_time() - start
        })
    });
}

fn core_loopback(c: &mut Criterion) {
    let mut pair = Pair::new(true);
    c.bench_function("core/loopback-udp: one packet a→b", |bench| {
        bench.iter_custom(|iters| {
            let start = cpu_time();
            for _ in 0..iters {
                black_box(pair.one_packet());
            }
            cpu_time() - start
        })
    });
    let _ = BrowserLegEvent::State(LegState::Connected);
}

async fn webrtc_pair() -> (WebRtcLeg, LegChannels, WebRtcLeg, LegChannels) {
    let s = WebRtcSettings {
        bind_ips: vec![IpAddr::from([127, 0, 0, 1])],
        ..WebRtcSettings::default()
    };
    let (a, mut ca) = WebRtcLeg::new(&s).await.unwrap();
    let (b, mut cb) = WebRtcLeg::new(&s).await.unwrap();
    let offer = a.create_offer().await.unwrap();
    let answer = b.accept_offer(&offer).await.unwrap();
    a.set_answer(&answer).await.unwrap();
    let (mut a_up, mut b_up) = (false, false);
    while !(a_up && b_up) {
        tokio::select! {
            Some(e) = ca.events.recv() => match e {
                LegEvent::LocalCandidate(c) => b.add_remote_candidate(&c).await.unwrap(),
                LegEvent::State(LegState::Connected) => a_up = true,
                _ => {}
            },
            Some(e) = cb.events.recv() => match e {
                LegEvent::LocalCandidate(c) => a.add_remote_candidate(&c).await.unwrap(),
                LegEvent::State(LegState::Connected) => b_up = true,
                _ => {}
            },
        }
    }
    (a, ca, b, cb)
}

fn webrtc_leg_loopback(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (a, _ca, _b, mut cb) = rt.block_on(webrtc_pair());
    let pt = a.negotiated().unwrap().opus.unwrap();
    let mut seq = 0u16;
    c.bench_function("webrtc_leg/loopback-udp: one packet a→b", |bench| {
        bench.iter_custom(|iters| {
            rt.block_on(async {
                let start = cpu_time();
                for _ in 0..iters {
                    seq = seq.wrapping_add(1);
                    a.send_rtp(pt, seq, u32::from(seq) * 960, false, &PAYLOAD)
                        .await
                        .unwrap();
                    let p = cb.rtp.recv().await.unwrap();
                    black_box(p.payload.len());
                }
                cpu_time() - start
            })
        })
    });
}

/// Call set-up: a leg built and answering a browser's offer (the DTLS certificate is made here).
fn answer_offer(c: &mut Criterion) {
    let s = WebRtcSettings {
        bind_ips: vec![IpAddr::from([127, 0, 0, 1])],
        ..WebRtcSettings::default()
    };
    let here: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    let (_, offer) = BrowserLeg::offer(Instant::now(), &s, &[here]).unwrap();
    c.bench_function("core/answer: build + answer an offer", |bench| {
        bench.iter_custom(|iters| {
            let start = cpu_time();
            for _ in 0..iters {
                black_box(BrowserLeg::answer(Instant::now(), &s, &[here], &offer).unwrap());
            }
            cpu_time() - start
        })
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    c.bench_function("webrtc_leg/answer: new + accept_offer + close", |bench| {
        bench.iter_custom(|iters| {
            rt.block_on(async {
                let start = cpu_time();
                for _ in 0..iters {
                    let (leg, _channels) = WebRtcLeg::new(&s).await.unwrap();
                    black_box(leg.accept_offer(&offer).await.unwrap());
                    leg.close().await.unwrap();
                }
                cpu_time() - start
            })
        })
    });
}

/// SRTP-sized datagram (12-byte header, 80-byte payload, 10-byte tag).
const DATAGRAM: [u8; 102] = [0x80; 102];
const IN_FLIGHT: u64 = 32;

/// Sends `iters` datagrams from `client` to `to`, `IN_FLIGHT` at a time, each burst received
/// with `receive` (given `state`, which it keeps between calls); returns the CPU time taken.
async fn carry_bursts<S>(
    client: &UdpSocket,
    to: SocketAddr,
    iters: u64,
    state: &mut S,
    receive: impl AsyncReceive<S>,
) -> Duration {
    let start = cpu_time();
    let mut buf = [0u8; 1500];
    let mut left = iters;
    while left > 0 {
        let n = left.min(IN_FLIGHT);
        for _ in 0..n {
            client.send_to(&DATAGRAM, to).unwrap();
        }
        for _ in 0..n {
            receive.receive(state, &mut buf).await;
        }
        left -= n;
    }
    black_box(&buf);
    cpu_time() - start
}

/// One way of receiving a datagram into the call's buffer.
trait AsyncReceive<S> {
    async fn receive(&self, state: &mut S, buf: &mut [u8]);
}

struct OwnSocket;

impl AsyncReceive<tokio::net::UdpSocket> for OwnSocket {
    async fn receive(&self, socket: &mut tokio::net::UdpSocket, buf: &mut [u8]) {
        black_box(socket.recv_from(buf).await.unwrap());
    }
}

struct SharedPort;

impl AsyncReceive<PortShare> for SharedPort {
    async fn receive(&self, share: &mut PortShare, buf: &mut [u8]) {
        // As the call's transport does: the routed bytes into the task's buffer.
        let (_, bytes) = share.recv().await.unwrap();
        buf[..bytes.len()].copy_from_slice(&bytes);
    }
}

fn receive_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut own = rt.block_on(async { tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap() });
    let own_addr = own.local_addr().unwrap();
    c.bench_function("receive/own-socket: one datagram to the call", |bench| {
        bench.iter_custom(|iters| {
            rt.block_on(carry_bursts(&client, own_addr, iters, &mut own, OwnSocket))
        })
    });
    let credentials = IceCredentials {
        ufrag: "bench".into(),
        pwd: "bench-password-0123456789".into(),
    };
    let (port, mut share) = rt.block_on(async {
        let port = SinglePort::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let share = port.attach(&credentials).await.unwrap();
        (port, share)
    });
    // The client's address is bound to the call by a valid check, as a browser's first one.
    let check = build_binding_request("bench:client", &credentials.pwd, [0; 12]);
    client.send_to(&check, port.local_addr()).unwrap();
    rt.block_on(share.recv()).unwrap();
    c.bench_function("receive/single-port: one datagram to the call", |bench| {
        bench.iter_custom(|iters| {
            rt.block_on(carry_bursts(
                &client,
                port.local_addr(),
                iters,
                &mut share,
                SharedPort,
            ))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = core_in_memory, core_loopback, webrtc_leg_loopback, answer_offer, receive_path
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
