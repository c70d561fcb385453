//! Several PBXs (issue 13, part 1): the bridge on two real Kamailio instances registers to both,
//! a PBX killed mid-test is given up for new calls within the health interval while a call up on
//! the other one goes on, and registration returns when the dead PBX is started again. The
//! measured times are printed (`--nocapture`) for the closing note.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use srbridge::bridge::Bridge;
use support::rig::http_get_text;
use support::{Baresip, Pbx, WsClient};

const APPID: &str = "multi-pbx-test";
const T: Duration = Duration::from_secs(15);

/// A bridge on both PBXs (equal priority and weight), pinging every second, a PBX down after
/// one missed ping and up after one answer.
async fn bridge_on(a: &Pbx, b: &Pbx) -> Bridge {
    bridge_with(
        "options_interval = 1\npbx_down_after = 1\npbx_up_after = 1\nregister = \"all\"",
        &format!("addr = \"{}\"", a.addr()),
        &format!("addr = \"{}\"", b.addr()),
    )
    .await
}

/// A bridge with `sip_extra` in `[sip]` and the two `[[sip.pbx]]` tables' lines.
async fn bridge_with(sip_extra: &str, pbx_a: &str, pbx_b: &str) -> Bridge {
    support::rig::start_bridge_on_pbxs(APPID, sip_extra, &[pbx_a.to_string(), pbx_b.to_string()])
        .await
}

async fn status(bridge: &Bridge) -> Value {
    let body = http_get_text(bridge.http_addr(), "/api/status").await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("status JSON: {e}: {body}"))
}

/// The `/api/status` entry of the PBX at `addr`.
fn pbx_entry(status: &Value, addr: &str) -> Value {
    status["pbxs"]
        .as_array()
        .and_then(|list| list.iter().find(|p| p["address"] == addr))
        .cloned()
        .unwrap_or_else(|| panic!("no PBX {addr} in /api/status: {status}"))
}

/// Waits until `/api/status` shows `field` of the PBX at `addr` as `value`; returns when.
async fn wait_pbx_field(bridge: &Bridge, addr: &str, field: &str, value: &str) -> Instant {
    let deadline = Instant::now() + T;
    loop {
        let s = status(bridge).await;
        if pbx_entry(&s, addr)[field] == value {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "PBX {addr} {field} not {value} within {T:?}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn established(phone: &Baresip) -> usize {
    phone
        .events()
        .iter()
        .filter(|e| e.kind == "CALL_ESTABLISHED")
        .count()
}

#[tokio::test]
async fn a_dead_pbx_is_given_up_for_new_calls_and_registration_returns() {
    let (a, b) = Pbx::start_two().await;
    let mut pbxs = [a, b];
    let addrs = [pbxs[0].addr().to_string(), pbxs[1].addr().to_string()];
    let phones_1001 = [
        support::baresip::silent_phone(&pbxs[0], "1001", true).await,
        support::baresip::silent_phone(&pbxs[1], "1001", true).await,
    ];
    let bridge = bridge_on(&pbxs[0], &pbxs[1]).await;
    for pbx in &pbxs {
        pbx.wait_registered("1000", T).await;
    }

    // both PBXs listed, each with its own registration, in /api/status and /metrics
    for addr in &addrs {
        wait_pbx_field(&bridge, addr, "registration", "registered").await;
        wait_pbx_field(&bridge, addr, "reachable", "up").await;
    }
    // (the gauges are published once a second)
    let wanted: Vec<String> = addrs
        .iter()
        .flat_map(|addr| {
            [
                format!("srbridge_pbx_registration_state{{pbx=\"{addr}\",state=\"registered\"}} 1"),
                format!("srbridge_pbx_reachable{{pbx=\"{addr}\"}} 1"),
            ]
        })
        .collect();
    let deadline = Instant::now() + T;
    loop {
        let metrics = http_get_text(bridge.http_addr(), "/metrics").await;
        if wanted.iter().all(|series| metrics.contains(series)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{wanted:?} not all in /metrics:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // a call up on one PBX: that one survives, the other is killed
    let ws = format!("ws://{}/ws", bridge.http_addr());
    let mut alice = WsClient::login(&ws, APPID, "alice").await;
    let ok = alice.invite("kept", "1001", "").await;
    assert_eq!(ok["type"], "ok", "{ok}");
    alice
        .wait_local_state("kept", "ACCEPTED_BY_REMOTE", T)
        .await;
    let survivor = loop {
        if let Some(i) = (0..2).find(|&i| established(&phones_1001[i]) == 1) {
            break i;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let dead = 1 - survivor;
    let phone_1002 = support::baresip::silent_phone(&pbxs[survivor], "1002", true).await;

    let killed = Instant::now();
    pbxs[dead].stop();
    let http = bridge.http_addr();
    let dead_addr = addrs[dead].clone();
    let marked_down = tokio::spawn(async move {
        loop {
            let body = http_get_text(http, "/api/status").await;
            let s: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            if pbx_entry(&s, &dead_addr)["reachable"] == "down" {
                return killed.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    // new calls go through the survivor: the first one after the kill is answered there
    let mut bob = WsClient::login(&ws, APPID, "bob").await;
    let ok = bob.invite("after-kill", "1002", "").await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let outcome = bob
        .wait_for(
            |v| {
                v["type"] == "local_invitation_state"
                    && v["callId"] == "after-kill"
                    && ["ACCEPTED_BY_REMOTE", "REFUSED_BY_REMOTE", "FAILURE"]
                        .contains(&v["state"].as_str().unwrap_or(""))
            },
            Duration::from_secs(40),
        )
        .await;
    let first_call = killed.elapsed();
    assert_eq!(
        outcome["state"], "ACCEPTED_BY_REMOTE",
        "the call after the kill is answered: {outcome}"
    );
    phone_1002.wait_for("CALL_ESTABLISHED", T).await;
    let marked_down = tokio::time::timeout(T, marked_down)
        .await
        .expect("the dead PBX is shown down")
        .expect("status poller");
    // and later calls go straight there without waiting for the dead PBX
    bob.request(json!({"type": "peer_message", "to": "1002", "text": "{\"Cmd\":\"EndCall\"}"}))
        .await;
    phone_1002.wait_for("CALL_CLOSED", T).await;
    let second_started = Instant::now();
    bob.invite("after-down", "1002", "").await;
    bob.wait_local_state("after-down", "ACCEPTED_BY_REMOTE", T)
        .await;
    let second_call = second_started.elapsed();
    bob.request(json!({"type": "peer_message", "to": "1002", "text": "{\"Cmd\":\"EndCall\"}"}))
        .await;

    // the call on the survivor was untouched all along
    assert!(
        phones_1001[survivor]
            .try_wait_for("CALL_CLOSED", Duration::ZERO)
            .await
            .is_none(),
        "the call on the surviving PBX must not end"
    );
    let kept: Vec<_> = bridge
        .calls()
        .into_iter()
        .filter(|c| c.id == "kept")
        .collect();
    assert_eq!(kept.len(), 1, "{:?}", bridge.calls());
    assert_eq!(kept[0].state, "established");
    assert!(
        !alice.frames().iter().any(|f| f["type"] == "peer_message"
            && f["text"].as_str().is_some_and(|t| t.contains("EndCall"))),
        "alice got no EndCall"
    );

    // the dead PBX comes back: the bridge registers there again by itself
    let restarted = Instant::now();
    pbxs[dead].restart().await;
    pbxs[dead]
        .wait_registered("1000", Duration::from_secs(30))
        .await;
    let registered_again = restarted.elapsed();
    wait_pbx_field(&bridge, &addrs[dead], "registration", "registered").await;
    wait_pbx_field(&bridge, &addrs[dead], "reachable", "up").await;

    // the kept call still ends cleanly from the browser
    alice
        .request(json!({"type": "peer_message", "to": "1001", "text": "{\"Cmd\":\"EndCall\"}"}))
        .await;
    phones_1001[survivor].wait_for("CALL_CLOSED", T).await;

    println!(
        "multi-PBX failover (options_interval 1 s, pbx_down_after 1): PBX killed -> marked down {:.2} s; \
         killed -> first new call answered on the survivor {:.2} s; a call once it is down: answered in {:.2} s; \
         PBX restarted -> bridge registered there again {:.2} s",
        marked_down.as_secs_f64(),
        first_call.as_secs_f64(),
        second_call.as_secs_f64(),
        registered_again.as_secs_f64()
    );
    assert!(
        first_call < Duration::from_secs(10),
        "the first call after the kill took {first_call:?}"
    );
    bridge.shutdown().await;
}

#[tokio::test]
async fn an_invite_the_preferred_pbx_leaves_unanswered_is_retried_on_the_backup() {
    // pings off: nothing tells the bridge the preferred PBX is dead but the INVITE itself
    let (preferred, backup) = Pbx::start_two().await;
    let mut preferred = preferred;
    let phone = support::baresip::silent_phone(&backup, "1003", true).await;
    let bridge = bridge_with(
        "options_interval = 0",
        &format!("addr = \"{}\"\npriority = 1", preferred.addr()),
        &format!("addr = \"{}\"\npriority = 2", backup.addr()),
    )
    .await;
    preferred.wait_registered("1000", T).await;
    backup.wait_registered("1000", T).await;
    preferred.stop();

    let ws = format!("ws://{}/ws", bridge.http_addr());
    let mut alice = WsClient::login(&ws, APPID, "alice").await;
    let started = Instant::now();
    alice.invite("retried", "1003", "").await;
    let outcome = alice
        .wait_for(
            |v| {
                v["type"] == "local_invitation_state"
                    && v["callId"] == "retried"
                    && ["ACCEPTED_BY_REMOTE", "REFUSED_BY_REMOTE", "FAILURE"]
                        .contains(&v["state"].as_str().unwrap_or(""))
            },
            Duration::from_secs(40),
        )
        .await;
    let answered = started.elapsed();
    assert_eq!(outcome["state"], "ACCEPTED_BY_REMOTE", "{outcome}");
    phone.wait_for("CALL_ESTABLISHED", T).await;
    println!(
        "INVITE failover (no pings; the preferred PBX dead): answered on the backup after {:.2} s",
        answered.as_secs_f64()
    );
    assert!(
        answered < Duration::from_secs(10),
        "retried after the 4*T1 silence, not Timer B: {answered:?}"
    );
    alice
        .request(json!({"type": "peer_message", "to": "1003", "text": "{\"Cmd\":\"EndCall\"}"}))
        .await;
    phone.wait_for("CALL_CLOSED", T).await;
    bridge.shutdown().await;
}

#[tokio::test]
async fn active_backup_registers_only_to_the_active_pbx_and_moves_with_it() {
    let (primary, backup) = Pbx::start_two().await;
    let mut primary = primary;
    let bridge = bridge_with(
        "options_interval = 1\nregister = \"active_backup\"",
        &format!("addr = \"{}\"\npriority = 1", primary.addr()),
        &format!("addr = \"{}\"\npriority = 2", backup.addr()),
    )
    .await;
    primary.wait_registered("1000", T).await;
    let backup_addr = backup.addr().to_string();
    wait_pbx_field(&bridge, &backup_addr, "registration", "disabled").await;
    assert!(
        !backup.is_registered("1000").await,
        "the backup holds no registration while the primary is up"
    );

    let killed = Instant::now();
    primary.stop();
    backup.wait_registered("1000", T).await;
    let moved = killed.elapsed();

    let restarted = Instant::now();
    primary.restart().await;
    primary.wait_registered("1000", T).await;
    backup.wait_unregistered("1000", T).await;
    let back = restarted.elapsed();
    println!(
        "active/backup (options_interval 1 s): primary killed -> registered at the backup {:.2} s; \
         primary restarted -> registered there and gone from the backup {:.2} s",
        moved.as_secs_f64(),
        back.as_secs_f64()
    );
    bridge.shutdown().await;
}

#[tokio::test]
async fn a_503_before_any_ringing_is_retried_on_the_next_pbx() {
    // the preferred "PBX" is SIPp answering every INVITE 503 at once; the backup is Kamailio
    let unavailable = support::Sipp::new("uas_unavailable.xml")
        .calls(4)
        .timeout(Duration::from_secs(60))
        .spawn(None);
    let sipp_addr = format!("127.0.0.1:{}", unavailable.local_port());
    let backup = Pbx::start().await;
    let phone = support::baresip::silent_phone(&backup, "1004", true).await;
    let bridge = bridge_with(
        "options_interval = 0",
        &format!("addr = \"{sipp_addr}\"\npriority = 1"),
        &format!("addr = \"{}\"\npriority = 2", backup.addr()),
    )
    .await;
    backup.wait_registered("1000", T).await;
    wait_pbx_field(&bridge, &sipp_addr, "registration", "registered").await;

    let events = support::sse::SseClient::open(bridge.http_addr(), &[])
        .await
        .expect("event stream");
    let ws = format!("ws://{}/ws", bridge.http_addr());
    let mut alice = WsClient::login(&ws, APPID, "alice").await;
    let started = Instant::now();
    alice.invite("after-503", "1004", "").await;
    alice
        .wait_local_state("after-503", "ACCEPTED_BY_REMOTE", T)
        .await;
    let answered = started.elapsed();
    let established = phone.wait_for("CALL_ESTABLISHED", T).await;
    let trace = unavailable.messages_so_far();
    assert!(
        trace.contains("INVITE sip:1004@") && trace.contains("SIP/2.0 503 Service Unavailable"),
        "the preferred PBX got the INVITE first and refused it: {trace}"
    );
    println!(
        "503 failover: answered on the backup {:.2} s after the browser's invitation",
        answered.as_secs_f64()
    );
    alice
        .request(json!({"type": "peer_message", "to": "1004", "text": "{\"Cmd\":\"EndCall\"}"}))
        .await;
    phone.wait_for("CALL_CLOSED", T).await;

    // The call's events carry the Call-ID of the dialog that answered (the phone's), not the
    // one the 503 ended.
    let answered_call_id = established.raw["id"]
        .as_str()
        .unwrap_or_else(|| panic!("baresip names the call's Call-ID: {established:?}"))
        .to_string();
    assert!(
        !trace.contains(&answered_call_id),
        "a new dialog on the backup: {trace}"
    );
    let call = events.call("after-503", T).await;
    let kinds: Vec<&str> = call.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "call.created",
            "call.ringing",
            "call.answered",
            "call.ended"
        ],
        "{call:#?}"
    );
    for event in &call[1..] {
        assert_eq!(event["sip_call_id"], answered_call_id.as_str(), "{event}");
    }
    bridge.shutdown().await;
}

/// Whether a TCP connection to 127.0.0.1:`port` is established in this network namespace (what
/// `ss -tn state established dst :PORT` shows; the tests run in a namespace of their own).
fn tcp_established_to(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let remote_port = cols
            .get(2)
            .and_then(|remote| remote.rsplit(':').next())
            .and_then(|hex| u16::from_str_radix(hex, 16).ok());
        cols.get(3) == Some(&"01") && remote_port == Some(port)
    })
}

#[tokio::test]
async fn over_tcp_a_dead_pbx_refuses_the_connection_and_the_next_call_goes_to_the_other() {
    // pings every 30 s (the first at start): within the test only the refused TCP connection can
    // tell the bridge the preferred PBX died
    let (preferred, backup) = Pbx::start_two().await;
    let mut preferred = preferred;
    let phones = [
        support::baresip::silent_phone(&preferred, "1005", true).await,
        support::baresip::silent_phone(&backup, "1005", true).await,
    ];
    let bridge = bridge_with(
        "transport = \"tcp\"\noptions_interval = 30",
        &format!("addr = \"{}\"\npriority = 1", preferred.addr()),
        &format!("addr = \"{}\"\npriority = 2", backup.addr()),
    )
    .await;
    preferred.wait_registered("1000", T).await;
    backup.wait_registered("1000", T).await;
    for pbx in [&preferred, &backup] {
        assert!(
            tcp_established_to(pbx.port()),
            "the bridge registered at {} over TCP",
            pbx.addr()
        );
    }

    // calls go through the preferred PBX
    let ws = format!("ws://{}/ws", bridge.http_addr());
    let mut alice = WsClient::login(&ws, APPID, "alice").await;
    alice.invite("via-first", "1005", "").await;
    alice
        .wait_local_state("via-first", "ACCEPTED_BY_REMOTE", T)
        .await;
    phones[0].wait_for("CALL_ESTABLISHED", T).await;
    assert_eq!(established(&phones[1]), 0, "the backup's phone never rang");
    alice
        .request(json!({"type": "peer_message", "to": "1005", "text": "{\"Cmd\":\"EndCall\"}"}))
        .await;
    phones[0].wait_for("CALL_CLOSED", T).await;

    // the preferred PBX dies: the next call's connection is refused and it goes to the backup
    let killed = Instant::now();
    preferred.stop();
    alice.invite("via-second", "1005", "").await;
    let outcome = alice
        .wait_for(
            |v| {
                v["type"] == "local_invitation_state"
                    && v["callId"] == "via-second"
                    && ["ACCEPTED_BY_REMOTE", "REFUSED_BY_REMOTE", "FAILURE"]
                        .contains(&v["state"].as_str().unwrap_or(""))
            },
            Duration::from_secs(40),
        )
        .await;
    let answered = killed.elapsed();
    assert_eq!(outcome["state"], "ACCEPTED_BY_REMOTE", "{outcome}");
    phones[1].wait_for("CALL_ESTABLISHED", T).await;
    assert_eq!(
        established(&phones[0]),
        1,
        "nothing more reached the dead PBX"
    );
    // no ping since the start: the refused connection marked it down
    let dead = pbx_entry(&status(&bridge).await, &preferred.addr().to_string());
    assert_eq!(dead["reachable"], "down", "{dead}");
    println!(
        "TCP failover (no ping in between): preferred PBX killed -> next call answered via the \
         other {:.2} s; the dead one in /api/status: {dead}",
        answered.as_secs_f64()
    );
    assert!(
        answered < Duration::from_secs(10),
        "the refused connection moves the call at once, not after timers: {answered:?}"
    );
    alice
        .request(json!({"type": "peer_message", "to": "1005", "text": "{\"Cmd\":\"EndCall\"}"}))
        .await;
    phones[1].wait_for("CALL_CLOSED", T).await;
    bridge.shutdown().await;
}
