//! Cost of publishing one event on the call path: numbering, timestamping, serializing, keeping
//! it for resumption and handing it to the broadcast channel (without and with a consumer
//! reading).

use criterion::{criterion_group, criterion_main, Criterion};
use srbridge::events::{CallFacts, Event, EventBus};
use srbridge::ops::Direction;

fn call_created() -> Event {
    Event::CallCreated {
        call: CallFacts {
            call_id: "w1".into(),
            sip_call_id: Some("5896189a3c744d08a6ef6076651842ed@restsend.com".into()),
            direction: Direction::WebToSip,
            web_user: "alice".into(),
            number: "1001".into(),
        },
    }
}

fn publish(c: &mut Criterion) {
    let bus = EventBus::new();
    c.bench_function("event_publish_no_consumer", |b| {
        b.iter(|| bus.publish(call_created()))
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let bus = EventBus::new();
    let mut subscription = bus.subscribe(None);
    runtime.spawn(async move {
        while let Some(delivery) = subscription.next().await {
            // what the SSE stream does per event: hand on the text made at publishing
            if let srbridge::events::Delivery::Event(e) = delivery {
                std::hint::black_box(e.json.len());
            }
        }
    });
    c.bench_function("event_publish_one_consumer", |b| {
        b.iter(|| bus.publish(call_created()))
    });
}

criterion_group!(benches, publish);
criterion_main!(benches);
