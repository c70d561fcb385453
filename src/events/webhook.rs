//! The webhook's queue, sans IO: events in, batches out, one batch in flight at a time so the
//! receiver gets them in order; a failed batch goes back to the front and is retried after an
//! exponential back-off. The queue is bounded: when full, the oldest event is dropped and counted
//! (the count travels in every batch), so a dead receiver costs memory once, never a call.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::event::{Published, SCHEMA_VERSION};

/// Limits and timings of the webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// Events held while the receiver is slow or down; beyond it the oldest go.
    pub queue_capacity: usize,
    /// Events per POST at most.
    pub max_batch: usize,
    /// Wait after the first failure; doubles with each further one.
    pub min_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
    /// How long one POST may take (connect, send, status line).
    pub request_timeout: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            queue_capacity: 10_000,
            max_batch: 50,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// One POST's content.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// [`SCHEMA_VERSION`].
    pub version: u32,
    /// Events dropped so far (queue full, or the webhook fell behind the bus), since start.
    pub dropped: u64,
    /// The events, oldest first.
    pub events: Vec<Published>,
}

impl Batch {
    /// The JSON body: `{"version":…,"dropped":…,"events":[…]}`, the events as published.
    pub fn body(&self) -> String {
        let texts: usize = self.events.iter().map(|e| e.json.len() + 1).sum();
        let mut body = String::with_capacity(64 + texts);
        // Writing to a String cannot fail.
        let _ = write!(
            body,
            "{{\"version\":{},\"dropped\":{},\"events\":[",
            self.version, self.dropped
        );
        for (i, event) in self.events.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&event.json);
        }
        body.push_str("]}");
        body
    }
}

/// The queue and retry state.
#[derive(Debug)]
pub struct WebhookQueue {
    settings: WebhookSettings,
    pending: VecDeque<Published>,
    in_flight: Vec<Published>,
    sending: bool,
    dropped: u64,
    failures: u32,
    retry_at: Option<Instant>,
}

impl WebhookQueue {
    /// An empty queue.
    pub fn new(settings: WebhookSettings) -> WebhookQueue {
        WebhookQueue {
            settings: WebhookSettings {
                queue_capacity: settings.queue_capacity.max(1),
                max_batch: settings.max_batch.max(1),
                ..settings
            },
            pending: VecDeque::new(),
            in_flight: Vec::new(),
            sending: false,
            dropped: 0,
            failures: 0,
            retry_at: None,
        }
    }

    /// Queues an event, dropping the oldest waiting one if full.
    pub fn push(&mut self, event: Published) {
        self.pending.push_back(event);
        self.trim();
    }

    /// Counts events that never reached the queue (the webhook lagged behind the bus).
    pub fn lost(&mut self, count: u64) {
        self.dropped = self.dropped.saturating_add(count);
    }

    fn trim(&mut self) {
        while self.pending.len() > self.settings.queue_capacity {
            self.pending.pop_front();
            self.dropped += 1;
        }
    }

    /// The batch to POST now, if one is due: nothing in flight, something waiting, back-off over.
    pub fn next_batch(&mut self, now: Instant) -> Option<Batch> {
        if self.sending || self.pending.is_empty() || self.retry_at.is_some_and(|at| now < at) {
            return None;
        }
        let take = self.pending.len().min(self.settings.max_batch);
        self.in_flight = self.pending.drain(..take).collect();
        self.sending = true;
        Some(Batch {
            version: SCHEMA_VERSION,
            dropped: self.dropped,
            events: self.in_flight.clone(),
        })
    }

    /// The in-flight batch was delivered (`ok`) or not; on failure returns the wait before the
    /// retry (the batch goes back to the front of the queue).
    pub fn on_result(&mut self, ok: bool, now: Instant) -> Option<Duration> {
        if !self.sending {
            return None;
        }
        self.sending = false;
        let batch = std::mem::take(&mut self.in_flight);
        if ok {
            self.failures = 0;
            self.retry_at = None;
            return None;
        }
        for event in batch.into_iter().rev() {
            self.pending.push_front(event);
        }
        self.trim();
        let wait = self
            .settings
            .min_backoff
            .saturating_mul(1u32 << self.failures.min(16))
            .min(self.settings.max_backoff);
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(now + wait);
        Some(wait)
    }

    /// When to call [`WebhookQueue::next_batch`] again with nothing else happening: the end of
    /// the back-off if events wait for it; `None` when sending or idle.
    pub fn wake_at(&self) -> Option<Instant> {
        if self.sending || self.pending.is_empty() {
            return None;
        }
        self.retry_at
    }

    /// Forgets everything waiting (the webhook was switched off).
    pub fn clear(&mut self) {
        self.pending.clear();
        self.failures = 0;
        self.retry_at = None;
    }

    /// Events waiting (not counting a batch in flight).
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Events dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Failed attempts in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The settings in force.
    pub fn settings(&self) -> &WebhookSettings {
        &self.settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Envelope, Event};
    use std::time::UNIX_EPOCH;

    /// Event `id` as the bus delivers it: the envelope's JSON.
    fn event(id: u64) -> Published {
        let envelope = Envelope::new(
            id,
            Event::UserLogin {
                web_user: format!("u{id}"),
            },
            UNIX_EPOCH,
        );
        Published {
            id,
            kind: envelope.event.kind(),
            json: envelope.to_json().into(),
        }
    }

    fn settings(capacity: usize, batch: usize) -> WebhookSettings {
        WebhookSettings {
            queue_capacity: capacity,
            max_batch: batch,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(4),
            request_timeout: Duration::from_secs(1),
        }
    }

    fn ids(batch: &Batch) -> Vec<u64> {
        batch.events.iter().map(|e| e.id).collect()
    }

    #[test]
    fn batches_go_out_in_order_one_at_a_time() {
        let mut q = WebhookQueue::new(settings(100, 2));
        let now = Instant::now();
        assert!(q.next_batch(now).is_none(), "nothing to send");
        for id in 1..=5 {
            q.push(event(id));
        }
        let first = q.next_batch(now).expect("due");
        assert_eq!(ids(&first), [1, 2]);
        assert!(q.next_batch(now).is_none(), "one batch in flight at a time");
        assert_eq!(q.on_result(true, now), None);
        assert_eq!(ids(&q.next_batch(now).unwrap()), [3, 4]);
        q.on_result(true, now);
        assert_eq!(ids(&q.next_batch(now).unwrap()), [5]);
        q.on_result(true, now);
        assert!(q.is_empty() && q.next_batch(now).is_none());
    }

    #[test]
    fn a_failed_batch_is_retried_first_after_an_exponential_back_off() {
        let mut q = WebhookQueue::new(settings(100, 2));
        let t0 = Instant::now();
        for id in 1..=3 {
            q.push(event(id));
        }
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..6 {
            let batch = q.next_batch(now).expect("due after the back-off");
            assert_eq!(ids(&batch), [1, 2], "the same batch, in order");
            let wait = q.on_result(false, now).expect("a failure waits");
            assert!(q.next_batch(now).is_none(), "not before the back-off");
            assert_eq!(q.wake_at(), Some(now + wait));
            assert!(q
                .next_batch(now + wait - Duration::from_millis(1))
                .is_none());
            waits.push(wait.as_millis() as u64);
            now += wait;
        }
        assert_eq!(waits, [500, 1000, 2000, 4000, 4000, 4000], "capped");
        assert_eq!(q.failures(), 6);
        q.push(event(4));
        let batch = q.next_batch(now).unwrap();
        assert_eq!(ids(&batch), [1, 2]);
        q.on_result(true, now);
        assert_eq!(q.failures(), 0, "success resets the back-off");
        assert_eq!(ids(&q.next_batch(now).unwrap()), [3, 4]);
        assert_eq!(q.on_result(false, now), Some(Duration::from_millis(500)));
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_them_in_the_next_batch() {
        let mut q = WebhookQueue::new(settings(3, 10));
        let now = Instant::now();
        for id in 1..=5 {
            q.push(event(id));
        }
        assert_eq!((q.len(), q.dropped()), (3, 2));
        let batch = q.next_batch(now).unwrap();
        assert_eq!((ids(&batch), batch.dropped), (vec![3, 4, 5], 2));
        // While it is in flight, new events wait; on failure it comes back and the oldest
        // beyond the bound go.
        q.push(event(6));
        q.push(event(7));
        q.on_result(false, now);
        assert_eq!(q.dropped(), 4);
        q.lost(10);
        let later = now + Duration::from_secs(1);
        let batch = q.next_batch(later).unwrap();
        assert_eq!((ids(&batch), batch.dropped), (vec![5, 6, 7], 14));
    }

    #[test]
    fn stray_results_and_clearing() {
        let mut q = WebhookQueue::new(settings(0, 0));
        let now = Instant::now();
        assert_eq!(q.on_result(false, now), None, "nothing was in flight");
        q.push(event(1));
        q.push(event(2));
        assert_eq!(q.len(), 1, "capacity is at least 1");
        let batch = q.next_batch(now).unwrap();
        assert_eq!(ids(&batch), [2], "batches hold at least 1");
        q.on_result(false, now);
        q.clear();
        assert!(q.is_empty() && q.wake_at().is_none());
        q.push(event(3));
        assert!(
            q.next_batch(now).is_some(),
            "clearing also ends the back-off"
        );
    }

    #[test]
    fn the_body_is_versioned_json() {
        let mut q = WebhookQueue::new(settings(2, 10));
        for id in 1..=3 {
            q.push(event(id));
        }
        let body = q.next_batch(Instant::now()).unwrap().body();
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["version"], SCHEMA_VERSION);
        assert_eq!(json["dropped"], 1);
        let events = json["events"].as_array().unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["type"], "user.login");
        assert_eq!((&events[0]["id"], &events[1]["id"]), (&2.into(), &3.into()));
        assert_eq!(events[1]["web_user"], "u3");
    }
}
