//! Gives freed heap memory back to the system after bursts.
//!
//! glibc's malloc keeps what a burst freed (a flood of INVITEs, thousands of short-lived
//! WebSockets) in its per-thread arenas: RSS stayed at its peak for good. `malloc_trim(0)` on
//! a timer returns the free pages of every arena; it costs a walk of the free lists (well under
//! a millisecond at these heap sizes) and nothing on the media path.

use std::time::Duration;

/// How often freed memory is handed back.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Returns free heap pages to the OS now; whether any were released.
pub fn trim_now() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks and releases the allocator's own free memory.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Trims every [`TRIM_EVERY`] until the runtime stops.
pub async fn trim_periodically() {
    let mut interval = tokio::time::interval(TRIM_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        // Off the async workers: a trim of a large heap must not delay a frame.
        let _ = tokio::task::spawn_blocking(trim_now).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn a_freed_burst_is_returned() {
        fn rss_kb() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap()
        }
        // Many small blocks (below the mmap threshold), touched, then all freed but the last,
        // which keeps the heap top from shrinking on its own.
        let blocks: Vec<Vec<u8>> = (0..40_000).map(|i| vec![i as u8; 2048]).collect();
        let keep = vec![1u8; 2048];
        let full = rss_kb();
        drop(blocks);
        trim_now();
        let trimmed = rss_kb();
        drop(keep);
        // Other test threads allocate too: demand only half of the ~80 MB back.
        assert!(
            trimmed + 40 * 1024 < full,
            "RSS {full} kB with the burst, {trimmed} kB after trim"
        );
    }
}
