//! Merging the layers and validating them: what wins, and what each
//! mistake is told.

use super::*;
use crate::cli::{Cli, Command};
use crate::config::{Format, TopicKind};
use clap::Parser;

fn args(table: Option<&str>) -> ServeArgs {
    let mut args = ServeArgs::default();
    args.server.database_url = Some("sqlite://x.db".into());
    args.feed.table = table.map(Into::into);
    args
}

fn file(text: &str) -> Result<FileConfig, toml::de::Error> {
    toml::from_str(text)
}

#[test]
fn table_flag_alone_makes_a_feed_with_defaults() {
    let config = Config::merge(&args(Some("messages")), FileConfig::default()).unwrap();
    assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(config.feeds.len(), 1);
    let feed = &config.feeds[0];
    assert_eq!(feed.name, "messages");
    assert_eq!(feed.table, "messages");
    assert_eq!(feed.tuning.batch_size, 500);
    assert_eq!(feed.tuning.poll_interval, Duration::from_millis(100));
    assert_eq!(feed.event, None);
}

#[test]
fn flags_override_the_file() {
    let file = file(
        r#"
        database_url = "postgres://file"
        poll_interval = "2s"
        batch_size = 50
        [[feed]]
        table = "orders"
        batch_size = 10
        "#,
    )
    .unwrap();
    let mut a = args(None);
    a.server.batch_size = Some(7);
    let config = Config::merge(&a, file).unwrap();
    assert_eq!(config.database_url.as_deref(), Some("sqlite://x.db"));
    assert_eq!(config.feeds[0].tuning.batch_size, 7);
    assert_eq!(config.feeds[0].tuning.poll_interval, Duration::from_secs(2));
}

#[test]
fn feed_value_beats_file_default() {
    let file = file("batch_size = 50\n[[feed]]\ntable = \"a\"\nbatch_size = 10\n").unwrap();
    let config = Config::merge(&args(None), file).unwrap();
    assert_eq!(config.feeds[0].tuning.batch_size, 10);
}

#[test]
fn unknown_key_is_named_with_the_valid_ones() {
    let err = file("[[feed]]\ntable = \"a\"\nid_colum = \"x\"\n").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("unknown field `id_colum`"), "{text}");
    assert!(text.contains("id_column"), "{text}");
}

#[test]
fn bad_values_name_their_key() {
    let cases = [
        (
            "[[feed]]\ntable = \"a\"\nname = \"a b\"\n",
            "feed `a b`: `name`",
        ),
        (
            "[[feed]]\ntable = \"a\"\nbatch_size = 0\n",
            "feed `a`: `batch_size`",
        ),
        (
            "[[feed]]\ntable = \"a\"\nfrom = \"v\"\nselect = \"select 1\"\n",
            "feed `a`: `select`",
        ),
        (
            "[[feed]]\ntable = \"a\"\nevent = \"x\\ny\"\n",
            "feed `a`: `event`",
        ),
        (
            "[[feed]]\ntable = \"a\"\n[[feed]]\ntable = \"a\"\n",
            "feed `a`",
        ),
        ("[[feed]]\nname = \"x\"\n", "feed 0: `table` is missing"),
    ];
    for (text, key) in cases {
        let err = Config::merge(&args(None), file(text).unwrap()).unwrap_err();
        assert!(err.to_string().starts_with(key), "{text:?} gave {err}");
    }
}

#[test]
fn missing_database_and_feeds_are_explained() {
    let err = Config::merge(&ServeArgs::default(), FileConfig::default()).unwrap_err();
    assert!(matches!(err, Error::NoDatabase));
    let err = Config::merge(&args(None), FileConfig::default()).unwrap_err();
    assert!(matches!(err, Error::NoFeeds));
    let mut a = args(None);
    a.feed.id_column = Some("x".into());
    let err = Config::merge(&a, FileConfig::default()).unwrap_err();
    assert!(err.to_string().starts_with("--table:"), "{err}");
}

#[test]
fn feed_flag_overrides_keys_of_a_file_feed() {
    let text = "[[feed]]\nname = \"events\"\ntable = \"events\"\nfilter_columns = [\"room_id\"]\n";
    let mut a = args(None);
    a.feed.name = Some("events".into());
    a.feed.watermark = Some("SELECT max(stream_id) FROM stream_positions".into());
    let config = Config::merge(&a, file(text).unwrap()).unwrap();
    let feed = &config.feeds[0];
    assert_eq!(
        feed.watermark.as_deref(),
        Some("SELECT max(stream_id) FROM stream_positions")
    );
    assert_eq!(feed.filter_columns, ["room_id"]);
    assert_eq!(feed.table, "events");

    a.feed.name = Some("evnts".into());
    let err = Config::merge(&a, file(text).unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "--feed: no feed `evnts` to apply the per-feed flags to; feeds of the config file: events; \
         give --table to declare a new feed"
    );
}

#[test]
fn metrics_listen_comes_from_the_file_or_the_flag() {
    let config = Config::merge(&args(Some("a")), FileConfig::default()).unwrap();
    assert_eq!(config.metrics_listen, None);
    let text = "metrics_listen = \"127.0.0.1:9090\"\n";
    let config = Config::merge(&args(Some("a")), file(text).unwrap()).unwrap();
    assert_eq!(
        config.metrics_listen,
        Some("127.0.0.1:9090".parse().unwrap())
    );
    let mut a = args(Some("a"));
    a.server.metrics_listen = Some("10.0.0.1:9100".parse().unwrap());
    let config = Config::merge(&a, file(text).unwrap()).unwrap();
    assert_eq!(
        config.metrics_listen,
        Some("10.0.0.1:9100".parse().unwrap())
    );
    a.server.listen = a.server.metrics_listen;
    let err = Config::merge(&a, FileConfig::default()).unwrap_err();
    assert_eq!(err.to_string(), "metrics_listen: must differ from `listen`");

    let cli =
        Cli::try_parse_from(["rowcast", "serve", "--metrics-listen", "127.0.0.1:9090"]).unwrap();
    let Command::Serve(flags) = cli.command else {
        panic!("not serve")
    };
    assert_eq!(
        flags.server.metrics_listen,
        Some("127.0.0.1:9090".parse().unwrap())
    );
}

#[test]
fn the_example_file_is_valid() {
    let file = file(include_str!("../../../rowcast.example.toml")).unwrap();
    let config = Config::merge(&args(None), file).unwrap();
    assert_eq!(config.header_timeout, Duration::from_secs(10));
    assert_eq!(
        config.feeds[0].tuning.notify_window,
        Duration::from_millis(10)
    );
}

#[test]
fn select_loses_its_trailing_semicolon() {
    let file = file("[[feed]]\ntable = \"a\"\nselect = \"SELECT * FROM a;\"\n").unwrap();
    let config = Config::merge(&args(None), file).unwrap();
    assert_eq!(
        config.feeds[0].read_from,
        Some(ReadFrom::Select("SELECT * FROM a".into()))
    );
}

#[test]
fn the_bus_comes_from_the_flag_or_the_cluster_table() {
    let config = Config::merge(&args(Some("a")), FileConfig::default()).unwrap();
    assert_eq!(config.cluster, None);
    let text = "[cluster]\nbus = \"redis://127.0.0.1:6379\"\nprefix = \"staging\"\n";
    let config = Config::merge(&args(Some("a")), file(text).unwrap()).unwrap();
    assert_eq!(
        config.cluster,
        Some(Cluster {
            bus: "redis://127.0.0.1:6379".into(),
            prefix: "staging".into()
        })
    );
    let mut a = args(Some("a"));
    a.bus = Some("nats://127.0.0.1:4222".into());
    let config = Config::merge(&a, file(text).unwrap()).unwrap();
    let cluster = config.cluster.unwrap();
    assert_eq!(
        (cluster.bus.as_str(), cluster.prefix.as_str()),
        ("nats://127.0.0.1:4222", "staging")
    );
    let config = Config::merge(&a, FileConfig::default()).unwrap();
    assert_eq!(config.cluster.unwrap().prefix, "rowcast");

    let cli = Cli::try_parse_from(["rowcast", "serve", "--bus", "rediss://h:6380"]).unwrap();
    let Command::Serve(flags) = cli.command else {
        panic!("not serve")
    };
    assert_eq!(flags.bus.as_deref(), Some("rediss://h:6380"));
}

#[test]
fn a_bad_bus_is_told_which_key_and_what_to_write() {
    let mut a = args(Some("a"));
    a.bus = Some("amqp://user:secret@h:5672".into());
    let err = Config::merge(&a, FileConfig::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cluster.bus: `amqp://user:***@h:5672` is not a bus URL; use redis://host:6379, rediss://… (TLS), nats://host:4222 or tls://… (NATS over TLS)"
    );
    a.bus = Some("natss://s3cret@h:4222".into());
    let err = Config::merge(&a, FileConfig::default()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cluster.bus: `natss://***@h:4222` is not a bus URL"),
        "{err}"
    );
    let text = "[cluster]\nbus = \"redis://h\"\nprefix = \"a b\"\n";
    let err = Config::merge(&args(Some("a")), file(text).unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cluster.prefix: must be letters, digits, `_` or `-` (it names Redis streams and NATS subjects)"
    );
    let text = "[cluster]\nprefix = \"x\"\n";
    let err = Config::merge(&args(Some("a")), file(text).unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cluster.prefix: needs `cluster.bus` (or --bus)"
    );
    let err = file("[cluster]\nbuss = \"redis://h\"\n").unwrap_err();
    assert!(err.to_string().contains("unknown field `buss`"), "{err}");
}

#[test]
fn topic_feeds_take_their_keys_and_need_no_database() {
    let text = r#"
        [[feed]]
        source = "redis-stream"
        url = "redis://127.0.0.1:6379"
        stream = "orders"
        filter_columns = ["room_id"]
        [[feed]]
        name = "chat"
        source = "redis-channel"
        url = "rediss://:pw@cache:6380"
        channel = "laravel_database_private-chat.*"
        format = "laravel"
        [[feed]]
        name = "pay"
        source = "nats"
        url = "tls://nats:4222"
        subject = "payments.>"
    "#;
    let config = Config::merge(&ServeArgs::default(), file(text).unwrap()).unwrap();
    assert_eq!(config.database_url, None);
    let topics: Vec<_> = config
        .feeds
        .iter()
        .map(|f| f.topic.clone().unwrap())
        .collect();
    assert_eq!(config.feeds[0].name, "orders", "named after its stream");
    assert_eq!(
        topics[0].kind,
        TopicKind::RedisStream {
            stream: "orders".into(),
            field: "data".into()
        }
    );
    assert_eq!(topics[0].format, Format::Json);
    assert_eq!(topics[1].format, Format::Laravel);
    assert_eq!(topics[1].kind.source(), "redis-channel");
    assert_eq!(topics[2].kind.name(), "payments.>");
    assert_eq!(config.feeds[2].mode, Mode::Append);
}

#[test]
fn a_channel_name_that_is_no_feed_name_needs_a_name() {
    let text = "[[feed]]\nsource = \"redis-channel\"\nurl = \"redis://h\"\nchannel = \"a.b\"\n";
    let err = Config::merge(&ServeArgs::default(), file(text).unwrap()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("feed `a.b`: `name`: use letters"),
        "{err}"
    );
    let text = "[[feed]]\nsource = \"nats\"\nurl = \"redis://h\"\nsubject = \"a\"\n";
    let err = Config::merge(&ServeArgs::default(), file(text).unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "feed `a`: `url`: `redis://h` is not a NATS URL; use nats://host:4222, or tls://… for TLS"
    );
}

#[test]
fn presence_is_off_unless_asked_and_its_timeout_must_leave_room_for_a_silence() {
    let merge = |text: &str| Config::merge(&args(None), file(text).unwrap());
    let config = merge("[[feed]]\ntable = \"m\"\n").unwrap();
    assert_eq!(config.feeds[0].presence, None);
    let config =
        merge("[[feed]]\ntable = \"m\"\npresence = true\npresence_meta = [\"name\"]\n").unwrap();
    let feed = &config.feeds[0];
    assert_eq!(feed.presence.as_ref().unwrap().meta, ["name"]);
    assert_eq!(feed.tuning.presence_grace, Duration::from_secs(5));
    // 30 s, less 15 s of keep-alive, 5 s of grace and the kernel's 0.5 s.
    assert_eq!(
        feed.tuning.presence_silence(config.keep_alive),
        Some(Duration::from_millis(9500))
    );
    let err = merge("[[feed]]\ntable = \"m\"\npresence_meta = [\"name\"]\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "feed `m`: `presence_meta`: applies to feeds with `presence = true` only"
    );
    let err =
        merge("keep_alive = \"25s\"\n[[feed]]\ntable = \"m\"\npresence = true\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "feed `m`: `presence_timeout`: must be at least keep_alive (25s) + presence_grace (5s) + 1.5s = 31s 500ms: a vanished client is found by a keep-alive that gets no answer"
    );
}
