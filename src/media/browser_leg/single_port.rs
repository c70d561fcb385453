//! Every browser call's media on one UDP port (`[media] webrtc_single_port`): one socket, one
//! reader task routing each datagram to its call with the sans-IO [`IceDemux`], and a bounded
//! queue per call. Calls send through the same socket themselves (`try_send_to` on the shared
//! `Arc<UdpSocket>`: no lock, no await).
//!
//! Per datagram in: one `recvfrom` into a slab ([`BytesMut`]; the datagram is split off without
//! a copy and the slab's memory is reused once the calls consumed what they got), one hash
//! lookup by source address (a STUN check instead: one lookup by ufrag and one HMAC), one
//! `try_send` on the call's queue (a wake of its task, which then drains its queue in a burst).
//! What is dropped is counted into `/metrics` after each burst, never logged per datagram.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::net::UdpSocket;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};

use super::core::IceCredentials;
use super::ice_demux::{IceDemux, IceDemuxCounters, IceDemuxError};
use crate::ops::metrics::{Metrics, PortDrop};

/// Datagrams queued for one call before dropping (a few seconds of 20 ms audio with RTCP/STUN).
const CALL_QUEUE: usize = 128;
/// Room kept free in the slab for the next datagram (larger than any datagram we take).
const RECV_BUF: usize = 2048;
/// One slab: many datagrams before a new allocation (or a reuse, once they were consumed).
const SLAB: usize = 64 * 1024;
/// Datagrams read per wake before looking at registrations again.
const READ_BURST: usize = 64;
/// Receive buffer asked of the kernel: every call's packets wait in this one queue.
const SOCKET_RCVBUF: libc::c_int = 4 * 1024 * 1024;

/// One datagram routed to a call: where it came from, its bytes.
pub type Routed = (SocketAddr, Bytes);

/// Why a call could not get its share of the port.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SinglePortError {
    /// The demultiplexer refused the registration (e.g. its ufrag is taken: make new ones).
    #[error(transparent)]
    Demux(#[from] IceDemuxError),
    /// The port's reader is gone.
    #[error("the shared WebRTC port is closed")]
    Closed,
}

/// The shared port: bind it once, [`SinglePort::attach`] each call. Cloning shares it.
#[derive(Debug, Clone)]
pub struct SinglePort {
    socket: Arc<UdpSocket>,
    control: mpsc::UnboundedSender<PortControl>,
    local: SocketAddr,
}

#[derive(Debug)]
enum PortControl {
    Register {
        credentials: IceCredentials,
        input: mpsc::Sender<Routed>,
        reply: oneshot::Sender<Result<usize, IceDemuxError>>,
    },
    Unregister(usize),
    Counters(oneshot::Sender<IceDemuxCounters>),
}

impl SinglePort {
    /// Binds `addr` and starts its reader on the current tokio runtime; drops are counted into
    /// `metrics` when given. Fails when the port cannot be bound or there is no runtime.
    pub fn start(addr: SocketAddr, metrics: Option<Arc<Metrics>>) -> io::Result<SinglePort> {
        let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let std_socket = std::net::UdpSocket::bind(addr)?;
        std_socket.set_nonblocking(true)?;
        raise_receive_buffer(&std_socket);
        let socket = {
            let _enter = runtime.enter();
            Arc::new(UdpSocket::from_std(std_socket)?)
        };
        let local = socket.local_addr()?;
        let (control, control_rx) = mpsc::unbounded_channel();
        runtime.spawn(read_port(Arc::clone(&socket), control_rx, metrics));
        Ok(SinglePort {
            socket,
            control,
            local,
        })
    }

    /// Binds `addr` without metrics (tests and benchmarks).
    pub async fn bind(addr: SocketAddr) -> io::Result<SinglePort> {
        Self::start(addr, None)
    }

    /// The shared address every call's host candidate names.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// What the demultiplexer dropped so far.
    pub async fn counters(&self) -> IceDemuxCounters {
        let (tx, rx) = oneshot::channel();
        if self.control.send(PortControl::Counters(tx)).is_err() {
            return IceDemuxCounters::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Registers a call's ICE credentials: datagrams whose check names them (and then their
    /// source address) arrive on the returned share until it is dropped.
    pub async fn attach(&self, credentials: &IceCredentials) -> Result<PortShare, SinglePortError> {
        let (input, datagrams) = mpsc::channel(CALL_QUEUE);
        let (reply, registered) = oneshot::channel();
        self.control
            .send(PortControl::Register {
                credentials: credentials.clone(),
                input,
                reply,
            })
            .map_err(|_| SinglePortError::Closed)?;
        let slot = registered.await.map_err(|_| SinglePortError::Closed)??;
        Ok(PortShare {
            datagrams,
            socket: Arc::clone(&self.socket),
            local: self.local,
            _registration: Registration {
                slot,
                control: self.control.clone(),
            },
        })
    }
}

/// Best effort: `SO_RCVBUFFORCE` when privileged, else `SO_RCVBUF`, which the kernel caps at
/// `net.core.rmem_max`; a small buffer only drops earlier when the reader is starved.
fn raise_receive_buffer(socket: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let size = SOCKET_RCVBUF;
    let set = |option| {
        // SAFETY: a valid descriptor, a c_int option value of the length given.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                std::ptr::addr_of!(size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    if set(libc::SO_RCVBUFFORCE) != 0 {
        set(libc::SO_RCVBUF);
    }
}

/// One call's part of a [`SinglePort`]: its datagrams, and the socket to answer on. Dropping it
/// unregisters the call (its ufrag and addresses are forgotten).
#[derive(Debug)]
pub struct PortShare {
    datagrams: mpsc::Receiver<Routed>,
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    _registration: Registration,
}

impl PortShare {
    /// The next datagram routed to this call; `None` once the port's reader is gone.
    pub async fn recv(&mut self) -> Option<Routed> {
        self.datagrams.recv().await
    }

    /// A datagram already queued: [`TryRecvError::Empty`] when there is none.
    pub fn try_recv(&mut self) -> Result<Routed, TryRecvError> {
        self.datagrams.try_recv()
    }

    /// The shared socket: send with `try_send_to` (or `send_to`).
    pub fn socket(&self) -> &Arc<UdpSocket> {
        &self.socket
    }

    /// The shared port's address (the leg's local address).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

#[derive(Debug)]
struct Registration {
    slot: usize,
    control: mpsc::UnboundedSender<PortControl>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = self.control.send(PortControl::Unregister(self.slot));
    }
}

/// The reader's routing state: the demultiplexer keyed by slot, each slot a call's queue.
struct Routes {
    demux: IceDemux<usize>,
    calls: Vec<Option<mpsc::Sender<Routed>>>,
    free: Vec<usize>,
    queue_full: u64,
}

impl Routes {
    fn register(
        &mut self,
        credentials: &IceCredentials,
        input: mpsc::Sender<Routed>,
    ) -> Result<usize, IceDemuxError> {
        let slot = self.free.pop().unwrap_or(self.calls.len());
        if let Err(e) = self.demux.register(slot, credentials) {
            if slot < self.calls.len() {
                self.free.push(slot);
            }
            return Err(e);
        }
        match self.calls.get_mut(slot) {
            Some(entry) => *entry = Some(input),
            None => self.calls.push(Some(input)),
        }
        Ok(slot)
    }

    fn unregister(&mut self, slot: usize) {
        self.demux.unregister(slot);
        if let Some(entry @ Some(_)) = self.calls.get_mut(slot) {
            *entry = None;
            self.free.push(slot);
        }
    }

    /// Hands the datagram at the front of `slab` to its call, or drops it (counted).
    fn route(&mut self, from: SocketAddr, slab: &mut BytesMut) {
        let input = self
            .demux
            .route(from, slab)
            .and_then(|slot| self.calls.get(slot))
            .and_then(Option::as_ref);
        match input {
            Some(input) => {
                // Full: the call's task is behind; dropped like a lost packet.
                if input.try_send((from, slab.split().freeze())).is_err() {
                    self.queue_full += 1;
                }
            }
            None => slab.clear(),
        }
    }
}

/// Counts into `/metrics` what was dropped since the last report.
struct DropReport {
    metrics: Option<Arc<Metrics>>,
    demux: IceDemuxCounters,
    queue_full: u64,
}

impl DropReport {
    fn publish(&mut self, routes: &Routes) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        let now = routes.demux.counters();
        let was = std::mem::replace(&mut self.demux, now);
        for (reason, n) in [
            (
                PortDrop::UnknownUfrag,
                now.unknown_ufrag - was.unknown_ufrag,
            ),
            (
                PortDrop::BadIntegrity,
                now.bad_integrity - was.bad_integrity,
            ),
            (
                PortDrop::UnknownSource,
                now.unknown_source - was.unknown_source,
            ),
            (PortDrop::QueueFull, routes.queue_full - self.queue_full),
        ] {
            if n > 0 {
                metrics.webrtc_port_dropped(reason, n);
            }
        }
        self.queue_full = routes.queue_full;
    }

    fn calls(&self, routes: &Routes) {
        if let Some(metrics) = &self.metrics {
            metrics
                .webrtc_port_calls
                .set(i64::try_from(routes.demux.calls()).unwrap_or(i64::MAX));
        }
    }
}

/// The shared port's reader: registrations first, then datagrams in bursts.
async fn read_port(
    socket: Arc<UdpSocket>,
    mut control: mpsc::UnboundedReceiver<PortControl>,
    metrics: Option<Arc<Metrics>>,
) {
    let mut routes = Routes {
        demux: IceDemux::new(),
        calls: Vec::new(),
        free: Vec::new(),
        queue_full: 0,
    };
    let mut report = DropReport {
        metrics,
        demux: IceDemuxCounters::default(),
        queue_full: 0,
    };
    let mut slab = BytesMut::with_capacity(SLAB);
    loop {
        tokio::select! {
            biased;
            c = control.recv() => match c {
                Some(PortControl::Register { credentials, input, reply }) => {
                    let _ = reply.send(routes.register(&credentials, input));
                    report.calls(&routes);
                }
                Some(PortControl::Unregister(slot)) => {
                    routes.unregister(slot);
                    report.calls(&routes);
                }
                Some(PortControl::Counters(reply)) => {
                    let _ = reply.send(routes.demux.counters());
                }
                // Every handle is gone: nobody can attach any more, and every share is gone too.
                None => return,
            },
            r = socket.readable() => {
                if r.is_err() {
                    return;
                }
                for _ in 0..READ_BURST {
                    slab.reserve(RECV_BUF);
                    match socket.try_recv_buf_from(&mut slab) {
                        Ok((_, from)) => routes.route(from, &mut slab),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // ICMP errors and the like: nothing was read; the next read is fresh.
                        Err(_) => slab.clear(),
                    }
                }
                report.publish(&routes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::stun::build_binding_request;
    use super::*;

    fn creds(ufrag: &str) -> IceCredentials {
        IceCredentials {
            ufrag: ufrag.to_owned(),
            pwd: format!("{ufrag}-password-0123456789"),
        }
    }

    fn routes() -> Routes {
        Routes {
            demux: IceDemux::new(),
            calls: Vec::new(),
            free: Vec::new(),
            queue_full: 0,
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    fn slab_with(bytes: &[u8]) -> BytesMut {
        let mut slab = BytesMut::with_capacity(SLAB);
        slab.extend_from_slice(bytes);
        slab
    }

    const SRTP: [u8; 12] = [0x80, 111, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4];

    #[test]
    fn slots_are_reused_and_a_collision_leaves_no_trace() {
        let mut r = routes();
        let (tx, _rx) = mpsc::channel(1);
        assert_eq!(r.register(&creds("aaaa"), tx.clone()), Ok(0));
        assert_eq!(r.register(&creds("bbbb"), tx.clone()), Ok(1));
        assert_eq!(
            r.register(&creds("aaaa"), tx.clone()),
            Err(IceDemuxError::DuplicateUfrag("aaaa".into()))
        );
        assert_eq!(r.calls.len(), 2, "a refused registration takes no slot");
        r.unregister(0);
        r.unregister(0);
        assert_eq!(r.free, vec![0], "unregistering twice frees the slot once");
        assert_eq!(r.register(&creds("cccc"), tx.clone()), Ok(0));
        for i in 0..1000 {
            let slot = r.register(&creds(&format!("u{i:04}")), tx.clone()).unwrap();
            r.unregister(slot);
        }
        assert_eq!((r.calls.len(), r.demux.calls()), (3, 2), "no growth");
    }

    #[test]
    fn a_datagram_reaches_its_call_without_a_copy_and_drops_are_counted() {
        let mut r = routes();
        let (tx, mut rx) = mpsc::channel(1);
        let a = creds("aaaa");
        r.register(&a, tx).unwrap();
        let check = build_binding_request("aaaa:b", &a.pwd, [7; 12]);
        let mut slab = slab_with(&check);
        r.route(addr(5000), &mut slab);
        let (from, got) = rx.try_recv().unwrap();
        assert_eq!((from, &got[..]), (addr(5000), &check[..]));
        assert!(slab.is_empty());
        // Its queue is full (capacity 1): counted, and the slab's bytes are not handed on.
        let mut slab = slab_with(&SRTP);
        r.route(addr(5000), &mut slab);
        let mut slab2 = slab_with(&SRTP);
        r.route(addr(5000), &mut slab2);
        assert_eq!(r.queue_full, 1);
        // A stranger: dropped, the slab cleared for the next read.
        let mut slab = slab_with(&SRTP);
        r.route(addr(6000), &mut slab);
        assert!(slab.is_empty());
        assert_eq!(r.demux.counters().unknown_source, 1);
        let metrics = Arc::new(Metrics::new());
        let mut report = DropReport {
            metrics: Some(Arc::clone(&metrics)),
            demux: IceDemuxCounters::default(),
            queue_full: 0,
        };
        report.publish(&r);
        report.publish(&r);
        assert_eq!(metrics.webrtc_port_drops(PortDrop::UnknownSource), 1);
        assert_eq!(metrics.webrtc_port_drops(PortDrop::QueueFull), 1);
        report.calls(&r);
        assert_eq!(metrics.webrtc_port_calls.get(), 1);
    }

    #[test]
    fn a_dropped_share_is_no_longer_routed() {
        let mut r = routes();
        let (tx, rx) = mpsc::channel(4);
        let a = creds("aaaa");
        let slot = r.register(&a, tx).unwrap();
        drop(rx);
        let check = build_binding_request("aaaa:b", &a.pwd, [7; 12]);
        r.route(addr(5000), &mut slab_with(&check));
        assert_eq!(r.queue_full, 1, "a closed queue counts as full");
        r.unregister(slot);
        r.route(addr(5000), &mut slab_with(&SRTP));
        assert_eq!(r.demux.counters().unknown_source, 1);
    }

    #[tokio::test]
    async fn a_thousand_calls_come_and_go_without_a_trace() {
        let metrics = Arc::new(Metrics::new());
        let port = SinglePort::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Some(Arc::clone(&metrics)),
        )
        .unwrap();
        let kept = port.attach(&creds("kept")).await.unwrap();
        for i in 0..1000 {
            let share = port.attach(&creds(&format!("call{i}"))).await.unwrap();
            // A ufrag in use is refused (the caller makes new credentials), not shadowed.
            assert_eq!(
                port.attach(&creds(&format!("call{i}"))).await.unwrap_err(),
                SinglePortError::Demux(IceDemuxError::DuplicateUfrag(format!("call{i}")))
            );
            drop(share);
        }
        // The reader handles control messages in order: once this answers, every drop is done.
        port.counters().await;
        assert_eq!(metrics.webrtc_port_calls.get(), 1);
        drop(kept);
        port.counters().await;
        assert_eq!(metrics.webrtc_port_calls.get(), 0);
        port.attach(&creds("call0")).await.unwrap();
    }
}
