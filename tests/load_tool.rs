//! `srbridge-load` against the bridge of the shared rig (Kamailio, the bridge in this process):
//! a small run in each direction, so the load tool keeps working as the bridge changes; and the
//! same against rtpengine (`--peer rtpengine`, the peer it is measured beside), started here.
//! Only that calls come up and the echoed audio flows both ways is asserted; the figures belong
//! to `scripts/bench.sh`.

mod support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

const APPID: &str = "load-test";
const CALLS: u64 = 5;

/// Runs the tool with `extra` arguments; returns its JSON report.
async fn run_load_tool(rig: &support::rig::BridgeRig, extra: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_srbridge-load"))
        .args(["--ws", &rig.url, "--appid", APPID])
        .args(["--pbx", &rig.pbx.addr().to_string()])
        .args(["--callee", "1005", "--caller", "1002"])
        .args(["--bridge-pid", &std::process::id().to_string()])
        .args([
            "--calls",
            &CALLS.to_string(),
            "--duration",
            "5s",
            "--rate",
            "10",
        ])
        .args(["--settle", "1s", "--cooldown", "1s"])
        .arg("--json")
        .arg(&json)
        .args(extra)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(150), output)
        .await
        .expect("srbridge-load finishes within 150 s")
        .expect("srbridge-load runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "srbridge-load failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("setups/s"),
        "the table is printed: {stdout}"
    );
    let text = std::fs::read_to_string(&json).expect("the JSON report is written");
    serde_json::from_str(&text).expect("the report is JSON")
}

/// Every call of every step came up, and the echoed tone came back to every browser.
fn assert_calls_carried_media(report: &Value, directions: &[&str], codec: &str) {
    assert_carried_by(report, directions, codec, "srbridge");
}

fn assert_carried_by(report: &Value, directions: &[&str], codec: &str, peer: &str) {
    let steps = report["steps"].as_array().expect("steps");
    let seen: Vec<&str> = steps
        .iter()
        .filter_map(|s| s["direction"].as_str())
        .collect();
    assert_eq!(seen, directions, "{report:#}");
    for step in steps {
        let context = format!("{step:#}");
        assert_eq!(step["peer"], peer, "{context}");
        assert_eq!(step["codec"], codec, "{context}");
        assert_eq!(step["calls_up"].as_u64(), Some(CALLS), "{context}");
        assert_eq!(step["calls_with_audio"].as_u64(), Some(CALLS), "{context}");
        // 50 packets a second per call, both ways through the echo; generous bounds.
        let window = step["window_s"].as_f64().unwrap();
        let nominal = CALLS as f64 * 50.0 * window;
        let sent = step["packets_sent"].as_f64().unwrap();
        let received = step["packets_received"].as_f64().unwrap();
        assert!(
            sent > 0.8 * nominal,
            "browsers sent {sent} of {nominal}: {context}"
        );
        assert!(
            received > 0.8 * nominal,
            "browsers got {received} of {nominal}: {context}"
        );
        assert!(
            step["missing_percent"].as_f64().unwrap() < 20.0,
            "{context}"
        );
        assert!(
            step["seq_gap_loss_percent"].as_f64().unwrap() < 5.0,
            "{context}"
        );
        assert!(
            step["bridge"]["rss_peak_kb"].as_u64().unwrap() > 0,
            "{context}"
        );
        assert!(step["setup_ms"]["p50"].as_f64().is_some(), "{context}");
    }
}

#[test]
fn help_documents_what_a_run_measures() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_srbridge-load"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--calls",
        "--duration",
        "--bridge-pid",
        "--relay",
        "--json",
        "--peer",
        "rtpengine",
        "jitter",
        "RSS",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}: {help}");
    }
}

#[tokio::test]
async fn an_unreachable_bridge_is_an_error_naming_it() {
    let url = format!("ws://127.0.0.1:{}/ws", support::ports::free_port());
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_srbridge-load"))
        .args(["--ws", &url, "--direction", "sip-to-web", "--calls", "2"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&url), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcoded_calls_both_directions() {
    let rig = support::rig::start_bridge(APPID, "", "", 40).await;
    let report = run_load_tool(&rig, &[]).await;
    assert_calls_carried_media(&report, &["web_to_sip", "sip_to_web"], "opus");
    support::rig::everything_released(&rig.bridge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_calls_both_directions() {
    let rig = support::rig::start_bridge(APPID, "", "", 40).await;
    let report = run_load_tool(&rig, &["--relay"]).await;
    assert_calls_carried_media(&report, &["web_to_sip", "sip_to_web"], "pcmu");
    support::rig::everything_released(&rig.bridge).await;
}

/// `--soak`: 20 short calls back to back, 5 at a time, each a fresh login; every one completes,
/// the tool reads the bridge's task count from `/api/status` and sees it back where it started.
/// The settle outlasts RFC 6026's Timer M: each call's client INVITE transaction (a task of
/// rsipstack's) absorbs retransmitted 200s for 64 × T1 = 32 s after the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_completes_every_call_and_reads_the_bridges_holdings() {
    let rig = support::rig::start_bridge(APPID, "", "", 40).await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("soak.json");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_srbridge-load"))
        .args(["--ws", &rig.url, "--appid", APPID])
        .args(["--pbx", &rig.pbx.addr().to_string()])
        .args(["--callee", "1005", "--direction", "web-to-sip", "--relay"])
        .args(["--bridge-pid", &std::process::id().to_string()])
        .args(["--soak", "20", "--calls", "5", "--duration", "500ms"])
        .args(["--rate", "20", "--soak-settle", "40s"])
        .arg("--json")
        .arg(&json)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(150), output)
        .await
        .expect("srbridge-load finishes within 150 s")
        .expect("srbridge-load runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "srbridge-load failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("baseline"),
        "the table is printed: {stdout}"
    );
    assert!(
        stderr.contains("20/20 done") || stderr.contains("20 completed"),
        "progress: {stderr}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON report")).unwrap();
    let context = format!("{report:#}\n{stderr}");
    assert_eq!(report["completed"].as_u64(), Some(20), "{context}");
    assert_eq!(report["failed"].as_u64(), Some(0), "{context}");
    assert!(report["setup_ms"]["p50"].as_f64().is_some(), "{context}");
    assert!(report["accepted_ms"]["p50"].as_f64().is_some(), "{context}");
    let tasks = |at: &str| {
        report[at]["tasks"]
            .as_u64()
            .unwrap_or_else(|| panic!("{at}: {context}"))
    };
    assert!(
        tasks("peak") > tasks("baseline"),
        "calls ran tasks: {context}"
    );
    // No more tasks than before the calls: a task alive at the baseline (say a SIP transaction
    // in flight) may have ended since — a CI simulation saw 16 → 15 — while a call leaving
    // anything behind would add its tasks 20 times over.
    assert!(
        tasks("after") <= tasks("baseline"),
        "every call's tasks ended: {context}"
    );
    support::rig::everything_released(&rig.bridge).await;
}

/// rtpengine from Debian (scripts/deps.sh installs rtpengine-daemon), in the foreground with
/// userspace forwarding on loopback, its ng port and media ports free; killed on drop.
struct Rtpengine {
    child: tokio::process::Child,
    ng: std::net::SocketAddr,
    log: tempfile::TempDir,
}

impl Rtpengine {
    fn start() -> Rtpengine {
        let binary = ["/usr/bin/rtpengine", "/usr/sbin/rtpengine"]
            .into_iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.exists())
            .expect("rtpengine is not installed: run scripts/deps.sh (Debian rtpengine-daemon)");
        let ng = std::net::SocketAddr::from(([127, 0, 0, 1], support::ports::free_port()));
        let media = support::ports::free_port_range(200);
        let log = tempfile::tempdir().unwrap();
        let out = std::fs::File::create(log.path().join("rtpengine.log")).unwrap();
        let child = tokio::process::Command::new(binary)
            .args([
                "--config-file=none",
                "--table=-1",
                "--foreground",
                "--log-stderr",
            ])
            .args(["--log-level=4", "--interface=127.0.0.1", "--num-threads=1"])
            .arg(format!("--listen-ng={ng}"))
            .arg(format!("--port-min={media}"))
            .arg(format!("--port-max={}", media + 199))
            .arg("--delete-delay=0")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .expect("rtpengine starts");
        Rtpengine { child, ng, log }
    }

    /// Runs the tool against this rtpengine (it waits for rtpengine's answer to ping itself).
    async fn run_load_tool(&mut self, extra: &[&str]) -> Value {
        let pid = self.child.id().expect("rtpengine runs").to_string();
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("report.json");
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_srbridge-load"))
            .args(["--peer", "rtpengine", "--ng", &self.ng.to_string()])
            .args(["--bridge-pid", &pid])
            .args(["--calls", &CALLS.to_string(), "--duration", "5s"])
            .args(["--rate", "10", "--settle", "1s", "--cooldown", "1s"])
            .arg("--json")
            .arg(&json)
            .args(extra)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(150), output)
            .await
            .expect("srbridge-load finishes within 150 s")
            .expect("srbridge-load runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let log =
            std::fs::read_to_string(self.log.path().join("rtpengine.log")).unwrap_or_default();
        assert!(
            output.status.success(),
            "srbridge-load failed ({}):\n{stdout}\n{stderr}\nrtpengine:\n{log}",
            output.status
        );
        let text = std::fs::read_to_string(&json).expect("the JSON report is written");
        let report: Value = serde_json::from_str(&text).expect("the report is JSON");
        assert_eq!(report["peer"], "rtpengine", "{report:#}");
        report
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtpengine_transcodes_the_same_calls_both_directions() {
    let mut rtpengine = Rtpengine::start();
    let report = rtpengine.run_load_tool(&[]).await;
    assert_carried_by(&report, &["web_to_sip", "sip_to_web"], "opus", "rtpengine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtpengine_relays_the_same_calls_both_directions() {
    let mut rtpengine = Rtpengine::start();
    let report = rtpengine.run_load_tool(&["--relay"]).await;
    assert_carried_by(&report, &["web_to_sip", "sip_to_web"], "pcmu", "rtpengine");
    for step in report["steps"].as_array().unwrap() {
        // PCMU both ways: the tagged payloads come back through rtpengine and the echo unchanged.
        assert!(step["echo_packets"].as_u64().unwrap() > 0, "{step:#}");
        assert!(
            step["echo_loss_percent"].as_f64().unwrap() < 20.0,
            "{step:#}"
        );
    }
}

/// The far end of a SIP→web call as Kamailio over TCP can deliver it: 407, then 200, then the
/// 180 reordered after it (the ACK is already out), then the BYE. The load UAC must take the late 180 without losing
/// its place, answer the BYE and count the call as a success.
const LATE_RINGING_UAS: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="late 180, then BYE">
  <recv request="INVITE"/>
  <send><![CDATA[
SIP/2.0 407 Proxy Authentication Required
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Proxy-Authenticate: Digest realm="load.test", nonce="4a2b6c8d"
Content-Length: 0

]]></send>
  <recv request="ACK"/>
  <recv request="INVITE">
    <action>
      <ereg regexp="Via: .*" search_in="msg" check_it="true" assign_to="invite_via"/>
    </action>
  </recv>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:web@[local_ip]:[local_port];transport=[transport]>
Content-Type: application/sdp
Content-Length: [len]

v=0
o=- 1 1 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000

]]></send>
  <recv request="ACK"/>
  <send><![CDATA[
SIP/2.0 180 Ringing
[$invite_via]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
CSeq: 2 INVITE
Content-Length: 0

]]></send>
  <pause milliseconds="300"/>
  <send><![CDATA[
BYE sip:caller@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:web@[local_ip]:[local_port]>;tag=[pid]SIPpTag01[call_number]
To: <sip:caller@[remote_ip]:[remote_port]>
[last_Call-ID:]
CSeq: 1 BYE
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"#;

#[tokio::test]
async fn the_load_uac_takes_a_late_180_and_ends_cleanly_on_bye() {
    let dir = tempfile::tempdir().unwrap();
    let uas_xml = dir.path().join("late_ringing_uas.xml");
    std::fs::write(&uas_xml, LATE_RINGING_UAS).unwrap();
    let users = dir.path().join("users.csv");
    std::fs::write(&users, "SEQUENTIAL\n0loadweb;\n").unwrap();
    let uac_xml = support::project_root().join("src/load/scenarios/load_uac.xml");

    let mut uas = support::sipp::Sipp::new(uas_xml.to_str().unwrap())
        .timeout(Duration::from_secs(15))
        .spawn(None);
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], uas.local_port()));
    let uac = support::sipp::Sipp::new(uac_xml.to_str().unwrap())
        .auth("1002", "1234")
        .key("caller", "1002")
        .arg("-inf")
        .arg(users.to_str().unwrap())
        .timeout(Duration::from_secs(10))
        .run(Some(target))
        .await;
    let uas = uas.wait(Duration::from_secs(10)).await;
    assert!(
        uac.messages.contains("SIP/2.0 180 Ringing") && uac.messages.contains("BYE sip:"),
        "the UAC saw the late 180 and the BYE:\n{}\nUAC errors: {}\nUAS:\n{}\n{}",
        uac.messages,
        uac.errors,
        uas.messages,
        uas.output
    );
    uac.assert_success();
    uas.assert_success();
}
