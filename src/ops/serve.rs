//! The accept loop behind `[http] listen` and `status_listen`, plain or TLS.
//!
//! Each accepted socket gets `TCP_NODELAY` (the hub's small JSON frames must not wait for
//! Nagle), passes the [`ConnGate`] (per-address cap, descriptor budget; refused sockets are
//! closed at once) and is served by hyper over HTTP/1.1 with a header-read timeout, so a client
//! that sends nothing or dribbles partial headers (slowloris) is closed within
//! `[http] header_timeout`. The gate's permit lives inside the socket wrapper, so a connection
//! upgraded to a WebSocket stays counted until the socket itself closes.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::{Extension, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::conn_gate::{default_fd_reserve, ConnGate, Refusal};
use super::fd_limit::{nofile_limit, open_fds};
use super::metrics::{Limit, Metrics};
use crate::config::Config;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A refusal is logged at WARN at most this often (a flood must not flood the log).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// Pause after a failed accept (EMFILE and friends) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The gate and timeouts shared by every HTTP listener of the process.
#[derive(Clone)]
pub struct ConnLimits {
    gate: Arc<Mutex<ConnGate>>,
    header_timeout: Duration,
    /// Where refusals are counted (`srbridge_limits_hit_total`).
    metrics: Arc<Metrics>,
}

impl ConnLimits {
    /// From `[http] header_timeout`, `[limits] max_conns_per_ip` and `fd_reserve`, with the
    /// process's descriptor limit as it is now (raise it first); refusals count in `metrics`.
    pub fn from_config(config: &Config, metrics: Arc<Metrics>) -> ConnLimits {
        let fd_limit = nofile_limit();
        let reserve = config
            .limits
            .fd_reserve
            .unwrap_or_else(|| default_fd_reserve(fd_limit));
        ConnLimits {
            gate: Arc::new(Mutex::new(ConnGate::new(
                config.limits.max_conns_per_ip,
                fd_limit,
                reserve,
            ))),
            header_timeout: config.http.header_timeout,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConnGate> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn admit(&self, tcp: &TcpStream, peer: SocketAddr) -> Result<Permit, Refusal> {
        let fd = u64::try_from(tcp.as_raw_fd()).unwrap_or(0);
        let mut gate = self.lock();
        // Descriptors are handed out lowest-first: `fd + 1` are open at least. Past half the
        // budget, count them exactly.
        let open = if gate.needs_fd_count(fd) {
            open_fds().unwrap_or(fd + 1).max(fd + 1)
        } else {
            fd + 1
        };
        gate.admit(peer.ip(), open)?;
        Ok(Permit {
            limits: self.clone(),
            ip: peer.ip(),
        })
    }

    /// HTTP/WebSocket connections open now.
    pub fn open_connections(&self) -> usize {
        self.lock().open_connections()
    }
}

/// One admitted connection; released when the socket is dropped.
struct Permit {
    limits: ConnLimits,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limits.lock().release(self.ip);
    }
}

/// A socket carrying its [`Permit`], so an upgraded WebSocket keeps it until it closes.
struct Gated<S> {
    io: S,
    _permit: Permit,
}

impl<S: AsyncRead + Unpin> AsyncRead for Gated<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gated<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Serves `router` on `listener` (over TLS when `tls` is given) until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: ConnLimits,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut last_warn: Option<Instant> = None;
    let mut refused_since_warn = 0u64;
    loop {
        let accepted = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("http accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let permit = match limits.admit(&tcp, peer) {
            Ok(permit) => permit,
            Err(refusal) => {
                drop(tcp);
                limits.metrics.limit_hit(match refusal {
                    Refusal::PerIp(_) => Limit::MaxConnsPerIp,
                    Refusal::FdBudget { .. } => Limit::FdReserve,
                });
                refused_since_warn += 1;
                if last_warn.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY) {
                    tracing::warn!(
                        %peer,
                        refused = refused_since_warn,
                        "http connection refused: {refusal}"
                    );
                    last_warn = Some(Instant::now());
                    refused_since_warn = 0;
                }
                continue;
            }
        };
        // Small frames (hub replies, invitation states) go out at once.
        let _ = tcp.set_nodelay(true);
        let gated = Gated {
            io: tcp,
            _permit: permit,
        };
        let router = router.clone();
        let tls = tls.clone();
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            match tls {
                None => serve_connection(gated, peer, router, header_timeout).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(gated)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, peer, router, header_timeout).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn serve_connection<S>(io: S, peer: SocketAddr, router: Router, header_timeout: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router.layer(Extension(ConnectInfo(peer))));
    // hyper's own HTTP/1 connection: the header-read timer runs from the first poll, so it also
    // closes a connection that sends nothing (hyper-util's auto builder would wait for the
    // first bytes to pick a protocol, without a timeout).
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(e) = connection.await {
        tracing::debug!(%peer, "http connection ended: {e}");
    }
}
