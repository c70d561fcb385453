//! rtpengine as the peer measured beside srbridge: the tool plays the SIP proxy's part itself,
//! driving rtpengine's `ng` control protocol (offer/answer/delete) for every call, with the same
//! webrtc-rs browsers on its WebRTC side and SIPp's `-rtp_echo` on its plain-RTP side.

pub mod bencode;
pub mod call;
pub mod ng;
pub mod sdp;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::net::UdpSocket;

use self::bencode::Bencode;
use self::ng::{Codecs, Reply};

/// A request unanswered this long is sent again (same cookie: rtpengine replies from its cache).
const RETRANSMIT_AFTER: Duration = Duration::from_millis(500);
/// Sends of one request before giving up.
const ATTEMPTS: u32 = 6;
/// How long `ping` waits for rtpengine to start answering.
const STARTUP: Duration = Duration::from_secs(15);

/// Where rtpengine's `ng` port is.
#[derive(Debug, Clone, Copy)]
pub struct NgClient {
    pub addr: SocketAddr,
}

impl NgClient {
    /// Sends `body` and waits for its reply, retransmitting while none comes.
    pub async fn request(&self, body: &Bencode) -> anyhow::Result<Reply> {
        let bind: SocketAddr = if self.addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()?;
        let socket = UdpSocket::bind(bind).await?;
        socket
            .connect(self.addr)
            .await
            .with_context(|| format!("ng {}", self.addr))?;
        let cookie = format!("{:016x}", rand::random::<u64>());
        let datagram = ng::datagram(&cookie, body);
        let mut buf = vec![0u8; 65_536];
        for _ in 0..ATTEMPTS {
            socket.send(&datagram).await?;
            let deadline = tokio::time::Instant::now() + RETRANSMIT_AFTER;
            loop {
                let n = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                    Err(_) => break,
                    // Nobody listens (ICMP port unreachable): try again, rtpengine may be starting.
                    Ok(Err(_)) => {
                        tokio::time::sleep_until(deadline).await;
                        break;
                    }
                    Ok(Ok(n)) => n,
                };
                if let Some(reply) = ng::parse_reply(&buf[..n], &cookie)? {
                    return Ok(reply);
                }
            }
        }
        let command = body.get("command").and_then(Bencode::as_str).unwrap_or("?");
        Err(anyhow!(
            "rtpengine at {} did not answer `{command}` ({ATTEMPTS} tries)",
            self.addr
        ))
    }

    /// Fails unless rtpengine answers `ping` with `pong`, allowing a just-started rtpengine
    /// [`STARTUP`] to open its port (one request's tries, 3 s, were too few on a busy CI host).
    pub async fn ping(&self) -> anyhow::Result<()> {
        let started = tokio::time::Instant::now();
        let reply = loop {
            match self.request(&ng::ping()).await {
                Err(e) if started.elapsed() >= STARTUP => return Err(e),
                Err(_) => continue,
                Ok(reply) => break reply,
            }
        };
        if reply.result != "pong" {
            bail!(
                "rtpengine at {} answered ping with {}",
                self.addr,
                reply.result
            );
        }
        Ok(())
    }
}

/// What every rtpengine call of a run shares.
#[derive(Debug, Clone, Copy)]
pub struct RtpenginePlan {
    pub ng: NgClient,
    /// SIPp's echo: the SIP side's media address in every call.
    pub echo: SocketAddr,
    /// Whether the browsers' Opus is transcoded to PCMU for the SIP side.
    pub transcode: bool,
}

impl RtpenginePlan {
    /// The codec flags of an offer from a browser (toward SIP) or from SIP (toward a browser).
    pub fn codecs(&self, from_browser: bool) -> Codecs {
        match (self.transcode, from_browser) {
            (false, _) => Codecs::Relay,
            (true, true) => Codecs::Transcode {
                from: "opus",
                to: "PCMU",
            },
            (true, false) => Codecs::Transcode {
                from: "PCMU",
                to: "opus",
            },
        }
    }
}
