//! The SIP side of the load: SIPp 3.6 processes with `-rtp_echo` (RTP sent back to its sender), like
//! SIPp users measure media servers. An echo UAS registered as the extension browsers call, and a
//! UAC dialling `0<web uid>` through the PBX. Scenarios are built into the binary.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

const REGISTER_XML: &str = include_str!("../../tests/sipp/register.xml");
const UAS_XML: &str = include_str!("../../tests/sipp/uas_answer.xml");
const UAC_XML: &str = include_str!("scenarios/load_uac.xml");

/// A SIPp child in its own working directory (removed on drop); killed on drop.
pub struct SippPeer {
    child: Child,
    dir: PathBuf,
}

/// Where and as whom SIPp talks.
#[derive(Debug, Clone)]
pub struct SippSettings {
    pub sipp: PathBuf,
    pub pbx: SocketAddr,
    pub local_ip: IpAddr,
    pub password: String,
}

/// A UDP port on `ip` nobody uses right now.
pub fn free_udp_port(ip: IpAddr) -> anyhow::Result<u16> {
    Ok(UdpSocket::bind((ip, 0))?.local_addr()?.port())
}

/// An even port `p` with `p..p+4` free: SIPp's echo listens on `p` and `p+2`.
fn free_media_port(ip: IpAddr) -> anyhow::Result<u16> {
    for _ in 0..200 {
        let p = free_udp_port(ip)? & !1;
        if !(1024..=65530).contains(&p) {
            continue;
        }
        if (p..p + 4).all(|q| UdpSocket::bind((ip, q)).is_ok()) {
            return Ok(p);
        }
    }
    bail!("no free UDP port range for SIPp's media")
}

fn work_dir(tag: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "srbridge-load-{}-{tag}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

impl SippSettings {
    fn command(&self, dir: &Path, scenario: &str, port: u16) -> Command {
        let mut cmd = Command::new(&self.sipp);
        let ip = self.local_ip.to_string();
        cmd.current_dir(dir)
            .args(["-sf", scenario, "-nostdin"])
            .args(["-i", &ip, "-mi", &ip])
            .args(["-p", &port.to_string()])
            .args(["-ap", &self.password])
            .stdin(Stdio::null());
        cmd
    }

    fn spawn(&self, mut cmd: Command, dir: PathBuf) -> anyhow::Result<SippPeer> {
        let out = std::fs::File::create(dir.join("output.log"))?;
        cmd.stdout(out.try_clone()?).stderr(out).kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // SIPp goes away with the tool, even when the tool is killed.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("run {} (Debian: sip-tester)", self.sipp.display()))?;
        Ok(SippPeer { child, dir })
    }

    /// Registers `account` from `port` (so the PBX sends its calls there).
    async fn register(&self, account: &str, port: u16) -> anyhow::Result<()> {
        let dir = work_dir("register")?;
        std::fs::write(dir.join("register.xml"), REGISTER_XML)?;
        let mut cmd = self.command(&dir, "register.xml", port);
        cmd.arg(self.pbx.to_string())
            .args(["-s", account, "-au", account])
            .args(["-key", "expires", "3600", "-m", "1"])
            .args(["-timeout", "10s", "-timeout_error"])
            .args(["-cp", &free_udp_port(self.local_ip)?.to_string()])
            .args(["-mp", &free_media_port(self.local_ip)?.to_string()]);
        let mut peer = self.spawn(cmd, dir)?;
        let code = peer.wait(Duration::from_secs(15)).await;
        if code != Some(0) {
            bail!(
                "SIPp could not register {account} at {} (exit {code:?}): {}",
                self.pbx,
                peer.output()
            );
        }
        Ok(())
    }

    /// The extension `account`, answering every call with PCMU and echoing its RTP.
    pub async fn echo_uas(&self, account: &str) -> anyhow::Result<SippPeer> {
        let port = free_udp_port(self.local_ip)?;
        self.register(account, port).await?;
        let dir = work_dir("uas")?;
        std::fs::write(dir.join("uas.xml"), UAS_XML)?;
        let mut cmd = self.command(&dir, "uas.xml", port);
        cmd.args(["-s", account, "-rtp_echo", "-m", "100000000"])
            .args(["-mp", &free_media_port(self.local_ip)?.to_string()])
            .args(["-cp", &free_udp_port(self.local_ip)?.to_string()])
            .args(["-max_socket", "10000"]);
        self.spawn(cmd, dir)
    }

    /// SIPp with `-rtp_echo` and no registration, for its echo only (rtpengine calls name its
    /// media address in their SDP): the process and that address.
    pub async fn echo_only(&self) -> anyhow::Result<(SippPeer, SocketAddr)> {
        let dir = work_dir("echo")?;
        std::fs::write(dir.join("uas.xml"), UAS_XML)?;
        let media = free_media_port(self.local_ip)?;
        let mut cmd = self.command(&dir, "uas.xml", free_udp_port(self.local_ip)?);
        cmd.args(["-rtp_echo", "-mp", &media.to_string()])
            .args(["-cp", &free_udp_port(self.local_ip)?.to_string()]);
        let mut peer = self.spawn(cmd, dir)?;
        // SIPp binds its media port at start; give it the time to, and to fail.
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if !peer.is_running() {
                bail!("SIPp's echo exited: {}", peer.output());
            }
            if UdpSocket::bind((self.local_ip, media)).is_err() {
                return Ok((peer, SocketAddr::new(self.local_ip, media)));
            }
        }
        bail!("SIPp's echo did not bind {}:{media}", self.local_ip)
    }

    /// Calls `0<uid>` for each uid from account `caller` at `rate` calls per second, echoing RTP;
    /// each call lasts until the bridge hangs up. Response time 1 (authenticated INVITE → 200)
    /// goes to the rtt file.
    pub fn dial_web_users(
        &self,
        caller: &str,
        uids: &[String],
        rate: f64,
    ) -> anyhow::Result<SippPeer> {
        let dir = work_dir("uac")?;
        std::fs::write(dir.join("load_uac.xml"), UAC_XML)?;
        let mut users = String::from("SEQUENTIAL\n");
        for uid in uids {
            users.push_str(&format!("0{uid};\n"));
        }
        std::fs::write(dir.join("users.csv"), users)?;
        // -r counts calls per -rp milliseconds: 1000 ms lets the rate have a fraction.
        let per_10s = (rate * 10.0).round().max(1.0);
        let mut cmd = self.command(&dir, "load_uac.xml", free_udp_port(self.local_ip)?);
        cmd.arg(self.pbx.to_string())
            .args(["-inf", "users.csv", "-au", caller, "-key", "caller", caller])
            .args(["-r", &per_10s.to_string(), "-rp", "10000"])
            .args(["-l", &uids.len().to_string(), "-m", &uids.len().to_string()])
            .args(["-rtp_echo", "-trace_rtt", "-rtt_freq", "1"])
            .args(["-trace_err", "-error_file", "errors.log"])
            .args(["-mp", &free_media_port(self.local_ip)?.to_string()])
            .args(["-cp", &free_udp_port(self.local_ip)?.to_string()]);
        self.spawn(cmd, dir)
    }
}

impl SippPeer {
    /// Waits for SIPp to exit (killing it after `timeout`); its exit code, `None` if killed.
    pub async fn wait(&mut self, timeout: Duration) -> Option<i32> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => {
                let _ = self.child.kill().await;
                None
            }
        }
    }

    /// Whether SIPp is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIPp's error trace (unexpected messages and the like), its first 1000 characters.
    pub fn errors(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("errors.log")).unwrap_or_default();
        text.chars().take(1000).collect()
    }

    /// What SIPp printed (its last 2000 characters).
    pub fn output(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("output.log")).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        text.get(start..).unwrap_or(&text).to_string()
    }

    /// Response times 1 of the calls so far, in milliseconds (`-trace_rtt` files).
    pub fn response_times_ms(&self) -> Vec<f64> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with("_rtt.csv"))
            .flat_map(|e| parse_rtt(&std::fs::read_to_string(e.path()).unwrap_or_default()))
            .collect()
    }
}

impl Drop for SippPeer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SIPp's rtt file: the header `Date_ms;response_time_ms;rtd_no`, then per response its date,
/// response time in milliseconds (SIPp 3.6.1) and RTD name. Returns the response times.
pub fn parse_rtt(text: &str) -> Vec<f64> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split(';');
            fields.nth(1)?.trim().parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtt_lines_give_response_times_and_garbage_is_skipped() {
        let text = "Date_ms;response_time_ms;rtd_no\n\
                    1.76475e+12;4.512;1\n\
                    broken line\n\
                    x;12.25;1\n";
        let ms = parse_rtt(text);
        assert_eq!(ms.len(), 2);
        assert!(
            (ms[0] - 4.512).abs() < 1e-9 && (ms[1] - 12.25).abs() < 1e-9,
            "{ms:?}"
        );
        assert!(parse_rtt("").is_empty());
    }
}
