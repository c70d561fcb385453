//! The bridge in-process on a fresh Kamailio, registered as the proxy account 1000: what the
//! end-to-end tests (`calls`, `media_calls`, `browser_call`) start from.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;

use srbridge::bridge::Bridge;
use srbridge::config::Config;

use super::{ports, Pbx};

/// A running PBX and bridge; both stop on drop.
pub struct BridgeRig {
    /// The Kamailio PBX.
    pub pbx: Pbx,
    /// The bridge, HTTP on 127.0.0.1 (any port).
    pub bridge: Bridge,
    /// `ws://…/ws`, the hub.
    pub url: String,
    /// `http://…`, the web-demo and the ops endpoints.
    pub base: String,
    /// The bridge's `[media] rtp_port_min..=rtp_port_max`.
    pub rtp_ports: std::ops::RangeInclusive<u16>,
}

/// Starts a PBX and a bridge with `appid`, `acc_rule = "10[01-19]"`, `rtp_ports` RTP ports, and
/// extra lines for its `[sip]` and `[media]` sections (OPTIONS pings are off unless `sip_extra`
/// sets `options_interval`); waits until 1000 is registered.
pub async fn start_bridge(
    appid: &str,
    sip_extra: &str,
    media_extra: &str,
    rtp_ports: u16,
) -> BridgeRig {
    start_bridge_on(Pbx::start().await, appid, sip_extra, media_extra, rtp_ports).await
}

/// Like [`start_bridge`] on a PBX already started (e.g. with `DIALPLAN_RURI` defined).
pub async fn start_bridge_on(
    pbx: Pbx,
    appid: &str,
    sip_extra: &str,
    media_extra: &str,
    rtp_ports: u16,
) -> BridgeRig {
    let rtp = ports::free_port_range(rtp_ports);
    let rtp_ports = rtp..=rtp + rtp_ports - 1;
    let text = bridge_config(
        appid,
        Pbxs::One(pbx.addr()),
        sip_extra,
        media_extra,
        &rtp_ports,
    );
    let config = Config::from_toml_str(Path::new("rig.toml"), &text).expect("config");
    let bridge = Bridge::start(config).await.expect("bridge starts");
    pbx.wait_registered("1000", Duration::from_secs(15)).await;
    let url = format!("ws://{}/ws", bridge.http_addr());
    let base = format!("http://{}", bridge.http_addr());
    BridgeRig {
        pbx,
        bridge,
        url,
        base,
        rtp_ports,
    }
}

/// The PBXs a rig bridge is given.
pub enum Pbxs<'a> {
    /// One, as `[global] sip_svr`.
    One(SocketAddr),
    /// Several, each `[[sip.pbx]]` table's lines (`addr = …`, `priority = …`).
    Tables(&'a [String]),
}

/// The rig's bridge config text: `appid`, proxy account 1000 (password 1234),
/// `acc_rule = "10[01-19]"`, SIP on 127.0.0.1 with `sip_extra` (OPTIONS pings off unless it sets
/// `options_interval`), RTP on `rtp_ports` plus `media_extra`, HTTP on any loopback port.
pub fn bridge_config(
    appid: &str,
    pbxs: Pbxs<'_>,
    sip_extra: &str,
    media_extra: &str,
    rtp_ports: &RangeInclusive<u16>,
) -> String {
    let (sip_svr, pbx_tables) = match pbxs {
        Pbxs::One(addr) => (format!("sip_svr = \"{addr}\""), String::new()),
        Pbxs::Tables(tables) => (
            String::new(),
            tables
                .iter()
                .map(|lines| format!("[[sip.pbx]]\n{lines}\n"))
                .collect(),
        ),
    };
    format!(
        r#"
[global]
appid = "{appid}"
{sip_svr}
sip_local_port = 0
[rtm2sip]
on = true
acc_rule = "10[01-19]"
[proxy]
on = true
sip_account = "1000"
sip_pwd = "1234"
rtm_account = "bridge"
[sip]
listen_ip = "127.0.0.1"
{pings}{sip_extra}
{pbx_tables}
[media]
rtp_port_min = {rtp}
rtp_port_max = {rtp_max}
{media_extra}
[http]
listen = "127.0.0.1:0"
"#,
        rtp = rtp_ports.start(),
        rtp_max = rtp_ports.end(),
        pings = if sip_extra.contains("options_interval") {
            ""
        } else {
            "options_interval = 0\n"
        },
    )
}

/// A bridge as the rig makes it on the PBXs of `[[sip.pbx]]` `tables` (started by the test),
/// with `sip_extra` in `[sip]` and 40 RTP ports; it does not wait for any registration.
pub async fn start_bridge_on_pbxs(appid: &str, sip_extra: &str, tables: &[String]) -> Bridge {
    let rtp = ports::free_port_range(40);
    let text = bridge_config(
        appid,
        Pbxs::Tables(tables),
        sip_extra,
        "",
        &(rtp..=rtp + 39),
    );
    let config = Config::from_toml_str(Path::new("rig.toml"), &text).expect("config");
    Bridge::start(config).await.expect("bridge starts")
}

/// `GET path` over plain HTTP/1.1 to `addr`; returns the body.
pub async fn http_get_text(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

impl BridgeRig {
    /// This bridge's `/metrics` (Prometheus text).
    pub async fn metrics(&self) -> String {
        http_get_text(self.bridge.http_addr(), "/metrics").await
    }

    /// The value of one counter series, e.g. `srbridge_errors_total{kind="sip_parse"}`, in this
    /// bridge's `/metrics`; panics when the series is absent. Each bridge has its own registry:
    /// the value is what this test's bridge counted, whatever other tests run beside it.
    pub async fn counter(&self, series: &str) -> u64 {
        let text = self.metrics().await;
        let prefix = format!("{series} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
    }
}

/// Waits (at most 10 s) until `bridge` holds no call and no RTP port: what a call that ended
/// must leave behind. (Task counts are checked per session in `tests/media_session.rs`: the SIP
/// stack keeps BYE transactions for 32 s, timer J.)
pub async fn everything_released(bridge: &Bridge) {
    for _ in 0..100 {
        if bridge.calls().is_empty() && bridge.media_ports_in_use() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "left behind: calls {:?}, RTP ports {}",
        bridge.calls(),
        bridge.media_ports_in_use(),
    );
}
