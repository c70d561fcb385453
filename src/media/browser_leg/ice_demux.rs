//! Every WebRTC call on one UDP port (`[media] webrtc_single_port`), sans-IO: which call a
//! datagram belongs to.
//!
//! As Janus, mediasoup and str0m do it: a call is registered under its local ICE ufrag and
//! password; the browser's first connectivity check names that ufrag in its USERNAME and, once
//! its MESSAGE-INTEGRITY verifies under the password, binds its source address to the call.
//! From then on every datagram from that address (DTLS, SRTP, STUN) goes to the call by one
//! hash lookup. An address moves to another call only after a valid, authenticated check for
//! that call, so a forged or replayed packet cannot steal a call's media path. Whatever is
//! dropped is counted, never logged per packet.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;

use super::core::IceCredentials;
use super::stun::binding_request;
use crate::media::demux::{classify, DatagramKind};

/// Why a call could not be registered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IceDemuxError {
    /// Another call already uses this ufrag (credentials are random: make new ones).
    #[error("ICE ufrag {0} is already registered")]
    DuplicateUfrag(String),
    /// The call is already registered.
    #[error("the call is already registered")]
    DuplicateCall,
}

/// Datagrams dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IceDemuxCounters {
    /// Binding requests naming a ufrag no call has.
    pub unknown_ufrag: u64,
    /// Binding requests for a known ufrag whose MESSAGE-INTEGRITY is missing or wrong.
    pub bad_integrity: u64,
    /// Anything else from an address no check has bound yet.
    pub unknown_source: u64,
    /// Addresses that moved from one call to another after a valid check (not a drop).
    pub moved: u64,
}

#[derive(Debug)]
struct Call {
    credentials: IceCredentials,
    addrs: Vec<SocketAddr>,
}

/// The routing table of one shared port; `K` is the caller's call key.
#[derive(Debug)]
pub struct IceDemux<K> {
    by_ufrag: HashMap<String, K>,
    by_addr: HashMap<SocketAddr, K>,
    calls: HashMap<K, Call>,
    counters: IceDemuxCounters,
}

impl<K> Default for IceDemux<K> {
    fn default() -> Self {
        IceDemux {
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            calls: HashMap::new(),
            counters: IceDemuxCounters::default(),
        }
    }
}

impl<K: Copy + Eq + Hash> IceDemux<K> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes checks naming `credentials.ufrag` to `call` from now on.
    pub fn register(&mut self, call: K, credentials: &IceCredentials) -> Result<(), IceDemuxError> {
        if self.calls.contains_key(&call) {
            return Err(IceDemuxError::DuplicateCall);
        }
        if self.by_ufrag.contains_key(&credentials.ufrag) {
            return Err(IceDemuxError::DuplicateUfrag(credentials.ufrag.clone()));
        }
        self.by_ufrag.insert(credentials.ufrag.clone(), call);
        self.calls.insert(
            call,
            Call {
                credentials: credentials.clone(),
                addrs: Vec::new(),
            },
        );
        Ok(())
    }

    /// Forgets `call`, its ufrag and every address bound to it.
    pub fn unregister(&mut self, call: K) {
        if let Some(entry) = self.calls.remove(&call) {
            self.by_ufrag.remove(&entry.credentials.ufrag);
            for addr in entry.addrs {
                if self.by_addr.get(&addr) == Some(&call) {
                    self.by_addr.remove(&addr);
                }
            }
        }
    }

    /// The call `datagram` from `from` belongs to, or `None` (dropped and counted).
    pub fn route(&mut self, from: SocketAddr, datagram: &[u8]) -> Option<K> {
        if classify(datagram) == DatagramKind::Stun {
            if let Some(request) = binding_request(datagram) {
                return self.route_check(from, request);
            }
        }
        match self.by_addr.get(&from) {
            Some(call) => Some(*call),
            None => {
                self.counters.unknown_source += 1;
                None
            }
        }
    }

    fn route_check(
        &mut self,
        from: SocketAddr,
        request: super::stun::BindingRequest<'_>,
    ) -> Option<K> {
        let Some(&call) = self.by_ufrag.get(request.local_ufrag) else {
            self.counters.unknown_ufrag += 1;
            return None;
        };
        let Some(entry) = self.calls.get_mut(&call) else {
            self.counters.unknown_ufrag += 1;
            return None;
        };
        if !request.verify(&entry.credentials.pwd) {
            self.counters.bad_integrity += 1;
            return None;
        }
        match self.by_addr.insert(from, call) {
            Some(previous) if previous == call => {}
            previous => {
                entry.addrs.push(from);
                if let Some(old) = previous.and_then(|p| self.calls.get_mut(&p)) {
                    old.addrs.retain(|a| *a != from);
                    self.counters.moved += 1;
                }
            }
        }
        Some(call)
    }

    /// Calls registered.
    pub fn calls(&self) -> usize {
        self.calls.len()
    }

    /// Addresses bound to calls.
    pub fn addresses(&self) -> usize {
        self.by_addr.len()
    }

    /// What was dropped so far.
    pub fn counters(&self) -> IceDemuxCounters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::super::stun::build_binding_request;
    use super::*;

    fn creds(ufrag: &str) -> IceCredentials {
        IceCredentials {
            ufrag: ufrag.to_owned(),
            pwd: format!("{ufrag}-password-0123456789"),
        }
    }

    fn check(to: &IceCredentials) -> Vec<u8> {
        build_binding_request(&format!("{}:browser", to.ufrag), &to.pwd, [9; 12])
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    const SRTP: [u8; 12] = [0x80, 111, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4];
    const DTLS: [u8; 13] = [22, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    #[test]
    fn a_valid_check_binds_its_address_and_media_follows() {
        let (a, b) = (creds("aaaa"), creds("bbbb"));
        let mut demux = IceDemux::new();
        demux.register(1, &a).unwrap();
        demux.register(2, &b).unwrap();
        assert_eq!(
            demux.route(addr(5000), &SRTP),
            None,
            "nothing before a check"
        );
        assert_eq!(demux.route(addr(5000), &check(&a)), Some(1));
        assert_eq!(demux.route(addr(6000), &check(&b)), Some(2));
        assert_eq!(demux.route(addr(5000), &SRTP), Some(1));
        assert_eq!(demux.route(addr(5000), &DTLS), Some(1));
        assert_eq!(demux.route(addr(6000), &SRTP), Some(2));
        assert_eq!(demux.counters().unknown_source, 1);
        assert_eq!(demux.addresses(), 2);
    }

    #[test]
    fn an_unknown_ufrag_is_dropped_and_counted() {
        let mut demux = IceDemux::new();
        demux.register(1, &creds("aaaa")).unwrap();
        assert_eq!(demux.route(addr(5000), &check(&creds("zzzz"))), None);
        assert_eq!(demux.route(addr(5000), &SRTP), None, "no address was bound");
        let c = demux.counters();
        assert_eq!((c.unknown_ufrag, c.unknown_source), (1, 1));
    }

    #[test]
    fn a_check_with_a_wrong_password_binds_nothing() {
        let a = creds("aaaa");
        let mut demux = IceDemux::new();
        demux.register(1, &a).unwrap();
        let forged = build_binding_request("aaaa:browser", "guessed-password-012345", [1; 12]);
        assert_eq!(demux.route(addr(5000), &forged), None);
        let mut unsigned = check(&a);
        unsigned.truncate(unsigned.len() - 24); // drop MESSAGE-INTEGRITY
        let len = (unsigned.len() - 20) as u16;
        unsigned[2..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(demux.route(addr(5000), &unsigned), None);
        assert_eq!(demux.route(addr(5000), &SRTP), None);
        assert_eq!(demux.counters().bad_integrity, 2);
    }

    #[test]
    fn an_address_moves_only_after_a_valid_check_for_the_other_call() {
        let (a, b) = (creds("aaaa"), creds("bbbb"));
        let mut demux = IceDemux::new();
        demux.register(1, &a).unwrap();
        demux.register(2, &b).unwrap();
        assert_eq!(demux.route(addr(5000), &check(&a)), Some(1));
        // A forged check for call 2 from call 1's address: refused, the address stays.
        let forged = build_binding_request("bbbb:x", "wrong-password-0123456789", [2; 12]);
        assert_eq!(demux.route(addr(5000), &forged), None);
        assert_eq!(demux.route(addr(5000), &SRTP), Some(1));
        // A valid one (a NAT handed the address to call 2's browser): it moves.
        assert_eq!(demux.route(addr(5000), &check(&b)), Some(2));
        assert_eq!(demux.route(addr(5000), &SRTP), Some(2));
        assert_eq!(demux.counters().moved, 1);
        // Call 1 ending does not take call 2's address with it.
        demux.unregister(1);
        assert_eq!(demux.route(addr(5000), &SRTP), Some(2));
    }

    #[test]
    fn a_browser_changing_address_is_followed_after_its_check() {
        let a = creds("aaaa");
        let mut demux = IceDemux::new();
        demux.register(1, &a).unwrap();
        demux.route(addr(5000), &check(&a));
        assert_eq!(
            demux.route(addr(5001), &SRTP),
            None,
            "new address, no check yet"
        );
        assert_eq!(demux.route(addr(5001), &check(&a)), Some(1));
        assert_eq!(demux.route(addr(5001), &SRTP), Some(1));
        assert_eq!(
            demux.route(addr(5000), &SRTP),
            Some(1),
            "consent still holds there"
        );
    }

    #[test]
    fn unregistering_forgets_the_ufrag_and_the_addresses() {
        let a = creds("aaaa");
        let mut demux = IceDemux::new();
        demux.register(1, &a).unwrap();
        demux.route(addr(5000), &check(&a));
        demux.unregister(1);
        assert_eq!(demux.route(addr(5000), &SRTP), None);
        assert_eq!(demux.route(addr(5000), &check(&a)), None);
        assert_eq!((demux.calls(), demux.addresses()), (0, 0));
        demux.register(1, &a).unwrap();
    }

    #[test]
    fn duplicate_registrations_are_refused() {
        let mut demux = IceDemux::new();
        demux.register(1, &creds("aaaa")).unwrap();
        assert_eq!(
            demux.register(2, &creds("aaaa")),
            Err(IceDemuxError::DuplicateUfrag("aaaa".to_owned()))
        );
        assert_eq!(
            demux.register(1, &creds("bbbb")),
            Err(IceDemuxError::DuplicateCall)
        );
    }

    #[test]
    fn garbage_never_panics_and_is_counted() {
        let mut demux = IceDemux::new();
        demux.register(1, &creds("aaaa")).unwrap();
        for first in 0u8..=255 {
            for len in [0usize, 1, 4, 19, 20, 21, 64] {
                let mut d = vec![0u8; len];
                if let Some(b) = d.first_mut() {
                    *b = first;
                }
                assert_eq!(demux.route(addr(7000), &d), None);
            }
        }
        let c = demux.counters();
        assert_eq!(
            c.unknown_source + c.unknown_ufrag + c.bad_integrity,
            256 * 7
        );
    }
}
