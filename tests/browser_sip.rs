//! Issue #3 in a real browser: the JS client, loaded from the bridge, in headless Chromium invites
//! SIP extension 1001 (baresip answers) and sees `ACCEPTED_BY_REMOTE`; then a phone dials `0alice`
//! and the page gets `RemoteInvitationReceived` with the phone's number as the caller.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use srbridge::bridge::Bridge;
use srbridge::config::Config;
use support::{ports, Baresip, Pbx};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const T: Duration = Duration::from_secs(15);

async fn phone(pbx: &Pbx, account: &str, auto_answer: bool) -> Baresip {
    support::baresip::silent_phone(pbx, account, auto_answer).await
}

#[tokio::test]
async fn js_client_from_the_bridge_calls_a_sip_extension_and_is_rung_by_a_phone() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join("node_modules/playwright-core/package.json")
            .exists(),
        "node_modules/playwright-core is missing: run scripts/deps.sh"
    );
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "chromium missing: run scripts/deps.sh"
    );
    let pbx = Pbx::start().await;
    let callee = phone(&pbx, "1001", true).await;
    let caller = phone(&pbx, "1002", false).await;
    let rtp = ports::free_port_range(20);
    let text = format!(
        "[global]\nappid = \"app\"\nsip_svr = \"{}\"\nsip_local_port = 0\n\
         [rtm2sip]\non = true\nacc_rule = \"10[01-19]\"\n\
         [proxy]\non = true\nsip_account = \"1000\"\nsip_pwd = \"1234\"\nrtm_account = \"bridge\"\n\
         [sip]\nlisten_ip = \"127.0.0.1\"\noptions_interval = 0\n\
         [media]\nrtp_port_min = {rtp}\nrtp_port_max = {}\n\
         [http]\nlisten = \"127.0.0.1:0\"\n",
        pbx.addr(),
        rtp + 19
    );
    let config = Config::from_toml_str(Path::new("browser_sip.toml"), &text).expect("config");
    let bridge = Bridge::start(config).await.expect("bridge");
    pbx.wait_registered("1000", T).await;

    let mut child = Command::new("node")
        .arg(root.join("tests/browser/sip_client.mjs"))
        .arg(format!("http://{}", bridge.http_addr()))
        .current_dir(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut steps = Vec::new();
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await
    {
        let step: Value = serde_json::from_str(&line).unwrap_or(Value::String(line));
        if step["step"] == "ready_for_incoming" {
            caller.dial("0alice").await;
        }
        steps.push(step);
    }
    let output = child.wait_with_output().await.expect("node exits");
    assert!(
        output.status.success(),
        "browser script failed: {}\nsteps: {steps:#?}",
        String::from_utf8_lossy(&output.stderr)
    );
    let step = |name: &str| {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no step {name}: {steps:#?}"))
            .clone()
    };
    assert_eq!(step("login")["state"], "CONNECTED");
    let call = step("call")["result"].clone();
    assert_eq!(call["state"], "ACCEPTED_BY_REMOTE", "{call}");
    let response: Value = serde_json::from_str(call["response"].as_str().unwrap_or("{}")).unwrap();
    assert_eq!(response["SipNumber"], "1001", "{call}");
    callee.wait_for("CALL_ESTABLISHED", T).await;
    let incoming = step("incoming")["invitation"].clone();
    assert_eq!(
        incoming["callerId"], "1002",
        "the caller is the phone's number: {incoming}"
    );
    let content: Value =
        serde_json::from_str(incoming["content"].as_str().unwrap_or("{}")).unwrap();
    assert_eq!(content["SipNumber"], "1002", "{incoming}");
}
