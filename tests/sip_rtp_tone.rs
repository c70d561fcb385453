//! The SIP leg end to end (issue #2): the bridge's SIP UA calls extension 1001 (baresip,
//! auto-answer, playing a 440 Hz tone) with an SDP offer from `sip::sdp` for an RTP leg from
//! `media::rtp_leg`; a 1 kHz μ-law tone goes out and baresip's 440 Hz comes back. Both checked
//! by frequency and level, not packet counts.

mod support;

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use srbridge::config::{Codec, Config};
use srbridge::media::g711;
use srbridge::media::rtp::{RtpPacket, RtpSender};
use srbridge::media::rtp_leg::{PortAllocator, PortRange, RtpLeg};
use srbridge::sip::sdp::{self, Direction, LocalMedia, DEFAULT_DTMF_PT};
use srbridge::sip::{OutgoingInvite, SipCallEvent, SipUa};
use support::audio::{self, write_tone_wav};
use support::{assert_tone, assert_wav_tone, ports, Baresip, BaresipOptions, Pbx};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(15);

fn config(pbx: &Pbx) -> Config {
    let text = format!(
        "[global]\nappid = \"a\"\nsip_svr = \"{}\"\nsip_local_port = 0\n\
         [proxy]\non = true\nsip_account = \"1000\"\nsip_pwd = \"1234\"\nrtm_account = \"bridge\"\n\
         [sip]\nlisten_ip = \"127.0.0.1\"\noptions_interval = 0\n",
        pbx.addr()
    );
    Config::from_toml_str(Path::new("tone.toml"), &text).expect("config")
}

#[tokio::test]
async fn tone_flows_both_ways_through_the_sip_ua_and_rtp_leg() {
    let pbx = Pbx::start().await;
    let media = tempfile::tempdir().expect("temp dir");
    let tone = media.path().join("tone440.wav");
    write_tone_wav(&tone, 440.0, 0.5, Duration::from_secs(10), 8000);
    let phone = Baresip::start(
        pbx.addr(),
        "1001",
        BaresipOptions {
            auto_answer: true,
            play_wav: Some(tone),
            record_dir: None,
        },
    )
    .await;
    phone.wait_registered(T).await;

    let token = CancellationToken::new();
    let (ua, _incoming) = SipUa::start(&config(&pbx), token.clone())
        .await
        .expect("UA starts");
    pbx.wait_registered("1000", T).await;

    let first = ports::free_port_range(4);
    let allocator = PortAllocator::new(PortRange::new(first, first + 3).expect("port range"));
    let ip: IpAddr = [127, 0, 0, 1].into();
    let mut leg = RtpLeg::bind(ip, &allocator).expect("RTP leg");
    let codecs = [Codec::Pcmu];
    let local = LocalMedia {
        ip,
        port: leg.local_addr().port(),
        codecs: &codecs,
        dtmf_pt: DEFAULT_DTMF_PT,
        session_id: sdp::new_session_id(),
        version: 1,
        direction: Direction::SendRecv,
    };
    let mut call = ua
        .place_call(OutgoingInvite {
            log_id: "tone-1".into(),
            callee: "1001".into(),
            caller_id: "alice".into(),
            headers: vec![],
            gateway: None,
            sdp_offer: sdp::build_offer(&local),
        })
        .await
        .expect("INVITE sent");
    let answer = loop {
        match tokio::time::timeout(T, call.next_event()).await {
            Ok(Some(SipCallEvent::Answered { sdp })) => break sdp,
            Ok(Some(SipCallEvent::Provisional { .. })) => continue,
            other => panic!("expected 200 OK, got {other:?}"),
        }
    };
    let negotiated = sdp::parse_answer(&answer, &codecs).expect("usable answer");
    assert_eq!(negotiated.codec, Codec::Pcmu);
    leg.set_remote(negotiated.remote);
    phone.wait_for("CALL_ESTABLISHED", T).await;

    // Send 3 s of a 1 kHz tone as PCMU, 20 ms a packet, while collecting what comes back (one
    // task owns the leg: it sends on each tick and reads between ticks).
    let pt = negotiated.payload_type;
    let samples = audio::tone(1000.0, 0.5, Duration::from_secs(3), 8000);
    let mut frames = samples.chunks_exact(160);
    let mut rtp = RtpSender::random(8000);
    let start = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let mut out_pcm = [0i16; 160];
    let mut payload = [0u8; 160];
    let mut packet = [0u8; 172];
    let mut received: Vec<f32> = Vec::new();
    let mut buf = [0u8; 1500];
    let mut pcm = [0i16; 1500];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut sending = true;
    loop {
        tokio::select! {
            _ = ticker.tick(), if sending => {
                let Some(frame) = frames.next() else {
                    sending = false;
                    continue;
                };
                for (out, s) in out_pcm.iter_mut().zip(frame) {
                    *out = (s * 32767.0) as i16;
                }
                g711::ulaw_encode(&out_pcm, &mut payload);
                let header = rtp.audio(start.elapsed(), pt, 160);
                let len = header.write(&payload, &mut packet).expect("packet");
                leg.send(&packet[..len]).await.expect("send RTP");
            }
            r = leg.recv(&mut buf) => {
                let Ok((n, _from)) = r else { break };
                let Ok(packet) = RtpPacket::parse(&buf[..n]) else {
                    continue;
                };
                if packet.payload_type != 0 {
                    continue;
                }
                let decoded = g711::ulaw_decode(packet.payload, &mut pcm);
                received.extend(pcm[..decoded].iter().map(|s| f32::from(*s) / 32768.0));
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    assert!(
        received.len() > 8000,
        "about 3 s of audio came back, got {} samples",
        received.len()
    );
    assert_tone(&received, 8000, 440.0, 15.0, -20.0);

    call.bye().await.expect("BYE");
    phone.wait_for("CALL_CLOSED", T).await;
    let recording = phone.received_wav().expect("baresip recorded the call");
    assert_wav_tone(&recording, 1000.0, 15.0, -20.0);
    ua.shutdown().await;
}
