//! Which Opus settings to encode with toward a browser, from the loss its RTCP receiver reports
//! show. Sans-IO: fed each report's fraction lost and the time, it returns new encoder settings
//! when they change.
//!
//! In-band FEC costs the primary stream a third of its bits (24 kb/s with FEC at 10 % leaves it
//! about 16 kb/s: PESQ 3.5 against 3.9 without), but carries speech through loss (3 % random loss
//! on the Opus packets, offline: 3.5 without FEC, 3.9 with FEC at 40 kb/s). So with `opus_fec = "auto"` FEC is off on a clean
//! path and comes on, at the lossy bitrate and a `packet_loss_perc` that follows the smoothed
//! loss, as soon as a report shows loss; it goes off again only after the loss has stayed low for
//! a while (hysteresis), so a path near the threshold does not flap. Figures: docs/audio.md.

use crate::config::{OpusFec, OpusMode, OpusSettings};
use crate::media::opus::OpusEncoderConfig;

/// Smoothed loss at or above which FEC comes on (`auto`).
const ENTER_LOSS: f32 = 0.01;
/// Smoothed loss below which FEC may go off again (`auto`)...
const LEAVE_LOSS: f32 = 0.005;
/// ...once no report has shown loss at or above it for this long.
const CLEAN_HOLD_MS: u64 = 15_000;
/// Weight of the old estimate when a report shows less loss than it (decay per report).
const DECAY: f32 = 0.7;
/// `packet_loss_perc` never goes above this: beyond it FEC would starve the primary stream.
const MAX_LOSS_PERCENT: u8 = 25;
/// `packet_loss_perc` with `opus_fec = "on"` before (or without) reports showing more.
const ON_FLOOR_PERCENT: u8 = 5;

/// The encoder policy of one stream toward a browser. See the module docs.
#[derive(Debug, Clone)]
pub struct EncoderPolicy {
    settings: OpusSettings,
    /// Loss estimate, 0..=1: follows a rise at once, decays by [`DECAY`] per report.
    smoothed: f32,
    lossy: bool,
    /// When a report last showed loss at or above [`LEAVE_LOSS`].
    last_loss_ms: Option<u64>,
    /// The bridge is short of CPU: `complexity_busy` instead of `complexity`.
    busy: bool,
    current: OpusEncoderConfig,
}

impl EncoderPolicy {
    /// A policy for `settings`, starting as on a clean path.
    pub fn new(settings: OpusSettings) -> Self {
        let mut policy = EncoderPolicy {
            settings,
            smoothed: 0.0,
            lossy: false,
            last_loss_ms: None,
            busy: false,
            current: OpusEncoderConfig::default(),
        };
        policy.current = policy.decide();
        policy
    }

    /// The settings to encode with now.
    pub fn settings(&self) -> OpusEncoderConfig {
        self.current
    }

    /// The smoothed loss estimate, 0..=1.
    pub fn smoothed_loss(&self) -> f32 {
        self.smoothed
    }

    /// One receiver report's fraction lost (0..=1; RTCP carries it in 1/256ths) at `now_ms` (any
    /// monotonic millisecond clock). Returns the new settings when they changed.
    pub fn on_loss_report(&mut self, fraction_lost: f32, now_ms: u64) -> Option<OpusEncoderConfig> {
        let loss = if fraction_lost.is_finite() {
            fraction_lost.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.smoothed = loss.max(DECAY * self.smoothed + (1.0 - DECAY) * loss);
        if loss >= LEAVE_LOSS {
            self.last_loss_ms = Some(now_ms);
        }
        if self.smoothed >= ENTER_LOSS {
            self.lossy = true;
        } else if self.lossy && self.smoothed < LEAVE_LOSS {
            let quiet_since = self
                .last_loss_ms
                .map_or(u64::MAX, |t| now_ms.saturating_sub(t));
            if quiet_since >= CLEAN_HOLD_MS {
                self.lossy = false;
            }
        }
        let next = self.decide();
        (next != self.current).then(|| {
            self.current = next;
            next
        })
    }

    /// The bridge became short of CPU (or calm again): returns the new settings when they
    /// changed (only the complexity does).
    pub fn set_busy(&mut self, busy: bool) -> Option<OpusEncoderConfig> {
        self.busy = busy;
        let next = self.decide();
        (next != self.current).then(|| {
            self.current = next;
            next
        })
    }

    fn loss_percent(&self) -> u8 {
        ((self.smoothed * 100.0).ceil() as u8).min(MAX_LOSS_PERCENT)
    }

    fn decide(&self) -> OpusEncoderConfig {
        let s = &self.settings;
        let (fec, bitrate, loss) = match s.fec {
            OpusFec::Off => (false, s.bitrate, self.loss_percent()),
            OpusFec::On => (
                true,
                s.bitrate_lossy,
                self.loss_percent().max(ON_FLOOR_PERCENT),
            ),
            OpusFec::Auto if self.lossy => (true, s.bitrate_lossy, self.loss_percent().max(1)),
            OpusFec::Auto => (false, s.bitrate, 0),
        };
        let (complexity, mode) = if self.busy {
            (s.complexity_busy.min(s.complexity), s.mode_busy)
        } else {
            (s.complexity, s.mode)
        };
        // In-band FEC is SILK's: while it is on, SILK carries the stream whatever the mode.
        let mode = if fec { OpusMode::Silk } else { mode };
        OpusEncoderConfig {
            bitrate_bps: bitrate.min(i32::MAX as u32) as i32,
            complexity: complexity.min(10),
            packet_loss_percent: loss,
            fec,
            mode,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(fec: OpusFec) -> OpusSettings {
        OpusSettings {
            complexity: 4,
            complexity_busy: 1,
            bitrate: 24_000,
            bitrate_lossy: 32_000,
            fec,
            mode: OpusMode::Silk,
            mode_busy: OpusMode::Celt,
        }
    }

    /// Feeds one report every `every_ms` from `start_ms`; returns the time after the last.
    fn feed(p: &mut EncoderPolicy, loss: f32, reports: u32, start_ms: u64, every_ms: u64) -> u64 {
        let mut t = start_ms;
        for _ in 0..reports {
            p.on_loss_report(loss, t);
            t += every_ms;
        }
        t
    }

    #[test]
    fn a_clean_path_spends_every_bit_on_the_primary_stream() {
        let mut p = EncoderPolicy::new(settings(OpusFec::Auto));
        let clean = OpusEncoderConfig {
            bitrate_bps: 24_000,
            complexity: 4,
            packet_loss_percent: 0,
            fec: false,
            mode: OpusMode::Silk,
        };
        assert_eq!(p.settings(), clean);
        feed(&mut p, 0.0, 20, 0, 5000);
        assert_eq!(p.settings(), clean);
        // A single stray loss (1/256) is not loss.
        assert_eq!(p.on_loss_report(1.0 / 256.0, 200_000), None);
        assert!(!p.settings().fec);
    }

    #[test]
    fn loss_turns_fec_on_at_once_with_a_matching_percentage_and_more_bits() {
        let mut p = EncoderPolicy::new(settings(OpusFec::Auto));
        let changed = p.on_loss_report(0.03, 1000).expect("settings change");
        assert!(changed.fec);
        assert_eq!(changed.bitrate_bps, 32_000);
        assert_eq!(changed.packet_loss_percent, 3);
        // Heavier loss raises the percentage, capped.
        assert_eq!(
            p.on_loss_report(0.10, 6000).map(|s| s.packet_loss_percent),
            Some(10)
        );
        p.on_loss_report(0.9, 11_000);
        assert_eq!(p.settings().packet_loss_percent, MAX_LOSS_PERCENT);
    }

    #[test]
    fn fec_backs_off_only_after_the_loss_stays_low_for_a_while() {
        let mut p = EncoderPolicy::new(settings(OpusFec::Auto));
        let t = feed(&mut p, 0.03, 3, 0, 5000);
        assert!(p.settings().fec);
        // Clean reports: the estimate decays; FEC stays on while it is above the leave level
        // or the last loss is recent.
        let mut t = t;
        let mut off_at = None;
        for _ in 0..40 {
            if p.on_loss_report(0.0, t).is_some_and(|s| !s.fec) {
                off_at = Some(t);
                break;
            }
            assert!(p.settings().fec);
            t += 5000;
        }
        let off_at = off_at.expect("FEC went off");
        assert!(
            off_at - 10_000 >= CLEAN_HOLD_MS,
            "off {off_at} ms, too soon"
        );
        assert_eq!(p.settings().bitrate_bps, 24_000);
        assert_eq!(p.settings().packet_loss_percent, 0);
    }

    #[test]
    fn loss_hovering_near_the_threshold_does_not_flap() {
        let mut p = EncoderPolicy::new(settings(OpusFec::Auto));
        let mut switches = 0;
        let mut fec = p.settings().fec;
        for k in 0..200u64 {
            // Alternating 1.2 % and 0.6 % reports every 5 s.
            let loss = if k % 2 == 0 { 0.012 } else { 0.006 };
            p.on_loss_report(loss, k * 5000);
            if p.settings().fec != fec {
                switches += 1;
                fec = p.settings().fec;
            }
        }
        assert!(p.settings().fec);
        assert_eq!(switches, 1, "FEC switched {switches} times");
    }

    #[test]
    fn forced_modes_ignore_the_path_for_fec_but_follow_the_loss() {
        let mut on = EncoderPolicy::new(settings(OpusFec::On));
        assert!(on.settings().fec);
        assert_eq!(on.settings().bitrate_bps, 32_000);
        assert_eq!(on.settings().packet_loss_percent, ON_FLOOR_PERCENT);
        on.on_loss_report(0.12, 0);
        assert_eq!(on.settings().packet_loss_percent, 12);

        let mut off = EncoderPolicy::new(settings(OpusFec::Off));
        off.on_loss_report(0.12, 0);
        assert!(!off.settings().fec);
        assert_eq!(off.settings().bitrate_bps, 24_000);
        assert_eq!(off.settings().packet_loss_percent, 12);
    }

    #[test]
    fn nonsense_reports_are_clamped() {
        let mut p = EncoderPolicy::new(settings(OpusFec::Auto));
        assert_eq!(p.on_loss_report(f32::NAN, 0), None);
        assert_eq!(p.on_loss_report(-3.0, 1), None);
        p.on_loss_report(7.0, 2);
        assert_eq!(p.settings().packet_loss_percent, MAX_LOSS_PERCENT);
        assert!(p.smoothed_loss() <= 1.0);
    }

    #[test]
    fn a_busy_bridge_encodes_cheaper_and_keeps_the_loss_rule() {
        let mut p = EncoderPolicy::new(settings(OpusFec::Auto));
        let busy = p.set_busy(true).expect("complexity changes");
        assert_eq!(
            (busy.complexity, busy.fec, busy.bitrate_bps, busy.mode),
            (1, false, 24_000, OpusMode::Celt)
        );
        assert_eq!(p.set_busy(true), None, "no change, no new settings");
        // Loss while busy: FEC comes on at the lossy bitrate, still cheap, and FEC is SILK's.
        let lossy = p.on_loss_report(0.05, 0).expect("FEC on");
        assert_eq!(
            (lossy.complexity, lossy.fec, lossy.bitrate_bps, lossy.mode),
            (1, true, 32_000, OpusMode::Silk)
        );
        let calm = p.set_busy(false).expect("complexity back");
        assert_eq!(
            (calm.complexity, calm.fec, calm.mode),
            (4, true, OpusMode::Silk)
        );
        // A busy complexity above the normal one is never used.
        let mut odd = EncoderPolicy::new(OpusSettings {
            complexity_busy: 9,
            ..settings(OpusFec::Off)
        });
        assert_eq!(
            odd.set_busy(true).map(|s| (s.complexity, s.mode)),
            Some((4, OpusMode::Celt))
        );
    }

    #[test]
    fn celt_carries_a_clean_path_and_silk_a_lossy_one() {
        let mut p = EncoderPolicy::new(OpusSettings {
            mode: OpusMode::Celt,
            ..settings(OpusFec::Auto)
        });
        assert_eq!(
            (p.settings().mode, p.settings().fec),
            (OpusMode::Celt, false)
        );
        let lossy = p.on_loss_report(0.05, 0).expect("FEC on");
        assert_eq!((lossy.mode, lossy.fec), (OpusMode::Silk, true));
        // FEC always on: always SILK, CELT configured or not.
        let on = EncoderPolicy::new(OpusSettings {
            mode: OpusMode::Celt,
            ..settings(OpusFec::On)
        });
        assert_eq!(on.settings().mode, OpusMode::Silk);
    }
}
