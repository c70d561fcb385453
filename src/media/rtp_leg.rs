//! The SIP side's RTP socket: ports from the configured range, symmetric RTP, counters.
//!
//! [`PortAllocator`] hands out even RTP ports with the odd RTCP port above them, both bound, from
//! `media.rtp_port_min..=rtp_port_max`; ports busy in another process are skipped and ports come
//! back when the [`RtpLeg`] is dropped. [`RtpLeg`] sends to the SDP address until a source is
//! learned, then to that source (symmetric RTP, RFC 4961, so phones behind NAT work), and accepts
//! packets only from it: the strict-source rule of [`StrictSource`] decides, so a stranger's
//! packets are dropped and counted, never played or latched onto. The rule and the counters are
//! [`SipRtpCore`], sans-IO and owned by one task: no lock, no atomic, no allocation per packet.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

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

/// What the SIP leg counted: plain numbers owned by the leg (one owner, so no atomics or lock);
/// the call's media task publishes them to the metrics once a second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtpStats {
    /// Valid RTP packets received from the accepted source.
    pub packets_in: u64,
    /// Bytes of valid RTP received.
    pub bytes_in: u64,
    /// Packets sent.
    pub packets_out: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Packets not sent: no target yet, or the socket refused them (full buffer, ICMP error).
    pub send_failed: u64,
    /// Datagrams dropped as not RTP (garbage, truncated, wrong version).
    pub dropped_malformed: u64,
    /// Valid RTP (or RTCP) dropped because it came from a source the strict-source rule does
    /// not accept.
    pub dropped_source: u64,
    /// STUN datagrams (this port does no ICE: a probe or garbage), dropped.
    pub stun_in: u64,
    /// DTLS datagrams (this port does no DTLS: a probe or garbage), dropped.
    pub dtls_in: u64,
    /// RTCP packets from the peer's host, multiplexed on the RTP port or on the RTCP port (not
    /// interpreted: a sign of life for the RTP timeout).
    pub rtcp_in: u64,
    /// Times the send target moved to a new RTP source.
    pub relatched: u64,
}

impl RtpStats {
    /// Datagrams refused for any reason (malformed, stranger, STUN, DTLS): what a flood of bad
    /// packets moves.
    pub fn refused(&self) -> u64 {
        self.dropped_malformed + self.dropped_source + self.stun_in + self.dtls_in
    }
}

/// The SIP leg without its sockets (sans-IO): fed each received datagram with its source and
/// time, it says whether it is RTP to play; it knows where to send and counts everything.
#[derive(Debug, Default)]
pub struct SipRtpCore {
    source: StrictSource,
    stats: RtpStats,
}

impl SipRtpCore {
    /// The peer's address from SDP (answer, or a re-INVITE's/UPDATE's offer): media goes there
    /// and the source rule starts over when it changed.
    pub fn set_remote(&mut self, addr: SocketAddr) {
        self.source.set_signalled(addr);
    }

    /// Where to send now.
    pub fn target(&self) -> Option<SocketAddr> {
        self.source.target()
    }

    /// Counts one datagram from the RTCP port: a sign of life only from the host media goes
    /// to, so a stranger's RTCP cannot keep a dead call alive past the RTP timeout.
    pub fn on_rtcp(&mut self, source: SocketAddr) {
        if self.rtcp_from_peer(source) {
            self.stats.rtcp_in += 1;
        } else {
            self.stats.dropped_source += 1;
        }
    }

    fn rtcp_from_peer(&self, source: SocketAddr) -> bool {
        self.target().is_some_and(|t| t.ip() == source.ip())
    }

    /// One datagram from the RTP port, `truncated` when it filled the receive buffer. Returns
    /// the packet when it is valid RTP from the accepted source; malformed datagrams, STUN,
    /// DTLS, multiplexed RTCP and strangers' RTP are counted and give `None`.
    pub fn on_datagram<'a>(
        &mut self,
        datagram: &'a [u8],
        truncated: bool,
        source: SocketAddr,
        at: Instant,
    ) -> Option<RtpPacket<'a>> {
        if truncated {
            self.stats.dropped_malformed += 1;
            return None;
        }
        let packet = match RtpPacket::parse(datagram) {
            Ok(p) => p,
            Err(RtpError::Rtcp(_)) => {
                self.on_rtcp(source);
                return None;
            }
            Err(_) => {
                let counter = match classify(datagram) {
                    DatagramKind::Stun => &mut self.stats.stun_in,
                    DatagramKind::Dtls => &mut self.stats.dtls_in,
                    _ => &mut self.stats.dropped_malformed,
                };
                *counter += 1;
                return None;
            }
        };
        let arrival = RtpArrival {
            source,
            ssrc: packet.ssrc,
            sequence: packet.sequence,
            at,
        };
        match self.source.on_packet(arrival) {
            SourceVerdict::Drop => {
                self.stats.dropped_source += 1;
                return None;
            }
            SourceVerdict::Moved => self.stats.relatched += 1,
            SourceVerdict::Accept => {}
        }
        self.stats.packets_in += 1;
        self.stats.bytes_in += datagram.len() as u64;
        Some(packet)
    }

    /// Counts a send: `Some(bytes)` when it went out, `None` when it did not.
    pub fn on_sent(&mut self, sent: Option<usize>) {
        match sent {
            Some(n) => {
                self.stats.packets_out += 1;
                self.stats.bytes_out += n as u64;
            }
            None => self.stats.send_failed += 1,
        }
    }

    /// Everything counted so far.
    pub fn stats(&self) -> RtpStats {
        self.stats
    }
}

/// Whether a receive error is an ICMP report of an earlier send (some systems surface those on
/// the next read): not fatal, read on.
pub fn is_icmp_echo(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
    )
}

/// One call's RTP endpoint toward the PBX: two sockets around a [`SipRtpCore`]. Owned by one
/// task (the call's media task takes it apart with [`RtpLeg::into_parts`]).
#[derive(Debug)]
pub struct RtpLeg {
    socket: UdpSocket,
    /// The odd port: RTCP is only counted (a sign of life for the RTP timeout).
    rtcp: UdpSocket,
    local: SocketAddr,
    core: SipRtpCore,
    lease: PortLease,
}

/// An [`RtpLeg`] taken apart, for a task that polls the sockets itself.
#[derive(Debug)]
pub struct RtpLegParts {
    /// The RTP socket (even port).
    pub socket: UdpSocket,
    /// The RTCP socket (odd port).
    pub rtcp: UdpSocket,
    /// The sans-IO leg.
    pub core: SipRtpCore,
    /// Keeps the ports reserved; drop it after the sockets.
    pub lease: PortLease,
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
            core: SipRtpCore::default(),
            lease: pair.lease,
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

    /// See [`SipRtpCore::set_remote`].
    pub fn set_remote(&mut self, addr: SocketAddr) {
        self.core.set_remote(addr);
    }

    /// Where `send` goes now.
    pub fn remote(&self) -> Option<SocketAddr> {
        self.core.target()
    }

    /// Sends one RTP packet to the current target.
    pub async fn send(&mut self, packet: &[u8]) -> Result<usize, RtpLegError> {
        let Some(target) = self.core.target() else {
            self.core.on_sent(None);
            return Err(RtpLegError::NoRemote);
        };
        let sent = self.socket.send_to(packet, target).await;
        self.core.on_sent(sent.as_ref().ok().copied());
        Ok(sent?)
    }

    /// Receives the next valid RTP packet from the accepted source into `buf`; returns its length
    /// and source. Everything else is counted and skipped (see [`SipRtpCore::on_datagram`]).
    /// `buf` must be larger than any packet (1500 bytes is plenty): a datagram that fills it may
    /// be truncated and is dropped as malformed.
    pub async fn recv(&mut self, buf: &mut [u8]) -> Result<(usize, SocketAddr), RtpLegError> {
        loop {
            let (n, source) = match self.socket.recv_from(buf).await {
                Ok(r) => r,
                Err(e) if is_icmp_echo(&e) => continue,
                Err(e) => return Err(e.into()),
            };
            let truncated = n >= buf.len();
            let at = Instant::now();
            if self
                .core
                .on_datagram(&buf[..n], truncated, source, at)
                .is_some()
            {
                return Ok((n, source));
            }
        }
    }

    /// What the leg counted.
    pub fn stats(&self) -> RtpStats {
        self.core.stats()
    }

    /// The sockets, the sans-IO leg and the port lease, for a task that owns them all.
    pub fn into_parts(self) -> RtpLegParts {
        RtpLegParts {
            socket: self.socket,
            rtcp: self.rtcp,
            core: self.core,
            lease: self.lease,
        }
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
    fn bind_outside_runtime_is_an_error() {
        let alloc = PortAllocator::new(PortRange::new(20000, 20001).unwrap());
        assert!(matches!(
            RtpLeg::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), &alloc),
            Err(RtpLegError::NoRuntime)
        ));
        assert_eq!(alloc.in_use(), 0);
    }

    fn rtp(ssrc: u32, seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 160, 0, 0, 0, 0];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xFF; 160]);
        p
    }

    #[test]
    fn the_core_plays_the_peers_rtp_and_counts_everything_else_by_kind() {
        let t0 = Instant::now();
        let phone = addr("127.0.0.1:4000");
        let stranger = addr("127.0.0.66:4000");
        let mut core = SipRtpCore::default();
        core.set_remote(phone);
        let good = rtp(7, 1);
        let packet = core.on_datagram(&good, false, phone, t0).expect("played");
        assert_eq!((packet.ssrc, packet.sequence), (7, 1));
        assert!(core.on_datagram(&good, true, phone, t0).is_none());
        assert!(core.on_datagram(b"hi", false, phone, t0).is_none());
        let mut stun = [0u8; 20];
        stun[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
        assert!(core.on_datagram(&stun, false, stranger, t0).is_none());
        let dtls = [22u8, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(core.on_datagram(&dtls, false, stranger, t0).is_none());
        let mut rtcp = [0u8; 8];
        rtcp[0] = 0x80;
        rtcp[1] = 201;
        assert!(core.on_datagram(&rtcp, false, phone, t0).is_none());
        assert!(core.on_datagram(&rtcp, false, stranger, t0).is_none());
        assert!(core.on_datagram(&rtp(9, 1), false, stranger, t0).is_none());
        core.on_rtcp(phone);
        core.on_rtcp(stranger);
        let s = core.stats();
        assert_eq!((s.packets_in, s.bytes_in), (1, good.len() as u64));
        assert_eq!(s.dropped_malformed, 2);
        assert_eq!((s.stun_in, s.dtls_in), (1, 1));
        assert_eq!(s.rtcp_in, 2);
        assert_eq!(s.dropped_source, 3);
        assert_eq!(s.refused(), 7);
        assert_eq!(core.target(), Some(phone));
    }

    #[test]
    fn a_flood_of_bad_datagrams_is_only_counted_and_the_peer_still_plays() {
        let t0 = Instant::now();
        let phone = addr("127.0.0.1:4000");
        let mut core = SipRtpCore::default();
        core.set_remote(phone);
        assert!(core.on_datagram(&rtp(7, 0), false, phone, t0).is_some());
        for i in 0..10_000u16 {
            let junk = [0x55u8; 40];
            assert!(core
                .on_datagram(&junk, false, addr("127.0.0.66:1"), t0)
                .is_none());
            assert!(core
                .on_datagram(&rtp(1, i), false, addr("127.0.0.66:2"), t0)
                .is_none());
        }
        assert!(core.on_datagram(&rtp(7, 1), false, phone, t0).is_some());
        let s = core.stats();
        assert_eq!((s.dropped_malformed, s.dropped_source), (10_000, 10_000));
        assert_eq!(s.packets_in, 2);
    }

    #[test]
    fn sends_count_bytes_and_failures() {
        let mut core = SipRtpCore::default();
        core.on_sent(Some(172));
        core.on_sent(None);
        let s = core.stats();
        assert_eq!((s.packets_out, s.bytes_out, s.send_failed), (1, 172, 1));
    }
}
