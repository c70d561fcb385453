//! Loader tests: both shipped examples, and every error path in both forms.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const INI_BASE: &str = "[global]\nappid=app\nsip_svr=127.0.0.1:5060\n";
const TOML_BASE: &str = "[global]\nappid = \"app\"\nsip_svr = \"127.0.0.1:5060\"\n";

fn ini(text: &str) -> Result<Config, ConfigError> {
    Config::from_rtx_conf_str(Path::new("rtx.conf"), text)
}

fn toml(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(Path::new("x.toml"), text)
}

fn ini_with(extra: &str) -> Result<Config, ConfigError> {
    ini(&format!("{INI_BASE}{extra}"))
}

fn toml_with(extra: &str) -> Result<Config, ConfigError> {
    toml(&format!("{TOML_BASE}{extra}"))
}

/// Asserts the error's line and key, that its message contains `needle`, and that it is one line.
#[track_caller]
fn assert_error(
    result: Result<Config, ConfigError>,
    line: Option<usize>,
    key: Option<&str>,
    needle: &str,
) -> String {
    let error = result.expect_err("config should be refused");
    let text = error.to_string();
    assert_eq!(error.line(), line, "line of: {text}");
    assert_eq!(error.key(), key, "key of: {text}");
    assert!(text.contains(needle), "{text:?} should contain {needle:?}");
    assert!(!text.contains('\n'), "one line: {text:?}");
    text
}

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name)
}

// ---- shipped examples ----

#[test]
fn shipped_rtx_conf_loads() {
    let config = Config::load(&shipped("rtx.conf")).expect("config/rtx.conf is valid");
    assert_eq!(config.form, ConfigForm::RtxConf);
    assert_eq!(config.global.sip_svr.to_string(), "127.0.0.1:5060");
    assert_eq!(config.global.sip_local_port, 5086);
    assert!(config.may_call("1005"));
    assert!(config.may_call("1019"));
    assert!(!config.may_call("1020"));
    let proxy = config.proxy.as_ref().expect("proxy on");
    assert_eq!(proxy.sip_account, "1000");
    assert_eq!(proxy.sip_pwd.expose(), "1234");
    assert!(config.pstn.is_none(), "empty [pstn] ip means no gateway");
    assert_eq!(config.log.level, LogLevel::Info);
    assert_eq!(config.warnings.len(), 2, "{:?}", config.warnings);
    assert!(config.warnings[0].contains("[rtc]"));
    assert!(config.warnings[1].contains("[rtm]"));
}

#[test]
fn shipped_toml_loads_with_the_same_core_settings() {
    let toml = Config::load(&shipped("srbridge.toml")).expect("config/srbridge.toml is valid");
    let ini = Config::load(&shipped("rtx.conf")).expect("valid");
    assert_eq!(toml.form, ConfigForm::Toml);
    assert_eq!(toml.global.appid, ini.global.appid);
    assert_eq!(toml.global.sip_svr, ini.global.sip_svr);
    assert_eq!(
        toml.rtm2sip.as_ref().map(|r| r.acc_rule.to_string()),
        ini.rtm2sip.as_ref().map(|r| r.acc_rule.to_string())
    );
    assert_eq!(
        toml.proxy.as_ref().map(|p| p.sip_pwd.clone()),
        ini.proxy.as_ref().map(|p| p.sip_pwd.clone())
    );
    assert!(toml.warnings.is_empty(), "{:?}", toml.warnings);
}

#[test]
fn secrets_never_appear_in_debug_or_check_output() {
    let config = toml_with(
        "[proxy]\non = true\nsip_account = \"1000\"\nsip_pwd = \"hunter2pw\"\nrtm_account = \"bridge\"\n\
         [http]\nadmin_token = \"admintok77\"\n[auth]\ntoken_secret = \"hmacsecret99\"\n\
         [[media.turn]]\nurl = \"turn:127.0.0.1:3478\"\nusername = \"u\"\ncredential = \"turncred55\"\n",
    )
    .expect("valid");
    let shown = format!("{config}\n{config:?}");
    for secret in ["hunter2pw", "admintok77", "hmacsecret99", "turncred55"] {
        assert!(!shown.contains(secret), "{secret} leaked");
    }
    assert!(shown.contains("sip_pwd              = ***"));
    assert_eq!(
        config.auth.token_secret.as_ref().map(Secret::expose),
        Some("hmacsecret99")
    );
}

#[test]
fn minimal_files_take_defaults() {
    for config in [ini(INI_BASE).expect("ini"), toml(TOML_BASE).expect("toml")] {
        assert!(config.rtm2sip.is_none());
        assert!(config.proxy.is_none());
        assert_eq!(config.global.sip_local_port, 5086);
        assert_eq!(config.sip.dial_prefix, "0");
        assert_eq!(
            config.sip.user_agent, "srbridge",
            "no version leaked by default"
        );
        assert_eq!(config.sip.register_expires, Duration::from_secs(300));
        assert_eq!(config.media.rtp_port_min, 20000);
        assert_eq!(config.media.rtp_port_max, 30000);
        assert_eq!(config.media.codecs, vec![Codec::Pcmu, Codec::Pcma]);
        assert_eq!(config.http.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(config.limits.max_calls, 1000);
        assert_eq!(config.limits.max_setups_per_sec, 50);
        assert_eq!(config.limits.max_ws_sessions, 10000);
        assert_eq!(config.limits.max_conns_per_ip, 128);
        assert_eq!(config.limits.fd_reserve, None);
        assert_eq!(config.http.header_timeout, Duration::from_secs(10));
        assert_eq!(config.http.login_timeout, Duration::from_secs(10));
        assert!(config.http.allowed_origins.is_empty());
        assert_eq!(config.auth.max_token_ttl, Duration::from_secs(86_400));
        assert_eq!(config.shutdown.drain_timeout, Duration::from_secs(30));
        assert_eq!(config.sip.session_expires, Duration::from_secs(1800));
        assert_eq!(config.sip.min_se, Duration::from_secs(90));
        assert_eq!(config.media.rtp_timeout, Duration::from_secs(60));
        assert_eq!(config.media.rtp_hold_timeout, Duration::from_secs(3600));
        assert!(!config.may_call("1005"));
    }
}

#[test]
fn session_timer_and_rtp_timeout_settings_are_read_from_toml() {
    let text =
        "[sip]\nsession_expires = 20\nmin_se = 6\n[media]\nrtp_timeout = 3\nrtp_hold_timeout = 0\n";
    let config = toml_with(text).expect("toml");
    assert_eq!(config.sip.session_expires, Duration::from_secs(20));
    assert_eq!(config.sip.min_se, Duration::from_secs(6));
    assert_eq!(config.media.rtp_timeout, Duration::from_secs(3));
    assert_eq!(config.media.rtp_hold_timeout, Duration::ZERO);
    let off = toml_with("[sip]\nsession_expires = 0\n[media]\nrtp_timeout = 0\n").expect("0 = off");
    assert_eq!(off.sip.session_expires, Duration::ZERO);
    assert_eq!(off.media.rtp_timeout, Duration::ZERO);
    let raised = toml_with("[sip]\nmin_se = 3600\n").expect("default raised to min_se");
    assert_eq!(raised.sip.session_expires, Duration::from_secs(3600));
}

#[test]
fn native_settings_are_read_from_toml() {
    let config = toml_with(
        "[sip]\nlisten_ip = \"127.0.0.1\"\ntransport = \"TCP\"\npublic_ip = \"127.0.0.9\"\n\
         register_expires = 60\noptions_interval = 0\ndial_prefix = \"\"\nring_timeout = 20\n\
         allowed_peers = [\"127.0.0.2\", \"::1\"]\n\
         user_agent = \"Acme PBX gateway\"\ntcp_idle_timeout = 60\ntcp_first_message_timeout = 3\n\
         tcp_max_per_ip = 4\n\
         [media]\nrtp_port_min = 40000\nrtp_port_max = 40100\ncodecs = [\"pcma\"]\n\
         stun_servers = [\"stun:127.0.0.1:3478\"]\ndtmf_mode = \"info\"\n\
         [[media.codec_rules]]\nnumbers = \"9[00-99]\"\ncodecs = [\"PCMU\"]\n\
         [media.recording]\nenabled = true\ndir = \"/tmp/rec\"\nmode = \"stereo\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\nstatus_listen = \"127.0.0.1:9999\"\n\
         [limits]\nmax_calls = 5\n[shutdown]\ndrain_timeout = 0\n\
         [log]\nlevel = \"debug\"\nfile = \"/tmp/x.log\"\nmax_file_size = 0\n",
    )
    .expect("valid");
    assert_eq!(config.sip.transport, SipTransport::Tcp);
    assert_eq!(
        config.sip.public_ip.map(|ip| ip.to_string()).as_deref(),
        Some("127.0.0.9")
    );
    assert_eq!(config.sip.options_interval, Duration::ZERO);
    assert_eq!(config.sip.dial_prefix, "");
    assert_eq!(config.sip.allowed_peers.len(), 2);
    assert_eq!(config.sip.user_agent, "Acme PBX gateway");
    assert_eq!(config.sip.tcp_idle_timeout, Duration::from_secs(60));
    assert_eq!(config.sip.tcp_first_message_timeout, Duration::from_secs(3));
    assert_eq!(config.sip.tcp_max_per_ip, 4);
    assert_eq!(config.media.codecs, vec![Codec::Pcma]);
    assert_eq!(config.media.codecs_for("955"), &[Codec::Pcmu]);
    assert_eq!(config.media.codecs_for("1005"), &[Codec::Pcma]);
    assert_eq!(config.media.dtmf_mode, DtmfMode::Info);
    assert!(config.media.recording.enabled);
    assert_eq!(config.media.recording.mode, RecordingMode::Stereo);
    assert_eq!(config.http.listen.port(), 0);
    assert_eq!(config.limits.max_calls, 5);
    assert_eq!(config.shutdown.drain_timeout, Duration::ZERO);
    assert_eq!(config.log.level, LogLevel::Debug);
    assert_eq!(config.log.max_file_size_mb, 0);
    assert_eq!(config.log.max_files, 5, "default");
}

#[test]
fn sip_svr_accepts_any_port_hostnames_and_ipv6() {
    for (text, shown) in [
        ("127.0.0.1:5080", "127.0.0.1:5080"),
        ("PBX.example.org:5070", "pbx.example.org:5070"),
        ("[::1]:5060", "[::1]:5060"),
    ] {
        let config = ini(&format!("[global]\nappid=a\nsip_svr={text}\n")).expect(text);
        assert_eq!(config.global.sip_svr.to_string(), shown);
    }
}

#[test]
fn ini_booleans_accept_srproxy_and_word_forms() {
    for on in ["1", "true", "YES", "on"] {
        let config = ini_with(&format!("[rtm2sip]\non={on}\nacc_rule=1005\n")).expect(on);
        assert!(config.may_call("1005"), "{on}");
    }
    for off in ["0", "false", "no", "off"] {
        let config = ini_with(&format!("[rtm2sip]\non={off}\nacc_rule=1005\n")).expect(off);
        assert!(!config.may_call("1005"), "{off}");
    }
}

#[test]
fn pstn_gateway_defaults_to_port_5060() {
    let config = ini_with("[pstn]\nip=127.0.0.1\nprefix=9\n").expect("valid");
    let pstn = config.pstn.expect("pstn set");
    assert_eq!(pstn.addr.to_string(), "127.0.0.1:5060");
    assert_eq!(pstn.prefix, "9");
}

#[test]
fn proxy_off_ignores_its_account_keys() {
    let config = ini_with("[proxy]\non=0\nsip_account=a@b\n").expect("valid");
    assert!(config.proxy.is_none());
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn rtm2sip_without_proxy_is_a_warning() {
    let config = ini_with("[rtm2sip]\non=1\nacc_rule=1005\n").expect("valid");
    assert!(config.warnings.iter().any(|w| w.contains("[proxy] is off")));
}

// ---- warnings (rtx.conf) vs errors (TOML) for unknown things ----

#[test]
fn ini_unknown_keys_and_sections_are_warnings() {
    let config = ini_with("bogus=1\n[extra]\nx=1\n[media]\nrtp_port_min=1\n").expect("valid");
    assert_eq!(
        config.warnings,
        vec![
            "rtx.conf:5: [extra]: unknown section, ignored",
            "rtx.conf:7: [media]: is only read from the TOML config form; ignored",
            "rtx.conf:4: [global] bogus: unknown key, ignored",
        ]
    );
}

#[test]
fn toml_unknown_key_is_an_error() {
    assert_error(
        toml_with("[limits]\nmax_call = 5\n"),
        Some(5),
        Some("[limits] max_call"),
        "unknown key (known keys: max_calls, max_setups_per_sec, max_ws_sessions, max_conns_per_ip, fd_reserve)",
    );
}

#[test]
fn toml_unknown_section_is_an_error() {
    assert_error(
        toml_with("[globl]\nx = 1\n"),
        Some(4),
        Some("[globl]"),
        "unknown section",
    );
}

#[test]
fn toml_rtc_and_rtm_are_ignored_with_a_warning() {
    let config = toml_with("[rtc]\nip = \"1.2.3.4\"\n").expect("valid");
    assert_eq!(config.warnings.len(), 1);
}

// ---- [global] ----

#[test]
fn missing_global_section() {
    let text = assert_error(
        ini("[log]\nlevel=2\n"),
        None,
        Some("[global] appid"),
        "required (the file has no [global] section)",
    );
    assert_eq!(
        text,
        "rtx.conf: [global] appid: required (the file has no [global] section)"
    );
    assert_error(
        toml("[log]\nlevel = 2\n"),
        None,
        Some("[global] appid"),
        "no [global] section",
    );
}

#[test]
fn missing_appid_points_at_section() {
    assert_error(
        ini("# x\n[global]\nsip_svr=127.0.0.1:5060\n"),
        Some(2),
        Some("[global] appid"),
        "required",
    );
    assert_error(
        toml("[global]\nsip_svr = \"127.0.0.1:5060\"\n"),
        Some(1),
        Some("[global] appid"),
        "required",
    );
}

#[test]
fn empty_appid() {
    assert_error(
        ini("[global]\nappid= ## none\nsip_svr=127.0.0.1:5060\n"),
        Some(2),
        Some("[global] appid"),
        "is empty",
    );
    assert_error(
        toml("[global]\nappid = \"\"\nsip_svr = \"127.0.0.1:5060\"\n"),
        Some(2),
        Some("[global] appid"),
        "is empty",
    );
}

#[test]
fn appid_with_whitespace_or_too_long() {
    assert_error(
        toml("[global]\nappid = \"a b\"\nsip_svr = \"127.0.0.1:5060\"\n"),
        Some(2),
        Some("[global] appid"),
        "whitespace",
    );
    let long = "a".repeat(129);
    assert_error(
        ini(&format!("[global]\nappid={long}\nsip_svr=127.0.0.1:5060\n")),
        Some(2),
        Some("[global] appid"),
        "at most 128",
    );
}

#[test]
fn sip_svr_without_port() {
    let text = assert_error(
        ini("[global]\nappid=a\n\nsip_svr=10.0.0.1\n"),
        Some(4),
        Some("[global] sip_svr"),
        "is not IP:port",
    );
    assert_eq!(
        text,
        "rtx.conf:4: [global] sip_svr: \"10.0.0.1\" is not IP:port or host:port"
    );
    assert_error(
        toml("[global]\nappid = \"a\"\nsip_svr = \"10.0.0.1\"\n"),
        Some(3),
        Some("[global] sip_svr"),
        "is not IP:port",
    );
    assert_error(
        ini("[global]\nappid=a\nsip_svr=::1\n"),
        Some(3),
        Some("[global] sip_svr"),
        "is not IP:port",
    );
    assert_error(
        ini("[global]\nappid=a\nsip_svr=pbx.local\n"),
        Some(3),
        Some("[global] sip_svr"),
        "is not IP:port",
    );
}

#[test]
fn sip_svr_bad_port() {
    for (value, needle) in [
        ("10.0.0.1:0", "port 0"),
        ("10.0.0.1:70000", "is not a number 1-65535"),
        ("10.0.0.1:abc", "is not a number 1-65535"),
        ("10.0.0.1:", "is not a number 1-65535"),
    ] {
        assert_error(
            ini(&format!("[global]\nappid=a\nsip_svr={value}\n")),
            Some(3),
            Some("[global] sip_svr"),
            needle,
        );
    }
}

#[test]
fn sip_svr_bad_host() {
    assert_error(
        ini("[global]\nappid=a\nsip_svr=10.0.0.256:5060\n"),
        Some(3),
        Some("[global] sip_svr"),
        "\"10.0.0.256\" is not a valid IP address",
    );
    assert_error(
        ini("[global]\nappid=a\nsip_svr=pbx_1:5060\n"),
        Some(3),
        Some("[global] sip_svr"),
        "is not IP:port",
    );
    assert_error(
        ini("[global]\nappid=a\nsip_svr=[::1:5060\n"),
        Some(3),
        Some("[global] sip_svr"),
        "is not IP:port",
    );
}

#[test]
fn sip_svr_missing_or_empty() {
    assert_error(
        ini("[global]\nappid=a\n"),
        Some(1),
        Some("[global] sip_svr"),
        "required",
    );
    assert_error(
        ini("[global]\nappid=a\nsip_svr=\n"),
        Some(3),
        Some("[global] sip_svr"),
        "is empty",
    );
}

#[test]
fn sip_local_port_out_of_range_or_not_a_number() {
    assert_error(
        ini_with("sip_local_port=70000\n"),
        Some(4),
        Some("[global] sip_local_port"),
        "70000 is out of range (0-65535)",
    );
    assert_error(
        ini_with("sip_local_port=50a\n"),
        Some(4),
        Some("[global] sip_local_port"),
        "\"50a\" is not a whole number",
    );
    assert_error(
        toml_with("sip_local_port = \"5086\"\n"),
        Some(4),
        Some("[global] sip_local_port"),
        "expected a whole number, found \"5086\"",
    );
}

// ---- [rtm2sip] ----

#[test]
fn rtm2sip_on_not_a_boolean() {
    assert_error(
        ini_with("[rtm2sip]\non=2\n"),
        Some(5),
        Some("[rtm2sip] on"),
        "\"2\" is not a boolean",
    );
    assert_error(
        toml_with("[rtm2sip]\non = 2\n"),
        Some(5),
        Some("[rtm2sip] on"),
        "expected true or false, found integer 2",
    );
    assert_error(
        toml_with("[rtm2sip]\non = \"yes\"\n"),
        Some(5),
        Some("[rtm2sip] on"),
        "expected true or false",
    );
}

#[test]
fn rtm2sip_on_requires_acc_rule() {
    let text = assert_error(
        ini_with("[rtm2sip]\non=1\n"),
        Some(5),
        Some("[rtm2sip] acc_rule"),
        "required when [rtm2sip] on=1",
    );
    assert_eq!(
        text,
        "rtx.conf:5: [rtm2sip] acc_rule: required when [rtm2sip] on=1"
    );
    assert_error(
        toml_with("[rtm2sip]\non = true\n"),
        Some(5),
        Some("[rtm2sip] acc_rule"),
        "required when",
    );
}

#[test]
fn rtm2sip_on_with_empty_acc_rule() {
    for rule in ["", ";"] {
        assert_error(
            ini_with(&format!("[rtm2sip]\non=1\nacc_rule={rule}\n")),
            Some(6),
            Some("[rtm2sip] acc_rule"),
            "is empty",
        );
    }
    assert_error(
        toml_with("[rtm2sip]\non = true\nacc_rule = \"\"\n"),
        Some(6),
        Some("[rtm2sip] acc_rule"),
        "is empty",
    );
}

#[test]
fn invalid_acc_rule_token_is_an_error_even_when_off() {
    let text = assert_error(
        ini_with("[rtm2sip]\non=0\nacc_rule=1005;10[19-06]\n"),
        Some(6),
        Some("[rtm2sip] acc_rule"),
        "invalid token \"10[19-06]\"",
    );
    assert_eq!(
        text,
        "rtx.conf:6: [rtm2sip] acc_rule: invalid token \"10[19-06]\": range start 19 is greater than end 06"
    );
    assert_error(
        toml_with("[rtm2sip]\non = true\nacc_rule = \"10[0a-19]\"\n"),
        Some(6),
        Some("[rtm2sip] acc_rule"),
        "invalid token \"10[0a-19]\"",
    );
}

// ---- [proxy] ----

#[test]
fn proxy_on_requires_each_account_key() {
    let full = [
        ("sip_account", "sip_account=1000\n"),
        ("sip_pwd", "sip_pwd=1234\n"),
        ("rtm_account", "rtm_account=bridge\n"),
    ];
    for (missing, _) in full {
        let body: String = full
            .iter()
            .filter(|(k, _)| *k != missing)
            .map(|(_, line)| *line)
            .collect();
        assert_error(
            ini_with(&format!("[proxy]\non=1\n{body}")),
            Some(5),
            Some(&format!("[proxy] {missing}")),
            "required when [proxy] on=1",
        );
    }
    assert_error(
        toml_with("[proxy]\non = true\nsip_account = 1000\nrtm_account = \"b\"\n"),
        Some(5),
        Some("[proxy] sip_pwd"),
        "required when [proxy] on=1",
    );
}

#[test]
fn proxy_empty_password() {
    assert_error(
        ini_with("[proxy]\non=1\nsip_account=1000\nsip_pwd=\nrtm_account=b\n"),
        Some(7),
        Some("[proxy] sip_pwd"),
        "is empty",
    );
}

#[test]
fn proxy_bad_sip_account() {
    assert_error(
        ini_with("[proxy]\non=1\nsip_account=1000@pbx\nsip_pwd=1234\nrtm_account=b\n"),
        Some(6),
        Some("[proxy] sip_account"),
        "contains '@'",
    );
}

#[test]
fn proxy_bad_rtm_account() {
    assert_error(
        toml_with(
            "[proxy]\non = true\nsip_account = \"1000\"\nsip_pwd = \"1234\"\nrtm_account = \"a b\"\n",
        ),
        Some(8),
        Some("[proxy] rtm_account"),
        "whitespace",
    );
}

#[test]
fn toml_password_of_wrong_type_is_not_echoed() {
    let text = assert_error(
        toml_with("[proxy]\non = true\nsip_account = \"1000\"\nsip_pwd = 98765.5\n"),
        Some(7),
        Some("[proxy] sip_pwd"),
        "expected a string, found float",
    );
    assert!(!text.contains("98765"), "{text}");
}

#[test]
fn toml_integer_account_and_password_are_accepted() {
    let config =
        toml_with("[proxy]\non = 1\nsip_account = 1000\nsip_pwd = 1234\nrtm_account = 1000\n")
            .expect("valid");
    let proxy = config.proxy.expect("on");
    assert_eq!(proxy.sip_account, "1000");
    assert_eq!(proxy.sip_pwd.expose(), "1234");
}

// ---- [pstn] ----

#[test]
fn pstn_bad_ip() {
    assert_error(
        ini_with("[pstn]\nip=gateway!\n"),
        Some(5),
        Some("[pstn] ip"),
        "is not IP, IP:port or host:port",
    );
}

#[test]
fn pstn_prefix_without_ip() {
    assert_error(
        ini_with("[pstn]\nip=\nprefix=9\n"),
        Some(6),
        Some("[pstn] prefix"),
        "is set but [pstn] ip is not",
    );
}

#[test]
fn pstn_bad_prefix() {
    assert_error(
        toml_with("[pstn]\nip = \"127.0.0.1\"\nprefix = \"9 1\"\n"),
        Some(6),
        Some("[pstn] prefix"),
        "contains ' '",
    );
}

// ---- [log] ----

#[test]
fn log_level_out_of_range_or_unknown() {
    assert_error(
        ini_with("[log]\nlevel=9\n"),
        Some(5),
        Some("[log] level"),
        "\"9\" is not a log level (0 SENSITIVE, 1 DEBUG, 2 INFO, 3 WARN, 4 ERROR, 5 NONE)",
    );
    assert_error(
        toml_with("[log]\nlevel = \"loud\"\n"),
        Some(5),
        Some("[log] level"),
        "is not a log level",
    );
    assert_error(
        toml_with("[log]\nlevel = true\n"),
        Some(5),
        Some("[log] level"),
        "expected a string, found boolean true",
    );
}

#[test]
fn log_every_srproxy_level_maps() {
    for (n, level) in [
        (0, LogLevel::Sensitive),
        (1, LogLevel::Debug),
        (2, LogLevel::Info),
        (3, LogLevel::Warn),
        (4, LogLevel::Error),
        (5, LogLevel::None),
    ] {
        let config = ini_with(&format!("[log]\nlevel={n}\n")).expect("valid");
        assert_eq!(config.log.level, level);
        assert_eq!(config.log.level.number(), n);
    }
}

#[test]
fn log_max_file_size_bad() {
    assert_error(
        ini_with("[log]\nmax_file_size=-1\n"),
        Some(5),
        Some("[log] max_file_size"),
        "-1 is out of range",
    );
    assert_error(
        ini_with("[log]\nmax_file_size=10MB\n"),
        Some(5),
        Some("[log] max_file_size"),
        "is not a whole number",
    );
}

#[test]
fn log_max_files_read_and_bounded() {
    let config = ini_with("[log]\nmax_files=2\n").expect("valid");
    assert_eq!(config.log.max_files, 2);
    let config = toml_with("[log]\nmax_files = 1000\n").expect("valid");
    assert_eq!(config.log.max_files, 1000);
    for bad in ["0", "1001", "-3"] {
        assert_error(
            toml_with(&format!("[log]\nmax_files = {bad}\n")),
            Some(5),
            Some("[log] max_files"),
            "is out of range",
        );
    }
}

// ---- [sip] ----

#[test]
fn sip_bad_values() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "listen_ip = \"localhost\"",
            "listen_ip",
            "\"localhost\" is not an IP address",
        ),
        (
            "transport = \"sctp\"",
            "transport",
            "\"sctp\" is not udp or tcp",
        ),
        (
            "public_ip = \"0.0.0.0\"",
            "public_ip",
            "cannot be advertised",
        ),
        (
            "register_expires = 5",
            "register_expires",
            "5 is out of range (10-86400)",
        ),
        ("options_interval = -1", "options_interval", "out of range"),
        ("dial_prefix = \"0 \"", "dial_prefix", "contains ' '"),
        ("target_header = \"\"", "target_header", "is empty"),
        (
            "target_header = \"X Number\"",
            "target_header",
            "contains ' ', not allowed in a SIP header name",
        ),
        (
            "target_header = \"X-Number:\"",
            "target_header",
            "contains ':', not allowed",
        ),
        (
            "target_header = \"X-Num\\r\\nVia\"",
            "target_header",
            "contains '\\r', not allowed",
        ),
        (
            "ring_timeout = 0",
            "ring_timeout",
            "0 is out of range (1-3600)",
        ),
        (
            "allowed_peers = [\"127.0.0.1\", \"x\"]",
            "allowed_peers",
            "item 2: \"x\" is not an IP address",
        ),
        (
            "allowed_peers = [\"127.0.0.1\", 5]",
            "allowed_peers",
            "item 2: expected a string, found integer 5",
        ),
        (
            "allowed_peers = true",
            "allowed_peers",
            "expected an array of strings",
        ),
        ("user_agent = \"\"", "user_agent", "is empty"),
        (
            "user_agent = \"pbx\\r\\nX: y\"",
            "user_agent",
            "only printable ASCII",
        ),
        ("user_agent = true", "user_agent", "expected a string"),
        (
            "tcp_idle_timeout = 1",
            "tcp_idle_timeout",
            "1 is out of range (5-86400)",
        ),
        (
            "tcp_first_message_timeout = 0",
            "tcp_first_message_timeout",
            "out of range",
        ),
        ("tcp_max_per_ip = 0", "tcp_max_per_ip", "out of range"),
        ("min_se = 0", "min_se", "0 is out of range (1-86400)"),
        (
            "session_expires = 30",
            "session_expires",
            "30 is below min_se (90 s)",
        ),
        ("session_expires = -5", "session_expires", "out of range"),
        (
            "session_expires = \"long\"",
            "session_expires",
            "expected a whole number",
        ),
    ];
    for (line, key, needle) in cases {
        assert_error(
            toml_with(&format!("[sip]\n{line}\n")),
            Some(5),
            Some(&format!("[sip] {key}")),
            needle,
        );
    }
}

// ---- [media] ----

#[test]
fn media_bad_port_range() {
    let cases: &[(&str, usize, &str, &str)] = &[
        ("rtp_port_min = 20001", 5, "rtp_port_min", "20001 is odd"),
        (
            "rtp_port_min = 80",
            5,
            "rtp_port_min",
            "80 is out of range (1024-65534)",
        ),
        ("rtp_port_max = 70000", 5, "rtp_port_max", "out of range"),
        (
            "rtp_port_min = 30000\nrtp_port_max = 30000",
            6,
            "rtp_port_max",
            "range 30000-30000 is empty",
        ),
        (
            "rtp_port_min = 40000",
            5,
            "rtp_port_min",
            "range 40000-30000 is empty",
        ),
        (
            "rtp_port_max = 10000",
            5,
            "rtp_port_max",
            "range 20000-10000 is empty",
        ),
    ];
    for (lines, line, key, needle) in cases {
        assert_error(
            toml_with(&format!("[media]\n{lines}\n")),
            Some(*line),
            Some(&format!("[media] {key}")),
            needle,
        );
    }
}

#[test]
fn webrtc_ports_share_the_rtp_range_unless_set_apart() {
    let config = toml_with("[media]\n").expect("valid");
    assert_eq!(config.media.webrtc_port_range, None);
    let config =
        toml_with("[media]\nwebrtc_port_min = 40000\nwebrtc_port_max = 40999\n").expect("valid");
    assert_eq!(config.media.webrtc_port_range, Some((40000, 40999)));
    let config = toml_with("[sip]\ntarget_header = \"X-Target\"\n").expect("valid");
    assert_eq!(config.sip.target_header, "X-Target");
    assert_eq!(
        toml_with("").expect("valid").sip.target_header,
        "X-Number",
        "SRProxy's header by default"
    );
}

#[test]
fn webrtc_single_port_is_off_unless_set() {
    assert_eq!(
        toml_with("[media]\n")
            .expect("valid")
            .media
            .webrtc_single_port,
        None
    );
    let config = toml_with("[media]\nwebrtc_single_port = 3478\n").expect("valid");
    assert_eq!(config.media.webrtc_single_port, Some(3478));
    assert!(
        !config
            .warnings
            .iter()
            .any(|w| w.contains("webrtc_single_port")),
        "in effect: nothing to warn about {:?}",
        config.warnings
    );
    let config = toml_with(
        "[media]\nwebrtc_port_min = 40000\nwebrtc_port_max = 40999\nwebrtc_single_port = 41000\n",
    )
    .expect("valid");
    assert_eq!(config.media.webrtc_single_port, Some(41000));
}

#[test]
fn media_bad_webrtc_single_port() {
    let cases: &[(&str, usize, &str)] = &[
        (
            "webrtc_single_port = 25000",
            5,
            "inside the RTP range 20000-30000",
        ),
        ("webrtc_single_port = 80", 5, "out of range"),
        ("webrtc_single_port = \"x\"", 5, "webrtc_single_port"),
        (
            "webrtc_port_min = 40000\nwebrtc_port_max = 40999\nwebrtc_single_port = 40500",
            7,
            "inside webrtc_port_min/max 40000-40999",
        ),
    ];
    for (lines, line, needle) in cases {
        assert_error(
            toml_with(&format!("[media]\n{lines}\n")),
            Some(*line),
            Some("[media] webrtc_single_port"),
            needle,
        );
    }
}

#[test]
fn media_bad_webrtc_port_range() {
    let cases: &[(&str, usize, &str, &str)] = &[
        (
            "webrtc_port_min = 40000",
            5,
            "webrtc_port_min",
            "without [media] webrtc_port_max",
        ),
        (
            "webrtc_port_max = 40000",
            5,
            "webrtc_port_max",
            "without [media] webrtc_port_min",
        ),
        (
            "webrtc_port_min = 40001\nwebrtc_port_max = 40001",
            6,
            "webrtc_port_max",
            "range 40001-40001 holds no even/odd port pair",
        ),
        (
            "webrtc_port_min = 40000\nwebrtc_port_max = 39000",
            6,
            "webrtc_port_max",
            "range 40000-39000 holds no even/odd port pair",
        ),
        (
            "webrtc_port_min = 29000\nwebrtc_port_max = 31000",
            5,
            "webrtc_port_min",
            "overlaps the RTP range 20000-30000",
        ),
        (
            "webrtc_port_min = 80\nwebrtc_port_max = 90",
            5,
            "webrtc_port_min",
            "out of range",
        ),
    ];
    for (lines, line, key, needle) in cases {
        assert_error(
            toml_with(&format!("[media]\n{lines}\n")),
            Some(*line),
            Some(&format!("[media] {key}")),
            needle,
        );
    }
}

#[test]
fn media_bad_codecs() {
    let cases: &[(&str, &str)] = &[
        ("codecs = []", "is empty"),
        (
            "codecs = [\"PCMU\", \"G729\"]",
            "item 2: \"G729\" is not a supported codec (PCMU, PCMA)",
        ),
        ("codecs = [\"PCMU\", \"pcmu\"]", "PCMU is listed twice"),
        ("codecs = \"PCMU\"", "expected an array of strings"),
    ];
    for (line, needle) in cases {
        assert_error(
            toml_with(&format!("[media]\n{line}\n")),
            Some(5),
            Some("[media] codecs"),
            needle,
        );
    }
}

#[test]
fn media_bad_codec_rules() {
    let cases: &[(&str, &str, &str)] = &[
        ("codecs = [\"PCMA\"]", "numbers", "required"),
        (
            "numbers = \"9[1-\"\ncodecs = [\"PCMA\"]",
            "numbers",
            "entry 1: invalid token \"9[1-\": missing ']'",
        ),
        ("numbers = \"9\"", "codecs", "required"),
        (
            "numbers = \"9\"\ncodecs = [\"X\"]",
            "codecs",
            "not a supported codec",
        ),
        (
            "numbers = \"9\"\ncodecs = [\"PCMA\"]\nextra = 1",
            "extra",
            "unknown key",
        ),
    ];
    for (body, key, needle) in cases {
        assert_error(
            toml_with(&format!("[[media.codec_rules]]\n{body}\n")),
            Some(4),
            Some(&format!("[media.codec_rules] {key}")),
            needle,
        );
    }
    assert_error(
        toml_with("[media]\ncodec_rules = 5\n"),
        Some(5),
        Some("[media] codec_rules"),
        "expected an array of tables",
    );
    assert_error(
        toml_with("[media]\ncodec_rules = [1]\n"),
        Some(5),
        Some("[media] codec_rules"),
        "entry 1: expected a table",
    );
}

#[test]
fn media_bad_stun_and_turn() {
    assert_error(
        toml_with("[media]\nstun_servers = [\"http://x\"]\n"),
        Some(5),
        Some("[media] stun_servers"),
        "item 1: \"http://x\" is not a stun: or stuns: URL",
    );
    let turn_cases: &[(&str, &str, &str)] = &[
        ("username = \"u\"\ncredential = \"c\"", "url", "required"),
        (
            "url = \"stun:x\"\nusername = \"u\"\ncredential = \"c\"",
            "url",
            "is not a turn: or turns: URL",
        ),
        (
            "url = \"turn:x\"\ncredential = \"c\"",
            "username",
            "required",
        ),
        (
            "url = \"turn:x\"\nusername = \"u\"",
            "credential",
            "required",
        ),
        (
            "url = \"turn:x\"\nusername = \"u\"\ncredential = \"\"",
            "credential",
            "is empty",
        ),
    ];
    for (body, key, needle) in turn_cases {
        assert_error(
            toml_with(&format!("[media]\n[[media.turn]]\nurl = \"turn:ok\"\nusername = \"u\"\ncredential = \"c\"\n[[media.turn]]\n{body}\n")),
            Some(5),
            Some(&format!("[media.turn] {key}")),
            needle,
        );
    }
    let text = assert_error(
        toml_with(
            "[[media.turn]]\nurl = \"turn:x\"\nusername = \"u\"\ncredential = \"c\"\nextra = 1\n",
        ),
        Some(4),
        Some("[media.turn] extra"),
        "entry 1: unknown key",
    );
    assert!(!text.contains("\"c\""));
}

#[test]
fn media_bad_recording_and_dtmf() {
    // Keys inside a nested table are reported on the table's header line.
    let cases: &[(&str, usize, &str, &str)] = &[
        (
            "[media.recording]\nmode = \"quad\"",
            4,
            "[media.recording] mode",
            "\"quad\" is not mixed or stereo",
        ),
        (
            "[media.recording]\ndir = \"\"",
            4,
            "[media.recording] dir",
            "is empty",
        ),
        (
            "[media.recording]\nenabled = \"y\"",
            4,
            "[media.recording] enabled",
            "expected true or false",
        ),
        (
            "[media.recording]\nformat = \"wav\"",
            4,
            "[media.recording] format",
            "unknown key",
        ),
        (
            "[media]\nrecording = true",
            5,
            "[media] recording",
            "expected a table, found boolean true",
        ),
        (
            "[media]\ndtmf_mode = \"inband\"",
            5,
            "[media] dtmf_mode",
            "\"inband\" is not rfc4733 or info",
        ),
        (
            "[media]\npublic_ip = \"::\"",
            5,
            "[media] public_ip",
            "cannot be advertised",
        ),
        (
            "[media]\nrtp_timeout = -1",
            5,
            "[media] rtp_timeout",
            "out of range (0-86400)",
        ),
        (
            "[media]\nrtp_hold_timeout = \"1h\"",
            5,
            "[media] rtp_hold_timeout",
            "expected a whole number",
        ),
    ];
    for (body, line, key, needle) in cases {
        assert_error(
            toml_with(&format!("{body}\n")),
            Some(*line),
            Some(key),
            needle,
        );
    }
}

#[test]
fn media_opus_settings_load_and_default() {
    let config = toml_with("").expect("valid");
    assert_eq!(config.media.opus, OpusSettings::default());
    let config = toml_with(
        "[media]\nopus_complexity = 3\nopus_bitrate = 20000\nopus_bitrate_lossy = 28000\nopus_fec = \"OFF\"\n",
    )
    .expect("valid");
    assert_eq!(
        config.media.opus,
        OpusSettings {
            complexity: 3,
            complexity_busy: 0,
            bitrate: 20_000,
            bitrate_lossy: 28_000,
            fec: OpusFec::Off,
            mode: OpusMode::Silk,
            mode_busy: OpusMode::Celt,
        }
    );
    // A clean bitrate above the default lossy one lifts the lossy default with it.
    let config = toml_with("[media]\nopus_bitrate = 48000\n").expect("valid");
    assert_eq!(config.media.opus.bitrate_lossy, 48_000);
}

#[test]
fn media_busy_cpu_percent_and_opus_complexity_busy() {
    let config = toml_with("").expect("valid");
    assert_eq!(config.media.busy_cpu_percent, 85);
    assert_eq!(config.media.opus.complexity_busy, 0);
    let config =
        toml_with("[media]\nbusy_cpu_percent = 0\nopus_complexity_busy = 3\n").expect("valid");
    assert_eq!(config.media.busy_cpu_percent, 0);
    assert_eq!(config.media.opus.complexity_busy, 3);
    // Busy never costs more than calm.
    let config =
        toml_with("[media]\nopus_complexity = 2\nopus_complexity_busy = 8\n").expect("valid");
    assert_eq!(config.media.opus.complexity_busy, 2);
    assert!(config.to_string().contains("busy_cpu_percent"));
}

#[test]
fn media_opus_mode_is_silk_and_celt_when_busy_unless_set() {
    let config = toml_with("").expect("valid");
    assert_eq!(
        (config.media.opus.mode, config.media.opus.mode_busy),
        (OpusMode::Silk, OpusMode::Celt)
    );
    let config =
        toml_with("[media]\nopus_mode = \"CELT\"\nopus_mode_busy = \"silk\"\n").expect("valid");
    assert_eq!(
        (config.media.opus.mode, config.media.opus.mode_busy),
        (OpusMode::Celt, OpusMode::Silk)
    );
    assert!(config
        .to_string()
        .contains("celt at complexity 5 (silk at 0 when busy)"));
}

#[test]
fn media_opus_receive_bitrate_defaults_to_32k_and_zero_is_the_browsers() {
    let config = toml_with("").expect("valid");
    assert_eq!(config.media.opus_receive_bitrate, Some(32_000));
    let config = toml_with("[media]\nopus_receive_bitrate = 40000\n").expect("valid");
    assert_eq!(config.media.opus_receive_bitrate, Some(40_000));
    let config = toml_with("[media]\nopus_receive_bitrate = 0\n").expect("valid");
    assert_eq!(config.media.opus_receive_bitrate, None);
    for bad in ["1000000", "5000"] {
        assert_error(
            toml_with(&format!("[media]\nopus_receive_bitrate = {bad}\n")),
            Some(5),
            Some("[media] opus_receive_bitrate"),
            "out of range",
        );
    }
}

#[test]
fn media_opus_narrowband_is_on_unless_turned_off() {
    assert!(toml_with("").expect("valid").media.opus_narrowband);
    let config = toml_with("[media]\nopus_narrowband = false\n").expect("valid");
    assert!(!config.media.opus_narrowband);
    assert_error(
        toml_with("[media]\nopus_narrowband = \"8000\"\n"),
        Some(5),
        Some("[media] opus_narrowband"),
        "expected true or false",
    );
}

#[test]
fn media_bad_opus_settings() {
    let cases: &[(&str, usize, &str, &str)] = &[
        (
            "opus_complexity = 11",
            5,
            "opus_complexity",
            "11 is out of range (0-10)",
        ),
        (
            "opus_complexity = \"max\"",
            5,
            "opus_complexity",
            "expected a whole number",
        ),
        (
            "opus_bitrate = 500",
            5,
            "opus_bitrate",
            "500 is out of range (6000-64000)",
        ),
        (
            "opus_bitrate_lossy = 100000",
            5,
            "opus_bitrate_lossy",
            "out of range",
        ),
        (
            "opus_bitrate = 32000\nopus_bitrate_lossy = 24000",
            6,
            "opus_bitrate_lossy",
            "24000 is below opus_bitrate (32000)",
        ),
        (
            "opus_fec = \"sometimes\"",
            5,
            "opus_fec",
            "\"sometimes\" is not auto, on or off",
        ),
        ("opus_fec = true", 5, "opus_fec", ""),
        (
            "opus_mode = \"hybrid\"",
            5,
            "opus_mode",
            "\"hybrid\" is not silk or celt",
        ),
        ("opus_mode_busy = 1", 5, "opus_mode_busy", ""),
        (
            "opus_complexity_busy = 11",
            5,
            "opus_complexity_busy",
            "11 is out of range (0-10)",
        ),
        (
            "busy_cpu_percent = 101",
            5,
            "busy_cpu_percent",
            "101 is out of range (0-100)",
        ),
        (
            "busy_cpu_percent = \"high\"",
            5,
            "busy_cpu_percent",
            "expected a whole number",
        ),
    ];
    for (lines, line, key, needle) in cases {
        assert_error(
            toml_with(&format!("[media]\n{lines}\n")),
            Some(*line),
            Some(&format!("[media] {key}")),
            needle,
        );
    }
}

// ---- [http], [auth], [limits], [shutdown] ----

#[test]
fn http_bad_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "x").expect("write");
    let cert = cert.display().to_string();
    let cases: Vec<(String, &str, &str)> = vec![
        (
            "listen = \"8080\"".into(),
            "listen",
            "\"8080\" is not IP:port",
        ),
        (
            format!("tls_cert = \"{cert}\""),
            "tls_cert",
            "is set without [http] tls_key (give both or neither)",
        ),
        (
            format!("tls_key = \"{cert}\""),
            "tls_key",
            "is set without [http] tls_cert",
        ),
        (
            "tls_cert = \"/nonexistent/cert.pem\"".into(),
            "tls_cert",
            "is not a readable file",
        ),
        ("admin_token = \"\"".into(), "admin_token", "is empty"),
        (
            "status_listen = \"0.0.0.0:8080\"".into(),
            "status_listen",
            "is the same as [http] listen",
        ),
        (
            "status_listen = \"nowhere\"".into(),
            "status_listen",
            "is not IP:port",
        ),
    ];
    for (line, key, needle) in &cases {
        assert_error(
            toml_with(&format!("[http]\n{line}\n")),
            Some(5),
            Some(&format!("[http] {key}")),
            needle,
        );
    }
    let config = toml_with(&format!(
        "[http]\ntls_cert = \"{cert}\"\ntls_key = \"{cert}\"\n"
    ))
    .expect("both set");
    assert!(config.http.tls.is_some());
}

#[test]
fn auth_limits_shutdown_bad_values() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[auth]\ntoken_secret = \"\"",
            "[auth] token_secret",
            "is empty",
        ),
        (
            "[limits]\nmax_calls = 0",
            "[limits] max_calls",
            "0 is out of range (1-1000000)",
        ),
        (
            "[limits]\nmax_setups_per_sec = 0",
            "[limits] max_setups_per_sec",
            "out of range",
        ),
        (
            "[limits]\nmax_ws_sessions = 1.5",
            "[limits] max_ws_sessions",
            "expected a whole number, found float 1.5",
        ),
        (
            "[shutdown]\ndrain_timeout = -5",
            "[shutdown] drain_timeout",
            "-5 is out of range (0-86400)",
        ),
        (
            "[http]\nheader_timeout = 0",
            "[http] header_timeout",
            "0 is out of range (1-3600)",
        ),
        (
            "[http]\nlogin_timeout = \"10s\"",
            "[http] login_timeout",
            "expected a whole number",
        ),
        (
            "[http]\nallowed_origins = [\"evil.example\"]",
            "[http] allowed_origins",
            "item 1: \"evil.example\" is not scheme://host[:port]",
        ),
        (
            "[http]\nallowed_origins = [\"*\", \"ftp://x\"]",
            "[http] allowed_origins",
            "item 2: \"ftp://x\": the scheme must be http or https",
        ),
        (
            "[auth]\nmax_token_ttl = 0",
            "[auth] max_token_ttl",
            "out of range",
        ),
        (
            "[limits]\nmax_conns_per_ip = 0",
            "[limits] max_conns_per_ip",
            "out of range",
        ),
        (
            "[limits]\nfd_reserve = -1",
            "[limits] fd_reserve",
            "-1 is out of range",
        ),
    ];
    for (body, key, needle) in cases {
        assert_error(toml_with(&format!("{body}\n")), Some(5), Some(key), needle);
    }
}

// ---- file-level errors ----

#[test]
fn toml_syntax_error_has_a_line() {
    assert_error(
        toml_with("[limits]\nmax_calls = = 3\n"),
        Some(5),
        None,
        "x.toml:5: ",
    );
}

#[test]
fn ini_malformed_lines_are_errors() {
    assert_error(ini_with("just words\n"), Some(4), None, "is not key=value");
    assert_error(
        ini("appid=a\n[global]\n"),
        Some(1),
        Some("appid"),
        "before any [section]",
    );
}

#[test]
fn load_reports_unreadable_file() {
    let error = Config::load(Path::new("/nonexistent/dir/rtx.conf")).expect_err("missing");
    let text = error.to_string();
    assert!(
        text.starts_with("/nonexistent/dir/rtx.conf: cannot read config file: "),
        "{text}"
    );
    assert!(!text.contains('\n'));
}

#[test]
fn load_reports_non_utf8_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rtx.conf");
    std::fs::write(&path, b"[global]\nappid=\xff\xfe\n").expect("write");
    let error = Config::load(&path).expect_err("binary");
    assert_eq!(error.line(), Some(2));
    assert!(error.to_string().contains("is not valid UTF-8"));
}

#[test]
fn load_picks_the_form_by_extension_then_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let as_toml = Config::load(&write("a.toml", TOML_BASE)).expect("toml");
    assert_eq!(as_toml.form, ConfigForm::Toml);
    let sniffed_toml = Config::load(&write("bridge.cfg.txt", TOML_BASE)).expect("toml by content");
    assert_eq!(sniffed_toml.form, ConfigForm::Toml);
    let sniffed_ini = Config::load(&write("rtx", INI_BASE)).expect("ini by content");
    assert_eq!(sniffed_ini.form, ConfigForm::RtxConf);
    // An rtx.conf given a .toml name is read as TOML and refused clearly, not half-read.
    let error = Config::load(&write("wrong.toml", INI_BASE)).expect_err("not toml");
    assert_eq!(error.line(), Some(2));
}

#[test]
fn events_webhook_url_is_an_http_url() {
    let config =
        toml_with("[events]\nwebhook_url = \"http://127.0.0.1:9000/hook?key=k\"\n").expect("valid");
    let url = config.events.webhook_url.expect("set");
    assert_eq!((url.host.as_str(), url.port), ("127.0.0.1", 9000));
    assert_eq!(url.path, "/hook?key=k");
    assert_eq!(url.authority, "127.0.0.1:9000");
    assert!(
        !format!("{url:?} {url}").contains("key=k"),
        "query never shown"
    );
    let url = toml_with("[events]\nwebhook_url = \"http://[::1]\"\n")
        .expect("valid")
        .events
        .webhook_url
        .expect("set");
    assert_eq!(
        (url.host.as_str(), url.port, url.path.as_str()),
        ("::1", 80, "/")
    );
    assert!(toml_with("").unwrap().events.webhook_url.is_none());
    assert!(toml_with("[events]\nwebhook_url = \"\"\n")
        .unwrap()
        .events
        .webhook_url
        .is_none());
    let cases = [
        ("\"https://example.com/hook\"", "https is not supported"),
        ("\"ftp://example.com/\"", "is not an http:// URL"),
        ("\"example.com/hook\"", "is not a URL"),
        ("\"http://user:pw@example.com/\"", "user:password"),
        ("\"http://example.com:0/\"", "port 0"),
        ("\"http://exa mple.com/\"", "is not a URL"),
        ("\"http://example.com:99999/\"", "is not a port"),
        ("42", "is not an http:// URL"),
        ("true", "expected a string"),
    ];
    for (value, needle) in cases {
        assert_error(
            toml_with(&format!("[events]\nwebhook_url = {value}\n")),
            Some(5),
            Some("[events] webhook_url"),
            needle,
        );
    }
    assert_error(
        toml_with("[events]\nwebhook = \"http://x/\"\n"),
        Some(5),
        Some("[events] webhook"),
        "unknown",
    );
    // rtx.conf has no [events]: a warning, not an error
    let config = ini_with("[events]\nwebhook_url=http://127.0.0.1/\n").expect("valid");
    assert!(config.events.webhook_url.is_none());
    assert!(config.warnings.iter().any(|w| w.contains("[events]")));
}

#[test]
fn cluster_needs_nats_and_node_id_together() {
    assert!(toml_with("").unwrap().cluster.is_none());
    let config = toml_with("[cluster]\nnats = \"nats://127.0.0.1:4333\"\nnode_id = \"bridge-a\"\n")
        .expect("valid");
    let cluster = config.cluster.expect("set");
    assert_eq!(cluster.nats_url(), "nats://127.0.0.1:4333");
    assert_eq!(cluster.node_id, "bridge-a");
    assert_eq!(cluster.presence_ttl, Duration::from_secs(5));
    let shown = toml_with("[cluster]\nnats = \"nats://127.0.0.1:4333\"\nnode_id = \"bridge-a\"\n")
        .expect("valid")
        .to_string();
    assert!(shown.contains("nats://127.0.0.1:4333"), "{shown}");
    assert!(shown.contains("bridge-a"), "{shown}");
    let cluster = toml_with(
        "[cluster]\nnats = \"nats://nats.example.net\"\nnode_id = \"b_2\"\npresence_ttl = 3\n",
    )
    .expect("valid")
    .cluster
    .expect("set");
    assert_eq!(cluster.nats_url(), "nats://nats.example.net:4222");
    assert_eq!(cluster.presence_ttl, Duration::from_secs(3));
    assert_error(
        toml_with("[cluster]\nnats = \"nats://127.0.0.1\"\n"),
        Some(5),
        Some("[cluster] node_id"),
        "required when nats",
    );
    assert_error(
        toml_with("[cluster]\nnode_id = \"a\"\n"),
        Some(5),
        Some("[cluster] nats"),
        "required when node_id",
    );
}

#[test]
fn cluster_bad_values_name_file_line_and_key() {
    let nats_cases = [
        ("\"127.0.0.1:4222\"", "is not a nats:// or tls:// URL"),
        (
            "\"http://127.0.0.1:4222\"",
            "is not a nats:// or tls:// URL",
        ),
        ("\"nats://user:pw@127.0.0.1\"", "user:password"),
        ("\"nats://127.0.0.1:0\"", "port"),
        ("\"nats://127.0.0.1:99999\"", "port"),
        (
            "\"nats://\"",
            "is not nats://host[:port] or tls://host[:port]",
        ),
        ("\"nats://host/path\"", "is not nats://host[:port]"),
        ("\"nats://bad host\"", "is not nats://host[:port]"),
        ("true", "expected a string"),
    ];
    for (value, needle) in nats_cases {
        assert_error(
            toml_with(&format!("[cluster]\nnode_id = \"a\"\nnats = {value}\n")),
            Some(6),
            Some("[cluster] nats"),
            needle,
        );
    }
    let node_cases = [
        ("\"a.b\"", "only letters"),
        ("\"a*\"", "only letters"),
        ("\"a b\"", "only letters"),
        ("\"é\"", "only letters"),
        (&format!("\"{}\"", "n".repeat(65)), "1-64 characters"),
    ];
    for (value, needle) in node_cases {
        assert_error(
            toml_with(&format!(
                "[cluster]\nnats = \"nats://127.0.0.1\"\nnode_id = {value}\n"
            )),
            Some(6),
            Some("[cluster] node_id"),
            needle,
        );
    }
    assert_error(
        toml_with("[cluster]\nnats = \"nats://127.0.0.1\"\nnode_id = \"a\"\npresence_ttl = 1\n"),
        Some(7),
        Some("[cluster] presence_ttl"),
        "",
    );
    assert_error(
        toml_with("[cluster]\nnats = \"nats://127.0.0.1\"\nnode_id = \"a\"\nnode = \"b\"\n"),
        Some(7),
        Some("[cluster] node"),
        "unknown",
    );
    // rtx.conf has no [cluster]: a warning, not an error
    let config = ini_with("[cluster]\nnats=nats://127.0.0.1\n").expect("valid");
    assert!(config.cluster.is_none());
    assert!(config.warnings.iter().any(|w| w.contains("[cluster]")));
}

/// A temp dir holding `cert.pem` (a self-signed certificate), `key.pem` (its key), `empty.pem`
/// and `junk.pem`, for the cluster's TLS keys.
fn pem_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
    std::fs::write(dir.path().join("cert.pem"), made.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), made.signing_key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("empty.pem"), "").unwrap();
    std::fs::write(dir.path().join("junk.pem"), "not PEM at all\n").unwrap();
    dir
}

const CLUSTER: &str = "[cluster]\nnats = \"nats://127.0.0.1:4333\"\nnode_id = \"a\"\n";

#[test]
fn cluster_credentials_load_and_are_never_shown() {
    let password = "pa55-Word-only-here";
    let config = toml_with(&format!(
        "{CLUSTER}nats_user = \"bridge\"\nnats_password = \"{password}\"\n"
    ))
    .expect("valid");
    let cluster = config.cluster.clone().expect("set");
    assert_eq!(
        cluster.nats_auth,
        NatsAuth::UserPassword {
            user: "bridge".to_string(),
            password: Secret::new(password),
        }
    );
    assert_eq!(cluster.nats_tls, None);
    let shown = config.to_string();
    let debug = format!("{config:?}");
    assert!(shown.contains("bridge") && shown.contains("***"), "{shown}");
    for text in [&shown, &debug] {
        assert!(!text.contains(password), "password shown: {text}");
    }

    let token = "t0ken-only-here";
    let config = toml_with(&format!("{CLUSTER}nats_token = \"{token}\"\n")).expect("valid");
    assert_eq!(
        config.cluster.as_ref().expect("set").nats_auth,
        NatsAuth::Token(Secret::new(token))
    );
    for text in [config.to_string(), format!("{config:?}")] {
        assert!(!text.contains(token), "token shown: {text}");
    }
}

#[test]
fn cluster_tls_is_on_by_url_flag_or_certificates() {
    let dir = pem_dir();
    let pem = |name: &str| dir.path().join(name).display().to_string();
    let cluster = |extra: &str| {
        toml_with(&format!("{CLUSTER}{extra}"))
            .expect("valid")
            .cluster
            .expect("set")
    };
    let plain = cluster("");
    assert_eq!(plain.nats_tls, None);
    assert_eq!(plain.nats_auth, NatsAuth::None);
    let by_flag = cluster("nats_tls = true\n");
    assert_eq!(by_flag.nats_tls, Some(NatsTls::default()));
    assert_eq!(by_flag.nats_url(), "tls://127.0.0.1:4333");
    assert_eq!(cluster("nats_tls = false\n").nats_tls, None);
    let by_url = toml_with("[cluster]\nnats = \"tls://nats.example.net\"\nnode_id = \"a\"\n")
        .expect("valid")
        .cluster
        .expect("set");
    assert_eq!(by_url.nats_url(), "tls://nats.example.net:4222");
    let mutual = cluster(&format!(
        "nats_tls_ca = \"{}\"\nnats_tls_cert = \"{}\"\nnats_tls_key = \"{}\"\n",
        pem("cert.pem"),
        pem("cert.pem"),
        pem("key.pem")
    ));
    assert_eq!(
        mutual.nats_tls,
        Some(NatsTls {
            ca: Some(dir.path().join("cert.pem")),
            client: Some(TlsConfig {
                cert: dir.path().join("cert.pem"),
                key: dir.path().join("key.pem"),
            }),
        })
    );
    assert_eq!(mutual.nats_url(), "tls://127.0.0.1:4333");
    let shown = toml_with(&format!("{CLUSTER}nats_tls_ca = \"{}\"\n", pem("cert.pem")))
        .expect("valid")
        .to_string();
    assert!(shown.contains("tls://127.0.0.1:4333"), "{shown}");
    assert!(shown.contains(&pem("cert.pem")), "{shown}");
}

#[test]
fn cluster_bad_credentials_and_tls_settings_name_file_line_and_key() {
    let dir = pem_dir();
    let pem = |name: &str| dir.path().join(name).display().to_string();
    // CLUSTER ends on line 6: the first extra line is 7
    let cases: Vec<(String, usize, &str, &str)> = vec![
        (
            "nats_user = \"u\"\n".into(),
            7,
            "[cluster] nats_password",
            "required when nats_user",
        ),
        (
            "nats_password = \"p\"\n".into(),
            7,
            "[cluster] nats_user",
            "required when nats_password",
        ),
        (
            "nats_user = \"u\"\nnats_password = \"p\"\nnats_token = \"t\"\n".into(),
            9,
            "[cluster] nats_token",
            "two ways to log in",
        ),
        (
            "nats_token = \"t\"\nnats_user = \"u\"\n".into(),
            7,
            "[cluster] nats_token",
            "two ways to log in",
        ),
        (
            "nats_password = \"\"\n".into(),
            7,
            "[cluster] nats_password",
            "is empty",
        ),
        (
            "nats_token = \"\"\n".into(),
            7,
            "[cluster] nats_token",
            "is empty",
        ),
        (
            "nats_token = [\"hidden\"]\n".into(),
            7,
            "[cluster] nats_token",
            "expected a string, found array",
        ),
        (
            "nats_tls = \"maybe\"\n".into(),
            7,
            "[cluster] nats_tls",
            "expected true or false",
        ),
        (
            format!("nats_tls = false\nnats_tls_ca = \"{}\"\n", pem("cert.pem")),
            7,
            "[cluster] nats_tls",
            "is false, but nats_tls_ca is set (line 8)",
        ),
        (
            format!("nats_tls_cert = \"{}\"\n", pem("cert.pem")),
            7,
            "[cluster] nats_tls_cert",
            "without [cluster] nats_tls_key",
        ),
        (
            format!("nats_tls_key = \"{}\"\n", pem("key.pem")),
            7,
            "[cluster] nats_tls_key",
            "without [cluster] nats_tls_cert",
        ),
        (
            "nats_tls_ca = \"/nonexistent/ca.pem\"\n".into(),
            7,
            "[cluster] nats_tls_ca",
            "\"/nonexistent/ca.pem\" cannot be read",
        ),
        (
            format!("nats_tls_ca = \"{}\"\n", dir.path().display()),
            7,
            "[cluster] nats_tls_ca",
            "is not a file",
        ),
        (
            format!("nats_tls_ca = \"{}\"\n", pem("empty.pem")),
            7,
            "[cluster] nats_tls_ca",
            "holds no PEM certificate",
        ),
        (
            format!("nats_tls_ca = \"{}\"\n", pem("junk.pem")),
            7,
            "[cluster] nats_tls_ca",
            "holds no PEM certificate",
        ),
        (
            format!("nats_tls_ca = \"{}\"\n", pem("key.pem")),
            7,
            "[cluster] nats_tls_ca",
            "holds no PEM certificate",
        ),
        (
            format!(
                "nats_tls_cert = \"{}\"\nnats_tls_key = \"{}\"\n",
                pem("cert.pem"),
                pem("cert.pem")
            ),
            8,
            "[cluster] nats_tls_key",
            "holds no PEM private key",
        ),
        (
            format!(
                "nats_tls_cert = \"{}\"\nnats_tls_key = \"/nonexistent/key.pem\"\n",
                pem("cert.pem")
            ),
            8,
            "[cluster] nats_tls_key",
            "cannot be read",
        ),
        (
            "nats_tls_ca = \"\"\nnats_tls = false\nnats_pass = \"x\"\n".into(),
            9,
            "[cluster] nats_pass",
            "unknown key",
        ),
    ];
    for (extra, line, key, needle) in cases {
        let text = assert_error(
            toml_with(&format!("{CLUSTER}{extra}")),
            Some(line),
            Some(key),
            needle,
        );
        assert!(!text.contains("hidden"), "a secret echoed: {text}");
    }
    // a tls:// URL and nats_tls = false contradict each other
    assert_error(
        toml_with("[cluster]\nnats = \"tls://127.0.0.1\"\nnode_id = \"a\"\nnats_tls = false\n"),
        Some(7),
        Some("[cluster] nats_tls"),
        "is false, but nats is a tls:// URL (line 5)",
    );
    // credentials or TLS for no server: `nats` is missing
    for extra in [
        "nats_user = \"u\"\nnats_password = \"p\"\n",
        "nats_tls = true\n",
    ] {
        assert_error(
            toml_with(&format!("[cluster]\n{extra}")),
            Some(5),
            Some("[cluster] nats"),
            "required when nats_",
        );
    }
    // a password in the URL is refused without being echoed, whatever the scheme
    for url in [
        "nats://u:hidden@127.0.0.1",
        "https://u:hidden@127.0.0.1",
        "tls://hidden@host",
    ] {
        let text = assert_error(
            toml_with(&format!("[cluster]\nnode_id = \"a\"\nnats = \"{url}\"\n")),
            Some(6),
            Some("[cluster] nats"),
            "use nats_user and nats_password",
        );
        assert!(!text.contains("hidden"), "{text}");
    }
}

// ---- several PBXs ----

#[test]
fn sip_svr_lists_several_pbxs_with_weight_and_priority() {
    let config = ini("[global]\nappid=a\nsip_svr=10.0.0.1:5060;weight=3,10.0.0.2:5080;priority=2;weight=2 ## two\n")
        .expect("valid");
    let pbxs = config.global.sip_svr.entries();
    assert_eq!(pbxs.len(), 2);
    assert_eq!(pbxs[0].addr.to_string(), "10.0.0.1:5060");
    assert_eq!((pbxs[0].weight, pbxs[0].priority), (3, 1));
    assert_eq!(pbxs[1].addr.to_string(), "10.0.0.2:5080");
    assert_eq!((pbxs[1].weight, pbxs[1].priority), (2, 2));
    assert_eq!(
        config.global.sip_svr.to_string(),
        "10.0.0.1:5060;weight=3,10.0.0.2:5080;weight=2;priority=2"
    );
    let toml = toml("[global]\nappid = \"a\"\nsip_svr = \"10.0.0.1:5060;weight=3, 10.0.0.2:5080;priority=2;weight=2\"\n")
        .expect("valid");
    assert_eq!(
        toml.global.sip_svr, config.global.sip_svr,
        "same in both forms"
    );
}

#[test]
fn sip_pbx_tables_list_the_pbxs_in_toml() {
    let config = toml(
        "[global]\nappid = \"a\"\n[sip]\nregister = \"active_backup\"\npbx_down_after = 3\npbx_up_after = 2\n\
         [[sip.pbx]]\naddr = \"10.0.0.1:5060\"\nweight = 2\n[[sip.pbx]]\naddr = \"pbx2.example.org:5060\"\npriority = 5\n",
    )
    .expect("valid");
    let pbxs = config.global.sip_svr.entries();
    assert_eq!(pbxs.len(), 2);
    assert_eq!((pbxs[0].weight, pbxs[0].priority), (2, 1));
    assert_eq!(pbxs[1].addr.to_string(), "pbx2.example.org:5060");
    assert_eq!((pbxs[1].weight, pbxs[1].priority), (1, 5));
    assert_eq!(config.sip.register_mode, RegisterMode::ActiveBackup);
    assert_eq!(config.sip.pbx_down_after, 3);
    assert_eq!(config.sip.pbx_up_after, 2);
}

#[test]
fn single_sip_svr_keeps_the_defaults() {
    let config = ini(INI_BASE).expect("valid");
    let pbxs = config.global.sip_svr.entries();
    assert_eq!(pbxs.len(), 1);
    assert_eq!((pbxs[0].weight, pbxs[0].priority), (1, 1));
    assert_eq!(config.sip.register_mode, RegisterMode::All);
    assert_eq!((config.sip.pbx_down_after, config.sip.pbx_up_after), (1, 1));
}

#[test]
fn sip_svr_list_bad_entries_name_the_item() {
    let bad = |value: &str, needle: &str| {
        assert_error(
            ini(&format!("[global]\nappid=a\nsip_svr={value}\n")),
            Some(3),
            Some("[global] sip_svr"),
            needle,
        );
    };
    bad(
        "10.0.0.1:5060,10.0.0.2",
        "item 2: \"10.0.0.2\" is not IP:port",
    );
    bad("10.0.0.1:5060,", "item 2: is empty (a comma too many?)");
    bad("10.0.0.1:5060;weight=0", "weight=0 is not a number 1-1000");
    bad("10.0.0.1:5060;weight=x", "weight=x is not a number 1-1000");
    bad(
        "10.0.0.1:5060;priority=1001",
        "priority=1001 is not a number 0-1000",
    );
    bad(
        "10.0.0.1:5060;transport=tcp",
        "unknown parameter \"transport\"",
    );
    bad(
        "10.0.0.1:5060;weight",
        "\"weight\" is not weight=N or priority=N",
    );
    bad("10.0.0.1:5060;weight=2;weight=3", "weight is given twice");
    bad(
        "10.0.0.1:5060,10.0.0.1:5060",
        "10.0.0.1:5060 is listed twice",
    );
    let many: Vec<String> = (1..=17).map(|i| format!("10.0.0.{i}:5060")).collect();
    bad(&many.join(","), "lists 17 PBXs (at most 16)");
}

#[test]
fn sip_pbx_tables_bad_values() {
    let base = "[global]\nappid = \"a\"\n";
    assert_error(
        toml(&format!("{base}[[sip.pbx]]\nweight = 2\n")),
        Some(3),
        Some("[sip.pbx] addr"),
        "entry 1: required",
    );
    assert_error(
        toml(&format!(
            "{base}[[sip.pbx]]\naddr = \"10.0.0.1:5060\"\n[[sip.pbx]]\naddr = \"10.0.0.2\"\n"
        )),
        Some(3),
        Some("[sip.pbx] addr"),
        "entry 2: \"10.0.0.2\" is not IP:port",
    );
    assert_error(
        toml(&format!(
            "{base}[[sip.pbx]]\naddr = \"10.0.0.1:5060\"\nweight = 0\n"
        )),
        Some(3),
        Some("[sip.pbx] weight"),
        "0 is out of range (1-1000)",
    );
    assert_error(
        toml(&format!(
            "{base}[[sip.pbx]]\naddr = \"10.0.0.1:5060\"\npriority = -1\n"
        )),
        Some(3),
        Some("[sip.pbx] priority"),
        "-1 is out of range (0-1000)",
    );
    assert_error(
        toml(&format!(
            "{base}[[sip.pbx]]\naddr = \"10.0.0.1:5060\"\nport = 5\n"
        )),
        Some(3),
        Some("[sip.pbx] port"),
        "unknown key",
    );
    assert_error(
        toml(&format!(
            "{base}[[sip.pbx]]\naddr = \"10.0.0.1:5060\"\n[[sip.pbx]]\naddr = \"10.0.0.1:5060\"\n"
        )),
        Some(3),
        Some("[sip] pbx"),
        "10.0.0.1:5060 is listed twice",
    );
    assert_error(
        toml(&format!("{base}[sip]\npbx = \"10.0.0.1:5060\"\n")),
        Some(4),
        Some("[sip] pbx"),
        "expected an array of tables",
    );
    assert_error(
        toml("[global]\nappid = \"a\"\nsip_svr = \"10.0.0.1:5060\"\n[[sip.pbx]]\naddr = \"10.0.0.2:5060\"\n"),
        Some(4),
        Some("[sip] pbx"),
        "and [global] sip_svr (line 3) both list PBXs",
    );
    assert_error(
        toml("[global]\nappid = \"a\"\n[sip]\n"),
        Some(1),
        Some("[global] sip_svr"),
        "required",
    );
}

#[test]
fn register_mode_and_health_counts_bad_values() {
    assert_error(
        toml_with("[sip]\nregister = \"some\"\n"),
        Some(5),
        Some("[sip] register"),
        "\"some\" is not all or active_backup",
    );
    assert_error(
        toml_with("[sip]\npbx_down_after = 0\n"),
        Some(5),
        Some("[sip] pbx_down_after"),
        "0 is out of range (1-100)",
    );
    assert_error(
        toml_with("[sip]\npbx_up_after = 101\n"),
        Some(5),
        Some("[sip] pbx_up_after"),
        "101 is out of range (1-100)",
    );
}
