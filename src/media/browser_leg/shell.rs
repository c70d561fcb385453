//! A thin tokio driver for one [`BrowserLeg`]: one task owning the core, fed by its own UDP
//! socket (a port from the configured range) or by a [`SinglePort`] shared by every call, and
//! one `sleep_until` for the core's next deadline.
//!
//! The tests and the micro-benchmark drive the core this way; the call's media task drives it
//! itself (same loop, its own select). Commands and received RTP cross channels here, which the
//! task does not need.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant as TokioInstant;

use super::core::{BrowserLeg, BrowserLegEvent};
pub use super::single_port::{PortShare, SinglePort};
use crate::media::rtp_leg::{PortAllocator, PortLease, RtpLegError};
use crate::media::webrtc_leg::{InboundRtp, NegotiatedCodecs, WebRtcLegError, WebRtcSettings};

/// Packets held for a slow consumer before dropping (about 5 s of 20 ms audio).
const QUEUE: usize = 256;
/// Largest datagram read.
const RECV_BUF: usize = 2048;

/// One RTP packet for the browser, as [`BrowserLeg::send_rtp`] takes it.
#[derive(Debug)]
struct OutboundRtp {
    payload_type: u8,
    seq: u16,
    timestamp: u32,
    marker: bool,
    payload: Vec<u8>,
}

#[derive(Debug)]
enum Command {
    Send(OutboundRtp),
    AddCandidate(String, oneshot::Sender<Result<(), WebRtcLegError>>),
    Close,
}

/// Where a leg's datagrams come from.
enum Input {
    /// Its own socket.
    Own(Arc<UdpSocket>),
    /// Its share of a [`SinglePort`]: what the port's reader routed to it.
    Shared(PortShare),
}

/// Counters of one driven leg, readable while it runs.
#[derive(Debug, Default)]
pub struct ShellCounters {
    /// Received RTP dropped because the consumer fell behind.
    pub dropped_rtp: AtomicU64,
    /// Datagrams the socket refused to send.
    pub send_errors: AtomicU64,
}

/// A running leg: its answer was given; send RTP, read events and RTP, close.
pub struct BrowserLegHandle {
    commands: mpsc::Sender<Command>,
    /// State changes and receiver reports.
    pub events: mpsc::UnboundedReceiver<BrowserLegEvent>,
    /// RTP from the browser, in arrival order (bounded; overflow dropped and counted).
    pub rtp: mpsc::Receiver<InboundRtp>,
    negotiated: NegotiatedCodecs,
    local_addrs: Vec<SocketAddr>,
    counters: Arc<ShellCounters>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for BrowserLegHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserLegHandle")
            .field("local_addrs", &self.local_addrs)
            .finish_non_exhaustive()
    }
}

impl BrowserLegHandle {
    /// Payload types agreed with the browser.
    pub fn negotiated(&self) -> NegotiatedCodecs {
        self.negotiated
    }

    /// Where our candidates point.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The leg's counters.
    pub fn counters(&self) -> &ShellCounters {
        &self.counters
    }

    /// Queues one RTP packet for the browser (dropped by the core before media is ready).
    pub async fn send_rtp(
        &self,
        payload_type: u8,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> Result<(), WebRtcLegError> {
        self.sender()
            .send_rtp(payload_type, seq, timestamp, marker, payload)
            .await
    }

    /// A sending end that can live apart from the handle (e.g. in another task).
    pub fn sender(&self) -> RtpToBrowser {
        RtpToBrowser {
            commands: self.commands.clone(),
        }
    }

    /// Adds a candidate the browser trickled.
    pub async fn add_remote_candidate(&self, json: &str) -> Result<(), WebRtcLegError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::AddCandidate(json.to_owned(), tx))
            .await
            .map_err(|_| WebRtcLegError::Closed)?;
        rx.await.map_err(|_| WebRtcLegError::Closed)?
    }

    /// Closes the leg (close_notify to the browser) and waits for its task to end.
    pub async fn close(self) {
        let _ = self.commands.send(Command::Close).await;
        let _ = self.task.await;
    }
}

/// The sending end of a driven leg.
#[derive(Debug, Clone)]
pub struct RtpToBrowser {
    commands: mpsc::Sender<Command>,
}

impl RtpToBrowser {
    /// Queues one RTP packet for the browser (dropped by the core before media is ready).
    pub async fn send_rtp(
        &self,
        payload_type: u8,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> Result<(), WebRtcLegError> {
        self.commands
            .send(Command::Send(OutboundRtp {
                payload_type,
                seq,
                timestamp,
                marker,
                payload: payload.to_vec(),
            }))
            .await
            .map_err(|_| WebRtcLegError::Closed)
    }
}

fn io_error(e: std::io::Error) -> WebRtcLegError {
    WebRtcLegError::WebRtc(e.to_string())
}

/// Answers `offer` on a socket of its own: a port from `ports` (the configured range) or an
/// ephemeral one, on `ip`. The port stays reserved until the leg's task ends.
pub async fn answer_on_own_port(
    settings: &WebRtcSettings,
    ports: Option<&PortAllocator>,
    ip: IpAddr,
    offer: &str,
) -> Result<(BrowserLegHandle, String), WebRtcLegError> {
    let (socket, lease) = match ports {
        Some(ports) => {
            let pair = ports.allocate(ip)?;
            let rtp = pair.rtp;
            // The odd port of the pair is not used (rtcp-mux); the lease keeps the pair ours.
            drop(pair.rtcp);
            rtp.set_nonblocking(true).map_err(RtpLegError::Io)?;
            (
                UdpSocket::from_std(rtp).map_err(io_error)?,
                Some(pair.lease),
            )
        }
        None => (UdpSocket::bind((ip, 0)).await.map_err(io_error)?, None),
    };
    let local = socket.local_addr().map_err(io_error)?;
    let (leg, answer) =
        BrowserLeg::answer(TokioInstant::now().into_std(), settings, &[local], offer)?;
    let socket = Arc::new(socket);
    let handle = spawn(leg, Arc::clone(&socket), Input::Own(socket), lease);
    Ok((handle, answer))
}

impl SinglePort {
    /// Answers `offer` with a candidate on the shared port, driven by the shell.
    pub async fn answer(
        &self,
        settings: &WebRtcSettings,
        offer: &str,
    ) -> Result<(BrowserLegHandle, String), WebRtcLegError> {
        let (leg, answer) = BrowserLeg::answer(
            TokioInstant::now().into_std(),
            settings,
            &[self.local_addr()],
            offer,
        )?;
        let share = self
            .attach(leg.ice_credentials())
            .await
            .map_err(|e| WebRtcLegError::WebRtc(e.to_string()))?;
        let socket = Arc::clone(share.socket());
        Ok((spawn(leg, socket, Input::Shared(share), None), answer))
    }
}

fn spawn(
    leg: BrowserLeg,
    socket: Arc<UdpSocket>,
    input: Input,
    lease: Option<PortLease>,
) -> BrowserLegHandle {
    let (commands, commands_rx) = mpsc::channel(QUEUE);
    let (events_tx, events) = mpsc::unbounded_channel();
    let (rtp_tx, rtp) = mpsc::channel(QUEUE);
    let counters = Arc::new(ShellCounters::default());
    let negotiated = leg.negotiated().unwrap_or_default();
    let local_addrs = leg.local_addrs().to_vec();
    let task = tokio::spawn(drive(
        leg,
        socket,
        input,
        commands_rx,
        events_tx,
        rtp_tx,
        Arc::clone(&counters),
        lease,
    ));
    BrowserLegHandle {
        commands,
        events,
        rtp,
        negotiated,
        local_addrs,
        counters,
        task,
    }
}

/// The leg's loop: drain the core, then wait for a datagram, a command or the next deadline.
#[allow(clippy::too_many_arguments)]
async fn drive(
    mut leg: BrowserLeg,
    socket: Arc<UdpSocket>,
    mut input: Input,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::UnboundedSender<BrowserLegEvent>,
    rtp: mpsc::Sender<InboundRtp>,
    counters: Arc<ShellCounters>,
    _lease: Option<PortLease>,
) {
    let mut buf = vec![0u8; RECV_BUF];
    let mut closing = false;
    loop {
        while let Some(t) = leg.poll_transmit() {
            if socket.send_to(&t.payload, t.to).await.is_err() {
                counters.send_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        while let Some(packet) = leg.poll_rtp() {
            if rtp.try_send(packet).is_err() {
                counters.dropped_rtp.fetch_add(1, Ordering::Relaxed);
            }
        }
        while let Some(event) = leg.poll_event() {
            let _ = events.send(event);
        }
        if closing {
            break;
        }
        let deadline = leg
            .poll_timeout()
            .map(TokioInstant::from_std)
            .unwrap_or_else(|| TokioInstant::now() + std::time::Duration::from_secs(3600));
        tokio::select! {
            c = commands.recv() => match c {
                Some(Command::Send(p)) => {
                    let now = TokioInstant::now().into_std();
                    // Before media is ready, or a payload type not negotiated: dropped.
                    let _ = leg.send_rtp(now, p.payload_type, p.seq, p.timestamp, p.marker, &p.payload);
                }
                Some(Command::AddCandidate(json, reply)) => {
                    let _ = reply.send(leg.add_remote_candidate(&json));
                }
                Some(Command::Close) | None => {
                    leg.close();
                    closing = true;
                }
            },
            d = next_datagram(&mut input, &mut buf) => match d {
                Some((from, n)) => {
                    let now = TokioInstant::now().into_std();
                    let local = leg.local_addrs().first().copied().unwrap_or(from);
                    leg.handle_datagram(now, local, from, &buf[..n]);
                }
                None => {
                    leg.close();
                    closing = true;
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                leg.handle_timeout(TokioInstant::now().into_std());
            }
        }
    }
}

async fn next_datagram(input: &mut Input, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
    match input {
        Input::Own(socket) => loop {
            match socket.recv_from(buf).await {
                Ok((n, from)) => return Some((from, n)),
                // ICMP port unreachable from an earlier send and the like: keep reading.
                Err(_) => continue,
            }
        },
        Input::Shared(share) => {
            let (from, bytes) = share.recv().await?;
            let n = bytes.len().min(buf.len());
            buf[..n].copy_from_slice(&bytes[..n]);
            Some((from, n))
        }
    }
}
