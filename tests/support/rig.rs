//! The bridge in-process on a fresh Kamailio, registered as the proxy account 1000: what the
//! end-to-end tests (`calls`, `media_calls`, `browser_call`) start from.

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
    let text = format!(
        r#"
[global]
appid = "{appid}"
sip_svr = "{pbx}"
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
[media]
rtp_port_min = {rtp}
rtp_port_max = {rtp_max}
{media_extra}
[http]
listen = "127.0.0.1:0"
"#,
        pbx = pbx.addr(),
        rtp_max = rtp + rtp_ports - 1,
        pings = if sip_extra.contains("options_interval") {
            ""
        } else {
            "options_interval = 0\n"
        },
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
        rtp_ports: rtp..=rtp + rtp_ports - 1,
    }
}
