//! The event seam's contract, run against the embedded log and a real Pulsar broker.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use shopmesh_events::dead_letters::{self, Action};
use shopmesh_events::{Delivery, Event, SubscribeOptions, Subscriber, dead_letter_topic};
use shopmesh_testkit::contract_suite;
use shopmesh_testkit::events::{TestBus, unique_topic};

/// Generous bound on any single wait, so a broken backend fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(30);

async fn embedded() -> Option<TestBus> {
    Some(TestBus::embedded())
}

async fn pulsar() -> Option<TestBus> {
    TestBus::pulsar()
}

fn quick() -> SubscribeOptions {
    SubscribeOptions {
        max_attempts: 3,
        backoff: Duration::from_millis(300),
        max_backoff: Duration::from_secs(2),
        ack_timeout: Duration::from_secs(30),
    }
}

async fn next(subscriber: &mut Box<dyn Subscriber>) -> Delivery {
    tokio::time::timeout(PATIENCE, subscriber.next())
        .await
        .expect("no delivery in time")
        .expect("delivery")
}

fn event(key: &str, n: u32) -> Event {
    Event::new(key, "test.Numbered", n.to_be_bytes().to_vec())
}

fn number(event: &Event) -> u32 {
    u32::from_be_bytes(event.payload.clone().try_into().expect("4-byte payload"))
}

async fn delivers_every_event_in_key_order(bed: TestBus) {
    let bus = bed.connect().await.unwrap();
    let topic = unique_topic("order");
    let mut subscriber = bus.subscribe(&topic, "reader", quick()).await.unwrap();
    for n in 0..30 {
        let key = ["a", "b", "c"][n as usize % 3];
        bus.publish(&topic, &event(key, n)).await.unwrap();
    }
    let mut seen: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for _ in 0..30 {
        let delivery = next(&mut subscriber).await;
        assert_eq!(delivery.attempt, 1);
        seen.entry(delivery.event.key.clone())
            .or_default()
            .push(number(&delivery.event));
        subscriber.ack(&delivery).await.unwrap();
    }
    for (key, numbers) in &seen {
        let mut sorted = numbers.clone();
        sorted.sort_unstable();
        assert_eq!(numbers, &sorted, "events of key {key} out of order");
        assert_eq!(numbers.len(), 10);
    }
}

async fn a_batch_keeps_its_order_on_every_topic(bed: TestBus) {
    let bus = bed.connect().await.unwrap();
    let topics = [unique_topic("batch-a"), unique_topic("batch-b")];
    let mut readers = Vec::new();
    for topic in &topics {
        readers.push(bus.subscribe(topic, "reader", quick()).await.unwrap());
    }
    let batch: Vec<(String, Event)> = (0..40)
        .map(|n| (topics[n as usize % 2].clone(), event("one-key", n)))
        .collect();
    bus.publish_all(&batch).await.unwrap();
    for (side, reader) in readers.iter_mut().enumerate() {
        let mut numbers = Vec::new();
        for _ in 0..20 {
            let delivery = next(reader).await;
            numbers.push(number(&delivery.event));
            reader.ack(&delivery).await.unwrap();
        }
        let expected: Vec<u32> = (0..40).filter(|n| *n as usize % 2 == side).collect();
        assert_eq!(numbers, expected, "one key's events arrive in batch order");
    }
}

async fn events_keep_their_fields(bed: TestBus) {
    let bus = bed.connect().await.unwrap();
    let topic = unique_topic("fields");
    let mut subscriber = bus.subscribe(&topic, "reader", quick()).await.unwrap();
    let mut sent = Event::new(
        "order-1",
        "shopmesh.events.v1.OrderCreated",
        b"\x00\x01binary\xff".to_vec(),
    );
    sent.headers.insert(
        "traceparent".into(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    );
    bus.publish(&topic, &sent).await.unwrap();
    let delivery = next(&mut subscriber).await;
    assert_eq!(delivery.event, sent);
    subscriber.ack(&delivery).await.unwrap();
}

async fn every_subscription_sees_every_event(bed: TestBus) {
    let bus = bed.connect().await.unwrap();
    let topic = unique_topic("fanout");
    let mut first = bus.subscribe(&topic, "first", quick()).await.unwrap();
    let mut second = bus.subscribe(&topic, "second", quick()).await.unwrap();
    for n in 0..5 {
        bus.publish(&topic, &event("k", n)).await.unwrap();
    }
    for subscriber in [&mut first, &mut second] {
        let mut numbers = Vec::new();
        for _ in 0..5 {
            let delivery = next(subscriber).await;
            numbers.push(number(&delivery.event));
            subscriber.ack(&delivery).await.unwrap();
        }
        assert_eq!(numbers, vec![0, 1, 2, 3, 4]);
    }
}

async fn nack_redelivers_after_backoff(bed: TestBus) {
    let bus = bed.connect().await.unwrap();
    let topic = unique_topic("nack");
    let mut subscriber = bus.subscribe(&topic, "retrying", quick()).await.unwrap();
    bus.publish(&topic, &event("k", 7)).await.unwrap();
    let first = next(&mut subscriber).await;
    let nacked_at = Instant::now();
    subscriber.nack(&first).await.unwrap();
    let again = next(&mut subscriber).await;
    assert_eq!(again.event.id, first.event.id);
    assert_eq!(again.attempt, 2);
    assert!(
        nacked_at.elapsed() >= Duration::from_millis(250),
        "redelivered after {:?}, before the back-off",
        nacked_at.elapsed()
    );
    subscriber.ack(&again).await.unwrap();
}

async fn dead_letters_after_max_attempts(bed: TestBus) {
    let bus = bed.connect().await.unwrap();
    let topic = unique_topic("dlq");
    let options = SubscribeOptions {
        max_attempts: 2,
        ..quick()
    };
    let mut dead = bus
        .subscribe(&dead_letter_topic(&topic, "failing"), "inspector", quick())
        .await
        .unwrap();
    let mut subscriber = bus.subscribe(&topic, "failing", options).await.unwrap();
    let poison = event("k", 13);
    bus.publish(&topic, &poison).await.unwrap();
    bus.publish(&topic, &event("other", 14)).await.unwrap();
    let mut attempts = 0;
    let mut healthy = None;
    while attempts < 2 || healthy.is_none() {
        let delivery = next(&mut subscriber).await;
        if delivery.event.id == poison.id {
            attempts += 1;
            subscriber.nack(&delivery).await.unwrap();
        } else {
            subscriber.ack(&delivery).await.unwrap();
            healthy = Some(number(&delivery.event));
        }
    }
    assert_eq!(healthy, Some(14), "one poison event must not block others");
    // The poison event is not offered a third time: it lands on the dead-letter topic.
    let dead_letter = next(&mut dead).await;
    assert_eq!(dead_letter.event.id, poison.id);
    assert_eq!(dead_letter.event.payload, poison.payload);
    dead.ack(&dead_letter).await.unwrap();
    let third = tokio::time::timeout(Duration::from_secs(2), subscriber.next()).await;
    assert!(
        third.is_err(),
        "a dead-lettered event was delivered again: {third:?}"
    );

    // Operators see it (as often as they look), then replay it once the cause is fixed.
    let ids = |events: Vec<Event>| events.into_iter().map(|e| e.id).collect::<Vec<_>>();
    let idle = Duration::from_secs(2);
    let inspected = dead_letters::handle(&bus, &topic, "failing", Action::Inspect, 10, idle);
    assert_eq!(
        ids(inspected.await.unwrap()),
        std::slice::from_ref(&poison.id)
    );
    let replayed = dead_letters::handle(&bus, &topic, "failing", Action::Replay, 10, idle * 3);
    assert_eq!(
        ids(replayed.await.unwrap()),
        std::slice::from_ref(&poison.id)
    );
    let back = next(&mut subscriber).await;
    assert_eq!(
        back.event.id, poison.id,
        "the replayed event is delivered again"
    );
    subscriber.ack(&back).await.unwrap();
    let left = dead_letters::handle(&bus, &topic, "failing", Action::Inspect, 10, idle);
    assert!(
        left.await.unwrap().is_empty(),
        "a replayed letter leaves the dead-letter topic"
    );
}

async fn a_restarted_consumer_resumes_without_loss(bed: TestBus) {
    let topic = unique_topic("restart");
    let options = SubscribeOptions {
        ack_timeout: Duration::from_secs(1),
        ..quick()
    };
    let acked: BTreeSet<u32> = {
        let bus = bed.connect().await.unwrap();
        let mut subscriber = bus
            .subscribe(&topic, "durable", options.clone())
            .await
            .unwrap();
        for n in 0..10 {
            bus.publish(&topic, &event(&format!("k{n}"), n))
                .await
                .unwrap();
        }
        let mut acked = BTreeSet::new();
        for _ in 0..4 {
            let delivery = next(&mut subscriber).await;
            subscriber.ack(&delivery).await.unwrap();
            acked.insert(number(&delivery.event));
        }
        // One more is taken but never settled: the crash happens while handling it.
        let _in_flight = next(&mut subscriber).await;
        acked
    };
    // Give a broker time to notice the old consumer is gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bus = bed.connect().await.unwrap();
    let mut subscriber = bus.subscribe(&topic, "durable", options).await.unwrap();
    let mut rest = BTreeSet::new();
    while acked.len() + rest.len() < 10 {
        let delivery = next(&mut subscriber).await;
        let n = number(&delivery.event);
        subscriber.ack(&delivery).await.unwrap();
        if !acked.contains(&n) {
            rest.insert(n);
        }
    }
    let all: BTreeSet<u32> = acked.union(&rest).copied().collect();
    assert_eq!(all, (0..10).collect());
}

async fn unacknowledged_events_come_back_after_the_ack_timeout(bed: TestBus) {
    let bus = bed.connect().await.unwrap();
    let topic = unique_topic("timeout");
    let options = SubscribeOptions {
        ack_timeout: Duration::from_secs(1),
        ..quick()
    };
    let mut subscriber = bus.subscribe(&topic, "forgetful", options).await.unwrap();
    bus.publish(&topic, &event("k", 1)).await.unwrap();
    let first = next(&mut subscriber).await;
    let again = next(&mut subscriber).await;
    assert_eq!(again.event.id, first.event.id);
    subscriber.ack(&again).await.unwrap();
}

async fn bad_names_and_oversized_events_are_refused(bed: TestBus) {
    let bus = bed.connect().await.unwrap();
    assert!(
        bus.publish("no spaces/allowed", &event("k", 1))
            .await
            .is_err()
    );
    assert!(bus.subscribe("fine", "not fine!", quick()).await.is_err());
    let huge = Event::new(
        "k",
        "test.Huge",
        vec![0; shopmesh_events::MAX_PAYLOAD_BYTES + 1],
    );
    assert!(bus.publish(&unique_topic("huge"), &huge).await.is_err());
}

contract_suite! {
    embedded => embedded,
    pulsar => pulsar;
    [
        delivers_every_event_in_key_order,
        a_batch_keeps_its_order_on_every_topic,
        events_keep_their_fields,
        every_subscription_sees_every_event,
        nack_redelivers_after_backoff,
        dead_letters_after_max_attempts,
        a_restarted_consumer_resumes_without_loss,
        unacknowledged_events_come_back_after_the_ack_timeout,
        bad_names_and_oversized_events_are_refused,
    ]
}
