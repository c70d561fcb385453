//! Two cores wired to each other in memory with a fake clock: no socket, no sleep.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::media::webrtc_leg::{LegCodec, LegState, WebRtcLegError, WebRtcSettings};

const OFFERER: &str = "10.0.0.1:40000";
const ANSWERER: &str = "10.0.0.2:50000";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The two legs, the wire between them and the clock.
struct Net {
    a: BrowserLeg,
    b: BrowserLeg,
    now: Instant,
    a_events: Vec<BrowserLegEvent>,
    b_events: Vec<BrowserLegEvent>,
    a_rtp: Vec<crate::media::webrtc_leg::InboundRtp>,
    b_rtp: Vec<crate::media::webrtc_leg::InboundRtp>,
    /// Datagrams that went each way.
    carried: usize,
    /// The offerer's datagrams no longer reach the answerer (it vanished).
    a_cut: bool,
}

impl Net {
    fn new(settings: &WebRtcSettings) -> Net {
        let now = Instant::now();
        let (mut a, offer) = BrowserLeg::offer(now, settings, &[addr(OFFERER)]).unwrap();
        let (b, answer) = BrowserLeg::answer(now, settings, &[addr(ANSWERER)], &offer).unwrap();
        assert!(answer.contains("50000 typ host"), "{answer}");
        assert!(offer.contains("40000 typ host"), "{offer}");
        let negotiated = a.accept_answer(now, &answer).unwrap();
        assert_eq!(negotiated.preferred, Some(LegCodec::Opus));
        Net {
            a,
            b,
            now,
            a_events: vec![],
            b_events: vec![],
            a_rtp: vec![],
            b_rtp: vec![],
            carried: 0,
            a_cut: false,
        }
    }

    /// Carries every queued datagram across (repeatedly, as answers cause answers) and drains
    /// what each leg has for the application.
    fn exchange(&mut self) {
        loop {
            let mut moved = false;
            while let Some(t) = self.a.poll_transmit() {
                assert_eq!(t.from, addr(OFFERER));
                if t.to == addr(ANSWERER) && !self.a_cut {
                    self.b.handle_datagram(self.now, t.to, t.from, &t.payload);
                    moved = true;
                    self.carried += 1;
                }
            }
            while let Some(t) = self.b.poll_transmit() {
                assert_eq!(t.from, addr(ANSWERER));
                if t.to == addr(OFFERER) {
                    self.a.handle_datagram(self.now, t.to, t.from, &t.payload);
                    moved = true;
                    self.carried += 1;
                }
            }
            while let Some(p) = self.a.poll_rtp() {
                self.a_rtp.push(p);
            }
            while let Some(p) = self.b.poll_rtp() {
                self.b_rtp.push(p);
            }
            while let Some(e) = self.a.poll_event() {
                self.a_events.push(e);
            }
            while let Some(e) = self.b.poll_event() {
                self.b_events.push(e);
            }
            if !moved {
                return;
            }
        }
    }

    /// Advances the clock to the next deadline (at most `step`) and fires due timers.
    fn tick(&mut self, step: Duration) {
        let cap = self.now + step;
        let next = [self.a.poll_timeout(), self.b.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(cap)
            .min(cap);
        self.now = next.max(self.now);
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
        self.exchange();
    }

    /// Runs until `done` or `limit` of fake time passed.
    fn run_until(&mut self, limit: Duration, done: impl Fn(&Net) -> bool) -> bool {
        let end = self.now + limit;
        self.exchange();
        while self.now < end {
            if done(self) {
                return true;
            }
            self.tick(Duration::from_millis(20));
        }
        done(self)
    }
}

fn connected(events: &[BrowserLegEvent]) -> bool {
    events.contains(&BrowserLegEvent::State(LegState::Connected))
}

fn connected_pair() -> Net {
    let mut net = Net::new(&WebRtcSettings::default());
    let up = net.run_until(Duration::from_secs(10), |n| {
        connected(&n.a_events) && connected(&n.b_events)
    });
    assert!(
        up,
        "ICE + DTLS did not complete: a {:?}, b {:?}",
        net.a_events, net.b_events
    );
    net
}

#[test]
fn ice_and_dtls_complete_and_media_becomes_ready() {
    let net = connected_pair();
    assert!(net.a.media_ready() && net.b.media_ready());
    assert_eq!(net.a.state(), LegState::Connected);
    assert!(
        net.carried > 4,
        "STUN and DTLS went across: {}",
        net.carried
    );
}

#[test]
fn rtp_flows_both_ways_with_its_header_and_payload() {
    let mut net = connected_pair();
    let pt = net.a.negotiated().unwrap().opus.unwrap();
    for i in 0..50u16 {
        let payload = [i as u8; 40];
        net.a
            .send_rtp(net.now, pt, 1000 + i, 960 * u32::from(i), i == 0, &payload)
            .unwrap();
        net.b
            .send_rtp(
                net.now,
                pt,
                7 + i,
                480 * u32::from(i),
                false,
                &payload[..20],
            )
            .unwrap();
        net.tick(Duration::from_millis(20));
    }
    net.exchange();
    assert_eq!(net.b_rtp.len(), 50, "a→b");
    assert_eq!(net.a_rtp.len(), 50, "b→a");
    for (i, p) in net.b_rtp.iter().enumerate() {
        assert_eq!(p.payload_type, pt);
        assert_eq!(p.seq, 1000 + i as u16);
        assert_eq!(p.timestamp, 960 * i as u32);
        assert_eq!(p.marker, i == 0);
        assert_eq!(p.ssrc, net.a.ssrc());
        assert_eq!(&p.payload[..], &[i as u8; 40][..]);
    }
    assert_eq!(&net.a_rtp[3].payload[..], &[3u8; 20][..]);
}

#[test]
fn the_receivers_loss_reports_reach_the_sender() {
    let mut net = connected_pair();
    let pt = net.a.negotiated().unwrap().opus.unwrap();
    // 10 s of packets with every fourth one lost on the wire.
    let mut seq = 0u16;
    let got_report = |n: &Net| {
        n.a_events
            .iter()
            .any(|e| matches!(e, BrowserLegEvent::ReceiverReport(r) if r.total_lost > 0))
    };
    for _ in 0..500 {
        net.a
            .send_rtp(net.now, pt, seq, u32::from(seq) * 960, false, &[1; 30])
            .unwrap();
        seq = seq.wrapping_add(1);
        if seq.is_multiple_of(4) {
            // Dropped: taken from the queue, never delivered.
            while net.a.poll_transmit().is_some() {}
        }
        net.tick(Duration::from_millis(20));
        if got_report(&net) {
            break;
        }
    }
    let report = net.a_events.iter().find_map(|e| match e {
        BrowserLegEvent::ReceiverReport(r) if r.total_lost > 0 => Some(*r),
        _ => None,
    });
    let report = report.unwrap_or_else(|| panic!("no loss report: {:?}", net.a_events));
    assert!(
        report.fraction_lost > 0.1 && report.fraction_lost < 0.5,
        "{report:?}"
    );
}

#[test]
fn close_is_seen_by_both_sides() {
    let mut net = connected_pair();
    net.a.close();
    net.a.close(); // idempotent
    assert!(net.a.poll_timeout().is_none());
    let seen = net.run_until(Duration::from_secs(2), |n| {
        n.b_events
            .contains(&BrowserLegEvent::State(LegState::Closed))
    });
    assert!(seen, "b did not see the close: {:?}", net.b_events);
    let closed_a = net
        .a_events
        .iter()
        .filter(|e| **e == BrowserLegEvent::State(LegState::Closed))
        .count();
    assert_eq!(closed_a, 1, "Closed once: {:?}", net.a_events);
    assert!(matches!(
        net.a.send_rtp(net.now, 111, 0, 0, false, &[0]),
        Err(WebRtcLegError::Closed)
    ));
}

#[test]
fn a_silent_browser_fails_the_leg() {
    let settings = WebRtcSettings {
        ice_disconnected_timeout: Duration::from_secs(2),
        ice_failed_timeout: Duration::from_secs(3),
        ..WebRtcSettings::default()
    };
    let mut net = Net::new(&settings);
    assert!(net.run_until(Duration::from_secs(10), |n| connected(&n.b_events)));
    // The browser vanishes: nothing of a reaches b any more.
    net.a_cut = true;
    let failed = net.run_until(Duration::from_secs(30), |n| {
        n.b_events
            .contains(&BrowserLegEvent::State(LegState::Failed))
    });
    assert!(failed, "b never failed: {:?}", net.b_events);
    assert!(
        net.b_events
            .contains(&BrowserLegEvent::State(LegState::Disconnected)),
        "{:?}",
        net.b_events
    );
}

#[test]
fn bad_offers_candidates_and_sends_are_clear_errors() {
    let now = Instant::now();
    let s = WebRtcSettings::default();
    let here = [addr(ANSWERER)];
    assert!(matches!(
        BrowserLeg::answer(now, &s, &here, "v=0\r\n"),
        Err(WebRtcLegError::BadSdp { what: "offer", .. })
    ));
    assert!(matches!(
        BrowserLeg::answer(now, &s, &here, "garbage m=audio"),
        Err(WebRtcLegError::NoCommonCodec)
    ));
    let g722 = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
                m=audio 9 UDP/TLS/RTP/SAVPF 9\r\na=rtpmap:9 G722/8000\r\n";
    assert!(matches!(
        BrowserLeg::answer(now, &s, &here, g722),
        Err(WebRtcLegError::NoCommonCodec)
    ));
    let (_, offer) = BrowserLeg::offer(now, &s, &[addr(OFFERER)]).unwrap();
    let mangled = offer.replace("a=fingerprint", "a=fingerprunt");
    assert!(BrowserLeg::answer(now, &s, &here, &mangled).is_err());

    let (mut b, _) = BrowserLeg::answer(now, &s, &here, &offer).unwrap();
    assert!(matches!(
        b.add_remote_candidate("not json"),
        Err(WebRtcLegError::BadCandidate(_))
    ));
    assert!(matches!(
        b.add_remote_candidate(r#"{"candidate":"candidate:nonsense"}"#),
        Err(WebRtcLegError::BadCandidate(_))
    ));
    b.add_remote_candidate(r#"{"candidate":""}"#).unwrap();
    assert!(matches!(
        b.send_rtp(now, 96, 0, 0, false, &[0]),
        Err(WebRtcLegError::NotNegotiated(96))
    ));
    let pt = b.negotiated().unwrap().opus.unwrap();
    assert!(
        b.send_rtp(now, pt, 0, 0, false, &[0]).is_err(),
        "no SRTP keys yet"
    );
    assert!(!b.media_ready());
}

#[test]
fn garbage_datagrams_never_panic_nor_connect() {
    let now = Instant::now();
    let s = WebRtcSettings::default();
    let (_, offer) = BrowserLeg::offer(now, &s, &[addr(OFFERER)]).unwrap();
    let (mut b, _) = BrowserLeg::answer(now, &s, &[addr(ANSWERER)], &offer).unwrap();
    let stranger = addr("203.0.113.9:1234");
    for first in 0u8..=255 {
        for len in [0usize, 1, 12, 13, 20, 64, 300] {
            let mut d = vec![0xA5u8; len];
            if let Some(x) = d.first_mut() {
                *x = first;
            }
            b.handle_datagram(now, addr(ANSWERER), stranger, &d);
        }
    }
    b.handle_timeout(now + Duration::from_millis(100));
    assert!(b.poll_rtp().is_none(), "garbage became RTP");
    while let Some(e) = b.poll_event() {
        assert_ne!(e, BrowserLegEvent::State(LegState::Connected));
    }
    assert!(!b.media_ready());
}

#[test]
fn pcmu_only_offers_are_answered_with_pcmu_and_telephone_event() {
    let now = Instant::now();
    let browser = WebRtcSettings {
        codecs: vec![LegCodec::Pcmu, LegCodec::TelephoneEvent8k],
        ..WebRtcSettings::default()
    };
    let (_, offer) = BrowserLeg::offer(now, &browser, &[addr(OFFERER)]).unwrap();
    let (b, answer) =
        BrowserLeg::answer(now, &WebRtcSettings::default(), &[addr(ANSWERER)], &offer).unwrap();
    let n = b.negotiated().unwrap();
    assert_eq!(n.preferred, Some(LegCodec::Pcmu));
    assert_eq!(n.pcmu, Some(0));
    assert_eq!(n.telephone_event_8k, Some(126));
    assert_eq!(n.opus, None);
    assert!(!answer.contains("srbridge-rate"), "{answer}");
}

#[test]
fn credentials_are_random_and_in_the_answer() {
    let now = Instant::now();
    let s = WebRtcSettings::default();
    let (_, offer) = BrowserLeg::offer(now, &s, &[addr(OFFERER)]).unwrap();
    let (b1, answer) = BrowserLeg::answer(now, &s, &[addr(ANSWERER)], &offer).unwrap();
    let (b2, _) = BrowserLeg::answer(now, &s, &[addr(ANSWERER)], &offer).unwrap();
    let c = b1.ice_credentials();
    assert_ne!(c, b2.ice_credentials());
    assert!(
        answer.contains(&format!("a=ice-ufrag:{}", c.ufrag)),
        "{answer}"
    );
    assert!(answer.contains(&format!("a=ice-pwd:{}", c.pwd)));
    assert!(
        !format!("{c:?}").contains(&c.pwd),
        "Debug hides the password"
    );
}
