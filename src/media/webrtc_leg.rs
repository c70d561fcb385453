//! The browser's media leg: one audio-only WebRTC peer connection per call (webrtc-rs 0.21).
//!
//! The call layer sees only this module's types: SDP and candidates as strings, RTP as
//! [`InboundRtp`] values and [`WebRtcLeg::send_rtp`] calls, and [`LegEvent`]s for trickled local
//! candidates and connection-state changes. It works with both directions of negotiation: the
//! browser offers ([`WebRtcLeg::accept_offer`]) for browser→SIP calls, the bridge offers
//! ([`WebRtcLeg::create_offer`] + [`WebRtcLeg::set_answer`]) for SIP→browser calls. Codecs are
//! registered with Chrome's payload types (Opus 111, PCMU 0, PCMA 8, telephone-event 110/48000 and
//! 126/8000); when answering, the offerer's payload types are used.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_PCMA, MIME_TYPE_PCMU, MIME_TYPE_TELEPHONE_EVENT,
};
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use std::collections::VecDeque;

use rtc::interceptor::{
    Attribute, Interceptor, Packet as InterceptorPacket, Slot, StreamInfo, TaggedPacket,
};
use rtc::rtcp::receiver_report::ReceiverReport as RtcpReceiverReport;
use rtc::rtcp::sender_report::SenderReport as RtcpSenderReport;
use rtc::sansio::Protocol;
use tokio::sync::mpsc;

use super::rtp_leg::{PortAllocator, PortLease, PortPair, RtpLegError};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::TrackLocalEvent;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    configure_rtcp_reports, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceGatheringState,
    RTCIceServer, RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription,
    Registry, SettingEngineBuilder,
};

/// `tracing` filter directives for webrtc-rs at `level`.
///
/// webrtc-rs logs a WARN for every datagram it refuses (SRTP that fails authentication, STUN
/// with a wrong username, DTLS from nobody): a stranger spraying the browser leg's ports would
/// write one line per packet. Below DEBUG only its errors are kept; what matters to an operator
/// (the connection failing) the leg reports itself as a state change.
pub fn log_directives(level: crate::config::LogLevel) -> String {
    use crate::config::LogLevel;
    let quiet = match level {
        LogLevel::Sensitive | LogLevel::Debug => level.filter_directive(),
        LogLevel::Info | LogLevel::Warn | LogLevel::Error => "error",
        LogLevel::None => "off",
    };
    [
        "webrtc", "rtc", "rtc_ice", "rtc_dtls", "rtc_srtp", "rtc_sctp", "rtc_turn", "rtc_stun",
    ]
    .iter()
    .map(|target| format!("{target}={quiet}"))
    .collect::<Vec<_>>()
    .join(",")
}

/// A STUN or TURN server for ICE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IceServer {
    /// `stun:host:port` / `turn:host:port?transport=udp` URLs.
    pub urls: Vec<String>,
    /// TURN username (empty for STUN).
    pub username: String,
    /// TURN credential (empty for STUN). Never logged.
    pub credential: String,
}

/// An audio codec the leg can negotiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LegCodec {
    /// Opus 48000/2, `minptime=10;useinbandfec=1`.
    Opus,
    /// G.711 μ-law.
    Pcmu,
    /// G.711 A-law.
    Pcma,
    /// RFC 4733 DTMF on the 48 kHz clock (goes with Opus).
    TelephoneEvent48k,
    /// RFC 4733 DTMF on the 8 kHz clock (goes with G.711).
    TelephoneEvent8k,
}

impl LegCodec {
    /// Every codec, in the order the bridge prefers them.
    pub const ALL: [LegCodec; 5] = [
        LegCodec::Opus,
        LegCodec::Pcmu,
        LegCodec::Pcma,
        LegCodec::TelephoneEvent48k,
        LegCodec::TelephoneEvent8k,
    ];

    pub(crate) fn parameters(self) -> RTCRtpCodecParameters {
        let (mime, clock_rate, channels, fmtp, pt) = match self {
            LegCodec::Opus => (MIME_TYPE_OPUS, 48_000, 2, "minptime=10;useinbandfec=1", 111),
            LegCodec::Pcmu => (MIME_TYPE_PCMU, 8000, 0, "", 0),
            LegCodec::Pcma => (MIME_TYPE_PCMA, 8000, 0, "", 8),
            LegCodec::TelephoneEvent48k => (
                MIME_TYPE_TELEPHONE_EVENT,
                48_000,
                0,
                "0-16;srbridge-rate=48000",
                110,
            ),
            LegCodec::TelephoneEvent8k => (
                MIME_TYPE_TELEPHONE_EVENT,
                8000,
                0,
                "0-16;srbridge-rate=8000",
                126,
            ),
        };
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: mime.to_owned(),
                clock_rate,
                channels,
                sdp_fmtp_line: fmtp.to_owned(),
                rtcp_feedback: vec![],
            },
            payload_type: pt,
        }
    }

    fn from_codec(codec: &RTCRtpCodec) -> Option<Self> {
        let mime = codec.mime_type.to_ascii_lowercase();
        if mime == MIME_TYPE_OPUS.to_ascii_lowercase() {
            Some(LegCodec::Opus)
        } else if mime == MIME_TYPE_PCMU.to_ascii_lowercase() {
            Some(LegCodec::Pcmu)
        } else if mime == MIME_TYPE_PCMA.to_ascii_lowercase() {
            Some(LegCodec::Pcma)
        } else if mime == MIME_TYPE_TELEPHONE_EVENT.to_ascii_lowercase() {
            Some(if codec.clock_rate == 8000 {
                LegCodec::TelephoneEvent8k
            } else {
                LegCodec::TelephoneEvent48k
            })
        } else {
            None
        }
    }
}

/// How a leg is built; one value is shared by every call.
#[derive(Debug, Clone)]
pub struct WebRtcSettings {
    /// Local addresses to bind: each gives a host candidate (configured local/public addresses).
    pub bind_ips: Vec<IpAddr>,
    /// Where the media sockets' UDP ports come from (one even/odd pair per bind address is held
    /// while the leg lives; its even port carries ICE, DTLS and RTP/RTCP-mux); `None` for
    /// ephemeral ports. The bridge shares the RTP legs' allocator unless
    /// `[media] webrtc_port_min/max` sets a range apart, so no two legs get the same port.
    pub ports: Option<PortAllocator>,
    /// STUN/TURN servers (server-reflexive and relay candidates).
    pub ice_servers: Vec<IceServer>,
    /// Codecs offered/accepted, in preference order.
    pub codecs: Vec<LegCodec>,
    /// Resolve browsers' `.local` (mDNS) candidates; needs multicast on the host. Without it ICE
    /// still connects through peer-reflexive candidates once the browser's checks arrive.
    pub resolve_mdns: bool,
    /// Silence on the ICE path (no consent/keepalive answers) before [`LegState::Disconnected`].
    /// A peer that went away without a word (or only with a DTLS close_notify, which webrtc-rs
    /// does not surface) is noticed this way.
    pub ice_disconnected_timeout: Duration,
    /// Further time after Disconnected before [`LegState::Failed`]: end the call then.
    pub ice_failed_timeout: Duration,
    /// Ask the browser for narrowband Opus: `maxplaybackrate=8000;sprop-maxcapturerate=8000` in
    /// every SDP we hand out (`[media] opus_narrowband`; docs/audio.md has the measurements).
    pub opus_narrowband: bool,
    /// Ask the browser to send Opus at this average bitrate (`maxaveragebitrate`, b/s) instead
    /// of its default (`[media] opus_receive_bitrate`); `None`: its default.
    pub opus_receive_bitrate: Option<u32>,
    /// The DTLS certificate every leg presents ([`dtls_certificate`], made once per process the
    /// way Janus and str0m do); `None`: each leg makes its own (an ECDSA key and a self-signed
    /// certificate per call).
    pub certificate: Option<RTCCertificate>,
}

/// Pacing of ICE connectivity checks while a leg connects: RFC 8445's Ta (50 ms, what browsers
/// use) rather than webrtc-rs's 200 ms, which put up to 200 ms between a candidate arriving and
/// its first check, on every call's set-up. Connected legs keep their keepalive interval.
pub const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// Checks per candidate pair before it fails: 28 × 50 ms, the 1.4 s webrtc-rs gave 7 × 200 ms.
pub const ICE_MAX_BINDING_REQUESTS: u16 = 28;

/// A fresh self-signed ECDSA P-256 certificate for the browser legs' DTLS. Browsers check the
/// fingerprint in our SDP, not a chain, so one per process serves every call; the bridge makes
/// it at start (a restart gives a new one).
pub fn dtls_certificate() -> Result<RTCCertificate, WebRtcLegError> {
    let provider =
        rtc::crypto::default_provider().map_err(|e| WebRtcLegError::WebRtc(e.to_string()))?;
    let name: String = rand::thread_rng()
        .sample_iter(rand::distributions::Alphanumeric)
        .take(16)
        .map(char::from)
        .collect();
    let params =
        CertificateParams::new(vec![name]).map_err(|e| WebRtcLegError::WebRtc(e.to_string()))?;
    RTCCertificate::generate(
        provider.crypto(),
        rtc::crypto::SignatureScheme::EcdsaP256Sha256,
        params,
    )
    .map_err(|e| WebRtcLegError::WebRtc(e.to_string()))
}

impl Default for WebRtcSettings {
    fn default() -> Self {
        Self {
            bind_ips: vec![IpAddr::from([127, 0, 0, 1])],
            ports: None,
            ice_servers: vec![],
            codecs: LegCodec::ALL.to_vec(),
            resolve_mdns: false,
            ice_disconnected_timeout: Duration::from_secs(5),
            ice_failed_timeout: Duration::from_secs(10),
            opus_narrowband: false,
            opus_receive_bitrate: None,
            certificate: None,
        }
    }
}

/// Why a leg operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WebRtcLegError {
    /// The SDP could not be parsed or applied.
    #[error("bad SDP {what}: {reason}")]
    BadSdp {
        /// Which description ("offer", "answer").
        what: &'static str,
        /// What the WebRTC stack said.
        reason: String,
    },
    /// The remote description has no audio codec in common with ours.
    #[error("no common audio codec (we offer Opus, PCMU, PCMA)")]
    NoCommonCodec,
    /// A remote ICE candidate could not be parsed or added.
    #[error("bad ICE candidate: {0}")]
    BadCandidate(String),
    /// No UDP port was free in the configured range.
    #[error("no port for the browser leg: {0}")]
    NoFreePort(#[from] RtpLegError),
    /// Sending before negotiation, or with a payload type not negotiated.
    #[error("payload type {0} is not negotiated on this leg")]
    NotNegotiated(u8),
    /// The leg was closed.
    #[error("the WebRTC leg is closed")]
    Closed,
    /// Any other failure of the WebRTC stack.
    #[error("webrtc: {0}")]
    WebRtc(String),
}

impl From<webrtc::error::Error> for WebRtcLegError {
    fn from(e: webrtc::error::Error) -> Self {
        WebRtcLegError::WebRtc(e.to_string())
    }
}

/// Connection state of the media path, for ending a call whose media died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegState {
    /// Not started.
    New,
    /// ICE/DTLS in progress.
    Connecting,
    /// Media can flow.
    Connected,
    /// Connectivity lost; may recover.
    Disconnected,
    /// Connectivity failed for good: end the call.
    Failed,
    /// Closed (by us or by the peer): end the call.
    Closed,
}

/// Something the call layer should act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegEvent {
    /// A local ICE candidate to trickle to the browser, as JSON
    /// `{"candidate":..,"sdpMid":..,"sdpMLineIndex":..}` (what `RTCPeerConnection.addIceCandidate`
    /// takes).
    LocalCandidate(String),
    /// All local candidates were gathered.
    GatheringComplete,
    /// The connection state changed.
    State(LegState),
}

/// One RTP packet from the browser (audio or telephone-event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundRtp {
    /// Payload type; see [`NegotiatedCodecs`] for what it means.
    pub payload_type: u8,
    /// Sequence number.
    pub seq: u16,
    /// Timestamp (48 kHz for Opus and telephone-event/48000, 8 kHz for G.711).
    pub timestamp: u32,
    /// SSRC of the browser's stream.
    pub ssrc: u32,
    /// Marker bit (start of a talk spurt; first packet of a DTMF event).
    pub marker: bool,
    /// Payload (shares the received buffer; no copy).
    pub payload: Bytes,
}

impl From<rtc::rtp::Packet> for InboundRtp {
    /// What both browser legs hand the pipeline of a decrypted packet (the payload not copied).
    fn from(packet: rtc::rtp::Packet) -> Self {
        let h = &packet.header;
        InboundRtp {
            payload_type: h.payload_type,
            seq: h.sequence_number,
            timestamp: h.timestamp,
            ssrc: h.ssrc,
            marker: h.marker,
            payload: packet.payload,
        }
    }
}

/// Payload types agreed with the browser, `None` for codecs not negotiated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NegotiatedCodecs {
    /// Opus.
    pub opus: Option<u8>,
    /// PCMU.
    pub pcmu: Option<u8>,
    /// PCMA.
    pub pcma: Option<u8>,
    /// telephone-event/48000.
    pub telephone_event_48k: Option<u8>,
    /// telephone-event/8000.
    pub telephone_event_8k: Option<u8>,
    /// The first audio codec in the negotiated order: what to send.
    pub preferred: Option<LegCodec>,
}

impl NegotiatedCodecs {
    /// The payload type of `codec`, if negotiated.
    pub fn payload_type(&self, codec: LegCodec) -> Option<u8> {
        match codec {
            LegCodec::Opus => self.opus,
            LegCodec::Pcmu => self.pcmu,
            LegCodec::Pcma => self.pcma,
            LegCodec::TelephoneEvent48k => self.telephone_event_48k,
            LegCodec::TelephoneEvent8k => self.telephone_event_8k,
        }
    }

    /// The codec a received payload type stands for.
    pub fn codec(&self, payload_type: u8) -> Option<LegCodec> {
        LegCodec::ALL
            .into_iter()
            .find(|c| self.payload_type(*c) == Some(payload_type))
    }

    pub(crate) fn from_parameters(codecs: &[RTCRtpCodecParameters]) -> Self {
        let mut n = NegotiatedCodecs::default();
        for c in codecs {
            let Some(codec) = LegCodec::from_codec(&c.rtp_codec) else {
                continue;
            };
            let slot = match codec {
                LegCodec::Opus => &mut n.opus,
                LegCodec::Pcmu => &mut n.pcmu,
                LegCodec::Pcma => &mut n.pcma,
                LegCodec::TelephoneEvent48k => &mut n.telephone_event_48k,
                LegCodec::TelephoneEvent8k => &mut n.telephone_event_8k,
            };
            slot.get_or_insert(c.payload_type);
            let audio = matches!(codec, LegCodec::Opus | LegCodec::Pcmu | LegCodec::Pcma);
            if audio && n.preferred.is_none() {
                n.preferred = Some(codec);
            }
        }
        n
    }
}

/// The browser's view of the audio we send, from one RTCP report block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReceiverReport {
    /// Fraction of our packets lost since its previous report, 0..=1.
    pub fraction_lost: f32,
    /// Packets lost since the stream began (RFC 3550's cumulative count).
    pub total_lost: u32,
}

/// The report block about `ssrc` in a compound RTCP packet, if there is one.
pub(crate) fn report_about(
    ssrc: u32,
    packets: &[Box<dyn rtc::rtcp::Packet>],
) -> Option<ReceiverReport> {
    packets.iter().find_map(|packet| {
        let any = packet.as_any();
        let blocks = if let Some(rr) = any.downcast_ref::<RtcpReceiverReport>() {
            &rr.reports
        } else if let Some(sr) = any.downcast_ref::<RtcpSenderReport>() {
            &sr.reports
        } else {
            return None;
        };
        blocks
            .iter()
            .find(|b| b.ssrc == ssrc)
            .map(|b| ReceiverReport {
                fraction_lost: f32::from(b.fraction_lost) / 256.0,
                total_lost: b.total_lost,
            })
    })
}

/// Lets the remote's sender and receiver reports (which carry the report blocks about what we
/// send) reach the sending track; all other inbound RTCP still ends in the chain. Placed after
/// the report interceptors, which have read it by then (the shape of webrtc-rs's
/// `rtcp-processing` example).
pub struct LossReportForwarder {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

/// Where [`LossReportForwarder`] sits: after every named slot.
pub(crate) const LOSS_REPORT_SLOT: usize = 14_000;

impl Protocol<TaggedPacket, TaggedPacket, ()> for LossReportForwarder {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = std::time::Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let InterceptorPacket::Rtcp(packets) = &msg.message.packet {
            let reports = packets.iter().any(|p| {
                let any = p.as_any();
                any.is::<RtcpReceiverReport>() || any.is::<RtcpSenderReport>()
            });
            if !reports {
                return Ok(());
            }
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

/// The media engine of both browser legs (this one and the sans-IO `browser_leg`): the audio
/// codecs `settings` allows, all of them when it names none.
pub(crate) fn audio_media_engine(settings: &WebRtcSettings) -> Result<MediaEngine, WebRtcLegError> {
    let mut media = MediaEngine::default();
    let codecs = if settings.codecs.is_empty() {
        LegCodec::ALL.as_slice()
    } else {
        settings.codecs.as_slice()
    };
    for codec in codecs {
        media
            .register_codec(codec.parameters(), RtpCodecKind::Audio)
            .map_err(|e| WebRtcLegError::WebRtc(e.to_string()))?;
    }
    Ok(media)
}

/// The interceptors of both browser legs: sender/receiver reports only (NACK and TWCC are for
/// video), and the forwarder that lets the browser's reports about our stream reach the leg.
pub(crate) fn audio_interceptors() -> Registry {
    configure_rtcp_reports(Registry::new())
        .with(Slot::from(LOSS_REPORT_SLOT), LossReportForwarder::new())
}

/// Our outgoing audio track (both browser legs), SSRC `ssrc`, random ids. No codec in its
/// encoding: one would become the transceiver's only codec preference and our offers would list
/// nothing else; the payload type of each packet decides.
pub(crate) fn audio_track(ssrc: u32) -> MediaStreamTrack {
    let id = uuid::Uuid::new_v4().simple().to_string();
    MediaStreamTrack::new(
        format!("srbridge-{id}"),
        format!("audio-{id}"),
        "srbridge-audio".to_owned(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            ..Default::default()
        }],
    )
}

/// One RTP packet of our audio stream (both browser legs).
pub(crate) fn audio_rtp(
    ssrc: u32,
    payload_type: u8,
    seq: u16,
    timestamp: u32,
    marker: bool,
    payload: Bytes,
) -> rtc::rtp::Packet {
    rtc::rtp::Packet {
        header: rtc::rtp::Header {
            version: 2,
            marker,
            payload_type,
            sequence_number: seq,
            timestamp,
            ssrc,
            ..Default::default()
        },
        payload,
    }
}

impl LossReportForwarder {
    /// An empty forwarder, for a registry's [`LOSS_REPORT_SLOT`].
    pub(crate) fn new() -> Self {
        Self {
            read: VecDeque::new(),
            write: VecDeque::new(),
        }
    }
}

impl Interceptor for LossReportForwarder {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// The receiving ends of a leg: control events and incoming RTP.
#[derive(Debug)]
pub struct LegChannels {
    /// Candidates and state changes.
    pub events: mpsc::UnboundedReceiver<LegEvent>,
    /// Incoming RTP, in arrival order. Bounded: packets are dropped (and counted, see
    /// [`WebRtcLeg::dropped_rtp`]) when the consumer falls behind.
    pub rtp: mpsc::Receiver<InboundRtp>,
}

/// Packets held for a slow consumer before dropping (about 5 s of 20 ms audio).
const RTP_QUEUE: usize = 256;

/// State the peer connection's callbacks share with the leg.
struct Shared {
    events: mpsc::UnboundedSender<LegEvent>,
    rtp: mpsc::Sender<InboundRtp>,
    /// `a=mid` of our audio section, for the candidates' `sdpMid`.
    mid: Mutex<String>,
    closed_reported: AtomicBool,
    /// Set once the connection reached Connected: DTLS is done, so SRTP keys exist and packets
    /// to the browser can be encrypted (before that the stack refuses them).
    media_ready: AtomicBool,
    dropped_rtp: AtomicU64,
}

impl Shared {
    fn report_state(&self, state: LegState) {
        if state == LegState::Closed && self.closed_reported.swap(true, Ordering::AcqRel) {
            return;
        }
        if state == LegState::Connected {
            self.media_ready.store(true, Ordering::Release);
        }
        let _ = self.events.send(LegEvent::State(state));
    }
}

struct Handler {
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        let Ok(init) = event.candidate.to_json() else {
            return;
        };
        let mid = self
            .shared
            .mid
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        let json = serde_json::json!({
            "candidate": init.candidate,
            "sdpMid": mid,
            "sdpMLineIndex": 0,
        });
        let _ = self
            .shared
            .events
            .send(LegEvent::LocalCandidate(json.to_string()));
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.shared.events.send(LegEvent::GatheringComplete);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let state = match state {
            RTCPeerConnectionState::Connecting => LegState::Connecting,
            RTCPeerConnectionState::Connected => LegState::Connected,
            RTCPeerConnectionState::Disconnected => LegState::Disconnected,
            RTCPeerConnectionState::Failed => LegState::Failed,
            RTCPeerConnectionState::Closed => LegState::Closed,
            _ => LegState::New,
        };
        self.shared.report_state(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(packet) = event {
                    let rtp = InboundRtp::from(packet);
                    match shared.rtp.try_send(rtp) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            shared.dropped_rtp.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => break,
                    }
                }
            }
        });
    }
}

/// One browser media leg. See the module docs.
pub struct WebRtcLeg {
    pc: Box<dyn PeerConnection>,
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    shared: Arc<Shared>,
    negotiated: Mutex<Option<NegotiatedCodecs>>,
    closed: AtomicBool,
    /// What every SDP we hand out adds to the Opus fmtp ([`WebRtcSettings::opus_narrowband`],
    /// [`WebRtcSettings::opus_receive_bitrate`]).
    opus_fmtp: Vec<String>,
    /// The UDP ports the stack bound, reserved until the leg is dropped.
    _ports: Vec<PortLease>,
}

impl std::fmt::Debug for WebRtcLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtcLeg")
            .field("ssrc", &self.ssrc)
            .finish_non_exhaustive()
    }
}

/// Takes a port pair from `ports` on `ip` and lets its sockets go, keeping the lease: the stack
/// binds the even port itself (it only takes addresses), and no other leg of ours is handed the
/// pair meanwhile.
fn reserve_port(ports: &PortAllocator, ip: IpAddr) -> Result<(u16, PortLease), WebRtcLegError> {
    let PortPair { rtp, rtcp, lease } = ports.allocate(ip)?;
    let port = rtp.local_addr().map_err(RtpLegError::Io)?.port();
    drop((rtp, rtcp));
    Ok((port, lease))
}

/// The fmtp key that tells the two telephone-event codecs apart.
///
/// webrtc-rs 0.21 matches codecs by MIME type and fmtp only, never by clock rate, so
/// telephone-event/48000 and /8000 would collapse onto one payload type in an answer. Remote SDP
/// gets this key added to each telephone-event format ([`tag_event_rates`]), our registered codecs
/// carry it, and it is removed again from every SDP we hand out ([`untag_event_rates`]).
const RATE_KEY: &str = "srbridge-rate=";

/// Adds `srbridge-rate=<clock>` to the fmtp of every telephone-event format in `sdp`.
pub(crate) fn tag_event_rates(sdp: &str) -> String {
    let eol = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    let lines: Vec<&str> = sdp.lines().collect();
    // Payload type -> clock rate, per media section (payload types are section-scoped).
    let mut out = String::with_capacity(sdp.len() + 128);
    let mut section_start = 0;
    let flush = |section: &[&str], out: &mut String| {
        let events: Vec<(String, String)> = section
            .iter()
            .filter_map(|l| {
                let rest = l.trim().strip_prefix("a=rtpmap:")?;
                let (pt, codec) = rest.split_once(' ')?;
                let mut parts = codec.split('/');
                let name = parts.next()?;
                let rate = parts.next()?;
                name.eq_ignore_ascii_case("telephone-event")
                    .then(|| (pt.to_owned(), rate.to_owned()))
            })
            .collect();
        for line in section {
            let trimmed = line.trim();
            let mut written = false;
            if let Some(rest) = trimmed.strip_prefix("a=fmtp:") {
                if let Some((pt, params)) = rest.split_once(' ') {
                    if let Some((_, rate)) = events.iter().find(|(p, _)| p == pt) {
                        out.push_str(&format!("a=fmtp:{pt} {params};{RATE_KEY}{rate}{eol}"));
                        written = true;
                    }
                }
            }
            if !written {
                out.push_str(trimmed);
                out.push_str(eol);
            }
            if let Some(rest) = trimmed.strip_prefix("a=rtpmap:") {
                if let Some((pt, _)) = rest.split_once(' ') {
                    let has_fmtp = section
                        .iter()
                        .any(|l| l.trim().starts_with(&format!("a=fmtp:{pt} ")));
                    if let Some((_, rate)) = events.iter().find(|(p, _)| p == pt) {
                        if !has_fmtp {
                            out.push_str(&format!("a=fmtp:{pt} {RATE_KEY}{rate}{eol}"));
                        }
                    }
                }
            }
        }
    };
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("m=") && i > section_start {
            flush(&lines[section_start..i], &mut out);
            section_start = i;
        }
    }
    flush(&lines[section_start..], &mut out);
    out
}

/// Removes what [`tag_event_rates`] added (and fmtp lines left empty by that).
pub(crate) fn untag_event_rates(sdp: &str) -> String {
    let eol = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.lines() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("a=fmtp:") {
            if let Some((pt, params)) = rest.split_once(' ') {
                let kept: Vec<&str> = params
                    .split(';')
                    .filter(|p| !p.trim().starts_with(RATE_KEY))
                    .collect();
                if kept.iter().all(|p| p.trim().is_empty()) {
                    continue;
                }
                out.push_str(&format!("a=fmtp:{pt} {}{eol}", kept.join(";")));
                continue;
            }
        }
        out.push_str(trimmed);
        out.push_str(eol);
    }
    out
}

/// What narrowband adds to the Opus fmtp (RFC 7587 §7): we play what we receive at 8 kHz (G.711
/// on the other side) and send what was captured at 8 kHz.
const NARROWBAND_OPUS: [&str; 2] = ["maxplaybackrate=8000", "sprop-maxcapturerate=8000"];

/// The Opus fmtp parameters `settings` asks browsers for (RFC 7587 §7).
pub(crate) fn opus_fmtp_for(settings: &WebRtcSettings) -> Vec<String> {
    let mut params = Vec::new();
    if settings.opus_narrowband {
        params.extend(NARROWBAND_OPUS.iter().map(|p| (*p).to_owned()));
    }
    if let Some(bitrate) = settings.opus_receive_bitrate {
        params.push(format!("maxaveragebitrate={bitrate}"));
    }
    params
}

/// Adds `params` (`key=value`) to every Opus format's fmtp in `sdp` (keys it already has are
/// left alone; a format without an fmtp line gets one). webrtc-rs answers with the offerer's
/// fmtp, so this is done on the SDP we hand out, not on the registered codec.
pub(crate) fn add_opus_fmtp(sdp: &str, params: &[String]) -> String {
    if params.is_empty() {
        return sdp.to_owned();
    }
    let eol = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    let opus: Vec<&str> = sdp
        .lines()
        .filter_map(|l| {
            let (pt, codec) = l.trim().strip_prefix("a=rtpmap:")?.split_once(' ')?;
            codec
                .to_ascii_lowercase()
                .starts_with("opus/")
                .then_some(pt)
        })
        .collect();
    let add = |existing: &str| {
        let mut all: Vec<&str> = existing
            .split(';')
            .filter(|p| !p.trim().is_empty())
            .collect();
        for extra in params {
            let key = extra.split('=').next().unwrap_or(extra);
            if !all.iter().any(|p| p.trim().split('=').next() == Some(key)) {
                all.push(extra.as_str());
            }
        }
        all.join(";")
    };
    let mut out = String::with_capacity(sdp.len() + 64);
    for line in sdp.lines() {
        let trimmed = line.trim();
        let fmtp = trimmed
            .strip_prefix("a=fmtp:")
            .and_then(|rest| rest.split_once(' '))
            .filter(|(pt, _)| opus.contains(pt));
        match fmtp {
            Some((pt, params)) => out.push_str(&format!("a=fmtp:{pt} {}{eol}", add(params))),
            None => {
                out.push_str(trimmed);
                out.push_str(eol);
            }
        }
        let bare = trimmed
            .strip_prefix("a=rtpmap:")
            .and_then(|rest| rest.split_once(' '))
            .map(|(pt, _)| pt)
            .filter(|pt| opus.contains(pt))
            .filter(|pt| {
                !sdp.lines()
                    .any(|l| l.trim().starts_with(&format!("a=fmtp:{pt} ")))
            });
        if let Some(pt) = bare {
            out.push_str(&format!("a=fmtp:{pt} {}{eol}", add("")));
        }
    }
    out
}

/// Whether an audio section of `sdp` lists Opus, PCMU or PCMA (static payload types 0 and 8 may
/// come without an rtpmap).
pub(crate) fn offers_common_audio(sdp: &str) -> bool {
    let mut listed: Vec<&str> = Vec::new();
    let mut in_audio = false;
    for line in sdp.lines() {
        let line = line.trim();
        if let Some(m) = line.strip_prefix("m=") {
            in_audio = m.starts_with("audio");
            listed = if in_audio {
                m.split_whitespace().skip(3).collect()
            } else {
                Vec::new()
            };
            if listed.iter().any(|pt| *pt == "0" || *pt == "8") {
                return true;
            }
        } else if in_audio {
            let Some((pt, codec)) = line
                .strip_prefix("a=rtpmap:")
                .and_then(|r| r.split_once(' '))
            else {
                continue;
            };
            let name = codec.split('/').next().unwrap_or("").to_ascii_lowercase();
            if listed.contains(&pt) && matches!(name.as_str(), "opus" | "pcmu" | "pcma") {
                return true;
            }
        }
    }
    false
}

/// The `a=mid` of the first audio section of an SDP.
pub(crate) fn audio_mid(sdp: &str) -> Option<String> {
    let mut in_audio = false;
    for line in sdp.lines() {
        let line = line.trim();
        if let Some(m) = line.strip_prefix("m=") {
            in_audio = m.starts_with("audio");
        } else if in_audio {
            if let Some(mid) = line.strip_prefix("a=mid:") {
                return Some(mid.to_owned());
            }
        }
    }
    None
}

impl WebRtcLeg {
    /// Builds the peer connection (binding its sockets) with an outgoing audio track.
    pub async fn new(settings: &WebRtcSettings) -> Result<(Self, LegChannels), WebRtcLegError> {
        let media = audio_media_engine(settings)?;
        let registry = audio_interceptors();

        let mut bind = Vec::new();
        let mut leases = Vec::new();
        for ip in &settings.bind_ips {
            let port = match &settings.ports {
                Some(ports) => {
                    let (port, lease) = reserve_port(ports, *ip)?;
                    leases.push(lease);
                    port
                }
                None => 0,
            };
            bind.push(SocketAddr::new(*ip, port).to_string());
        }
        if bind.is_empty() {
            bind.push("127.0.0.1:0".to_owned());
        }

        let setting_engine = SettingEngineBuilder::new()
            .with_multicast_dns_mode(if settings.resolve_mdns {
                rtc::ice::mdns::MulticastDnsMode::QueryOnly
            } else {
                rtc::ice::mdns::MulticastDnsMode::Disabled
            })
            // RFC 8842 §5: the answerer should take the DTLS client role.
            .with_answering_dtls_role(RTCDtlsRole::Client)
            .with_ice_timeouts(
                Some(settings.ice_disconnected_timeout),
                Some(settings.ice_failed_timeout),
                Some(Duration::from_secs(2)),
            )
            .with_include_loopback_candidate(settings.bind_ips.iter().any(|ip| ip.is_loopback()))
            .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(ICE_MAX_BINDING_REQUESTS))
            .build();
        let config = RTCConfigurationBuilder::new()
            .with_ice_servers(
                settings
                    .ice_servers
                    .iter()
                    .map(|s| RTCIceServer {
                        urls: s.urls.clone(),
                        username: s.username.clone(),
                        credential: s.credential.clone(),
                    })
                    .collect(),
            )
            .with_certificates(settings.certificate.iter().cloned().collect())
            .build();

        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (rtp_tx, rtp_rx) = mpsc::channel(RTP_QUEUE);
        let shared = Arc::new(Shared {
            events: events_tx,
            rtp: rtp_tx,
            mid: Mutex::new("0".to_owned()),
            closed_reported: AtomicBool::new(false),
            media_ready: AtomicBool::new(false),
            dropped_rtp: AtomicU64::new(0),
        });

        let pc = PeerConnectionBuilder::new()
            .with_configuration(config)
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(setting_engine)
            .with_handler(Arc::new(Handler {
                shared: Arc::clone(&shared),
            }))
            .with_udp_addrs(bind)
            .build()
            .await?;

        let ssrc: u32 = rand::random();
        let track = Arc::new(TrackLocalStaticRTP::new(audio_track(ssrc)));
        pc.add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
            .await?;

        Ok((
            Self {
                pc: Box::new(pc),
                track,
                ssrc,
                shared,
                negotiated: Mutex::new(None),
                closed: AtomicBool::new(false),
                opus_fmtp: opus_fmtp_for(settings),
                _ports: leases,
            },
            LegChannels {
                events: events_rx,
                rtp: rtp_rx,
            },
        ))
    }

    fn check_open(&self) -> Result<(), WebRtcLegError> {
        if self.closed.load(Ordering::Acquire) {
            Err(WebRtcLegError::Closed)
        } else {
            Ok(())
        }
    }

    async fn set_local(&self, desc: RTCSessionDescription) -> Result<String, WebRtcLegError> {
        if let Some(mid) = audio_mid(&desc.sdp) {
            if let Ok(mut m) = self.shared.mid.lock() {
                *m = mid;
            }
        }
        self.pc.set_local_description(desc).await?;
        let local = self
            .pc
            .local_description()
            .await
            .ok_or_else(|| WebRtcLegError::WebRtc("no local description".to_owned()))?;
        let sdp = untag_event_rates(&local.sdp);
        Ok(add_opus_fmtp(&sdp, &self.opus_fmtp))
    }

    /// Reads the negotiated payload types from the sender; fails if no audio codec is common.
    async fn learn_codecs(&self) -> Result<NegotiatedCodecs, WebRtcLegError> {
        let mut negotiated = NegotiatedCodecs::default();
        for sender in self.pc.get_senders().await {
            if let Ok(params) = sender.get_parameters().await {
                negotiated = NegotiatedCodecs::from_parameters(&params.rtp_parameters.codecs);
                if negotiated.preferred.is_some() {
                    break;
                }
            }
        }
        if negotiated.preferred.is_none() {
            return Err(WebRtcLegError::NoCommonCodec);
        }
        if let Ok(mut n) = self.negotiated.lock() {
            *n = Some(negotiated);
        }
        Ok(negotiated)
    }

    /// Answers the browser's offer; returns the answer SDP. Local candidates follow as
    /// [`LegEvent::LocalCandidate`].
    pub async fn accept_offer(&self, sdp: &str) -> Result<String, WebRtcLegError> {
        self.check_open()?;
        let bad = |e: webrtc::error::Error| WebRtcLegError::BadSdp {
            what: "offer",
            reason: e.to_string(),
        };
        if !sdp.contains("m=audio") {
            return Err(WebRtcLegError::BadSdp {
                what: "offer",
                reason: "no audio section (m=audio)".to_owned(),
            });
        }
        if !offers_common_audio(sdp) {
            return Err(WebRtcLegError::NoCommonCodec);
        }
        let offer = RTCSessionDescription::offer(tag_event_rates(sdp)).map_err(bad)?;
        self.pc.set_remote_description(offer).await.map_err(bad)?;
        let answer = self.pc.create_answer(None).await?;
        let sdp = self.set_local(answer).await?;
        self.learn_codecs().await?;
        Ok(sdp)
    }

    /// Makes an offer for the browser (SIP→browser calls); apply its answer with
    /// [`set_answer`](Self::set_answer).
    pub async fn create_offer(&self) -> Result<String, WebRtcLegError> {
        self.check_open()?;
        let offer = self.pc.create_offer(None).await?;
        self.set_local(offer).await
    }

    /// Applies the browser's answer to [`create_offer`](Self::create_offer).
    pub async fn set_answer(&self, sdp: &str) -> Result<NegotiatedCodecs, WebRtcLegError> {
        self.check_open()?;
        let bad = |e: webrtc::error::Error| WebRtcLegError::BadSdp {
            what: "answer",
            reason: e.to_string(),
        };
        let answer = RTCSessionDescription::answer(tag_event_rates(sdp)).map_err(bad)?;
        self.pc.set_remote_description(answer).await.map_err(bad)?;
        self.learn_codecs().await
    }

    /// Adds a candidate the browser trickled: the JSON of an `RTCIceCandidate`
    /// (`{"candidate":..,"sdpMid":..,"sdpMLineIndex":..}`). An empty candidate (end of
    /// candidates) is accepted and ignored.
    pub async fn add_remote_candidate(&self, json: &str) -> Result<(), WebRtcLegError> {
        self.check_open()?;
        let init: RTCIceCandidateInit = serde_json::from_str(json)
            .map_err(|e| WebRtcLegError::BadCandidate(format!("{e}: {json}")))?;
        if init.candidate.trim().is_empty() {
            return Ok(());
        }
        self.pc
            .add_ice_candidate(init)
            .await
            .map_err(|e| WebRtcLegError::BadCandidate(e.to_string()))
    }

    /// Payload types agreed with the browser (after [`accept_offer`](Self::accept_offer) or
    /// [`set_answer`](Self::set_answer)).
    pub fn negotiated(&self) -> Option<NegotiatedCodecs> {
        self.negotiated.lock().ok().and_then(|n| *n)
    }

    /// SSRC of the audio sent to the browser.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Sends one RTP packet to the browser (Opus, PCMU, PCMA or telephone-event). The caller owns
    /// sequence numbers and timestamps (see `transcode::RtpClock`): telephone-event packets go
    /// on the same SSRC, so they must continue the audio's sequence numbers (SRTP's replay check
    /// drops anything else). The payload is copied once into a new buffer the stack takes; the
    /// call's media task uses [`WebRtcLeg::send_rtp_bytes`] with buffers it reuses instead.
    pub async fn send_rtp(
        &self,
        payload_type: u8,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> Result<(), WebRtcLegError> {
        self.check_open()?;
        let negotiated = self
            .negotiated()
            .ok_or(WebRtcLegError::NotNegotiated(payload_type))?;
        if negotiated.codec(payload_type).is_none() {
            return Err(WebRtcLegError::NotNegotiated(payload_type));
        }
        self.send_rtp_bytes(
            payload_type,
            seq,
            timestamp,
            marker,
            Bytes::copy_from_slice(payload),
        )
        .await
    }

    /// [`WebRtcLeg::send_rtp`] for the media path: the payload is a slice of the caller's reused
    /// buffer (no copy), and `payload_type` is not looked up again (no lock per packet): the
    /// caller took it from [`WebRtcLeg::negotiated`] once, as the pipeline's `BrowserParams` do.
    pub async fn send_rtp_bytes(
        &self,
        payload_type: u8,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: Bytes,
    ) -> Result<(), WebRtcLegError> {
        self.check_open()?;
        let packet = audio_rtp(self.ssrc, payload_type, seq, timestamp, marker, payload);
        self.track.write_rtp(packet).await?;
        Ok(())
    }

    /// Whether packets to the browser can go out: ICE and DTLS completed once (the SRTP keys
    /// exist). Until then [`WebRtcLeg::send_rtp`] would only fail.
    pub fn media_ready(&self) -> bool {
        self.shared.media_ready.load(Ordering::Acquire)
    }

    /// Waits for the browser's next RTCP report block about the audio we send (in a receiver
    /// report, or a sender report when it sends too). `None` once the leg is closed, or before
    /// negotiation bound the track: try again later. Cancel-safe, so it can sit in a `select!`.
    ///
    /// webrtc-rs 0.21 ends inbound RTCP at its interceptor chain, and its statistics never read
    /// receiver reports; [`LossReportForwarder`] passes these packets on to the track.
    pub async fn next_receiver_report(&self) -> Option<ReceiverReport> {
        loop {
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            if let TrackLocalEvent::OnRtcpPacket(packets) = self.track.poll().await? {
                if let Some(report) = report_about(self.ssrc, &packets) {
                    return Some(report);
                }
            }
        }
    }

    /// Incoming packets dropped because the consumer fell behind.
    pub fn dropped_rtp(&self) -> u64 {
        self.shared.dropped_rtp.load(Ordering::Relaxed)
    }

    /// Closes the connection (the browser is told via DTLS close_notify) and releases its sockets.
    /// Idempotent; reports [`LegState::Closed`] once.
    pub async fn close(&self) -> Result<(), WebRtcLegError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let result = self.pc.close().await;
        self.shared.report_state(LegState::Closed);
        result.map_err(WebRtcLegError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webrtc_rs_per_packet_warnings_are_off_below_debug() {
        use crate::config::LogLevel;
        assert!(log_directives(LogLevel::Info).contains("rtc=error"));
        assert!(log_directives(LogLevel::Info).contains("rtc_ice=error"));
        assert!(log_directives(LogLevel::Warn).contains("webrtc=error"));
        assert!(log_directives(LogLevel::Debug).contains("rtc_srtp=debug"));
        assert!(log_directives(LogLevel::None).contains("rtc=off"));
    }

    #[test]
    fn telephone_event_rates_are_tagged_and_untagged() {
        let sdp = "v=0\r\nm=audio 9 RTP/SAVPF 111 110 126\r\na=rtpmap:111 opus/48000/2\r\n\
                   a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:110 telephone-event/48000\r\n\
                   a=rtpmap:126 telephone-event/8000\r\na=fmtp:126 0-15\r\n";
        let tagged = tag_event_rates(sdp);
        assert!(
            tagged.contains("a=fmtp:110 srbridge-rate=48000\r\n"),
            "{tagged}"
        );
        assert!(
            tagged.contains("a=fmtp:126 0-15;srbridge-rate=8000\r\n"),
            "{tagged}"
        );
        assert!(tagged.contains("a=fmtp:111 minptime=10;useinbandfec=1\r\n"));
        assert_eq!(untag_event_rates(&tagged), sdp);
    }

    #[test]
    fn narrowband_is_asked_for_on_every_opus_format_only() {
        let sdp = "v=0\r\nm=audio 9 RTP/SAVPF 111 109 0 126\r\na=rtpmap:111 opus/48000/2\r\n\
                   a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:109 OPUS/48000/2\r\n\
                   a=rtpmap:0 PCMU/8000\r\na=rtpmap:126 telephone-event/8000\r\n\
                   a=fmtp:126 0-15\r\n";
        let nb_params = opus_fmtp_for(&WebRtcSettings {
            opus_narrowband: true,
            ..WebRtcSettings::default()
        });
        let ask_narrowband_opus = |sdp: &str| add_opus_fmtp(sdp, &nb_params);
        let nb = ask_narrowband_opus(sdp);
        assert!(
            nb.contains(
                "a=fmtp:111 minptime=10;useinbandfec=1;maxplaybackrate=8000;sprop-maxcapturerate=8000\r\n"
            ),
            "{nb}"
        );
        assert!(
            nb.contains("a=rtpmap:109 OPUS/48000/2\r\na=fmtp:109 maxplaybackrate=8000;sprop-maxcapturerate=8000\r\n"),
            "{nb}"
        );
        assert!(nb.contains("a=fmtp:126 0-15\r\n"), "{nb}");
        assert!(!nb.contains("a=fmtp:0 "), "{nb}");
        // Keys already there are kept as they are, and applying it twice changes nothing.
        let own = sdp.replace("useinbandfec=1", "useinbandfec=1;maxplaybackrate=16000");
        let nb_own = ask_narrowband_opus(&own);
        assert!(
            nb_own.contains(
                "a=fmtp:111 minptime=10;useinbandfec=1;maxplaybackrate=16000;sprop-maxcapturerate=8000\r\n"
            ),
            "{nb_own}"
        );
        assert_eq!(ask_narrowband_opus(&nb), nb);
        assert_eq!(
            ask_narrowband_opus("v=0\nm=audio 9 RTP/AVP 0\n"),
            "v=0\nm=audio 9 RTP/AVP 0\n"
        );
    }

    #[test]
    fn a_receive_bitrate_is_asked_for_with_or_without_narrowband() {
        let sdp = "v=0\r\nm=audio 9 RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n\
                   a=fmtp:111 minptime=10;useinbandfec=1\r\n";
        let settings = |narrowband, bitrate| WebRtcSettings {
            opus_narrowband: narrowband,
            opus_receive_bitrate: bitrate,
            ..WebRtcSettings::default()
        };
        assert_eq!(
            add_opus_fmtp(sdp, &opus_fmtp_for(&settings(false, None))),
            sdp
        );
        let wide = add_opus_fmtp(sdp, &opus_fmtp_for(&settings(false, Some(40_000))));
        assert!(
            wide.contains("a=fmtp:111 minptime=10;useinbandfec=1;maxaveragebitrate=40000\r\n"),
            "{wide}"
        );
        let narrow = add_opus_fmtp(sdp, &opus_fmtp_for(&settings(true, Some(24_000))));
        assert!(
            narrow.contains(
                "useinbandfec=1;maxplaybackrate=8000;sprop-maxcapturerate=8000;maxaveragebitrate=24000\r\n"
            ),
            "{narrow}"
        );
    }

    #[test]
    fn finds_the_audio_mid() {
        let sdp =
            "v=0\r\nm=video 9 UDP 96\r\na=mid:v\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\n";
        assert_eq!(audio_mid(sdp), Some("1".to_owned()));
        assert_eq!(audio_mid("v=0\r\n"), None);
    }

    #[test]
    fn negotiated_codecs_follow_the_remote_payload_types_and_order() {
        let mut pcma = LegCodec::Pcma.parameters();
        pcma.payload_type = 8;
        let mut te = LegCodec::TelephoneEvent8k.parameters();
        te.payload_type = 101;
        let mut opus = LegCodec::Opus.parameters();
        opus.payload_type = 109;
        let n = NegotiatedCodecs::from_parameters(&[pcma, te, opus]);
        assert_eq!(n.preferred, Some(LegCodec::Pcma));
        assert_eq!(n.opus, Some(109));
        assert_eq!(n.telephone_event_8k, Some(101));
        assert_eq!(n.codec(101), Some(LegCodec::TelephoneEvent8k));
        assert_eq!(n.codec(0), None);
    }

    #[test]
    fn reserved_ports_are_inside_the_range_and_held_until_the_lease_goes() {
        use super::super::rtp_leg::PortRange;
        let ip = IpAddr::from([127, 0, 0, 1]);
        let base = {
            let probe = std::net::UdpSocket::bind((ip, 0)).unwrap();
            probe.local_addr().unwrap().port().saturating_sub(20) & !1
        };
        let ports = PortAllocator::new(PortRange::new(base, base + 9).unwrap());
        let mut held = Vec::new();
        loop {
            match reserve_port(&ports, ip) {
                Ok((port, lease)) => {
                    assert!((base..=base + 9).contains(&port), "{port} outside {base}-");
                    assert_eq!(port % 2, 0, "the even port of a pair");
                    // the stack can bind it: our sockets are gone
                    drop(std::net::UdpSocket::bind((ip, port)).unwrap());
                    assert!(
                        !held.iter().any(|(p, _)| *p == port),
                        "{port} handed out twice"
                    );
                    held.push((port, lease));
                }
                Err(e) => {
                    assert!(
                        matches!(e, WebRtcLegError::NoFreePort(RtpLegError::Exhausted { .. })),
                        "{e}"
                    );
                    break;
                }
            }
            assert!(held.len() <= 5, "a 10-port range holds 5 pairs");
        }
        assert!(
            !held.is_empty(),
            "some pair of {base}-{} was free",
            base + 9
        );
        held.clear();
        assert!(
            reserve_port(&ports, ip).is_ok(),
            "leases give the ports back"
        );
    }
}
