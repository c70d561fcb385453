//! One call's media as the call layer sees it ([`crate::call::ports::CallMedia`]): the SIP leg's
//! RTP socket and SDP offer/answer, and (with the browser leg) the pipeline between them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::call::machine::Direction as CallDirection;
use crate::call::ports::{CallMedia, MediaError, MediaEvent, MediaFactory};
use crate::config::{Codec, Config};
use crate::media::rtp_leg::{PortAllocator, PortRange, RtpLeg};
use crate::sip::sdp::{self, Direction, LocalMedia, Negotiated, SdpError, DEFAULT_DTMF_PT};

/// Creates each call's media from the configuration in force when the call starts.
pub struct SessionFactory {
    ports: Arc<PortAllocator>,
    bind_ip: IpAddr,
    sdp_ip: IpAddr,
    config: tokio::sync::watch::Receiver<Arc<Config>>,
}

impl SessionFactory {
    /// `sdp_ip` is the address put in SDP (`media.public_ip`, else the address the PBX reaches
    /// us on); RTP sockets bind on `bind_ip`.
    pub fn new(
        config: tokio::sync::watch::Receiver<Arc<Config>>,
        bind_ip: IpAddr,
        sdp_ip: IpAddr,
    ) -> Result<SessionFactory, MediaError> {
        let range = PortRange::from_config(&config.borrow().media)
            .map_err(|e| MediaError::Resources(e.to_string()))?;
        Ok(SessionFactory {
            ports: Arc::new(PortAllocator::new(range)),
            bind_ip,
            sdp_ip,
            config,
        })
    }

    /// RTP port pairs in use (for status and leak checks).
    pub fn ports_in_use(&self) -> usize {
        self.ports.in_use()
    }
}

impl MediaFactory for SessionFactory {
    type Media = Session;

    fn create(
        &self,
        call_id: &str,
        _direction: CallDirection,
        sip_number: &str,
    ) -> Result<(Session, mpsc::Receiver<MediaEvent>), MediaError> {
        let leg = RtpLeg::bind(self.bind_ip, &self.ports)
            .map_err(|e| MediaError::Resources(e.to_string()))?;
        let leg = Arc::new(leg);
        let codecs = self.config.borrow().media.codecs_for(sip_number).to_vec();
        let (events_tx, events) = mpsc::channel(64);
        let receiver = tokio::spawn(drain_rtp(Arc::clone(&leg)));
        tracing::debug!(call_id, rtp = %leg.local_addr(), "SIP-side RTP leg bound");
        Ok((
            Session {
                leg,
                codecs,
                sdp_ip: self.sdp_ip,
                session_id: sdp::new_session_id(),
                version: 1,
                negotiated: None,
                _events: events_tx,
                tasks: vec![receiver],
            },
            events,
        ))
    }
}

/// Reads the SIP leg's socket so symmetric RTP latches and counters move, until the browser leg
/// takes over the packets.
async fn drain_rtp(leg: Arc<RtpLeg>) {
    let mut buf = [0u8; 1500];
    while leg.recv(&mut buf).await.is_ok() {}
}

/// One call's media.
pub struct Session {
    leg: Arc<RtpLeg>,
    codecs: Vec<Codec>,
    sdp_ip: IpAddr,
    session_id: u64,
    version: u64,
    negotiated: Option<Negotiated>,
    _events: mpsc::Sender<MediaEvent>,
    tasks: Vec<JoinHandle<()>>,
}

impl Session {
    fn local(&self) -> LocalMedia<'_> {
        LocalMedia {
            ip: self.sdp_ip,
            port: self.leg.local_addr().port(),
            codecs: &self.codecs,
            dtmf_pt: DEFAULT_DTMF_PT,
            session_id: self.session_id,
            version: self.version,
            direction: Direction::SendRecv,
        }
    }

    fn use_negotiated(&mut self, negotiated: Negotiated) {
        if !negotiated.remote.ip().is_unspecified() && negotiated.remote.port() != 0 {
            self.leg.set_remote(negotiated.remote);
        }
        tracing::info!(
            codec = negotiated.codec.name(),
            remote = %negotiated.remote,
            on_hold = negotiated.on_hold,
            "SIP media negotiated"
        );
        self.negotiated = Some(negotiated);
    }

    /// Our RTP address toward the PBX.
    pub fn sip_rtp_addr(&self) -> SocketAddr {
        self.leg.local_addr()
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
        Ok(sdp::build_offer(&self.local()))
    }

    fn sip_answer(&mut self, offer: &str) -> Result<String, MediaError> {
        let (answer, negotiated) = sdp::answer_offer(offer, &self.local()).map_err(sdp_error)?;
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
        self.version += 1;
        match sdp::answer_offer(offer, &self.local()) {
            Ok((answer, negotiated)) => {
                self.use_negotiated(negotiated);
                Some(answer)
            }
            Err(e) => {
                tracing::warn!(error = %e, "re-offer not usable; keeping the current media");
                self.version -= 1;
                None
            }
        }
    }

    async fn browser_message(&mut self, payload: serde_json::Value) {
        tracing::debug!(kind = %payload["kind"], "browser media message (no browser leg yet)");
    }

    fn close(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}
