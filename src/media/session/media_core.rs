//! One call's media, sans-IO: the SIP leg's strict source and counters, the pipeline both ways,
//! the frames held until the browser leg can encrypt, the RTP-timeout watch and the once-a-second
//! metrics, as plain state owned by the call's media task. It is fed datagrams, browser packets
//! and the time, and says when it next needs the time ([`MediaCore::next_deadline`]); what goes
//! out goes through [`MediaIo`]. Nothing here allocates, locks or logs per packet.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::call::ports::MediaEvent;
use crate::media::inactivity::{Activity, InactivityWatch};
use crate::media::pipeline::{
    Downlink, HeldFrames, PipelineCounters, SipParams, Uplink, HELD_FRAMES,
};
use crate::media::recording::{RecorderTap, Side};
use crate::media::rtp_leg::{RtpStats, SipRtpCore};
use crate::media::transcode::RtpStamp;
use crate::ops::cpu_load::BusySignal;
use crate::ops::metrics::{Ending, ErrorKind, Metrics};
use crate::ops::Direction as OpsDirection;

use super::tick_phase::{TickPhase, TickPhases};

/// The pipeline's tick: one 20 ms frame per direction.
pub const TICK: Duration = Duration::from_millis(20);

/// How often the SIP leg's counters and the jitter figures go to `/metrics`.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// At most one log line per call this often about refused datagrams (a flood is counted, and
/// summed up in one line, never logged per packet).
pub const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

/// What the core asks of its shell: the call's media task over its sockets and the browser leg,
/// or a test's recorder.
pub trait MediaIo {
    /// Sends one RTP packet to the PBX; the bytes sent, `None` when the socket refused it.
    fn send_sip(&mut self, packet: &[u8], to: SocketAddr) -> Option<usize>;
    /// Whether the browser leg can encrypt (ICE and DTLS completed once).
    fn browser_ready(&self) -> bool;
    /// One packet to the browser (the shell copies the payload into a reused buffer).
    fn send_browser(&mut self, payload_type: u8, stamp: RtpStamp, payload: &[u8]);
    /// Something for the call layer (DTMF for the browser, INFO digits, the RTP timeout).
    fn event(&mut self, event: MediaEvent);
}

/// The pipeline, once the browser's offer was answered.
struct Pipeline {
    up: Uplink,
    down: Downlink,
    tap: Option<RecorderTap>,
    held: HeldFrames,
    /// The browser leg was ready once: frames go straight out from then on.
    ready: bool,
    /// Packets lost as last published, per direction.
    lost_up: u64,
    lost_down: u64,
    /// The millisecond of the period this call's frames are taken at, held while it runs.
    _phase: TickPhase,
}

/// When each periodic duty is next due; the media task sleeps until the earliest.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    /// The next 20 ms frame (only with a pipeline).
    frame: Option<Instant>,
    publish: Instant,
    /// The next RTP-timeout check (only once the call is established).
    watch: Option<Instant>,
}

/// The RTP-timeout watch of an established call.
struct Watch {
    watch: InactivityWatch,
    period: Duration,
}

/// The one rate-limited line about refused datagrams.
#[derive(Debug, Default)]
struct RefusedLog {
    /// Refused datagrams counted when the last line was written.
    logged: u64,
    last_line: Option<Instant>,
}

/// One call's media state. See the module docs.
pub struct MediaCore {
    call_id: String,
    sip: SipRtpCore,
    sip_params: Option<SipParams>,
    sip_on_hold: bool,
    pipeline: Option<Pipeline>,
    /// Audio may pass between the legs (SIP → web: after the browser accepted).
    answered: bool,
    browser_consent: bool,
    counters: Arc<PipelineCounters>,
    /// Arrival times for the jitter buffers are milliseconds since this.
    epoch: Instant,
    schedule: Schedule,
    rtp_timeout: Duration,
    rtp_hold_timeout: Duration,
    watch: Option<Watch>,
    /// Ended by the RTP timeout: said once.
    timed_out: bool,
    /// What of the SIP leg's counters `/metrics` already has.
    published: RtpStats,
    /// SRTP/SRTCP datagrams the browser leg refused: (its total, as last published).
    browser_rejected: (u64, u64),
    refused: RefusedLog,
    metrics: Arc<Metrics>,
    /// Whether the bridge is short of CPU (read once a second), and what the encoder was last
    /// told.
    busy: BusySignal,
    busy_applied: bool,
    /// Which phase of the period this call's frames take: shared by every call's media
    /// ([`MediaCore::with_tick_phases`]); a core's own until then.
    phases: Arc<TickPhases>,
}

/// What the RTP-timeout watch needs to know at start.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// `[media] rtp_timeout` (zero: never).
    pub rtp: Duration,
    /// `[media] rtp_hold_timeout`.
    pub hold: Duration,
}

impl MediaCore {
    /// A call's media at `now`, before the browser's offer: the SIP leg is read (the source
    /// rule learns, counters move) and nothing is played.
    pub fn new(
        call_id: &str,
        sip: SipRtpCore,
        counters: Arc<PipelineCounters>,
        timeouts: Timeouts,
        answered: bool,
        now: Instant,
        metrics: Arc<Metrics>,
    ) -> MediaCore {
        MediaCore {
            call_id: call_id.to_owned(),
            sip,
            sip_params: None,
            sip_on_hold: false,
            pipeline: None,
            answered,
            browser_consent: false,
            counters,
            epoch: now,
            schedule: Schedule {
                frame: None,
                publish: now + PUBLISH_EVERY,
                watch: None,
            },
            rtp_timeout: timeouts.rtp,
            rtp_hold_timeout: timeouts.hold,
            watch: None,
            timed_out: false,
            published: RtpStats::default(),
            browser_rejected: (0, 0),
            refused: RefusedLog::default(),
            metrics,
            busy: BusySignal::new(),
            busy_applied: false,
            phases: TickPhases::new(now),
        }
    }

    /// Takes its frames at the phase of the 20 ms period `phases` gives it, so that calls set
    /// up together do not all tick at once (`tick_phase`). Without it the core has phases of
    /// its own, counted from its creation.
    pub fn with_tick_phases(mut self, phases: Arc<TickPhases>) -> Self {
        self.phases = phases;
        self
    }

    /// Follows `busy` (`ops::cpu_load`): while the bridge is short of CPU the Opus encoder
    /// toward the browser takes `opus_mode_busy` at `opus_complexity_busy`.
    pub fn with_busy_signal(mut self, busy: BusySignal) -> Self {
        self.busy = busy;
        self
    }

    /// The SIP side's negotiated media (answer, re-INVITE, UPDATE): where to send, what codec,
    /// whether the phone holds the call.
    pub fn set_sip(&mut self, remote: SocketAddr, params: SipParams, on_hold: bool) {
        if !remote.ip().is_unspecified() && remote.port() != 0 {
            self.sip.set_remote(remote);
        }
        self.sip_on_hold = on_hold;
        self.sip_params = Some(params);
        if let Some(p) = &mut self.pipeline {
            p.up.set_sip(params);
            p.down.set_sip(params);
        }
    }

    /// The browser leg is answered: the pipeline starts, one frame each way per tick from `now`.
    pub fn attach(
        &mut self,
        mut up: Uplink,
        mut down: Downlink,
        tap: Option<RecorderTap>,
        now: Instant,
    ) {
        if let Some(params) = self.sip_params {
            up.set_sip(params);
            down.set_sip(params);
        }
        self.busy_applied = self.busy.is_busy();
        let phase = self.phases.lease();
        let first_tick = phase.first_tick(now);
        if let Err(e) = down.set_busy(self.busy_applied) {
            tracing::warn!(call_id = %self.call_id, error = %e, "Opus encoder complexity not changed");
        }
        self.pipeline = Some(Pipeline {
            up,
            down,
            tap,
            held: HeldFrames::new(HELD_FRAMES),
            ready: false,
            lost_up: 0,
            lost_down: 0,
            _phase: phase,
        });
        self.schedule.frame = Some(first_tick);
    }

    /// A browser key for the SIP side (RFC 4733 events, or INFO with `dtmf_mode = "info"`).
    pub fn queue_digit(&mut self, digit: char) {
        if let Some(p) = &mut self.pipeline {
            p.up.queue_digit(digit);
        }
    }

    /// The call is answered: audio passes between the legs from now on.
    pub fn answered(&mut self) {
        self.answered = true;
    }

    /// The call is established: the RTP-timeout watch starts (unless `rtp_timeout` is zero).
    pub fn established(&mut self, now: Instant) {
        if self.watch.is_some() || self.rtp_timeout.is_zero() || self.timed_out {
            return;
        }
        let watch = InactivityWatch::new(
            now,
            self.rtp_timeout,
            self.rtp_hold_timeout,
            self.activity(),
        );
        let period = watch.period();
        self.watch = Some(Watch { watch, period });
        self.schedule.watch = Some(now + period);
    }

    /// The browser leg's ICE state: connected means its consent checks are answered, a sign
    /// of life without RTP.
    pub fn set_browser_consent(&mut self, connected: bool) {
        self.browser_consent = connected;
    }

    fn activity(&self) -> Activity {
        let sip = self.sip.stats();
        Activity {
            sip_packets: sip.packets_in + sip.rtcp_in,
            sip_on_hold: self.sip_on_hold,
            browser_packets: PipelineCounters::get(&self.counters.from_browser),
            browser_consent: self.browser_consent,
        }
    }

    fn ms_since_start(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// One datagram from the SIP leg's RTP port (`truncated`: it filled the receive buffer).
    pub fn on_sip_datagram(
        &mut self,
        datagram: &[u8],
        truncated: bool,
        source: SocketAddr,
        now: Instant,
        io: &mut impl MediaIo,
    ) {
        let at = self.ms_since_start(now);
        let Some(packet) = self.sip.on_datagram(datagram, truncated, source, now) else {
            return;
        };
        // Before the answer (SIP → web) nothing of the phone's reaches the browser.
        if !self.answered {
            return;
        }
        let Some(p) = &mut self.pipeline else {
            return;
        };
        if let Some(digit) = p.down.push(&packet, at) {
            io.event(MediaEvent::ToBrowser(
                json!({"kind": "dtmf", "digit": digit.to_string()}),
            ));
        }
    }

    /// One datagram from the SIP leg's RTCP port (counted only).
    pub fn on_sip_rtcp(&mut self, source: SocketAddr) {
        self.sip.on_rtcp(source);
    }

    /// One RTP packet from the browser.
    pub fn on_browser_rtp(
        &mut self,
        payload_type: u8,
        seq: u16,
        timestamp: u32,
        ssrc: u32,
        payload: &[u8],
        now: Instant,
    ) {
        let at = self.ms_since_start(now);
        if let Some(p) = &mut self.pipeline {
            p.up.push(payload_type, seq, timestamp, ssrc, payload, at);
        }
    }

    /// The browser's loss report about our audio: steers the Opus encoder.
    pub fn on_loss_report(&mut self, fraction_lost: f32, now: Instant) {
        let at = self.ms_since_start(now);
        let Some(p) = &mut self.pipeline else {
            return;
        };
        if let Ok(Some(s)) = p.down.on_loss_report(fraction_lost, at) {
            tracing::debug!(
                call_id = %self.call_id,
                fec = s.fec,
                bitrate = s.bitrate_bps,
                packet_loss_perc = s.packet_loss_percent,
                "Opus encoder settings follow the browser's loss reports"
            );
        }
    }

    /// When [`MediaCore::on_timeout`] is next due.
    pub fn next_deadline(&self) -> Instant {
        let s = self.schedule;
        [s.frame, s.watch]
            .into_iter()
            .flatten()
            .fold(s.publish, Instant::min)
    }

    /// Does what is due at `now`: the frames (catching up after a stall, so the sample count
    /// follows wall time), the metrics, the RTP-timeout check.
    pub fn on_timeout(&mut self, now: Instant, io: &mut impl MediaIo) {
        while let Some(at) = self.schedule.frame.filter(|&at| at <= now) {
            self.frame(now, io);
            self.schedule.frame = Some(at + TICK);
        }
        if self.schedule.publish <= now {
            self.publish(now);
            self.schedule.publish = (self.schedule.publish + PUBLISH_EVERY).max(now);
        }
        if let Some(at) = self.schedule.watch.filter(|&at| at <= now) {
            self.check_activity(now, io);
            self.schedule.watch = self.watch.as_ref().map(|w| (at + w.period).max(now));
        }
    }

    /// One 20 ms frame each way at `now`, which the jitter buffers are told, so playout starts
    /// with a margin. Both directions are transcoded first, back to back, timed by clock
    /// readings of their own (`now` came before the shell read the sockets: that is not
    /// transcoding); then what they made goes out.
    fn frame(&mut self, now: Instant, io: &mut impl MediaIo) {
        let now_ms = self.ms_since_start(now);
        let Some(p) = &mut self.pipeline else {
            return;
        };
        p.up.set_now(now_ms);
        p.down.set_now(now_ms);
        let started = Instant::now();
        let up = p.up.tick();
        let up_done = Instant::now();
        let transcode = &self.metrics.transcode;
        transcode
            .web_to_sip
            .observe(up_done.saturating_duration_since(started));
        // A SIP → web call sends the browser nothing before it accepts. Nothing of the phone's
        // passes yet, and a browser that does not play the ringing call's track (Chrome pulls a
        // remote track only once it has a sink) queues every frame in its jitter buffer: the
        // phone's first words would then come that much late and be time-compressed for seconds.
        let down = self.answered.then(|| {
            let down = p.down.tick();
            transcode
                .sip_to_web
                .observe(Instant::now().saturating_duration_since(up_done));
            down
        });

        if let Some(tap) = &p.tap {
            tap.record(Side::Browser, up.pcm);
        }
        // SIP → web calls send nothing to the phone before the 200 OK.
        if let Some(packet) = up.packet.filter(|_| self.answered) {
            // No target yet (no SDP, no RTP): nothing to count, the next frame tries again.
            if let Some(to) = self.sip.target() {
                let sent = io.send_sip(packet, to);
                self.sip.on_sent(sent);
            }
        }
        if let Some(digit) = p.up.take_info_digit() {
            io.event(MediaEvent::SipDtmf(digit));
        }

        let Some(Ok(frame)) = down else {
            return;
        };
        if let Some(tap) = &p.tap {
            tap.record(Side::Sip, frame.pcm);
        }
        if !p.ready && !io.browser_ready() {
            p.held.hold(&frame);
            return;
        }
        if !p.ready {
            p.ready = true;
            let (total, dropped) = p.held.totals();
            tracing::info!(call_id = %self.call_id, held = total, dropped, "browser leg ready: held audio sent");
        }
        while let Some(h) = p.held.front() {
            io.send_browser(h.payload_type, h.stamp, h.payload);
            p.held.pop_front();
        }
        io.send_browser(frame.payload_type, frame.stamp, frame.payload);
    }

    /// The settings the Opus encoder toward the browser runs with (`None` before the browser
    /// leg is answered, or when the browser takes G.711).
    #[cfg(test)]
    pub fn encoder_settings(&self) -> Option<crate::media::opus::OpusEncoderConfig> {
        let down = &self.pipeline.as_ref()?.down;
        down.encodes_opus().then(|| down.encoder_settings())
    }

    /// Tells the encoder when the bridge became short of CPU or calm again.
    fn follow_busy(&mut self) {
        let busy = self.busy.is_busy();
        if busy == self.busy_applied {
            return;
        }
        self.busy_applied = busy;
        let Some(p) = &mut self.pipeline else {
            return;
        };
        match p.down.set_busy(busy) {
            Ok(Some(s)) => tracing::debug!(
                call_id = %self.call_id,
                busy,
                complexity = s.complexity,
                "Opus encoder complexity follows the bridge's CPU"
            ),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(call_id = %self.call_id, error = %e, "Opus encoder complexity not changed")
            }
        }
    }

    fn check_activity(&mut self, now: Instant, io: &mut impl MediaIo) {
        let activity = self.activity();
        let Some(w) = &mut self.watch else {
            return;
        };
        let Some(side) = w.watch.observe(now, activity) else {
            return;
        };
        let (leg, limit) = match side {
            Side::Sip => ("sip", w.watch.limit(side, activity.sip_on_hold)),
            Side::Browser => ("browser", w.watch.limit(side, false)),
        };
        let limit_s = limit.map_or(0, |l| l.as_secs());
        tracing::warn!(call_id = %self.call_id, leg, limit_s, "RTP timeout: nothing received from the {leg} leg, ending the call");
        self.metrics.call_ended(Ending::RtpTimeout);
        io.event(MediaEvent::Failed(format!("RTP timeout on the {leg} leg")));
        self.watch = None;
        self.timed_out = true;
    }

    /// Adds what was counted since the last call to `/metrics` (packets and bytes per
    /// direction: sent to the PBX is web→SIP, received from it SIP→web; malformed datagrams as
    /// `errors{kind="rtp"}`, strangers' RTP as `rtp_source`, STUN/DTLS probes as `stun`/`dtls`;
    /// loss and jitter of both jitter buffers), and sums refused datagrams up in one line at
    /// most every [`REFUSED_LOG_EVERY`].
    pub fn publish(&mut self, now: Instant) {
        self.follow_busy();
        let c = self.sip.stats();
        let seen = self.published;
        self.published = c;
        let m = &self.metrics;
        m.rtp_packets
            .web_to_sip
            .add(c.packets_out.saturating_sub(seen.packets_out));
        m.rtp_bytes
            .web_to_sip
            .add(c.bytes_out.saturating_sub(seen.bytes_out));
        m.rtp_packets
            .sip_to_web
            .add(c.packets_in.saturating_sub(seen.packets_in));
        m.rtp_bytes
            .sip_to_web
            .add(c.bytes_in.saturating_sub(seen.bytes_in));
        m.errors_add(
            ErrorKind::Rtp,
            c.dropped_malformed.saturating_sub(seen.dropped_malformed),
        );
        m.errors_add(
            ErrorKind::RtpSource,
            c.dropped_source.saturating_sub(seen.dropped_source),
        );
        m.errors_add(ErrorKind::Stun, c.stun_in.saturating_sub(seen.stun_in));
        m.errors_add(ErrorKind::Dtls, c.dtls_in.saturating_sub(seen.dtls_in));
        let (rejected, published) = &mut self.browser_rejected;
        m.errors_add(ErrorKind::Srtp, rejected.saturating_sub(*published));
        *published = *rejected;
        if let Some(p) = &mut self.pipeline {
            for (direction, (lost, jitter_ms), last) in [
                (OpsDirection::WebToSip, p.up.jitter_report(), &mut p.lost_up),
                (
                    OpsDirection::SipToWeb,
                    p.down.jitter_report(),
                    &mut p.lost_down,
                ),
            ] {
                m.rtp_lost.get(direction).add(lost.saturating_sub(*last));
                *last = lost;
                m.rtp_jitter
                    .get(direction)
                    .observe(Duration::from_millis(u64::from(jitter_ms)));
            }
        }
        self.log_refused(c, now);
    }

    /// The browser leg's count of refused SRTP/SRTCP datagrams so far, published with the rest
    /// as `errors{kind="srtp"}`.
    pub fn note_browser_rejected(&mut self, total: u64) {
        self.browser_rejected.0 = total;
    }

    fn log_refused(&mut self, c: RtpStats, now: Instant) {
        let refused = c.refused();
        let since = refused.saturating_sub(self.refused.logged);
        let due = self
            .refused
            .last_line
            .is_none_or(|t| now.saturating_duration_since(t) >= REFUSED_LOG_EVERY);
        if since == 0 || !due {
            return;
        }
        tracing::warn!(
            call_id = %self.call_id,
            refused = since,
            total_malformed = c.dropped_malformed,
            total_stranger = c.dropped_source,
            total_stun = c.stun_in,
            total_dtls = c.dtls_in,
            "datagrams refused on the SIP RTP ports (counted; one line at most every {}s)",
            REFUSED_LOG_EVERY.as_secs()
        );
        self.refused = RefusedLog {
            logged: refused,
            last_line: Some(now),
        };
    }

    /// What the SIP leg counted.
    #[cfg(test)]
    pub fn sip_stats(&self) -> RtpStats {
        self.sip.stats()
    }
}

#[cfg(test)]
mod tests;
