//! [`BrowserLeg`]: one browser peer connection, sans-IO.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::BytesMut;
use rand::distributions::Alphanumeric;
use rand::Rng;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCDtlsTransportState, RTCIceCandidate,
    RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use super::srtp_path::{MediaRoute, SrtpPath, Unprotected};
use crate::media::demux::{classify, DatagramKind};
use crate::media::webrtc_leg::{
    add_opus_fmtp, audio_media_engine, audio_track, offers_common_audio, opus_fmtp_for,
    report_about, tag_event_rates, untag_event_rates, InboundRtp, LegCodec, LegState,
    NegotiatedCodecs, ReceiverReport, WebRtcLegError, WebRtcSettings, ICE_CHECK_INTERVAL,
    ICE_MAX_BINDING_REQUESTS,
};
use rtc::interceptor::Registry;

/// Largest datagram the receive buffer is sized for (an MTU).
const DATAGRAM_CAPACITY: usize = 1500;

/// Something the call should act on.
#[derive(Debug, Clone, PartialEq)]
pub enum BrowserLegEvent {
    /// The connection state changed (`Connected` once ICE and DTLS are done; `Failed` or
    /// `Closed`: end the call). `Closed` is reported once.
    State(LegState),
    /// The browser's RTCP report block about the audio we send.
    ReceiverReport(ReceiverReport),
}

/// The local ICE username fragment and password of a leg: the single-port demultiplexer routes
/// the browser's first binding request by the first and checks its integrity with the second.
#[derive(Clone, PartialEq, Eq)]
pub struct IceCredentials {
    /// `a=ice-ufrag` of our SDP.
    pub ufrag: String,
    /// `a=ice-pwd` of our SDP; never logged.
    pub pwd: String,
}

impl std::fmt::Debug for IceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceCredentials")
            .field("ufrag", &self.ufrag)
            .finish_non_exhaustive()
    }
}

impl IceCredentials {
    /// Fresh random credentials: 16 and 32 alphanumeric characters (RFC 8839 asks for at least
    /// 24 and 128 bits of randomness).
    pub fn random() -> Self {
        let take = |n| {
            rand::thread_rng()
                .sample_iter(Alphanumeric)
                .take(n)
                .map(char::from)
                .collect()
        };
        IceCredentials {
            ufrag: take(16),
            pwd: take(32),
        }
    }
}

/// One datagram to send.
#[derive(Debug)]
pub struct Transmit {
    /// Our address to send from (the socket the candidate belongs to).
    pub from: SocketAddr,
    /// The browser's address.
    pub to: SocketAddr,
    /// The bytes (SRTP, DTLS or STUN), built by the stack.
    pub payload: BytesMut,
}

/// One browser peer connection: audio-only, bundled, rtcp-mux, host candidates on addresses the
/// owner bound. See the module docs for how it is driven.
pub struct BrowserLeg {
    pc: RTCPeerConnection,
    sender: RTCRtpSenderId,
    ssrc: u32,
    ice: IceCredentials,
    local_addrs: Vec<SocketAddr>,
    negotiated: Option<NegotiatedCodecs>,
    state: LegState,
    media_ready: bool,
    closed: bool,
    closed_reported: bool,
    events: VecDeque<BrowserLegEvent>,
    /// Receive buffer for the stack (STUN, DTLS, and SRTP until [`SrtpPath`] takes over): each
    /// datagram is copied in and split off; the allocation is reclaimed once the stack dropped
    /// the previous one. Empty until the first datagram, and one datagram's size: once
    /// connected it sees only a consent check every few seconds.
    rx: BytesMut,
    /// Media once connected: SRTP and RTCP done here, not in `rtc` (see [`SrtpPath`]).
    srtp: Option<SrtpPath>,
    /// The selected ICE pair media goes over; `None`: ask `rtc` again (after any input that
    /// can change it).
    route: Option<MediaRoute>,
    /// Protected media and reports waiting for [`Self::poll_transmit`].
    outbound: VecDeque<Transmit>,
    /// Unprotected packets waiting for [`Self::poll_media`], with their arrival.
    inbound: VecDeque<(Instant, InboundRtp)>,
    /// Errors from the stack's timers, counted rather than logged.
    timer_errors: u64,
    /// The stack's next deadline, asked once after an input that can move it rather than on
    /// every loop turn: each ask walks every handler. `None`: ask again. SRTP moves it not at
    /// all (the peer connection runs no report interceptors; [`SrtpPath`] reports).
    timeout: Option<Option<Instant>>,
    /// Whether the stack may hold state changes (after a timer, a STUN or DTLS datagram, a
    /// description or candidate, a close). An SRTP datagram raises none, so draining events
    /// after one would only sweep every handler for nothing.
    events_due: bool,
    /// Whether the stack may hold datagrams to send (after any input to it): asking it walks
    /// every handler and the interceptor chain, so it is not asked after media alone.
    writes_due: bool,
    /// The stack's set-up queues were given back (see [`BrowserLeg::handle_timeout`]).
    queues_shrunk: bool,
    /// Whether reads may wait inside the handlers (after a timer or an event sweep):
    /// `handle_read` itself pushes a datagram through every handler, so after it the media
    /// queue is popped without another sweep.
    reads_due: bool,
}

impl std::fmt::Debug for BrowserLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserLeg")
            .field("ssrc", &self.ssrc)
            .field("state", &self.state)
            .field("local_addrs", &self.local_addrs)
            .finish_non_exhaustive()
    }
}

fn stack_error(e: impl std::fmt::Display) -> WebRtcLegError {
    WebRtcLegError::WebRtc(e.to_string())
}

impl BrowserLeg {
    /// Answers the browser's offer. `local_addrs` are the bound addresses (one per socket; every
    /// call's may be the same single port) that become our host candidates, in the answer.
    /// Returns the leg and the answer SDP.
    pub fn answer(
        now: Instant,
        settings: &WebRtcSettings,
        local_addrs: &[SocketAddr],
        offer_sdp: &str,
    ) -> Result<(Self, String), WebRtcLegError> {
        if !offer_sdp.contains("m=audio") {
            return Err(WebRtcLegError::BadSdp {
                what: "offer",
                reason: "no audio section (m=audio)".to_owned(),
            });
        }
        if !offers_common_audio(offer_sdp) {
            return Err(WebRtcLegError::NoCommonCodec);
        }
        let mut leg = Self::build(now, settings, local_addrs)?;
        let bad = |e: rtc::shared::error::Error| WebRtcLegError::BadSdp {
            what: "offer",
            reason: e.to_string(),
        };
        let offer = RTCSessionDescription::offer(tag_event_rates(offer_sdp)).map_err(bad)?;
        leg.pc.set_remote_description(now, offer).map_err(bad)?;
        let answer = leg.pc.create_answer(None).map_err(stack_error)?;
        leg.pc
            .set_local_description(now, answer)
            .map_err(stack_error)?;
        leg.add_host_candidates()?;
        leg.learn_codecs()?;
        let sdp = add_opus_fmtp(&leg.local_sdp()?, &opus_fmtp_for(settings));
        Ok((leg, sdp))
    }

    /// Makes an offer for the browser (SIP→browser calls); apply its answer with
    /// [`accept_answer`](Self::accept_answer).
    pub fn offer(
        now: Instant,
        settings: &WebRtcSettings,
        local_addrs: &[SocketAddr],
    ) -> Result<(Self, String), WebRtcLegError> {
        let mut leg = Self::build(now, settings, local_addrs)?;
        let offer = leg.pc.create_offer(None).map_err(stack_error)?;
        leg.pc
            .set_local_description(now, offer)
            .map_err(stack_error)?;
        leg.add_host_candidates()?;
        let sdp = add_opus_fmtp(&leg.local_sdp()?, &opus_fmtp_for(settings));
        Ok((leg, sdp))
    }

    /// Applies the browser's answer to [`offer`](Self::offer).
    pub fn accept_answer(
        &mut self,
        now: Instant,
        answer_sdp: &str,
    ) -> Result<NegotiatedCodecs, WebRtcLegError> {
        self.check_open()?;
        let bad = |e: rtc::shared::error::Error| WebRtcLegError::BadSdp {
            what: "answer",
            reason: e.to_string(),
        };
        let answer = RTCSessionDescription::answer(tag_event_rates(answer_sdp)).map_err(bad)?;
        self.touched();
        self.pc.set_remote_description(now, answer).map_err(bad)?;
        self.learn_codecs()
    }

    fn build(
        now: Instant,
        settings: &WebRtcSettings,
        local_addrs: &[SocketAddr],
    ) -> Result<Self, WebRtcLegError> {
        let media = audio_media_engine(settings)?;
        // No interceptors: once connected RTP and RTCP bypass the stack (see `SrtpPath`),
        // and before that there is nothing to report on.
        let registry = Registry::new();
        let ice = IceCredentials::random();
        let setting_engine = SettingEngineBuilder::new()
            // RFC 8842 §5: the answerer should take the DTLS client role.
            .with_answering_dtls_role(RTCDtlsRole::Client)
            .with_ice_timeouts(
                Some(settings.ice_disconnected_timeout),
                Some(settings.ice_failed_timeout),
                Some(std::time::Duration::from_secs(2)),
            )
            .with_include_loopback_candidate(local_addrs.iter().any(|a| a.ip().is_loopback()))
            .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(ICE_MAX_BINDING_REQUESTS))
            .with_ice_credentials(ice.ufrag.clone(), ice.pwd.clone())
            .build();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(
                RTCConfigurationBuilder::new()
                    .with_certificates(settings.certificate.iter().cloned().collect())
                    .build(),
            )
            .with_media_engine(media)
            .with_setting_engine(setting_engine)
            .with_interceptor_registry(registry)
            .build(now)
            .map_err(stack_error)?;

        let ssrc: u32 = rand::random();
        let sender = pc.add_track(audio_track(ssrc)).map_err(stack_error)?;
        Ok(BrowserLeg {
            pc,
            sender,
            ssrc,
            ice,
            local_addrs: local_addrs.to_vec(),
            negotiated: None,
            state: LegState::New,
            media_ready: false,
            closed: false,
            closed_reported: false,
            events: VecDeque::new(),
            rx: BytesMut::new(),
            srtp: None,
            route: None,
            outbound: VecDeque::new(),
            inbound: VecDeque::new(),
            timer_errors: 0,
            timeout: None,
            events_due: true,
            writes_due: true,
            queues_shrunk: false,
            reads_due: true,
        })
    }

    fn add_host_candidates(&mut self) -> Result<(), WebRtcLegError> {
        for addr in &self.local_addrs {
            let candidate = CandidateHostConfig {
                base_config: CandidateConfig {
                    network: "udp".to_owned(),
                    address: addr.ip().to_string(),
                    port: addr.port(),
                    component: 1,
                    ..Default::default()
                },
                ..Default::default()
            }
            .new_candidate_host()
            .map_err(stack_error)?;
            let init = RTCIceCandidate::from(&candidate)
                .to_json()
                .map_err(stack_error)?;
            self.pc.add_local_candidate(init).map_err(stack_error)?;
        }
        // End of gathering: the SDP carries every candidate, none is trickled.
        self.pc
            .add_local_candidate(RTCIceCandidateInit::default())
            .map_err(stack_error)
    }

    fn local_sdp(&self) -> Result<String, WebRtcLegError> {
        let local = self
            .pc
            .local_description()
            .ok_or_else(|| WebRtcLegError::WebRtc("no local description".to_owned()))?;
        Ok(untag_event_rates(&local.sdp))
    }

    fn learn_codecs(&mut self) -> Result<NegotiatedCodecs, WebRtcLegError> {
        let sender = self
            .pc
            .rtp_sender(self.sender)
            .ok_or(WebRtcLegError::Closed)?
            .get_parameters()
            .rtp_parameters
            .codecs
            .clone();
        let negotiated = NegotiatedCodecs::from_parameters(&sender);
        if negotiated.preferred.is_none() {
            return Err(WebRtcLegError::NoCommonCodec);
        }
        self.negotiated = Some(negotiated);
        Ok(negotiated)
    }

    fn check_open(&self) -> Result<(), WebRtcLegError> {
        if self.closed {
            Err(WebRtcLegError::Closed)
        } else {
            Ok(())
        }
    }

    /// Adds a candidate the browser trickled (the JSON of an `RTCIceCandidate`); an empty one
    /// (end of candidates) is accepted and ignored. Not needed for ICE to connect: the browser's
    /// checks reach us at our candidates and become peer-reflexive candidates.
    pub fn add_remote_candidate(&mut self, json: &str) -> Result<(), WebRtcLegError> {
        self.check_open()?;
        let init: RTCIceCandidateInit = serde_json::from_str(json)
            .map_err(|e| WebRtcLegError::BadCandidate(format!("{e}: {json}")))?;
        if init.candidate.trim().is_empty() {
            return Ok(());
        }
        self.touched();
        self.pc
            .add_remote_candidate(init)
            .map_err(|e| WebRtcLegError::BadCandidate(e.to_string()))
    }

    /// Our ICE credentials, for [`super::ice_demux::IceDemux::register`].
    pub fn ice_credentials(&self) -> &IceCredentials {
        &self.ice
    }

    /// The addresses our candidates name.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Payload types agreed with the browser.
    pub fn negotiated(&self) -> Option<NegotiatedCodecs> {
        self.negotiated
    }

    /// SSRC of the audio we send.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The connection state last reported.
    pub fn state(&self) -> LegState {
        self.state
    }

    /// Whether SRTP keys exist (ICE and DTLS completed once): until then [`Self::send_rtp`]
    /// refuses packets.
    pub fn media_ready(&self) -> bool {
        self.media_ready
    }

    /// Errors the stack's timers returned (counted, never logged per occurrence).
    pub fn timer_errors(&self) -> u64 {
        self.timer_errors
    }

    /// Feeds one datagram received on `local` from `from`. Whatever the stack refuses (bad
    /// STUN, DTLS from a stranger, SRTP failing authentication) is dropped inside it.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        datagram: &[u8],
    ) {
        if self.closed || datagram.is_empty() {
            return;
        }
        let kind = classify(datagram);
        if kind == DatagramKind::Rtp && self.take_over_media(now) {
            self.unprotect(now, datagram);
            return;
        }
        self.rx.reserve(datagram.len().max(DATAGRAM_CAPACITY));
        self.rx.extend_from_slice(datagram);
        let message = self.rx.split();
        let dtls = kind == DatagramKind::Dtls;
        self.writes_due = true;
        if kind != DatagramKind::Rtp {
            self.timeout = None;
            self.events_due = true;
            self.route = None;
        }
        // `handle_read` of rtc 0.21 cannot fail: each handler drops what it refuses.
        let _ = self.pc.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: local,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message,
        });
        if dtls && self.media_ready {
            self.notice_peer_close();
        }
    }

    /// Whether media goes through [`SrtpPath`]: from the first moment after ICE and DTLS
    /// completed that the stack has its keys, taken then.
    fn take_over_media(&mut self, now: Instant) -> bool {
        if self.srtp.is_some() {
            return true;
        }
        if !self.media_ready {
            return false;
        }
        match self.pc.take_srtp_contexts() {
            Some((local, remote)) => {
                self.srtp = Some(SrtpPath::new(now, self.ssrc, local, remote));
                true
            }
            None => false,
        }
    }

    fn unprotect(&mut self, now: Instant, datagram: &[u8]) {
        let Some(srtp) = self.srtp.as_mut() else {
            return;
        };
        let negotiated = self.negotiated;
        let clock_rate = |pt| audio_clock_rate(negotiated.and_then(|n| n.codec(pt)));
        match srtp.unprotect(now, datagram, clock_rate) {
            Unprotected::Rtp(rtp) => self.inbound.push_back((now, rtp)),
            Unprotected::Rtcp(Some(report)) => self
                .events
                .push_back(BrowserLegEvent::ReceiverReport(report)),
            Unprotected::Rtcp(None) | Unprotected::Rejected => {}
        }
    }

    /// The selected ICE pair, asked of the stack again after any input that may change it.
    fn media_route(&mut self) -> Option<MediaRoute> {
        if self.route.is_none() {
            self.route = self.pc.selected_pair_addrs();
        }
        self.route
    }

    /// Datagrams from the browser dropped on the media path: failed SRTP authentication,
    /// replays, unparsable packets.
    pub fn rejected_media(&self) -> u64 {
        self.srtp.as_ref().map_or(0, SrtpPath::rejected)
    }

    /// rtc 0.21 marks the DTLS transport closed on the browser's close_notify but keeps the
    /// connection `Connected` (ICE still is); the call must end then, so it is reported here.
    fn notice_peer_close(&mut self) {
        let closed = self
            .pc
            .rtp_sender(self.sender)
            .and_then(|s| s.transport().map(|t| t.state()))
            == Some(RTCDtlsTransportState::Closed);
        if closed {
            self.report_state(LegState::Closed);
        }
    }

    /// The next datagram to send; drain until `None` after every `handle_*` and `send_rtp`.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(transmit) = self.outbound.pop_front() {
            return Some(transmit);
        }
        if !self.writes_due {
            return None;
        }
        let transmit = self.pc.poll_write().map(|t| Transmit {
            from: t.transport.local_addr,
            to: t.transport.peer_addr,
            payload: t.message,
        });
        self.writes_due = transmit.is_some();
        transmit
    }

    /// When [`Self::handle_timeout`] is next due (ICE checks and consent, DTLS retransmits,
    /// RTCP reports).
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let stack = *self.timeout.get_or_insert_with(|| self.pc.poll_timeout());
        let reports = self.srtp.as_ref().map(SrtpPath::poll_timeout);
        match (stack, reports) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Lets the stack's timers run up to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        let stack_due = self.timeout.flatten().is_none_or(|at| at <= now);
        if stack_due {
            self.touched();
            if self.pc.handle_timeout(now).is_err() {
                self.timer_errors += 1;
            }
        }
        let report = self.srtp.as_mut().and_then(|s| s.poll_report(now));
        if let Some(payload) = report {
            self.queue_media(payload);
            // The first report comes a second after the takeover: set-up is over and its
            // events drained, and the stack's queues stay empty from now on (about 10 KB).
            if !self.queues_shrunk {
                self.pc.shrink_idle_queues();
                self.queues_shrunk = true;
            }
        }
    }

    /// Queues a protected datagram on the selected pair; without one (ICE lost it) it is
    /// dropped, as the stack would.
    fn queue_media(&mut self, payload: BytesMut) {
        if let Some((from, to)) = self.media_route() {
            self.outbound.push_back(Transmit { from, to, payload });
        }
    }

    /// Something other than an SRTP datagram went in: the deadline may have moved, and events
    /// or reads may wait in the handlers.
    fn touched(&mut self) {
        self.timeout = None;
        self.events_due = true;
        self.writes_due = true;
        self.reads_due = true;
        self.route = None;
    }

    /// The next RTP packet from the browser (audio or telephone-event; the payload type says
    /// which, see [`NegotiatedCodecs::codec`]). RTCP reports met on the way become
    /// [`BrowserLegEvent::ReceiverReport`]s.
    pub fn poll_rtp(&mut self) -> Option<InboundRtp> {
        self.poll_media().map(|(_, rtp)| rtp)
    }

    /// [`Self::poll_rtp`] with the instant the packet's datagram was handed in (its arrival).
    pub fn poll_media(&mut self) -> Option<(Instant, InboundRtp)> {
        if let Some(media) = self.inbound.pop_front() {
            return Some(media);
        }
        loop {
            let message = match self.pc.poll_media_read() {
                Some(m) => m,
                None if self.reads_due => {
                    self.reads_due = false;
                    self.pc.poll_read()?
                }
                None => return None,
            };
            match message.message {
                RTCMessage::RtpPacket(_, packet) => {
                    return Some((message.now, InboundRtp::from(packet)));
                }
                RTCMessage::RtcpPacket(_, packets) => {
                    if let Some(report) = report_about(self.ssrc, &packets) {
                        self.events
                            .push_back(BrowserLegEvent::ReceiverReport(report));
                    }
                }
                _ => {}
            }
        }
    }

    /// The next event: state changes and receiver reports. Drain after every `handle_*`.
    pub fn poll_event(&mut self) -> Option<BrowserLegEvent> {
        if let Some(event) = self.events.pop_front() {
            return Some(event);
        }
        if !self.events_due {
            return None;
        }
        self.events_due = false;
        // A sweep can queue reads (the stack pumps them after events).
        self.reads_due = true;
        while let Some(event) = self.pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) = event {
                let state = match state {
                    RTCPeerConnectionState::Connecting => LegState::Connecting,
                    RTCPeerConnectionState::Connected => LegState::Connected,
                    RTCPeerConnectionState::Disconnected => LegState::Disconnected,
                    RTCPeerConnectionState::Failed => LegState::Failed,
                    RTCPeerConnectionState::Closed => LegState::Closed,
                    _ => LegState::New,
                };
                self.report_state(state);
            }
        }
        self.events.pop_front()
    }

    fn report_state(&mut self, state: LegState) {
        if state == LegState::Closed {
            if self.closed_reported {
                return;
            }
            self.closed_reported = true;
        }
        if state == LegState::Connected {
            self.media_ready = true;
        }
        self.state = state;
        self.events.push_back(BrowserLegEvent::State(state));
    }

    /// Sends one RTP packet to the browser (Opus, PCMU, PCMA or telephone-event); the caller owns
    /// sequence numbers and timestamps (telephone-event continues the audio's sequence). The
    /// packet is written once into a reused buffer and encrypted by [`SrtpPath`].
    pub fn send_rtp(
        &mut self,
        now: Instant,
        payload_type: u8,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> Result<(), WebRtcLegError> {
        self.check_open()?;
        let negotiated = self
            .negotiated
            .ok_or(WebRtcLegError::NotNegotiated(payload_type))?;
        if negotiated.codec(payload_type).is_none() {
            return Err(WebRtcLegError::NotNegotiated(payload_type));
        }
        if !self.media_ready || !self.take_over_media(now) {
            return Err(WebRtcLegError::WebRtc("media is not ready yet".to_owned()));
        }
        let clock_rate = audio_clock_rate(negotiated.codec(payload_type));
        let Some(srtp) = self.srtp.as_mut() else {
            return Err(WebRtcLegError::WebRtc("media is not ready yet".to_owned()));
        };
        let protected = srtp
            .protect_rtp(
                now,
                payload_type,
                seq,
                timestamp,
                marker,
                payload,
                clock_rate,
            )
            .map_err(stack_error)?;
        self.queue_media(protected);
        Ok(())
    }

    /// Closes the connection: a DTLS close_notify is queued (drain [`Self::poll_transmit`]
    /// once more), and [`LegState::Closed`] is reported once. Idempotent.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.touched();
        let _ = self.pc.close();
        self.report_state(LegState::Closed);
    }
}

/// The RTP clock of an audio codec; `None` for telephone-event and unknown payload types.
fn audio_clock_rate(codec: Option<LegCodec>) -> Option<u32> {
    match codec? {
        LegCodec::Opus => Some(48_000),
        LegCodec::Pcmu | LegCodec::Pcma => Some(8000),
        LegCodec::TelephoneEvent48k | LegCodec::TelephoneEvent8k => None,
    }
}
