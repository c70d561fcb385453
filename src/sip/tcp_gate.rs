//! Bookkeeping of the SIP TCP connections others open to us (sans-IO, fed events and time): a
//! cap per source IP, and a deadline for the first complete message so a silent connect cannot
//! hold a socket for the whole idle timeout (the idle timeout itself is rsipstack's, set from
//! `[sip] tcp_idle_timeout`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::ops::conn_gate::PerIpCount;

/// Connections accepted from peers, by remote address.
#[derive(Debug)]
pub(crate) struct TcpGate {
    first_message_timeout: Duration,
    per_ip: PerIpCount,
    /// Open connections; `Some(deadline)` until their first complete message.
    open: HashMap<SocketAddr, Option<Instant>>,
}

impl TcpGate {
    pub(crate) fn new(max_per_ip: usize, first_message_timeout: Duration) -> TcpGate {
        TcpGate {
            first_message_timeout,
            per_ip: PerIpCount::new(u32::try_from(max_per_ip.max(1)).unwrap_or(u32::MAX)),
            open: HashMap::new(),
        }
    }

    /// A connection from `remote` was accepted at `now`: whether it may stay (else close it).
    pub(crate) fn on_accept(&mut self, remote: SocketAddr, now: Instant) -> bool {
        if self.open.contains_key(&remote) || !self.per_ip.try_add(remote.ip()) {
            return false;
        }
        self.open
            .insert(remote, Some(now + self.first_message_timeout));
        true
    }

    /// A complete message came on the connection from `remote`: true for its first one.
    pub(crate) fn on_message(&mut self, remote: SocketAddr) -> bool {
        match self.open.get_mut(&remote) {
            Some(deadline @ Some(_)) => {
                *deadline = None;
                true
            }
            _ => false,
        }
    }

    /// The connection from `remote` is gone (ours or not: others are ignored).
    pub(crate) fn on_closed(&mut self, remote: SocketAddr) {
        if self.open.remove(&remote).is_some() {
            self.per_ip.remove(remote.ip());
        }
    }

    /// Connections whose first message is overdue at `now`: close them. Each is reported once.
    pub(crate) fn overdue(&mut self, now: Instant) -> Vec<SocketAddr> {
        let mut late = Vec::new();
        for (remote, deadline) in self.open.iter_mut() {
            if deadline.is_some_and(|d| d <= now) {
                *deadline = None;
                late.push(*remote);
            }
        }
        late
    }

    /// Open connections from `ip`.
    #[cfg(test)]
    fn count(&self, ip: std::net::IpAddr) -> usize {
        self.per_ip.count(ip) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_ip_gets_at_most_its_cap_and_closing_frees_a_place() {
        let mut gate = TcpGate::new(2, Duration::from_secs(10));
        let now = Instant::now();
        assert!(gate.on_accept(addr("192.0.2.1:1000"), now));
        assert!(gate.on_accept(addr("192.0.2.1:1001"), now));
        assert!(
            !gate.on_accept(addr("192.0.2.1:1002"), now),
            "third refused"
        );
        assert!(
            gate.on_accept(addr("192.0.2.2:1000"), now),
            "another IP has its own cap"
        );
        gate.on_closed(addr("192.0.2.1:1000"));
        assert_eq!(gate.count("192.0.2.1".parse().unwrap()), 1);
        assert!(gate.on_accept(addr("192.0.2.1:1002"), now));
        gate.on_closed(addr("198.51.100.1:5060")); // our own outbound connection: ignored
        gate.on_closed(addr("192.0.2.1:1002"));
        gate.on_closed(addr("192.0.2.1:1002")); // twice: counted once
        assert_eq!(gate.count("192.0.2.1".parse().unwrap()), 1);
    }

    #[test]
    fn silent_connections_are_overdue_once_and_talking_ones_never() {
        let mut gate = TcpGate::new(8, Duration::from_secs(10));
        let t0 = Instant::now();
        let silent = addr("192.0.2.1:1000");
        let talker = addr("192.0.2.1:1001");
        gate.on_accept(silent, t0);
        gate.on_accept(talker, t0);
        assert!(gate.on_message(talker), "first message");
        assert!(!gate.on_message(talker), "only the first counts");
        assert!(gate.overdue(t0 + Duration::from_secs(9)).is_empty());
        assert_eq!(gate.overdue(t0 + Duration::from_secs(10)), vec![silent]);
        assert!(
            gate.overdue(t0 + Duration::from_secs(60)).is_empty(),
            "reported once"
        );
        assert_eq!(
            gate.count("192.0.2.1".parse().unwrap()),
            2,
            "still counted until it is really closed"
        );
        gate.on_closed(silent);
        assert_eq!(gate.count("192.0.2.1".parse().unwrap()), 1);
    }
}
