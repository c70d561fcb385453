//! The SIP user agent (`srbridge::sip`) against real peers: Kamailio as the PBX, baresip phones and
//! raw SIP over UDP, all on 127.0.0.0/8. SDP here is a fixed minimal PCMU offer/answer; media is
//! not checked (another test covers the tone round trip).

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use srbridge::config::{Config, Host, HostPort, ProxyConfig, Secret, SipTransport};
use srbridge::sip::{
    IncomingCall, OutgoingInvite, PbxState, RegistrationState, SipCall, SipCallEvent, SipUa,
    UaOptions,
};
use support::pbx::{PASSWORD, PROXY_ACCOUNT};
use support::{ports, Baresip, BaresipOptions, Pbx, Sipp};
use tokio::net::UdpSocket;
use tokio::sync::mpsc::Receiver;
use tokio_util::sync::CancellationToken;

const SHORT: Duration = Duration::from_secs(10);

fn config(pbx: &Pbx, password: &str, transport: SipTransport) -> Config {
    config_for(pbx.addr(), password, transport)
}

fn config_for(pbx: SocketAddr, password: &str, transport: SipTransport) -> Config {
    let mut config = Config::from_rtx_conf_str(
        Path::new("rtx.conf"),
        "[global]\nappid=app\nsip_svr=127.0.0.1:5060\n",
    )
    .expect("base config");
    config.global.sip_svr = HostPort {
        host: Host::Ip(pbx.ip()),
        port: pbx.port(),
    }
    .into();
    config.global.sip_local_port = 0;
    config.proxy = Some(ProxyConfig {
        sip_account: PROXY_ACCOUNT.to_string(),
        sip_pwd: Secret::new(password),
        rtm_account: "proxy".to_string(),
    });
    config.sip.listen_ip = IpAddr::from([127, 0, 0, 1]);
    config.sip.transport = transport;
    config.sip.register_expires = Duration::from_secs(60);
    config.sip.options_interval = Duration::from_secs(1);
    config
}

fn options() -> UaOptions {
    UaOptions {
        register_backoff_min: Duration::from_millis(500),
        register_backoff_max: Duration::from_secs(4),
        request_timeout: Duration::from_secs(3),
        // generous: on a loaded 2-core CI machine the challenged REGISTER Expires: 0 can take a while
        unregister_timeout: Duration::from_secs(6),
        ..UaOptions::default()
    }
}

struct Ua {
    ua: SipUa,
    calls: Receiver<IncomingCall>,
    _token: CancellationToken,
}

/// `RUST_LOG=...` shows the UA's logs when debugging a test.
fn debug_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

async fn start(config: &Config) -> Ua {
    debug_logs();
    let token = CancellationToken::new();
    let (ua, calls) = SipUa::start_with(config, token.clone(), options())
        .await
        .expect("UA starts");
    Ua {
        ua,
        calls,
        _token: token,
    }
}

/// Starts the UA on a fresh PBX and waits until 1000 is registered.
async fn registered_ua(pbx: &Pbx) -> Ua {
    let ua = start(&config(pbx, PASSWORD, SipTransport::Udp)).await;
    pbx.wait_registered(PROXY_ACCOUNT, SHORT).await;
    ua
}

fn sdp(port: u16) -> String {
    format!(
        "v=0\r\no=srbridge 1 1 IN IP4 127.0.0.1\r\ns=srbridge\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )
}

async fn event(call: &mut SipCall, timeout: Duration) -> SipCallEvent {
    match tokio::time::timeout(timeout, call.next_event()).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("call {} ended without more events", call.log_id()),
        Err(_) => panic!("no event on call {} within {timeout:?}", call.log_id()),
    }
}

/// Skips provisional responses; returns the first other event.
async fn after_provisionals(call: &mut SipCall) -> SipCallEvent {
    loop {
        match event(call, SHORT).await {
            SipCallEvent::Provisional { .. } => continue,
            other => return other,
        }
    }
}

async fn incoming(ua: &mut Ua) -> IncomingCall {
    tokio::time::timeout(SHORT, ua.calls.recv())
        .await
        .expect("an incoming call in time")
        .expect("UA still running")
}

async fn wait_status<F: Fn(&srbridge::sip::SipStatus) -> bool>(ua: &SipUa, what: &str, f: F) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = ua.status();
        if f(&status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "status never became {what}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn phone_options(auto_answer: bool) -> BaresipOptions {
    BaresipOptions {
        auto_answer,
        ..Default::default()
    }
}

#[tokio::test]
async fn registers_the_proxy_account() {
    let pbx = Pbx::start().await;
    let ua = start(&config(&pbx, PASSWORD, SipTransport::Udp)).await;
    pbx.wait_registered(PROXY_ACCOUNT, SHORT).await;
    wait_status(&ua.ua, "registered", |s| {
        matches!(s.registration, RegistrationState::Registered { expires_in } if expires_in > 0 && expires_in <= 60)
    })
    .await;
    assert_eq!(ua.ua.status().pbx_addr, pbx.addr().to_string());
    assert_eq!(ua.ua.local_addr().ip(), IpAddr::from([127, 0, 0, 1]));
    assert_ne!(
        ua.ua.local_addr().port(),
        0,
        "the OS-chosen port is exposed"
    );
}

#[tokio::test]
async fn registers_again_after_the_pbx_restarts() {
    let mut pbx = Pbx::start().await;
    let mut config = config(&pbx, PASSWORD, SipTransport::Udp);
    // Kamailio's minimum; the refresh (at 3/4) finds the restarted PBX without the binding
    config.sip.register_expires = Duration::from_secs(10);
    let _ua = start(&config).await;
    pbx.wait_registered(PROXY_ACCOUNT, SHORT).await;
    pbx.restart().await;
    assert!(!pbx.is_registered(PROXY_ACCOUNT).await, "restart forgot us");
    pbx.wait_registered(PROXY_ACCOUNT, Duration::from_secs(15))
        .await;
}

#[tokio::test]
async fn registers_again_as_soon_as_a_stopped_pbx_answers_again() {
    let mut pbx = Pbx::start().await;
    let mut config = config(&pbx, PASSWORD, SipTransport::Udp);
    config.sip.register_expires = Duration::from_secs(3600);
    let ua = start(&config).await;
    pbx.wait_registered(PROXY_ACCOUNT, SHORT).await;
    pbx.stop();
    wait_status(&ua.ua, "PBX down", |s| {
        matches!(s.pbx, PbxState::Down { .. })
    })
    .await;
    pbx.restart().await;
    // the refresh is an hour away: the ping that sees the PBX back triggers the REGISTER
    pbx.wait_registered(PROXY_ACCOUNT, Duration::from_secs(5))
        .await;
}

#[tokio::test]
async fn unregisters_on_shutdown() {
    let pbx = Pbx::start().await;
    let ua = registered_ua(&pbx).await;
    ua.ua.shutdown().await;
    pbx.wait_unregistered(PROXY_ACCOUNT, Duration::from_secs(8))
        .await;
    assert!(ua.ua.status().registration == RegistrationState::Disabled);
    let err = ua
        .ua
        .place_call(OutgoingInvite {
            log_id: "after-shutdown".into(),
            callee: "1001".into(),
            caller_id: "alice".into(),
            headers: vec![],
            gateway: None,
            sdp_offer: sdp(4000),
        })
        .await
        .expect_err("no calls after shutdown");
    assert!(err.to_string().contains("shut down"), "{err}");
}

#[tokio::test]
async fn cancelling_the_shutdown_token_unregisters_too() {
    let pbx = Pbx::start().await;
    let token = CancellationToken::new();
    let (_ua, _calls) = SipUa::start_with(
        &config(&pbx, PASSWORD, SipTransport::Udp),
        token.clone(),
        options(),
    )
    .await
    .expect("UA starts");
    pbx.wait_registered(PROXY_ACCOUNT, SHORT).await;
    token.cancel();
    pbx.wait_unregistered(PROXY_ACCOUNT, Duration::from_secs(4))
        .await;
}

#[tokio::test]
async fn wrong_password_fails_clearly_and_retries_with_back_off() {
    let pbx = Pbx::start().await;
    let ua = start(&config(&pbx, "4321", SipTransport::Udp)).await;
    wait_status(&ua.ua, "failed", |s| {
        matches!(&s.registration, RegistrationState::Failed { .. })
    })
    .await;
    let RegistrationState::Failed { last_error, .. } = ua.ua.status().registration else {
        unreachable!()
    };
    assert!(
        (last_error.starts_with("403") || last_error.starts_with("401"))
            && last_error.contains("wrong"),
        "clear error: {last_error}"
    );
    assert!(!last_error.contains("4321"), "password never shown");
    let attempts = || pbx.log().matches("auth failed for 1000").count();
    let before = attempts();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let during = attempts() - before;
    // back-off 0.5 s doubling to 4 s: a handful of attempts in 6 s, not hundreds
    assert!(
        (1..=8).contains(&during),
        "{during} failed REGISTERs in 6 s"
    );
    assert!(!pbx.is_registered(PROXY_ACCOUNT).await);
}

#[tokio::test]
async fn registers_over_tcp() {
    let pbx = Pbx::start().await;
    let ua = start(&config(&pbx, PASSWORD, SipTransport::Tcp)).await;
    pbx.wait_registered(PROXY_ACCOUNT, SHORT).await;
    assert_eq!(ua.ua.status().transport, "tcp");
    wait_status(&ua.ua, "PBX up over TCP", |s| {
        matches!(s.pbx, PbxState::Up { .. })
    })
    .await;
    ua.ua.shutdown().await;
    pbx.wait_unregistered(PROXY_ACCOUNT, Duration::from_secs(8))
        .await;
}

#[tokio::test]
async fn pings_show_the_pbx_up_then_down() {
    let mut pbx = Pbx::start().await;
    let ua = start(&config(&pbx, PASSWORD, SipTransport::Udp)).await;
    wait_status(&ua.ua, "PBX up", |s| matches!(s.pbx, PbxState::Up { .. })).await;
    pbx.stop();
    wait_status(&ua.ua, "PBX down", |s| {
        matches!(s.pbx, PbxState::Down { .. })
    })
    .await;
}

/// Sends one SIP request over UDP from `bind_ip` and returns all responses (text) until a final one.
async fn raw_request(
    bind_ip: [u8; 4],
    to: SocketAddr,
    build: impl Fn(SocketAddr) -> String,
) -> Vec<String> {
    let sock = UdpSocket::bind(SocketAddr::from((bind_ip, 0)))
        .await
        .expect("bind raw socket");
    let local = sock.local_addr().expect("local addr");
    sock.send_to(build(local).as_bytes(), to)
        .await
        .expect("send");
    let mut buf = vec![0u8; 8192];
    let mut responses = Vec::new();
    loop {
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no final response; got {responses:?}"))
            .expect("recv");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let code: u16 = text[8..11].parse().expect("status code");
        responses.push(text);
        if code >= 200 {
            return responses;
        }
    }
}

#[tokio::test]
async fn options_sent_to_the_ua_get_200_with_allow_and_accept() {
    let pbx = Pbx::start().await;
    let ua = start(&config(&pbx, PASSWORD, SipTransport::Udp)).await;
    let target = ua.ua.local_addr();
    let responses = raw_request([127, 0, 0, 1], target, |local| {
        format!(
            "OPTIONS sip:{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bKopt1\r\n\
             Max-Forwards: 70\r\nFrom: <sip:probe@{local}>;tag=p1\r\nTo: <sip:{target}>\r\n\
             Call-ID: opt1@probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
    })
    .await;
    let last = responses.last().expect("a response");
    assert!(last.starts_with("SIP/2.0 200"), "{last}");
    let lower = last.to_ascii_lowercase();
    assert!(
        lower.contains("allow:") && lower.contains("invite") && lower.contains("bye"),
        "{last}"
    );
    assert!(lower.contains("accept: application/sdp"), "{last}");
}

fn raw_invite(target: SocketAddr, local: SocketAddr, tag: &str) -> String {
    let body = sdp(4002);
    format!(
        "INVITE sip:{PROXY_ACCOUNT}@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bK{tag}\r\n\
         Max-Forwards: 70\r\nFrom: \"Mallory\" <sip:666@{local}>;tag={tag}\r\nTo: <sip:{PROXY_ACCOUNT}@{target}>\r\n\
         Call-ID: {tag}@raw\r\nCSeq: 1 INVITE\r\nContact: <sip:666@{local}>\r\nX-Number: alice\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn invite_from_a_stranger_is_refused_403_and_allowed_peers_get_through() {
    let pbx = Pbx::start().await;
    let mut config = config(&pbx, PASSWORD, SipTransport::Udp);
    config.sip.allowed_peers = vec![IpAddr::from([127, 0, 0, 3])];
    let mut ua = start(&config).await;
    let target = ua.ua.local_addr();

    let responses = raw_request([127, 0, 0, 2], target, |local| {
        raw_invite(target, local, "s1")
    })
    .await;
    assert!(
        responses
            .last()
            .is_some_and(|r| r.starts_with("SIP/2.0 403")),
        "stranger refused: {responses:?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), ua.calls.recv())
            .await
            .is_err(),
        "no call for a refused INVITE"
    );

    // an allowed peer's INVITE becomes a call; dropping it refuses with 480
    let sock = UdpSocket::bind("127.0.0.3:0")
        .await
        .expect("bind 127.0.0.3");
    let local = sock.local_addr().expect("addr");
    sock.send_to(raw_invite(target, local, "a1").as_bytes(), target)
        .await
        .expect("send");
    let call = incoming(&mut ua).await;
    assert_eq!(call.target_uid, "alice");
    assert_eq!(call.caller_number, "666");
    assert_eq!(call.caller_display.as_deref(), Some("Mallory"));
    assert_eq!(call.source, local);
    assert!(call
        .sdp_offer
        .as_deref()
        .is_some_and(|s| s.contains("PCMU")));
    drop(call);
    let mut buf = vec![0u8; 8192];
    let final_code = loop {
        let (n, _) = tokio::time::timeout(SHORT, sock.recv_from(&mut buf))
            .await
            .expect("a response")
            .expect("recv");
        let code: u16 = String::from_utf8_lossy(&buf[8..11]).parse().expect("code");
        if code >= 200 {
            break code;
        }
        let _ = n;
    };
    assert_eq!(final_code, 480, "a dropped unanswered call is refused");
}

#[tokio::test]
async fn invite_without_a_usable_target_is_refused() {
    let pbx = Pbx::start().await;
    let mut config = config(&pbx, PASSWORD, SipTransport::Udp);
    config.sip.allowed_peers = vec![IpAddr::from([127, 0, 0, 4])];
    let mut ua = start(&config).await;
    let target = ua.ua.local_addr();
    // R-URI "0" (the prefix alone) and no X-Number: incomplete
    let responses = raw_request([127, 0, 0, 4], target, |local| {
        raw_invite(target, local, "n1")
            .replace("X-Number: alice\r\n", "")
            .replacen(&format!("INVITE sip:{PROXY_ACCOUNT}@"), "INVITE sip:0@", 1)
    })
    .await;
    assert!(
        responses
            .last()
            .is_some_and(|r| r.starts_with("SIP/2.0 484")),
        "{responses:?}"
    );
    // target headers that name nobody: 484 for an empty user, 404 for an impossible one
    let long = "a".repeat(300);
    for (i, (value, code)) in [
        ("<sip:@127.0.0.1>".to_string(), "484"),
        ("\"Alice\" <sip:%20@127.0.0.1>;x=y".to_string(), "484"),
        ("<sip:al%00ice@127.0.0.1>".to_string(), "404"),
        ("<sip:al%zzice@127.0.0.1>".to_string(), "404"),
        (format!("<sip:{long}@127.0.0.1>"), "404"),
        ("<http://127.0.0.1/alice>".to_string(), "404"),
    ]
    .into_iter()
    .enumerate()
    {
        let responses = raw_request([127, 0, 0, 4], target, |local| {
            raw_invite(target, local, &format!("b{i}"))
                .replace("X-Number: alice\r\n", &format!("X-Number: {value}\r\n"))
        })
        .await;
        assert!(
            responses
                .last()
                .is_some_and(|r| r.starts_with(&format!("SIP/2.0 {code}"))),
            "X-Number: {value} -> {responses:?}"
        );
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), ua.calls.recv())
            .await
            .is_err(),
        "no call"
    );

    // still serving: FreeSWITCH's form (R-URI and To are 1000's contact) is a call for alice
    let sock = UdpSocket::bind("127.0.0.4:0").await.expect("bind");
    let local = sock.local_addr().expect("addr");
    let invite = raw_invite(target, local, "fs1").replace(
        "X-Number: alice\r\n",
        "X-Number: <sip:alice@127.0.0.1>\r\n\
         Remote-Party-ID: \"Extension 1002\" <sip:1002@127.0.0.1>;party=calling;screen=yes;privacy=off\r\n",
    );
    sock.send_to(invite.as_bytes(), target).await.expect("send");
    let call = incoming(&mut ua).await;
    assert_eq!(call.target_uid, "alice");
}

#[tokio::test]
async fn the_target_header_is_configurable() {
    let pbx = Pbx::start().await;
    let mut config = config(&pbx, PASSWORD, SipTransport::Udp);
    config.sip.allowed_peers = vec![IpAddr::from([127, 0, 0, 5])];
    config.sip.target_header = "X-Target".to_string();
    let mut ua = start(&config).await;
    let target = ua.ua.local_addr();
    let sock = UdpSocket::bind("127.0.0.5:0").await.expect("bind");
    let local = sock.local_addr().expect("addr");
    // X-Number is just another header now
    let invite = raw_invite(target, local, "t1").replace(
        "X-Number: alice\r\n",
        "X-Number: alice\r\nx-target: \"Bob\" <sip:bob@127.0.0.1;user=phone>\r\n",
    );
    sock.send_to(invite.as_bytes(), target).await.expect("send");
    let call = incoming(&mut ua).await;
    assert_eq!(call.target_uid, "bob", "header names are case-insensitive");
}

#[tokio::test]
async fn phone_dialling_0alice_reaches_the_ua_as_a_call_for_alice() {
    let pbx = Pbx::start().await;
    let mut ua = registered_ua(&pbx).await;
    let phone = Baresip::start(pbx.addr(), "1001", phone_options(false)).await;
    phone.dial("0alice").await;
    let call = incoming(&mut ua).await;
    assert_eq!(call.target_uid, "alice");
    assert_eq!(call.caller_number, "1001");
    assert!(call
        .sdp_offer
        .as_deref()
        .is_some_and(|s| s.contains("m=audio")));
    assert_eq!(call.source.ip(), pbx.addr().ip());
    assert!(!call.call.log_id().is_empty());
}

#[tokio::test]
async fn answered_incoming_call_ends_with_the_phones_bye() {
    let pbx = Pbx::start().await;
    let mut ua = registered_ua(&pbx).await;
    let phone = Baresip::start(pbx.addr(), "1001", phone_options(false)).await;
    phone.dial("0alice").await;
    let mut call = incoming(&mut ua).await.call;
    call.ringing().expect("180");
    phone.wait_for("CALL_RINGING", SHORT).await;
    call.answer(sdp(ports::free_port_pair())).expect("200");
    phone.wait_for("CALL_ESTABLISHED", SHORT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    phone.hangup().await;
    assert!(matches!(
        event(&mut call, SHORT).await,
        SipCallEvent::RemoteBye
    ));
    assert!(matches!(
        event(&mut call, SHORT).await,
        SipCallEvent::Terminated
    ));
    phone.wait_for("CALL_CLOSED", SHORT).await;
    wait_status(&ua.ua, "no calls", |s| {
        s.active_calls == 0 && s.dialogs == 0
    })
    .await;
}

#[tokio::test]
async fn bye_from_the_ua_ends_the_phones_call() {
    let pbx = Pbx::start().await;
    let mut ua = registered_ua(&pbx).await;
    let phone = Baresip::start(pbx.addr(), "1001", phone_options(false)).await;
    phone.dial("0alice").await;
    let mut call = incoming(&mut ua).await.call;
    call.answer(sdp(ports::free_port_pair())).expect("200");
    phone.wait_for("CALL_ESTABLISHED", SHORT).await;
    call.bye().await.expect("BYE");
    phone.wait_for("CALL_CLOSED", SHORT).await;
    assert!(matches!(
        event(&mut call, SHORT).await,
        SipCallEvent::Terminated
    ));
}

#[tokio::test]
async fn rejecting_with_486_closes_the_phones_call_busy() {
    let pbx = Pbx::start().await;
    let mut ua = registered_ua(&pbx).await;
    let phone = Baresip::start(pbx.addr(), "1001", phone_options(false)).await;
    phone.dial("0alice").await;
    let mut call = incoming(&mut ua).await.call;
    call.reject(486, "Busy Here").expect("486");
    let closed = phone.wait_for("CALL_CLOSED", SHORT).await;
    assert!(closed.param.starts_with("486"), "{:?}", closed.param);
    assert!(matches!(
        event(&mut call, SHORT).await,
        SipCallEvent::Terminated
    ));
    assert!(call.reject(700, "x").is_err(), "not a final error code");
}

#[tokio::test]
async fn phone_hanging_up_before_the_answer_cancels_the_call() {
    let pbx = Pbx::start().await;
    let mut ua = registered_ua(&pbx).await;
    let phone = Baresip::start(pbx.addr(), "1001", phone_options(false)).await;
    phone.dial("0alice").await;
    let mut call = incoming(&mut ua).await.call;
    call.ringing().expect("180");
    phone.wait_for("CALL_RINGING", SHORT).await;
    phone.hangup().await;
    assert!(matches!(
        event(&mut call, SHORT).await,
        SipCallEvent::Canceled
    ));
    assert!(matches!(
        event(&mut call, SHORT).await,
        SipCallEvent::Terminated
    ));
    assert!(call.answer(sdp(4000)).is_err(), "too late to answer");
}

fn invite(callee: &str) -> OutgoingInvite {
    OutgoingInvite {
        log_id: format!("out-{callee}"),
        callee: callee.to_string(),
        caller_id: "alice".to_string(),
        headers: vec![("X-ArInfo".to_string(), "test".to_string())],
        gateway: None,
        sdp_offer: sdp(ports::free_port_pair()),
    }
}

#[tokio::test]
async fn outgoing_call_is_answered_and_bye_ends_it_at_the_phone() {
    let pbx = Pbx::start().await;
    let ua = registered_ua(&pbx).await;
    let phone = Baresip::start(pbx.addr(), "1001", phone_options(true)).await;
    let mut call = ua.ua.place_call(invite("1001")).await.expect("INVITE");
    match after_provisionals(&mut call).await {
        SipCallEvent::Answered { sdp } => assert!(sdp.contains("m=audio"), "{sdp}"),
        other => panic!("expected Answered, got {other:?}"),
    }
    let established = phone.wait_for("CALL_ESTABLISHED", SHORT).await;
    assert!(
        established.peer_uri.contains(PROXY_ACCOUNT),
        "From is the proxy account: {established:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    call.bye().await.expect("BYE");
    phone.wait_for("CALL_CLOSED", SHORT).await;
    assert!(matches!(
        event(&mut call, SHORT).await,
        SipCallEvent::Terminated
    ));
}

#[tokio::test]
async fn outgoing_call_cancelled_while_ringing() {
    let pbx = Pbx::start().await;
    let ua = registered_ua(&pbx).await;
    let phone = Baresip::start(pbx.addr(), "1001", phone_options(false)).await;
    let mut call = ua.ua.place_call(invite("1001")).await.expect("INVITE");
    phone.wait_for("CALL_INCOMING", SHORT).await;
    match event(&mut call, SHORT).await {
        SipCallEvent::Provisional { code, .. } => assert_eq!(code, 180),
        other => panic!("expected 180, got {other:?}"),
    }
    call.cancel().await.expect("CANCEL");
    phone.wait_for("CALL_CLOSED", SHORT).await;
    match event(&mut call, SHORT).await {
        SipCallEvent::Failed { code, .. } => assert_eq!(code, 487),
        other => panic!("expected Failed 487, got {other:?}"),
    }
    assert!(matches!(
        event(&mut call, SHORT).await,
        SipCallEvent::Terminated
    ));
}

#[tokio::test]
async fn outgoing_call_to_an_unregistered_or_unknown_extension_fails() {
    let pbx = Pbx::start().await;
    let ua = registered_ua(&pbx).await;
    for (callee, expected) in [("1009", 480), ("2000", 404)] {
        let mut call = ua.ua.place_call(invite(callee)).await.expect("INVITE");
        match after_provisionals(&mut call).await {
            SipCallEvent::Failed { code, reason } => {
                assert_eq!(code, expected, "{callee}: {reason}")
            }
            other => panic!("{callee}: expected Failed, got {other:?}"),
        }
        assert!(matches!(
            event(&mut call, SHORT).await,
            SipCallEvent::Terminated
        ));
    }
    wait_status(&ua.ua, "no calls", |s| {
        s.active_calls == 0 && s.dialogs == 0
    })
    .await;
    let bad = ua.ua.place_call(invite("10 01")).await;
    assert!(
        bad.is_err(),
        "a callee with a space is refused before sending"
    );
    for (name, value) in [("X-Bad\r\nVia", "x"), ("X-Ok", "a\r\nVia: evil"), ("", "x")] {
        let mut injected = invite("1001");
        injected.headers = vec![(name.to_string(), value.to_string())];
        assert!(
            ua.ua.place_call(injected).await.is_err(),
            "header {name:?}: {value:?} must be refused"
        );
    }
}

#[tokio::test]
async fn incoming_calls_get_503_when_the_call_layer_is_gone() {
    let pbx = Pbx::start().await;
    let Ua { ua, calls, _token } = start(&config(&pbx, PASSWORD, SipTransport::Udp)).await;
    drop(calls);
    let target = ua.local_addr();
    let responses = raw_request([127, 0, 0, 1], target, |local| {
        raw_invite(target, local, "g1")
    })
    .await;
    assert!(
        responses
            .last()
            .is_some_and(|r| r.starts_with("SIP/2.0 503")),
        "{responses:?}"
    );
    assert!(
        responses[0].starts_with("SIP/2.0 100"),
        "100 Trying first: {responses:?}"
    );
    wait_status(&ua, "no calls", |s| s.active_calls == 0 && s.dialogs == 0).await;
}

#[tokio::test]
async fn reinvite_from_the_phone_is_answered_through_the_call_layer() {
    let pbx = Pbx::start().await;
    let mut ua = registered_ua(&pbx).await;
    let phone = Baresip::start(pbx.addr(), "1001", phone_options(false)).await;
    phone.dial("0alice").await;
    let mut call = incoming(&mut ua).await.call;
    let answer = sdp(ports::free_port_pair());
    call.answer(answer.clone()).expect("200");
    phone.wait_for("CALL_ESTABLISHED", SHORT).await;

    // hold: a re-INVITE with a=sendonly; the call layer keeps the previous SDP
    phone.command("hold", "").await.expect("hold");
    match event(&mut call, SHORT).await {
        SipCallEvent::Reoffer { sdp, reply } => {
            assert!(
                sdp.as_deref().is_some_and(|s| s.contains("sendonly")),
                "{sdp:?}"
            );
            reply.send(None).expect("driver waits for the reply");
        }
        other => panic!("expected Reoffer, got {other:?}"),
    }
    // resume: the call layer answers with a new SDP
    tokio::time::sleep(Duration::from_secs(1)).await;
    phone.command("resume", "").await.expect("resume");
    match event(&mut call, SHORT).await {
        SipCallEvent::Reoffer { sdp, reply } => {
            assert!(
                sdp.as_deref().is_some_and(|s| s.contains("sendrecv")),
                "{sdp:?}"
            );
            let new_answer = answer.replace("o=srbridge 1 1", "o=srbridge 1 2");
            reply.send(Some(new_answer)).expect("driver waits");
        }
        other => panic!("expected Reoffer, got {other:?}"),
    }
    // hold again: the reply is dropped, the last SDP is reused anyway
    tokio::time::sleep(Duration::from_secs(1)).await;
    phone.command("hold", "").await.expect("hold");
    match event(&mut call, SHORT).await {
        SipCallEvent::Reoffer { reply, .. } => drop(reply),
        other => panic!("expected Reoffer, got {other:?}"),
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        phone
            .try_wait_for("CALL_CLOSED", Duration::from_millis(200))
            .await
            .is_none(),
        "the call survives the re-INVITEs"
    );
    call.bye().await.expect("BYE");
    phone.wait_for("CALL_CLOSED", SHORT).await;
}

#[tokio::test]
async fn dropping_an_answered_call_hangs_up_and_frees_the_dialog() {
    let pbx = Pbx::start().await;
    let ua = registered_ua(&pbx).await;
    let phone = Baresip::start(pbx.addr(), "1001", phone_options(true)).await;
    let mut call = ua.ua.place_call(invite("1001")).await.expect("INVITE");
    assert!(matches!(
        after_provisionals(&mut call).await,
        SipCallEvent::Answered { .. }
    ));
    phone.wait_for("CALL_ESTABLISHED", SHORT).await;
    assert_eq!(ua.ua.status().active_calls, 1);
    drop(call);
    phone.wait_for("CALL_CLOSED", SHORT).await;
    wait_status(&ua.ua, "no calls", |s| {
        s.active_calls == 0 && s.dialogs == 0
    })
    .await;
}

#[tokio::test]
async fn info_in_the_dialog_gets_200_and_the_peers_bye_ends_the_call() {
    let pbx = Pbx::start().await;
    let mut ua = registered_ua(&pbx).await;
    let mut sipp = Sipp::new("uac_info.xml")
        .service(PROXY_ACCOUNT)
        .timeout(SHORT)
        .spawn(Some(ua.ua.local_addr()));
    let incoming = incoming(&mut ua).await;
    assert_eq!(incoming.target_uid, "alice");
    let mut call = incoming.call;
    call.answer(sdp(ports::free_port_pair())).expect("200");
    assert!(matches!(
        event(&mut call, SHORT).await,
        SipCallEvent::RemoteBye
    ));
    assert!(matches!(
        event(&mut call, SHORT).await,
        SipCallEvent::Terminated
    ));
    let result = sipp.wait(SHORT).await;
    result.assert_success();
    assert_eq!(
        result
            .received_status_codes()
            .iter()
            .filter(|c| **c == 200)
            .count(),
        3,
        "200 for INVITE, INFO and BYE: {:?}",
        result.received_status_codes()
    );
}

#[tokio::test]
async fn pstn_calls_go_straight_to_the_gateway() {
    let pbx = Pbx::start().await;
    let ua = registered_ua(&pbx).await;
    let gateway_port = ports::free_port();
    let mut gateway = Sipp::new("uas_log_headers.xml")
        .service("gw")
        .local_port(gateway_port)
        .timeout(SHORT)
        .spawn(None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let gateway_addr = SocketAddr::from(([127, 0, 0, 1], gateway_port));
    let mut call = ua
        .ua
        .place_call(OutgoingInvite {
            gateway: Some(gateway_addr),
            ..invite("008613800000000")
        })
        .await
        .expect("INVITE");
    match after_provisionals(&mut call).await {
        SipCallEvent::Answered { sdp } => assert!(sdp.contains("PCMU"), "{sdp}"),
        other => panic!("expected Answered, got {other:?}"),
    }
    call.bye().await.expect("BYE");
    assert!(matches!(
        event(&mut call, SHORT).await,
        SipCallEvent::Terminated
    ));
    let result = gateway.wait(SHORT).await;
    result.assert_success();
    assert!(
        result
            .logs
            .contains(&format!("RURI=sip:008613800000000@{gateway_addr}")),
        "R-URI names the gateway: {}",
        result.logs
    );
    let line = |name: &str| {
        result
            .logs
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_string))
            .unwrap_or_else(|| panic!("no {name} in {}", result.logs))
    };
    let from = line("From");
    assert!(
        from.starts_with("\"alice\" <sip:1000@"),
        "From: web user as display name, proxy account as user: {from}"
    );
    assert!(
        line("PAI").contains("\"alice\" <sip:alice@"),
        "{}",
        line("PAI")
    );
    let rpid = line("RPID");
    assert!(
        rpid.contains("<sip:alice@") && rpid.contains("party=calling"),
        "{rpid}"
    );
    assert_eq!(line("X-ArInfo"), "test");
}

fn fast_timers() -> UaOptions {
    UaOptions {
        t1: Duration::from_millis(50),
        ..options()
    }
}

#[tokio::test]
async fn acks_cross_the_record_routed_pbx_so_answered_calls_stay_up() {
    let pbx = Pbx::start().await;
    let token = CancellationToken::new();
    // T1 = 50 ms: a missing ACK would end the call after 64*T1 = 3.2 s
    let (ua, mut calls) = SipUa::start_with(
        &config(&pbx, PASSWORD, SipTransport::Udp),
        token.clone(),
        fast_timers(),
    )
    .await
    .expect("UA starts");
    pbx.wait_registered(PROXY_ACCOUNT, SHORT).await;
    let phone = Baresip::start(pbx.addr(), "1001", phone_options(false)).await;
    let outgoing_phone = Baresip::start(pbx.addr(), "1002", phone_options(true)).await;

    phone.dial("0alice").await;
    let mut incoming = tokio::time::timeout(SHORT, calls.recv())
        .await
        .expect("call")
        .expect("call")
        .call;
    incoming.answer(sdp(ports::free_port_pair())).expect("200");
    phone.wait_for("CALL_ESTABLISHED", SHORT).await;

    let mut outgoing = ua.place_call(invite("1002")).await.expect("INVITE");
    assert!(matches!(
        after_provisionals(&mut outgoing).await,
        SipCallEvent::Answered { .. }
    ));
    outgoing_phone.wait_for("CALL_ESTABLISHED", SHORT).await;

    tokio::time::sleep(Duration::from_secs(5)).await;
    phone.hangup().await;
    assert!(
        matches!(event(&mut incoming, SHORT).await, SipCallEvent::RemoteBye),
        "the incoming call was still up after 5 s"
    );
    outgoing_phone.hangup().await;
    assert!(
        matches!(event(&mut outgoing, SHORT).await, SipCallEvent::RemoteBye),
        "the outgoing call was still up after 5 s"
    );
}

#[tokio::test]
async fn outgoing_call_to_a_dead_pbx_fails_408_over_udp() {
    let mut pbx = Pbx::start().await;
    let token = CancellationToken::new();
    let (ua, _calls) = SipUa::start_with(
        &config(&pbx, PASSWORD, SipTransport::Udp),
        token,
        fast_timers(),
    )
    .await
    .expect("UA starts");
    pbx.stop();
    let mut call = ua.place_call(invite("1001")).await.expect("INVITE");
    match after_provisionals(&mut call).await {
        SipCallEvent::Failed { code, reason } => assert_eq!(code, 408, "{reason}"),
        other => panic!("expected Failed 408, got {other:?}"),
    }
    assert!(matches!(
        event(&mut call, SHORT).await,
        SipCallEvent::Terminated
    ));
}

#[tokio::test]
async fn outgoing_call_to_a_dead_pbx_fails_503_over_tcp() {
    let mut pbx = Pbx::start().await;
    let ua = start(&config(&pbx, PASSWORD, SipTransport::Tcp)).await;
    pbx.wait_registered(PROXY_ACCOUNT, SHORT).await;
    pbx.stop();
    // once the pings saw the connection go, a new one is refused at once
    wait_status(&ua.ua, "PBX down", |s| {
        matches!(s.pbx, PbxState::Down { .. })
    })
    .await;
    let mut call = ua.ua.place_call(invite("1001")).await.expect("INVITE");
    match after_provisionals(&mut call).await {
        SipCallEvent::Failed { code, reason } => assert_eq!(code, 503, "{reason}"),
        other => panic!("expected Failed 503, got {other:?}"),
    }
    assert!(matches!(
        event(&mut call, SHORT).await,
        SipCallEvent::Terminated
    ));
}

#[tokio::test]
async fn calls_work_both_ways_over_tcp() {
    let pbx = Pbx::start().await;
    let mut ua = start(&config(&pbx, PASSWORD, SipTransport::Tcp)).await;
    pbx.wait_registered(PROXY_ACCOUNT, SHORT).await;
    let phone = Baresip::start(pbx.addr(), "1001", phone_options(true)).await;

    phone.dial("0alice").await;
    let incoming = incoming(&mut ua).await;
    assert_eq!(incoming.target_uid, "alice");
    let mut call = incoming.call;
    call.answer(sdp(ports::free_port_pair())).expect("200");
    phone.wait_for("CALL_ESTABLISHED", SHORT).await;
    call.bye().await.expect("BYE");
    phone.wait_for("CALL_CLOSED", SHORT).await;
    assert!(matches!(
        event(&mut call, SHORT).await,
        SipCallEvent::Terminated
    ));

    let mut call = ua.ua.place_call(invite("1001")).await.expect("INVITE");
    assert!(matches!(
        after_provisionals(&mut call).await,
        SipCallEvent::Answered { .. }
    ));
    phone.wait_for("CALL_ESTABLISHED", SHORT).await;
    phone.hangup().await;
    assert!(matches!(
        event(&mut call, SHORT).await,
        SipCallEvent::RemoteBye
    ));
    assert!(matches!(
        event(&mut call, SHORT).await,
        SipCallEvent::Terminated
    ));
}

/// Reads datagrams on `sock` until one starts with `method`; returns it.
async fn recv_request(sock: &UdpSocket, method: &str) -> String {
    let mut buf = vec![0u8; 8192];
    loop {
        let (n, _) = tokio::time::timeout(SHORT, sock.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {method} arrived"))
            .expect("recv");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.starts_with(method) {
            return text;
        }
    }
}

fn header<'a>(msg: &'a str, name: &str) -> &'a str {
    msg.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
        .unwrap_or_else(|| panic!("no {name} header in {msg}"))
}

#[tokio::test]
async fn public_ip_goes_into_contact_and_via_and_the_request_uri_keeps_the_port() {
    // a silent fake PBX: we only look at what the UA sends
    let fake = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let fake_addr = fake.local_addr().expect("addr");
    let mut config = config_for(fake_addr, PASSWORD, SipTransport::Udp);
    config.sip.public_ip = Some(IpAddr::from([127, 0, 0, 9]));
    config.sip.options_interval = Duration::ZERO;
    let ua = start(&config).await;
    let public = format!("127.0.0.9:{}", ua.ua.local_addr().port());
    assert_eq!(ua.ua.contact_addr().to_string(), public);

    let register = recv_request(&fake, "REGISTER").await;
    assert!(
        register.starts_with(&format!("REGISTER sip:{fake_addr} SIP/2.0")),
        "{register}"
    );
    let via = header(&register, "Via");
    assert!(via.contains(&public) && via.contains("rport"), "{via}");
    assert!(
        header(&register, "Contact").contains(&format!("sip:1000@{public}")),
        "{register}"
    );
    assert_eq!(header(&register, "Expires"), "60");

    let _call = ua.ua.place_call(invite("1001")).await.expect("INVITE");
    let invite = recv_request(&fake, "INVITE").await;
    assert!(
        invite.starts_with(&format!("INVITE sip:1001@{fake_addr} SIP/2.0")),
        "the R-URI carries the PBX port: {invite}"
    );
    assert!(header(&invite, "Via").contains(&public), "{invite}");
    assert!(
        header(&invite, "Contact").contains(&format!("sip:1000@{public}")),
        "{invite}"
    );
    assert!(
        header(&invite, "From").contains(&format!("sip:1000@{fake_addr}")),
        "From is the proxy account at the PBX: {invite}"
    );
    assert!(!invite.contains("0.0.0.0"), "{invite}");
}
