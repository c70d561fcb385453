//! One call's media as the call layer sees it ([`crate::call::ports::CallMedia`]): the SIP leg's
//! RTP socket and SDP offer/answer, the browser's WebRTC leg (offer/answer, trickled candidates,
//! DTMF) and the pipeline between them (`media::pipeline`), driven here by two tasks, one per
//! direction, each with its own 20 ms ticker.
//!
//! Media signalling with the browser is `docs/protocol.md` "Media": the browser always offers.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::call::machine::Direction as CallDirection;
use crate::call::ports::{CallMedia, MediaError, MediaEvent, MediaFactory};
use crate::config::{Codec, Config, OpusSettings, RecordingMode};
use crate::media::inactivity::{Activity, InactivityWatch};
use crate::media::pipeline::{
    BrowserParams, Downlink, HeldFrames, PipelineCounters, SipParams, Uplink, HELD_FRAMES,
};
use crate::media::recording::{self, RecorderTap, Side};
use crate::media::rtp::RtpPacket;
use crate::media::rtp_leg::{PortAllocator, PortRange, RtpLeg};
use crate::media::webrtc_leg::{
    IceServer, InboundRtp, LegEvent, LegState, WebRtcLeg, WebRtcSettings,
};
use crate::ops::metrics::{Ending, ErrorKind, Metrics};
use crate::ops::Direction as OpsDirection;
use crate::sip::sdp::{self, Direction, LocalMedia, Negotiated, SdpError, DEFAULT_DTMF_PT};

/// The pipeline's tick: one 20 ms frame per direction.
const TICK: Duration = Duration::from_millis(20);

/// Creates each call's media from the configuration in force when the call starts.
pub struct SessionFactory {
    ports: Arc<PortAllocator>,
    /// The browser legs' ports: the RTP allocator itself unless `[media] webrtc_port_min/max`
    /// sets a range apart.
    webrtc_ports: PortAllocator,
    bind_ip: IpAddr,
    sdp_ip: IpAddr,
    config: tokio::sync::watch::Receiver<Arc<Config>>,
    /// The bridge's registry: each call's packets, losses, jitter and transcoding time.
    metrics: Arc<Metrics>,
}

impl SessionFactory {
    /// `sdp_ip` is the address put in SDP (`media.public_ip`, else the address the PBX reaches
    /// us on); RTP sockets bind on `bind_ip`; calls count into `metrics`.
    pub fn new(
        config: tokio::sync::watch::Receiver<Arc<Config>>,
        bind_ip: IpAddr,
        sdp_ip: IpAddr,
        metrics: Arc<Metrics>,
    ) -> Result<SessionFactory, MediaError> {
        let media = config.borrow().media.clone();
        let range =
            PortRange::from_config(&media).map_err(|e| MediaError::Resources(e.to_string()))?;
        let ports = PortAllocator::new(range);
        let webrtc_ports = match media.webrtc_port_range {
            Some((min, max)) => PortAllocator::new(
                PortRange::new(min, max).map_err(|e| MediaError::Resources(e.to_string()))?,
            ),
            None => ports.clone(),
        };
        Ok(SessionFactory {
            ports: Arc::new(ports),
            webrtc_ports,
            bind_ip,
            sdp_ip,
            config,
            metrics,
        })
    }

    /// Port pairs held by this factory's legs, SIP (RTP) and browser (ICE): for status and leak
    /// checks.
    pub fn ports_in_use(&self) -> usize {
        let webrtc = if self.webrtc_ports.same_as(&self.ports) {
            0
        } else {
            self.webrtc_ports.in_use()
        };
        self.ports.in_use() + webrtc
    }

    /// The browser legs' allocator when `[media] webrtc_port_min/max` sets a range apart (else
    /// they share [`SessionFactory::port_allocator`]).
    pub fn webrtc_port_allocator(&self) -> Option<PortAllocator> {
        (!self.webrtc_ports.same_as(&self.ports)).then(|| self.webrtc_ports.clone())
    }

    /// The allocator, shared: lets the bridge report ports in use after the factory moved into
    /// the call manager.
    pub fn port_allocator(&self) -> Arc<PortAllocator> {
        Arc::clone(&self.ports)
    }
}

/// How the browser leg is built from the configuration: host candidates on `media.public_ip`,
/// else `sip.listen_ip` when it is a specific address, else 127.0.0.1; STUN/TURN as configured.
pub fn webrtc_settings(config: &Config) -> WebRtcSettings {
    let listen = config.sip.listen_ip;
    let ip = config
        .media
        .public_ip
        .or((!listen.is_unspecified()).then_some(listen))
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let mut ice_servers: Vec<IceServer> = config
        .media
        .stun_servers
        .iter()
        .map(|url| IceServer {
            urls: vec![url.clone()],
            ..IceServer::default()
        })
        .collect();
    ice_servers.extend(config.media.turn.iter().map(|t| IceServer {
        urls: vec![t.url.clone()],
        username: t.username.clone(),
        credential: t.credential.expose().to_owned(),
    }));
    WebRtcSettings {
        bind_ips: vec![ip],
        ice_servers,
        opus_narrowband: config.media.opus_narrowband,
        opus_receive_bitrate: config.media.opus_receive_bitrate,
        ..WebRtcSettings::default()
    }
}

impl MediaFactory for SessionFactory {
    type Media = Session;

    fn create(
        &self,
        call_id: &str,
        direction: CallDirection,
        sip_number: &str,
    ) -> Result<(Session, mpsc::Receiver<MediaEvent>), MediaError> {
        let leg = RtpLeg::bind(self.bind_ip, &self.ports)
            .map_err(|e| MediaError::Resources(e.to_string()))?;
        let leg = Arc::new(leg);
        let config = Arc::clone(&self.config.borrow());
        let codecs = config.media.codecs_for(sip_number).to_vec();
        let recording = config.media.recording.enabled.then(|| {
            (
                recording::path_for(&config.media.recording.dir, call_id),
                config.media.recording.mode,
            )
        });
        let (events_tx, events) = mpsc::channel(64);
        let drain = tokio::spawn(drain_rtp(Arc::clone(&leg)));
        let published = Arc::new(PublishedRtp::default());
        let stats = tokio::spawn(publish_rtp_every_second(
            Arc::clone(&leg),
            Arc::clone(&published),
            Arc::clone(&self.metrics),
        ));
        let rtcp_leg = Arc::clone(&leg);
        let rtcp = tokio::spawn(async move { rtcp_leg.count_rtcp().await });
        tracing::debug!(call_id, rtp = %leg.local_addr(), "SIP-side RTP leg bound");
        Ok((
            Session {
                call_id: call_id.to_owned(),
                leg,
                codecs,
                sdp_ip: self.sdp_ip,
                session_id: sdp::new_session_id(),
                version: 1,
                last_answer: None,
                negotiated: None,
                events: events_tx,
                settings: WebRtcSettings {
                    ports: Some(self.webrtc_ports.clone()),
                    ..webrtc_settings(&config)
                },
                recording,
                dtmf_info: config.media.dtmf_mode == crate::config::DtmfMode::Info,
                opus: config.media.opus,
                browser: None,
                answered: Arc::new(AtomicBool::new(direction == CallDirection::WebToSip)),
                drain: Some(drain),
                tasks: vec![stats, rtcp],
                published,
                metrics: Arc::clone(&self.metrics),
                counters: Arc::new(PipelineCounters::default()),
                rtp_timeout: config.media.rtp_timeout,
                rtp_hold_timeout: config.media.rtp_hold_timeout,
                sip_on_hold: Arc::new(AtomicBool::new(false)),
                browser_consent: Arc::new(AtomicBool::new(false)),
                watching: false,
            },
            events,
        ))
    }
}

/// Reads the SIP leg's socket so the strict-source rule learns the peer and counters move, until the browser leg
/// takes over the packets.
async fn drain_rtp(leg: Arc<RtpLeg>) {
    let mut buf = [0u8; 1500];
    while leg.recv(&mut buf).await.is_ok() {}
}

/// Control messages to the browser→SIP task.
#[derive(Debug)]
enum UpControl {
    Sip(SipParams),
    Digit(char),
}

/// The browser leg and the handles of its pipeline tasks.
struct BrowserSide {
    leg: Arc<WebRtcLeg>,
    up: mpsc::UnboundedSender<UpControl>,
    down: mpsc::UnboundedSender<SipParams>,
}

/// One call's media.
pub struct Session {
    call_id: String,
    leg: Arc<RtpLeg>,
    codecs: Vec<Codec>,
    sdp_ip: IpAddr,
    session_id: u64,
    version: u64,
    /// Our last SDP without its `o=` line: an unchanged answer keeps the version (RFC 3264 §8).
    last_answer: Option<String>,
    negotiated: Option<Negotiated>,
    events: mpsc::Sender<MediaEvent>,
    /// What of the SIP leg's counters `/metrics` already has.
    published: Arc<PublishedRtp>,
    metrics: Arc<Metrics>,
    /// `media.dtmf_mode = "info"`: browser keys go to the SIP side as INFO requests.
    dtmf_info: bool,
    /// `[media] opus_*`: the encoder policy toward the browser.
    opus: OpusSettings,
    settings: WebRtcSettings,
    recording: Option<(std::path::PathBuf, RecordingMode)>,
    browser: Option<BrowserSide>,
    /// Whether audio may flow between the legs. A phone's call (SIP → web) is set up while the
    /// browser rings, but nothing passes either way until the browser accepted and the 200 OK
    /// goes out; web → SIP calls pass early media from the start.
    answered: Arc<AtomicBool>,
    drain: Option<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
    counters: Arc<PipelineCounters>,
    /// `[media] rtp_timeout` / `rtp_hold_timeout` when the call started.
    rtp_timeout: Duration,
    rtp_hold_timeout: Duration,
    /// The phone's SDP holds the call (sendonly/inactive).
    sip_on_hold: Arc<AtomicBool>,
    /// The browser leg's ICE is connected (its consent checks are answered).
    browser_consent: Arc<AtomicBool>,
    /// The inactivity watch runs.
    watching: bool,
}

fn without_origin(sdp: &str) -> String {
    sdp.lines()
        .filter(|l| !l.starts_with("o="))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Session {
    fn local(&self, version: u64) -> LocalMedia<'_> {
        LocalMedia {
            ip: self.sdp_ip,
            port: self.leg.local_addr().port(),
            codecs: &self.codecs,
            dtmf_pt: DEFAULT_DTMF_PT,
            session_id: self.session_id,
            version,
            direction: Direction::SendRecv,
        }
    }

    fn use_negotiated(&mut self, negotiated: Negotiated) {
        if !negotiated.remote.ip().is_unspecified() && negotiated.remote.port() != 0 {
            self.leg.set_remote(negotiated.remote);
        }
        tracing::info!(
            call_id = %self.call_id,
            codec = negotiated.codec.name(),
            remote = %negotiated.remote,
            on_hold = negotiated.on_hold,
            direction = negotiated.direction.attribute(),
            "SIP media negotiated"
        );
        self.sip_on_hold
            .store(negotiated.on_hold, Ordering::Relaxed);
        let params = SipParams::from_negotiated(&negotiated);
        if let Some(b) = &self.browser {
            let _ = b.up.send(UpControl::Sip(params));
            let _ = b.down.send(params);
        }
        self.negotiated = Some(negotiated);
    }

    /// Our RTP address toward the PBX.
    pub fn sip_rtp_addr(&self) -> SocketAddr {
        self.leg.local_addr()
    }

    /// The call's media counters.
    pub fn counters(&self) -> &Arc<PipelineCounters> {
        &self.counters
    }

    fn to_browser(&self, payload: Value) {
        if self
            .events
            .try_send(MediaEvent::ToBrowser(payload))
            .is_err()
        {
            tracing::warn!(call_id = %self.call_id, "media message to the browser dropped (queue full)");
        }
    }

    /// Tells the browser what went wrong and ends the call.
    fn fail(&self, message: String) {
        tracing::warn!(call_id = %self.call_id, error = %message, "browser media failed");
        self.to_browser(json!({"kind": "error", "message": message}));
        let _ = self.events.try_send(MediaEvent::Failed(message));
    }

    /// A problem the call survives: the browser hears about it.
    fn complain(&self, message: String) {
        tracing::info!(call_id = %self.call_id, error = %message, "browser media message refused");
        self.to_browser(json!({"kind": "error", "message": message}));
    }

    async fn on_offer(&mut self, sdp: Option<&str>) {
        if self.browser.is_some() {
            self.complain("a second offer (renegotiation) is not supported".into());
            return;
        }
        let Some(sdp) = sdp.filter(|s| !s.trim().is_empty()) else {
            self.fail("offer without \"sdp\"".into());
            return;
        };
        let (leg, channels) = match WebRtcLeg::new(&self.settings).await {
            Ok(leg) => leg,
            Err(e) => {
                self.fail(format!("cannot create the WebRTC leg: {e}"));
                return;
            }
        };
        let answer = match leg.accept_offer(sdp).await {
            Ok(answer) => answer,
            Err(e) => {
                let _ = leg.close().await;
                self.fail(format!("offer refused: {e}"));
                return;
            }
        };
        let Some(params) = leg
            .negotiated()
            .as_ref()
            .and_then(BrowserParams::from_negotiated)
        else {
            let _ = leg.close().await;
            self.fail("offer refused: no common audio codec".into());
            return;
        };
        let tap =
            self.recording
                .as_ref()
                .and_then(|(path, mode)| match recording::start(path, *mode) {
                    Ok(tap) => Some(tap),
                    Err(e) => {
                        tracing::warn!(call_id = %self.call_id, error = %e, "call not recorded");
                        None
                    }
                });
        let (mut up, mut down) = match (
            Uplink::new(params, Arc::clone(&self.counters)),
            Downlink::new(params, Arc::clone(&self.counters)),
        ) {
            (Ok(up), Ok(mut down)) => match down.set_opus(self.opus) {
                Ok(()) => (up, down),
                Err(e) => {
                    let _ = leg.close().await;
                    self.fail(format!("codec setup failed: {e}"));
                    return;
                }
            },
            (Err(e), _) | (_, Err(e)) => {
                let _ = leg.close().await;
                self.fail(format!("codec setup failed: {e}"));
                return;
            }
        };
        up.send_digits_as_info(self.dtmf_info);
        if let Some(n) = &self.negotiated {
            let p = SipParams::from_negotiated(n);
            up.set_sip(p);
            down.set_sip(p);
        }
        self.to_browser(json!({"kind": "answer", "sdp": answer}));
        tracing::info!(call_id = %self.call_id, browser_codec = ?params.codec, "browser media leg answered");

        let leg = Arc::new(leg);
        if let Some(drain) = self.drain.take() {
            drain.abort();
        }
        let (up_tx, up_rx) = mpsc::unbounded_channel();
        let (down_tx, down_rx) = mpsc::unbounded_channel();
        self.tasks.push(tokio::spawn(leg_events(
            channels.events,
            self.events.clone(),
            self.call_id.clone(),
            Arc::clone(&self.browser_consent),
        )));
        self.tasks.push(tokio::spawn(uplink_task(
            channels.rtp,
            Arc::clone(&self.leg),
            up,
            up_rx,
            tap.clone(),
            self.events.clone(),
            Arc::clone(&self.answered),
            Arc::clone(&self.metrics),
        )));
        self.tasks.push(tokio::spawn(downlink_task(
            Arc::clone(&self.leg),
            Arc::clone(&leg),
            DownlinkShell {
                call_id: self.call_id.clone(),
                down,
                control: down_rx,
                events: self.events.clone(),
                tap,
                answered: Arc::clone(&self.answered),
                metrics: Arc::clone(&self.metrics),
            },
        )));
        self.browser = Some(BrowserSide {
            leg,
            up: up_tx,
            down: down_tx,
        });
    }

    async fn on_candidate(&mut self, candidate: &Value) {
        let Some(browser) = &self.browser else {
            self.complain("candidate before the offer".into());
            return;
        };
        if candidate.is_null() {
            return; // End of candidates: nothing to do for a full-ICE agent.
        }
        if !candidate.is_object() {
            self.complain("candidate must be an RTCIceCandidateInit object or null".into());
            return;
        }
        if let Err(e) = browser
            .leg
            .add_remote_candidate(&candidate.to_string())
            .await
        {
            self.complain(format!("candidate refused: {e}"));
        }
    }

    fn on_dtmf(&mut self, digit: Option<&str>) {
        let mut chars = digit.unwrap_or("").chars();
        let (Some(d), None) = (chars.next(), chars.next()) else {
            self.complain("dtmf needs one \"digit\" of 0-9 * # A-D".into());
            return;
        };
        if crate::media::rtp::dtmf_event(d).is_none() {
            self.complain(format!("not a DTMF digit: {d:?}"));
            return;
        }
        match &self.browser {
            Some(b) => {
                let _ = b.up.send(UpControl::Digit(d));
            }
            None => self.complain("dtmf before the offer".into()),
        }
    }
}

fn sdp_error(e: SdpError) -> MediaError {
    match e {
        SdpError::NoCommonCodec => MediaError::NoCommonCodec(e.to_string()),
        other => MediaError::BadSdp(other.to_string()),
    }
}

/// Candidates and state changes of the browser leg, turned into media events.
async fn leg_events(
    mut events: mpsc::UnboundedReceiver<LegEvent>,
    out: mpsc::Sender<MediaEvent>,
    call_id: String,
    consent: Arc<AtomicBool>,
) {
    while let Some(event) = events.recv().await {
        let message = match event {
            LegEvent::LocalCandidate(c) => match serde_json::from_str::<Value>(&c) {
                Ok(c) => MediaEvent::ToBrowser(json!({"kind": "candidate", "candidate": c})),
                Err(_) => continue,
            },
            LegEvent::GatheringComplete => {
                MediaEvent::ToBrowser(json!({"kind": "candidate", "candidate": null}))
            }
            LegEvent::State(state) => {
                tracing::debug!(call_id = %call_id, ?state, "browser leg state");
                consent.store(state == LegState::Connected, Ordering::Relaxed);
                match state {
                    LegState::Failed => MediaEvent::Failed("browser media: ICE/DTLS failed".into()),
                    LegState::Closed => {
                        MediaEvent::Failed("browser media: connection closed".into())
                    }
                    _ => continue,
                }
            }
        };
        let last = matches!(message, MediaEvent::Failed(_));
        if out.send(message).await.is_err() || last {
            return;
        }
    }
}

/// Feeds `srbridge_rtp_lost_total` and `srbridge_rtp_jitter_seconds` from a pipeline's jitter
/// buffer once a second (every 50 ticks), so the hot path only counts.
#[derive(Debug, Default)]
struct JitterReport {
    ticks: u32,
    lost: u64,
}

impl JitterReport {
    fn tick(&mut self, (lost, jitter_ms): (u64, u32), direction: OpsDirection, m: &Metrics) {
        self.ticks += 1;
        if self.ticks < 50 {
            return;
        }
        self.ticks = 0;
        m.rtp_lost
            .get(direction)
            .add(lost.saturating_sub(self.lost));
        self.lost = lost;
        m.rtp_jitter
            .get(direction)
            .observe(Duration::from_millis(u64::from(jitter_ms)));
    }
}

/// The SIP leg's counters as last added to the process metrics, so each packet counts once.
#[derive(Debug, Default)]
struct PublishedRtp {
    packets_in: AtomicU64,
    bytes_in: AtomicU64,
    packets_out: AtomicU64,
    bytes_out: AtomicU64,
    malformed: AtomicU64,
    stranger: AtomicU64,
    stun: AtomicU64,
    dtls: AtomicU64,
}

/// Adds what the SIP leg counted since the last call to `/metrics` (packets and bytes per
/// direction: sent to the PBX is web→SIP, received from it SIP→web; malformed datagrams as
/// `errors{kind="rtp"}`, strangers' RTP as `rtp_source`, STUN/DTLS probes as `stun`/`dtls`).
fn publish_rtp(leg: &RtpLeg, published: &PublishedRtp, m: &Metrics) {
    let c = leg.counters();
    let delta = |now: &AtomicU64, seen: &AtomicU64| {
        let now = now.load(Ordering::Relaxed);
        now.saturating_sub(seen.swap(now, Ordering::Relaxed))
    };
    m.rtp_packets
        .web_to_sip
        .add(delta(&c.packets_out, &published.packets_out));
    m.rtp_bytes
        .web_to_sip
        .add(delta(&c.bytes_out, &published.bytes_out));
    m.rtp_packets
        .sip_to_web
        .add(delta(&c.packets_in, &published.packets_in));
    m.rtp_bytes
        .sip_to_web
        .add(delta(&c.bytes_in, &published.bytes_in));
    m.errors_add(
        ErrorKind::Rtp,
        delta(&c.dropped_malformed, &published.malformed),
    );
    m.errors_add(
        ErrorKind::RtpSource,
        delta(&c.dropped_source, &published.stranger),
    );
    m.errors_add(ErrorKind::Stun, delta(&c.stun_in, &published.stun));
    m.errors_add(ErrorKind::Dtls, delta(&c.dtls_in, &published.dtls));
}

async fn publish_rtp_every_second(
    leg: Arc<RtpLeg>,
    published: Arc<PublishedRtp>,
    metrics: Arc<Metrics>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        publish_rtp(&leg, &published, &metrics);
    }
}

/// Where the inactivity watch reads each leg's signs of life (counters the receive paths bump).
struct ActivityProbe {
    leg: Arc<RtpLeg>,
    counters: Arc<PipelineCounters>,
    sip_on_hold: Arc<AtomicBool>,
    browser_consent: Arc<AtomicBool>,
}

impl ActivityProbe {
    fn sample(&self) -> Activity {
        let sip = self.leg.counters();
        Activity {
            sip_packets: sip.packets_in.load(Ordering::Relaxed)
                + sip.rtcp_in.load(Ordering::Relaxed),
            sip_on_hold: self.sip_on_hold.load(Ordering::Relaxed),
            browser_packets: self.counters.from_browser.load(Ordering::Relaxed),
            browser_consent: self.browser_consent.load(Ordering::Relaxed),
        }
    }
}

/// Samples the legs' counters until one has been silent past `[media] rtp_timeout`, then ends
/// the call (the call layer sends BYE and `EndCall`).
async fn watch_activity(
    probe: ActivityProbe,
    mut watch: InactivityWatch,
    events: mpsc::Sender<MediaEvent>,
    call_id: String,
    metrics: Arc<Metrics>,
) {
    let mut tick = tokio::time::interval(watch.period());
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let activity = probe.sample();
        let Some(side) = watch.observe(std::time::Instant::now(), activity) else {
            continue;
        };
        let (leg, limit) = match side {
            Side::Sip => ("sip", watch.limit(side, activity.sip_on_hold)),
            Side::Browser => ("browser", watch.limit(side, false)),
        };
        let limit_s = limit.map_or(0, |l| l.as_secs());
        tracing::warn!(call_id = %call_id, leg, limit_s, "RTP timeout: nothing received from the {leg} leg, ending the call");
        metrics.call_ended(Ending::RtpTimeout);
        let _ = events
            .send(MediaEvent::Failed(format!("RTP timeout on the {leg} leg")))
            .await;
        return;
    }
}

fn ticker() -> tokio::time::Interval {
    let mut t = tokio::time::interval(TICK);
    // Catch up after a stall: 50 frames a second, always, so sample counts follow wall time.
    t.set_missed_tick_behavior(MissedTickBehavior::Burst);
    t
}

/// Browser → SIP: packets in as they come, one frame out per tick.
#[allow(clippy::too_many_arguments)] // the task's whole state, moved in once
async fn uplink_task(
    mut rtp: mpsc::Receiver<InboundRtp>,
    sip: Arc<RtpLeg>,
    mut up: Uplink,
    mut control: mpsc::UnboundedReceiver<UpControl>,
    tap: Option<RecorderTap>,
    events: mpsc::Sender<MediaEvent>,
    // SIP → web calls send nothing to the phone before the 200 OK.
    answered: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) {
    let start = Instant::now();
    let mut tick = ticker();
    let mut report = JitterReport::default();
    let mut rtp_open = true;
    loop {
        tokio::select! {
            c = control.recv() => match c {
                Some(UpControl::Sip(p)) => up.set_sip(p),
                Some(UpControl::Digit(d)) => { up.queue_digit(d); }
                None => return,
            },
            p = rtp.recv(), if rtp_open => match p {
                Some(p) => {
                    up.push(
                    p.payload_type,
                    p.seq,
                    p.timestamp,
                    p.ssrc,
                    &p.payload,
                    start.elapsed().as_millis() as u64,
                    )
                }
                None => rtp_open = false,
            },
            _ = tick.tick() => {
                report.tick(up.jitter_report(), OpsDirection::WebToSip, &metrics);
                let started = std::time::Instant::now();
                let frame = up.tick();
                metrics.transcode.web_to_sip.observe(started.elapsed());
                if let Some(tap) = &tap {
                    tap.record(Side::Browser, frame.pcm);
                }
                if let Some(packet) = frame.packet.filter(|_| answered.load(Ordering::Relaxed)) {
                    // No remote yet, or a transient socket error: the next tick tries again.
                    let _ = sip.send(packet).await;
                }
                if let Some(digit) = up.take_info_digit() {
                    // At most one key per tick; a full queue drops it (counted by the call).
                    let _ = events.try_send(MediaEvent::SipDtmf(digit));
                }
            }
        }
    }
}

/// What the SIP → browser task owns besides the two legs.
struct DownlinkShell {
    call_id: String,
    down: Downlink,
    control: mpsc::UnboundedReceiver<SipParams>,
    events: mpsc::Sender<MediaEvent>,
    tap: Option<RecorderTap>,
    answered: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

/// SIP → browser: the SIP socket read as packets come, one frame to the browser per tick.
/// Frames made before the browser leg has its SRTP keys are held (see `pipeline::held`) and
/// sent once it has them; packets from the phone before the call is answered are not passed.
async fn downlink_task(sip: Arc<RtpLeg>, browser: Arc<WebRtcLeg>, shell: DownlinkShell) {
    let DownlinkShell {
        call_id,
        mut down,
        mut control,
        events,
        tap,
        answered,
        metrics,
    } = shell;
    let start = Instant::now();
    let mut tick = ticker();
    let mut report = JitterReport::default();
    let mut held = HeldFrames::new(HELD_FRAMES);
    let mut ready = false;
    let mut buf = [0u8; 1500];
    let mut ticks = 0u32;
    let mut rtcp_open = true;
    // One pending wait for the next report, kept across loop turns (not re-made per packet).
    let next_report = browser.next_receiver_report();
    tokio::pin!(next_report);
    loop {
        tokio::select! {
            c = control.recv() => match c {
                Some(p) => down.set_sip(p),
                None => return,
            },
            // The browser's loss reports steer the encoder (a few a second at most).
            rr = &mut next_report, if rtcp_open => match rr {
                Some(rr) => {
                    next_report.set(browser.next_receiver_report());
                    let at = start.elapsed().as_millis() as u64;
                    if let Ok(Some(s)) = down.on_loss_report(rr.fraction_lost, at) {
                        tracing::debug!(
                            call_id = %call_id,
                            fec = s.fec,
                            bitrate = s.bitrate_bps,
                            packet_loss_perc = s.packet_loss_percent,
                            "Opus encoder settings follow the browser's loss reports"
                        );
                    }
                }
                None => {
                    rtcp_open = false;
                    next_report.set(browser.next_receiver_report());
                }
            },
            r = sip.recv(&mut buf) => match r {
                Ok((n, _)) => {
                    if !answered.load(Ordering::Relaxed) {
                        continue;
                    }
                    let Ok(packet) = RtpPacket::parse(&buf[..n]) else { continue };
                    let at = start.elapsed().as_millis() as u64;
                    if let Some(digit) = down.push(&packet, at) {
                        let _ = events.try_send(MediaEvent::ToBrowser(
                            json!({"kind": "dtmf", "digit": digit.to_string()}),
                        ));
                    }
                }
                Err(_) => tokio::time::sleep(TICK).await,
            },
            _ = tick.tick() => {
                report.tick(down.jitter_report(), OpsDirection::SipToWeb, &metrics);
                ticks += 1;
                // Retry once a second if reports were not available yet (track not bound).
                rtcp_open |= ticks.is_multiple_of(50);
                let started = std::time::Instant::now();
                let frame = down.tick();
                metrics.transcode.sip_to_web.observe(started.elapsed());
                let Ok(frame) = frame else { continue };
                if let Some(tap) = &tap {
                    tap.record(Side::Sip, frame.pcm);
                }
                if !ready && !browser.media_ready() {
                    held.hold(&frame);
                    continue;
                }
                if !ready {
                    ready = true;
                    let (total, dropped) = held.totals();
                    tracing::info!(call_id = %call_id, held = total, dropped, "browser leg ready: held audio sent");
                }
                while let Some(h) = held.front() {
                    let _ = browser
                        .send_rtp(h.payload_type, h.stamp.seq, h.stamp.timestamp, h.stamp.marker, h.payload)
                        .await;
                    held.pop_front();
                }
                // After ICE failed (reported separately): skip.
                let _ = browser
                    .send_rtp(
                        frame.payload_type,
                        frame.stamp.seq,
                        frame.stamp.timestamp,
                        frame.stamp.marker,
                        frame.payload,
                    )
                    .await;
            }
        }
    }
}

impl CallMedia for Session {
    fn sip_offer(&mut self) -> Result<String, MediaError> {
        let offer = sdp::build_offer(&self.local(self.version));
        self.last_answer = Some(without_origin(&offer));
        Ok(offer)
    }

    fn sip_answer(&mut self, offer: &str) -> Result<String, MediaError> {
        let (answer, negotiated) =
            sdp::answer_offer(offer, &self.local(self.version)).map_err(sdp_error)?;
        self.last_answer = Some(without_origin(&answer));
        self.use_negotiated(negotiated);
        Ok(answer)
    }

    fn sip_remote_answer(&mut self, answer: &str) -> Result<(), MediaError> {
        let negotiated = sdp::parse_answer(answer, &self.codecs).map_err(sdp_error)?;
        self.use_negotiated(negotiated);
        Ok(())
    }

    fn sip_reoffer(&mut self, offer: Option<&str>) -> Option<String> {
        let offer = offer?;
        // Answer with the current version first: if nothing changed, that is the answer.
        let (mut answer, negotiated) = match sdp::answer_offer(offer, &self.local(self.version)) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(call_id = %self.call_id, error = %e, "re-offer not usable; keeping the current media");
                return None;
            }
        };
        let body = without_origin(&answer);
        if self.last_answer.as_deref() != Some(body.as_str()) {
            self.version += 1;
            if let Ok((a, _)) = sdp::answer_offer(offer, &self.local(self.version)) {
                answer = a;
            }
            self.last_answer = Some(body);
        }
        self.use_negotiated(negotiated);
        Some(answer)
    }

    async fn browser_message(&mut self, payload: Value) {
        match payload["kind"].as_str() {
            Some("offer") => self.on_offer(payload["sdp"].as_str()).await,
            Some("candidate") => self.on_candidate(&payload["candidate"]).await,
            Some("dtmf") => self.on_dtmf(payload["digit"].as_str()),
            Some("answer") => self.complain("the browser offers, the bridge answers".into()),
            _ => self.complain("unknown media message kind (offer, candidate, dtmf)".into()),
        }
    }

    fn established(&mut self) {
        if self.watching || self.rtp_timeout.is_zero() {
            return;
        }
        self.watching = true;
        let probe = ActivityProbe {
            leg: Arc::clone(&self.leg),
            counters: Arc::clone(&self.counters),
            sip_on_hold: Arc::clone(&self.sip_on_hold),
            browser_consent: Arc::clone(&self.browser_consent),
        };
        let watch = InactivityWatch::new(
            std::time::Instant::now(),
            self.rtp_timeout,
            self.rtp_hold_timeout,
            probe.sample(),
        );
        self.tasks.push(tokio::spawn(watch_activity(
            probe,
            watch,
            self.events.clone(),
            self.call_id.clone(),
            Arc::clone(&self.metrics),
        )));
    }

    fn answered(&mut self) {
        self.answered.store(true, Ordering::Relaxed);
    }

    fn close(&mut self) {
        publish_rtp(&self.leg, &self.published, &self.metrics);
        if let Some(drain) = self.drain.take() {
            drain.abort();
        }
        for task in self.tasks.drain(..) {
            task.abort();
        }
        if let Some(browser) = self.browser.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = browser.leg.close().await;
                });
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}
