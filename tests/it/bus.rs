//! The cluster bus on the real servers, Redis and NATS JetStream, through
//! its public API: order, refused keys, blocking reads, a stream that is
//! lost, a server that is not there. Each test has a prefix of its own and
//! deletes what it made, so they run side by side.

use rowcast::bus::{Appended, Bus, Entry, Key, Position, Stored};
use rowcast::cursor::{Cursor, IdRange, Style};
use rowcast::source::Row;
use std::future::Future;
use std::time::{Duration, Instant};

const REDIS: &str = "redis://127.0.0.1:6379";
const NATS: &str = "nats://127.0.0.1:4222";

/// The one feed each test appends to.
const FEED: &str = "orders";

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Redis,
    Nats,
}

impl Kind {
    fn url(self) -> &'static str {
        match self {
            Kind::Redis => REDIS,
            Kind::Nats => NATS,
        }
    }
}

/// A bus under a prefix no other test uses.
struct Scratch {
    kind: Kind,
    prefix: String,
    bus: Bus,
}

/// Runs `test` on a fresh prefix of `kind`'s server, then deletes what it
/// made there, whether it passed or not.
async fn on<F, Fut>(kind: Kind, test: F)
where
    F: FnOnce(Scratch) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let prefix = format!("t{:016x}", rand::random::<u64>());
    let bus = Bus::connect(kind.url(), &prefix).await.expect("connect");
    let scratch = Scratch {
        kind,
        prefix: prefix.clone(),
        bus,
    };
    let outcome = tokio::spawn(test(scratch)).await;
    wipe(kind, &prefix).await;
    if let Err(err) = outcome {
        std::panic::resume_unwind(err.into_panic());
    }
}

/// Deletes `prefix`'s feed stream: the Redis key, or the JetStream stream.
async fn wipe(kind: Kind, prefix: &str) {
    match kind {
        Kind::Redis => {
            let client = redis::Client::open(REDIS).expect("redis url");
            let mut connection = client
                .get_multiplexed_async_connection()
                .await
                .expect("redis");
            let _: i64 = redis::cmd("DEL")
                .arg(format!("{prefix}:{FEED}"))
                .query_async(&mut connection)
                .await
                .expect("DEL");
        }
        Kind::Nats => {
            let client = async_nats::connect(NATS).await.expect("nats");
            let js = async_nats::jetstream::new(client);
            // Gone already when the test deleted it itself.
            js.delete_stream(format!("{prefix}_feeds")).await.ok();
        }
    }
}

/// The entry of a batch that ends at row `head`.
fn entry(head: i64) -> Entry {
    Entry {
        from: Cursor::At(i128::from(head) - 1),
        head: Cursor::At(head.into()),
        late: false,
        at_ms: 1_700_000_000_000 + head,
        rows: vec![Row {
            id: head.into(),
            json: Some(format!(r#"{{"id":{head},"body":"a\"b"}}"#)),
            filters: vec![Some("eu".to_owned()), None],
            unless_filters: None,
            event: None,
        }],
        epoch: None,
        read: None,
    }
}

fn key(entry: &Entry) -> Key {
    entry.key(Style::Ids(IdRange::Signed), 0).unwrap()
}

async fn append(bus: &Bus, entry: &Entry) -> Appended {
    bus.append(FEED, key(entry), entry).await.expect("append")
}

/// The entries of `stored`, which must all decode.
fn entries(stored: &[Stored]) -> Vec<Entry> {
    let decoded = stored.iter().map(|s| s.entry.clone().expect("decodes"));
    decoded.collect()
}

/// Appends the entries of rows 1, 2, 3; the position of the third.
async fn three(bus: &Bus) -> Position {
    for head in 1..=3 {
        assert_eq!(append(bus, &entry(head)).await, Appended::Added);
    }
    let last = bus.last(FEED).await.expect("last").expect("an entry");
    assert_eq!(last.entry.expect("decodes"), entry(3));
    last.position
}

async fn in_order(scratch: Scratch) {
    let bus = &scratch.bus;
    assert!(bus.last(FEED).await.expect("last").is_none());
    let third = three(bus).await;
    let mut reader = bus.reader(FEED);
    let wait = Duration::from_secs(2);
    let read = reader.read(Position::Origin, wait).await.expect("read");
    assert_eq!(entries(&read), [entry(1), entry(2), entry(3)]);
    assert_eq!(read[2].position, third);
    assert!(read[0].position != read[1].position && read[1].position != third);
    let started = Instant::now();
    let wait = Duration::from_millis(400);
    assert!(reader.read(third, wait).await.expect("read").is_empty());
    assert!(started.elapsed() >= wait - Duration::from_millis(50));
    bus.ping().await.expect("ping");
}

#[tokio::test]
async fn redis_keeps_entries_in_order() {
    on(Kind::Redis, in_order).await;
}

#[tokio::test]
async fn nats_keeps_entries_in_order() {
    on(Kind::Nats, in_order).await;
}

async fn refuses_stale(scratch: Scratch) {
    let bus = &scratch.bus;
    three(bus).await;
    // The key of the last entry, and one below it.
    assert_eq!(append(bus, &entry(3)).await, Appended::Stale);
    assert_eq!(append(bus, &entry(2)).await, Appended::Stale);
    // A second instance, which knows nothing of the stream yet.
    let other = Bus::connect(scratch.kind.url(), &scratch.prefix)
        .await
        .expect("connect");
    assert_eq!(append(&other, &entry(3)).await, Appended::Stale);
    assert_eq!(append(&other, &entry(1)).await, Appended::Stale);
    let mut reader = bus.reader(FEED);
    let read = reader
        .read(Position::Origin, Duration::from_secs(2))
        .await
        .expect("read");
    assert_eq!(entries(&read), [entry(1), entry(2), entry(3)]);
    // Two leaders for a moment, each a step behind the other: of each key
    // only the first append lands.
    assert_eq!(append(&other, &entry(4)).await, Appended::Added);
    assert_eq!(append(bus, &entry(4)).await, Appended::Stale);
    assert_eq!(append(bus, &entry(5)).await, Appended::Added);
    assert_eq!(append(&other, &entry(5)).await, Appended::Stale);
    let more = reader
        .read(read[2].position, Duration::from_secs(2))
        .await
        .expect("read");
    assert_eq!(entries(&more), [entry(4), entry(5)]);
    let last = other.last(FEED).await.expect("last").expect("an entry");
    assert_eq!(last.position, more[1].position);
}

#[tokio::test]
async fn redis_refuses_keys_not_above_the_last() {
    on(Kind::Redis, refuses_stale).await;
}

#[tokio::test]
async fn nats_refuses_keys_not_above_the_last() {
    on(Kind::Nats, refuses_stale).await;
}

async fn wakes_blocked_reader(scratch: Scratch) {
    let bus = scratch.bus.clone();
    let third = three(&bus).await;
    let mut reader = bus.reader(FEED);
    let started = Instant::now();
    let blocked = tokio::spawn(async move { reader.read(third, Duration::from_secs(10)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(append(&bus, &entry(4)).await, Appended::Added);
    let read = blocked.await.expect("reader").expect("read");
    assert_eq!(entries(&read), [entry(4)]);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[tokio::test]
async fn redis_wakes_a_blocked_reader() {
    on(Kind::Redis, wakes_blocked_reader).await;
}

#[tokio::test]
async fn nats_wakes_a_blocked_reader() {
    on(Kind::Nats, wakes_blocked_reader).await;
}

/// Deletes the feed's stream under the bus's feet, then appends row 4's
/// entry: a reader that had read the three before, and a new one at the
/// same place, both get it.
async fn survives_a_lost_stream(scratch: Scratch) {
    let bus = &scratch.bus;
    let third = three(bus).await;
    let mut reader = bus.reader(FEED);
    let wait = Duration::from_secs(3);
    let read = reader.read(Position::Origin, wait).await.expect("read");
    assert_eq!(read.len(), 3);
    wipe(scratch.kind, &scratch.prefix).await;
    assert!(bus.last(FEED).await.expect("last").is_none());
    assert_eq!(append(bus, &entry(4)).await, Appended::Added);
    let read = reader.read(third, wait).await.expect("read");
    assert_eq!(entries(&read), [entry(4)]);
    let fresh = bus.reader(FEED).read(third, wait).await.expect("read");
    assert_eq!(entries(&fresh), [entry(4)]);
    assert_eq!(fresh[0].position, read[0].position);
    let last = bus.last(FEED).await.expect("last").expect("an entry");
    assert_eq!(last.position, read[0].position);
}

#[tokio::test]
async fn redis_survives_a_deleted_stream() {
    on(Kind::Redis, survives_a_lost_stream).await;
}

#[tokio::test]
async fn nats_survives_a_deleted_stream() {
    on(Kind::Nats, survives_a_lost_stream).await;
}

/// A stream an operator made with settings of their own is used as it is.
#[tokio::test]
async fn nats_takes_a_stream_made_by_hand() {
    on(Kind::Nats, |scratch: Scratch| async move {
        let client = async_nats::connect(NATS).await.expect("nats");
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: format!("{}_feeds", scratch.prefix),
            subjects: vec![format!("{}.feed.>", scratch.prefix)],
            storage: async_nats::jetstream::stream::StorageType::Memory,
            max_messages_per_subject: 2,
            ..Default::default()
        })
        .await
        .expect("create stream");
        three(&scratch.bus).await;
        let read = scratch
            .bus
            .reader(FEED)
            .read(Position::Origin, Duration::from_secs(2))
            .await
            .expect("read");
        assert_eq!(entries(&read), [entry(2), entry(3)]);
    })
    .await;
}

/// `bus` errs quickly, saying which bus, and never shows `secret`.
async fn fails_fast(bus: &Bus, name: &str, secret: &str) {
    let started = Instant::now();
    let errors = [
        bus.append(FEED, key(&entry(1)), &entry(1)).await.map(drop),
        bus.ping().await,
    ];
    for result in errors {
        let text = result.expect_err("no server there").to_string();
        assert!(text.starts_with(&format!("bus ({name})")), "{text}");
        assert!(!text.contains(secret), "{text}");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[tokio::test]
async fn a_bus_that_is_not_there_fails_fast() {
    let secret = "s3cret-pw";
    for (name, urls) in [
        (
            "Redis",
            [
                "redis://127.0.0.1:1".to_owned(),
                format!("redis://u:{secret}@127.0.0.1:1"),
            ],
        ),
        (
            "NATS",
            [
                "nats://127.0.0.1:1".to_owned(),
                format!("nats://u:{secret}@127.0.0.1:1"),
            ],
        ),
    ] {
        for url in urls {
            let bus = Bus::connect(&url, "t").await.expect("connects lazily");
            fails_fast(&bus, name, secret).await;
        }
    }
    let token = Bus::connect(&format!("nats://{secret}@127.0.0.1:1"), "t").await;
    fails_fast(&token.expect("connects lazily"), "NATS", secret).await;
    // Only a URL that cannot be one fails at once; it too keeps the secret.
    for url in [
        format!("nats://u:{secret}@[::1"),
        format!("nats://{secret}@[::1"),
    ] {
        let text = Bus::connect(&url, "t")
            .await
            .err()
            .expect("malformed")
            .to_string();
        assert!(text.starts_with("bus `nats://"), "{text}");
        assert!(!text.contains(secret), "{text}");
    }
}
