//! Proves the test PBX config and the real-peer harness (`tests/support`) with real peers only:
//! Kamailio + SIPp + baresip, all on 127.0.0.1. No srbridge code is involved.

mod support;

use std::time::Duration;

use support::audio::{self, write_tone_wav};
use support::pbx::PASSWORD;
use support::sipp::{self, Sipp};
use support::{assert_wav_tone, ports, Baresip, BaresipOptions, Pbx};

const SHORT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn sipp_registers_with_digest_auth() {
    let pbx = Pbx::start().await;
    let port = ports::free_port();
    let result = sipp::register(pbx.addr(), "1001", PASSWORD, port, 60).await;
    result.assert_success();
    assert_eq!(
        result.received_status_codes(),
        vec![401, 200],
        "challenge then success"
    );
    assert!(
        pbx.is_registered("1001").await,
        "1001 should be in the location table"
    );
    assert!(!pbx.is_registered("1002").await, "1002 never registered");
}

#[tokio::test]
async fn wrong_password_is_refused_and_not_registered() {
    let pbx = Pbx::start().await;
    let result = Sipp::new("register_once.xml")
        .service("1002")
        .auth("1002", "4321")
        .timeout(SHORT)
        .run(Some(pbx.addr()))
        .await;
    result.assert_success();
    let codes = result.received_status_codes();
    assert_eq!(codes[0], 401, "first REGISTER is challenged: {codes:?}");
    assert!(
        matches!(codes.last(), Some(401 | 403)),
        "wrong password refused: {codes:?}"
    );
    assert!(
        !pbx.is_registered("1002").await,
        "1002 must not be registered with a wrong password"
    );

    // an account outside 1000-1019 does not exist
    let unknown = sipp::register(pbx.addr(), "1050", PASSWORD, ports::free_port(), 60).await;
    assert!(!unknown.success(), "account 1050 must not register");
    let codes = unknown.received_status_codes();
    assert!(
        !codes.is_empty() && codes.iter().all(|c| *c == 403),
        "unknown account refused: {codes:?}"
    );
    assert!(!pbx.is_registered("1050").await);
}

#[tokio::test]
async fn phone_to_phone_call_carries_the_tone() {
    let pbx = Pbx::start().await;
    let media = tempfile::tempdir().expect("temp dir");
    let tone = media.path().join("tone440.wav");
    write_tone_wav(&tone, 440.0, 0.5, Duration::from_secs(8), 8000);

    let callee = Baresip::start(
        pbx.addr(),
        "1001",
        BaresipOptions {
            auto_answer: true,
            play_wav: Some(tone),
            record_dir: None,
        },
    )
    .await;
    let caller = Baresip::start(pbx.addr(), "1002", BaresipOptions::default()).await;
    pbx.wait_registered("1001", SHORT).await;
    pbx.wait_registered("1002", SHORT).await;

    caller.dial("1001").await;
    caller.wait_for("CALL_ESTABLISHED", SHORT).await;
    callee.wait_for("CALL_ESTABLISHED", SHORT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    caller.hangup().await;
    caller.wait_for("CALL_CLOSED", SHORT).await;
    let closed = callee.wait_for("CALL_CLOSED", SHORT).await;
    assert_eq!(closed.direction, "incoming");

    let heard = caller.received_wav().expect("caller recorded the call");
    let analysis = assert_wav_tone(&heard, 440.0, 5.0, -12.0);
    assert!(
        analysis.loud_secs >= 1.0,
        "at least a second of tone, got {analysis:?}"
    );
    // and the callee heard the caller's silence, not its own tone
    let (callee_heard, rate) =
        audio::read_wav(&callee.received_wav().expect("callee recorded the call"));
    assert!(
        audio::rms_dbfs(&callee_heard) < -50.0,
        "callee should hear silence ({rate} Hz)"
    );
}

/// A phone (account `caller`) dials `0alice` on `pbx`; returns the `<log>` of the UAS registered
/// as the proxy account 1000 (what the bridge would get) and that UAS's port.
async fn dial_0alice_to_the_proxy_account(pbx: &Pbx, caller: &str) -> (String, u16) {
    let mut uas = sipp::registered_uas(
        pbx.addr(),
        "1000",
        "uas_answer.xml",
        1,
        Duration::from_secs(20),
    )
    .await;
    pbx.wait_registered("1000", SHORT).await;
    let phone = Baresip::start(pbx.addr(), caller, BaresipOptions::default()).await;

    phone.dial("0alice").await;
    phone.wait_for("CALL_ESTABLISHED", SHORT).await;
    phone.hangup().await;
    phone.wait_for("CALL_CLOSED", SHORT).await;

    let result = uas.wait(SHORT).await;
    result.assert_success();
    (result.logs, uas.local_port())
}

#[tokio::test]
async fn dialling_0alice_reaches_the_proxy_account_as_freeswitch_sends_it() {
    let pbx = Pbx::start().await;
    let (logs, port) = dial_0alice_to_the_proxy_account(&pbx, "1003").await;
    // SRProxy's `sip_h_X-Number=<sip:$1@${domain_name}>`: a name-addr
    assert!(
        logs.contains("X-Number=<sip:alice@127.0.0.1>\n"),
        "X-Number header: {logs}"
    );
    let contact = format!("sip:1000@127.0.0.1:{port}");
    assert!(
        logs.contains(&format!("RURI={contact}")),
        "R-URI rewritten to 1000's contact: {logs}"
    );
    assert!(
        logs.contains(&format!("TO=<{contact}")),
        "To rewritten to 1000's contact: {logs}"
    );
    assert!(
        !logs.contains("0alice"),
        "nothing dialled is left in the request: {logs}"
    );
    assert!(
        logs.contains(
            "RPID=\"Extension 1003\" <sip:1003@127.0.0.1>;party=calling;screen=yes;privacy=off"
        ),
        "Remote-Party-ID for the caller: {logs}"
    );
    assert!(
        logs.lines()
            .any(|l| l.starts_with("FROM=") && l.contains("sip:1003@")),
        "the caller's From keeps its number: {logs}"
    );
}

#[tokio::test]
async fn in_r_uri_mode_dialling_0alice_keeps_the_number_in_the_request_uri() {
    let pbx = Pbx::start_with_defines(&[("DIALPLAN_RURI", "1")]).await;
    let (logs, port) = dial_0alice_to_the_proxy_account(&pbx, "1003").await;
    assert!(
        logs.contains(&format!("RURI=sip:0alice@127.0.0.1:{port}")),
        "R-URI keeps 0alice, sent to 1000's contact: {logs}"
    );
    assert!(logs.contains("X-Number=\n"), "no X-Number: {logs}");
    assert!(logs.contains("RPID=\n"), "no Remote-Party-ID: {logs}");
}

/// The answering SIPp of these tests (`uas_answer.xml`) takes a BYE that overtook the ACK, as
/// RFC 3261 lets a UAS see it: Kamailio's workers forward a caller's back-to-back ACK and BYE in
/// parallel, and a UAS that wanted the ACK first failed such a run now and then.
#[tokio::test]
async fn the_answering_sipp_takes_a_bye_that_overtook_the_ack() {
    let mut uas = Sipp::new("uas_answer.xml")
        .service("1000")
        .local_port(ports::free_port())
        .calls(1)
        .timeout(SHORT)
        .spawn(None);
    let uas_addr: std::net::SocketAddr = ([127, 0, 0, 1], uas.local_port()).into();
    let uac = Sipp::new("uac_bye_before_ack.xml")
        .service("1000")
        .timeout(SHORT)
        .run(Some(uas_addr))
        .await;
    uac.assert_success();
    uas.wait(SHORT).await.assert_success();
}

#[tokio::test]
async fn call_to_offline_or_unknown_number_fails() {
    let pbx = Pbx::start().await;
    for (target, expected) in [("1009", 480), ("2000", 404)] {
        let result = Sipp::new("uac_invite_rejected.xml")
            .service(target)
            .key("caller", "1002")
            .auth("1002", PASSWORD)
            .timeout(SHORT)
            .run(Some(pbx.addr()))
            .await;
        result.assert_success();
        let codes = result.received_status_codes();
        assert_eq!(codes.first(), Some(&407), "INVITE is challenged: {codes:?}");
        assert_eq!(codes.last(), Some(&expected), "call to {target}: {codes:?}");
    }

    // a real phone sees the same
    let phone = Baresip::start(pbx.addr(), "1004", BaresipOptions::default()).await;
    phone.dial("1009").await;
    let closed = phone.wait_for("CALL_CLOSED", SHORT).await;
    assert!(
        closed.param.starts_with("480"),
        "baresip closed with {:?}",
        closed.param
    );
}

#[tokio::test]
async fn unauthenticated_invite_is_challenged_and_wrong_password_refused() {
    let pbx = Pbx::start().await;
    let result = Sipp::new("uac_invite.xml")
        .service("1001")
        .key("caller", "1002")
        .auth("1002", "0000")
        .timeout(SHORT)
        .run(Some(pbx.addr()))
        .await;
    assert!(
        !result.success(),
        "a call with a wrong password must not be set up"
    );
    let codes = result.received_status_codes();
    assert_eq!(codes.first(), Some(&407), "{codes:?}");
    assert!(
        codes.contains(&403),
        "wrong password refused with 403: {codes:?}"
    );
}

#[tokio::test]
async fn restart_keeps_the_port_and_forgets_registrations() {
    let mut pbx = Pbx::start().await;
    let addr = pbx.addr();
    sipp::register(addr, "1005", PASSWORD, ports::free_port(), 60)
        .await
        .assert_success();
    assert!(pbx.is_registered("1005").await);

    pbx.restart().await;
    assert_eq!(pbx.addr(), addr, "same address after restart");
    assert!(pbx.ping(Duration::from_secs(1)).await);
    assert!(
        !pbx.is_registered("1005").await,
        "registrations are in memory only"
    );
    sipp::register(addr, "1005", PASSWORD, ports::free_port(), 60)
        .await
        .assert_success();
    assert!(pbx.is_registered("1005").await);

    pbx.stop();
    assert!(
        !pbx.ping(Duration::from_millis(300)).await,
        "stopped PBX does not answer"
    );
}

#[test]
fn ports_are_unique_free_and_pairs_are_even() {
    let singles: Vec<u16> = (0..50).map(|_| ports::free_port()).collect();
    let pairs: Vec<u16> = (0..20).map(|_| ports::free_port_pair()).collect();
    let mut all: Vec<u16> = singles.clone();
    for p in &pairs {
        assert_eq!(p % 2, 0, "RTP port {p} must be even");
        all.extend([*p, p + 1]);
    }
    let mut dedup = all.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), all.len(), "no port handed out twice");
    for p in all {
        std::net::UdpSocket::bind(("127.0.0.1", p)).expect("port is bindable (UDP)");
        std::net::TcpListener::bind(("127.0.0.1", p)).expect("port is bindable (TCP)");
    }
}

#[test]
fn tone_analysis_finds_frequency_and_level_and_rejects_wrong_tones() {
    let dir = tempfile::tempdir().expect("temp dir");
    for rate in [8000, 48000] {
        let path = dir.path().join(format!("tone-{rate}.wav"));
        // 0.3 s silence, 1 s tone at half scale (-9 dBFS RMS), 0.3 s silence
        let mut samples = vec![0.0f32; rate as usize * 3 / 10];
        samples.extend(audio::tone(1000.0, 0.5, Duration::from_secs(1), rate));
        samples.extend(vec![0.0f32; rate as usize * 3 / 10]);
        audio::write_wav(&path, &samples, rate);
        let a = assert_wav_tone(&path, 1000.0, 2.0, -10.0);
        assert!((a.rms_dbfs - (-9.03)).abs() < 0.3, "level {a:?}");
        assert!((a.loud_secs - 1.0).abs() < 0.05, "silence trimmed {a:?}");

        let wrong_freq =
            std::panic::catch_unwind(|| support::assert_tone(&samples, rate, 440.0, 5.0, -20.0));
        assert!(
            wrong_freq.is_err(),
            "440 Hz expected but 1000 Hz played must fail"
        );
        let too_quiet =
            std::panic::catch_unwind(|| support::assert_tone(&samples, rate, 1000.0, 5.0, -3.0));
        assert!(too_quiet.is_err(), "level check must fail");
        let silence = vec![0.0f32; rate as usize];
        assert!(std::panic::catch_unwind(|| support::assert_tone(
            &silence, rate, 1000.0, 5.0, -40.0
        ))
        .is_err());
    }
}

#[tokio::test]
async fn tcp_clients_register_and_call_through_the_same_port() {
    let pbx = Pbx::start().await;
    let reg = Sipp::new("register.xml")
        .service("1006")
        .auth("1006", PASSWORD)
        .key("expires", "60")
        .tcp()
        .timeout(SHORT)
        .run(Some(pbx.addr()))
        .await;
    reg.assert_success();
    assert!(pbx.is_registered("1006").await);

    // a TCP caller reaches a UDP phone; BYE goes back through the record-routed PBX
    let phone = Baresip::start(
        pbx.addr(),
        "1007",
        BaresipOptions {
            auto_answer: true,
            ..Default::default()
        },
    )
    .await;
    let call = Sipp::new("uac_invite.xml")
        .service("1007")
        .key("caller", "1006")
        .auth("1006", PASSWORD)
        .pause_ms(500)
        .tcp()
        .timeout(SHORT)
        .run(Some(pbx.addr()))
        .await;
    call.assert_success();
    phone.wait_for("CALL_ESTABLISHED", SHORT).await;
    phone.wait_for("CALL_CLOSED", SHORT).await;
}

#[tokio::test]
async fn manual_answer_rings_until_accepted() {
    let pbx = Pbx::start().await;
    let callee = Baresip::start(pbx.addr(), "1008", BaresipOptions::default()).await;
    let caller = Baresip::start(pbx.addr(), "1010", BaresipOptions::default()).await;

    caller.dial("1008").await;
    let incoming = callee.wait_for("CALL_INCOMING", SHORT).await;
    assert!(
        incoming.peer_uri.contains("1010"),
        "caller id shown: {incoming:?}"
    );
    caller.wait_for("CALL_RINGING", SHORT).await;
    assert!(
        caller
            .try_wait_for("CALL_ESTABLISHED", Duration::from_millis(500))
            .await
            .is_none(),
        "not answered before accept"
    );
    callee.accept().await;
    caller.wait_for("CALL_ESTABLISHED", SHORT).await;
    callee.hangup().await;
    let closed = caller.wait_for("CALL_CLOSED", SHORT).await;
    assert_eq!(closed.direction, "outgoing");
}
