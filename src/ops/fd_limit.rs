//! The process's file-descriptor limit: raised to the hard limit at start (a shell's 1024 is
//! far too few for a media server), and the count of open descriptors for [`super::conn_gate`].

use std::io;

/// `RLIMIT_NOFILE` after raising the soft limit to the hard one: `(before, now)`. When raising
/// fails (a container forbids it) the current soft limit is returned as both.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok((before, raised.rlim_cur));
        }
    }
    Ok((before, before))
}

/// The soft `RLIMIT_NOFILE` now (`u64::MAX` when unlimited or unreadable).
pub fn nofile_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return u64::MAX;
    }
    limit.rlim_cur
}

/// Descriptors open in this process (entries of `/proc/self/fd`, less the one reading it);
/// `None` where `/proc` is not mounted.
pub fn open_fds() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    Some((entries.count() as u64).saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_fds_counts_open_descriptors() {
        let files: Vec<_> = (0..50)
            .map(|_| std::fs::File::open("/proc/self/stat").unwrap())
            .collect();
        // Other test threads open and close files too: only a lower bound holds.
        let open = open_fds().unwrap();
        assert!(open >= 50 + 3, "{open} with 50 files and stdio open");
        drop(files);
    }

    #[test]
    fn raising_never_lowers_the_limit() {
        let (before, now) = raise_nofile_limit().unwrap();
        assert!(now >= before);
        assert_eq!(nofile_limit(), now);
    }
}
