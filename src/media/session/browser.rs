//! The browser leg as the call's media task sees it: the one place that task touches
//! [`WebRtcLeg`], so a sans-IO leg can take its place here without the task changing. Today it
//! wraps the async webrtc-rs leg: packets and state changes arrive on its channels, loss reports
//! through a pending wait kept across the task's loop turns, and packets go out with payloads
//! cut from one reused buffer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::media::transcode::RtpStamp;
use crate::media::webrtc_leg::{InboundRtp, LegChannels, LegEvent, ReceiverReport, WebRtcLeg};

/// Something from the browser leg for the media task.
#[derive(Debug)]
pub enum BrowserInput {
    /// One RTP packet.
    Rtp(InboundRtp),
    /// A candidate or a state change.
    Event(LegEvent),
    /// The browser's report about the audio we send.
    Report(ReceiverReport),
    /// The owned leg's socket was readable (see `actor::OwnedBrowserLeg`): this datagram.
    Datagram(std::io::Result<(usize, std::net::SocketAddr)>),
    /// The leg's channels closed: nothing more will come.
    Gone,
}

type ReportWait = Pin<Box<dyn Future<Output = Option<ReceiverReport>> + Send>>;

/// The payload buffer packets to the browser are cut from: one allocation serves many packets,
/// and it is reused whole once the stack let go of every packet cut from it.
#[derive(Debug)]
struct PayloadArena {
    buf: BytesMut,
}

/// Room for about 100 Opus frames per allocation.
const ARENA: usize = 16 * 1024;

impl PayloadArena {
    fn new() -> PayloadArena {
        PayloadArena {
            buf: BytesMut::with_capacity(ARENA),
        }
    }

    fn copy(&mut self, payload: &[u8]) -> Bytes {
        if self.buf.capacity() < payload.len() {
            // Reclaims the same allocation when no packet cut from it is alive any more.
            self.buf.reserve(ARENA.max(payload.len()));
        }
        self.buf.extend_from_slice(payload);
        self.buf.split().freeze()
    }
}

/// A packet waiting to go to the browser.
#[derive(Debug)]
struct Outgoing {
    payload_type: u8,
    stamp: RtpStamp,
    payload: Bytes,
}

/// The browser leg of one call, owned by its media task.
pub struct BrowserLink {
    leg: Arc<WebRtcLeg>,
    channels: LegChannels,
    events_open: bool,
    rtp_open: bool,
    /// The pending wait for the browser's next report; `None` until `retry_at` (the track was not
    /// bound yet, or the leg closed).
    report: Option<ReportWait>,
    retry_at: Option<Instant>,
    arena: PayloadArena,
    outgoing: Vec<Outgoing>,
}

/// How long to wait before asking for reports again when the track was not bound yet.
const REPORT_RETRY: Duration = Duration::from_secs(1);

fn wait_report(leg: &Arc<WebRtcLeg>) -> ReportWait {
    let leg = Arc::clone(leg);
    Box::pin(async move { leg.next_receiver_report().await })
}

impl BrowserLink {
    /// The leg after it answered the browser's offer, with its channels.
    pub fn new(leg: Arc<WebRtcLeg>, channels: LegChannels) -> BrowserLink {
        BrowserLink {
            report: Some(wait_report(&leg)),
            leg,
            channels,
            events_open: true,
            rtp_open: true,
            retry_at: None,
            arena: PayloadArena::new(),
            outgoing: Vec::with_capacity(32),
        }
    }

    /// The next thing from the leg. Cancel-safe: the task polls it beside its sockets and timer.
    pub async fn next(&mut self) -> BrowserInput {
        loop {
            let waiting_report = self.report.is_some();
            let report = &mut self.report;
            tokio::select! {
                event = self.channels.events.recv(), if self.events_open => match event {
                    Some(e) => return BrowserInput::Event(e),
                    None => self.events_open = false,
                },
                rtp = self.channels.rtp.recv(), if self.rtp_open => match rtp {
                    Some(p) => return BrowserInput::Rtp(p),
                    None => self.rtp_open = false,
                },
                report = async {
                    match report.as_mut() {
                        Some(wait) => wait.await,
                        None => std::future::pending().await,
                    }
                }, if waiting_report => {
                    match report {
                        Some(r) => {
                            self.report = Some(wait_report(&self.leg));
                            return BrowserInput::Report(r);
                        }
                        None => {
                            self.report = None;
                            self.retry_at = Some(Instant::now() + REPORT_RETRY);
                        }
                    }
                },
                else => return BrowserInput::Gone,
            }
        }
    }

    /// Asks for loss reports again once the retry time came (the media task calls this from
    /// its timer).
    pub fn on_timer(&mut self, now: Instant) {
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
            self.report = Some(wait_report(&self.leg));
        }
    }

    /// Whether packets to the browser can be encrypted (ICE and DTLS completed once).
    pub fn ready(&self) -> bool {
        self.leg.media_ready()
    }

    /// Queues one packet; [`BrowserLink::flush`] sends the queue.
    pub fn queue(&mut self, payload_type: u8, stamp: RtpStamp, payload: &[u8]) {
        let payload = self.arena.copy(payload);
        self.outgoing.push(Outgoing {
            payload_type,
            stamp,
            payload,
        });
    }

    /// Whether packets wait for [`BrowserLink::flush`].
    pub fn has_queued(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Sends what was queued, in order. A closed or failed leg drops them (its state change
    /// ends the call separately).
    pub async fn flush(&mut self) {
        for p in self.outgoing.drain(..) {
            let _ = self
                .leg
                .send_rtp_bytes(
                    p.payload_type,
                    p.stamp.seq,
                    p.stamp.timestamp,
                    p.stamp.marker,
                    p.payload,
                )
                .await;
        }
    }

    /// Closes the connection (DTLS close_notify to the browser) and releases its sockets.
    pub async fn close(self) {
        let _ = self.leg.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_cut_from_one_buffer_that_is_reused_once_released() {
        let mut arena = PayloadArena::new();
        let first = arena.copy(&[1; 100]);
        let second = arena.copy(&[2; 100]);
        assert_eq!(&first[..], &[1; 100][..]);
        assert_eq!(&second[..], &[2; 100][..]);
        // Both cut from one allocation.
        assert_eq!(first.as_ptr() as usize + 100, second.as_ptr() as usize);
        let start = first.as_ptr() as usize;
        drop((first, second));
        // Fill the rest of the buffer, release it, and the next packet reuses the same memory.
        let mut held = Vec::new();
        while arena.buf.capacity() >= 100 {
            held.push(arena.copy(&[3; 100]));
        }
        drop(held);
        let again = arena.copy(&[4; 100]);
        assert_eq!(again.as_ptr() as usize, start);
        assert_eq!(&again[..], &[4; 100][..]);
    }
}
