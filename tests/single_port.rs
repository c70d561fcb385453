//! `[media] webrtc_single_port` end to end (issue #11 item 2): every browser call's ICE, DTLS and
//! SRTP on one UDP port of the bridge. Rust "browsers" (`support::webrtc_peer`) call baresip
//! phones on the Kamailio PBX at the same time, each pair with its own tones, so audio crossed
//! between calls would be heard; a stranger throws forged checks and noise at the port meanwhile.
//!
//! Run: `unshare --net -- bash -c "ip link set lo up && cargo test --test single_port"`.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use srbridge::bridge::Bridge;
use srbridge::config::Config;
use srbridge::media::browser_leg::stun::build_binding_request;
use srbridge::media::webrtc_leg::LegCodec;
use support::webrtc_peer::BrowserPeer;
use support::{assert_tone, assert_wav_tone, ports, Baresip, WsClient};
use tokio::net::UdpSocket;

const APPID: &str = "single-port-test";
const T: Duration = Duration::from_secs(15);
/// A host no call signalled: same machine, another loopback address.
const STRANGER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 77));

type Rig = support::rig::BridgeRig;

/// One web → SIP call: its browser, phone and tones.
struct Call {
    id: &'static str,
    ws: Arc<WsClient>,
    peer: BrowserPeer,
    phone: Baresip,
    phone_hz: f64,
    browser_hz: f64,
}

/// `uid` calls `number` (a baresip phone playing `phone_hz` for 25 s) and plays `browser_hz`
/// once connected.
async fn call(
    rig: &Rig,
    id: &'static str,
    uid: &str,
    number: &str,
    phone_hz: f64,
    browser_hz: f64,
) -> Call {
    let phone = Baresip::tone_phone(
        rig.pbx.addr(),
        number,
        phone_hz,
        Duration::from_secs(25),
        true,
    )
    .await;
    let mut ws = WsClient::login(&rig.url, APPID, uid).await;
    let ok = ws.invite(id, number, "").await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let ws = Arc::new(ws);
    let mut peer = BrowserPeer::offer(Arc::clone(&ws), id, vec![LegCodec::Opus]).await;
    ws.wait_local_state(id, "ACCEPTED_BY_REMOTE", T).await;
    phone.wait_for("CALL_ESTABLISHED", T).await;
    peer.wait_connected().await;
    peer.play(Some(browser_hz));
    Call {
        id,
        ws,
        peer,
        phone,
        phone_hz,
        browser_hz,
    }
}

impl Call {
    /// The ports of the bridge's candidates (answer and trickled).
    fn bridge_ports(&self) -> Vec<u16> {
        self.peer
            .bridge_candidates
            .lock()
            .unwrap()
            .iter()
            .filter_map(|c| c.split_whitespace().nth(5)?.parse().ok())
            .collect()
    }

    /// The bridge's `a=ice-ufrag` for this call, from its answer.
    fn bridge_ufrag(&self) -> String {
        self.ws
            .frames()
            .iter()
            .filter(|f| f["type"] == "media" && f["callId"] == self.id)
            .filter(|f| f["payload"]["kind"] == "answer")
            .find_map(|f| {
                f["payload"]["sdp"]
                    .as_str()?
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:").map(str::to_owned))
            })
            .expect("the bridge answered with an ICE ufrag")
    }

    /// The browser hears its phone's tone (and so not the other call's).
    fn assert_browser_hears_its_phone(&self, heard: &[f32]) {
        eprintln!("{}: the browser checks for {} Hz", self.id, self.phone_hz);
        assert_tone(heard, 8000, self.phone_hz, 15.0, -20.0);
    }

    /// Ends the call from the browser; the phone's recording holds the browser's tone.
    async fn end(self) {
        self.ws.send_raw(
            &json!({"type": "peer_message", "id": 900, "to": self.phone.account(), "text": "{\"Cmd\":\"EndCall\"}"})
                .to_string(),
        );
        self.phone.wait_for("CALL_CLOSED", T).await;
        self.peer.close().await;
        let recording = self
            .phone
            .received_wav()
            .expect("baresip recorded the call");
        eprintln!("{}: the phone checks for {} Hz", self.id, self.browser_hz);
        assert_wav_tone(&recording, self.browser_hz, 15.0, -20.0);
    }
}

/// What a stranger throws at the shared port, `rounds` times: SRTP-looking noise, a check for
/// an unknown ufrag, and a correctly signed check naming a live call's ufrag under a wrong
/// password. Returns how many of each were sent.
async fn spray(port: SocketAddr, live_ufrag: &str, rounds: u16) -> u64 {
    let socket = UdpSocket::bind((STRANGER_IP, 0)).await.unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for i in 0..rounds {
        tick.tick().await;
        let mut srtp = vec![0x80, 111];
        srtp.extend((0..120u16).map(|k| (k.wrapping_mul(31) ^ i) as u8));
        let unknown =
            build_binding_request("nobody-has-this:x", "some-password-0123456789", [1; 12]);
        let forged = build_binding_request(
            &format!("{live_ufrag}:x"),
            "guessed-password-0123456789",
            [2; 12],
        );
        for d in [&srtp, &unknown, &forged] {
            socket.send_to(d, port).await.unwrap();
        }
    }
    u64::from(rounds)
}

fn series(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits until `/metrics` shows `calls` calls registered on the shared port.
async fn wait_port_calls(rig: &Rig, calls: f64) {
    let mut last = String::new();
    for _ in 0..100 {
        last = rig.metrics().await;
        if series(&last, "srbridge_webrtc_port_calls") == Some(calls) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("expected {calls} calls on the shared port:\n{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_one_port_strangers_are_dropped_and_calls_end_cleanly() {
    let shared = ports::free_port();
    let rig =
        support::rig::start_bridge(APPID, "", &format!("webrtc_single_port = {shared}\n"), 20)
            .await;
    let port = SocketAddr::from(([127, 0, 0, 1], shared));
    // The bridge holds the port from the start, before any call.
    assert!(
        std::net::UdpSocket::bind(port).is_err(),
        "the bridge should hold UDP {port}"
    );
    wait_port_calls(&rig, 0.0).await;

    let (first, second) = tokio::join!(
        call(&rig, "sp1", "alice", "1001", 440.0, 1000.0),
        call(&rig, "sp2", "bob", "1002", 700.0, 1600.0),
    );
    for c in [&first, &second] {
        let ports = c.bridge_ports();
        assert!(
            !ports.is_empty() && ports.iter().all(|p| *p == shared),
            "{}: the bridge's candidates should all name {shared}: {ports:?}",
            c.id
        );
    }
    wait_port_calls(&rig, 2.0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    first.peer.take_received();
    second.peer.take_received();

    // A stranger at the shared port during both calls.
    let before = rig.metrics().await;
    let sent = spray(port, &first.bridge_ufrag(), 200).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rig.metrics().await;
    for reason in ["unknown_source", "unknown_ufrag", "bad_integrity"] {
        let name = format!("srbridge_webrtc_port_dropped_total{{reason=\"{reason}\"}}");
        let dropped = series(&after, &name).unwrap_or_else(|| panic!("no {name}:\n{after}"))
            - series(&before, &name).unwrap_or(0.0);
        eprintln!("{name}: +{dropped} ({sent} sent)");
        assert!(
            dropped >= sent as f64,
            "{name}: {dropped} of {sent}\n{after}"
        );
    }

    // Both calls went on through the spray, each with its own audio both ways.
    let (heard1, heard2) = (first.peer.take_received(), second.peer.take_received());
    first.assert_browser_hears_its_phone(&heard1);
    second.assert_browser_hears_its_phone(&heard2);
    for c in [&first, &second] {
        assert!(
            c.peer.errors.lock().unwrap().is_empty(),
            "{}: {:?}",
            c.id,
            c.peer.errors.lock().unwrap()
        );
    }
    tokio::join!(first.end(), second.end());
    support::rig::everything_released(&rig.bridge).await;
    wait_port_calls(&rig, 0.0).await;

    // The port serves a later call after the others unregistered.
    let third = call(&rig, "sp3", "carol", "1003", 550.0, 1200.0).await;
    assert_eq!(third.bridge_ports().first(), Some(&shared));
    tokio::time::sleep(Duration::from_secs(1)).await;
    third.peer.take_received();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let heard = third.peer.take_received();
    third.assert_browser_hears_its_phone(&heard);
    third.end().await;
    support::rig::everything_released(&rig.bridge).await;
    wait_port_calls(&rig, 0.0).await;
}

#[tokio::test]
async fn a_shared_port_that_cannot_be_bound_stops_the_start_with_its_name() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let rtp = ports::free_port_range(10);
    let text = format!(
        "[global]\nappid = \"x\"\nsip_svr = \"127.0.0.1:9\"\nsip_local_port = 0\n\
         [sip]\nlisten_ip = \"127.0.0.1\"\noptions_interval = 0\n\
         [media]\nrtp_port_min = {rtp}\nrtp_port_max = {}\nwebrtc_single_port = {port}\n\
         [http]\nlisten = \"127.0.0.1:0\"\n",
        rtp + 9
    );
    let config = Config::from_toml_str(Path::new("t.toml"), &text).expect("valid config");
    let error = match Bridge::start(config).await {
        Ok(_) => panic!("the bridge started without its shared WebRTC port"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains("webrtc_single_port") && error.contains(&format!("127.0.0.1:{port}")),
        "{error}"
    );
}
