//! SIP dialogs that cannot hang (issue #9): in-dialog requests that cross (a re-INVITE with a BYE
//! right behind it, an old CSeq) and RFC 4028 session timers, with SIPp as the phone talking
//! straight to the user agent (`srbridge::sip`); the test plays the call layer and answers at once.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use srbridge::config::Config;
use srbridge::sip::{IncomingCall, SipCallEvent, SipUa, UaOptions};
use support::{ports, Sipp, SippResult};
use tokio::sync::mpsc::Receiver;
use tokio_util::sync::CancellationToken;

const SHORT: Duration = Duration::from_secs(10);

/// A UA on 127.0.0.1 with no proxy account (nothing to register); `sip_extra` goes in `[sip]`.
fn config(sip_extra: &str) -> Config {
    let text = format!(
        r#"
[global]
appid = "dialogs"
sip_svr = "127.0.0.1:{pbx}"
sip_local_port = 0
[sip]
listen_ip = "127.0.0.1"
options_interval = 0
{sip_extra}
"#,
        pbx = ports::free_port(),
    );
    Config::from_toml_str(Path::new("dialogs.toml"), &text).expect("config")
}

fn debug_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

fn sdp(port: u16) -> String {
    format!(
        "v=0\r\no=srbridge 1 1 IN IP4 127.0.0.1\r\ns=srbridge\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )
}

/// Starts the UA; returns it and its address.
async fn start(config: &Config) -> (SipUa, Receiver<IncomingCall>, CancellationToken) {
    debug_logs();
    let token = CancellationToken::new();
    let (ua, calls) = SipUa::start_with(config, token.clone(), UaOptions::default())
        .await
        .expect("UA starts");
    (ua, calls, token)
}

/// Plays a call layer that answers every call and every re-offer at once, like the bridge does;
/// returns what each call saw, with when: "answered", "reoffer", "bye", "terminated".
fn answer_everything(
    calls: Receiver<IncomingCall>,
) -> tokio::task::JoinHandle<Vec<(String, Instant)>> {
    answer_reoffers_after(calls, Duration::ZERO)
}

/// [`answer_everything`], but re-offers are answered only after `delay`.
fn answer_reoffers_after(
    mut calls: Receiver<IncomingCall>,
    delay: Duration,
) -> tokio::task::JoinHandle<Vec<(String, Instant)>> {
    tokio::spawn(async move {
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
        while let Some(incoming) = calls.recv().await {
            let seen = seen_tx.clone();
            tokio::spawn(async move {
                let mut call = incoming.call;
                let port = ports::free_port_pair();
                call.answer(sdp(port)).expect("200");
                let _ = seen.send(("answered".to_string(), Instant::now()));
                while let Some(event) = call.next_event().await {
                    let name = match event {
                        SipCallEvent::Reoffer { reply, .. } => {
                            let answer = sdp(port);
                            tokio::spawn(async move {
                                tokio::time::sleep(delay).await;
                                let _ = reply.send(Some(answer));
                            });
                            "reoffer"
                        }
                        SipCallEvent::RemoteBye => "bye",
                        SipCallEvent::Terminated => "terminated",
                        _ => "other",
                    };
                    let _ = seen.send((name.to_string(), Instant::now()));
                }
            });
        }
        drop(seen_tx);
        let mut all = Vec::new();
        while let Ok(Some(seen)) =
            tokio::time::timeout(Duration::from_millis(200), seen_rx.recv()).await
        {
            all.push(seen);
        }
        all
    })
}

/// One response SIPp received, from its message trace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Received {
    call_id: String,
    /// The CSeq header value, e.g. "2 INVITE".
    cseq: String,
    code: u16,
    /// The whole message.
    text: String,
}

/// Every response SIPp received, in order (retransmissions included).
fn responses(result: &SippResult) -> Vec<Received> {
    let mut out = Vec::new();
    for block in result.messages.split("message received").skip(1) {
        // the rest of the "message received [N] bytes :" line comes first
        let mut lines = block
            .lines()
            .skip(1)
            .map(str::trim)
            .filter(|l| !l.is_empty());
        let Some(first) = lines.next() else { continue };
        let Some(code) = first
            .strip_prefix("SIP/2.0 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
        else {
            continue;
        };
        let mut call_id = String::new();
        let mut cseq = String::new();
        let mut text = format!("{first}\n");
        for line in lines.take_while(|l| !l.starts_with("-----")) {
            text.push_str(line);
            text.push('\n');
            if let Some((name, value)) = line.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "call-id" => call_id = value.trim().to_string(),
                    "cseq" => cseq = value.trim().to_string(),
                    _ => {}
                }
            }
        }
        out.push(Received {
            call_id,
            cseq,
            code,
            text,
        });
    }
    out
}

/// The final responses per request (call id, CSeq): more than one code for a request is a bug.
fn finals(got: &[Received]) -> BTreeMap<(String, String), BTreeSet<u16>> {
    let mut map: BTreeMap<(String, String), BTreeSet<u16>> = BTreeMap::new();
    for r in got.iter().filter(|r| r.code >= 200) {
        map.entry((r.call_id.clone(), r.cseq.clone()))
            .or_default()
            .insert(r.code);
    }
    map
}

fn ua_addr(ua: &SipUa) -> SocketAddr {
    SocketAddr::new(IpAddr::from([127, 0, 0, 1]), ua.local_addr().port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinvite_crossed_by_a_bye_gets_487_or_200_never_501_or_silence_20_times() {
    let (ua, calls, _token) = start(&config("")).await;
    let _layer = answer_everything(calls);
    let runs = 20;
    let result = Sipp::new("uac_reinvite_bye_race.xml")
        .service("1000")
        .calls(runs)
        .arg("-l")
        .arg("1")
        .timeout(Duration::from_secs(90))
        .run(Some(ua_addr(&ua)))
        .await;
    if !result.success() {
        result.print();
    }
    result.assert_success();
    let got = responses(&result);
    // a 200 to the re-INVITE is only sent while the dialog lives: before the BYE's 200
    for r in got.iter().filter(|r| r.cseq == "2 INVITE" && r.code == 200) {
        let first = |cseq: &str| {
            got.iter()
                .position(|x| x.call_id == r.call_id && x.cseq == cseq && x.code == 200)
        };
        assert!(
            first("2 INVITE") < first("3 BYE"),
            "{}: 200 to the re-INVITE after the BYE's 200",
            r.call_id
        );
    }
    let finals = finals(&got);
    let mut reinvites = Vec::new();
    let mut byes = Vec::new();
    for ((call_id, cseq), codes) in &finals {
        assert_eq!(codes.len(), 1, "{call_id} {cseq} answered {codes:?}");
        let code = *codes.iter().next().expect("one code");
        match cseq.as_str() {
            "1 INVITE" => assert_eq!(code, 200, "{call_id}: the call is answered"),
            "2 INVITE" => reinvites.push(code),
            "3 BYE" => byes.push(code),
            other => panic!("{call_id}: unexpected response to {other}: {code}"),
        }
    }
    assert_eq!(
        reinvites.len(),
        runs as usize,
        "every re-INVITE answered: {finals:?}"
    );
    assert!(
        reinvites.iter().all(|c| *c == 200 || *c == 487),
        "re-INVITEs get 487 or 200, never 501: {reinvites:?}"
    );
    assert_eq!(byes, vec![200; runs as usize], "every BYE gets 200");
    let cancelled = reinvites.iter().filter(|c| **c == 487).count();
    println!("re-INVITEs answered 487: {cancelled} of {runs}, 200: the rest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinvite_still_pending_when_the_bye_arrives_gets_487() {
    let (ua, calls, _token) = start(&config("")).await;
    // the call layer takes 500 ms over each re-offer: the BYE always finds it pending
    let _layer = answer_reoffers_after(calls, Duration::from_millis(500));
    let runs = 5;
    let result = Sipp::new("uac_reinvite_bye_race.xml")
        .service("1000")
        .calls(runs)
        .arg("-l")
        .arg("1")
        .timeout(Duration::from_secs(40))
        .run(Some(ua_addr(&ua)))
        .await;
    result.assert_success();
    let finals = finals(&responses(&result));
    let reinvites: Vec<_> = finals
        .iter()
        .filter(|((_, cseq), _)| cseq == "2 INVITE")
        .map(|(_, codes)| codes.clone())
        .collect();
    assert_eq!(
        reinvites,
        vec![BTreeSet::from([487]); runs as usize],
        "{finals:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_dialog_request_with_an_old_cseq_gets_500() {
    let (ua, calls, _token) = start(&config("")).await;
    let layer = answer_everything(calls);
    let result = Sipp::new("uac_old_cseq.xml")
        .service("1000")
        .timeout(SHORT)
        .run(Some(ua_addr(&ua)))
        .await;
    result.assert_success();
    let finals = finals(&responses(&result));
    let code = |cseq: &str| {
        finals
            .iter()
            .find(|((_, c), _)| c == cseq)
            .map(|(_, codes)| codes.clone())
    };
    assert_eq!(code("5 INFO"), Some(BTreeSet::from([200])), "{finals:?}");
    assert_eq!(
        code("3 INFO"),
        Some(BTreeSet::from([500])),
        "the INFO with CSeq 3 after 5 gets 500: {finals:?}"
    );
    assert_eq!(code("6 BYE"), Some(BTreeSet::from([200])), "{finals:?}");
    ua.shutdown().await;
    let seen = layer.await.expect("layer");
    assert!(seen.iter().any(|(name, _)| name == "bye"), "{seen:?}");
}

/// The 200 SIPp got for `cseq` (e.g. "1 INVITE").
fn ok_for<'a>(got: &'a [Received], cseq: &str) -> &'a Received {
    got.iter()
        .find(|r| r.cseq == cseq && r.code == 200)
        .unwrap_or_else(|| panic!("no 200 for {cseq}: {got:?}"))
}

fn header<'a>(msg: &'a Received, name: &str) -> Option<&'a str> {
    msg.text.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// SIPp as the phone offering a session timer of `se` seconds with `refresher`.
fn timer_phone(scenario: &str, se: u64, refresher: &str) -> Sipp {
    Sipp::new(scenario)
        .service("1000")
        .key("se", &se.to_string())
        .key("refresher", refresher)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_with_session_expires_90_refresher_uac_is_answered_with_it_and_require_timer() {
    // the defaults: session_expires 1800, min_se 90
    let (ua, calls, _token) = start(&config("")).await;
    let _layer = answer_everything(calls);
    let result = timer_phone("uac_timer_refreshing.xml", 90, "uac")
        .pause_ms(200)
        .timeout(SHORT)
        .run(Some(ua_addr(&ua)))
        .await;
    result.assert_success();
    let got = responses(&result);
    let ok = ok_for(&got, "1 INVITE");
    assert_eq!(
        header(ok, "Session-Expires"),
        Some("90;refresher=uac"),
        "{}",
        ok.text
    );
    assert_eq!(header(ok, "Require"), Some("timer"), "{}", ok.text);
    let refresh = ok_for(&got, "2 UPDATE");
    assert_eq!(
        header(refresh, "Session-Expires"),
        Some("90;refresher=uac"),
        "the refresh's 200 carries the interval: {}",
        refresh.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expires_below_min_se_gets_422_with_min_se() {
    let (ua, calls, _token) = start(&config("session_expires = 6\nmin_se = 2")).await;
    let _layer = answer_everything(calls);
    let result = timer_phone("uac_timer_too_brief.xml", 1, "uac")
        .timeout(SHORT)
        .run(Some(ua_addr(&ua)))
        .await;
    result.assert_success();
    let got = responses(&result);
    let refused = got
        .iter()
        .find(|r| r.code == 422)
        .unwrap_or_else(|| panic!("422: {got:?}"));
    assert_eq!(header(refused, "Min-SE"), Some("2"), "{}", refused.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_never_comes_ends_the_call_with_bye_before_the_interval() {
    let (ua, calls, _token) = start(&config("session_expires = 6\nmin_se = 2")).await;
    let layer = answer_everything(calls);
    let se = 6;
    let result = timer_phone("uac_timer_silent.xml", se, "uac")
        .timeout(Duration::from_secs(20))
        .run(Some(ua_addr(&ua)))
        .await;
    result.assert_success();
    let got = responses(&result);
    let ok = ok_for(&got, "1 INVITE");
    assert_eq!(
        header(ok, "Session-Expires"),
        Some("6;refresher=uac"),
        "{}",
        ok.text
    );
    ua.shutdown().await;
    let seen = layer.await.expect("layer");
    let at = |what: &str| {
        seen.iter()
            .find(|(name, _)| name == what)
            .map(|(_, t)| *t)
            .unwrap_or_else(|| panic!("no {what}: {seen:?}"))
    };
    assert!(
        !seen.iter().any(|(name, _)| name == "bye"),
        "the bridge hung up, not the phone: {seen:?}"
    );
    // RFC 4028 §10: BYE at interval - min(32 s, interval/3) = 4 s after the ACK
    let lasted = at("terminated") - at("answered");
    let bound = Duration::from_secs(se - (se / 3).min(32));
    assert!(
        lasted >= bound - Duration::from_millis(500) && lasted <= bound + Duration::from_secs(2),
        "BYE after {lasted:?}, expected about {bound:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_that_refreshes_keeps_the_call() {
    let (ua, calls, _token) = start(&config("session_expires = 6\nmin_se = 2")).await;
    let layer = answer_everything(calls);
    // three UPDATE refreshes 2.5 s apart, then BYE: 10 s, well past the 4 s expiry
    let result = timer_phone("uac_timer_refreshing.xml", 6, "uac")
        .pause_ms(2500)
        .timeout(Duration::from_secs(30))
        .run(Some(ua_addr(&ua)))
        .await;
    result.assert_success();
    let finals = finals(&responses(&result));
    for cseq in ["2 UPDATE", "3 UPDATE", "4 UPDATE", "5 BYE"] {
        assert!(
            finals
                .iter()
                .any(|((_, c), codes)| c == cseq && codes == &BTreeSet::from([200])),
            "{cseq}: {finals:?}"
        );
    }
    ua.shutdown().await;
    let seen = layer.await.expect("layer");
    assert!(
        seen.iter().any(|(name, _)| name == "bye"),
        "the phone hung up: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_refreshes_with_update_at_half_the_interval_when_it_is_the_refresher() {
    let (ua, calls, _token) = start(&config("session_expires = 6\nmin_se = 2")).await;
    let _layer = answer_everything(calls);
    let result = timer_phone("uac_timer_bridge_refreshes.xml", 4, "uas")
        .timeout(Duration::from_secs(20))
        .run(Some(ua_addr(&ua)))
        .await;
    result.assert_success();
    let got = responses(&result);
    let ok = ok_for(&got, "1 INVITE");
    assert_eq!(
        header(ok, "Session-Expires"),
        Some("4;refresher=uas"),
        "{}",
        ok.text
    );
    let updates: Vec<&str> = result
        .messages
        .split("message received")
        .skip(1)
        .filter_map(|b| b.lines().skip(1).map(str::trim).find(|l| !l.is_empty()))
        .filter(|l| l.starts_with("UPDATE "))
        .collect();
    assert_eq!(
        updates.len(),
        2,
        "two refreshes from the bridge: {updates:?}"
    );
    assert!(
        result.messages.contains("Session-Expires: 4;refresher=uac"),
        "our refresh names us its refresher"
    );
}

/// An outgoing call from the UA straight to a SIPp UAS running `scenario` on a fresh port.
async fn call_sipp_uas(
    ua: &SipUa,
    scenario: &str,
    se: u64,
    refresher: &str,
    timeout: Duration,
) -> (srbridge::sip::SipCall, support::SippProcess) {
    let port = ports::free_port();
    let uas = timer_phone(scenario, se, refresher)
        .local_port(port)
        .timeout(timeout)
        .spawn(None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut call = ua
        .place_call(srbridge::sip::OutgoingInvite {
            log_id: "out-timer".to_string(),
            callee: "1001".to_string(),
            caller_id: "alice".to_string(),
            headers: vec![],
            gateway: Some(SocketAddr::from(([127, 0, 0, 1], port))),
            sdp_offer: sdp(ports::free_port_pair()),
        })
        .await
        .expect("INVITE");
    loop {
        match tokio::time::timeout(SHORT, call.next_event()).await {
            Ok(Some(SipCallEvent::Provisional { .. })) => continue,
            Ok(Some(SipCallEvent::Answered { .. })) => break,
            other => panic!("expected the answer, got {other:?}"),
        }
    }
    (call, uas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_call_offers_a_session_timer_and_refreshes_when_the_2xx_makes_us_refresher() {
    let (ua, _calls, _token) = start(&config("session_expires = 6\nmin_se = 2")).await;
    let (mut call, mut uas) = call_sipp_uas(
        &ua,
        "uas_timer_bridge_refreshes.xml",
        4,
        "uac",
        SHORT + SHORT,
    )
    .await;
    // two UPDATEs at 2 s and 4 s: wait until the second is answered
    let deadline = Instant::now() + SHORT;
    while !uas.messages_so_far().contains("CSeq: 3 UPDATE") {
        assert!(
            Instant::now() < deadline,
            "no second refresh from the bridge"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    call.bye().await.expect("BYE");
    while let Ok(Some(event)) = tokio::time::timeout(SHORT, call.next_event()).await {
        if matches!(event, SipCallEvent::Terminated) {
            break;
        }
    }
    let result = uas.wait(SHORT).await;
    result.assert_success();
    assert!(
        result.logs.contains("offered Session-Expires=6"),
        "our INVITE offers [sip] session_expires: {}",
        result.logs
    );
    assert!(result.messages.contains("Min-SE: 2"), "and our min_se");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_call_whose_refresher_goes_silent_is_ended_with_bye() {
    let (ua, _calls, _token) = start(&config("session_expires = 6\nmin_se = 2")).await;
    let started = Instant::now();
    let (mut call, mut uas) = call_sipp_uas(&ua, "uas_timer_silent.xml", 6, "uas", SHORT).await;
    let answered = started.elapsed();
    let mut saw_remote_bye = false;
    loop {
        match tokio::time::timeout(SHORT, call.next_event()).await {
            Ok(Some(SipCallEvent::Terminated)) => break,
            Ok(Some(SipCallEvent::RemoteBye)) => saw_remote_bye = true,
            Ok(Some(_)) => {}
            other => panic!("the call did not end: {other:?}"),
        }
    }
    let lasted = started.elapsed() - answered;
    assert!(!saw_remote_bye, "the bridge ended it");
    // 6 - min(32, 2) = 4 s after the answer
    assert!(
        lasted >= Duration::from_millis(3500) && lasted <= Duration::from_secs(7),
        "ended after {lasted:?}"
    );
    uas.wait(SHORT).await.assert_success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_refreshes_with_a_reinvite_carrying_its_sdp_when_the_peer_has_no_update() {
    let (ua, calls, _token) = start(&config("session_expires = 6\nmin_se = 2")).await;
    let _layer = answer_everything(calls);
    let result = timer_phone("uac_timer_bridge_reinvites.xml", 4, "uas")
        .timeout(Duration::from_secs(20))
        .run(Some(ua_addr(&ua)))
        .await;
    result.assert_success();
    let reinvites = result
        .messages
        .split("message received")
        .skip(1)
        .filter_map(|b| b.lines().skip(1).map(str::trim).find(|l| !l.is_empty()))
        .filter(|l| l.starts_with("INVITE "))
        .count();
    assert_eq!(reinvites, 2, "two re-INVITE refreshes from the bridge");
}

/// A forking proxy's second 200 for our INVITE (another branch answered too) is ACKed and ended
/// with a BYE while the call goes on with the first; the call then hangs up normally. The drain
/// that watches the answered INVITE for Timer M holds the dialog only weakly (vendor/rsipstack),
/// so this is what shows it still reaches the dialog while the call lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_second_200_is_acked_and_ended_with_bye_while_the_call_goes_on() {
    let (ua, _calls, _token) = start(&config("")).await;
    let (mut call, mut uas) = call_sipp_uas(&ua, "uas_forked_2xx.xml", 0, "uac", SHORT).await;
    let deadline = Instant::now() + SHORT;
    while !uas.logs_so_far().contains("forked branch ended with BYE") {
        assert!(
            Instant::now() < deadline,
            "the forked branch was not ended: {}",
            uas.messages_so_far()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    call.bye().await.expect("BYE for the kept branch");
    while let Ok(Some(event)) = tokio::time::timeout(SHORT, call.next_event()).await {
        if matches!(event, SipCallEvent::Terminated) {
            break;
        }
    }
    uas.wait(SHORT).await.assert_success();
}
