//! SIP dialogs that cannot hang (issue #9): in-dialog requests that cross (a re-INVITE with a BYE
//! right behind it, an old CSeq) and RFC 4028 session timers, with SIPp as the phone talking
//! straight to the user agent (`srbridge::sip`); the test plays the call layer and answers at once.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

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
/// returns the events each call saw.
fn answer_everything(mut calls: Receiver<IncomingCall>) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
        while let Some(incoming) = calls.recv().await {
            let seen = seen_tx.clone();
            tokio::spawn(async move {
                let mut call = incoming.call;
                let port = ports::free_port_pair();
                call.answer(sdp(port)).expect("200");
                while let Some(event) = call.next_event().await {
                    let name = match event {
                        SipCallEvent::Reoffer { reply, .. } => {
                            let _ = reply.send(Some(sdp(port)));
                            "reoffer"
                        }
                        SipCallEvent::RemoteBye => "bye",
                        SipCallEvent::Terminated => "terminated",
                        _ => "other",
                    };
                    let _ = seen.send(name.to_string());
                }
            });
        }
        drop(seen_tx);
        let mut all = Vec::new();
        while let Ok(Some(name)) =
            tokio::time::timeout(Duration::from_millis(200), seen_rx.recv()).await
        {
            all.push(name);
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
}

impl Received {
    fn method(&self) -> &str {
        self.cseq.split_whitespace().last().unwrap_or("")
    }
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
        for line in lines.take_while(|l| !l.starts_with("-----")) {
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
    let finals = finals(&responses(&result));
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
    assert!(seen.contains(&"bye".to_string()), "{seen:?}");
}
