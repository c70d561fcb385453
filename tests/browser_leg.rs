//! The sans-IO browser leg (`media::browser_leg`) in its tokio shell, against a webrtc-rs peer
//! standing in for the browser (the async `WebRtcLeg` that tests/support/webrtc_peer.rs wraps):
//! offer → answer → connected, a tone sent as Opus arrives as the same tone both ways, the
//! candidates come from the configured port range, and every call can share one UDP port.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use srbridge::media::browser_leg::shell::{answer_on_own_port, BrowserLegHandle, SinglePort};
use srbridge::media::browser_leg::BrowserLegEvent;
use srbridge::media::jitter::JitterConfig;
use srbridge::media::opus::{OpusEncoderConfig, FRAME_SAMPLES, MAX_OPUS_PACKET, PCM_RATE};
use srbridge::media::rtp_leg::{PortAllocator, PortRange};
use srbridge::media::transcode::{BrowserToSip, Linear16, RtpClock, SampleCodec, SipToBrowser};
use srbridge::media::webrtc_leg::{
    InboundRtp, LegChannels, LegEvent, LegState, WebRtcLeg, WebRtcSettings,
};
use support::audio::assert_tone;
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(15);
const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn settings() -> WebRtcSettings {
    WebRtcSettings {
        bind_ips: vec![LOCALHOST],
        ..WebRtcSettings::default()
    }
}

/// The browser stand-in: a webrtc-rs peer that offers.
async fn browser() -> (WebRtcLeg, LegChannels, String) {
    let (leg, channels) = WebRtcLeg::new(&settings()).await.unwrap();
    let offer = leg.create_offer().await.unwrap();
    (leg, channels, offer)
}

/// Forwards the browser's trickled candidates until both sides report `Connected`.
async fn connect(browser: &WebRtcLeg, bc: &mut LegChannels, bridge: &mut BrowserLegHandle) {
    let (mut browser_up, mut bridge_up) = (false, false);
    let deadline = tokio::time::Instant::now() + WAIT;
    while !(browser_up && bridge_up) {
        let mut candidate = None;
        tokio::select! {
            Some(e) = bc.events.recv() => match e {
                LegEvent::LocalCandidate(c) => candidate = Some(c),
                LegEvent::State(LegState::Connected) => browser_up = true,
                LegEvent::State(s @ (LegState::Failed | LegState::Closed)) => panic!("browser: {s:?}"),
                _ => {}
            },
            Some(e) = bridge.events.recv() => match e {
                BrowserLegEvent::State(LegState::Connected) => bridge_up = true,
                BrowserLegEvent::State(s @ (LegState::Failed | LegState::Closed)) => panic!("bridge: {s:?}"),
                _ => {}
            },
            _ = tokio::time::sleep_until(deadline) => {
                panic!("did not connect (browser {browser_up}, bridge {bridge_up})")
            }
        }
        if let Some(c) = candidate {
            bridge.add_remote_candidate(&c).await.unwrap();
        }
    }
    assert!(browser.media_ready());
}

/// 2 s of a `hz` tone encoded to Opus frames as the bridge's SIP→browser path makes them.
fn opus_tone(hz: f64) -> Vec<(u16, u32, bool, Vec<u8>)> {
    let mut t = SipToBrowser::new(
        Linear16,
        JitterConfig::audio(PCM_RATE),
        OpusEncoderConfig::default(),
        RtpClock::random(6),
    )
    .unwrap();
    let tone = support::audio::tone(hz, 0.5, Duration::from_secs(2), PCM_RATE);
    let mut pcm = [0i16; FRAME_SAMPLES];
    let mut l16 = [0u8; FRAME_SAMPLES * 2];
    let mut out = [0u8; MAX_OPUS_PACKET];
    let mut frames = Vec::new();
    for (i, chunk) in tone.chunks(FRAME_SAMPLES).enumerate() {
        for (d, s) in pcm.iter_mut().zip(chunk) {
            *d = (s * 32767.0) as i16;
        }
        let n = Linear16.encode(&pcm, &mut l16);
        t.push(1, i as u16, i as u32 * 160, &l16[..n], i as u64 * 20);
        let f = t.pull(&mut out).unwrap();
        frames.push((
            f.stamp.seq,
            f.stamp.timestamp,
            f.stamp.marker,
            out[..f.len].to_vec(),
        ));
    }
    frames
}

/// Decodes what arrives on `rx` (until 1 s of silence) to 8 kHz samples.
async fn receive_tone(rx: &mut mpsc::Receiver<InboundRtp>, opus_pt: u8) -> Vec<f32> {
    let mut decoder = BrowserToSip::with_defaults().unwrap();
    let mut received = Vec::new();
    let mut frame = [0i16; FRAME_SAMPLES];
    let start = tokio::time::Instant::now();
    // The first packet may take a while on a loaded machine; after it, 1 s of silence ends.
    let mut wait = WAIT;
    while let Ok(Some(p)) = timeout(wait, rx.recv()).await {
        wait = Duration::from_secs(1);
        assert_eq!(p.payload_type, opus_pt);
        let at = start.elapsed().as_millis() as u64;
        decoder.push(p.ssrc, p.seq, p.timestamp, &p.payload, at);
        decoder.pull(&mut frame);
        received.extend(frame.iter().map(|s| f32::from(*s) / 32768.0));
    }
    received
}

fn assert_is_tone(received: &[f32], hz: f64, what: &str) {
    assert!(
        received.len() as f64 / f64::from(PCM_RATE) > 1.5,
        "{what}: only {} samples arrived",
        received.len()
    );
    assert_tone(received, PCM_RATE, hz, 15.0, -12.0);
}

/// Sends `hz` from the browser to the bridge and `hz * 1.5` back, at once, paced 20 ms.
/// Returns the sequence number and timestamp that continue the browser's stream.
async fn tones_both_ways(
    browser: &WebRtcLeg,
    bc: &mut LegChannels,
    bridge: &mut BrowserLegHandle,
    hz: f64,
) -> (u16, u32) {
    let pt = browser.negotiated().unwrap().opus.unwrap();
    assert_eq!(bridge.negotiated().opus, Some(pt));
    let (up, down) = (opus_tone(hz), opus_tone(hz * 1.5));
    let to_browser = bridge.sender();
    let send = async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for ((s, t, m, p), (s2, t2, m2, p2)) in up.iter().zip(&down) {
            tick.tick().await;
            browser.send_rtp(pt, *s, *t, *m, p).await.unwrap();
            to_browser.send_rtp(pt, *s2, *t2, *m2, p2).await.unwrap();
        }
    };
    let (at_bridge, at_browser, ()) = tokio::join!(
        receive_tone(&mut bridge.rtp, pt),
        receive_tone(&mut bc.rtp, pt),
        send
    );
    assert_is_tone(&at_bridge, hz, "browser → bridge");
    assert_is_tone(&at_browser, hz * 1.5, "bridge → browser");
    let (seq, ts, _, _) = up.last().unwrap();
    (seq.wrapping_add(1), ts.wrapping_add(960))
}

/// The RTP (component 1) candidates of an SDP; webrtc-rs repeats each as component 2 although
/// rtcp-mux is negotiated.
fn candidate_ports(sdp: &str) -> Vec<SocketAddr> {
    sdp.lines()
        .filter(|l| l.starts_with("a=candidate:") && l.split_whitespace().nth(1) == Some("1"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{}:{}", f[4], f[5]).parse().unwrap()
        })
        .collect()
}

/// The browser closing is seen by the bridge's leg as `Closed` (DTLS close_notify).
async fn browser_close_is_seen(browser: WebRtcLeg, bridge: &mut BrowserLegHandle) {
    browser.close().await.unwrap();
    let ended = timeout(WAIT, async {
        loop {
            match bridge.events.recv().await {
                Some(BrowserLegEvent::State(s @ (LegState::Closed | LegState::Failed))) => {
                    return s
                }
                Some(_) => {}
                None => panic!("bridge events ended without a state change"),
            }
        }
    })
    .await
    .expect("the bridge never noticed the browser closing");
    assert_eq!(ended, LegState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_range_a_tone_as_opus_arrives_as_the_same_tone_both_ways() {
    let base = support::ports::free_port_range(10);
    let ports = PortAllocator::new(PortRange::new(base, base + 9).unwrap());
    let (browser, mut bc, offer) = browser().await;
    let (mut bridge, answer) = answer_on_own_port(&settings(), Some(&ports), LOCALHOST, &offer)
        .await
        .unwrap();
    let candidates = candidate_ports(&answer);
    assert_eq!(candidates.len(), 1, "{answer}");
    assert!(
        (base..=base + 9).contains(&candidates[0].port()),
        "{candidates:?} outside {base}-{}",
        base + 9
    );
    assert_eq!(candidates, bridge.local_addrs());
    assert_eq!(ports.in_use(), 1);
    browser.set_answer(&answer).await.unwrap();
    connect(&browser, &mut bc, &mut bridge).await;
    tones_both_ways(&browser, &mut bc, &mut bridge, 1000.0).await;
    browser_close_is_seen(browser, &mut bridge).await;
    bridge.close().await;
    assert_eq!(ports.in_use(), 0, "the port pair is given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_port_two_simultaneous_calls_each_get_their_own_tone() {
    let port = SinglePort::bind(SocketAddr::new(LOCALHOST, 0))
        .await
        .unwrap();
    let (browser1, mut bc1, offer1) = browser().await;
    let (browser2, mut bc2, offer2) = browser().await;
    let (mut bridge1, answer1) = port.answer(&settings(), &offer1).await.unwrap();
    let (mut bridge2, answer2) = port.answer(&settings(), &offer2).await.unwrap();
    assert_eq!(candidate_ports(&answer1), vec![port.local_addr()]);
    assert_eq!(candidate_ports(&answer2), vec![port.local_addr()]);
    browser1.set_answer(&answer1).await.unwrap();
    browser2.set_answer(&answer2).await.unwrap();
    tokio::join!(
        connect(&browser1, &mut bc1, &mut bridge1),
        connect(&browser2, &mut bc2, &mut bridge2)
    );
    let (_, (next_seq, next_ts)) = tokio::join!(
        tones_both_ways(&browser1, &mut bc1, &mut bridge1, 600.0),
        tones_both_ways(&browser2, &mut bc2, &mut bridge2, 1000.0)
    );
    // A stranger's datagrams on the shared port reach no call and are counted.
    let stranger = tokio::net::UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let srtp_like = [0x80u8, 111, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 9, 9, 9, 9];
    for _ in 0..5 {
        stranger
            .send_to(&srtp_like, port.local_addr())
            .await
            .unwrap();
    }
    let counted = timeout(WAIT, async {
        loop {
            if port.counters().await.unknown_source >= 5 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(counted.is_ok(), "{:?}", port.counters().await);
    browser_close_is_seen(browser1, &mut bridge1).await;
    bridge1.close().await;
    // The other call is untouched by the first one ending.
    let pt = browser2.negotiated().unwrap().opus.unwrap();
    let frames = opus_tone(1000.0);
    for (i, (_, _, _, p)) in frames.iter().take(10).enumerate() {
        let (seq, ts) = (
            next_seq.wrapping_add(i as u16),
            next_ts.wrapping_add(960 * i as u32),
        );
        browser2.send_rtp(pt, seq, ts, false, p).await.unwrap();
    }
    let p = timeout(WAIT, bridge2.rtp.recv()).await.unwrap().unwrap();
    assert_eq!(p.payload_type, pt);
    browser2.close().await.unwrap();
    bridge2.close().await;
}
