//! What the call layer needs from the browser side, the SIP side and the media path.
//!
//! These are the seams between [`super::manager`] and the hub, the SIP user agent and the media
//! pipeline. The real implementations are thin adapters (`crate::bridge`); tests plug in fakes, so
//! the routing, timers and clean-up of calls are tested without a network.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use super::machine::{Direction, FailureReason, LocalState};

/// The browser side: the signalling hub, as the call layer sees it.
pub trait BrowserSide: Send + Sync + 'static {
    /// Moves the caller's local invitation `call_id` to `state`.
    fn local_state(
        &self,
        uid: &str,
        call_id: &str,
        state: LocalState,
        response: Option<String>,
        reason: Option<FailureReason>,
    );
    /// Rings `uid` with a remote invitation; `false` when the user is not logged in.
    fn ring(&self, uid: &str, call_id: &str, caller: &str, content: &str) -> bool;
    /// The phone cancelled: the browser's remote invitation becomes `CANCELED`.
    fn cancel_remote(&self, uid: &str, call_id: &str);
    /// Nobody answered in time: the browser's remote invitation fails as expired.
    fn expire_remote(&self, uid: &str, call_id: &str);
    /// Sends a peer message (e.g. `{"Cmd":"EndCall"}`) from `from` to `uid`.
    fn peer_message(&self, from: &str, uid: &str, text: &str);
    /// Sends a media signalling message (SDP, ICE candidate, DTMF) for `call_id` to `uid`.
    fn media(&self, uid: &str, call_id: &str, payload: serde_json::Value);
    /// The call is over and forgotten (a cluster node holding the browser forgets it too).
    fn released(&self, _uid: &str, _call_id: &str) {}
}

/// An outgoing INVITE, as the call layer asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingCallRequest {
    /// The bridge's call id, carried in every log line of the call.
    pub call_id: String,
    /// Request-URI user (the PSTN prefix already applied).
    pub callee: String,
    /// Caller identity the phone shows.
    pub caller_id: String,
    /// Extra headers (`X-ArInfo`).
    pub headers: Vec<(String, String)>,
    /// Route through the `[pstn]` gateway instead of the PBX.
    pub via_pstn: bool,
    /// The SIP leg's SDP offer.
    pub sdp_offer: String,
}

/// What happened on a SIP dialog (either direction).
#[derive(Debug)]
pub enum SipLegEvent {
    /// Outgoing: the INVITE went out as this SIP dialog (its Call-ID), before any answer; again
    /// with the new dialog's Call-ID when it is retried on the next PBX.
    Dialog {
        /// The dialog's Call-ID header.
        sip_call_id: String,
    },
    /// Outgoing: 1xx, with SDP for early media.
    Provisional {
        /// 100, 180, 183…
        code: u16,
        /// SDP of a 183 Session Progress.
        sdp: Option<String>,
    },
    /// Outgoing: 200 OK with the SDP answer.
    Answered {
        /// The answer.
        sdp: String,
    },
    /// Outgoing: a final failure, or a transport error (503) / timeout (408).
    Failed {
        /// SIP status code.
        code: u16,
        /// Reason phrase.
        reason: String,
    },
    /// Incoming: the phone sent CANCEL.
    Canceled,
    /// The other side sent BYE.
    RemoteBye,
    /// A re-INVITE or UPDATE arrived; reply with the SDP answer (`None`: keep the current one).
    Reoffer {
        /// The new offer, if the request carried one.
        sdp: Option<String>,
        /// Where the answer goes; dropping it answers with the previous SDP.
        reply: oneshot::Sender<Option<String>>,
    },
    /// The dialog is gone (after BYE/CANCEL completed, or a transport failure mid-call).
    Terminated,
}

/// What a browser did that the call layer must handle: the hub's events for the bridge
/// (anything addressed to someone who is not a logged-in web user). Serializable: in a cluster
/// it travels to the bridge that runs the call (`crate::cluster`); the wire names are the hub's
/// original ones and must stay stable across versions.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BrowserEvent {
    /// A browser invites a SIP number (or anyone who is not a logged-in web user).
    #[serde(rename = "local_invitation")]
    Invite {
        /// The invitation's id, chosen by the browser.
        call_id: String,
        /// The caller's uid.
        from_uid: String,
        /// The number invited.
        callee: String,
        /// The invitation content (ARCall JSON or any string).
        content: String,
    },
    /// The caller cancelled its invitation; answer with `local_state(Canceled)`.
    #[serde(rename = "local_invitation_canceled")]
    Cancel {
        /// The invitation.
        call_id: String,
        /// Who cancelled.
        from_uid: String,
    },
    /// The callee's browser has the bridge's invitation (`INVITATION_RECEIVED`): send 180.
    #[serde(rename = "remote_invitation_received")]
    InvitationReceived {
        /// The invitation.
        call_id: String,
        /// The callee.
        uid: String,
    },
    /// The callee accepted.
    #[serde(rename = "remote_invitation_accepted")]
    Accepted {
        /// The invitation.
        call_id: String,
        /// The callee.
        uid: String,
        /// The response string.
        response: String,
    },
    /// The callee refused.
    #[serde(rename = "remote_invitation_refused")]
    Refused {
        /// The invitation.
        call_id: String,
        /// The callee.
        uid: String,
        /// The response string ("decline" forms give 603).
        response: String,
    },
    /// A peer message to a SIP number or the bridge (e.g. `{"Cmd":"EndCall"}`).
    PeerMessage {
        /// The sender.
        from_uid: String,
        /// The addressee.
        to: String,
        /// The text.
        text: String,
    },
    /// Media signalling for a call that is not web↔web; the call layer checks it is
    /// `from_uid`'s.
    Media {
        /// The call.
        call_id: String,
        /// The sender.
        from_uid: String,
        /// The message.
        payload: serde_json::Value,
    },
    /// The user's WebSocket closed, it logged out, or another login replaced it.
    SessionClosed {
        /// The user.
        uid: String,
    },
}

/// What the call layer tells a SIP dialog to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SipLegCommand {
    /// 180 Ringing.
    Ringing,
    /// 200 OK with this SDP answer.
    Answer(String),
    /// A final failure response.
    Reject {
        /// SIP status code.
        code: u16,
        /// Reason phrase.
        reason: String,
    },
    /// CANCEL the outgoing INVITE.
    Cancel,
    /// BYE the dialog.
    Bye,
    /// Send a DTMF key as SIP INFO (`application/dtmf-relay`).
    Dtmf(char),
}

/// A SIP dialog as the call layer drives it: events in, commands out.
#[derive(Debug)]
pub struct SipLeg {
    /// Events from the dialog; closed when the dialog is gone.
    pub events: mpsc::Receiver<SipLegEvent>,
    /// Commands to the dialog.
    pub commands: mpsc::UnboundedSender<SipLegCommand>,
}

impl SipLeg {
    /// A connected pair: the leg the call layer holds and the far end an adapter (or a test) holds.
    pub fn pair() -> (SipLeg, SipLegRemote) {
        let (event_tx, event_rx) = mpsc::channel(32);
        let (command_tx, command_rx) = mpsc::unbounded_channel();
        (
            SipLeg {
                events: event_rx,
                commands: command_tx,
            },
            SipLegRemote {
                events: event_tx,
                commands: command_rx,
            },
        )
    }

    /// Sends a command; a dialog that is already gone ignores it.
    pub fn send(&self, command: SipLegCommand) {
        let _ = self.commands.send(command);
    }
}

/// The far end of a [`SipLeg`]: where the SIP adapter (or a test) feeds events and reads commands.
#[derive(Debug)]
pub struct SipLegRemote {
    /// Events toward the call layer.
    pub events: mpsc::Sender<SipLegEvent>,
    /// Commands from the call layer.
    pub commands: mpsc::UnboundedReceiver<SipLegCommand>,
}

/// An INVITE that arrived on the proxy account.
#[derive(Debug)]
pub struct IncomingSipCall {
    /// The bridge's id for the call.
    pub call_id: String,
    /// The web user the phone dialled (`X-Number`, or the R-URI user without the prefix).
    pub target_uid: String,
    /// The phone's number (From user).
    pub caller_number: String,
    /// The phone's display name.
    pub caller_display: Option<String>,
    /// The phone's SDP offer (absent for a late-offer INVITE).
    pub sdp_offer: Option<String>,
    /// The INVITE's Call-ID header.
    pub sip_call_id: Option<String>,
    /// The dialog.
    pub leg: SipLeg,
}

/// The SIP side: places calls. Incoming calls arrive on a channel given to the manager.
pub trait SipSide: Send + Sync + 'static {
    /// Starts an outgoing INVITE. Failures arrive as [`SipLegEvent::Failed`] on the leg.
    fn place_call(&self, request: OutgoingCallRequest) -> SipLeg;
}

/// Why the media path could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// The offer has no codec we can use (SIP answers 488).
    #[error("no common codec: {0}")]
    NoCommonCodec(String),
    /// The SDP could not be read.
    #[error("bad SDP: {0}")]
    BadSdp(String),
    /// No RTP port or socket could be had.
    #[error("media resources: {0}")]
    Resources(String),
    /// The browser leg failed.
    #[error("browser media: {0}")]
    Browser(String),
}

/// Something the media path reports to its call.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaEvent {
    /// A signalling message for the browser (SDP, ICE candidate, DTMF event).
    ToBrowser(serde_json::Value),
    /// The media path died (ICE failed, DTLS closed, RTP timeout): the call ends.
    Failed(String),
    /// A browser key to send to the SIP side as an INFO request (`media.dtmf_mode = "info"`).
    SipDtmf(char),
}

/// One call's media: SDP for the SIP leg, signalling for the browser leg, and the pipeline between.
pub trait CallMedia: Send + 'static {
    /// SDP offer for an outgoing INVITE.
    fn sip_offer(&mut self) -> Result<String, MediaError>;
    /// SDP answer to an incoming INVITE's offer (a failure means 488).
    fn sip_answer(&mut self, offer: &str) -> Result<String, MediaError>;
    /// The SIP side's answer (183 or 200) to our offer.
    fn sip_remote_answer(&mut self, answer: &str) -> Result<(), MediaError>;
    /// A re-INVITE/UPDATE; returns the answer (`None`: keep the current SDP).
    fn sip_reoffer(&mut self, offer: Option<&str>) -> Option<String>;
    /// A media signalling message from the browser.
    fn browser_message(&mut self, payload: serde_json::Value) -> impl Future<Output = ()> + Send;
    /// The call is established (answered both ways): start watching for silent legs
    /// (`[media] rtp_timeout`).
    fn established(&mut self) {}
    /// The call is being answered (SIP → web: the 200 OK goes out now): audio may pass between
    /// the legs from here on. Before it, a leg set up while the browser rang carries nothing.
    fn answered(&mut self) {}
    /// Releases sockets, ports and tasks.
    fn close(&mut self);
}

/// Creates each call's media.
pub trait MediaFactory: Send + Sync + 'static {
    /// The media of one call.
    type Media: CallMedia;
    /// Sets up media for a new call; events for the call come out of the receiver.
    fn create(
        &self,
        call_id: &str,
        direction: Direction,
        sip_number: &str,
    ) -> Result<(Self::Media, mpsc::Receiver<MediaEvent>), MediaError>;
}
