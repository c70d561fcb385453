//! The browser leg as the call's media task drives it itself: the sans-IO [`BrowserLeg`] and the
//! transport its one host candidate names (a socket on a port from the configured range, or the
//! call's share of `[media] webrtc_single_port`). No task, channel or timer of its own: the media
//! task reads the transport, feeds datagrams and time in, and sends what the leg wants sent
//! straight from its loop.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use tokio::net::UdpSocket;

use super::browser_transport::BrowserTransport;
use super::media_socket::{Datagram, MediaSocket};
use crate::media::browser_leg::ice_demux::IceDemuxError;
use crate::media::browser_leg::single_port::{SinglePort, SinglePortError};
use crate::media::browser_leg::{BrowserLeg, BrowserLegEvent};
use crate::media::rtp_leg::RtpLegError;
use crate::media::transcode::RtpStamp;
use crate::media::webrtc_leg::{InboundRtp, NegotiatedCodecs, WebRtcLegError, WebRtcSettings};

/// New credentials tried when a call's ICE ufrag is already taken on the shared port.
const UFRAG_ATTEMPTS: usize = 4;

/// One browser leg with its transport, owned by the call's media task.
pub struct OwnedBrowserLeg {
    leg: BrowserLeg,
    transport: BrowserTransport,
    local: SocketAddr,
    /// Datagrams the socket refused (full buffer): dropped like lost packets, counted.
    send_drops: u64,
}

impl std::fmt::Debug for OwnedBrowserLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedBrowserLeg")
            .field("local", &self.local)
            .field("leg", &self.leg)
            .finish_non_exhaustive()
    }
}

fn io_error(e: io::Error) -> WebRtcLegError {
    WebRtcLegError::NoFreePort(RtpLegError::Io(e))
}

impl OwnedBrowserLeg {
    /// Binds the leg's socket (a pair from `settings.ports` on the first bind address, its odd
    /// port unused because of rtcp-mux; an ephemeral port without a range) and answers `offer`
    /// with that address as the host candidate. Returns the leg and the answer SDP.
    pub fn answer(
        settings: &WebRtcSettings,
        offer: &str,
    ) -> Result<(OwnedBrowserLeg, String), WebRtcLegError> {
        let ip = settings
            .bind_ips
            .first()
            .copied()
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let (socket, lease) = match &settings.ports {
            Some(ports) => {
                let pair = ports.allocate(ip)?;
                drop(pair.rtcp);
                (pair.rtp, Some(pair.lease))
            }
            None => (std::net::UdpSocket::bind((ip, 0)).map_err(io_error)?, None),
        };
        socket.set_nonblocking(true).map_err(io_error)?;
        let socket = MediaSocket::new(UdpSocket::from_std(socket).map_err(io_error)?);
        let local = socket.local_addr().map_err(io_error)?;
        let (leg, answer) = BrowserLeg::answer(Instant::now(), settings, &[local], offer)?;
        let transport = BrowserTransport::Own {
            socket,
            _lease: lease,
        };
        Ok((OwnedBrowserLeg::new(leg, transport, local), answer))
    }

    /// Answers `offer` with the shared port as the host candidate and registers the leg's ICE
    /// credentials there (new ones if its ufrag is taken). The registration lasts as long as
    /// the leg.
    pub async fn answer_on_shared_port(
        settings: &WebRtcSettings,
        port: &SinglePort,
        offer: &str,
    ) -> Result<(OwnedBrowserLeg, String), WebRtcLegError> {
        let local = port.local_addr();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (leg, answer) = BrowserLeg::answer(Instant::now(), settings, &[local], offer)?;
            match port.attach(leg.ice_credentials()).await {
                Ok(share) => {
                    let transport = BrowserTransport::Shared(share);
                    return Ok((OwnedBrowserLeg::new(leg, transport, local), answer));
                }
                Err(SinglePortError::Demux(IceDemuxError::DuplicateUfrag(_)))
                    if attempts < UFRAG_ATTEMPTS => {}
                Err(e) => {
                    return Err(WebRtcLegError::NoFreePort(RtpLegError::Io(
                        io::Error::other(e),
                    )))
                }
            }
        }
    }

    fn new(leg: BrowserLeg, transport: BrowserTransport, local: SocketAddr) -> OwnedBrowserLeg {
        OwnedBrowserLeg {
            leg,
            transport,
            local,
            send_drops: 0,
        }
    }

    /// Payload types agreed with the browser.
    pub fn negotiated(&self) -> Option<NegotiatedCodecs> {
        self.leg.negotiated()
    }

    /// Waits for the next datagram from the browser's side.
    pub async fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.transport.recv_from(buf).await
    }

    /// A datagram already waiting; `WouldBlock` when there is none.
    pub fn try_recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.transport.try_recv_from(buf)
    }

    /// From now on a socket of the leg's own is read on the task's tick
    /// ([`Self::read_ticked`]), not on readiness (see `media_socket`). The shared port's
    /// datagrams keep coming through its queue, on readiness.
    pub fn move_to_tick(&mut self) -> io::Result<()> {
        match self.transport.own_socket() {
            Some(socket) => socket.move_to_tick(),
            None => Ok(()),
        }
    }

    /// Whether the leg is read on the task's tick (else on readiness, [`Self::recv_from`]).
    pub fn ticked(&mut self) -> bool {
        self.transport.own_socket().is_some_and(|s| s.ticked())
    }

    /// Feeds the leg every datagram queued on a socket read on the tick, at most `batches` ×
    /// 16, each with its arrival time, and hands each RTP packet they carried to `on_rtp` as
    /// soon as it is out of the stack, so no batch of packets waits in the stack's queues (they
    /// would keep a receive buffer each, and the queues would keep the capacity); then drain
    /// events and transmits as after [`Self::on_datagram`].
    pub fn read_ticked(
        &mut self,
        batches: usize,
        mut on_rtp: impl FnMut(Instant, InboundRtp),
    ) -> io::Result<usize> {
        let OwnedBrowserLeg {
            leg,
            transport,
            local,
            ..
        } = self;
        let Some(socket) = transport.own_socket() else {
            return Ok(0);
        };
        socket.read_batch(batches, |d: Datagram<'_>| {
            leg.handle_datagram(d.at, *local, d.from, d.bytes);
            while let Some((at, rtp)) = leg.poll_media() {
                on_rtp(at, rtp);
            }
        })
    }

    /// Whether packets to the browser can be encrypted (ICE and DTLS completed once).
    pub fn ready(&self) -> bool {
        self.leg.media_ready()
    }

    /// Datagrams from the browser's side refused on the media path (see
    /// [`BrowserLeg::rejected_media`]).
    pub fn rejected_media(&self) -> u64 {
        self.leg.rejected_media()
    }

    /// Datagrams dropped because the socket's buffer was full.
    pub fn send_drops(&self) -> u64 {
        self.send_drops
    }

    /// Feeds one datagram from the browser's side; then drain with [`Self::poll_media`],
    /// [`Self::poll_event`] and [`Self::transmit`].
    pub fn on_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.leg.handle_datagram(now, self.local, from, datagram);
    }

    /// When [`Self::on_timeout`] is next due.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        self.leg.poll_timeout()
    }

    /// Runs the leg's timers (ICE checks and consent, DTLS retransmits, RTCP) if they are due.
    pub fn on_timeout(&mut self, now: Instant) {
        if self.leg.poll_timeout().is_some_and(|at| at <= now) {
            self.leg.handle_timeout(now);
        }
    }

    /// Encrypts and sends one packet to the browser. Before media is ready, or with a payload
    /// type the browser did not agree to, the packet is dropped (the pipeline only sends
    /// negotiated types once [`Self::ready`]). Sent at once rather than once per tick: the
    /// stack's queues keep the capacity of the most packets they ever held (a burst of held
    /// audio would cost every call tens of KB for good), and a tick sends one packet anyway.
    pub fn send_rtp(&mut self, now: Instant, payload_type: u8, stamp: RtpStamp, payload: &[u8]) {
        let _ = self.leg.send_rtp(
            now,
            payload_type,
            stamp.seq,
            stamp.timestamp,
            stamp.marker,
            payload,
        );
        self.transmit();
    }

    /// Sends every datagram the leg queued. UDP: a full socket buffer drops it (counted); the
    /// task never waits.
    pub fn transmit(&mut self) {
        while let Some(t) = self.leg.poll_transmit() {
            if self.transport.try_send_to(&t.payload, t.to).is_err() {
                self.send_drops += 1;
            }
        }
    }

    /// The next RTP packet from the browser, with when its datagram arrived.
    pub fn poll_media(&mut self) -> Option<(Instant, InboundRtp)> {
        self.leg.poll_media()
    }

    /// The next state change or receiver report.
    pub fn poll_event(&mut self) -> Option<BrowserLegEvent> {
        self.leg.poll_event()
    }

    /// Adds a candidate the browser trickled (JSON of an `RTCIceCandidate`).
    pub fn add_remote_candidate(&mut self, json: &str) -> Result<(), WebRtcLegError> {
        self.leg.add_remote_candidate(json)
    }

    /// Closes the connection: the DTLS close_notify goes out now; the socket and its port are
    /// released when the leg is dropped.
    pub fn close(&mut self) {
        self.leg.close();
        self.transmit();
    }
}
