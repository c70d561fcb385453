//! The SIP side's RTP socket: ports from the configured range, symmetric RTP, counters.
//!
//! [`PortAllocator`] hands out even RTP ports with the odd RTCP port above them, both bound, from
//! `media.rtp_port_min..=rtp_port_max`; ports busy in another process are skipped and ports come
//! back when the [`RtpLeg`] is dropped. [`RtpLeg`] sends to the SDP address until a source is
//! learned, then to that source (symmetric RTP, RFC 4961, so phones behind NAT work), and accepts
//! packets only from it: the strict-source rule of [`StrictSource`] decides, so a stranger's
//! packets are dropped and counted, never played or latched onto. The socket shell shares the
//! send target with the sending task through a lock-free cell, so the send path takes no lock;
//! the receive path takes one uncontended lock per packet; neither allocates.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket as StdUdpSocket};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::UdpSocket;

use super::demux::{classify, DatagramKind};
use super::rtp::{RtpError, RtpPacket};
use super::rtp_source::{RtpArrival, SourceVerdict, StrictSource};
use crate::config::MediaConfig;

/// Why the RTP leg cannot be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum RtpLegError {
    /// `rtp_port_min..=rtp_port_max` holds no even/odd port pair.
    #[error("RTP port range {min}..={max} holds no RTP/RTCP port pair")]
    EmptyRange {
        /// Configured minimum.
        min: u16,
        /// Configured maximum.
        max: u16,
    },
    /// Every pair in the range is taken (by our calls or by other programs).
    #[error("no free RTP port pair in {min}..={max} ({in_use} in use by srbridge)")]
    Exhausted {
        /// Range minimum.
        min: u16,
        /// Range maximum.
        max: u16,
        /// Pairs held by this process.
        in_use: usize,
    },
    /// Binding failed for a reason other than a busy port (e.g. the address is not local).
    #[error("cannot bind RTP socket on {addr}: {source}")]
    Bind {
        /// What we tried to bind.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// Created outside a tokio runtime.
    #[error("RTP leg must be created inside the tokio runtime")]
    NoRuntime,
    /// Nothing to send to yet: no SDP address and no RTP received (or the peer is on hold).
    #[error("no remote RTP address known")]
    NoRemote,
    /// Socket error while sending or receiving.
    #[error("RTP socket error: {0}")]
    Io(#[from] io::Error),
}

/// The configured RTP port range, checked to hold at least one even/odd pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    min: u16,
    max: u16,
}

impl PortRange {
    /// `min..=max`; RTP ports are the even ones with their odd neighbour also in range.
    pub fn new(min: u16, max: u16) -> Result<PortRange, RtpLegError> {
        let range = PortRange { min, max };
        if range.pairs() == 0 || min == 0 {
            return Err(RtpLegError::EmptyRange { min, max });
        }
        Ok(range)
    }

    /// The range from `[media] rtp_port_min/rtp_port_max`.
    pub fn from_config(media: &MediaConfig) -> Result<PortRange, RtpLegError> {
        PortRange::new(media.rtp_port_min, media.rtp_port_max)
    }

    fn first_even(self) -> u32 {
        u32::from(self.min) + u32::from(self.min) % 2
    }

    /// Number of RTP/RTCP pairs in the range.
    pub fn pairs(self) -> usize {
        let first = self.first_even();
        let max = u32::from(self.max);
        if max < first + 1 {
            0
        } else {
            ((max - first - 1) / 2 + 1) as usize
        }
    }

    fn rtp_port(self, index: usize) -> u16 {
        // index < pairs(), so this stays within max.
        (self.first_even() + 2 * index as u32) as u16
    }
}

#[derive(Debug)]
struct AllocState {
    range: PortRange,
    used: Vec<bool>,
    in_use: usize,
    /// Next pair index to try: ports rotate through the range so a port just freed is not
    /// handed out again at once (late packets of the old call would land in the new one).
    next: usize,
}

/// Hands out RTP/RTCP port pairs; cheap to clone, shared by all calls.
#[derive(Debug, Clone)]
pub struct PortAllocator {
    state: Arc<Mutex<AllocState>>,
}

impl PortAllocator {
    /// An allocator over `range`, all ports free.
    pub fn new(range: PortRange) -> PortAllocator {
        PortAllocator {
            state: Arc::new(Mutex::new(AllocState {
                range,
                used: vec![false; range.pairs()],
                in_use: 0,
                next: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, AllocState> {
        // A panic elsewhere while holding the lock leaves consistent state: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pairs currently held by legs of this allocator.
    pub fn in_use(&self) -> usize {
        self.lock().in_use
    }

    /// Whether `other` hands out from the same pool (a clone of this allocator).
    pub fn same_as(&self, other: &PortAllocator) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }

    /// The range handed out.
    pub fn range(&self) -> PortRange {
        self.lock().range
    }

    /// Binds the next free pair on `ip`: the RTP socket on the even port, RTCP on the odd one.
    pub fn allocate(&self, ip: IpAddr) -> Result<PortPair, RtpLegError> {
        let mut st = self.lock();
        let pairs = st.used.len();
        for step in 0..pairs {
            let index = (st.next + step) % pairs;
            if st.used[index] {
                continue;
            }
            let port = st.range.rtp_port(index);
            let Some(rtp) = try_bind(SocketAddr::new(ip, port))? else {
                continue;
            };
            let Some(rtcp) = try_bind(SocketAddr::new(ip, port + 1))? else {
                continue;
            };
            st.used[index] = true;
            st.in_use += 1;
            st.next = (index + 1) % pairs;
            return Ok(PortPair {
                rtp,
                rtcp,
                lease: PortLease {
                    state: Arc::clone(&self.state),
                    index,
                },
            });
        }
        Err(RtpLegError::Exhausted {
            min: st.range.min,
            max: st.range.max,
            in_use: st.in_use,
        })
    }
}

/// `Ok(None)` when the port is busy (try the next one), `Err` when binding cannot work at all.
fn try_bind(addr: SocketAddr) -> Result<Option<StdUdpSocket>, RtpLegError> {
    match StdUdpSocket::bind(addr) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Ok(None),
        Err(source) => Err(RtpLegError::Bind { addr, source }),
    }
}

/// Keeps a port pair reserved; dropping it gives the pair back.
#[derive(Debug)]
pub struct PortLease {
    state: Arc<Mutex<AllocState>>,
    index: usize,
}

impl Drop for PortLease {
    fn drop(&mut self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(used) = st.used.get_mut(self.index) {
            if *used {
                *used = false;
                st.in_use -= 1;
            }
        }
    }
}

/// Two bound sockets and the lease that keeps their ports reserved.
#[derive(Debug)]
pub struct PortPair {
    /// Bound to the even port.
    pub rtp: StdUdpSocket,
    /// Bound to the odd port above it.
    pub rtcp: StdUdpSocket,
    /// Drop after the sockets (field order) to return the ports.
    pub lease: PortLease,
}

/// An `Option<SocketAddr>` readable without a lock (seqlock; writers serialise elsewhere).
#[derive(Debug, Default)]
struct AddrCell {
    seq: AtomicU32,
    words: [AtomicU64; 3],
}

impl AddrCell {
    fn encode(addr: Option<SocketAddr>) -> [u64; 3] {
        match addr {
            None => [0; 3],
            Some(SocketAddr::V4(a)) => [
                4 | u64::from(a.port()) << 8,
                u64::from(u32::from(*a.ip())),
                0,
            ],
            Some(SocketAddr::V6(a)) => {
                let ip = u128::from(*a.ip());
                [
                    6 | u64::from(a.port()) << 8 | u64::from(a.scope_id()) << 24,
                    (ip >> 64) as u64,
                    ip as u64,
                ]
            }
        }
    }

    fn decode(w: [u64; 3]) -> Option<SocketAddr> {
        let port = (w[0] >> 8) as u16;
        match w[0] & 0xFF {
            4 => Some(SocketAddr::new(
                IpAddr::from((w[1] as u32).to_be_bytes()),
                port,
            )),
            6 => {
                let ip = Ipv6Addr::from((u128::from(w[1]) << 64) | u128::from(w[2]));
                Some(SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    port,
                    0,
                    (w[0] >> 24) as u32,
                )))
            }
            _ => None,
        }
    }

    fn load(&self) -> Option<SocketAddr> {
        loop {
            let before = self.seq.load(Ordering::Acquire);
            if before & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let w = [
                self.words[0].load(Ordering::Relaxed),
                self.words[1].load(Ordering::Relaxed),
                self.words[2].load(Ordering::Relaxed),
            ];
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == before {
                return Self::decode(w);
            }
        }
    }

    /// Only one writer at a time (callers hold the leg's latch mutex).
    fn store(&self, addr: Option<SocketAddr>) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        for (cell, w) in self.words.iter().zip(Self::encode(addr)) {
            cell.store(w, Ordering::Relaxed);
        }
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }
}

/// Per-leg traffic counters, updated with relaxed atomics; the metrics read them any time.
#[derive(Debug, Default)]
pub struct RtpCounters {
    /// Valid RTP packets received.
    pub packets_in: AtomicU64,
    /// Bytes of valid RTP received.
    pub bytes_in: AtomicU64,
    /// Packets sent.
    pub packets_out: AtomicU64,
    /// Bytes sent.
    pub bytes_out: AtomicU64,
    /// Datagrams dropped as not RTP (garbage, truncated, wrong version).
    pub dropped_malformed: AtomicU64,
    /// Valid RTP dropped because it came from a source the strict-source rule does not accept.
    pub dropped_source: AtomicU64,
    /// STUN datagrams (this port does no ICE: a probe or garbage), dropped.
    pub stun_in: AtomicU64,
    /// DTLS datagrams (this port does no DTLS: a probe or garbage), dropped.
    pub dtls_in: AtomicU64,
    /// RTCP packets received, multiplexed on the RTP port or on the RTCP port (not
    /// interpreted; see [`RtpLeg::count_rtcp`]).
    pub rtcp_in: AtomicU64,
    /// Times the send target moved to a new RTP source.
    pub relatched: AtomicU64,
}

/// A plain copy of [`RtpCounters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtpStats {
    /// See [`RtpCounters::packets_in`].
    pub packets_in: u64,
    /// See [`RtpCounters::bytes_in`].
    pub bytes_in: u64,
    /// See [`RtpCounters::packets_out`].
    pub packets_out: u64,
    /// See [`RtpCounters::bytes_out`].
    pub bytes_out: u64,
    /// See [`RtpCounters::dropped_malformed`].
    pub dropped_malformed: u64,
    /// See [`RtpCounters::dropped_source`].
    pub dropped_source: u64,
    /// See [`RtpCounters::stun_in`].
    pub stun_in: u64,
    /// See [`RtpCounters::dtls_in`].
    pub dtls_in: u64,
    /// See [`RtpCounters::rtcp_in`].
    pub rtcp_in: u64,
    /// See [`RtpCounters::relatched`].
    pub relatched: u64,
}

impl RtpCounters {
    /// Reads every counter.
    pub fn snapshot(&self) -> RtpStats {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RtpStats {
            packets_in: r(&self.packets_in),
            bytes_in: r(&self.bytes_in),
            packets_out: r(&self.packets_out),
            bytes_out: r(&self.bytes_out),
            dropped_malformed: r(&self.dropped_malformed),
            dropped_source: r(&self.dropped_source),
            stun_in: r(&self.stun_in),
            dtls_in: r(&self.dtls_in),
            rtcp_in: r(&self.rtcp_in),
            relatched: r(&self.relatched),
        }
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// One call's RTP endpoint toward the PBX. Share it in an `Arc`: `send`, `recv` and
/// `set_remote` all take `&self` and may run in different tasks.
#[derive(Debug)]
pub struct RtpLeg {
    socket: UdpSocket,
    /// The odd port: RTCP is only counted (a sign of life for the RTP timeout).
    rtcp: UdpSocket,
    local: SocketAddr,
    source: Mutex<StrictSource>,
    /// Mirrors `source.target()` for the send path.
    target: AddrCell,
    counters: Arc<RtpCounters>,
    _lease: PortLease,
}

impl RtpLeg {
    /// Binds a port pair from `allocator` on `ip` (the address in our SDP, or the listen address
    /// when a public IP is advertised). Must run inside the tokio runtime.
    pub fn bind(ip: IpAddr, allocator: &PortAllocator) -> Result<RtpLeg, RtpLegError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(RtpLegError::NoRuntime);
        }
        let pair = allocator.allocate(ip)?;
        pair.rtp.set_nonblocking(true)?;
        let local = pair.rtp.local_addr()?;
        let socket = UdpSocket::from_std(pair.rtp)?;
        pair.rtcp.set_nonblocking(true)?;
        let rtcp = UdpSocket::from_std(pair.rtcp)?;
        Ok(RtpLeg {
            socket,
            rtcp,
            local,
            source: Mutex::new(StrictSource::default()),
            target: AddrCell::default(),
            counters: Arc::new(RtpCounters::default()),
            _lease: pair.lease,
        })
    }

    /// Our RTP address (port for the SDP `m=` line).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Our RTCP address (RTP port + 1).
    pub fn rtcp_addr(&self) -> io::Result<SocketAddr> {
        self.rtcp.local_addr()
    }

    fn update<T>(&self, f: impl FnOnce(&mut StrictSource) -> T) -> T {
        let mut source = self.source.lock().unwrap_or_else(|e| e.into_inner());
        let before = source.target();
        let result = f(&mut source);
        let after = source.target();
        if after != before {
            self.target.store(after);
        }
        result
    }

    /// The peer's address from SDP (answer, or a re-INVITE's/UPDATE's offer): media goes there
    /// and the source rule starts over when it changed.
    pub fn set_remote(&self, addr: SocketAddr) {
        self.update(|s| s.set_signalled(addr));
    }

    /// Where `send` goes now.
    pub fn remote(&self) -> Option<SocketAddr> {
        self.target.load()
    }

    /// Whether RTCP from `source` counts as a sign of life: only from the host media goes to,
    /// so a stranger's RTCP cannot keep a dead call alive past the RTP timeout.
    fn rtcp_from_peer(&self, source: SocketAddr) -> bool {
        self.target.load().is_some_and(|t| t.ip() == source.ip())
    }

    /// Reads the RTCP port until the socket fails, counting datagrams from the peer's host in
    /// `rtcp_in`; run it in a task of the call (the packets themselves are not used).
    pub async fn count_rtcp(&self) {
        let mut buf = [0u8; 1500];
        loop {
            match self.rtcp.recv_from(&mut buf).await {
                Ok((_, source)) if self.rtcp_from_peer(source) => bump(&self.counters.rtcp_in, 1),
                Ok(_) => bump(&self.counters.dropped_source, 1),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
                    ) => {}
                Err(_) => return,
            }
        }
    }

    /// Sends one RTP packet to the current target.
    pub async fn send(&self, packet: &[u8]) -> Result<usize, RtpLegError> {
        let target = self.target.load().ok_or(RtpLegError::NoRemote)?;
        let n = self.socket.send_to(packet, target).await?;
        bump(&self.counters.packets_out, 1);
        bump(&self.counters.bytes_out, n as u64);
        Ok(n)
    }

    /// Receives the next valid RTP packet from the accepted source into `buf`; returns its length
    /// and source.
    ///
    /// Malformed datagrams, STUN, DTLS, multiplexed RTCP and RTP from a source the strict-source
    /// rule refuses are counted and skipped. `buf` must be larger
    /// than any packet (1500 bytes is plenty): a datagram that fills it may be truncated and is
    /// dropped as malformed.
    pub async fn recv(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr), RtpLegError> {
        loop {
            let (n, source) = match self.socket.recv_from(buf).await {
                Ok(r) => r,
                // ICMP errors from an earlier send surface here on some systems: not fatal.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e.into()),
            };
            if n >= buf.len() {
                bump(&self.counters.dropped_malformed, 1);
                continue;
            }
            let arrival = match RtpPacket::parse(&buf[..n]) {
                Ok(p) => RtpArrival {
                    source,
                    ssrc: p.ssrc,
                    sequence: p.sequence,
                    at: std::time::Instant::now(),
                },
                Err(RtpError::Rtcp(_)) => {
                    let counter = if self.rtcp_from_peer(source) {
                        &self.counters.rtcp_in
                    } else {
                        &self.counters.dropped_source
                    };
                    bump(counter, 1);
                    continue;
                }
                Err(_) => {
                    let counter = match classify(&buf[..n]) {
                        DatagramKind::Stun => &self.counters.stun_in,
                        DatagramKind::Dtls => &self.counters.dtls_in,
                        _ => &self.counters.dropped_malformed,
                    };
                    bump(counter, 1);
                    continue;
                }
            };
            match self.update(|s| s.on_packet(arrival)) {
                SourceVerdict::Drop => {
                    bump(&self.counters.dropped_source, 1);
                    continue;
                }
                SourceVerdict::Moved => bump(&self.counters.relatched, 1),
                SourceVerdict::Accept => {}
            }
            bump(&self.counters.packets_in, 1);
            bump(&self.counters.bytes_in, n as u64);
            return Ok((n, source));
        }
    }

    /// The leg's counters, for metrics and the status page.
    pub fn counters(&self) -> &Arc<RtpCounters> {
        &self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_count_even_odd_pairs() {
        assert_eq!(PortRange::new(20000, 20001).unwrap().pairs(), 1);
        assert_eq!(PortRange::new(20000, 20003).unwrap().pairs(), 2);
        assert_eq!(PortRange::new(20001, 20004).unwrap().pairs(), 1);
        assert_eq!(PortRange::new(20000, 30000).unwrap().pairs(), 5000);
        assert_eq!(PortRange::new(65534, 65535).unwrap().pairs(), 1);
        for (min, max) in [(20000, 20000), (20001, 20002), (30000, 20000), (0, 1)] {
            assert!(
                matches!(
                    PortRange::new(min, max),
                    Err(RtpLegError::EmptyRange { .. })
                ),
                "{min}..={max}"
            );
        }
        assert_eq!(
            PortRange::from_config(&MediaConfig::default()).unwrap(),
            PortRange::new(20000, 30000).unwrap()
        );
    }

    #[test]
    fn addr_cell_round_trips_every_kind_of_address() {
        let cell = AddrCell::default();
        assert_eq!(cell.load(), None);
        let v6 = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 5004, 0, 3));
        for a in [
            Some(addr("127.0.0.1:20000")),
            Some(addr("255.255.255.255:65535")),
            Some(addr("[2001:db8::1]:1")),
            Some(v6),
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)),
            None,
        ] {
            cell.store(a);
            assert_eq!(cell.load(), a);
        }
    }

    #[test]
    fn bind_outside_runtime_is_an_error() {
        let alloc = PortAllocator::new(PortRange::new(20000, 20001).unwrap());
        assert!(matches!(
            RtpLeg::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), &alloc),
            Err(RtpLegError::NoRuntime)
        ));
        assert_eq!(alloc.in_use(), 0);
    }

    #[test]
    fn addr_cell_reads_are_never_torn() {
        let a = Some(addr("[2001:db8::1]:1111"));
        let b = Some(addr("10.9.8.7:2222"));
        let cell = Arc::new(AddrCell::default());
        cell.store(a);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (cell, stop) = (Arc::clone(&cell), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut reads = 0u64;
                    while !stop.load(Ordering::Relaxed) || reads < 1000 {
                        let v = cell.load();
                        assert!(v == a || v == b, "torn read {v:?}");
                        reads += 1;
                    }
                })
            })
            .collect();
        for i in 0..200_000 {
            cell.store(if i % 2 == 0 { b } else { a });
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
    }
}
