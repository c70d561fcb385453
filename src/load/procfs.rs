//! CPU time, memory and open files of a process, read from `/proc` (Linux): how the bridge's cost
//! is measured from outside, like `top` and `ps` do.

use std::path::PathBuf;
use std::time::Instant;

use thiserror::Error;

/// Why a process could not be sampled.
#[derive(Debug, Error)]
pub enum ProcError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unexpected format of {0}")]
    Format(PathBuf),
}

/// One look at a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// When it was taken.
    pub at: Instant,
    /// User + system CPU time so far, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size.
    pub rss_kb: u64,
    /// Threads.
    pub threads: u64,
    /// Open file descriptors.
    pub fds: u64,
}

/// `utime + stime` (fields 14 and 15) of a `/proc/PID/stat` line. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its last `)`.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The value of a `Key:   123 kB` (or plain number) line of `/proc/PID/status`.
pub fn status_value(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// The one CPU a process is pinned to (`taskset -c N`), from `Cpus_allowed_list` of its status.
pub fn pinned_cpu(pid: u32) -> Option<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
        .trim();
    list.parse().ok()
}

/// Busy ticks (everything but idle and iowait) of `cpu` in a `/proc/stat` text.
pub fn cpu_busy_ticks(stat: &str, cpu: usize) -> Option<u64> {
    let prefix = format!("cpu{cpu} ");
    let line = stat.lines().find(|l| l.starts_with(&prefix))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    Some(total - idle)
}

/// Busy ticks of `cpu` now.
pub fn sample_cpu_busy(cpu: usize) -> Option<u64> {
    cpu_busy_ticks(&std::fs::read_to_string("/proc/stat").ok()?, cpu)
}

/// Clock ticks per second of `/proc/PID/stat` times.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// CPU time between two samples as a percentage of one core.
pub fn cpu_percent(from: &ProcSample, to: &ProcSample) -> f64 {
    let wall = to.at.duration_since(from.at).as_secs_f64();
    if wall <= 0.0 {
        return 0.0;
    }
    cpu_seconds(from, to) / wall * 100.0
}

/// CPU seconds spent between two samples.
pub fn cpu_seconds(from: &ProcSample, to: &ProcSample) -> f64 {
    to.cpu_ticks.saturating_sub(from.cpu_ticks) as f64 / ticks_per_second() as f64
}

/// Samples process `pid` now.
pub fn sample(pid: u32) -> Result<ProcSample, ProcError> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| ProcError::Read { path, source })
    };
    let at = Instant::now();
    let stat = read("stat")?;
    let status = read("status")?;
    let cpu_ticks = stat_cpu_ticks(&stat).ok_or_else(|| ProcError::Format(dir.join("stat")))?;
    let rss_kb =
        status_value(&status, "VmRSS").ok_or_else(|| ProcError::Format(dir.join("status")))?;
    let threads = status_value(&status, "Threads").unwrap_or(0);
    let fds = std::fs::read_dir(dir.join("fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Ok(ProcSample {
        at,
        cpu_ticks,
        rss_kb,
        threads,
        fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_counted_after_a_command_name_with_spaces_and_parens() {
        let stat =
            "4242 (srbridge (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(stat_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn truncated_or_garbled_stat_lines_give_none() {
        assert_eq!(stat_cpu_ticks("4242 (srbridge) S 1 2"), None);
        assert_eq!(stat_cpu_ticks("no parenthesis at all"), None);
        assert_eq!(stat_cpu_ticks("1 (a) S 1 1 1 0 -1 0 0 0 0 0 x 2 0"), None);
    }

    #[test]
    fn status_values_are_read_by_exact_key() {
        let status = "Name:\tsrbridge\nVmRSSMax:\t1 kB\nVmRSS:\t   12345 kB\nThreads:\t9\n";
        assert_eq!(status_value(status, "VmRSS"), Some(12345));
        assert_eq!(status_value(status, "Threads"), Some(9));
        assert_eq!(status_value(status, "VmSwap"), None);
    }

    #[test]
    fn busy_ticks_of_one_cpu_leave_out_idle_and_iowait() {
        let stat =
            "cpu  10 0 10 100 5 0 0 0 0 0\ncpu0 1 0 1 50 2 0 0 0 0 0\ncpu1 7 1 2 40 3 1 1 0 0 0\n";
        assert_eq!(cpu_busy_ticks(stat, 1), Some(12));
        assert_eq!(cpu_busy_ticks(stat, 0), Some(2));
        assert_eq!(cpu_busy_ticks(stat, 2), None);
        assert_eq!(cpu_busy_ticks("cpu1 7 x 2 40", 1), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss_kb > 0 && s.threads > 0 && s.fds > 0, "{s:?}");
    }
}
