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

/// The counts and limits.
#[derive(Debug)]
pub struct ConnGate {
    max_per_ip: u32,
    fd_limit: u64,
    fd_reserve: u64,
    per_ip: HashMap<IpAddr, u32>,
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
            max_per_ip,
            fd_limit,
            fd_reserve,
            per_ip: HashMap::new(),
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
        let count = self.per_ip.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            return Err(Refusal::PerIp(self.max_per_ip));
        }
        *count += 1;
        self.open += 1;
        Ok(())
    }

    /// A connection admitted from `ip` closed.
    pub fn release(&mut self, ip: IpAddr) {
        if let Some(count) = self.per_ip.get_mut(&ip) {
            *count -= 1;
            self.open -= 1;
            if *count == 0 {
                self.per_ip.remove(&ip);
            }
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
