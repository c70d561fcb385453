//! `media::session` on its own (no PBX, no hub): a browser `WebRtcLeg` offers through
//! `CallMedia::browser_message`, a plain UDP socket plays the PBX. Checks that everything a call
//! took (tasks, sockets, RTP ports) is given back on `close()`, and that bad browser messages get
//! a clear `error` without (or, for a bad offer, with) ending the call.

mod support;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use srbridge::call::machine::Direction as CallDirection;
use srbridge::call::ports::{CallMedia, MediaEvent, MediaFactory};
use srbridge::config::{Codec, Config};
use srbridge::media::rtp::RtpPacket;
use srbridge::media::session::SessionFactory;
use srbridge::media::webrtc_leg::{LegEvent, LegState, WebRtcLeg, WebRtcSettings};
use srbridge::sip::sdp::{self, Direction, LocalMedia, DEFAULT_DTMF_PT};
use support::ports;
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(10);
const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn factory() -> (SessionFactory, u16) {
    factory_with_ports(8)
}

/// A factory whose RTP range (shared with the browser legs) has `count` ports.
fn factory_with_ports(count: u16) -> (SessionFactory, u16) {
    let rtp = ports::free_port_range(count);
    let text = format!(
        "[global]\nappid = \"a\"\nsip_svr = \"127.0.0.1:5060\"\n[sip]\nlisten_ip = \"127.0.0.1\"\n\
         [media]\nrtp_port_min = {rtp}\nrtp_port_max = {}\n",
        rtp + count - 1
    );
    let config = Config::from_toml_str(std::path::Path::new("s.toml"), &text).expect("config");
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(config));
    let metrics = Arc::new(srbridge::ops::metrics::Metrics::new());
    (
        SessionFactory::new(rx, LOCAL, LOCAL, metrics).expect("factory"),
        rtp,
    )
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// The fake PBX's answer for an RTP socket at `port`.
fn pbx_answer(port: u16) -> String {
    sdp::build_offer(&LocalMedia {
        ip: LOCAL,
        port,
        codecs: &[Codec::Pcmu],
        dtmf_pt: DEFAULT_DTMF_PT,
        session_id: 42,
        version: 1,
        direction: Direction::SendRecv,
    })
}

async fn next_to_browser(events: &mut mpsc::Receiver<MediaEvent>) -> Value {
    match tokio::time::timeout(T, events.recv()).await {
        Ok(Some(MediaEvent::ToBrowser(v))) => v,
        other => panic!("expected a message to the browser, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_gives_back_every_task_socket_and_port() {
    let baseline = alive_tasks();
    let (factory, first_port) = factory();
    let in_range = |port: u16| (first_port..first_port + 8).contains(&port);
    let (mut session, mut events) = factory
        .create("s1", CallDirection::WebToSip, "1001")
        .expect("media");
    assert_eq!(factory.ports_in_use(), 1);
    let pbx = UdpSocket::bind((LOCAL, 0)).unwrap();
    pbx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    session.sip_offer().expect("offer");
    session
        .sip_remote_answer(&pbx_answer(pbx.local_addr().unwrap().port()))
        .expect("answer");

    let (browser, mut channels) = WebRtcLeg::new(&WebRtcSettings::default()).await.unwrap();
    let offer = browser.create_offer().await.unwrap();
    session
        .browser_message(json!({"kind": "offer", "sdp": offer}))
        .await;
    let answer = next_to_browser(&mut events).await;
    assert_eq!(answer["kind"], "answer", "{answer}");
    // The browser leg's ICE port comes from the same range (and pool) as the RTP legs'.
    for line in answer["sdp"].as_str().unwrap().lines() {
        if let Some(c) = line.strip_prefix("a=candidate:") {
            let port: u16 = c.split_whitespace().nth(5).unwrap().parse().unwrap();
            assert!(
                in_range(port),
                "{line} outside {first_port}-{}",
                first_port + 7
            );
        }
    }
    assert_eq!(
        factory.ports_in_use(),
        2,
        "the SIP leg's pair and the browser leg's"
    );
    browser
        .set_answer(answer["sdp"].as_str().unwrap())
        .await
        .unwrap();
    // Trickle both ways until the browser leg is up.
    let mut connected = false;
    let deadline = tokio::time::Instant::now() + T;
    while !connected {
        tokio::select! {
            Some(e) = channels.events.recv() => match e {
                LegEvent::LocalCandidate(c) => {
                    let c: Value = serde_json::from_str(&c).unwrap();
                    session.browser_message(json!({"kind": "candidate", "candidate": c})).await;
                }
                LegEvent::GatheringComplete => {
                    session.browser_message(json!({"kind": "candidate", "candidate": null})).await;
                }
                LegEvent::State(LegState::Connected) => connected = true,
                LegEvent::State(_) => {}
            },
            Some(m) = events.recv() => match m {
                MediaEvent::ToBrowser(v) if v["kind"] == "candidate" => {
                    if !v["candidate"].is_null() {
                        let line = v["candidate"]["candidate"].as_str().unwrap();
                        let port: u16 = line.split_whitespace().nth(5).unwrap().parse().unwrap();
                        assert!(in_range(port), "{line} outside {first_port}-{}", first_port + 7);
                        browser.add_remote_candidate(&v["candidate"].to_string()).await.unwrap();
                    }
                }
                other => panic!("unexpected {other:?}"),
            },
            _ = tokio::time::sleep_until(deadline) => panic!("browser leg did not connect"),
        }
    }
    // The pipeline runs: comfort silence reaches the PBX as PCMU even before anyone speaks.
    let mut buf = [0u8; 1500];
    let (n, from) = pbx.recv_from(&mut buf).expect("RTP toward the PBX");
    let packet = RtpPacket::parse(&buf[..n]).unwrap();
    assert_eq!(packet.payload_type, 0);
    assert_eq!(from, session.sip_rtp_addr());

    session.close();
    browser.close().await.unwrap();
    drop(channels);
    drop(session);
    for _ in 0..100 {
        if factory.ports_in_use() == 0 && alive_tasks() <= baseline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(factory.ports_in_use(), 0, "RTP and ICE port pairs released");
    assert!(
        alive_tasks() <= baseline,
        "tasks left: {} (baseline {baseline})",
        alive_tasks()
    );
    // The RTP socket itself is closed: its port binds again.
    let rebound = UdpSocket::bind(SocketAddr::new(LOCAL, from.port()));
    assert!(rebound.is_ok(), "port {} still bound", from.port());
    assert!(from.port() >= first_port);
}

#[tokio::test]
async fn bad_browser_messages_get_an_error_and_only_a_bad_offer_ends_the_call() {
    let (factory, _) = factory();
    let (mut session, mut events) = factory
        .create("s2", CallDirection::WebToSip, "1001")
        .expect("media");
    for (message, needle) in [
        (
            json!({"kind": "candidate", "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"}}),
            "before the offer",
        ),
        (json!({"kind": "dtmf", "digit": "55"}), "one \"digit\""),
        (json!({"kind": "dtmf", "digit": "x"}), "not a DTMF digit"),
        (json!({"kind": "dtmf", "digit": "5"}), "before the offer"),
        (json!({"kind": "answer", "sdp": "v=0"}), "browser offers"),
        (json!({"nothing": true}), "unknown media message kind"),
    ] {
        session.browser_message(message.clone()).await;
        let reply = next_to_browser(&mut events).await;
        assert_eq!(reply["kind"], "error", "{message} -> {reply}");
        assert!(
            reply["message"].as_str().unwrap().contains(needle),
            "{message} -> {reply}"
        );
    }
    assert!(events.try_recv().is_err(), "the call goes on");
    for offer in [
        json!({"kind": "offer"}),
        json!({"kind": "offer", "sdp": "garbage"}),
    ] {
        let (mut session, mut events) = factory
            .create("s3", CallDirection::WebToSip, "1001")
            .expect("media");
        session.browser_message(offer.clone()).await;
        let reply = next_to_browser(&mut events).await;
        assert_eq!(reply["kind"], "error", "{offer} -> {reply}");
        match tokio::time::timeout(T, events.recv()).await {
            Ok(Some(MediaEvent::Failed(why))) => assert!(why.contains("offer"), "{why}"),
            other => panic!("{offer}: expected the call to fail, got {other:?}"),
        }
        session.close();
    }
    session.close();
}

#[tokio::test]
async fn a_browser_leg_without_a_free_port_ends_the_call_with_a_clear_error() {
    // one RTP/RTCP pair: the SIP leg takes it, nothing is left for the browser's ICE socket
    let (factory, first_port) = factory_with_ports(2);
    let (mut session, mut events) = factory
        .create("s5", CallDirection::WebToSip, "1001")
        .expect("media");
    let (browser, _channels) = WebRtcLeg::new(&WebRtcSettings::default()).await.unwrap();
    let offer = browser.create_offer().await.unwrap();
    session
        .browser_message(json!({"kind": "offer", "sdp": offer}))
        .await;
    let reply = next_to_browser(&mut events).await;
    assert_eq!(reply["kind"], "error", "{reply}");
    let message = reply["message"].as_str().unwrap();
    assert!(
        message.contains("no free RTP port pair") && message.contains(&first_port.to_string()),
        "{reply}"
    );
    match tokio::time::timeout(T, events.recv()).await {
        Ok(Some(MediaEvent::Failed(why))) => assert!(why.contains("WebRTC leg"), "{why}"),
        other => panic!("expected the call to fail, got {other:?}"),
    }
    session.close();
    browser.close().await.unwrap();
}

fn origin_version(sdp: &str) -> u64 {
    let o = sdp.lines().find(|l| l.starts_with("o=")).expect("o= line");
    o.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[tokio::test]
async fn reoffers_answer_hold_and_bump_the_origin_version_only_on_change() {
    let (factory, _) = factory();
    let (mut session, _events) = factory
        .create("s4", CallDirection::SipToWeb, "1001")
        .expect("media");
    let offer = pbx_answer(40_000);
    let first = session.sip_answer(&offer).expect("answer");
    let v1 = origin_version(&first);
    let same = session.sip_reoffer(Some(&offer)).expect("answer");
    assert_eq!(
        origin_version(&same),
        v1,
        "unchanged answer keeps its version"
    );
    let hold = offer.replace("a=sendrecv", "a=sendonly");
    let held = session.sip_reoffer(Some(&hold)).expect("answer");
    assert!(held.contains("a=recvonly"), "{held}");
    assert_eq!(origin_version(&held), v1 + 1);
    let moved = session
        .sip_reoffer(Some(&pbx_answer(40_100)))
        .expect("answer");
    assert!(moved.contains("a=sendrecv"), "{moved}");
    assert_eq!(origin_version(&moved), v1 + 2);
    assert_eq!(
        session.sip_reoffer(Some("garbage")),
        None,
        "a bad re-offer keeps the media"
    );
    assert_eq!(session.sip_reoffer(None), None);
    session.close();
}

/// Offers from a fresh browser leg and trickles both ways until it is connected.
async fn connect_browser(
    session: &mut impl CallMedia,
    events: &mut mpsc::Receiver<MediaEvent>,
) -> (WebRtcLeg, srbridge::media::webrtc_leg::LegChannels) {
    let (browser, mut channels) = WebRtcLeg::new(&WebRtcSettings::default()).await.unwrap();
    let offer = browser.create_offer().await.unwrap();
    session
        .browser_message(json!({"kind": "offer", "sdp": offer}))
        .await;
    let answer = next_to_browser(events).await;
    assert_eq!(answer["kind"], "answer", "{answer}");
    browser
        .set_answer(answer["sdp"].as_str().unwrap())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        tokio::select! {
            Some(e) = channels.events.recv() => match e {
                LegEvent::LocalCandidate(c) => {
                    let c: Value = serde_json::from_str(&c).unwrap();
                    session.browser_message(json!({"kind": "candidate", "candidate": c})).await;
                }
                LegEvent::GatheringComplete => {
                    session.browser_message(json!({"kind": "candidate", "candidate": null})).await;
                }
                LegEvent::State(LegState::Connected) => return (browser, channels),
                LegEvent::State(_) => {}
            },
            Some(m) = events.recv() => match m {
                MediaEvent::ToBrowser(v) if v["kind"] == "candidate" => {
                    if !v["candidate"].is_null() {
                        browser.add_remote_candidate(&v["candidate"].to_string()).await.unwrap();
                    }
                }
                other => panic!("unexpected {other:?}"),
            },
            _ = tokio::time::sleep_until(deadline) => panic!("browser leg did not connect"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_hears_nothing_from_a_browser_leg_set_up_while_ringing_until_the_answer() {
    let (factory, _) = factory();
    let (mut session, mut events) = factory
        .create("s5", CallDirection::SipToWeb, "1002")
        .expect("media");
    let phone = UdpSocket::bind((LOCAL, 0)).unwrap();
    // The phone's INVITE offer: our 200 OK answer is not sent yet.
    session
        .sip_answer(&pbx_answer(phone.local_addr().unwrap().port()))
        .expect("answer to the phone's offer");
    let (browser, channels) = connect_browser(&mut session, &mut events).await;

    // Ringing with the browser leg up (its pipeline ticking): nothing toward the phone.
    phone
        .set_read_timeout(Some(Duration::from_millis(800)))
        .unwrap();
    let mut buf = [0u8; 1500];
    let early = phone.recv_from(&mut buf);
    assert!(
        early.is_err(),
        "the phone got {:?} bytes before the call was answered",
        early.map(|(n, _)| n)
    );

    // The 200 OK goes out: audio flows toward the phone.
    session.answered();
    phone
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (n, from) = phone.recv_from(&mut buf).expect("RTP toward the phone");
    assert_eq!(RtpPacket::parse(&buf[..n]).unwrap().payload_type, 0);
    assert_eq!(from, session.sip_rtp_addr());

    session.close();
    browser.close().await.unwrap();
    drop(channels);
}
