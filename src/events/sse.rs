//! `GET /api/events` as Server-Sent Events: one SSE message per event (`id` = the event id,
//! `event` = its type, `data` = its JSON), a `lagged` message when this consumer lost events, and
//! a comment every 15 s so proxies keep the connection open.
//!
//! SSE rather than a WebSocket: the stream only goes one way, it is plain HTTP (curl, any proxy,
//! the same admin auth as the other endpoints), and `Last-Event-ID` gives resumption for free.

use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::stream::{self, Stream, StreamExt};
use serde_json::json;

use super::bus::{Delivery, EventBus};
use super::event::{rfc3339_millis, SCHEMA_VERSION};

/// The header a reconnecting SSE client sends with the last id it saw.
pub const LAST_EVENT_ID: &str = "last-event-id";

/// Why a request for the stream is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamRequestError {
    /// `Last-Event-ID` is not an event id.
    #[error("Last-Event-ID must be an event id (a number), got {0:?}")]
    BadLastEventId(String),
}

/// The id to resume after, from the request headers (none: only new events).
pub fn resume_after(headers: &HeaderMap) -> Result<Option<u64>, StreamRequestError> {
    let Some(value) = headers.get(LAST_EVENT_ID) else {
        return Ok(None);
    };
    let bad =
        || StreamRequestError::BadLastEventId(String::from_utf8_lossy(value.as_bytes()).into());
    let text = value.to_str().map_err(|_| bad())?.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<u64>().map(Some).map_err(|_| bad())
}

/// The SSE response: subscribes now (so nothing published after this call is missed).
pub fn stream(
    bus: &EventBus,
    after: Option<u64>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let subscription = bus.subscribe(after);
    let hello =
        SseEvent::default().comment(format!("srbridge events, schema version {SCHEMA_VERSION}"));
    let events = stream::unfold(subscription, |mut subscription| async move {
        let delivery = subscription.next().await?;
        Some((Ok(message(&delivery)), subscription))
    });
    Sse::new(stream::once(async { Ok(hello) }).chain(events))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// One delivery as an SSE message.
pub fn message(delivery: &Delivery) -> SseEvent {
    match delivery {
        Delivery::Event(event) => SseEvent::default()
            .id(event.id.to_string())
            .event(event.kind)
            .data(&*event.json),
        Delivery::Lagged(missed) => SseEvent::default().event("lagged").data(
            json!({
                "type": "lagged",
                "version": SCHEMA_VERSION,
                "time": rfc3339_millis(SystemTime::now()),
                "missed": missed,
            })
            .to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn last_event_id_is_a_number_or_absent() {
        let mut headers = HeaderMap::new();
        assert_eq!(resume_after(&headers), Ok(None));
        headers.insert(LAST_EVENT_ID, HeaderValue::from_static(" 42 "));
        assert_eq!(resume_after(&headers), Ok(Some(42)));
        headers.insert(LAST_EVENT_ID, HeaderValue::from_static(""));
        assert_eq!(resume_after(&headers), Ok(None));
        for bad in ["abc", "-1", "1.5", "99999999999999999999999"] {
            headers.insert(LAST_EVENT_ID, HeaderValue::from_static(bad));
            assert!(
                matches!(resume_after(&headers), Err(StreamRequestError::BadLastEventId(ref v)) if v == bad),
                "{bad}"
            );
        }
        headers.insert(LAST_EVENT_ID, HeaderValue::from_bytes(b"\xff").unwrap());
        assert!(resume_after(&headers).is_err());
    }
}
