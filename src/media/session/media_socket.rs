//! A media socket of the call's task, read one of two ways. While a call sets up (ICE, DTLS)
//! the task waits on the socket's readiness like any tokio socket, so a handshake never waits
//! for a tick. Once the browser leg is up the socket leaves the reactor ([`MediaSocket::move_to_tick`])
//! and the task drains it on its own 20 ms tick in one `recvmmsg`: no wake-up, epoll event or
//! `EAGAIN` read per packet. The kernel stamps each datagram's arrival (`SO_TIMESTAMPNS`), so
//! the jitter buffers still see when a packet arrived, not when it was read; and as frames are
//! only taken on that tick, reading just before it adds no delay to the audio.

use std::cell::RefCell;
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::media::rtp_leg::is_icmp_echo;

/// Datagrams one `recvmmsg` takes.
const BATCH: usize = 16;

/// Receive buffer per datagram: larger than any RTP packet, so a datagram that fills it was
/// truncated.
const DATAGRAM: usize = 1500;

/// Control buffer per datagram, in 8-byte words (aligned for `cmsghdr`): room for the
/// `SCM_TIMESTAMPNS` message (32 bytes on 64-bit Linux) with margin.
const CONTROL_WORDS: usize = 8;

/// A kernel arrival stamp further back than this is not believed (the wall clock stepped):
/// the read time is used instead.
const STAMP_TRUST: Duration = Duration::from_secs(1);

/// One datagram as a batch read hands it over.
#[derive(Debug)]
pub struct Datagram<'a> {
    /// The bytes (at most [`DATAGRAM`]).
    pub bytes: &'a [u8],
    /// It did not fit the buffer.
    pub truncated: bool,
    /// Where it came from.
    pub from: SocketAddr,
    /// When it arrived (kernel stamp), on the monotonic clock.
    pub at: Instant,
}

/// How the task reads the socket now.
#[derive(Debug)]
enum Mode {
    /// Readiness-driven, registered with tokio.
    Reactor(tokio::net::UdpSocket),
    /// Read on the task's tick; not registered with tokio.
    Tick(std::net::UdpSocket),
    /// Leaving the reactor failed: every read reports the error.
    Lost,
}

/// A call's UDP socket; see the module docs.
#[derive(Debug)]
pub struct MediaSocket {
    mode: Mode,
}

fn lost() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "socket lost leaving the reactor",
    )
}

impl MediaSocket {
    /// A socket read on readiness.
    pub fn new(socket: tokio::net::UdpSocket) -> MediaSocket {
        MediaSocket {
            mode: Mode::Reactor(socket),
        }
    }

    /// Whether the socket is read on the tick ([`Self::read_batch`]) rather than on readiness.
    pub fn ticked(&self) -> bool {
        !matches!(self.mode, Mode::Reactor(_))
    }

    /// Our address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.mode {
            Mode::Reactor(s) => s.local_addr(),
            Mode::Tick(s) => s.local_addr(),
            Mode::Lost => Err(lost()),
        }
    }

    /// The next datagram, when the socket is read on readiness; never completes once it is
    /// read on the tick. Cancel-safe.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        match &self.mode {
            Mode::Reactor(s) => s.recv_from(buf).await,
            Mode::Tick(_) | Mode::Lost => std::future::pending().await,
        }
    }

    /// A datagram if one is queued (`WouldBlock` otherwise).
    pub fn try_recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        match &self.mode {
            Mode::Reactor(s) => s.try_recv_from(buf),
            Mode::Tick(s) => s.recv_from(buf),
            Mode::Lost => Err(lost()),
        }
    }

    /// Sends without waiting: a full socket buffer is an error (the caller drops and counts).
    pub fn try_send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        match &self.mode {
            Mode::Reactor(s) => s.try_send_to(buf, to),
            Mode::Tick(s) => s.send_to(buf, to),
            Mode::Lost => Err(lost()),
        }
    }

    /// Takes the socket out of the reactor and asks the kernel to stamp arrivals: from now on
    /// the owner reads it with [`Self::read_batch`] on its tick. Idempotent. An error leaves it
    /// lost (every read reports it), or, when only the stamps were refused, read on the tick
    /// with the read time as arrival.
    pub fn move_to_tick(&mut self) -> io::Result<()> {
        let socket = match std::mem::replace(&mut self.mode, Mode::Lost) {
            Mode::Reactor(socket) => socket,
            other => {
                self.mode = other;
                return Ok(());
            }
        };
        // Still non-blocking after `into_std`.
        let socket = socket.into_std()?;
        let on: libc::c_int = 1;
        // SAFETY: a valid fd and a c_int option value of the size given.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        self.mode = Mode::Tick(socket);
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Hands every queued datagram to `on`, at most `batches` × 16 of them, in `recvmmsg` calls
    /// of 16; returns how many. Errors from ICMP (a port unreachable the peer caused) are
    /// skipped; any other error ends the read. Only for a socket read on the tick.
    pub fn read_batch(
        &self,
        batches: usize,
        mut on: impl FnMut(Datagram<'_>),
    ) -> io::Result<usize> {
        let socket = match &self.mode {
            Mode::Tick(s) => s,
            Mode::Reactor(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "batch read of a socket on the reactor",
                ))
            }
            Mode::Lost => return Err(lost()),
        };
        SCRATCH.with(|cell| {
            let mut guard = cell
                .try_borrow_mut()
                .map_err(|_| io::Error::other("nested batch read"))?;
            let scratch = guard.get_or_insert_with(Scratch::new);
            let mut total = 0;
            for _ in 0..batches {
                match scratch.recv(socket.as_raw_fd()) {
                    Ok(n) => {
                        let (mono, real) = (Instant::now(), realtime());
                        for i in 0..n {
                            if let Some(d) = scratch.datagram(i, mono, real) {
                                on(d);
                            }
                        }
                        total += n;
                        if n < BATCH {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if is_icmp_echo(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(total)
        })
    }
}

thread_local! {
    /// The batch buffers, one set per runtime thread (a read never awaits while it holds
    /// them), so a call costs no 24 KB of its own for them.
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// Buffers of one `recvmmsg`.
struct Scratch {
    bufs: Box<[[u8; DATAGRAM]; BATCH]>,
    names: Box<[libc::sockaddr_storage; BATCH]>,
    controls: Box<[[u64; CONTROL_WORDS]; BATCH]>,
    iovs: Box<[libc::iovec; BATCH]>,
    headers: Box<[libc::mmsghdr; BATCH]>,
}

impl Scratch {
    fn new() -> Scratch {
        // SAFETY: all-zero is a valid value of these plain C structs.
        let zeroed = || unsafe { MaybeUninit::<libc::sockaddr_storage>::zeroed().assume_init() };
        Scratch {
            bufs: Box::new([[0; DATAGRAM]; BATCH]),
            names: Box::new(std::array::from_fn(|_| zeroed())),
            controls: Box::new([[0; CONTROL_WORDS]; BATCH]),
            iovs: Box::new(std::array::from_fn(|_| libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            })),
            // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
            headers: Box::new(std::array::from_fn(|_| unsafe {
                MaybeUninit::<libc::mmsghdr>::zeroed().assume_init()
            })),
        }
    }

    /// One `recvmmsg` without waiting: how many datagrams it filled.
    fn recv(&mut self, fd: libc::c_int) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: DATAGRAM,
            };
            let h = &mut self.headers[i];
            h.msg_len = 0;
            h.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = self.controls[i].as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = size_of::<[u64; CONTROL_WORDS]>() as _;
            h.msg_hdr.msg_flags = 0;
        }
        // SAFETY: every header points into buffers owned by `self`, with their true lengths;
        // they live across the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Datagram `i` of the last [`Self::recv`]; `None` for an address family we do not speak.
    /// `mono` and `real` are one reading of both clocks, to place the kernel's wall-clock stamp
    /// on the monotonic clock.
    fn datagram(&self, i: usize, mono: Instant, real: Duration) -> Option<Datagram<'_>> {
        let h = &self.headers[i];
        let len = (h.msg_len as usize).min(DATAGRAM);
        let from = socket_addr(&self.names[i])?;
        let at = arrival(&h.msg_hdr)
            .and_then(|stamp| real.checked_sub(stamp))
            .filter(|&age| age <= STAMP_TRUST)
            .and_then(|age| mono.checked_sub(age))
            .unwrap_or(mono);
        Some(Datagram {
            bytes: &self.bufs[i][..len],
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || len >= DATAGRAM,
            from,
            at,
        })
    }
}

/// The wall clock now, as the kernel stamps datagrams.
fn realtime() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    timespec(&ts)
}

fn timespec(ts: &libc::timespec) -> Duration {
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// The `SCM_TIMESTAMPNS` stamp of a received message, if the kernel gave one.
fn arrival(msg: &libc::msghdr) -> Option<Duration> {
    // SAFETY: `msg` was filled by recvmmsg; the CMSG macros stay within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                return Some(timespec(&ts));
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    None
}

fn socket_addr(name: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(name.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (MediaSocket, std::net::UdpSocket) {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        (MediaSocket::new(socket), peer)
    }

    fn collect(socket: &MediaSocket, batches: usize) -> Vec<(Vec<u8>, bool, SocketAddr, Instant)> {
        let mut got = Vec::new();
        socket
            .read_batch(batches, |d| {
                got.push((d.bytes.to_vec(), d.truncated, d.from, d.at))
            })
            .unwrap();
        got
    }

    #[tokio::test]
    async fn a_ticked_socket_hands_over_every_queued_datagram_with_its_arrival_time() {
        let (mut socket, peer) = pair().await;
        socket.move_to_tick().unwrap();
        assert!(socket.ticked());
        let to = socket.local_addr().unwrap();
        let before = Instant::now();
        for i in 0..40u8 {
            peer.send_to(&[128, i, 7], to).unwrap();
        }
        std::thread::sleep(Duration::from_millis(30));
        let read_at = Instant::now();
        let got = collect(&socket, 8);
        assert_eq!(got.len(), 40, "three recvmmsg calls take all 40");
        for (i, (bytes, truncated, from, at)) in got.iter().enumerate() {
            assert_eq!(bytes, &[128, i as u8, 7]);
            assert!(!truncated);
            assert_eq!(*from, peer.local_addr().unwrap());
            // Stamped when they arrived, ~30 ms before they were read.
            assert!(
                *at >= before - Duration::from_millis(5),
                "{i}: stamped before it was sent"
            );
            assert!(
                *at + Duration::from_millis(20) <= read_at,
                "{i}: stamped when read"
            );
        }
        assert!(
            collect(&socket, 8).is_empty(),
            "nothing queued: nothing read"
        );
    }

    #[tokio::test]
    async fn a_batch_read_stops_at_its_limit_and_the_rest_waits_for_the_next_tick() {
        let (mut socket, peer) = pair().await;
        socket.move_to_tick().unwrap();
        let to = socket.local_addr().unwrap();
        for i in 0..40u8 {
            peer.send_to(&[128, i], to).unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(collect(&socket, 1).len(), BATCH);
        assert_eq!(collect(&socket, 8).len(), 40 - BATCH);
    }

    #[tokio::test]
    async fn an_oversized_datagram_is_marked_truncated() {
        let (mut socket, peer) = pair().await;
        socket.move_to_tick().unwrap();
        peer.send_to(&[0x80; 2000], socket.local_addr().unwrap())
            .unwrap();
        std::thread::sleep(Duration::from_millis(10));
        let got = collect(&socket, 1);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.len(), DATAGRAM);
        assert!(got[0].1);
    }

    #[tokio::test]
    async fn a_socket_on_the_reactor_is_read_on_readiness_and_sends_either_way() {
        let (mut socket, peer) = pair().await;
        assert!(!socket.ticked());
        assert!(socket.read_batch(1, |_| {}).is_err());
        peer.send_to(b"\x80x", socket.local_addr().unwrap())
            .unwrap();
        let mut buf = [0; 64];
        let (n, from) = socket.recv_from(&mut buf).await.unwrap();
        assert_eq!(
            (&buf[..n], from),
            (&b"\x80x"[..], peer.local_addr().unwrap())
        );
        socket.move_to_tick().unwrap();
        socket.move_to_tick().unwrap();
        socket
            .try_send_to(b"back", peer.local_addr().unwrap())
            .unwrap();
        let n = peer.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"back");
        // Once ticked, readiness never completes.
        let waited =
            tokio::time::timeout(Duration::from_millis(20), socket.recv_from(&mut buf)).await;
        assert!(waited.is_err());
    }
}
