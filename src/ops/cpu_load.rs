//! Is the bridge short of CPU? When it is, the Opus encoders toward browsers take a cheaper
//! coder and complexity (`[media] opus_mode_busy`, `opus_complexity_busy`) instead of every
//! call's frames running late.
//!
//! Opus encoding is about half of a transcoded call's CPU, and CELT at complexity 0 costs a
//! fifth of SILK at 5 (−0.14 PESQ on a clean path; docs/audio.md). A bridge that runs out of CPU
//! makes every call late by whole frames (the jitter buffers then insert and trim audio): much
//! worse than a slightly cheaper encoder. [`CpuLoad`] is the sans-IO rule: fed the process's
//! CPU time and the wall time about once a second, it says when the bridge becomes busy (two
//! samples in a row at or above `busy_cpu_percent` of the cores it may run on) and when it is
//! not any more (five in a row [`CALM_MARGIN`] points below), so a load near the threshold does
//! not flap. "Below" counts what going back would cost: the cheap encoder itself lowers the
//! load (a transcoded call ~7 → ~3.6 ms of CPU per second), so the rule measures the drop the
//! switch made ([`SETTLE`] samples after it) and calls the bridge calm only when the load times
//! that drop is below the mark; by the plain rule 150 calls at 56 % on the cheap encoder would
//! count as calm and go back to an overloaded normal one (arithmetic, not measured).
//! [`BusySignal`] carries the verdict to every call's media task (one relaxed atomic load per
//! call per second); [`watch_cpu`] is the thin tokio shell.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ops::lifecycle::ConfigWatch;
use crate::ops::metrics::Metrics;

/// How often the process's CPU time is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Samples in a row at or above the threshold before the bridge counts as busy.
const BUSY_AFTER: u32 = 2;
/// Samples in a row below the threshold minus [`CALM_MARGIN`] before it is calm again.
const CALM_AFTER: u32 = 5;
/// Percentage points below the threshold that count as calm.
const CALM_MARGIN: f64 = 15.0;
/// Samples after the switch to busy before its saving is measured: every call's media task
/// reads the signal once a second, so the second sample is the first wholly at the busy cost.
const SETTLE: u32 = 2;
/// The largest saving believed (a drop beyond it is calls ending, not the cheaper encoder).
const MAX_SAVING: f64 = 4.0;

/// Whether the bridge is short of CPU, shared by the sampler and every call's media task.
#[derive(Debug, Clone, Default)]
pub struct BusySignal(Arc<AtomicBool>);

impl BusySignal {
    /// A signal that says "not busy" until [`BusySignal::set`] says otherwise.
    pub fn new() -> Self {
        Self::default()
    }

    /// Is the bridge short of CPU now?
    pub fn is_busy(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Sets the verdict (the sampler; tests).
    pub fn set(&self, busy: bool) {
        self.0.store(busy, Ordering::Relaxed);
    }
}

/// A change of verdict, with the CPU use (percent of the cores the process may use) that made it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LoadChange {
    /// Now busy.
    Busy {
        /// Percent of the usable cores in the last sample.
        percent: f64,
    },
    /// Calm again.
    Calm {
        /// Percent of the usable cores in the last sample.
        percent: f64,
    },
}

/// The busy/calm rule. See the module docs.
#[derive(Debug)]
pub struct CpuLoad {
    /// Percent of the usable cores; 0: never busy.
    threshold: f64,
    cores: f64,
    last: Option<(Duration, Instant)>,
    busy: bool,
    run: u32,
    percent: Option<f64>,
    /// The load that made the bridge busy.
    busy_from: f64,
    /// Samples since the switch to busy (up to [`SETTLE`]).
    settled: u32,
    /// Load before the switch over load after it (≥ 1): what going back would multiply by.
    saving: f64,
}

impl CpuLoad {
    /// Busy at `threshold_percent` (0: never) of `cores` cores (at least 1).
    pub fn new(threshold_percent: u8, cores: usize) -> Self {
        CpuLoad {
            threshold: f64::from(threshold_percent),
            cores: cores.max(1) as f64,
            last: None,
            busy: false,
            run: 0,
            percent: None,
            busy_from: 0.0,
            settled: 0,
            saving: 1.0,
        }
    }

    /// The process had used `cpu` (user + system, since it started) at `now`. Returns the
    /// change of verdict, if any. The first sample only sets the start; a sample less than
    /// 100 ms after the previous one is ignored (too short to say anything).
    pub fn sample(&mut self, cpu: Duration, now: Instant) -> Option<LoadChange> {
        let Some((last_cpu, last_at)) = self.last else {
            self.last = Some((cpu, now));
            return None;
        };
        let wall = now.saturating_duration_since(last_at);
        if wall < Duration::from_millis(100) {
            return None;
        }
        self.last = Some((cpu, now));
        let used = cpu.saturating_sub(last_cpu);
        let percent = 100.0 * used.as_secs_f64() / (wall.as_secs_f64() * self.cores);
        self.percent = Some(percent);
        if self.threshold == 0.0 {
            self.run = 0;
            return self.busy.then(|| {
                self.busy = false;
                LoadChange::Calm { percent }
            });
        }
        let leaning = if self.busy {
            if self.settled < SETTLE {
                self.settled += 1;
                if self.settled == SETTLE {
                    self.saving = (self.busy_from / percent.max(1.0)).clamp(1.0, MAX_SAVING);
                }
                false
            } else {
                percent * self.saving < self.threshold - CALM_MARGIN
            }
        } else {
            percent >= self.threshold
        };
        self.run = if leaning { self.run + 1 } else { 0 };
        let needed = if self.busy { CALM_AFTER } else { BUSY_AFTER };
        if self.run < needed {
            return None;
        }
        self.run = 0;
        self.busy = !self.busy;
        if self.busy {
            self.busy_from = percent;
            self.settled = 0;
            self.saving = 1.0;
        }
        Some(if self.busy {
            LoadChange::Busy { percent }
        } else {
            LoadChange::Calm { percent }
        })
    }

    /// A new threshold (a config reload), from the next sample on; 0: never busy.
    pub fn set_threshold(&mut self, threshold_percent: u8) {
        let threshold = f64::from(threshold_percent);
        if threshold != self.threshold {
            self.threshold = threshold;
            self.run = 0;
        }
    }

    /// The verdict now.
    pub fn is_busy(&self) -> bool {
        self.busy
    }

    /// CPU use in the last sample, percent of the usable cores.
    pub fn percent(&self) -> Option<f64> {
        self.percent
    }

    /// While busy: how much more the load would be at the normal cost (load before the switch
    /// over load after it, once measured; 1 before).
    pub fn saving(&self) -> f64 {
        self.saving
    }
}

/// User + system CPU time this process has used.
pub fn process_cpu_time() -> Option<Duration> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: getrusage returned 0, so it wrote the whole struct.
    let usage = unsafe { usage.assume_init() };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    Some(time(usage.ru_utime) + time(usage.ru_stime))
}

/// The cores this process may run on (affinity and cgroup quota), at least 1.
pub fn usable_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Samples the process's CPU every [`SAMPLE_EVERY`] against `[media] busy_cpu_percent` (read
/// at each sample, so a reload applies) and keeps `signal` and `srbridge_cpu_busy` up to date,
/// with one log line per change.
pub async fn watch_cpu(config: ConfigWatch, signal: BusySignal, metrics: Arc<Metrics>) {
    let cores = usable_cores();
    let mut load = CpuLoad::new(config.borrow().media.busy_cpu_percent, cores);
    let mut interval = tokio::time::interval(SAMPLE_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let threshold_percent = config.borrow().media.busy_cpu_percent;
        load.set_threshold(threshold_percent);
        let Some(cpu) = process_cpu_time() else {
            continue;
        };
        match load.sample(cpu, Instant::now()) {
            Some(LoadChange::Busy { percent }) => tracing::warn!(
                cpu_percent = percent.round(),
                cores,
                threshold_percent,
                "CPU busy: new Opus frames toward browsers take opus_mode_busy at opus_complexity_busy until it calms"
            ),
            Some(LoadChange::Calm { percent }) => tracing::info!(
                cpu_percent = percent.round(),
                busy_saving = format!("{:.2}", load.saving()),
                cores,
                "CPU calm again (at the normal encoder it would be cpu_percent × busy_saving): Opus encoders back to opus_mode at opus_complexity"
            ),
            None => continue,
        }
        signal.set(load.is_busy());
        metrics.cpu_busy.set(i64::from(load.is_busy()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds one sample per second at `percents` (of `cores` cores); returns the changes.
    fn run(load: &mut CpuLoad, cores: f64, percents: &[f64]) -> Vec<Option<LoadChange>> {
        let start = Instant::now();
        let mut cpu = Duration::ZERO;
        load.sample(cpu, start);
        percents
            .iter()
            .enumerate()
            .map(|(i, p)| {
                cpu += Duration::from_secs_f64(p / 100.0 * cores);
                load.sample(cpu, start + Duration::from_secs(i as u64 + 1))
            })
            .collect()
    }

    fn busy_at(changes: &[Option<LoadChange>]) -> Vec<(usize, bool)> {
        changes
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match c {
                Some(LoadChange::Busy { .. }) => Some((i, true)),
                Some(LoadChange::Calm { .. }) => Some((i, false)),
                None => None,
            })
            .collect()
    }

    #[test]
    fn busy_after_two_seconds_over_the_threshold_calm_after_five_well_below() {
        let mut load = CpuLoad::new(85, 1);
        // The switch saves nothing here (95 → 94): the load itself then falls.
        let changes = run(
            &mut load,
            1.0,
            &[
                50.0, 90.0, 95.0, 94.0, 94.0, 80.0, 72.0, 60.0, 60.0, 60.0, 60.0, 60.0,
            ],
        );
        // Busy at the second sample over 85 %; 80 and 72 are not calm (≥ 70); five at 60 are.
        assert_eq!(busy_at(&changes), vec![(2, true), (11, false)]);
        assert!(!load.is_busy());
        assert!((load.percent().unwrap() - 60.0).abs() < 0.01);
    }

    /// A bridge at threshold 85 on one core fed `start`, then `then` percent `times` times:
    /// where its verdict changes, and the saving it measured.
    fn busy_with_saving(start: &[f64], then: f64, times: usize) -> (Vec<(usize, bool)>, f64) {
        let mut load = CpuLoad::new(85, 1);
        let mut percents = start.to_vec();
        percents.extend(std::iter::repeat_n(then, times));
        (busy_at(&run(&mut load, 1.0, &percents)), load.saving())
    }

    #[test]
    fn the_cheap_encoders_own_saving_does_not_count_as_calm() {
        let near = |(changes, saving): (Vec<(usize, bool)>, f64),
                    expected: &[(usize, bool)],
                    want: f64| {
            assert_eq!(changes, expected);
            assert!((saving - want).abs() < 0.01, "saving {saving}, not {want}");
        };
        // 150 calls: 100 % at the normal cost, 52 % at the busy one (the switch halves it):
        // busy for good.
        near(
            busy_with_saving(&[100.0, 100.0, 70.0], 52.0, 30),
            &[(1, true)],
            100.0 / 52.0,
        );
        // Calls end: at 30 % (58 % at the normal cost) five samples in a row make it calm.
        near(
            busy_with_saving(&[100.0, 100.0, 70.0, 52.0, 52.0, 40.0], 30.0, 5),
            &[(1, true), (10, false)],
            100.0 / 52.0,
        );
        // A drop too large to be the encoder (calls ended at the switch) is believed only 4×.
        near(
            busy_with_saving(&[100.0, 100.0, 50.0, 10.0], 16.0, 5),
            &[(1, true), (8, false)],
            MAX_SAVING,
        );
    }

    #[test]
    fn a_single_spike_or_a_load_near_the_threshold_does_not_flap() {
        let mut load = CpuLoad::new(85, 1);
        let changes = run(&mut load, 1.0, &[90.0, 50.0, 90.0, 50.0, 86.0, 84.0, 86.0]);
        assert!(busy_at(&changes).is_empty(), "{changes:?}");
        let mut load = CpuLoad::new(85, 1);
        let changes = run(
            &mut load,
            1.0,
            &[90.0, 90.0, 80.0, 60.0, 80.0, 60.0, 60.0, 60.0],
        );
        assert_eq!(busy_at(&changes), vec![(1, true)], "{changes:?}");
    }

    #[test]
    fn percent_is_of_the_usable_cores() {
        // One full core of two is 50 %: not busy at 85.
        let mut load = CpuLoad::new(85, 2);
        let changes = run(&mut load, 1.0, &[100.0, 100.0, 100.0]);
        assert!(busy_at(&changes).is_empty());
        assert!((load.percent().unwrap() - 50.0).abs() < 0.01);
        let changes = run(&mut CpuLoad::new(85, 2), 2.0, &[90.0, 90.0]);
        assert_eq!(busy_at(&changes), vec![(1, true)]);
    }

    #[test]
    fn samples_too_close_or_going_backwards_say_nothing() {
        let mut load = CpuLoad::new(50, 1);
        let t = Instant::now();
        assert_eq!(load.sample(Duration::from_secs(5), t), None);
        assert_eq!(
            load.sample(Duration::from_secs(6), t + Duration::from_millis(10)),
            None
        );
        // CPU time never goes backwards; if a reading did, it counts as idle, not as a panic.
        assert_eq!(
            load.sample(Duration::ZERO, t + Duration::from_secs(1)),
            None
        );
        assert_eq!(load.percent(), Some(0.0));
    }

    #[test]
    fn this_process_has_cpu_time_and_cores() {
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(20) {}
        assert!(process_cpu_time().is_some_and(|t| t > Duration::ZERO));
        assert!(usable_cores() >= 1);
    }

    #[test]
    fn threshold_zero_is_never_busy_and_a_reload_to_zero_calms_at_once() {
        let mut load = CpuLoad::new(0, 1);
        assert!(busy_at(&run(&mut load, 1.0, &[100.0, 100.0, 100.0])).is_empty());
        let mut load = CpuLoad::new(80, 1);
        assert_eq!(
            busy_at(&run(&mut load, 1.0, &[90.0, 90.0])),
            vec![(1, true)]
        );
        load.set_threshold(0);
        let t = Instant::now() + Duration::from_secs(60);
        assert!(matches!(
            load.sample(Duration::from_secs(100), t),
            Some(LoadChange::Calm { .. })
        ));
        assert!(!load.is_busy());
    }

    #[test]
    fn the_signal_is_shared_by_its_clones() {
        let signal = BusySignal::new();
        let reader = signal.clone();
        assert!(!reader.is_busy());
        signal.set(true);
        assert!(reader.is_busy());
    }
}
