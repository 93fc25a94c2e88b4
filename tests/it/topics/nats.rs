//! A NATS subject: resumed by stream sequence when a JetStream stream
//! (made by the test) covers it, live only when none does.

use super::{ids_of, unique, NATS_URL};
use crate::common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A JetStream stream of the test's own, deleted when it ends.
struct JetStream {
    context: async_nats::jetstream::Context,
    name: String,
}

impl JetStream {
    async fn create(subjects: &str) -> JetStream {
        let client = async_nats::connect(NATS_URL)
            .await
            .unwrap_or_else(|e| panic!("NATS at {NATS_URL}: {e} (start it with .ci/run)"));
        let context = async_nats::jetstream::new(client);
        let name = unique("stream").to_uppercase();
        context
            .create_stream(async_nats::jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![subjects.to_owned()],
                ..Default::default()
            })
            .await
            .unwrap();
        JetStream { context, name }
    }

    /// Publishes `payload` on `subject`; its stream sequence.
    async fn publish(&self, subject: &str, payload: Value) -> u64 {
        let ack = self
            .context
            .publish(subject.to_owned(), payload.to_string().into())
            .await
            .unwrap();
        ack.await.unwrap().sequence
    }

    async fn delete(self) {
        self.context.delete_stream(&self.name).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_subject_resumes_by_sequence_with_jetstream_and_is_live_without() {
    let base = unique("orders").replace('_', ".");
    let jetstream = JetStream::create(&format!("{base}.>")).await;
    let covered = format!("{base}.created");
    let core = format!("{}.live", unique("core").replace('_', "."));
    let server = Rowcast::without_database()
        .topic("orders", "nats", NATS_URL, |f| {
            f.set("subject", covered.as_str())
                .filter_columns(["room_id"])
                .ring_size(1)
        })
        .topic("live", "nats", NATS_URL, |f| {
            f.set("subject", core.as_str())
        })
        .start()
        .await;
    let url = format!("{}/events/orders", server.url);
    let mut client = Client::connect(&url, None).await;
    let mut seqs = Vec::new();
    for n in 0..3 {
        seqs.push(
            jetstream
                .publish(&covered, json!({ "n": n, "room_id": 5 }))
                .await,
        );
    }
    // Another subject of the stream is not this feed's.
    jetstream
        .publish(&format!("{base}.deleted"), json!({ "n": 99 }))
        .await;
    let events = client.take(3).await;
    let expected: Vec<String> = seqs.iter().map(u64::to_string).collect();
    assert_eq!(ids_of(&events), expected, "event ids are stream sequences");
    client.expect_quiet(Duration::from_millis(300)).await;
    // Behind a ring of one: caught up by sequence from JetStream.
    let mut resumed = Client::connect(&url, Some(&expected[0])).await;
    let again = resumed.take(2).await;
    assert_eq!(ids_of(&again), &expected[1..]);
    assert_eq!(again[1].json(), json!({ "n": 2, "room_id": 5 }));
    let mut everything = Client::connect(&format!("{url}?after=0"), None).await;
    assert_eq!(ids_of(&everything.take(3).await), expected);
    let next = jetstream.publish(&covered, json!({ "n": 3 })).await;
    assert_eq!(ids_of(&resumed.take(1).await), [next.to_string()]);

    // Without a stream: live, no ids.
    let publisher = async_nats::connect(NATS_URL).await.unwrap();
    let mut live = Client::connect(&format!("{}/events/live", server.url), Some("7")).await;
    // The subscription is made in the background: publish until it counts.
    let deadline = Instant::now() + WAIT;
    let first = loop {
        publisher
            .publish(core.clone(), json!({ "probe": true }).to_string().into())
            .await
            .unwrap();
        if let Some(event) = live.next(Duration::from_millis(200)).await {
            break event;
        }
        assert!(Instant::now() < deadline, "no event on a core subject");
    };
    assert_eq!(
        (first.id.as_str(), first.json()),
        ("", json!({ "probe": true }))
    );
    let (status, _) = get_json(&format!("{}/feeds/live/rows", server.url)).await;
    assert_eq!(status, 400);
    server.stop().await;
    jetstream.delete().await;
}

/// A client resuming from a sequence the stream no longer holds gets a
/// `reset` event first, then what the stream kept of the subject; one
/// resuming from a sequence it still holds gets no reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_jetstream_subject_says_reset_to_a_client_that_missed_messages() {
    let base = unique("purged").replace('_', ".");
    let jetstream = JetStream::create(&format!("{base}.>")).await;
    let subject = format!("{base}.created");
    let server = Rowcast::without_database()
        .topic("orders", "nats", NATS_URL, |f| {
            f.set("subject", subject.as_str()).ring_size(1)
        })
        .start()
        .await;
    let url = format!("{}/events/orders", server.url);
    let mut live = Client::connect(&url, None).await;
    let mut seqs = Vec::new();
    for n in 0..6 {
        seqs.push(
            jetstream
                .publish(&subject, json!({ "n": n }))
                .await
                .to_string(),
        );
    }
    assert_eq!(ids_of(&live.take(6).await), seqs);
    let stream = jetstream.context.get_stream(&jetstream.name).await.unwrap();
    stream.purge().filter(&subject).keep(3).await.unwrap();

    // From the 2nd: the 3rd is gone.
    let mut behind = Client::connect(&url, Some(&seqs[1])).await;
    let events = behind.take(4).await;
    assert_eq!(events[0].event, "reset", "{events:?}");
    assert_eq!(events[0].json()["op"], "reset");
    assert_eq!(events[0].id, seqs[2], "just before the oldest message kept");
    assert_eq!(ids_of(&events[1..]), &seqs[3..]);
    // From the 4th, kept but behind the ring of one: no reset.
    let mut kept = Client::connect(&url, Some(&seqs[3])).await;
    assert_eq!(ids_of(&kept.take(2).await), &seqs[4..]);
    kept.expect_quiet(Duration::from_millis(300)).await;
    server.stop().await;
    jetstream.delete().await;
}
