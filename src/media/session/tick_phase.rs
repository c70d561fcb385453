//! Where in the 20 ms period each call's media tick falls.
//!
//! Every call's media task takes one frame each way per 20 ms tick, from the moment its browser
//! leg answered. Calls set up at a steady rate (a dialler, a load test at 50 calls/s, a PBX
//! passing on a burst) then tick at nearly the same instant: on a busy core their frames are
//! made one after another in one burst, and the order changes from tick to tick, so a call's
//! packets leave up to the whole burst early or late (150 transcoded calls at 75–87 % of a core:
//! jitter p99 at the browsers 6.7–30.6 ms). [`TickPhases`] gives each call the millisecond of
//! the period the fewest calls hold, as a [`TickPhase`] held for the call's life; the work of a
//! tick is then spread over the period (the same 150 calls: 3.1–4.7 ms, once 20; README
//! "Performance", stop 18). The audio's delay does not change on average: where a tick falls
//! against the packets' arrival was arbitrary before too (the browser's and the phone's
//! clocks); only the first frame may wait up to 19 ms more.
//!
//! Sans-IO: times are passed in; the counts are atomics shared by every call's media task, read
//! and changed only when a call's pipeline starts and ends.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::media_core::TICK;

/// Phases a tick may take: one per millisecond of the period (tokio's timers have 1 ms steps).
const SLOTS: usize = 20;
/// The distance between two phases.
const SLOT: Duration = Duration::from_millis(1);

/// How many calls tick at each millisecond of the 20 ms period, counted from one epoch.
#[derive(Debug)]
pub struct TickPhases {
    epoch: Instant,
    calls: [AtomicU32; SLOTS],
}

impl TickPhases {
    /// Phases counted from `epoch` (any instant before the first call, e.g. the process start).
    pub fn new(epoch: Instant) -> Arc<Self> {
        Arc::new(TickPhases {
            epoch,
            calls: std::array::from_fn(|_| AtomicU32::new(0)),
        })
    }

    /// The phase the fewest calls tick at (the earliest of equals), held until the lease drops.
    /// Two calls starting at once may take the same one: the counts are a guide, not a lock.
    pub fn lease(self: &Arc<Self>) -> TickPhase {
        let slot = (0..SLOTS)
            .min_by_key(|&i| self.calls[i].load(Ordering::Relaxed))
            .unwrap_or(0);
        self.calls[slot].fetch_add(1, Ordering::Relaxed);
        TickPhase {
            phases: Arc::clone(self),
            slot,
        }
    }

    /// Calls ticking at each millisecond of the period.
    #[cfg(test)]
    fn counts(&self) -> [u32; SLOTS] {
        std::array::from_fn(|i| self.calls[i].load(Ordering::Relaxed))
    }
}

/// One call's place in the period; gives it back when dropped.
#[derive(Debug)]
pub struct TickPhase {
    phases: Arc<TickPhases>,
    slot: usize,
}

impl TickPhase {
    /// The first tick at or after `now` that falls on this phase (less than 20 ms away).
    pub fn first_tick(&self, now: Instant) -> Instant {
        let period = TICK.as_nanos();
        let offset = (SLOT * self.slot as u32).as_nanos();
        let since = now.saturating_duration_since(self.phases.epoch).as_nanos();
        let into = since % period;
        let wait = (offset + period - into) % period;
        now + Duration::from_nanos(u64::try_from(wait).unwrap_or(0))
    }
}

impl Drop for TickPhase {
    fn drop(&mut self) {
        self.phases.calls[self.slot].fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_spread_over_every_millisecond_of_the_period() {
        let phases = TickPhases::new(Instant::now());
        let leases: Vec<TickPhase> = (0..45).map(|_| phases.lease()).collect();
        let counts = phases.counts();
        assert!(
            counts.iter().all(|&n| n == 2 || n == 3),
            "45 calls over 20 phases: {counts:?}"
        );
        assert_eq!(counts.iter().sum::<u32>(), 45);
        drop(leases);
        assert_eq!(phases.counts(), [0; SLOTS]);
    }

    #[test]
    fn an_ended_calls_phase_goes_to_the_next_call() {
        let phases = TickPhases::new(Instant::now());
        let mut leases: Vec<TickPhase> = (0..SLOTS).map(|_| phases.lease()).collect();
        let ended = leases.remove(7);
        let slot = ended.slot;
        drop(ended);
        assert_eq!(phases.lease().slot, slot);
    }

    #[test]
    fn the_first_tick_is_on_the_phase_and_within_one_period() {
        let epoch = Instant::now();
        let phases = TickPhases::new(epoch);
        let leases: Vec<TickPhase> = (0..SLOTS).map(|_| phases.lease()).collect();
        for now_ms in [0u64, 3, 19, 20, 1_234, 99_999] {
            let now = epoch + Duration::from_micros(now_ms * 1000 + 250);
            for lease in &leases {
                let first = lease.first_tick(now);
                let wait = first - now;
                assert!(
                    wait < TICK,
                    "{wait:?} to wait at {now_ms} ms, slot {}",
                    lease.slot
                );
                let phase = (first - epoch).as_micros() % 20_000;
                assert_eq!(phase, lease.slot as u128 * 1000, "at {now_ms} ms");
            }
        }
        // Exactly on the phase: that tick, not the next one.
        let at = epoch + Duration::from_millis(40 + leases[5].slot as u64);
        assert_eq!(leases[5].first_tick(at), at);
    }
}
