//! Who may open an HTTP/WebSocket connection: at most `max_per_ip` at once from one source
//! address, and none when file descriptors run low, so idle or malicious TCP never takes the
//! descriptors that calls need for their RTP and WebRTC sockets ("Too many open files").
//!
//! Sans-IO: fed the peer address and how many descriptors are open, it says admit or refuse and
//! counts; the accept loop ([`super::serve`]) closes refused sockets at once.

use std::collections::HashMap;
use std::net::IpAddr;

/// Descriptors kept for media by default: a quarter of the limit, at least this many.
pub const MIN_FD_RESERVE: u64 = 64;

/// Why a connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The source address already holds `max_per_ip` connections.
    #[error("source address already holds {0} connections")]
    PerIp(u32),
    /// Open descriptors reached the limit minus the media reserve.
    #[error("{open} of {limit} file descriptors open, {reserve} kept for media")]
    FdBudget {
        /// Descriptors open when the connection arrived.
        open: u64,
        /// `RLIMIT_NOFILE` (soft).
        limit: u64,
        /// Kept for calls.
        reserve: u64,
    },
}

/// Connections open per source address, capped: the one count behind the HTTP gate here and
/// the SIP TCP gate (`sip::tcp_gate`).
#[derive(Debug)]
pub struct PerIpCount {
    max: u32,
    counts: HashMap<IpAddr, u32>,
}

impl PerIpCount {
    /// At most `max` open connections per address.
    pub fn new(max: u32) -> PerIpCount {
        PerIpCount {
            max,
            counts: HashMap::new(),
        }
    }

    /// The cap.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// Counts one more connection from `ip`; false (nothing counted) at the cap.
    pub fn try_add(&mut self, ip: IpAddr) -> bool {
        let count = self.counts.entry(ip).or_insert(0);
        if *count >= self.max {
            return false;
        }
        *count += 1;
        true
    }

    /// One connection from `ip` closed; false when none was counted.
    pub fn remove(&mut self, ip: IpAddr) -> bool {
        let Some(count) = self.counts.get_mut(&ip) else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            self.counts.remove(&ip);
        }
        true
    }

    /// Open connections from `ip`.
    pub fn count(&self, ip: IpAddr) -> u32 {
        self.counts.get(&ip).copied().unwrap_or(0)
    }

    /// No address holds a connection (and none is remembered).
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

/// The counts and limits.
#[derive(Debug)]
pub struct ConnGate {
    fd_limit: u64,
    fd_reserve: u64,
    per_ip: PerIpCount,
    open: usize,
}

/// The default media reserve for a descriptor limit: a quarter, at least [`MIN_FD_RESERVE`].
pub fn default_fd_reserve(fd_limit: u64) -> u64 {
    (fd_limit / 4).max(MIN_FD_RESERVE)
}

impl ConnGate {
    /// A gate for a process allowed `fd_limit` descriptors, keeping `fd_reserve` for media.
    pub fn new(max_per_ip: u32, fd_limit: u64, fd_reserve: u64) -> ConnGate {
        ConnGate {
            fd_limit,
            fd_reserve,
            per_ip: PerIpCount::new(max_per_ip),
            open: 0,
        }
    }

    /// Whether the descriptor count must be measured for a connection whose descriptor number
    /// is `fd`: descriptors are allocated lowest-first, so `fd + 1` are open at least, and only
    /// past half the budget is an exact count worth its cost.
    pub fn needs_fd_count(&self, fd: u64) -> bool {
        fd + 1 >= self.fd_budget() / 2
    }

    fn fd_budget(&self) -> u64 {
        self.fd_limit.saturating_sub(self.fd_reserve)
    }

    /// A connection from `ip` arrived while `open_fds` descriptors (its own included) are open.
    /// On `Ok` it is counted until [`ConnGate::release`].
    pub fn admit(&mut self, ip: IpAddr, open_fds: u64) -> Result<(), Refusal> {
        if open_fds > self.fd_budget() {
            return Err(Refusal::FdBudget {
                open: open_fds,
                limit: self.fd_limit,
                reserve: self.fd_reserve,
            });
        }
        if !self.per_ip.try_add(ip) {
            return Err(Refusal::PerIp(self.per_ip.max()));
        }
        self.open += 1;
        Ok(())
    }

    /// A connection admitted from `ip` closed.
    pub fn release(&mut self, ip: IpAddr) {
        if self.per_ip.remove(ip) {
            self.open -= 1;
        }
    }

    /// Connections open now (admitted and not released).
    pub fn open_connections(&self) -> usize {
        self.open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn per_ip_cap_counts_and_releases() {
        let mut gate = ConnGate::new(2, 10_000, 100);
        assert_eq!(gate.admit(ip(1), 10), Ok(()));
        assert_eq!(gate.admit(ip(1), 11), Ok(()));
        assert_eq!(gate.admit(ip(1), 12), Err(Refusal::PerIp(2)));
        assert_eq!(
            gate.admit(ip(2), 12),
            Ok(()),
            "another address is not affected"
        );
        gate.release(ip(1));
        assert_eq!(gate.admit(ip(1), 12), Ok(()));
        assert_eq!(gate.open_connections(), 3);
        gate.release(ip(1));
        gate.release(ip(1));
        gate.release(ip(2));
        gate.release(ip(9)); // never admitted: ignored
        assert_eq!(gate.open_connections(), 0);
        assert!(gate.per_ip.is_empty(), "no memory kept for gone addresses");
    }

    #[test]
    fn fd_budget_keeps_the_media_reserve() {
        let mut gate = ConnGate::new(1000, 256, 64);
        assert_eq!(gate.admit(ip(1), 192), Ok(()));
        assert_eq!(
            gate.admit(ip(1), 193),
            Err(Refusal::FdBudget {
                open: 193,
                limit: 256,
                reserve: 64
            })
        );
        assert_eq!(gate.open_connections(), 1, "a refusal is not counted");
    }

    #[test]
    fn exact_count_only_past_half_the_budget() {
        let gate = ConnGate::new(10, 1024, 256);
        assert!(!gate.needs_fd_count(100));
        assert!(gate.needs_fd_count(383));
        assert!(gate.needs_fd_count(5000));
    }

    #[test]
    fn default_reserve_is_a_quarter_with_a_floor() {
        assert_eq!(default_fd_reserve(1024), 256);
        assert_eq!(default_fd_reserve(100), MIN_FD_RESERVE);
        assert_eq!(default_fd_reserve(1 << 20), 1 << 18);
    }

    #[test]
    fn reserve_larger_than_the_limit_refuses_everything() {
        let mut gate = ConnGate::new(10, 50, 64);
        assert!(matches!(
            gate.admit(ip(1), 1),
            Err(Refusal::FdBudget { .. })
        ));
    }
}
