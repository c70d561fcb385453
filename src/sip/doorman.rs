//! Where the door ([`super::door`]) and the TCP gate ([`super::tcp_gate`]) meet the network,
//! in front of rsipstack:
//!
//! * UDP: [`DoorUdp`] is the socket rsipstack's UDP transport reads from
//!   (`rsipstack::platform::net::UdpSocket`). It reads each datagram whole (up to 64 KiB), checks
//!   the raw bytes, answers refusals itself and hands rsipstack only what passed: nothing
//!   refused reaches a transaction or dialog.
//! * TCP: our own accept loop ([`serve_tcp`]) caps connections per IP and closes those that send
//!   no complete message in time, then gives each stream to rsipstack. rsipstack frames the
//!   stream, so the door sees TCP requests in [`DoorInspector`] (a transport event inspector),
//!   re-serialized from rsipstack's parse: a request rsipstack cannot frame or parse closes the
//!   connection (rsipstack's codec), one it parses gets the same checks as over UDP.
//!
//! Every refusal is counted in `srbridge_errors_total{kind}`; refused peers also write the
//! `AUTH_FAILURE` line (fail2ban); the rest is logged at debug so floods stay quiet.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rsipstack::sip::SipMessage;
use rsipstack::transaction::endpoint::TransportEventInspector;
use rsipstack::transport::tcp::TcpConnection;
use rsipstack::transport::{SipAddr, SipConnection, TransportEvent};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::door::{self, Verdict};
use super::inbound::PeerPolicy;
use super::tcp_gate::TcpGate;
use crate::ops::auth_log::{log_auth_failure, AuthFailure};
use crate::ops::metrics::{ErrorKind, Metrics};

/// Largest datagram read from the socket (anything bigger than rsipstack's buffer is 513).
const DATAGRAM_MAX: usize = 65_536;
/// Largest message over TCP (rsipstack's stream codec limit).
const STREAM_MAX: usize = 65_535;
/// How long an answer to a refused TCP request may take to write.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// What became of one message at the door.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Screened {
    /// Give it to the stack.
    Forward,
    /// Send this answer back and drop the message.
    Answer(Vec<u8>),
    /// Drop it.
    Dropped,
}

/// The door's policy and its side effects (counters, logs).
#[derive(Debug)]
pub(crate) struct Door {
    peers: PeerPolicy,
    server: String,
    metrics: Arc<Metrics>,
}

impl Door {
    pub(crate) fn new(peers: PeerPolicy, server: String, metrics: Arc<Metrics>) -> Door {
        Door {
            peers,
            server,
            metrics,
        }
    }

    /// Checks `raw` from `source`, counts and logs a refusal.
    pub(crate) fn screen(
        &self,
        raw: &[u8],
        max_len: usize,
        source: SocketAddr,
        transport: &'static str,
    ) -> Screened {
        match door::check(raw, max_len, source.ip(), &self.peers) {
            Verdict::Pass => Screened::Forward,
            Verdict::Reject(r) => {
                self.count_and_log(r.kind, r.why, &r.method, source, transport, r.code);
                Screened::Answer(r.response(&self.server))
            }
            Verdict::Drop { kind, why, method } => {
                self.count_and_log(kind, why, &method, source, transport, 0);
                Screened::Dropped
            }
        }
    }

    fn count_and_log(
        &self,
        kind: ErrorKind,
        why: &str,
        method: &str,
        source: SocketAddr,
        transport: &str,
        code: u16,
    ) {
        self.metrics.error(kind);
        // a stranger's ACK is mostly the ACK of our own 403: one refusal, one line
        if kind == ErrorKind::SipPeerRefused && method != "ACK" {
            let port = source.port().to_string();
            log_auth_failure(
                AuthFailure::SipPeer,
                source.ip(),
                &[
                    ("port", &port),
                    ("transport", transport),
                    ("method", method),
                ],
            );
        } else {
            debug!(%source, transport, method, code, why, kind = kind.label(), "SIP message refused at the door");
        }
    }
}

/// The UDP socket rsipstack reads: only what passes the door comes out of `recv_from`.
pub(crate) struct DoorUdp {
    socket: Arc<tokio::net::UdpSocket>,
    door: Arc<Door>,
    buf: tokio::sync::Mutex<Vec<u8>>,
}

impl DoorUdp {
    pub(crate) fn new(socket: tokio::net::UdpSocket, door: Arc<Door>) -> DoorUdp {
        DoorUdp {
            socket: Arc::new(socket),
            door,
            buf: tokio::sync::Mutex::new(vec![0; DATAGRAM_MAX]),
        }
    }
}

#[async_trait::async_trait]
impl rsipstack::platform::net::UdpSocket for DoorUdp {
    async fn recv_from(&self, out: &mut [u8]) -> rsipstack::Result<(usize, SocketAddr)> {
        let mut buf = self.buf.lock().await;
        loop {
            let (len, source) = self.socket.recv_from(&mut buf).await?;
            let datagram = &buf[..len];
            match self.door.screen(datagram, out.len(), source, "udp") {
                Screened::Forward => {
                    // the door refuses anything longer than `out` (513)
                    let Some(dest) = out.get_mut(..len) else {
                        continue;
                    };
                    dest.copy_from_slice(datagram);
                    return Ok((len, source));
                }
                Screened::Answer(answer) => {
                    if let Err(e) = self.socket.send_to(&answer, source).await {
                        debug!(%source, error = %e, "door answer not sent");
                    }
                }
                Screened::Dropped => {}
            }
        }
    }

    async fn send_to(&self, buf: &[u8], addr: SocketAddr) -> rsipstack::Result<usize> {
        Ok(self.socket.send_to(buf, addr).await?)
    }

    fn local_addr(&self) -> rsipstack::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }
}

/// Connections accepted by [`serve_tcp`] that have not sent their first message yet, with a
/// duplicate of their socket to shut them down when they are overdue.
pub(crate) struct TcpWatch {
    gate: TcpGate,
    pending: HashMap<SocketAddr, std::net::TcpStream>,
    /// Where refused and silent connections are counted.
    metrics: Arc<Metrics>,
}

pub(crate) type SharedTcpWatch = Arc<Mutex<TcpWatch>>;

fn lock(watch: &SharedTcpWatch) -> std::sync::MutexGuard<'_, TcpWatch> {
    watch.lock().unwrap_or_else(|e| e.into_inner())
}

impl TcpWatch {
    pub(crate) fn shared(gate: TcpGate, metrics: Arc<Metrics>) -> SharedTcpWatch {
        Arc::new(Mutex::new(TcpWatch {
            gate,
            pending: HashMap::new(),
            metrics,
        }))
    }

    fn on_message(&mut self, remote: SocketAddr) {
        if self.gate.on_message(remote) {
            self.pending.remove(&remote);
        }
    }

    fn on_closed(&mut self, remote: SocketAddr) {
        self.gate.on_closed(remote);
        self.pending.remove(&remote);
    }
}

/// Sees every transport event before the endpoint: TCP requests go through the door, TCP
/// connections' first messages and closes go to the gate.
pub(crate) struct DoorInspector {
    pub(crate) door: Arc<Door>,
    pub(crate) watch: SharedTcpWatch,
}

fn socket_of(addr: &SipAddr) -> Option<SocketAddr> {
    addr.get_socketaddr().ok()
}

#[async_trait::async_trait]
impl TransportEventInspector for DoorInspector {
    async fn handle(&self, event: TransportEvent) -> Option<TransportEvent> {
        match &event {
            TransportEvent::Incoming(msg, connection @ SipConnection::Tcp(_), from) => {
                let source = socket_of(from)?;
                lock(&self.watch).on_message(source);
                match self.door.screen(&msg.to_bytes(), STREAM_MAX, source, "tcp") {
                    Screened::Forward => Some(event),
                    Screened::Answer(answer) => {
                        if let Ok(answer) = SipMessage::try_from(answer.as_slice()) {
                            let connection = connection.clone();
                            // never hold up the transport loop on a peer that does not read
                            tokio::spawn(async move {
                                let send = connection.send(answer, None);
                                let _ = tokio::time::timeout(ANSWER_TIMEOUT, send).await;
                            });
                        }
                        None
                    }
                    Screened::Dropped => None,
                }
            }
            TransportEvent::Closed(connection @ SipConnection::Tcp(_)) => {
                if let Some(remote) = connection.get_remote_addr().and_then(socket_of) {
                    lock(&self.watch).on_closed(remote);
                }
                Some(event)
            }
            _ => Some(event),
        }
    }
}

/// Accepts SIP TCP connections on `listener` until `token` is cancelled: refuses those over
/// the per-IP cap, hands the rest to rsipstack (`add`), and shuts down those that send no
/// complete message within the gate's deadline.
pub(crate) async fn serve_tcp(
    listener: TcpListener,
    local: SipAddr,
    watch: SharedTcpWatch,
    add: impl Fn(SipConnection) + Send + 'static,
    token: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (stream, remote) = tokio::select! {
            _ = token.cancelled() => break,
            _ = tick.tick() => {
                close_overdue(&watch, Instant::now());
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // out of fds and the like: back off a little instead of spinning
                    debug!(error = %e, "SIP TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admitted = lock(&watch).gate.on_accept(remote, Instant::now());
        if !admitted {
            lock(&watch).metrics.error(ErrorKind::SipConnection);
            debug!(%remote, "SIP TCP connection refused: too many from this IP");
            drop(stream);
            continue;
        }
        // a second handle on the socket, to shut it down if it stays silent
        let dup = stream_dup(&stream);
        let connection =
            match TcpConnection::from_stream(stream, local.clone(), Some(token.child_token())) {
                Ok(c) => c,
                Err(e) => {
                    debug!(%remote, error = %e, "SIP TCP connection unusable");
                    lock(&watch).on_closed(remote);
                    continue;
                }
            };
        if let Some(dup) = dup {
            lock(&watch).pending.insert(remote, dup);
        }
        debug!(%remote, "SIP TCP connection accepted");
        add(SipConnection::Tcp(connection));
    }
    debug!("SIP TCP listener stopped");
}

fn stream_dup(stream: &tokio::net::TcpStream) -> Option<std::net::TcpStream> {
    use std::os::fd::AsFd;
    let fd = stream.as_fd().try_clone_to_owned().ok()?;
    Some(std::net::TcpStream::from(fd))
}

/// Shuts down every connection whose first message is overdue: rsipstack's read ends, it
/// closes the connection and reports it closed.
fn close_overdue(watch: &SharedTcpWatch, now: Instant) {
    let mut w = lock(watch);
    for remote in w.gate.overdue(now) {
        if let Some(socket) = w.pending.remove(&remote) {
            let _ = socket.shutdown(std::net::Shutdown::Both);
            w.metrics.error(ErrorKind::SipConnection);
            debug!(%remote, "SIP TCP connection closed: no complete message in time");
        }
    }
}
