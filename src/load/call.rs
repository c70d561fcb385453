//! One call as a browser makes it: hub invitation (or answering one), a webrtc-rs peer that offers,
//! trickles candidates, replays pre-encoded audio every 20 ms, and measures what comes back.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rtc::peer_connection::certificate::RTCCertificate;
use serde_json::{json, Value};
use srbridge::media::g711;
use srbridge::media::opus::{
    OpusDecoder, OpusEncoder, OpusEncoderConfig, FRAME_SAMPLES, MAX_OPUS_PACKET,
    MAX_PACKET_SAMPLES, OPUS_RTP_CLOCK, PCM_RATE,
};
use srbridge::media::webrtc_leg::{
    InboundRtp, LegCodec, LegEvent, LegState, NegotiatedCodecs, WebRtcLeg, WebRtcSettings,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::hub::HubSession;
use super::stats::{EchoTracker, ReceiveStats};

/// Audio encoded once at start and replayed by every call, so the generator stays cheap.
pub struct Replay {
    codec: LegCodec,
    frames: Vec<Bytes>,
}

/// One second of replayed audio: 50 frames of 20 ms.
const REPLAY_FRAMES: usize = 50;
/// The replayed tone: 440 Hz at -6 dBFS, easy to tell from silence or noise.
const TONE_HZ: f64 = 440.0;

impl Replay {
    /// Encodes the tone as Opus (transcoded calls) or PCMU (relayed calls).
    pub fn new(codec: LegCodec) -> anyhow::Result<Replay> {
        let mut encoder = OpusEncoder::new(OpusEncoderConfig::default())?;
        let mut frames = Vec::with_capacity(REPLAY_FRAMES);
        let mut out = [0u8; MAX_OPUS_PACKET];
        for f in 0..REPLAY_FRAMES {
            let pcm: Vec<i16> = (0..FRAME_SAMPLES)
                .map(|i| {
                    let t = (f * FRAME_SAMPLES + i) as f64 / f64::from(PCM_RATE);
                    (0.5 * 32767.0 * (2.0 * std::f64::consts::PI * TONE_HZ * t).sin()) as i16
                })
                .collect();
            let len = match codec {
                LegCodec::Opus => encoder.encode(&pcm, &mut out)?,
                LegCodec::Pcmu => g711::ulaw_encode(&pcm, &mut out),
                other => anyhow::bail!("cannot replay {other:?}"),
            };
            frames.push(Bytes::copy_from_slice(&out[..len]));
        }
        Ok(Replay { codec, frames })
    }

    /// RTP timestamp ticks per 20 ms frame.
    fn ticks(&self) -> u32 {
        match self.codec {
            LegCodec::Opus => OPUS_RTP_CLOCK / 50,
            _ => PCM_RATE / 50,
        }
    }

    /// The codecs the browser offers: the replayed one only.
    pub fn offered(&self) -> Vec<LegCodec> {
        vec![self.codec]
    }

    /// Whether payloads are tagged: a relayed PCMU payload comes back through the echo unchanged.
    pub fn tagged(&self) -> bool {
        self.codec == LegCodec::Pcmu
    }
}

/// What every call of a run shares.
pub struct CallPlan {
    pub local_ip: IpAddr,
    pub replay: Replay,
    pub setup_timeout: Duration,
    /// Arrival times are measured from here.
    pub epoch: Instant,
    /// The DTLS certificate of every browser the tool plays, made once: a browser keeps its
    /// own for many calls too, and a key per call would be the generator's cost, not the
    /// bridge's.
    pub certificate: RTCCertificate,
}

/// Which side the tool's browser is on.
#[derive(Debug, Clone)]
pub enum Role {
    /// Invites `callee` (web→SIP).
    Caller { callee: String },
    /// Waits for an invitation and accepts it (SIP→web).
    Callee,
}

/// Counters of one call the step reads and resets while the call runs.
#[derive(Default)]
pub struct CallProbe {
    pub received: Mutex<ReceiveStats>,
    pub sent: AtomicU64,
    /// Tagged packets sent so far (the next tag's number); never reset.
    pub tagged: AtomicU32,
    pub echo: Mutex<EchoTracker>,
}

/// Progress of one call, reported to the step.
#[derive(Debug)]
pub enum CallNews {
    /// Accepted and media connected. Callers (web→SIP) time both from their invitation:
    /// `setup` until the call is up (accepted and media connected), `accepted` until
    /// `ACCEPTED_BY_REMOTE` (the signalling part: hub, SIP, PBX, far end and back).
    Up {
        setup: Option<Duration>,
        accepted: Option<Duration>,
    },
    /// Failed before being up, or ended early (`was_up`).
    Failed { was_up: bool, reason: String },
}

/// Runs one call until `stop` turns true, then hangs up and closes the session.
pub async fn run_call(
    mut hub: HubSession,
    role: Role,
    plan: Arc<CallPlan>,
    probe: Arc<CallProbe>,
    start_at: Instant,
    news: mpsc::UnboundedSender<CallNews>,
    mut stop: watch::Receiver<bool>,
) {
    let mut call = Call {
        plan,
        probe,
        news: news.clone(),
        up: false,
        peer: None,
    };
    let result = call.drive(&mut hub, role, start_at, &mut stop).await;
    if let Err(reason) = result {
        let _ = news.send(CallNews::Failed {
            was_up: call.up,
            reason,
        });
    }
    if let Some(peer) = &call.peer {
        hub.end_call(peer);
    }
    hub.close();
}

struct Call {
    plan: Arc<CallPlan>,
    probe: Arc<CallProbe>,
    news: mpsc::UnboundedSender<CallNews>,
    up: bool,
    /// The other party once the call is accepted (for `EndCall`).
    peer: Option<String>,
}

impl Call {
    async fn drive(
        &mut self,
        hub: &mut HubSession,
        role: Role,
        start_at: Instant,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        let settings = WebRtcSettings {
            bind_ips: vec![self.plan.local_ip],
            codecs: self.plan.replay.offered(),
            certificate: Some(self.plan.certificate.clone()),
            ..WebRtcSettings::default()
        };
        let new_leg = || async {
            let (leg, channels) = WebRtcLeg::new(&settings)
                .await
                .map_err(|e| format!("peer connection: {e}"))?;
            let offer = leg
                .create_offer()
                .await
                .map_err(|e| format!("offer: {e}"))?;
            Ok::<_, String>((leg, channels, offer))
        };
        let (call_id, peer, invite_id, started, (leg, mut channels, offer)) = match role {
            Role::Caller { callee } => {
                // The browser has its peer connection ready when the user clicks "call".
                let media = new_leg().await?;
                tokio::time::sleep_until(start_at).await;
                let call_id = uuid::Uuid::new_v4().to_string();
                let started = Instant::now();
                let id = hub.send(
                    json!({"type": "invite", "callId": call_id, "callee": callee, "content": ""}),
                );
                (call_id, callee, Some(id), started, media)
            }
            Role::Callee => {
                let (call_id, caller) = loop {
                    let frame = tokio::select! {
                        f = hub.next() => f.ok_or("the hub closed the socket")?,
                        _ = stop.changed() => return Ok(()),
                    };
                    if frame["type"] == "remote_invitation" {
                        let call_id = frame["callId"].as_str().unwrap_or_default().to_string();
                        let caller = frame["caller"].as_str().unwrap_or_default().to_string();
                        hub.send(json!({"type": "received", "callId": call_id}));
                        break (call_id, caller);
                    }
                };
                let started = Instant::now();
                let media = new_leg().await?;
                hub.media(&call_id, json!({"kind": "offer", "sdp": media.2}));
                hub.send(json!({"type": "accept", "callId": call_id, "response": ""}));
                self.peer = Some(caller.clone());
                (call_id, caller, None, started, media)
            }
        };
        let mut accepted_at = if invite_id.is_none() {
            Some(started)
        } else {
            None
        };
        // Our candidates wait until the offer is out (the bridge refuses them before it).
        let mut offer_sent = invite_id.is_none();
        let mut our_candidates: Vec<Value> = Vec::new();
        let mut negotiated = None;
        let mut early_candidates: Vec<String> = Vec::new();
        let mut connected = false;
        let setup_deadline = Instant::now() + self.plan.setup_timeout;
        let mut ticker = tokio::time::interval(Duration::from_millis(20));
        let mut audio = BrowserAudio::new(Arc::clone(&self.plan), Arc::clone(&self.probe))?;
        let result = loop {
            tokio::select! {
                f = hub.next() => {
                    let Some(f) = f else { break Err("the hub closed the socket".to_string()) };
                    let kind = f["type"].as_str().unwrap_or_default();
                    if f["callId"] != json!(call_id) && !(kind == "ok" || kind == "error" || kind == "peer_message") {
                        continue;
                    }
                    match kind {
                        "ok" if Some(f["id"].as_u64().unwrap_or(0)) == invite_id => {
                            hub.media(&call_id, json!({"kind": "offer", "sdp": offer}));
                            offer_sent = true;
                            for c in our_candidates.drain(..) {
                                hub.media(&call_id, json!({"kind": "candidate", "candidate": c}));
                            }
                        }
                        "error" if Some(f["id"].as_u64().unwrap_or(0)) == invite_id => {
                            break Err(format!("invite refused: {}", f["code"]));
                        }
                        "local_invitation_state" | "remote_invitation_state" => match f["state"].as_str() {
                            Some("ACCEPTED_BY_REMOTE") => {
                                accepted_at = Some(Instant::now());
                                self.peer = Some(peer.clone());
                            }
                            Some("REFUSED_BY_REMOTE" | "CANCELED" | "FAILURE") => {
                                break Err(format!("invitation {}: {}", f["state"], f["reason"]));
                            }
                            _ => {}
                        },
                        "peer_message" if f["text"].as_str().is_some_and(|t| t.contains("EndCall")) => {
                            self.peer = None;
                            break Err("ended by the other side".to_string());
                        }
                        "media" => {
                            let p = &f["payload"];
                            match p["kind"].as_str() {
                                Some("answer") => {
                                    let sdp = p["sdp"].as_str().unwrap_or_default();
                                    match leg.set_answer(sdp).await {
                                        Ok(n) => negotiated = Some(n),
                                        Err(e) => break Err(format!("bridge's answer: {e}")),
                                    }
                                    for c in early_candidates.drain(..) {
                                        let _ = leg.add_remote_candidate(&c).await;
                                    }
                                }
                                Some("candidate") if !p["candidate"].is_null() => {
                                    let c = p["candidate"].to_string();
                                    if negotiated.is_some() {
                                        let _ = leg.add_remote_candidate(&c).await;
                                    } else {
                                        early_candidates.push(c);
                                    }
                                }
                                Some("error") => break Err(format!("bridge refused media: {}", p["message"])),
                                _ => {}
                            }
                        }
                        _ => {}
                    }
                }
                e = channels.events.recv() => match e {
                    Some(LegEvent::LocalCandidate(c)) => {
                        let c: Value = serde_json::from_str(&c).unwrap_or(Value::Null);
                        if offer_sent {
                            hub.media(&call_id, json!({"kind": "candidate", "candidate": c}));
                        } else {
                            our_candidates.push(c);
                        }
                    }
                    Some(LegEvent::GatheringComplete) => {
                        if offer_sent {
                            hub.media(&call_id, json!({"kind": "candidate", "candidate": null}));
                        } else {
                            our_candidates.push(Value::Null);
                        }
                    }
                    Some(LegEvent::State(LegState::Connected)) => connected = true,
                    Some(LegEvent::State(s @ (LegState::Failed | LegState::Closed))) => {
                        break Err(format!("media {s:?}"));
                    }
                    Some(LegEvent::State(_)) => {}
                    None => break Err("media events ended".to_string()),
                },
                p = channels.rtp.recv() => {
                    let Some(p) = p else { break Err("media ended".to_string()) };
                    audio.on_rtp(&p, negotiated);
                }
                _ = ticker.tick(), if connected => audio.send_next(&leg, negotiated).await,
                _ = tokio::time::sleep_until(setup_deadline), if !self.up => {
                    break Err(format!("not up within {:?} (accepted: {}, media connected: {connected})", self.plan.setup_timeout, accepted_at.is_some()));
                }
                _ = stop.changed() => break Ok(()),
            }
            if !self.up && connected {
                if let Some(at) = accepted_at {
                    self.up = true;
                    let accepted = invite_id.map(|_| at.duration_since(started));
                    let setup = invite_id.map(|_| started.elapsed());
                    let _ = self.news.send(CallNews::Up { setup, accepted });
                }
            }
        };
        let _ = leg.close().await;
        result
    }
}

/// A browser's audio once media is connected: replays the pre-encoded frames every 20 ms and
/// measures what comes back (loss, jitter, level, tagged round trips). Shared by every kind of
/// call the tool makes.
pub struct BrowserAudio {
    plan: Arc<CallPlan>,
    probe: Arc<CallProbe>,
    seq: u16,
    timestamp: u32,
    frame: usize,
    opus: OpusDecoder,
    pcm: Box<[i16; MAX_PACKET_SAMPLES]>,
}

impl BrowserAudio {
    pub fn new(plan: Arc<CallPlan>, probe: Arc<CallProbe>) -> Result<BrowserAudio, String> {
        Ok(BrowserAudio {
            plan,
            probe,
            seq: rand::random(),
            timestamp: rand::random(),
            frame: 0,
            opus: OpusDecoder::new().map_err(|e| format!("opus decoder: {e}"))?,
            pcm: Box::new([0i16; MAX_PACKET_SAMPLES]),
        })
    }

    /// A packet from the far side arrived: decode and account for it.
    pub fn on_rtp(&mut self, p: &InboundRtp, negotiated: Option<NegotiatedCodecs>) {
        let arrival = Instant::now().duration_since(self.plan.epoch);
        let codec = negotiated.and_then(|n| n.codec(p.payload_type));
        let pcm = &mut self.pcm[..];
        let (clock, samples) = match codec {
            Some(LegCodec::Opus) => (
                OPUS_RTP_CLOCK,
                self.opus.decode(&p.payload, pcm).unwrap_or(0),
            ),
            Some(LegCodec::Pcmu) => (PCM_RATE, g711::ulaw_decode(&p.payload, pcm)),
            Some(LegCodec::Pcma) => (PCM_RATE, g711::alaw_decode(&p.payload, pcm)),
            _ => return,
        };
        if let Ok(mut stats) = self.probe.received.lock() {
            stats.on_packet(p.seq, p.timestamp, clock, arrival);
            stats.on_audio(&pcm[..samples]);
        }
        if self.plan.replay.tagged() {
            let limit = self
                .probe
                .tagged
                .load(Ordering::Relaxed)
                .saturating_add(1000);
            if let Ok(mut echo) = self.probe.echo.lock() {
                echo.on_payload(&p.payload, arrival.as_millis() as u32, limit);
            }
        }
    }

    /// Sends the next 20 ms frame (tagged when relayed) on `leg`.
    pub async fn send_next(&mut self, leg: &WebRtcLeg, negotiated: Option<NegotiatedCodecs>) {
        let Some(pt) = negotiated.and_then(|n| n.payload_type(self.plan.replay.codec)) else {
            return;
        };
        let payload = &self.plan.replay.frames[self.frame % REPLAY_FRAMES];
        let mut tagged = [0u8; MAX_OPUS_PACKET];
        let payload: &[u8] = if self.plan.replay.tagged() && payload.len() <= tagged.len() {
            let tagged = &mut tagged[..payload.len()];
            tagged.copy_from_slice(payload);
            let number = self.probe.tagged.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now().duration_since(self.plan.epoch).as_millis() as u32;
            EchoTracker::tag(number, now, tagged);
            tagged
        } else {
            payload
        };
        if leg
            .send_rtp(pt, self.seq, self.timestamp, self.frame == 0, payload)
            .await
            .is_ok()
        {
            self.probe.sent.fetch_add(1, Ordering::Relaxed);
        }
        self.frame += 1;
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(self.plan.replay.ticks());
    }
}
