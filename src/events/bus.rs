//! The event bus: numbers each event, serializes it once ([`Published`]), keeps the last few for
//! `Last-Event-ID` resumption, and fans them out on a bounded tokio broadcast channel.
//!
//! Publishing takes a short `std` lock and never waits for a consumer: a consumer that falls more
//! than the channel's capacity behind gets [`Delivery::Lagged`] with the count it missed.
//!
//! The kept events' text lives in buffers allocated with the bus and reused. Kept events outlive
//! the calls around them: allocated one by one during a burst of calls, scattered among the
//! calls' short-lived memory, they kept the allocator from giving that memory back after the
//! burst (a 2000-call soak held 35 MB of RSS 90 s later, 20 MB when nothing was kept).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::broadcast;

use super::event::{Envelope, Event, Published};

/// Events kept for resumption, and the broadcast channel's capacity per consumer.
pub const DEFAULT_CAPACITY: usize = 1024;

/// Bytes reserved for each kept event's text: more than a call event with long names takes
/// (a longer one grows its buffer, which is then kept for the next).
const KEPT_TEXT: usize = 512;

/// Where events are published; a cheap `Clone` handle, one per bridge.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<BusInner>,
}

struct BusInner {
    history: Mutex<History>,
    sender: broadcast::Sender<Published>,
}

/// The kept events, oldest first: always `capacity` slots, those not used yet numbered 0.
struct History {
    next_id: u64,
    slots: VecDeque<Kept>,
}

struct Kept {
    /// The event's id; 0 for a slot not used yet (ids start at 1).
    id: u64,
    kind: &'static str,
    /// The envelope's JSON (serde_json writes UTF-8).
    json: Vec<u8>,
}

impl Kept {
    fn published(&self) -> Published {
        Published {
            id: self.id,
            kind: self.kind,
            json: Arc::from(String::from_utf8_lossy(&self.json).as_ref()),
        }
    }
}

impl History {
    /// Keeps `envelope` in the oldest slot (its buffer reused), now the newest; that slot
    /// (`None` only for a bus without slots, which `with_capacity` never makes).
    fn keep(&mut self, envelope: &Envelope) -> Option<&Kept> {
        self.slots.rotate_left(1);
        let slot = self.slots.back_mut()?;
        slot.id = envelope.id;
        slot.kind = envelope.event.kind();
        slot.json.clear();
        // Only strings, numbers and options, into a Vec: serialization cannot fail.
        let _ = serde_json::to_writer(&mut slot.json, envelope);
        Some(slot)
    }

    /// The kept events, oldest first.
    fn iter(&self) -> impl Iterator<Item = &Kept> {
        self.slots.iter().filter(|k| k.id > 0)
    }
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("published", &(self.history().next_id - 1))
            .field("consumers", &self.inner.sender.receiver_count())
            .finish()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new()
    }
}

/// What a consumer receives next.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// The next event.
    Event(Published),
    /// This many events were lost to this consumer (it was too slow, or they left the history
    /// before it resumed).
    Lagged(u64),
}

/// One consumer's view of the bus.
pub struct Subscription {
    backlog: VecDeque<Delivery>,
    receiver: broadcast::Receiver<Published>,
}

impl EventBus {
    /// A bus keeping [`DEFAULT_CAPACITY`] events.
    pub fn new() -> EventBus {
        EventBus::with_capacity(DEFAULT_CAPACITY)
    }

    /// A bus keeping `capacity` events (at least 1) for resumption and per consumer.
    pub fn with_capacity(capacity: usize) -> EventBus {
        let capacity = capacity.max(1);
        let (sender, _) = broadcast::channel(capacity);
        let slots = (0..capacity)
            .map(|_| Kept {
                id: 0,
                kind: "",
                json: Vec::with_capacity(KEPT_TEXT),
            })
            .collect();
        EventBus {
            inner: Arc::new(BusInner {
                history: Mutex::new(History { next_id: 1, slots }),
                sender,
            }),
        }
    }

    fn history(&self) -> MutexGuard<'_, History> {
        // A panic elsewhere cannot leave it half-updated: `keep` only assigns and copies.
        self.inner
            .history
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Numbers, timestamps, serializes and sends `event`; returns its id. Never waits.
    pub fn publish(&self, event: Event) -> u64 {
        let mut history = self.history();
        let id = history.next_id;
        history.next_id += 1;
        let envelope = Envelope::new(id, event, SystemTime::now());
        tracing::trace!(id, kind = envelope.event.kind(), "event");
        let kept = history.keep(&envelope);
        // No consumer is not an error: the history still has it.
        if let Some(kept) = kept.filter(|_| self.inner.sender.receiver_count() > 0) {
            let _ = self.inner.sender.send(kept.published());
        }
        id
    }

    /// A consumer of the events published from now on; with `after` (an SSE `Last-Event-ID`),
    /// first the kept events numbered above it (a `Lagged` first if some are no longer kept).
    /// An `after` beyond the newest id is from before a restart: all kept events are replayed.
    pub fn subscribe(&self, after: Option<u64>) -> Subscription {
        let history = self.history();
        let receiver = self.inner.sender.subscribe();
        let mut backlog = VecDeque::new();
        if let Some(after) = after {
            let newest = history.next_id - 1;
            let after = if after > newest { 0 } else { after };
            if let Some(oldest) = history.iter().next().map(|e| e.id) {
                if oldest > after + 1 {
                    backlog.push_back(Delivery::Lagged(oldest - after - 1));
                }
            }
            backlog.extend(
                history
                    .iter()
                    .filter(|e| e.id > after)
                    .map(|e| Delivery::Event(e.published())),
            );
        }
        Subscription { backlog, receiver }
    }

    /// Consumers connected now (SSE streams, the webhook).
    pub fn consumers(&self) -> usize {
        self.inner.sender.receiver_count()
    }
}

impl Subscription {
    /// The next delivery; `None` only if the bus is gone.
    pub async fn next(&mut self) -> Option<Delivery> {
        if let Some(delivery) = self.backlog.pop_front() {
            return Some(delivery);
        }
        match self.receiver.recv().await {
            Ok(event) => Some(Delivery::Event(event)),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(Delivery::Lagged(missed)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::LogoutReason;

    fn login(uid: &str) -> Event {
        Event::UserLogin {
            web_user: uid.into(),
        }
    }

    fn ids(deliveries: &[Delivery]) -> Vec<String> {
        deliveries
            .iter()
            .map(|d| match d {
                Delivery::Event(e) => e.id.to_string(),
                Delivery::Lagged(n) => format!("lagged {n}"),
            })
            .collect()
    }

    async fn take(sub: &mut Subscription, n: usize) -> Vec<Delivery> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(sub.next().await.expect("bus alive"));
        }
        out
    }

    #[tokio::test]
    async fn events_are_numbered_in_order_for_every_consumer() {
        let bus = EventBus::new();
        let mut a = bus.subscribe(None);
        let mut b = bus.subscribe(None);
        assert_eq!(bus.publish(login("alice")), 1);
        assert_eq!(
            bus.publish(Event::UserLogout {
                web_user: "alice".into(),
                reason: LogoutReason::Logout
            }),
            2
        );
        for sub in [&mut a, &mut b] {
            let got = take(sub, 2).await;
            assert_eq!(ids(&got), ["1", "2"]);
            let Delivery::Event(first) = &got[0] else {
                unreachable!()
            };
            let json: serde_json::Value = serde_json::from_str(&first.json).unwrap();
            assert_eq!(
                (first.kind, &json["type"], &json["web_user"], &json["id"]),
                (
                    "user.login",
                    &"user.login".into(),
                    &"alice".into(),
                    &1.into()
                )
            );
            assert_eq!(json["version"], crate::events::SCHEMA_VERSION);
        }
    }

    #[tokio::test]
    async fn a_new_consumer_sees_only_new_events_unless_it_resumes() {
        let bus = EventBus::new();
        for uid in ["a", "b", "c"] {
            bus.publish(login(uid));
        }
        let mut fresh = bus.subscribe(None);
        let mut resumed = bus.subscribe(Some(1));
        let mut from_start = bus.subscribe(Some(0));
        bus.publish(login("d"));
        assert_eq!(ids(&take(&mut fresh, 1).await), ["4"]);
        assert_eq!(ids(&take(&mut resumed, 3).await), ["2", "3", "4"]);
        assert_eq!(ids(&take(&mut from_start, 4).await), ["1", "2", "3", "4"]);
    }

    #[tokio::test]
    async fn resuming_past_the_history_reports_the_loss_first() {
        let bus = EventBus::with_capacity(2);
        for uid in ["a", "b", "c", "d", "e"] {
            bus.publish(login(uid));
        }
        let mut sub = bus.subscribe(Some(1));
        assert_eq!(ids(&take(&mut sub, 3).await), ["lagged 2", "4", "5"]);
        // An id from before a restart (beyond the newest): everything kept.
        let mut stale = bus.subscribe(Some(99));
        assert_eq!(ids(&take(&mut stale, 3).await), ["lagged 3", "4", "5"]);
    }

    #[tokio::test]
    async fn kept_events_replay_exactly_as_delivered_live_whatever_their_length() {
        let bus = EventBus::with_capacity(3);
        let mut live = bus.subscribe(None);
        let long = "x".repeat(3 * KEPT_TEXT);
        for uid in ["a", long.as_str(), "b", "c", long.as_str()] {
            bus.publish(login(uid));
        }
        let delivered = take(&mut live, 5).await;
        let replayed = take(&mut bus.subscribe(Some(2)), 3).await;
        assert_eq!(replayed, delivered[2..]);
        let Delivery::Event(last) = &replayed[2] else {
            unreachable!()
        };
        let json: serde_json::Value = serde_json::from_str(&last.json).unwrap();
        assert_eq!(
            (last.id, json["web_user"].as_str()),
            (5, Some(long.as_str()))
        );
    }

    #[tokio::test]
    async fn a_slow_consumer_is_told_how_many_it_missed_and_never_blocks_publishing() {
        let bus = EventBus::with_capacity(4);
        let mut slow = bus.subscribe(None);
        for i in 0..10 {
            bus.publish(login(&format!("u{i}")));
        }
        let got = take(&mut slow, 5).await;
        assert_eq!(ids(&got), ["lagged 6", "7", "8", "9", "10"]);
        assert_eq!(bus.consumers(), 1);
        drop(slow);
        assert_eq!(bus.consumers(), 0);
        assert_eq!(bus.publish(login("x")), 11, "publishing without consumers");
    }
}
