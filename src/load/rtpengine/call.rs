//! One call through rtpengine: the tool signals it over `ng` like a SIP proxy would (offer with
//! the offerer's SDP, answer with the answerer's, delete at the end), the browser is a webrtc-rs
//! peer and the SIP side SIPp's echo. Media is replayed and measured as in bridge calls.

use std::sync::Arc;
use std::time::Duration;

use srbridge::media::webrtc_leg::{LegEvent, LegState, WebRtcLeg, WebRtcSettings};
use srbridge::ops::Direction;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::super::call::{BrowserAudio, CallNews, CallPlan, CallProbe};
use super::ng::{self, CallRef, Endpoint};
use super::sdp;
use super::RtpenginePlan;

/// Tags of the two parties at rtpengine.
const BROWSER_TAG: &str = "browser";
const SIP_TAG: &str = "sip";

/// Runs one call in `direction` (who offers: the browser for web→SIP, the SIP side for
/// SIP→web) until `stop` turns true, then deletes it at rtpengine.
pub async fn run_call(
    peer: RtpenginePlan,
    direction: Direction,
    plan: Arc<CallPlan>,
    probe: Arc<CallProbe>,
    start_at: Instant,
    news: mpsc::UnboundedSender<CallNews>,
    mut stop: watch::Receiver<bool>,
) {
    let from_tag = match direction {
        Direction::WebToSip => BROWSER_TAG,
        Direction::SipToWeb => SIP_TAG,
    };
    let mut call = RtpengineCall {
        peer,
        call: CallRef {
            call_id: format!("srbridge-load-{}", uuid::Uuid::new_v4()),
            from_tag: from_tag.to_string(),
        },
        direction,
        plan,
        news: news.clone(),
        up: false,
    };
    if let Err(reason) = call.drive(probe, start_at, &mut stop).await {
        let _ = news.send(CallNews::Failed {
            was_up: call.up,
            reason,
        });
    }
    if let Err(e) = call.peer.ng.request(&ng::delete(&call.call)).await {
        tracing::debug!("delete {}: {e:#}", call.call.call_id);
    }
}

struct RtpengineCall {
    peer: RtpenginePlan,
    call: CallRef,
    direction: Direction,
    plan: Arc<CallPlan>,
    news: mpsc::UnboundedSender<CallNews>,
    /// Media connected (and reported).
    up: bool,
}

impl RtpengineCall {
    async fn drive(
        &mut self,
        probe: Arc<CallProbe>,
        start_at: Instant,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        let (peer, call, direction, plan) = (&self.peer, &self.call, self.direction, &self.plan);
        let settings = WebRtcSettings {
            bind_ips: vec![plan.local_ip],
            codecs: plan.replay.offered(),
            certificate: Some(plan.certificate.clone()),
            ..WebRtcSettings::default()
        };
        let (leg, mut channels) = WebRtcLeg::new(&settings)
            .await
            .map_err(|e| format!("peer connection: {e}"))?;
        let setup_deadline = start_at + plan.setup_timeout;
        let echo_sdp = sdp::plain_pcmu(peer.echo, rand::random::<u32>().into());
        let ng_error = |what: &str, e: anyhow::Error| format!("rtpengine {what}: {e:#}");
        tokio::time::sleep_until(start_at).await;
        let started = Instant::now();
        let result = async {
            match direction {
                Direction::WebToSip => {
                    let offer = leg
                        .create_offer()
                        .await
                        .map_err(|e| format!("offer: {e}"))?;
                    let candidates = gather(&mut channels.events, setup_deadline).await?;
                    let offer = sdp::with_candidates(&offer, &candidates);
                    peer.ng
                        .request(&ng::offer(
                            call,
                            &offer,
                            Endpoint::PlainRtp,
                            peer.codecs(true),
                        ))
                        .await
                        .and_then(|r| Ok(r.into_sdp()?))
                        .map_err(|e| ng_error("offer", e))?;
                    let answer = peer
                        .ng
                        .request(&ng::answer(call, SIP_TAG, &echo_sdp, Endpoint::WebRtc))
                        .await
                        .and_then(|r| Ok(r.into_sdp()?))
                        .map_err(|e| ng_error("answer", e))?;
                    leg.set_answer(&answer)
                        .await
                        .map_err(|e| format!("rtpengine's answer: {e}"))
                }
                Direction::SipToWeb => {
                    let offer = peer
                        .ng
                        .request(&ng::offer(
                            call,
                            &echo_sdp,
                            Endpoint::WebRtc,
                            peer.codecs(false),
                        ))
                        .await
                        .and_then(|r| Ok(r.into_sdp()?))
                        .map_err(|e| ng_error("offer", e))?;
                    let answer = leg
                        .accept_offer(&offer)
                        .await
                        .map_err(|e| format!("rtpengine's offer: {e}"))?;
                    let candidates = gather(&mut channels.events, setup_deadline).await?;
                    let answer = sdp::with_candidates(&answer, &candidates);
                    peer.ng
                        .request(&ng::answer(call, BROWSER_TAG, &answer, Endpoint::PlainRtp))
                        .await
                        .map_err(|e| ng_error("answer", e))?;
                    leg.negotiated()
                        .ok_or_else(|| "no codec negotiated with rtpengine".to_string())
                }
            }
        };
        let negotiated = match result.await {
            Ok(n) => Some(n),
            Err(e) => {
                let _ = leg.close().await;
                return Err(e);
            }
        };
        // Offer sent → answer applied: the signalling part of the setup, like invite → accepted.
        let signalled = started.elapsed();
        let mut audio = BrowserAudio::new(Arc::clone(plan), probe)?;
        let mut ticker = tokio::time::interval(Duration::from_millis(20));
        let mut connected = false;
        let result = loop {
            tokio::select! {
                e = channels.events.recv() => match e {
                    Some(LegEvent::State(LegState::Connected)) => connected = true,
                    Some(LegEvent::State(s @ (LegState::Failed | LegState::Closed))) => {
                        break Err(format!("media {s:?}"));
                    }
                    Some(_) => {}
                    None => break Err("media events ended".to_string()),
                },
                p = channels.rtp.recv() => {
                    let Some(p) = p else { break Err("media ended".to_string()) };
                    audio.on_rtp(&p, negotiated);
                }
                _ = ticker.tick(), if connected => audio.send_next(&leg, negotiated).await,
                _ = tokio::time::sleep_until(setup_deadline), if !self.up => {
                    break Err(format!("media not connected within {:?} of the offer", plan.setup_timeout));
                }
                _ = stop.changed() => break Ok(()),
            }
            if connected && !self.up {
                self.up = true;
                let _ = self.news.send(CallNews::Up {
                    setup: Some(signalled),
                    accepted: None,
                });
            }
        };
        let _ = leg.close().await;
        result
    }
}

/// The browser's candidates, once gathering completes (rtpengine wants them in the SDP).
async fn gather(
    events: &mut mpsc::UnboundedReceiver<LegEvent>,
    deadline: Instant,
) -> Result<Vec<String>, String> {
    let mut candidates = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => return Err("ICE gathering did not complete".into()),
            Ok(None) => return Err("media events ended while gathering".into()),
            Ok(Some(LegEvent::LocalCandidate(json))) => {
                candidates.extend(sdp::candidate_attribute(&json));
            }
            Ok(Some(LegEvent::GatheringComplete)) => return Ok(candidates),
            Ok(Some(LegEvent::State(s @ (LegState::Failed | LegState::Closed)))) => {
                return Err(format!("media {s:?} while gathering"))
            }
            Ok(Some(LegEvent::State(_))) => {}
        }
    }
}
