//! The configured PBXs and their health (sans-IO): which are up (OPTIONS results and transport
//! errors, counted as Kamailio's dispatcher and FreeSWITCH's gateway pings do), which one a new
//! INVITE goes to (priority, then weight among equals), which ones hold the registration, and
//! when a failed INVITE may be retried on the next PBX. Fed results and time; no sockets.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::status::PbxInternal;
use crate::config::RegisterMode;

/// How one OPTIONS ping ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PingResult {
    /// A final response `code` after `rtt`.
    Answered { code: u16, rtt: Duration },
    /// Nothing in time.
    NoAnswer,
    /// Could not send.
    Transport(String),
}

/// What changed for a PBX with a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    /// Same as before (or the first Up).
    None,
    /// Was down, counts as up again: it may have restarted and forgotten our registration.
    CameBack,
    /// Counts as down from now on.
    WentDown,
}

/// One PBX: where it is, its place in the choice, and its health.
#[derive(Debug, Clone)]
pub(crate) struct PbxHealth {
    pub addr: SocketAddr,
    pub weight: u32,
    pub priority: u32,
    state: PbxInternal,
    /// Failures in a row while not down.
    failures: u32,
    /// Good answers in a row while down.
    successes: u32,
}

impl PbxHealth {
    /// Up, down or not yet known (with the last RTT or error).
    pub(crate) fn state(&self) -> &PbxInternal {
        &self.state
    }

    /// Not known to be down: a new call may go there.
    pub(crate) fn usable(&self) -> bool {
        !matches!(self.state, PbxInternal::Down { .. })
    }
}

/// Every configured PBX, in file order (indexes are stable for the bridge's life).
#[derive(Debug, Clone)]
pub(crate) struct PbxSet {
    pbxs: Vec<PbxHealth>,
    down_after: u32,
    up_after: u32,
}

/// Why an INVITE to one PBX failed, as far as failover cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InviteFailure {
    /// A final response (or 408 for a timeout).
    Status(u16),
    /// The request could not be sent or the connection failed.
    Transport,
}

impl PbxSet {
    /// PBXs `(addr, weight, priority)` in file order; down after `down_after` failed pings in a
    /// row, up again after `up_after` good ones (both at least 1).
    pub(crate) fn new(pbxs: Vec<(SocketAddr, u32, u32)>, down_after: u32, up_after: u32) -> Self {
        PbxSet {
            pbxs: pbxs
                .into_iter()
                .map(|(addr, weight, priority)| PbxHealth {
                    addr,
                    weight: weight.max(1),
                    priority,
                    state: PbxInternal::Unknown,
                    failures: 0,
                    successes: 0,
                })
                .collect(),
            down_after: down_after.max(1),
            up_after: up_after.max(1),
        }
    }

    pub(crate) fn get(&self, index: usize) -> Option<&PbxHealth> {
        self.pbxs.get(index)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &PbxHealth> {
        self.pbxs.iter()
    }

    /// The index of the PBX at `addr`, if it is one of ours.
    pub(crate) fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        self.pbxs.iter().position(|p| p.addr == addr)
    }

    /// An OPTIONS result for PBX `index`. Any final answer proves it runs except 408/503 (a
    /// proxy saying the PBX behind it is gone); a transport error counts as down at once.
    pub(crate) fn on_ping(
        &mut self,
        index: usize,
        result: &PingResult,
        now: Instant,
    ) -> Transition {
        let down_after = self.down_after;
        let up_after = self.up_after;
        let Some(pbx) = self.pbxs.get_mut(index) else {
            return Transition::None;
        };
        let error = match result {
            PingResult::Answered { code, rtt } if *code != 408 && *code != 503 => {
                pbx.failures = 0;
                let rtt_ms = rtt.as_millis() as u64;
                return match &pbx.state {
                    PbxInternal::Down { .. } => {
                        pbx.successes += 1;
                        if pbx.successes >= up_after {
                            pbx.successes = 0;
                            pbx.state = PbxInternal::Up { rtt_ms };
                            Transition::CameBack
                        } else {
                            Transition::None
                        }
                    }
                    _ => {
                        pbx.state = PbxInternal::Up { rtt_ms };
                        Transition::None
                    }
                };
            }
            PingResult::Answered { code, .. } => format!("OPTIONS answered {code}"),
            PingResult::NoAnswer => "no answer to OPTIONS".to_string(),
            PingResult::Transport(e) => format!("cannot send OPTIONS: {e}"),
        };
        let at_once = matches!(result, PingResult::Transport(_));
        pbx.fail(error, at_once, down_after, now)
    }

    /// A call to PBX `index` failed on the transport (connection refused or lost): down at once,
    /// as a failed ping would not say more.
    pub(crate) fn on_transport_error(
        &mut self,
        index: usize,
        error: &str,
        now: Instant,
    ) -> Transition {
        let down_after = self.down_after;
        match self.pbxs.get_mut(index) {
            Some(pbx) => pbx.fail(format!("call failed: {error}"), true, down_after, now),
            None => Transition::None,
        }
    }

    /// The PBXs a new INVITE tries, in order: the usable ones by priority (lower first), each
    /// priority's PBXs in a weighted random order (`random(n)` returns a number below `n`). When
    /// every PBX is down they are all tried, by priority: stale health must not stop every call.
    pub(crate) fn call_order(&self, mut random: impl FnMut(u32) -> u32) -> Vec<usize> {
        let mut usable: Vec<usize> = (0..self.pbxs.len())
            .filter(|&i| self.pbxs[i].usable())
            .collect();
        if usable.is_empty() {
            usable = (0..self.pbxs.len()).collect();
        }
        let mut priorities: Vec<u32> = usable.iter().map(|&i| self.pbxs[i].priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        let mut order = Vec::with_capacity(usable.len());
        for priority in priorities {
            let mut group: Vec<usize> = usable
                .iter()
                .copied()
                .filter(|&i| self.pbxs[i].priority == priority)
                .collect();
            // weighted shuffle: draw one by weight, then the next among the rest
            while !group.is_empty() {
                let total: u32 = group.iter().map(|&i| self.pbxs[i].weight).sum();
                let mut ticket = random(total.max(1)).min(total.saturating_sub(1));
                let mut chosen = 0;
                for (slot, &i) in group.iter().enumerate() {
                    if ticket < self.pbxs[i].weight {
                        chosen = slot;
                        break;
                    }
                    ticket -= self.pbxs[i].weight;
                }
                order.push(group.remove(chosen));
            }
        }
        order
    }

    /// Whether PBX `index` should hold the proxy account's registration now: every PBX in `All`
    /// mode; in `ActiveBackup` only the first usable PBX by priority then file order (the first
    /// by priority when none is usable).
    pub(crate) fn should_register(&self, mode: RegisterMode, index: usize) -> bool {
        match mode {
            RegisterMode::All => index < self.pbxs.len(),
            RegisterMode::ActiveBackup => self.active_index() == Some(index),
        }
    }

    /// The PBX that holds the registration in `ActiveBackup` mode.
    pub(crate) fn active_index(&self) -> Option<usize> {
        let best = |candidates: &mut dyn Iterator<Item = usize>| {
            candidates.min_by_key(|&i| (self.pbxs[i].priority, i))
        };
        best(&mut (0..self.pbxs.len()).filter(|&i| self.pbxs[i].usable()))
            .or_else(|| best(&mut (0..self.pbxs.len())))
    }
}

impl PbxHealth {
    fn fail(&mut self, error: String, at_once: bool, down_after: u32, now: Instant) -> Transition {
        self.successes = 0;
        match &mut self.state {
            PbxInternal::Down { error: last, .. } => {
                *last = error;
                Transition::None
            }
            _ => {
                self.failures += 1;
                if at_once || self.failures >= down_after {
                    self.failures = 0;
                    self.state = PbxInternal::Down { since: now, error };
                    Transition::WentDown
                } else {
                    Transition::None
                }
            }
        }
    }
}

/// Whether an outgoing call that failed on one PBX may be tried on the next: only for 503, 408
/// or a transport error, and never once the callee side has said anything beyond `100 Trying`
/// (a 180/183 means a phone may have rung: a second INVITE could ring a second one). `100
/// Trying` is hop-by-hop (the PBX took the request, nothing rang), so a 503 after it still fails
/// over, as in Kamailio's dispatcher failure route.
pub(crate) fn may_fail_over(failure: InviteFailure, provisional_seen: bool) -> bool {
    if provisional_seen {
        return false;
    }
    match failure {
        InviteFailure::Transport => true,
        InviteFailure::Status(code) => code == 503 || code == 408,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn ok() -> PingResult {
        PingResult::Answered {
            code: 200,
            rtt: Duration::from_millis(12),
        }
    }

    fn two(down_after: u32, up_after: u32) -> PbxSet {
        PbxSet::new(
            vec![(addr(5060), 1, 1), (addr(5070), 1, 1)],
            down_after,
            up_after,
        )
    }

    #[test]
    fn answers_mean_up_silence_means_down_and_recovery_is_reported() {
        let mut set = two(1, 1);
        let t0 = Instant::now();
        assert!(matches!(set.get(0).unwrap().state(), PbxInternal::Unknown));
        assert_eq!(set.on_ping(0, &ok(), t0), Transition::None);
        assert!(matches!(
            set.get(0).unwrap().state(),
            PbxInternal::Up { rtt_ms: 12 }
        ));
        assert_eq!(
            set.on_ping(0, &PingResult::NoAnswer, t0),
            Transition::WentDown
        );
        let later = t0 + Duration::from_secs(5);
        assert_eq!(
            set.on_ping(0, &PingResult::Transport("refused".into()), later),
            Transition::None
        );
        match set.get(0).unwrap().state() {
            PbxInternal::Down { since, error } => {
                assert_eq!(*since, t0, "down since the first failure");
                assert!(error.contains("refused"), "{error}");
            }
            s => panic!("{s:?}"),
        }
        assert_eq!(set.on_ping(0, &ok(), later), Transition::CameBack);
        assert!(
            matches!(set.get(1).unwrap().state(), PbxInternal::Unknown),
            "the other PBX is untouched"
        );
    }

    #[test]
    fn any_final_answer_but_408_and_503_is_alive() {
        let mut set = two(1, 1);
        let now = Instant::now();
        let code = |c| PingResult::Answered {
            code: c,
            rtt: Duration::from_millis(1),
        };
        set.on_ping(0, &code(404), now);
        assert!(
            set.get(0).unwrap().usable(),
            "404 still proves the PBX runs"
        );
        assert_eq!(set.on_ping(0, &code(503), now), Transition::WentDown);
        set.on_ping(0, &code(407), now);
        set.on_ping(0, &code(408), now);
        assert!(!set.get(0).unwrap().usable());
    }

    #[test]
    fn down_after_n_failed_pings_and_up_after_m_good_ones() {
        let mut set = two(3, 2);
        let now = Instant::now();
        set.on_ping(0, &ok(), now);
        assert_eq!(set.on_ping(0, &PingResult::NoAnswer, now), Transition::None);
        assert_eq!(set.on_ping(0, &PingResult::NoAnswer, now), Transition::None);
        assert!(set.get(0).unwrap().usable(), "two misses are not three");
        set.on_ping(0, &ok(), now);
        assert_eq!(set.on_ping(0, &PingResult::NoAnswer, now), Transition::None);
        assert_eq!(set.on_ping(0, &PingResult::NoAnswer, now), Transition::None);
        assert!(
            set.get(0).unwrap().usable(),
            "a good answer resets the count"
        );
        assert_eq!(
            set.on_ping(0, &PingResult::NoAnswer, now),
            Transition::WentDown
        );
        assert_eq!(set.on_ping(0, &ok(), now), Transition::None);
        assert!(!set.get(0).unwrap().usable(), "one good answer is not two");
        assert_eq!(set.on_ping(0, &PingResult::NoAnswer, now), Transition::None);
        assert_eq!(set.on_ping(0, &ok(), now), Transition::None);
        assert_eq!(set.on_ping(0, &ok(), now), Transition::CameBack);
        assert!(set.get(0).unwrap().usable());
    }

    #[test]
    fn a_transport_error_is_down_at_once() {
        let mut set = two(3, 1);
        let now = Instant::now();
        assert_eq!(
            set.on_transport_error(1, "connection refused", now),
            Transition::WentDown
        );
        assert!(!set.get(1).unwrap().usable());
        assert_eq!(
            set.on_ping(0, &PingResult::Transport("unreachable".into()), now),
            Transition::WentDown
        );
        assert_eq!(
            set.on_transport_error(9, "x", now),
            Transition::None,
            "unknown index ignored"
        );
    }

    /// A fixed sequence of "random" draws.
    fn draws(values: &[u32]) -> impl FnMut(u32) -> u32 + '_ {
        let mut i = 0;
        move |n| {
            let v = values.get(i).copied().unwrap_or(0) % n;
            i += 1;
            v
        }
    }

    #[test]
    fn calls_go_by_priority_then_weight() {
        // 0: prio 1 weight 3; 1: prio 1 weight 1; 2: prio 2 (backup)
        let set = PbxSet::new(
            vec![(addr(1), 3, 1), (addr(2), 1, 1), (addr(3), 5, 2)],
            1,
            1,
        );
        assert_eq!(set.call_order(draws(&[0, 0, 0])), vec![0, 1, 2]);
        assert_eq!(set.call_order(draws(&[2, 0, 0])), vec![0, 1, 2]);
        assert_eq!(set.call_order(draws(&[3, 0, 0])), vec![1, 0, 2]);
        // over all tickets, PBX 0 is first 3 times out of 4
        let firsts: Vec<usize> = (0..4).map(|t| set.call_order(draws(&[t]))[0]).collect();
        assert_eq!(firsts.iter().filter(|&&i| i == 0).count(), 3);
        assert_eq!(firsts.iter().filter(|&&i| i == 1).count(), 1);
    }

    #[test]
    fn down_pbxs_are_skipped_unless_all_are_down() {
        let mut set = PbxSet::new(
            vec![(addr(1), 1, 1), (addr(2), 1, 1), (addr(3), 1, 2)],
            1,
            1,
        );
        let now = Instant::now();
        set.on_ping(0, &PingResult::NoAnswer, now);
        assert_eq!(set.call_order(draws(&[0, 0])), vec![1, 2]);
        set.on_ping(1, &PingResult::NoAnswer, now);
        assert_eq!(
            set.call_order(draws(&[0])),
            vec![2],
            "the backup takes over"
        );
        set.on_ping(2, &PingResult::NoAnswer, now);
        assert_eq!(
            set.call_order(draws(&[0, 0, 0])),
            vec![0, 1, 2],
            "all down: every PBX, by priority"
        );
        set.on_ping(1, &ok(), now);
        assert_eq!(set.call_order(draws(&[0])), vec![1]);
    }

    #[test]
    fn registration_goes_to_all_or_to_the_active_pbx() {
        let mut set = PbxSet::new(vec![(addr(1), 1, 2), (addr(2), 1, 1)], 1, 1);
        let now = Instant::now();
        assert!(set.should_register(RegisterMode::All, 0));
        assert!(set.should_register(RegisterMode::All, 1));
        assert!(!set.should_register(RegisterMode::All, 2));
        assert!(!set.should_register(RegisterMode::ActiveBackup, 0));
        assert!(
            set.should_register(RegisterMode::ActiveBackup, 1),
            "priority 1 first"
        );
        set.on_ping(1, &PingResult::NoAnswer, now);
        assert!(
            set.should_register(RegisterMode::ActiveBackup, 0),
            "backup takes it"
        );
        assert!(!set.should_register(RegisterMode::ActiveBackup, 1));
        set.on_ping(0, &PingResult::NoAnswer, now);
        assert_eq!(set.active_index(), Some(1), "all down: the preferred one");
        set.on_ping(1, &ok(), now);
        assert!(
            set.should_register(RegisterMode::ActiveBackup, 1),
            "back to the primary"
        );
    }

    #[test]
    fn failover_only_for_503_408_and_transport_errors_before_any_ringing() {
        assert!(may_fail_over(InviteFailure::Status(503), false));
        assert!(may_fail_over(InviteFailure::Status(408), false));
        assert!(may_fail_over(InviteFailure::Transport, false));
        for code in [404, 480, 486, 487, 500, 502, 603] {
            assert!(!may_fail_over(InviteFailure::Status(code), false), "{code}");
        }
        assert!(
            !may_fail_over(InviteFailure::Status(503), true),
            "never after a 1xx"
        );
        assert!(!may_fail_over(InviteFailure::Transport, true));
    }
}
