//! A Rust "browser" for media tests: a `WebRtcLeg` that offers (like the JS client's
//! RTCPeerConnection), signalled through a [`WsClient`] with the hub's `media` messages
//! (`docs/protocol.md` "Media"). It plays a tone (Opus or G.711, whatever was negotiated),
//! sends RFC 4733 telephone-events like RTCDTMFSender, decodes what the bridge sends back to
//! 8 kHz, and keeps the `dtmf`/`error` messages it gets.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use srbridge::media::g711;
use srbridge::media::opus::{
    packet_coder, OpusDecoder, OpusEncoder, OpusEncoderConfig, FRAME_SAMPLES, MAX_OPUS_PACKET,
    MAX_PACKET_SAMPLES, PCM_RATE,
};
use srbridge::media::rtp::{dtmf_event, DtmfEvent};
use srbridge::media::webrtc_leg::{
    LegCodec, LegEvent, LegState, NegotiatedCodecs, WebRtcLeg, WebRtcSettings,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::ws::WsClient;

const T: Duration = Duration::from_secs(15);

/// The browser's media side of one call.
pub struct BrowserPeer {
    pub leg: Arc<WebRtcLeg>,
    pub negotiated: NegotiatedCodecs,
    /// What the bridge sent, decoded to 8 kHz mono.
    pub received: Arc<Mutex<Vec<f32>>>,
    /// Opus packets received, by coder (TOC configuration, RFC 6716 §3.1): `[SILK, hybrid, CELT]`.
    pub opus_coders: Arc<Mutex<[usize; 3]>>,
    /// `dtmf` digits the bridge reported.
    pub dtmf: Arc<Mutex<Vec<String>>>,
    /// `error` messages the bridge sent.
    pub errors: Arc<Mutex<Vec<String>>>,
    /// The bridge's ICE candidates, from its answer's `a=candidate` lines and as it trickled
    /// them (`candidate:…` lines).
    pub bridge_candidates: Arc<Mutex<Vec<String>>>,
    state: watch::Receiver<LegState>,
    tone: Arc<Mutex<Option<f64>>>,
    digits: mpsc::UnboundedSender<char>,
    tasks: Vec<JoinHandle<()>>,
}

/// Sends a `media` message for `call_id`.
pub fn send_media(ws: &WsClient, call_id: &str, payload: Value) {
    ws.send_raw(&json!({"type": "media", "callId": call_id, "payload": payload}).to_string());
}

/// Takes the next `media` message of `call_id` whose payload kind is `kind`.
pub async fn wait_media(ws: &WsClient, call_id: &str, kind: &str, timeout: Duration) -> Value {
    let (call_id, kind) = (call_id.to_string(), kind.to_string());
    ws.wait_for(
        move |v| v["type"] == "media" && v["callId"] == call_id && v["payload"]["kind"] == kind,
        timeout,
    )
    .await["payload"]
        .clone()
}

impl BrowserPeer {
    /// Offers `codecs` (e.g. Opus + telephone-event/48000, or PCMU only) for `call_id`, applies
    /// the bridge's answer and starts trickling candidates both ways.
    pub async fn offer(ws: Arc<WsClient>, call_id: &str, codecs: Vec<LegCodec>) -> BrowserPeer {
        let settings = WebRtcSettings {
            bind_ips: vec![IpAddr::from([127, 0, 0, 1])],
            codecs,
            ..WebRtcSettings::default()
        };
        let (leg, mut channels) = WebRtcLeg::new(&settings).await.expect("browser leg");
        let offer = leg.create_offer().await.expect("offer");
        send_media(&ws, call_id, json!({"kind": "offer", "sdp": offer}));
        let answer = wait_media(&ws, call_id, "answer", T).await;
        let answered_candidates: Vec<String> = answer["sdp"]
            .as_str()
            .unwrap_or("")
            .lines()
            .filter_map(|l| l.trim().strip_prefix("a="))
            .filter(|l| l.starts_with("candidate:"))
            .map(str::to_string)
            .collect();
        let negotiated = leg
            .set_answer(answer["sdp"].as_str().expect("answer sdp"))
            .await
            .expect("bridge's answer applies");
        let leg = Arc::new(leg);
        let (state_tx, state) = watch::channel(LegState::New);
        let mut tasks = Vec::new();
        {
            let ws = Arc::clone(&ws);
            let call_id = call_id.to_string();
            tasks.push(tokio::spawn(async move {
                while let Some(e) = channels.events.recv().await {
                    match e {
                        LegEvent::LocalCandidate(c) => {
                            let c: Value = serde_json::from_str(&c).unwrap();
                            send_media(&ws, &call_id, json!({"kind": "candidate", "candidate": c}));
                        }
                        LegEvent::GatheringComplete => send_media(
                            &ws,
                            &call_id,
                            json!({"kind": "candidate", "candidate": null}),
                        ),
                        LegEvent::State(s) => {
                            let _ = state_tx.send(s);
                        }
                    }
                }
            }));
        }
        let dtmf = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let bridge_candidates = Arc::new(Mutex::new(answered_candidates));
        {
            let (ws, leg) = (Arc::clone(&ws), Arc::clone(&leg));
            let (dtmf, errors) = (Arc::clone(&dtmf), Arc::clone(&errors));
            let candidates = Arc::clone(&bridge_candidates);
            let call_id = call_id.to_string();
            tasks.push(tokio::spawn(async move {
                let pred = |v: &Value| v["type"] == "media" && v["callId"] == call_id.as_str();
                loop {
                    let Some(m) = ws.try_wait_for(&pred, Duration::from_millis(200)).await else {
                        continue;
                    };
                    let p = &m["payload"];
                    match p["kind"].as_str() {
                        Some("candidate") if !p["candidate"].is_null() => {
                            candidates.lock().unwrap().push(
                                p["candidate"]["candidate"]
                                    .as_str()
                                    .unwrap_or("")
                                    .to_string(),
                            );
                            leg.add_remote_candidate(&p["candidate"].to_string())
                                .await
                                .expect("bridge candidate applies");
                        }
                        Some("dtmf") => dtmf
                            .lock()
                            .unwrap()
                            .push(p["digit"].as_str().unwrap_or("?").to_string()),
                        Some("error") => errors
                            .lock()
                            .unwrap()
                            .push(p["message"].as_str().unwrap_or("").to_string()),
                        _ => {}
                    }
                }
            }));
        }
        let received = Arc::new(Mutex::new(Vec::new()));
        let opus_coders = Arc::new(Mutex::new([0; 3]));
        {
            let received = Arc::clone(&received);
            let opus_coders = Arc::clone(&opus_coders);
            let mut rtp = channels.rtp;
            tasks.push(tokio::spawn(async move {
                let mut opus = OpusDecoder::new().unwrap();
                let mut pcm = [0i16; MAX_PACKET_SAMPLES];
                while let Some(p) = rtp.recv().await {
                    let n = match negotiated.codec(p.payload_type) {
                        Some(LegCodec::Opus) => {
                            let slot = match packet_coder(&p.payload) {
                                Some("silk") => Some(0),
                                Some("hybrid") => Some(1),
                                Some(_) => Some(2),
                                None => None,
                            };
                            if let Some(slot) = slot {
                                opus_coders.lock().unwrap()[slot] += 1;
                            }
                            opus.decode(&p.payload, &mut pcm).unwrap_or(0)
                        }
                        Some(LegCodec::Pcmu) => g711::ulaw_decode(&p.payload, &mut pcm),
                        Some(LegCodec::Pcma) => g711::alaw_decode(&p.payload, &mut pcm),
                        _ => 0,
                    };
                    received
                        .lock()
                        .unwrap()
                        .extend(pcm[..n].iter().map(|s| f32::from(*s) / 32768.0));
                }
            }));
        }
        let tone = Arc::new(Mutex::new(None));
        let (digits, digits_rx) = mpsc::unbounded_channel();
        tasks.push(tokio::spawn(sender(
            Arc::clone(&leg),
            negotiated,
            Arc::clone(&tone),
            digits_rx,
        )));
        BrowserPeer {
            leg,
            negotiated,
            received,
            opus_coders,
            dtmf,
            errors,
            bridge_candidates,
            state,
            tone,
            digits,
            tasks,
        }
    }

    /// Waits until ICE/DTLS is up.
    pub async fn wait_connected(&mut self) {
        let ok = tokio::time::timeout(T, self.state.wait_for(|s| *s == LegState::Connected))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false);
        assert!(
            ok,
            "browser leg did not connect: {:?}",
            *self.state.borrow()
        );
    }

    /// The current connection state.
    pub fn state(&self) -> LegState {
        *self.state.borrow()
    }

    /// Plays a tone of `hz` from now on (`None`: silence).
    pub fn play(&self, hz: Option<f64>) {
        *self.tone.lock().unwrap() = hz;
    }

    /// Presses keys the way RTCDTMFSender does (RFC 4733 on the audio SSRC).
    pub fn press(&self, keys: &str) {
        for k in keys.chars() {
            let _ = self.digits.send(k);
        }
    }

    /// Clears and returns the Opus packets received so far by coder: `[SILK, hybrid, CELT]`.
    pub fn take_opus_coders(&self) -> [usize; 3] {
        std::mem::take(&mut *self.opus_coders.lock().unwrap())
    }

    /// Clears and returns the audio received so far.
    pub fn take_received(&self) -> Vec<f32> {
        std::mem::take(&mut *self.received.lock().unwrap())
    }

    pub async fn close(self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = self.leg.close().await;
    }
}

/// 50 packets a second: tone (or silence) in the negotiated codec, DTMF events in between.
async fn sender(
    leg: Arc<WebRtcLeg>,
    n: NegotiatedCodecs,
    tone: Arc<Mutex<Option<f64>>>,
    mut digits: mpsc::UnboundedReceiver<char>,
) {
    let codec = n.preferred.expect("an audio codec");
    let pt = n.payload_type(codec).unwrap();
    let (ticks, te_pt) = match codec {
        LegCodec::Opus => (960u32, n.telephone_event_48k.or(n.telephone_event_8k)),
        _ => (160u32, n.telephone_event_8k.or(n.telephone_event_48k)),
    };
    let mut enc = OpusEncoder::new(OpusEncoderConfig::default()).unwrap();
    let mut seq: u16 = rand::random();
    let mut ts: u32 = rand::random();
    let mut sample = 0usize;
    let mut pcm = [0i16; FRAME_SAMPLES];
    let mut out = [0u8; MAX_OPUS_PACKET];
    let mut event: Option<(DtmfEvent, u32, u32)> = None; // event, timestamp, gap ticks after
    let mut gap = 0u32;
    let mut first = true;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        // Like a browser, nothing goes out before DTLS gave the SRTP keys.
        if !leg.media_ready() {
            continue;
        }
        let hz = *tone.lock().unwrap();
        for (i, s) in pcm.iter_mut().enumerate() {
            let t = (sample + i) as f64 / f64::from(PCM_RATE);
            *s = match hz {
                Some(f) => (0.5 * 32767.0 * (2.0 * std::f64::consts::PI * f * t).sin()) as i16,
                None => 0,
            };
        }
        sample += FRAME_SAMPLES;
        let this_ts = ts;
        ts = ts.wrapping_add(ticks);
        if event.is_none() && gap == 0 {
            if let (Some(_), Ok(d)) = (te_pt, digits.try_recv()) {
                if let Some(e) = dtmf_event(d) {
                    // 100 ms tone, 20 ms steps, on the codec's clock.
                    let step = ticks as u16;
                    event = Some((DtmfEvent::new(e, 10, step * 5, step), this_ts, 4));
                }
            }
        }
        gap = gap.saturating_sub(1);
        if let Some((ev, ets, g)) = &mut event {
            if let Some((te, mark)) = ev.next() {
                let _ = leg
                    .send_rtp(te_pt.unwrap(), seq, *ets, mark, &te.to_bytes())
                    .await;
                seq = seq.wrapping_add(1);
                continue;
            }
            gap = *g;
            event = None;
        }
        let len = match codec {
            LegCodec::Opus => enc.encode(&pcm, &mut out).unwrap(),
            LegCodec::Pcmu => g711::ulaw_encode(&pcm, &mut out),
            LegCodec::Pcma => g711::alaw_encode(&pcm, &mut out),
            _ => 0,
        };
        let _ = leg
            .send_rtp(pt, seq, this_ts, std::mem::take(&mut first), &out[..len])
            .await;
        seq = seq.wrapping_add(1);
    }
}
