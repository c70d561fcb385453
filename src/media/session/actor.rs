//! The call's media task: one task per call that owns the SIP leg's two sockets, the browser
//! leg and the [`MediaCore`], and waits on all of them and on one timer set to the earliest
//! deadline of the core and the browser leg. Control from the call layer arrives on one channel.
//!
//! The browser leg is normally an [`OwnedBrowserLeg`]: the sans-IO WebRTC stack and its socket,
//! driven from this loop (no task or channel of its own). With STUN/TURN servers configured it is
//! the async webrtc-rs leg behind [`BrowserLink`], which gathers server-reflexive and relay
//! candidates.
//!
//! While the call sets up, the task wakes on each socket's readiness. Once the owned browser leg
//! is connected (ICE and DTLS done) the SIP RTP socket and the browser's leave the reactor and
//! are drained on the 20 ms tick, just before the frame, in one `recvmmsg` each
//! ([`MediaSocket`]): one wake-up per call and tick instead of one per packet and socket. The
//! RTCP socket and the control channel stay on readiness.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::browser::{BrowserInput, BrowserLink};
use super::media_core::{MediaCore, MediaIo};
use super::media_socket::{Datagram, MediaSocket};
use super::owned_browser::OwnedBrowserLeg;
use crate::call::ports::MediaEvent;
use crate::media::browser_leg::BrowserLegEvent;
use crate::media::pipeline::{Downlink, SipParams, Uplink};
use crate::media::recording::RecorderTap;
use crate::media::rtp_leg::{is_icmp_echo, PortLease};
use crate::media::transcode::RtpStamp;
use crate::media::webrtc_leg::{LegEvent, LegState};

/// Datagrams read in one go when the RTP socket is readable, before the task looks at its
/// other inputs again.
const READ_BURST: usize = 32;

/// Receive buffer: larger than any RTP packet, so a datagram that fills it was truncated.
const DATAGRAM: usize = 1500;

/// Bytes read of an RTCP datagram (its content is not used, see `MediaTask::rtcp_buf`).
const RTCP_READ: usize = 64;

/// How often a socket read on the tick is drained at the latest (the frame period).
const TICK_READ: Duration = Duration::from_millis(20);

/// `recvmmsg` calls of 16 per socket and tick at most (a flood waits in the kernel's buffer,
/// or is dropped there, rather than starving the other calls).
const TICK_BATCHES: usize = 4;

/// The SIP leg's sockets and the lease that keeps their ports.
pub struct LegSockets {
    /// RTP (even port).
    pub socket: UdpSocket,
    /// RTCP (odd port).
    pub rtcp: UdpSocket,
    /// Dropped after the sockets.
    pub lease: PortLease,
}

/// What the call layer tells the media task.
pub enum Control {
    /// The SIP side's negotiated media (answer, re-INVITE, UPDATE).
    Sip {
        /// The peer's RTP address from its SDP.
        remote: SocketAddr,
        /// Codec, payload types, whether to send.
        params: SipParams,
        /// The phone holds the call.
        on_hold: bool,
    },
    /// The browser's offer was answered: its leg and the pipeline.
    Browser(Box<Attach>),
    /// A candidate the browser trickled (JSON of an `RTCIceCandidateInit`), for an
    /// [`OwnedBrowserLeg`].
    Candidate(String),
    /// A browser key for the SIP side.
    Digit(char),
    /// The call is answered: audio passes from now on.
    Answered,
    /// The call is established: watch for silent legs.
    Established,
    /// The call ended: publish the last counters, close the browser leg, release the ports.
    Close,
}

/// The browser leg of a call, in one of its two shapes (see the module docs).
pub enum Browser {
    /// Driven by this task: the sans-IO stack and its socket (boxed: the stack is large).
    Owned(Box<OwnedBrowserLeg>),
    /// The async webrtc-rs leg (STUN/TURN configured).
    Link(BrowserLink),
}

impl Browser {
    fn ready(&self) -> bool {
        match self {
            Browser::Owned(leg) => leg.ready(),
            Browser::Link(link) => link.ready(),
        }
    }
}

/// The browser leg and the pipeline built for it.
pub struct Attach {
    /// The answered browser leg.
    pub browser: Browser,
    /// Browser → SIP.
    pub up: Uplink,
    /// SIP → browser.
    pub down: Downlink,
    /// The recording, if the call is recorded.
    pub tap: Option<RecorderTap>,
}

/// The call's media task. See the module docs.
pub struct MediaTask {
    call_id: String,
    socket: MediaSocket,
    rtcp: UdpSocket,
    /// When the sockets read on the tick (see the module docs) are drained at the latest;
    /// `None` while they are read on readiness.
    next_read: Option<Instant>,
    core: MediaCore,
    browser: Option<Browser>,
    /// The browser leg's channels or socket closed: stop polling it.
    browser_gone: bool,
    /// The browser leg failed or closed (reported once).
    browser_failed: bool,
    control: mpsc::UnboundedReceiver<Control>,
    events: mpsc::Sender<MediaEvent>,
    /// Events the core produced during one step, delivered after it.
    pending: Vec<MediaEvent>,
    buf: Box<[u8; DATAGRAM]>,
    /// Only an RTCP datagram's source is used (a sign of life from the phone): the rest of a
    /// datagram longer than this is discarded by the kernel.
    rtcp_buf: [u8; RTCP_READ],
    browser_buf: Box<[u8; DATAGRAM]>,
    /// Dropped after the sockets (field order): the ports go back to the range.
    _lease: PortLease,
}

/// The core's outputs in this task: the RTP socket, the browser leg, the events.
struct ShellIo<'a> {
    now: Instant,
    socket: &'a MediaSocket,
    browser: Option<&'a mut Browser>,
    events: &'a mut Vec<MediaEvent>,
}

impl MediaIo for ShellIo<'_> {
    fn send_sip(&mut self, packet: &[u8], to: SocketAddr) -> Option<usize> {
        // UDP: a full socket buffer drops the packet (counted), the task never waits.
        self.socket.try_send_to(packet, to).ok()
    }

    fn browser_ready(&self) -> bool {
        self.browser.as_ref().is_some_and(|b| b.ready())
    }

    fn send_browser(&mut self, payload_type: u8, stamp: RtpStamp, payload: &[u8]) {
        match self.browser.as_mut() {
            Some(Browser::Owned(leg)) => leg.send_rtp(self.now, payload_type, stamp, payload),
            Some(Browser::Link(link)) => link.queue(payload_type, stamp, payload),
            None => {}
        }
    }

    fn event(&mut self, event: MediaEvent) {
        self.events.push(event);
    }
}

/// The next input of the browser leg: a datagram on the owned leg's socket, or what the async
/// leg's channels bring.
async fn next_browser(browser: &mut Option<Browser>, buf: &mut [u8]) -> BrowserInput {
    match browser {
        Some(Browser::Owned(leg)) => BrowserInput::Datagram(leg.recv_from(buf).await),
        Some(Browser::Link(b)) => b.next().await,
        None => std::future::pending().await,
    }
}

impl MediaTask {
    /// The task for a call: `sockets` are the SIP leg's (its sans-IO part is in `core`).
    pub fn new(
        call_id: &str,
        sockets: LegSockets,
        core: MediaCore,
        control: mpsc::UnboundedReceiver<Control>,
        events: mpsc::Sender<MediaEvent>,
    ) -> MediaTask {
        MediaTask {
            call_id: call_id.to_owned(),
            socket: MediaSocket::new(sockets.socket),
            rtcp: sockets.rtcp,
            next_read: None,
            core,
            browser: None,
            browser_gone: false,
            browser_failed: false,
            control,
            events,
            pending: Vec::with_capacity(4),
            buf: Box::new([0; DATAGRAM]),
            rtcp_buf: [0; RTCP_READ],
            browser_buf: Box::new([0; DATAGRAM]),
            _lease: sockets.lease,
        }
    }

    fn io(&mut self, now: Instant) -> (&mut MediaCore, ShellIo<'_>) {
        (
            &mut self.core,
            ShellIo {
                now,
                socket: &self.socket,
                browser: self.browser.as_mut(),
                events: &mut self.pending,
            },
        )
    }

    /// The earliest of the core's and the browser leg's deadlines.
    fn next_deadline(&mut self) -> Instant {
        let core = self.core.next_deadline();
        let core = self.next_read.map_or(core, |at| at.min(core));
        match &mut self.browser {
            Some(Browser::Owned(leg)) => leg.next_deadline().map_or(core, |at| at.min(core)),
            _ => core,
        }
    }

    /// Runs until the call layer sends [`Control::Close`] or drops its end.
    // Not an `async fn`: that keeps its arguments twice in the future, once as arguments and
    // once as the locals they are moved into (rust-lang/rust#62958): 0.6–2.8 KB per call.
    #[allow(clippy::manual_async_fn)]
    pub fn run(mut self) -> impl std::future::Future<Output = ()> + Send {
        async move {
            let sleep = tokio::time::sleep_until(self.next_deadline().into());
            tokio::pin!(sleep);
            loop {
                let deadline = tokio::time::Instant::from_std(self.next_deadline());
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                let ticked = self.socket.ticked();
                // A leg on the shared port stays on readiness after the tick took over the rest.
                let browser_ticked = match &mut self.browser {
                    Some(Browser::Owned(leg)) => leg.ticked(),
                    _ => false,
                };
                let poll_browser = !self.browser_gone && !browser_ticked;
                tokio::select! {
                    c = self.control.recv() => match c {
                        Some(Control::Close) | None => break,
                        Some(c) => self.on_control(c),
                    },
                    r = self.socket.recv_from(&mut self.buf[..]), if !ticked => {
                        if !self.on_rtp(r) {
                            break;
                        }
                    },
                    r = self.rtcp.recv_from(&mut self.rtcp_buf[..]) => match r {
                        Ok((_, source)) => self.core.on_sip_rtcp(source),
                        Err(e) if is_icmp_echo(&e) => {}
                        Err(e) => {
                            tracing::warn!(call_id = %self.call_id, error = %e, "RTCP socket failed");
                            break;
                        }
                    },
                    input = next_browser(&mut self.browser, &mut self.browser_buf[..]), if poll_browser => {
                        self.on_browser(input);
                    },
                    () = &mut sleep => {
                        if !self.on_timer(Instant::now()) {
                            break;
                        }
                    }
                }
                if self.has_queued() {
                    self.deliver().await;
                }
            }
            self.core.publish(Instant::now());
            match self.browser.take() {
                Some(Browser::Owned(mut leg)) => {
                    leg.close();
                    if leg.send_drops() > 0 {
                        tracing::debug!(call_id = %self.call_id, dropped = leg.send_drops(), "datagrams to the browser dropped (socket buffer full)");
                    }
                }
                Some(Browser::Link(link)) => link.close().await,
                None => {}
            }
        }
    }

    /// The timer fired: the sockets read on the tick, then the leg's and the core's timers.
    /// False when the RTP socket failed for good.
    fn on_timer(&mut self, now: Instant) -> bool {
        if self.socket.ticked() && !self.read_ticked(now) {
            return false;
        }
        match &mut self.browser {
            Some(Browser::Owned(leg)) => {
                leg.on_timeout(now);
                self.core.note_browser_rejected(leg.rejected_media());
                self.drain_owned(now);
            }
            Some(Browser::Link(link)) => link.on_timer(now),
            None => {}
        }
        let (core, mut io) = self.io(now);
        core.on_timeout(now, &mut io);
        true
    }

    /// Moves the RTP and browser sockets from readiness to the tick, once the owned browser
    /// leg is connected. A socket that cannot leave the reactor is lost: its next read on the
    /// tick reports the error (the RTP socket's ends the task, the browser's fails the leg), so
    /// neither is left unread.
    fn read_on_tick(&mut self, now: Instant) {
        let Some(Browser::Owned(leg)) = &mut self.browser else {
            return;
        };
        if self.socket.ticked() {
            return;
        }
        for moved in [self.socket.move_to_tick(), leg.move_to_tick()] {
            if let Err(e) = moved {
                tracing::warn!(call_id = %self.call_id, error = %e, "media socket could not leave the reactor");
            }
        }
        tracing::debug!(call_id = %self.call_id, "media sockets read on the tick from now on");
        self.next_read = Some(now);
    }

    /// Drains the RTP and browser sockets (read on the tick) into the core and the leg, each
    /// datagram with its arrival time. False when the RTP socket failed for good (the task
    /// ends); a failed browser socket fails the leg.
    fn read_ticked(&mut self, now: Instant) -> bool {
        self.next_read = Some(now + TICK_READ);
        let (core, mut io) = self.io(now);
        let socket = io.socket;
        let read = socket.read_batch(TICK_BATCHES, |d: Datagram<'_>| {
            core.on_sip_datagram(d.bytes, d.truncated, d.from, d.at, &mut io)
        });
        if let Err(e) = read {
            tracing::warn!(call_id = %self.call_id, error = %e, "RTP socket failed");
            return false;
        }
        let Some(Browser::Owned(leg)) = &mut self.browser else {
            return true;
        };
        if self.browser_gone {
            return true;
        }
        let core = &mut self.core;
        let read = leg.read_ticked(TICK_BATCHES, |at, p| {
            core.on_browser_rtp(p.payload_type, p.seq, p.timestamp, p.ssrc, &p.payload, at)
        });
        if let Err(e) = read {
            tracing::warn!(call_id = %self.call_id, error = %e, "browser media socket failed");
            self.browser_gone = true;
            self.on_leg_state(LegState::Failed);
        }
        true
    }

    fn on_control(&mut self, control: Control) {
        let now = Instant::now();
        match control {
            Control::Sip {
                remote,
                params,
                on_hold,
            } => self.core.set_sip(remote, params, on_hold),
            Control::Browser(attach) => {
                let Attach {
                    browser,
                    up,
                    down,
                    tap,
                } = *attach;
                self.core.attach(up, down, tap, now);
                if matches!(browser, Browser::Owned(_)) {
                    // Every candidate is in the answer: end of gathering, as a trickling leg says.
                    self.pending.push(MediaEvent::ToBrowser(
                        json!({"kind": "candidate", "candidate": null}),
                    ));
                }
                self.browser = Some(browser);
                self.drain_owned(now);
            }
            Control::Candidate(json) => {
                if let Some(Browser::Owned(leg)) = &mut self.browser {
                    if let Err(e) = leg.add_remote_candidate(&json) {
                        tracing::info!(call_id = %self.call_id, error = %e, "browser media message refused");
                        self.pending.push(MediaEvent::ToBrowser(
                            json!({"kind": "error", "message": format!("candidate refused: {e}")}),
                        ));
                    }
                }
                self.drain_owned(now);
            }
            Control::Digit(d) => self.core.queue_digit(d),
            Control::Answered => self.core.answered(),
            Control::Established => self.core.established(now),
            Control::Close => {}
        }
    }

    /// The RTP socket was readable: this datagram and whatever else is queued, up to a burst.
    /// False when the socket failed for good.
    fn on_rtp(&mut self, first: io::Result<(usize, SocketAddr)>) -> bool {
        let mut next = first;
        for _ in 0..READ_BURST {
            match next {
                Ok((n, source)) => {
                    let now = Instant::now();
                    let MediaTask {
                        core,
                        socket,
                        browser,
                        pending,
                        buf,
                        ..
                    } = self;
                    let mut io = ShellIo {
                        now,
                        socket,
                        browser: browser.as_mut(),
                        events: pending,
                    };
                    core.on_sip_datagram(&buf[..n], n >= DATAGRAM, source, now, &mut io);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if is_icmp_echo(&e) => {}
                Err(e) => {
                    tracing::warn!(call_id = %self.call_id, error = %e, "RTP socket failed");
                    return false;
                }
            }
            next = self.socket.try_recv_from(&mut self.buf[..]);
        }
        true
    }

    /// The browser leg's socket was readable: this datagram and whatever else is queued, up to a
    /// burst, then what the leg made of them.
    fn on_browser_datagram(&mut self, first: io::Result<(usize, SocketAddr)>) {
        let Some(Browser::Owned(leg)) = &mut self.browser else {
            return;
        };
        let now = Instant::now();
        let mut next = first;
        let mut failed = false;
        for _ in 0..READ_BURST {
            match next {
                Ok((n, from)) => leg.on_datagram(now, from, &self.browser_buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if is_icmp_echo(&e) => {}
                Err(e) => {
                    tracing::warn!(call_id = %self.call_id, error = %e, "browser media socket failed");
                    failed = true;
                    break;
                }
            }
            next = leg.try_recv_from(&mut self.browser_buf[..]);
        }
        self.drain_owned(now);
        if failed {
            self.browser_gone = true;
            self.on_leg_state(LegState::Failed);
        }
    }

    /// What the owned browser leg produced: datagrams to send, RTP for the pipeline, state
    /// changes and loss reports.
    fn drain_owned(&mut self, now: Instant) {
        let Some(Browser::Owned(leg)) = &mut self.browser else {
            return;
        };
        leg.transmit();
        while let Some((at, p)) = leg.poll_media() {
            self.core
                .on_browser_rtp(p.payload_type, p.seq, p.timestamp, p.ssrc, &p.payload, at);
        }
        while let Some(event) = self.browser_event() {
            match event {
                BrowserLegEvent::State(state) => self.on_leg_state(state),
                BrowserLegEvent::ReceiverReport(r) => {
                    self.core.on_loss_report(r.fraction_lost, now)
                }
            }
        }
    }

    fn browser_event(&mut self) -> Option<BrowserLegEvent> {
        match &mut self.browser {
            Some(Browser::Owned(leg)) => leg.poll_event(),
            _ => None,
        }
    }

    fn on_browser(&mut self, input: BrowserInput) {
        match input {
            BrowserInput::Rtp(p) => self.core.on_browser_rtp(
                p.payload_type,
                p.seq,
                p.timestamp,
                p.ssrc,
                &p.payload,
                Instant::now(),
            ),
            BrowserInput::Report(r) => self.core.on_loss_report(r.fraction_lost, Instant::now()),
            BrowserInput::Event(e) => self.on_leg_event(e),
            BrowserInput::Datagram(r) => self.on_browser_datagram(r),
            BrowserInput::Gone => self.browser_gone = true,
        }
    }

    /// Candidates and state changes of the async browser leg, turned into media events.
    fn on_leg_event(&mut self, event: LegEvent) {
        if self.browser_failed {
            return;
        }
        let message = match event {
            LegEvent::LocalCandidate(c) => match serde_json::from_str::<Value>(&c) {
                Ok(c) => MediaEvent::ToBrowser(json!({"kind": "candidate", "candidate": c})),
                Err(_) => return,
            },
            LegEvent::GatheringComplete => {
                MediaEvent::ToBrowser(json!({"kind": "candidate", "candidate": null}))
            }
            LegEvent::State(state) => return self.on_leg_state(state),
        };
        self.pending.push(message);
    }

    /// A state change of the browser leg: consent for the core; a failed or closed leg ends the
    /// call (reported once).
    fn on_leg_state(&mut self, state: LegState) {
        if self.browser_failed {
            return;
        }
        tracing::debug!(call_id = %self.call_id, ?state, "browser leg state");
        self.core.set_browser_consent(state == LegState::Connected);
        if state == LegState::Connected {
            self.read_on_tick(Instant::now());
        }
        let reason = match state {
            LegState::Failed => "browser media: ICE/DTLS failed",
            LegState::Closed => "browser media: connection closed",
            _ => return,
        };
        self.browser_failed = true;
        self.pending.push(MediaEvent::Failed(reason.into()));
    }

    /// Whether the last step queued anything for [`Self::deliver`].
    fn has_queued(&self) -> bool {
        !self.pending.is_empty()
            || matches!(&self.browser, Some(Browser::Link(link)) if link.has_queued())
    }

    /// Sends what the last step queued: packets to the async browser leg, events to the call
    /// layer.
    async fn deliver(&mut self) {
        if let Some(Browser::Link(b)) = &mut self.browser {
            b.flush().await;
        }
        for event in self.pending.drain(..) {
            match event {
                // DTMF both ways: a full queue drops it, the media never waits for the call.
                MediaEvent::ToBrowser(ref v) if v["kind"] == "dtmf" => {
                    if self.events.try_send(event).is_err() {
                        tracing::warn!(call_id = %self.call_id, "media message to the browser dropped (queue full)");
                    }
                }
                MediaEvent::SipDtmf(_) => {
                    let _ = self.events.try_send(event);
                }
                // Candidates and failures must arrive.
                other => {
                    let _ = self.events.send(other).await;
                }
            }
        }
    }
}
