//! Human-readable dump of the resolved config for `srbridge check`: every setting with the
//! value in effect (defaults included), secrets as `***`, then the warnings.

use std::fmt::{self, Display, Formatter};
use std::time::Duration;

use super::model::*;

fn row(f: &mut Formatter<'_>, key: &str, value: impl Display) -> fmt::Result {
    writeln!(f, "  {key:<20} = {value}")
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

fn list<T: Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "(none)".to_string();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn opt<T: Display>(value: &Option<T>) -> String {
    value
        .as_ref()
        .map_or_else(|| "(not set)".to_string(), ToString::to_string)
}

impl Display for Config {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(f, "# {} ({})", self.source.display(), self.form)?;
        writeln!(f, "[global]")?;
        row(f, "appid", &self.global.appid)?;
        row(f, "sip_svr", &self.global.sip_svr)?;
        row(f, "sip_local_port", self.global.sip_local_port)?;

        writeln!(f, "[rtm2sip]")?;
        match &self.rtm2sip {
            Some(r) => {
                row(f, "on", 1)?;
                row(f, "acc_rule", &r.acc_rule)?;
            }
            None => row(f, "on", "0 (browsers cannot call SIP numbers)")?,
        }

        writeln!(f, "[proxy]")?;
        match &self.proxy {
            Some(p) => {
                row(f, "on", 1)?;
                row(f, "sip_account", &p.sip_account)?;
                row(f, "sip_pwd", &p.sip_pwd)?;
                row(f, "rtm_account", &p.rtm_account)?;
            }
            None => row(f, "on", "0 (no SIP registration)")?,
        }

        writeln!(f, "[pstn]")?;
        match &self.pstn {
            Some(p) => {
                row(f, "ip", &p.addr)?;
                row(f, "prefix", &p.prefix)?;
            }
            None => row(f, "ip", "(not set: no PSTN gateway)")?,
        }

        writeln!(f, "[log]")?;
        row(f, "level", self.log.level)?;
        row(
            f,
            "file",
            self.log
                .file
                .as_ref()
                .map_or_else(|| "(stderr)".to_string(), |p| p.display().to_string()),
        )?;
        row(
            f,
            "max_file_size",
            format!("{} MB", self.log.max_file_size_mb),
        )?;
        row(f, "max_files", self.log.max_files)?;

        let sip = &self.sip;
        writeln!(f, "[sip]")?;
        row(f, "listen_ip", sip.listen_ip)?;
        row(f, "transport", sip.transport)?;
        row(f, "public_ip", opt(&sip.public_ip))?;
        row(f, "register_expires", secs(sip.register_expires))?;
        row(f, "options_interval", secs(sip.options_interval))?;
        row(f, "pbx_down_after", sip.pbx_down_after)?;
        row(f, "pbx_up_after", sip.pbx_up_after)?;
        row(f, "register", sip.register_mode)?;
        row(f, "dial_prefix", format!("{:?}", sip.dial_prefix))?;
        row(f, "target_header", &sip.target_header)?;
        row(f, "ring_timeout", secs(sip.ring_timeout))?;
        row(f, "allowed_peers", list(&sip.allowed_peers))?;
        row(f, "user_agent", format!("{:?}", sip.user_agent))?;
        row(f, "tcp_idle_timeout", secs(sip.tcp_idle_timeout))?;
        row(
            f,
            "tcp_first_message_timeout",
            secs(sip.tcp_first_message_timeout),
        )?;
        row(f, "tcp_max_per_ip", sip.tcp_max_per_ip)?;
        row(f, "session_expires", secs(sip.session_expires))?;
        row(f, "min_se", secs(sip.min_se))?;

        let media = &self.media;
        writeln!(f, "[media]")?;
        row(
            f,
            "rtp_ports",
            format!("{}-{}", media.rtp_port_min, media.rtp_port_max),
        )?;
        row(
            f,
            "webrtc_ports",
            match media.webrtc_port_range {
                Some((min, max)) => format!("{min}-{max}"),
                None => "the RTP range (shared)".to_string(),
            },
        )?;
        row(
            f,
            "webrtc_single_port",
            match media.webrtc_single_port {
                Some(port) => port.to_string(),
                None => "off (a port per call)".to_string(),
            },
        )?;
        row(f, "public_ip", opt(&media.public_ip))?;
        row(f, "codecs", list(&media.codecs))?;
        for rule in &media.codec_rules {
            row(
                f,
                "codec_rule",
                format!("{} -> {}", rule.numbers, list(&rule.codecs)),
            )?;
        }
        row(f, "stun_servers", list(&media.stun_servers))?;
        for turn in &media.turn {
            row(
                f,
                "turn",
                format!(
                    "{} (username {}, credential {})",
                    turn.url, turn.username, turn.credential
                ),
            )?;
        }
        let rec = &media.recording;
        if rec.enabled {
            row(
                f,
                "recording",
                format!("on, {} into {}", rec.mode, rec.dir.display()),
            )?;
        } else {
            row(f, "recording", "off")?;
        }
        row(f, "dtmf_mode", media.dtmf_mode)?;
        row(f, "rtp_timeout", secs(media.rtp_timeout))?;
        row(f, "rtp_hold_timeout", secs(media.rtp_hold_timeout))?;
        let opus = &media.opus;
        row(
            f,
            "opus",
            format!(
                "{} at complexity {} ({} at {} when busy), {} b/s clean, {} b/s lossy, FEC {}",
                opus.mode,
                opus.complexity,
                opus.mode_busy,
                opus.complexity_busy,
                opus.bitrate,
                opus.bitrate_lossy,
                opus.fec
            ),
        )?;
        row(
            f,
            "busy_cpu_percent",
            match media.busy_cpu_percent {
                0 => "never busy".to_owned(),
                p => format!("{p} % of the usable cores"),
            },
        )?;
        row(
            f,
            "opus_narrowband",
            if media.opus_narrowband { "on" } else { "off" },
        )?;
        row(
            f,
            "opus_receive_bitrate",
            media
                .opus_receive_bitrate
                .map_or("browser default".to_owned(), |b| format!("{b} b/s")),
        )?;

        let http = &self.http;
        writeln!(f, "[http]")?;
        row(f, "listen", http.listen)?;
        match &http.tls {
            Some(tls) => row(
                f,
                "tls",
                format!("cert {}, key {}", tls.cert.display(), tls.key.display()),
            )?,
            None => row(f, "tls", "off")?,
        }
        row(f, "admin_token", opt(&http.admin_token))?;
        row(f, "status_listen", opt(&http.status_listen))?;
        row(f, "header_timeout", secs(http.header_timeout))?;
        row(f, "login_timeout", secs(http.login_timeout))?;
        row(
            f,
            "allowed_origins",
            format!("own origin, {}", list(&http.allowed_origins)),
        )?;

        writeln!(f, "[auth]")?;
        row(
            f,
            "token_secret",
            self.auth
                .token_secret
                .as_ref()
                .map_or("(not set: appid alone logs in)".to_string(), |s| {
                    s.to_string()
                }),
        )?;
        row(f, "max_token_ttl", secs(self.auth.max_token_ttl))?;

        writeln!(f, "[limits]")?;
        row(f, "max_calls", self.limits.max_calls)?;
        row(f, "max_setups_per_sec", self.limits.max_setups_per_sec)?;
        row(f, "max_ws_sessions", self.limits.max_ws_sessions)?;
        row(f, "max_conns_per_ip", self.limits.max_conns_per_ip)?;
        row(
            f,
            "fd_reserve",
            self.limits.fd_reserve.map_or(
                "(a quarter of the fd limit, at least 64)".to_string(),
                |n| n.to_string(),
            ),
        )?;

        writeln!(f, "[shutdown]")?;
        row(f, "drain_timeout", secs(self.shutdown.drain_timeout))?;

        writeln!(f, "[events]")?;
        row(
            f,
            "webhook_url",
            self.events
                .webhook_url
                .as_ref()
                .map_or("(not set: /api/events only)".to_string(), |u| u.to_string()),
        )?;

        writeln!(f, "[cluster]")?;
        match &self.cluster {
            Some(c) => {
                row(f, "nats", c.nats_url())?;
                row(f, "node_id", c.node_id.clone())?;
                row(f, "presence_ttl", secs(c.presence_ttl))?;
                match &c.nats_auth {
                    NatsAuth::None => row(f, "nats_auth", "none")?,
                    NatsAuth::UserPassword { user, password } => {
                        row(f, "nats_user", user)?;
                        row(f, "nats_password", password)?;
                    }
                    NatsAuth::Token(token) => row(f, "nats_token", token)?,
                }
                match &c.nats_tls {
                    None => row(f, "nats_tls", "off")?,
                    Some(tls) => {
                        row(f, "nats_tls", "on")?;
                        row(
                            f,
                            "nats_tls_ca",
                            tls.ca
                                .as_ref()
                                .map_or("(system roots)".to_string(), |p| p.display().to_string()),
                        )?;
                        row(
                            f,
                            "nats_tls_cert",
                            tls.client.as_ref().map_or("(none)".to_string(), |c| {
                                format!("{}, key {}", c.cert.display(), c.key.display())
                            }),
                        )?;
                    }
                }
            }
            None => row(f, "nats", "(not set: a lone bridge)".to_string())?,
        }

        if self.warnings.is_empty() {
            writeln!(f, "warnings: none")?;
        } else {
            writeln!(f, "warnings:")?;
            for warning in &self.warnings {
                writeln!(f, "  - {warning}")?;
            }
        }
        Ok(())
    }
}
