//! One call's media as the call layer sees it ([`crate::call::ports::CallMedia`]): the SIP leg's
//! RTP socket and SDP offer/answer, the browser's WebRTC leg (offer/answer, trickled candidates,
//! DTMF) and the pipeline between them (`media::pipeline`).
//!
//! Each call's media runs in one task ([`actor::MediaTask`]) that owns the SIP leg's sockets, the
//! browser leg (the sans-IO WebRTC stack and its socket, [`owned_browser::OwnedBrowserLeg`]) and
//! the sans-IO [`media_core::MediaCore`], with one timer for the next deadline (20 ms frames, the
//! once-a-second metrics, the RTP-timeout check, the browser leg's ICE/DTLS/RTCP timers). [`Session`] stays with the
//! call layer: it does the SDP work and tells the task what changed on one channel.
//!
//! Media signalling with the browser is `docs/protocol.md` "Media": the browser always offers.

mod actor;
mod browser;
mod browser_transport;
mod media_core;
mod media_socket;
mod owned_browser;
mod tick_phase;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use rtc::peer_connection::certificate::RTCCertificate;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::call::machine::Direction as CallDirection;
use crate::call::ports::{CallMedia, MediaError, MediaEvent, MediaFactory};
use crate::config::{Codec, Config, OpusSettings, RecordingMode};
use crate::media::browser_leg::single_port::SinglePort;
use crate::media::pipeline::{BrowserParams, Downlink, PipelineCounters, SipParams, Uplink};
use crate::media::recording;
use crate::media::rtp_leg::{PortAllocator, PortRange, RtpLeg, RtpLegParts};
use crate::media::webrtc_leg::{
    dtls_certificate, IceServer, NegotiatedCodecs, WebRtcLeg, WebRtcLegError, WebRtcSettings,
};
use crate::ops::cpu_load::BusySignal;
use crate::ops::metrics::Metrics;
use crate::sip::sdp::{self, Direction, LocalMedia, Negotiated, SdpError, DEFAULT_DTMF_PT};
use actor::{Attach, Browser, Control, LegSockets, MediaTask};
use browser::BrowserLink;
use media_core::{MediaCore, Timeouts};
use owned_browser::OwnedBrowserLeg;
use tick_phase::TickPhases;

/// Creates each call's media from the configuration in force when the call starts.
pub struct SessionFactory {
    ports: Arc<PortAllocator>,
    /// The browser legs' ports: the RTP allocator itself unless `[media] webrtc_port_min/max`
    /// sets a range apart.
    webrtc_ports: PortAllocator,
    /// `[media] webrtc_single_port`: the one port every browser leg uses instead.
    single_port: Option<SinglePort>,
    /// The DTLS certificate of every browser leg: made once here, not per call (an ECDSA key
    /// and a self-signed certificate were a per-setup cost).
    certificate: RTCCertificate,
    bind_ip: IpAddr,
    sdp_ip: IpAddr,
    config: tokio::sync::watch::Receiver<Arc<Config>>,
    metrics: Arc<Metrics>,
    /// Whether the bridge is short of CPU (`ops::cpu_load`): each call's Opus encoder follows.
    busy: BusySignal,
    /// Spreads the calls' 20 ms ticks over the period (`tick_phase`).
    tick_phases: Arc<TickPhases>,
}

impl SessionFactory {
    /// `sdp_ip` is the address put in SDP (`media.public_ip`, else the address the PBX reaches
    /// us on); RTP sockets bind on `bind_ip`; calls count into `metrics`. With
    /// `[media] webrtc_single_port` the shared port is bound here (on the browser legs'
    /// candidate address), on the current tokio runtime: failing to bind it fails the start.
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
        let single_port = match media.webrtc_single_port {
            Some(port) => {
                let ip = webrtc_settings(&config.borrow())
                    .bind_ips
                    .first()
                    .copied()
                    .unwrap_or(IpAddr::from([127, 0, 0, 1]));
                let addr = SocketAddr::new(ip, port);
                let shared = SinglePort::start(addr, Some(Arc::clone(&metrics))).map_err(|e| {
                    MediaError::Resources(format!(
                        "cannot listen on [media] webrtc_single_port {addr}: {e}"
                    ))
                })?;
                tracing::info!(addr = %addr, "every browser call's media on one UDP port");
                Some(shared)
            }
            None => None,
        };
        let certificate = dtls_certificate().map_err(|e| MediaError::Resources(e.to_string()))?;
        Ok(SessionFactory {
            ports: Arc::new(ports),
            webrtc_ports,
            single_port,
            certificate,
            bind_ip,
            sdp_ip,
            config,
            metrics,
            busy: BusySignal::new(),
            tick_phases: TickPhases::new(Instant::now()),
        })
    }

    /// Calls' Opus encoders take `opus_mode_busy` and `opus_complexity_busy` while `busy` says the bridge is short
    /// of CPU.
    pub fn with_busy_signal(mut self, busy: BusySignal) -> Self {
        self.busy = busy;
        self
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
        let local = leg.local_addr();
        let config = Arc::clone(&self.config.borrow());
        let codecs = config.media.codecs_for(sip_number).to_vec();
        let recording = config.media.recording.enabled.then(|| {
            (
                recording::path_for(&config.media.recording.dir, call_id),
                config.media.recording.mode,
            )
        });
        let (events_tx, events) = mpsc::channel(64);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let counters = Arc::new(PipelineCounters::default());
        let RtpLegParts {
            socket,
            rtcp,
            core: sip,
            lease,
        } = leg.into_parts();
        let core = MediaCore::new(
            call_id,
            sip,
            Arc::clone(&counters),
            Timeouts {
                rtp: config.media.rtp_timeout,
                hold: config.media.rtp_hold_timeout,
            },
            // SIP → web calls pass nothing until the browser accepted; web → SIP calls pass
            // early media from the start.
            direction == CallDirection::WebToSip,
            Instant::now(),
            Arc::clone(&self.metrics),
        )
        .with_busy_signal(self.busy.clone())
        .with_tick_phases(Arc::clone(&self.tick_phases));
        let sockets = LegSockets {
            socket,
            rtcp,
            lease,
        };
        let task = MediaTask::new(call_id, sockets, core, control_rx, events_tx.clone());
        tokio::spawn(task.run());
        tracing::debug!(call_id, rtp = %local, "SIP-side RTP leg bound");
        Ok((
            Session {
                call_id: call_id.to_owned(),
                local,
                codecs,
                sdp_ip: self.sdp_ip,
                session_id: sdp::new_session_id(),
                version: 1,
                last_answer: None,
                events: events_tx,
                control: control_tx,
                settings: WebRtcSettings {
                    ports: Some(self.webrtc_ports.clone()),
                    certificate: Some(self.certificate.clone()),
                    ..webrtc_settings(&config)
                },
                single_port: self.single_port.clone(),
                recording,
                dtmf_info: config.media.dtmf_mode == crate::config::DtmfMode::Info,
                opus: config.media.opus,
                browser: None,
                counters,
                closed: false,
            },
            events,
        ))
    }
}

/// One call's media, on the call layer's side: SDP, the browser's signalling, and the channel to
/// the call's media task.
pub struct Session {
    call_id: String,
    /// Our RTP address toward the PBX.
    local: SocketAddr,
    codecs: Vec<Codec>,
    sdp_ip: IpAddr,
    session_id: u64,
    version: u64,
    /// Our last SDP without its `o=` line: an unchanged answer keeps the version (RFC 3264 §8).
    last_answer: Option<String>,
    events: mpsc::Sender<MediaEvent>,
    control: mpsc::UnboundedSender<Control>,
    /// `media.dtmf_mode = "info"`: browser keys go to the SIP side as INFO requests.
    dtmf_info: bool,
    /// `[media] opus_*`: the encoder policy toward the browser.
    opus: OpusSettings,
    settings: WebRtcSettings,
    /// `[media] webrtc_single_port`: the browser leg's candidate and datagrams are there.
    single_port: Option<SinglePort>,
    recording: Option<(std::path::PathBuf, RecordingMode)>,
    /// Where the browser's trickled candidates go, once its offer was answered.
    browser: Option<CandidateSink>,
    counters: Arc<PipelineCounters>,
    closed: bool,
}

/// Where the browser's trickled candidates go.
enum CandidateSink {
    /// The media task, which drives the browser leg itself.
    MediaTask,
    /// The async webrtc-rs leg, shared with the media task.
    Leg(Arc<WebRtcLeg>),
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
            port: self.local.port(),
            codecs: &self.codecs,
            dtmf_pt: DEFAULT_DTMF_PT,
            session_id: self.session_id,
            version,
            direction: Direction::SendRecv,
        }
    }

    /// Tells the media task; it is gone only after `close` (or when it failed, which the call
    /// heard about).
    fn tell(&self, control: Control) {
        let _ = self.control.send(control);
    }

    fn use_negotiated(&mut self, negotiated: Negotiated) {
        tracing::info!(
            call_id = %self.call_id,
            codec = negotiated.codec.name(),
            remote = %negotiated.remote,
            on_hold = negotiated.on_hold,
            direction = negotiated.direction.attribute(),
            "SIP media negotiated"
        );
        self.tell(Control::Sip {
            remote: negotiated.remote,
            params: SipParams::from_negotiated(&negotiated),
            on_hold: negotiated.on_hold,
        });
    }

    /// Our RTP address toward the PBX.
    pub fn sip_rtp_addr(&self) -> SocketAddr {
        self.local
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
        // The sans-IO leg has host candidates only; STUN/TURN need the async leg's gathering,
        // unless every call is on the shared port (which the async leg cannot serve).
        let answered = if self.settings.ice_servers.is_empty() || self.single_port.is_some() {
            self.answer_owned(sdp).await
        } else {
            self.answer_linked(sdp).await
        };
        let Some((browser, sink, negotiated, answer)) = answered else {
            return;
        };
        let (up, down, params) = match self.pipeline(negotiated) {
            Ok(p) => p,
            Err(message) => {
                if let Browser::Link(link) = browser {
                    link.close().await;
                }
                self.fail(message);
                return;
            }
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
        self.to_browser(json!({"kind": "answer", "sdp": answer}));
        tracing::info!(call_id = %self.call_id, browser_codec = ?params.codec, "browser media leg answered");
        self.browser = Some(sink);
        self.tell(Control::Browser(Box::new(Attach {
            browser,
            up,
            down,
            tap,
        })));
    }

    /// Answers with the sans-IO leg the media task drives itself, on a port of its own or on
    /// the shared one.
    async fn answer_owned(
        &self,
        sdp: &str,
    ) -> Option<(Browser, CandidateSink, Option<NegotiatedCodecs>, String)> {
        let answered = match &self.single_port {
            Some(port) => OwnedBrowserLeg::answer_on_shared_port(&self.settings, port, sdp).await,
            None => OwnedBrowserLeg::answer(&self.settings, sdp),
        };
        match answered {
            Ok((leg, answer)) => {
                let negotiated = leg.negotiated();
                Some((
                    Browser::Owned(Box::new(leg)),
                    CandidateSink::MediaTask,
                    negotiated,
                    answer,
                ))
            }
            Err(e @ WebRtcLegError::NoFreePort(_)) => {
                self.fail(format!("cannot create the WebRTC leg: {e}"));
                None
            }
            Err(e) => {
                self.fail(format!("offer refused: {e}"));
                None
            }
        }
    }

    /// Answers with the async webrtc-rs leg (STUN/TURN configured).
    async fn answer_linked(
        &self,
        sdp: &str,
    ) -> Option<(Browser, CandidateSink, Option<NegotiatedCodecs>, String)> {
        let (leg, channels) = match WebRtcLeg::new(&self.settings).await {
            Ok(leg) => leg,
            Err(e) => {
                self.fail(format!("cannot create the WebRTC leg: {e}"));
                return None;
            }
        };
        let answer = match leg.accept_offer(sdp).await {
            Ok(answer) => answer,
            Err(e) => {
                let _ = leg.close().await;
                self.fail(format!("offer refused: {e}"));
                return None;
            }
        };
        let negotiated = leg.negotiated();
        let leg = Arc::new(leg);
        Some((
            Browser::Link(BrowserLink::new(Arc::clone(&leg), channels)),
            CandidateSink::Leg(leg),
            negotiated,
            answer,
        ))
    }

    /// The pipeline for the codecs agreed with the browser; the message for the browser if
    /// there is none.
    fn pipeline(
        &self,
        negotiated: Option<NegotiatedCodecs>,
    ) -> Result<(Uplink, Downlink, BrowserParams), String> {
        let params = negotiated
            .as_ref()
            .and_then(BrowserParams::from_negotiated)
            .ok_or_else(|| "offer refused: no common audio codec".to_owned())?;
        let (mut up, down) = match (
            Uplink::new(params, Arc::clone(&self.counters)),
            Downlink::with_opus(params, self.opus, Arc::clone(&self.counters)),
        ) {
            (Ok(up), Ok(down)) => (up, down),
            (Err(e), _) | (_, Err(e)) => return Err(format!("codec setup failed: {e}")),
        };
        up.send_digits_as_info(self.dtmf_info);
        Ok((up, down, params))
    }

    async fn on_candidate(&mut self, candidate: &Value) {
        if self.browser.is_none() {
            self.complain("candidate before the offer".into());
            return;
        }
        if candidate.is_null() {
            return; // End of candidates: nothing to do for a full-ICE agent.
        }
        if !candidate.is_object() {
            self.complain("candidate must be an RTCIceCandidateInit object or null".into());
            return;
        }
        match &self.browser {
            Some(CandidateSink::MediaTask) => self.tell(Control::Candidate(candidate.to_string())),
            Some(CandidateSink::Leg(leg)) => {
                if let Err(e) = leg.add_remote_candidate(&candidate.to_string()).await {
                    self.complain(format!("candidate refused: {e}"));
                }
            }
            None => {}
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
        if self.browser.is_some() {
            self.tell(Control::Digit(d));
        } else {
            self.complain("dtmf before the offer".into());
        }
    }
}

fn sdp_error(e: SdpError) -> MediaError {
    match e {
        SdpError::NoCommonCodec => MediaError::NoCommonCodec(e.to_string()),
        other => MediaError::BadSdp(other.to_string()),
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
        self.tell(Control::Established);
    }

    fn answered(&mut self) {
        self.tell(Control::Answered);
    }

    fn close(&mut self) {
        if !std::mem::replace(&mut self.closed, true) {
            self.tell(Control::Close);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}
