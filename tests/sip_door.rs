//! The SIP door (issue 9 item 5, issue 10 items 3, 4, 7): malformed requests get their status
//! codes, strangers get 403 in and out of dialogs and change nothing, silent TCP connections are
//! closed and capped per IP, our agent string and Call-IDs — each counted in the test's own
//! bridge's `/metrics`. Run in a network namespace with only `lo` (127.0.0.0/8 aliases work).

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use srbridge::config::{Config, Host, HostPort, ProxyConfig, Secret};
use srbridge::sip::{OutgoingInvite, SipUa, UaOptions};
use support::rig::{start_bridge, BridgeRig};
use support::{Sipp, WsClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const APPID: &str = "door-test";
const T: Duration = Duration::from_secs(15);
const AGENT: &str = "DoorTest/1";

async fn rig(sip_extra: &str) -> BridgeRig {
    start_bridge(
        APPID,
        &format!("user_agent = \"{AGENT}\"\n{sip_extra}"),
        "",
        20,
    )
    .await
}

/// Sends `text` from `sock` to `to` and returns the first final response, or `None` when nothing
/// final comes within `wait`.
async fn final_answer(
    sock: &UdpSocket,
    to: SocketAddr,
    text: &[u8],
    wait: Duration,
) -> Option<String> {
    sock.send_to(text, to).await.expect("send");
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 65536];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let (n, _) = tokio::time::timeout(left, sock.recv_from(&mut buf))
            .await
            .ok()?
            .expect("recv");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if status(&msg) >= 200 {
            return Some(msg);
        }
    }
}

fn status(msg: &str) -> u16 {
    msg.get(8..11).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// `srbridge_errors_total{kind}` of this bridge.
async fn errors(rig: &BridgeRig, kind: &str) -> u64 {
    rig.counter(&format!("srbridge_errors_total{{kind=\"{kind}\"}}"))
        .await
}

/// A well-formed INVITE for alice from `local` (the PBX's address), as text to be broken.
fn invite(target: SocketAddr, local: SocketAddr, id: &str) -> String {
    let body = "v=0\r\no=pbx 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    format!(
        "INVITE sip:1000@{target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};rport;branch=z9hG4bK{id}\r\n\
         Max-Forwards: 70\r\n\
         From: \"Phone\" <sip:1007@{local}>;tag=f{id}\r\n\
         To: <sip:1000@{target}>\r\n\
         Call-ID: {id}@door\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:1007@{local}>\r\n\
         X-Number: alice\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn malformed_requests_get_their_status_codes_and_are_counted() {
    let rig = rig("").await;
    let target = rig.bridge.sip_addr();
    // from the PBX's own address: only the message is wrong
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let local = sock.local_addr().expect("addr");
    let alice = WsClient::login(&rig.url, APPID, "alice").await;

    let good = |id: &str| invite(target, local, id);
    let with_length = |id: &str, value: &str| {
        let text = good(id);
        let len = text
            .split_once("\r\n\r\n")
            .map_or(0, |(_, body)| body.len());
        text.replace(
            &format!("Content-Length: {len}\r\n"),
            &format!("Content-Length: {value}\r\n"),
        )
    };
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "CSeq method",
            good("c1").replace("CSeq: 1 INVITE", "CSeq: 1 BYE"),
            400,
        ),
        (
            "Content-Length beyond the datagram",
            with_length("c2", "500"),
            400,
        ),
        ("negative Content-Length", with_length("c3", "-1"), 400),
        (
            "header line without a colon",
            good("c4").replace("Max-Forwards: 70", "Max-Forwards 70"),
            400,
        ),
        (
            "no Call-ID",
            good("c5").replace("Call-ID: c5@door\r\n", ""),
            400,
        ),
        (
            "SIP/3.0",
            good("c6").replacen("SIP/2.0\r\n", "SIP/3.0\r\n", 1),
            505,
        ),
        (
            "unknown method",
            good("c7")
                .replacen("INVITE sip:", "FOO sip:", 1)
                .replace("CSeq: 1 INVITE", "CSeq: 1 FOO"),
            501,
        ),
        (
            "method not handled",
            good("c8")
                .replacen("INVITE sip:", "MESSAGE sip:", 1)
                .replace("CSeq: 1 INVITE", "CSeq: 1 MESSAGE"),
            405,
        ),
        (
            "oversize",
            {
                let text = good("c9");
                let pad = "a=x-pad:".to_string() + &"p".repeat(9000) + "\r\n";
                let (head, body) = text.split_once("\r\n\r\n").unwrap();
                let body = format!("{body}{pad}");
                let head = head.replace(
                    &format!("Content-Length: {}", text.len() - head.len() - 4),
                    &format!("Content-Length: {}", body.len()),
                );
                format!("{head}\r\n\r\n{body}")
            },
            513,
        ),
    ];
    for (what, text, code) in &cases {
        let answer = final_answer(&sock, target, text.as_bytes(), Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(status(&answer), *code, "{what}: {answer}");
        assert_eq!(header(&answer, "Server"), Some(AGENT), "{what}: {answer}");
        if matches!(code, 405 | 501) {
            let allow = header(&answer, "Allow").unwrap_or_default();
            assert!(
                allow.contains("INVITE") && allow.contains("BYE"),
                "{what}: {answer}"
            );
        }
    }
    // garbage without a Via cannot be answered: dropped
    let no_via = good("c10").replace(
        &format!("Via: SIP/2.0/UDP {local};rport;branch=z9hG4bKc10\r\n"),
        "",
    );
    assert_eq!(
        final_answer(
            &sock,
            target,
            no_via.as_bytes(),
            Duration::from_millis(1500)
        )
        .await,
        None
    );
    // none of them reached the call layer
    assert!(
        alice
            .try_wait_for(
                &|v| v["type"] == "remote_invitation",
                Duration::from_millis(500)
            )
            .await
            .is_none(),
        "a refused INVITE rang alice"
    );
    assert!(rig.bridge.calls().is_empty(), "{:?}", rig.bridge.calls());

    // OPTIONS from the PBX: 200 naming us as configured, no version
    let options = format!(
        "OPTIONS sip:{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bKo1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:ping@{local}>;tag=o1\r\nTo: <sip:{target}>\r\n\
         Call-ID: o1@door\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    let answer = final_answer(&sock, target, options.as_bytes(), T)
        .await
        .expect("OPTIONS answered");
    assert_eq!(status(&answer), 200, "{answer}");
    assert_eq!(header(&answer, "Server"), Some(AGENT), "{answer}");
    assert_eq!(header(&answer, "User-Agent"), None, "{answer}");
    assert!(!answer.contains(env!("CARGO_PKG_VERSION")), "{answer}");
    // the same OPTIONS from a stranger: 403
    let stranger = UdpSocket::bind("127.0.0.2:0")
        .await
        .expect("bind 127.0.0.2");
    let from_stranger = options.replace(
        &local.to_string(),
        &stranger.local_addr().unwrap().to_string(),
    );
    let answer = final_answer(&stranger, target, from_stranger.as_bytes(), T)
        .await
        .expect("answer");
    assert_eq!(status(&answer), 403, "{answer}");
    assert_eq!(header(&answer, "Server"), Some(AGENT), "{answer}");

    let counted = [
        errors(&rig, "sip_parse").await,
        errors(&rig, "sip_method").await,
        errors(&rig, "sip_oversize").await,
        errors(&rig, "sip_peer_refused").await,
    ];
    assert_eq!(
        counted,
        [7, 2, 1, 1],
        "this bridge's errors_total for sip_parse, sip_method, sip_oversize, sip_peer_refused"
    );
}

/// Runs a stranger's SIPp scenario from 127.0.0.2 with the dialog's ids (SIPp matches answers
/// by Call-ID, so the call's Call-ID is SIPp's own, `-cid_str`).
async fn stranger(
    scenario: &str,
    target: SocketAddr,
    call_id: &str,
    ids: &[(&str, String)],
) -> support::sipp::SippResult {
    let mut sipp = Sipp::new(scenario)
        .timeout(T)
        .arg("-i")
        .arg("127.0.0.2")
        .arg("-cid_str")
        .arg(call_id);
    for (key, value) in ids {
        sipp = sipp.key(key, value);
    }
    sipp.run(Some(target)).await
}

#[tokio::test]
async fn requests_from_a_stranger_inside_a_call_get_403_and_the_call_goes_on() {
    let rig = rig("").await;
    let target = rig.bridge.sip_addr();
    let mut alice = WsClient::login(&rig.url, APPID, "alice").await;
    // the PBX side of the call: from the PBX's address, so every id is known to the test
    let pbx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let local = pbx.local_addr().expect("addr");
    pbx.send_to(invite(target, local, "d1").as_bytes(), target)
        .await
        .expect("INVITE");
    let invitation = alice.wait_remote_invitation(T).await;
    let call_id = invitation["callId"].as_str().expect("callId").to_string();
    alice
        .request(json!({"type": "received", "callId": call_id}))
        .await;

    let from = format!("\"Phone\" <sip:1007@{local}>;tag=fd1");
    let ruri = format!("sip:1000@{target}");
    let ids = |to: &str| {
        vec![
            ("dlg_ruri", ruri.clone()),
            ("dlg_from", from.clone()),
            ("dlg_to", to.to_string()),
            ("dlg_branch", "z9hG4bKd1".to_string()),
        ]
    };
    // ringing: a stranger's CANCEL with the PBX's branch is refused, the browser still rings
    let result = stranger(
        "stranger_cancel.xml",
        target,
        "d1@door",
        &ids(&format!("<sip:1000@{target}>")),
    )
    .await;
    result.assert_success();
    assert!(
        alice
            .try_wait_for(&|v| v["state"] == "CANCELED", Duration::from_millis(800))
            .await
            .is_none(),
        "a stranger's CANCEL cancelled the call"
    );
    // alice answers: 200 OK to the PBX, which ACKs
    let ok = alice
        .request(json!({"type": "accept", "callId": call_id, "response": ""}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let mut buf = vec![0u8; 65536];
    let answer = loop {
        let (n, _) = tokio::time::timeout(T, pbx.recv_from(&mut buf))
            .await
            .expect("200 OK in time")
            .expect("recv");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if status(&msg) >= 200 {
            break msg;
        }
    };
    assert_eq!(status(&answer), 200, "{answer}");
    let to = header(&answer, "To").expect("To").to_string();
    assert!(to.contains("tag="), "{to}");
    let ack = format!(
        "ACK sip:1000@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bKd1ack\r\n\
         Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: d1@door\r\nCSeq: 1 ACK\r\n\
         Content-Length: 0\r\n\r\n"
    );
    pbx.send_to(ack.as_bytes(), target).await.expect("ACK");

    // answered: BYE, re-INVITE, UPDATE, INFO, REFER with the real ids all get 403; ACK dropped
    let result = stranger("stranger_in_dialog.xml", target, "d1@door", &ids(&to)).await;
    result.assert_success();
    assert!(
        alice
            .try_wait_for(
                &|v| v["type"] == "peer_message"
                    && v["text"].as_str().is_some_and(|t| t.contains("EndCall")),
                Duration::from_secs(1)
            )
            .await
            .is_none(),
        "a stranger's BYE ended the call"
    );
    assert_eq!(rig.bridge.calls().len(), 1, "the call goes on");
    // nothing reached the PBX side either (no re-INVITE answered through, no BYE relayed)
    let mut seen = Vec::new();
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_millis(200), pbx.recv_from(&mut buf)).await
    {
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        seen.iter().all(|m| status(m) == 200),
        "only 200 retransmissions may come: {seen:?}"
    );

    // the PBX's own BYE still ends it
    let bye = format!(
        "BYE sip:1000@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bKd1bye\r\n\
         Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: d1@door\r\nCSeq: 2 BYE\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let answer = final_answer(&pbx, target, bye.as_bytes(), T)
        .await
        .expect("BYE answered");
    assert_eq!(status(&answer), 200, "{answer}");
    alice.wait_peer_message("EndCall", T).await;
}

/// Reads until EOF or error; returns how long that took, or `None` if the peer kept it open.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(
            limit.saturating_sub(started.elapsed()),
            stream.read(&mut buf),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

async fn connect_from(ip: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from((ip, 0))).expect("bind");
    socket.connect(to).await.expect("connect")
}

#[tokio::test]
async fn silent_tcp_connections_are_closed_capped_per_ip_and_calls_still_work() {
    let rig = rig("transport = \"tcp\"\ntcp_first_message_timeout = 2\ntcp_max_per_ip = 3").await;
    let target = rig.bridge.sip_addr();

    let started = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(connect_from([127, 0, 0, 5], target).await);
    }
    // over the cap: closed at once
    let mut fourth = connect_from([127, 0, 0, 5], target).await;
    let closed = closed_within(&mut fourth, Duration::from_secs(2)).await;
    assert!(
        closed.is_some(),
        "the 4th connection from one IP stays open"
    );
    // another IP is not affected by 127.0.0.5's cap; it talks, so it stays
    let mut talker = connect_from([127, 0, 0, 1], target).await;
    let local = talker.local_addr().unwrap();
    let options = format!(
        "OPTIONS sip:{target};transport=tcp SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bKt1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:ping@{local}>;tag=t1\r\nTo: <sip:{target}>\r\n\
         Call-ID: t1@door\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    talker.write_all(options.as_bytes()).await.expect("send");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(T, talker.read(&mut buf))
        .await
        .expect("answer")
        .expect("read");
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert_eq!(status(&answer), 200, "{answer}");
    assert_eq!(header(&answer, "Server"), Some(AGENT), "{answer}");

    // the silent ones are closed after the first-message bound (2 s), not before
    for stream in &mut silent {
        let left = Duration::from_secs(10).saturating_sub(started.elapsed());
        assert!(
            closed_within(stream, left).await.is_some(),
            "a silent connection is still open after 10 s"
        );
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "closed before the bound: {:?}",
        started.elapsed()
    );
    // the talking connection outlived the bound, and the door answers on it too
    let bad = options
        .replace("CSeq: 1 OPTIONS", "CSeq: 2 INVITE")
        .replace("z9hG4bKt1", "z9hG4bKt2");
    talker.write_all(bad.as_bytes()).await.expect("send");
    let n = tokio::time::timeout(T, talker.read(&mut buf))
        .await
        .expect("answer")
        .expect("read");
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert_eq!(status(&answer), 400, "{answer}");
    assert_eq!(
        errors(&rig, "sip_connection").await,
        4,
        "1 refused over the cap + 3 closed silent"
    );

    // a real call over TCP still works: a phone dials 0alice through the PBX
    let mut alice = WsClient::login(&rig.url, APPID, "alice").await;
    let phone = support::baresip::silent_phone(&rig.pbx, "1007", false).await;
    phone.dial("0alice").await;
    let invitation = alice.wait_remote_invitation(T).await;
    let call_id = invitation["callId"].as_str().expect("callId").to_string();
    alice
        .request(json!({"type": "received", "callId": call_id}))
        .await;
    alice
        .request(json!({"type": "accept", "callId": call_id, "response": ""}))
        .await;
    phone.wait_for("CALL_ESTABLISHED", T).await;
    phone.hangup().await;
    alice.wait_peer_message("EndCall", T).await;
}

#[tokio::test]
async fn outgoing_invites_carry_our_call_id_host_and_agent() {
    // the gateway is a plain socket: what the bridge sends is read as is
    let gateway = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let gateway_addr = gateway.local_addr().unwrap();
    let mut config = Config::from_rtx_conf_str(
        Path::new("rtx.conf"),
        "[global]\nappid=app\nsip_svr=127.0.0.1:5060\n",
    )
    .expect("base config");
    config.global.sip_svr = HostPort {
        host: Host::Ip(IpAddr::from([127, 0, 0, 1])),
        port: gateway_addr.port(),
    }
    .into();
    config.global.sip_local_port = 0;
    config.proxy = Some(ProxyConfig {
        sip_account: "1000".into(),
        sip_pwd: Secret::new("pw"),
        rtm_account: "proxy".into(),
    });
    config.sip.listen_ip = IpAddr::from([127, 0, 0, 1]);
    config.sip.options_interval = Duration::ZERO;
    config.sip.user_agent = AGENT.into();
    let token = tokio_util::sync::CancellationToken::new();
    let (ua, _calls) = SipUa::start_with(&config, token.clone(), UaOptions::default())
        .await
        .expect("UA starts");
    let _call = ua
        .place_call(OutgoingInvite {
            log_id: "door-out".into(),
            callee: "1001".into(),
            caller_id: "alice".into(),
            headers: vec![],
            gateway: Some(gateway_addr),
            sdp_offer: "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                        m=audio 4000 RTP/AVP 0\r\n"
                .into(),
        })
        .await
        .expect("INVITE placed");
    let mut buf = vec![0u8; 65536];
    let invite = loop {
        let (n, _) = tokio::time::timeout(T, gateway.recv_from(&mut buf))
            .await
            .expect("a request")
            .expect("recv");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.starts_with("INVITE ") {
            break msg;
        }
    };
    let call_id = header(&invite, "Call-ID").expect("Call-ID");
    assert!(
        call_id.ends_with("@127.0.0.1"),
        "Call-ID host is ours: {call_id}"
    );
    assert!(!invite.contains("restsend.com"), "{invite}");
    assert_eq!(header(&invite, "User-Agent"), Some(AGENT), "{invite}");
    token.cancel();
}
