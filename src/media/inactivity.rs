//! RTP inactivity timeout (`[media] rtp_timeout`, like rtpengine and FreeSWITCH's
//! `rtp-timeout-sec`), sans-IO: fed samples of each leg's receive counters and the time, it says
//! which leg has been silent too long. The counters are the ones the receive paths already bump
//! (relaxed atomics), so watching costs nothing per packet.

use std::time::{Duration, Instant};

use crate::media::recording::Side;

/// One leg's last change of its counter.
#[derive(Debug, Clone, Copy)]
struct Seen {
    count: u64,
    since: Instant,
}

impl Seen {
    fn update(&mut self, now: Instant, count: u64, alive: bool) {
        if count != self.count || alive {
            self.count = count;
            self.since = now;
        }
    }
}

/// Watches both legs of an established call.
#[derive(Debug, Clone)]
pub struct InactivityWatch {
    timeout: Duration,
    hold_timeout: Duration,
    sip: Seen,
    browser: Seen,
}

/// One sample of what the legs received so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    /// RTP + RTCP packets from the phone.
    pub sip_packets: u64,
    /// The phone holds the call (its SDP is sendonly/inactive): no RTP is expected.
    pub sip_on_hold: bool,
    /// RTP packets from the browser.
    pub browser_packets: u64,
    /// The browser's ICE consent is fresh (its STUN checks are answered): the leg is alive even
    /// without RTP.
    pub browser_consent: bool,
}

impl InactivityWatch {
    /// Starts watching at `now` (the answer). `timeout` zero: never fires. On hold the longer of
    /// `timeout` and `hold_timeout` applies to the SIP leg; `hold_timeout` zero: none on hold.
    pub fn new(now: Instant, timeout: Duration, hold_timeout: Duration, first: Activity) -> Self {
        InactivityWatch {
            timeout,
            hold_timeout,
            sip: Seen {
                count: first.sip_packets,
                since: now,
            },
            browser: Seen {
                count: first.browser_packets,
                since: now,
            },
        }
    }

    /// How long `side` may stay silent now (None: no limit).
    pub fn limit(&self, side: Side, sip_on_hold: bool) -> Option<Duration> {
        if self.timeout.is_zero() {
            return None;
        }
        match side {
            Side::Sip if sip_on_hold => {
                (!self.hold_timeout.is_zero()).then(|| self.timeout.max(self.hold_timeout))
            }
            _ => Some(self.timeout),
        }
    }

    /// How often to sample: often enough to end a call within a quarter of the timeout.
    pub fn period(&self) -> Duration {
        (self.timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// A sample at `now`: the leg that has been silent past its limit, if any (the SIP leg first).
    pub fn observe(&mut self, now: Instant, activity: Activity) -> Option<Side> {
        self.sip.update(now, activity.sip_packets, false);
        self.browser
            .update(now, activity.browser_packets, activity.browser_consent);
        for (side, seen) in [(Side::Sip, self.sip), (Side::Browser, self.browser)] {
            if let Some(limit) = self.limit(side, activity.sip_on_hold) {
                if now.saturating_duration_since(seen.since) >= limit {
                    return Some(side);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn watch(t0: Instant, timeout: u32, hold: u32) -> InactivityWatch {
        InactivityWatch::new(t0, timeout * S, hold * S, Activity::default())
    }

    fn activity(sip: u64, browser: u64) -> Activity {
        Activity {
            sip_packets: sip,
            browser_packets: browser,
            ..Activity::default()
        }
    }

    #[test]
    fn a_phone_that_sends_nothing_after_the_answer_times_out() {
        let t0 = Instant::now();
        let mut w = watch(t0, 3, 3600);
        assert_eq!(w.observe(t0 + S, activity(0, 50)), None);
        assert_eq!(w.observe(t0 + 2 * S, activity(0, 100)), None);
        assert_eq!(w.observe(t0 + 3 * S, activity(0, 150)), Some(Side::Sip));
    }

    #[test]
    fn packets_keep_the_call_and_silence_counts_from_the_last_one() {
        let t0 = Instant::now();
        let mut w = watch(t0, 3, 3600);
        for s in 1..=10u32 {
            let n = u64::from(s) * 50;
            assert_eq!(w.observe(t0 + s * S, activity(n, n)), None, "{s}");
        }
        // the phone stops at 10 s
        assert_eq!(w.observe(t0 + 12 * S, activity(500, 600)), None);
        assert_eq!(w.observe(t0 + 13 * S, activity(500, 650)), Some(Side::Sip));
    }

    #[test]
    fn a_silent_browser_times_out_once_its_consent_lapses() {
        let t0 = Instant::now();
        let mut w = watch(t0, 3, 3600);
        let consent = Activity {
            sip_packets: 0,
            browser_consent: true,
            ..Activity::default()
        };
        for s in 1..=5u32 {
            let a = Activity {
                sip_packets: u64::from(s) * 50,
                ..consent
            };
            assert_eq!(w.observe(t0 + s * S, a), None, "consent keeps it ({s} s)");
        }
        // ICE consent lapses after 5 s
        assert_eq!(w.observe(t0 + 7 * S, activity(350, 0)), None);
        assert_eq!(w.observe(t0 + 8 * S, activity(400, 0)), Some(Side::Browser));
    }

    #[test]
    fn on_hold_the_longer_hold_timeout_applies_to_the_phone() {
        let t0 = Instant::now();
        let mut w = watch(t0, 3, 10);
        let held = |browser| Activity {
            sip_on_hold: true,
            ..activity(0, browser)
        };
        assert_eq!(w.observe(t0 + 9 * S, held(450)), None);
        assert_eq!(w.observe(t0 + 10 * S, held(500)), Some(Side::Sip));
        // a hold timeout shorter than the timeout: the timeout
        let mut w = watch(t0, 5, 2);
        assert_eq!(w.observe(t0 + 4 * S, held(200)), None);
        assert_eq!(w.observe(t0 + 5 * S, held(250)), Some(Side::Sip));
    }

    #[test]
    fn zero_turns_the_timeout_or_the_hold_limit_off() {
        let t0 = Instant::now();
        let mut off = watch(t0, 0, 3600);
        assert_eq!(off.observe(t0 + 3600 * S, activity(0, 0)), None);
        let mut no_hold_limit = watch(t0, 3, 0);
        let held = Activity {
            sip_on_hold: true,
            browser_packets: 1,
            ..Activity::default()
        };
        assert_eq!(no_hold_limit.observe(t0 + 100 * S, held), None);
    }

    #[test]
    fn the_sampling_period_follows_the_timeout() {
        let t0 = Instant::now();
        assert_eq!(watch(t0, 60, 0).period(), S);
        assert_eq!(watch(t0, 2, 0).period(), Duration::from_millis(500));
        assert_eq!(watch(t0, 0, 0).period(), Duration::from_millis(100));
    }
}
