//! The browser media leg over real sockets on 127.0.0.1: two `WebRtcLeg`s negotiate (offer/answer
//! plus trickled candidates exchanged by the test), one sends a 1 kHz tone as Opus, the other
//! receives and decodes it, and the audio is checked by content. Also: Chrome-style offers, bad
//! input, the port range, and close() reaching the other side.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use srbridge::media::jitter::JitterConfig;
use srbridge::media::opus::{OpusEncoderConfig, FRAME_SAMPLES, MAX_OPUS_PACKET, PCM_RATE};
use srbridge::media::rtp_leg::{PortAllocator, PortRange};
use srbridge::media::transcode::{BrowserToSip, Linear16, RtpClock, SampleCodec, SipToBrowser};
use srbridge::media::webrtc_leg::{
    LegChannels, LegCodec, LegEvent, LegState, WebRtcLeg, WebRtcLegError, WebRtcSettings,
};
use support::audio::assert_tone;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn settings() -> WebRtcSettings {
    WebRtcSettings {
        bind_ips: vec![IpAddr::from([127, 0, 0, 1])],
        ..WebRtcSettings::default()
    }
}

/// Forwards candidates between the legs until both report `Connected`.
async fn connect(a: &WebRtcLeg, ca: &mut LegChannels, b: &WebRtcLeg, cb: &mut LegChannels) {
    let (mut a_up, mut b_up) = (false, false);
    let deadline = tokio::time::Instant::now() + WAIT;
    while !(a_up && b_up) {
        tokio::select! {
            Some(e) = ca.events.recv() => match e {
                LegEvent::LocalCandidate(c) => b.add_remote_candidate(&c).await.unwrap(),
                LegEvent::State(LegState::Connected) => a_up = true,
                LegEvent::State(s @ (LegState::Failed | LegState::Closed)) => panic!("a: {s:?}"),
                _ => {}
            },
            Some(e) = cb.events.recv() => match e {
                LegEvent::LocalCandidate(c) => a.add_remote_candidate(&c).await.unwrap(),
                LegEvent::State(LegState::Connected) => b_up = true,
                LegEvent::State(s @ (LegState::Failed | LegState::Closed)) => panic!("b: {s:?}"),
                _ => {}
            },
            _ = tokio::time::sleep_until(deadline) => panic!("legs did not connect (a {a_up}, b {b_up})"),
        }
    }
}

async fn pair() -> (WebRtcLeg, LegChannels, WebRtcLeg, LegChannels) {
    pair_with(&settings()).await
}

async fn pair_with(s: &WebRtcSettings) -> (WebRtcLeg, LegChannels, WebRtcLeg, LegChannels) {
    let (a, mut ca) = WebRtcLeg::new(s).await.unwrap();
    let (b, mut cb) = WebRtcLeg::new(s).await.unwrap();
    let offer = a.create_offer().await.unwrap();
    let answer = b.accept_offer(&offer).await.unwrap();
    let negotiated = a.set_answer(&answer).await.unwrap();
    assert_eq!(negotiated.preferred, Some(LegCodec::Opus));
    connect(&a, &mut ca, &b, &mut cb).await;
    (a, ca, b, cb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tone_sent_as_opus_arrives_as_the_same_tone() {
    let (a, _ca, b, mut cb) = pair().await;
    let opus_pt = a.negotiated().unwrap().opus.unwrap();

    // Sender: 2 s of a 1 kHz tone at 8 kHz through the SIP→browser transcoder, one frame per 20 ms.
    let sender = tokio::spawn(async move {
        let mut t = SipToBrowser::new(
            Linear16,
            JitterConfig::audio(PCM_RATE),
            OpusEncoderConfig::default(),
            RtpClock::random(6),
        )
        .unwrap();
        let tone = support::audio::tone(1000.0, 0.5, Duration::from_secs(2), PCM_RATE);
        let mut pcm = [0i16; FRAME_SAMPLES];
        let mut l16 = [0u8; FRAME_SAMPLES * 2];
        let mut out = [0u8; MAX_OPUS_PACKET];
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for (i, chunk) in tone.chunks(FRAME_SAMPLES).enumerate() {
            tick.tick().await;
            for (d, s) in pcm.iter_mut().zip(chunk) {
                *d = (s * 32767.0) as i16;
            }
            let n = Linear16.encode(&pcm, &mut l16);
            t.push(1, i as u16, i as u32 * 160, &l16[..n], i as u64 * 20);
            let f = t.pull(&mut out).unwrap();
            a.send_rtp(
                opus_pt,
                f.stamp.seq,
                f.stamp.timestamp,
                f.stamp.marker,
                &out[..f.len],
            )
            .await
            .unwrap();
        }
        a
    });

    // Receiver: browser→SIP transcoder fed by the leg's RTP, pulled once per packet received.
    let mut rx = BrowserToSip::with_defaults().unwrap();
    let mut received = Vec::new();
    let mut frame = [0i16; FRAME_SAMPLES];
    let start = tokio::time::Instant::now();
    while let Ok(Some(p)) = timeout(Duration::from_secs(1), cb.rtp.recv()).await {
        assert_eq!(p.payload_type, opus_pt);
        let at = start.elapsed().as_millis() as u64;
        rx.push(p.ssrc, p.seq, p.timestamp, &p.payload, at);
        rx.pull(&mut frame);
        received.extend(frame.iter().map(|s| f32::from(*s) / 32768.0));
    }
    let a = sender.await.unwrap();
    assert_tone(&received, PCM_RATE, 1000.0, 15.0, -12.0);
    assert!(
        received.len() as f64 / f64::from(PCM_RATE) > 1.5,
        "only {} samples arrived",
        received.len()
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test]
async fn close_ends_the_peer_and_the_other_side_sees_it() {
    // Short ICE timeouts so the survivor gives up quickly once its peer is gone.
    let (a, mut ca, b, mut cb) = pair_with(&WebRtcSettings {
        ice_disconnected_timeout: Duration::from_secs(2),
        ice_failed_timeout: Duration::from_secs(2),
        ..settings()
    })
    .await;
    a.close().await.unwrap();
    // Our own side reports Closed once, and the leg refuses further use.
    let mut saw_closed = false;
    while let Ok(Some(e)) = timeout(Duration::from_millis(500), ca.events.recv()).await {
        if e == LegEvent::State(LegState::Closed) {
            assert!(!saw_closed, "Closed reported twice");
            saw_closed = true;
        }
    }
    assert!(saw_closed);
    assert!(matches!(
        a.send_rtp(111, 0, 0, false, &[1, 2, 3]).await,
        Err(WebRtcLegError::Closed)
    ));
    assert!(a.close().await.is_ok(), "close is idempotent");
    // The other side learns the media path is gone.
    let ended = timeout(Duration::from_secs(20), async {
        loop {
            match cb.events.recv().await {
                Some(LegEvent::State(s @ (LegState::Closed | LegState::Failed))) => return s,
                Some(_) => {}
                None => panic!("event stream ended without a state change"),
            }
        }
    })
    .await
    .expect("the peer never noticed the close");
    assert!(matches!(ended, LegState::Closed | LegState::Failed));
    b.close().await.unwrap();
}

/// An offer as Chrome makes it for an audio-only call (BUNDLE, rtcp-mux, actpass, trickle, Opus
/// 111, red, telephone-event 126/110, PCMU 0, PCMA 8, CN), with a host candidate.
fn chrome_offer() -> String {
    [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS 6d3b3c1a-9f55-4d5e-a8c4-1f1a7b7d9c01",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:Wq7n",
        "a=ice-pwd:5kRk2tkS1rJ8aU0bX9yXq7Ul",
        "a=ice-options:trickle",
        "a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08",
        "a=setup:actpass",
        "a=mid:0",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=sendrecv",
        "a=msid:6d3b3c1a-9f55-4d5e-a8c4-1f1a7b7d9c01 0b5c6a3e-2f1d-4a0e-9a51-3c0e5f3a2b10",
        "a=rtcp-mux",
        "a=rtcp-rsize",
        "a=rtpmap:111 opus/48000/2",
        "a=rtcp-fb:111 transport-cc",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:63 red/48000/2",
        "a=fmtp:63 111/111",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:13 CN/8000",
        "a=rtpmap:110 telephone-event/48000",
        "a=rtpmap:126 telephone-event/8000",
        "a=ssrc:3735928559 cname:Ys0vQ5KQm7yq9G0P",
        "a=ssrc:3735928559 msid:6d3b3c1a-9f55-4d5e-a8c4-1f1a7b7d9c01 0b5c6a3e-2f1d-4a0e-9a51-3c0e5f3a2b10",
        "",
    ]
    .join("\r\n")
}

#[tokio::test]
async fn a_chrome_offer_gets_an_answer_chrome_accepts() {
    let (leg, _c) = WebRtcLeg::new(&settings()).await.unwrap();
    let answer = leg.accept_offer(&chrome_offer()).await.unwrap();
    let n = leg.negotiated().unwrap();
    assert_eq!(n.preferred, Some(LegCodec::Opus));
    assert_eq!(n.opus, Some(111));
    assert_eq!(n.pcmu, Some(0));
    assert_eq!(n.pcma, Some(8));
    assert_eq!(n.telephone_event_48k, Some(110));
    assert_eq!(n.telephone_event_8k, Some(126));
    let has = |line: &str| answer.lines().any(|l| l.trim() == line);
    assert!(has("a=rtpmap:111 opus/48000/2"), "{answer}");
    assert!(has("a=rtpmap:126 telephone-event/8000"), "{answer}");
    assert!(has("a=mid:0"), "{answer}");
    assert!(has("a=rtcp-mux"), "{answer}");
    assert!(has("a=group:BUNDLE 0"), "{answer}");
    // The answerer takes the DTLS client role (RFC 8842), never actpass.
    assert!(has("a=setup:active"), "{answer}");
    assert!(!answer.contains("red/48000"), "{answer}");
    // Chrome's end-of-candidates marker is accepted.
    leg.add_remote_candidate(r#"{"candidate":"","sdpMid":"0","sdpMLineIndex":0}"#)
        .await
        .unwrap();
    leg.add_remote_candidate(
        r#"{"candidate":"candidate:1 1 udp 2122260223 127.0.0.1 9 typ host","sdpMid":"0","sdpMLineIndex":0}"#,
    )
    .await
    .unwrap();
    leg.close().await.unwrap();
}

#[tokio::test]
async fn bad_offers_and_candidates_are_clear_errors() {
    let (leg, _c) = WebRtcLeg::new(&settings()).await.unwrap();
    let err = leg.accept_offer("this is not SDP").await.unwrap_err();
    assert!(
        matches!(err, WebRtcLegError::BadSdp { what: "offer", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("bad SDP offer"), "{err}");

    let (leg, _c) = WebRtcLeg::new(&settings()).await.unwrap();
    let video_only = chrome_offer()
        .replace(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
            "m=video 9 UDP/TLS/RTP/SAVPF 96",
        )
        .replace("a=rtpmap:111 opus/48000/2", "a=rtpmap:96 VP8/90000");
    let err = leg.accept_offer(&video_only).await.unwrap_err();
    assert!(matches!(err, WebRtcLegError::BadSdp { .. }), "{err}");

    let (leg, _c) = WebRtcLeg::new(&settings()).await.unwrap();
    let g722_only = chrome_offer().replace(
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
        "m=audio 9 UDP/TLS/RTP/SAVPF 9",
    );
    let err = leg.accept_offer(&g722_only).await.unwrap_err();
    assert!(matches!(err, WebRtcLegError::NoCommonCodec), "{err}");

    let (leg, _c) = WebRtcLeg::new(&settings()).await.unwrap();
    leg.accept_offer(&chrome_offer()).await.unwrap();
    for bad in [
        "not json",
        r#"{"candidate":"candidate:garbage","sdpMid":"0","sdpMLineIndex":0}"#,
    ] {
        let err = leg.add_remote_candidate(bad).await.unwrap_err();
        assert!(
            matches!(err, WebRtcLegError::BadCandidate(_)),
            "{bad}: {err}"
        );
    }
    // Sending a payload type that was not negotiated is refused.
    assert!(matches!(
        leg.send_rtp(96, 0, 0, false, &[0]).await,
        Err(WebRtcLegError::NotNegotiated(96))
    ));
}

#[tokio::test]
async fn candidates_use_the_configured_port_range() {
    let base = support::ports::free_port_range(10);
    let settings = WebRtcSettings {
        ports: Some(PortAllocator::new(PortRange::new(base, base + 9).unwrap())),
        ..settings()
    };
    let (leg, mut c) = WebRtcLeg::new(&settings).await.unwrap();
    leg.create_offer().await.unwrap();
    let candidate = timeout(WAIT, async {
        loop {
            if let Some(LegEvent::LocalCandidate(c)) = c.events.recv().await {
                return c;
            }
        }
    })
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&candidate).unwrap();
    assert_eq!(v["sdpMid"], "0");
    assert_eq!(v["sdpMLineIndex"], 0);
    let line = v["candidate"].as_str().unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[4], "127.0.0.1", "{line}");
    let port: u16 = fields[5].parse().unwrap();
    assert!(
        (base..=base + 9).contains(&port),
        "port {port} outside {base}-{}",
        base + 9
    );
    leg.close().await.unwrap();
}

/// A tiny G.711 μ-law codec for this test only (the bridge's own lives in `media::g711`).
fn ulaw_encode(s: i16) -> u8 {
    const BIAS: i32 = 0x84;
    let mut v = i32::from(s);
    let sign = if v < 0 {
        v = -v;
        0x80
    } else {
        0
    };
    v = (v + BIAS).min(0x7FFF);
    let exponent = (7 - (v.leading_zeros() as i32 - 17)).clamp(0, 7);
    let mantissa = (v >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) as u8 as i32 | mantissa) as u8
}

fn ulaw_decode(b: u8) -> i16 {
    let b = !b;
    let sign = b & 0x80;
    let exponent = i32::from((b >> 4) & 0x07);
    let mantissa = i32::from(b & 0x0F);
    let v = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    (if sign != 0 { -v } else { v }) as i16
}

#[test]
fn the_test_ulaw_codec_round_trips() {
    for s in [0i16, 100, -100, 1000, -1000, 30000, -30000] {
        let back = ulaw_decode(ulaw_encode(s));
        assert!(
            (i32::from(back) - i32::from(s)).abs() <= i32::from(s).abs() / 16 + 8,
            "{s} -> {back}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcmu_audio_and_telephone_events_pass_through() {
    let (a, _ca, b, mut cb) = pair().await;
    let n = a.negotiated().unwrap();
    let (pcmu, te) = (n.pcmu.unwrap(), n.telephone_event_48k.unwrap());
    let sender = tokio::spawn(async move {
        let tone = support::audio::tone(440.0, 0.5, Duration::from_secs(1), PCM_RATE);
        let mut payload = [0u8; FRAME_SAMPLES];
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut clock = RtpClock::random(1);
        for chunk in tone.chunks(FRAME_SAMPLES) {
            tick.tick().await;
            for (d, s) in payload.iter_mut().zip(chunk) {
                *d = ulaw_encode((s * 32767.0) as i16);
            }
            let st = clock.stamp(FRAME_SAMPLES as u32);
            a.send_rtp(pcmu, st.seq, st.timestamp, st.marker, &payload)
                .await
                .unwrap();
        }
        // DTMF "5": RFC 4733 event 5, end bit on the last packet. Same SSRC, so it continues the
        // audio's sequence numbers (SRTP drops what looks like a replay); one timestamp per event.
        let event_ts = clock.stamp(0).timestamp;
        for (i, end) in [false, false, true].into_iter().enumerate() {
            tick.tick().await;
            let st = clock.stamp(0);
            let duration = (i as u16 + 1) * 960;
            let [d0, d1] = duration.to_be_bytes();
            let flags = if end { 0x80 | 10 } else { 10 };
            a.send_rtp(te, st.seq, event_ts, i == 0, &[5, flags, d0, d1])
                .await
                .unwrap();
        }
        a
    });
    let mut audio = Vec::new();
    let mut events = Vec::new();
    while let Ok(Some(p)) = timeout(Duration::from_secs(1), cb.rtp.recv()).await {
        if p.payload_type == pcmu {
            audio.extend(
                p.payload
                    .iter()
                    .map(|b| f32::from(ulaw_decode(*b)) / 32768.0),
            );
        } else if p.payload_type == te {
            events.push(p);
        }
    }
    let a = sender.await.unwrap();
    assert_tone(&audio, PCM_RATE, 440.0, 10.0, -12.0);
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(events[0].marker);
    assert_eq!(events[0].payload[0], 5, "the digit");
    assert_ne!(events[2].payload[1] & 0x80, 0, "end bit");
    assert_eq!(
        b.negotiated().unwrap().codec(te),
        Some(LegCodec::TelephoneEvent48k)
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// A stranger's datagrams for a WebRTC port: plain RTP on the negotiated payload type with its
/// own SSRC, SRTP-looking noise, a STUN Binding request with a made-up username, a fatal DTLS
/// alert and a DTLS ClientHello at epoch 0.
fn stranger_datagrams(i: u16, pt: u8) -> Vec<Vec<u8>> {
    let mut rtp = vec![0x80, pt];
    rtp.extend_from_slice(&i.to_be_bytes());
    rtp.extend_from_slice(&(u32::from(i) * 960).to_be_bytes());
    rtp.extend_from_slice(&0x0BAD_5EEDu32.to_be_bytes());
    rtp.extend_from_slice(b"EVIL-EVIL-EVIL");
    let noise: Vec<u8> = [0x90, pt]
        .into_iter()
        .chain((0..100u16).map(|k| (k.wrapping_mul(37) ^ i) as u8))
        .collect();
    let mut stun = vec![0x00, 0x01, 0x00, 0x0C, 0x21, 0x12, 0xA4, 0x42];
    stun.extend_from_slice(&[i as u8; 12]);
    stun.extend_from_slice(&[0x00, 0x06, 0x00, 0x08]);
    stun.extend_from_slice(b"evil:bad");
    let alert = vec![21, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 9, 0, 2, 2, 10];
    let mut hello = vec![22, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 1, 0, 16, 1, 0, 0, 12];
    hello.extend_from_slice(&[0xAB; 12]);
    vec![rtp, noise, stun, alert, hello]
}

/// webrtc-rs passes any non-STUN datagram to DTLS/SRTP once ICE has a selected pair, whatever
/// its source (rtc 0.21.1 `IceHandler::handle_read`): what keeps strangers out is SRTP's
/// authentication and DTLS ignoring records outside its session. This shows it: during a
/// stranger's spray at every port of the leg's range, only the peer's packets come out, in
/// full, and the connection stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_datagrams_never_reach_the_call() {
    let base = support::ports::free_port_range(10);
    let ranged = WebRtcSettings {
        ports: Some(PortAllocator::new(PortRange::new(base, base + 9).unwrap())),
        ..settings()
    };
    let (a, mut ca) = WebRtcLeg::new(&settings()).await.unwrap();
    let (b, mut cb) = WebRtcLeg::new(&ranged).await.unwrap();
    let offer = a.create_offer().await.unwrap();
    let answer = b.accept_offer(&offer).await.unwrap();
    a.set_answer(&answer).await.unwrap();
    connect(&a, &mut ca, &b, &mut cb).await;
    let pt = a.negotiated().unwrap().opus.unwrap();

    let stranger = tokio::net::UdpSocket::bind(("127.0.0.66", 0))
        .await
        .unwrap();
    let spray = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        for i in 0..400u16 {
            tick.tick().await;
            for d in stranger_datagrams(i, pt) {
                for port in base..=base + 9 {
                    let _ = stranger.send_to(&d, ("127.0.0.1", port)).await;
                }
            }
        }
    });
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for seq in 0..100u16 {
        tick.tick().await;
        a.send_rtp(pt, seq, u32::from(seq) * 960, false, b"peer")
            .await
            .unwrap();
    }
    spray.await.unwrap();

    let mut got = Vec::new();
    while let Ok(Some(p)) = timeout(Duration::from_secs(1), cb.rtp.recv()).await {
        assert_eq!(p.ssrc, a.ssrc(), "a packet from someone else came out");
        assert_eq!(&p.payload[..], b"peer");
        got.push(p.seq);
    }
    assert!(
        got.len() >= 95,
        "only {} of 100 peer packets arrived",
        got.len()
    );
    while let Ok(e) = cb.events.try_recv() {
        assert!(
            !matches!(e, LegEvent::State(LegState::Failed | LegState::Closed)),
            "the spray hurt the connection: {e:?}"
        );
    }
    // Still connected: the next packet arrives.
    a.send_rtp(pt, 100, 96_000, false, b"peer").await.unwrap();
    let p = timeout(WAIT, cb.rtp.recv()).await.unwrap().unwrap();
    assert_eq!(p.seq, 100);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receivers_loss_reports_reach_the_sender() {
    let (a, _ca, b, mut cb) = pair().await;
    let a = std::sync::Arc::new(a);
    let opus_pt = a.negotiated().unwrap().opus.unwrap();
    // Drain what b receives so its stack keeps counting.
    let drain = tokio::spawn(async move { while cb.rtp.recv().await.is_some() {} });
    let sender = {
        let a = std::sync::Arc::clone(&a);
        tokio::spawn(async move {
            let mut enc =
                srbridge::media::opus::OpusEncoder::new(OpusEncoderConfig::default()).unwrap();
            let pcm = [0i16; FRAME_SAMPLES];
            let mut out = [0u8; MAX_OPUS_PACKET];
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            // Every tenth packet "lost" on the way: its sequence number is skipped.
            for seq in 1000u16..3000 {
                tick.tick().await;
                if seq % 10 == 0 {
                    continue;
                }
                let n = enc.encode(&pcm, &mut out).unwrap();
                let _ = a
                    .send_rtp(opus_pt, seq, u32::from(seq) * 960, false, &out[..n])
                    .await;
            }
        })
    };
    // The first report may cover only the start of the stream; take the third.
    let mut reports = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while reports.len() < 3 {
        match tokio::time::timeout_at(deadline, a.next_receiver_report()).await {
            Ok(Some(r)) => reports.push(r),
            Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(_) => panic!("only {} reports within 20 s", reports.len()),
        }
    }
    let last = reports[2];
    assert!(
        (0.05..=0.15).contains(&last.fraction_lost),
        "fraction lost {} ({reports:?})",
        last.fraction_lost
    );
    assert!(last.total_lost > 0);
    sender.abort();
    a.close().await.unwrap();
    b.close().await.unwrap();
    drain.abort();
}
