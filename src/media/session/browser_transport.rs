//! Where a call's browser leg sends and receives its datagrams: a socket of its own (a port
//! from the configured range), or its share of the one port every call uses
//! (`[media] webrtc_single_port`). The media task reads either the same way.

use std::io;
use std::net::SocketAddr;

use tokio::sync::mpsc::error::TryRecvError;

use super::media_socket::MediaSocket;
use crate::media::browser_leg::single_port::{PortShare, SinglePortError};
use crate::media::rtp_leg::PortLease;

/// The browser leg's datagram transport.
#[derive(Debug)]
pub enum BrowserTransport {
    /// A socket of the call's own; the lease keeps its port pair until dropped (after the
    /// socket: field order).
    Own {
        /// The socket its host candidate names (read on readiness while the call sets up, on
        /// the tick once it is up).
        socket: MediaSocket,
        /// The port pair's reservation, `None` for an ephemeral port.
        _lease: Option<PortLease>,
    },
    /// The call's share of the shared port: the port's reader routes the call's datagrams
    /// to it (see `media::browser_leg::single_port`); dropping it unregisters the call.
    Shared(PortShare),
}

fn port_closed() -> io::Error {
    io::Error::other(SinglePortError::Closed)
}

/// Copies a routed datagram into the task's buffer (a few hundred bytes: the leg reads from
/// one buffer whatever the transport).
fn deliver(buf: &mut [u8], (from, bytes): (SocketAddr, bytes::Bytes)) -> (usize, SocketAddr) {
    let n = bytes.len().min(buf.len());
    buf[..n].copy_from_slice(&bytes[..n]);
    (n, from)
}

impl BrowserTransport {
    /// Waits for the next datagram for this call.
    pub async fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        match self {
            BrowserTransport::Own { socket, .. } => socket.recv_from(buf).await,
            BrowserTransport::Shared(share) => match share.recv().await {
                Some(routed) => Ok(deliver(buf, routed)),
                None => Err(port_closed()),
            },
        }
    }

    /// A datagram already waiting; `WouldBlock` when there is none.
    pub fn try_recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        match self {
            BrowserTransport::Own { socket, .. } => socket.try_recv_from(buf),
            BrowserTransport::Shared(share) => match share.try_recv() {
                Ok(routed) => Ok(deliver(buf, routed)),
                Err(TryRecvError::Empty) => Err(io::ErrorKind::WouldBlock.into()),
                Err(TryRecvError::Disconnected) => Err(port_closed()),
            },
        }
    }

    /// The call's own socket (`None` on the shared port).
    pub fn own_socket(&mut self) -> Option<&mut MediaSocket> {
        match self {
            BrowserTransport::Own { socket, .. } => Some(socket),
            BrowserTransport::Shared(_) => None,
        }
    }

    /// Sends now or fails (a full socket buffer): never waits.
    pub fn try_send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<usize> {
        match self {
            BrowserTransport::Own { socket, .. } => socket.try_send_to(datagram, to),
            BrowserTransport::Shared(share) => share.socket().try_send_to(datagram, to),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::browser_leg::single_port::SinglePort;
    use crate::media::browser_leg::IceCredentials;

    #[tokio::test]
    async fn a_shared_transport_reads_what_the_port_routes_and_sends_from_it() {
        let port = SinglePort::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let credentials = IceCredentials {
            ufrag: "ufrag-one".into(),
            pwd: "password-of-call-one-0123".into(),
        };
        let share = port.attach(&credentials).await.unwrap();
        let mut transport = BrowserTransport::Shared(share);
        let mut buf = [0u8; 1500];
        assert_eq!(
            transport.try_recv_from(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let browser = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let check = crate::media::browser_leg::stun::build_binding_request(
            "ufrag-one:b",
            &credentials.pwd,
            [3; 12],
        );
        browser.send_to(&check, port.local_addr()).unwrap();
        let (n, from) = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            transport.recv_from(&mut buf),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            (&buf[..n], from),
            (&check[..], browser.local_addr().unwrap())
        );
        // Our answer goes out of the shared port.
        transport.try_send_to(b"pong", from).unwrap();
        let mut got = [0u8; 8];
        let (n, source) = browser.recv_from(&mut got).unwrap();
        assert_eq!((&got[..n], source), (&b"pong"[..], port.local_addr()));
    }
}
