//! Feeds of Redis and NATS: which keys a feed of each `source` takes, and
//! the [`Topic`] they make. A table-only key on such a feed, or one of its
//! keys on a table feed, is refused by name rather than ignored.

use super::{invalid, Error};
use crate::config::file::FeedFile;
use crate::config::types::{Format, Topic, TopicKind};

/// The values of `source`, as messages list them.
const SOURCES: &str = "table, redis-stream, redis-channel, nats";

/// The keys of a table feed that a feed of a topic has no use for, as the
/// file names them, and whether `file` gives each.
fn table_keys(file: &FeedFile) -> [(&'static str, bool); 15] {
    [
        ("table", file.table.is_some()),
        ("schema", file.schema.is_some()),
        ("id_column", file.id_column.is_some()),
        ("columns", file.columns.is_some()),
        ("where", file.condition.is_some()),
        ("from", file.from.is_some()),
        ("select", file.select.is_some()),
        ("watermark", file.watermark.is_some()),
        ("mode", file.mode.is_some()),
        ("updated_column", file.updated_column.is_some()),
        ("deleted_column", file.deleted_column.is_some()),
        ("gaps", file.gaps.is_some()),
        ("notify", file.notify.is_some()),
        ("txid_column", file.txid_column.is_some()),
        ("timestamp_column", file.timestamp_column.is_some()),
    ]
}

/// The keys only feeds of a topic take, and whether `file` gives each.
fn topic_keys(file: &FeedFile) -> [(&'static str, bool); 6] {
    [
        ("url", file.url.is_some()),
        ("stream", file.stream.is_some()),
        ("field", file.field.is_some()),
        ("channel", file.channel.is_some()),
        ("subject", file.subject.is_some()),
        ("format", file.format.is_some()),
    ]
}

/// Whether `file` declares a feed of a topic (whatever its other keys).
pub(super) fn is_topic(file: &FeedFile) -> bool {
    file.source.as_deref().is_some_and(|s| s.trim() != "table")
}

/// What a feed as written is called in messages before its name is checked.
pub(super) fn provisional_name(index: usize, file: &FeedFile) -> String {
    (file.name.clone())
        .or_else(|| file.table.clone())
        .or_else(|| file.stream.clone())
        .or_else(|| file.channel.clone())
        .or_else(|| file.subject.clone())
        .unwrap_or_else(|| index.to_string())
}

/// The feed's topic, or `None` for a table feed; `name` names the feed in
/// messages.
pub(super) fn resolve(file: &FeedFile, name: &str) -> Result<Option<Topic>, Error> {
    let key = |field: &str| format!("feed `{name}`: `{field}`");
    let source = file.source.as_deref().map(str::trim);
    let source = match source {
        None | Some("table") => {
            if let Some((field, _)) = topic_keys(file).iter().find(|(_, given)| *given) {
                return Err(invalid(
                    key(field),
                    "applies to feeds of `source = \"redis-stream\"`, `\"redis-channel\"` or `\"nats\"` only",
                ));
            }
            return Ok(None);
        }
        Some(source @ ("redis-stream" | "redis-channel" | "nats")) => source,
        Some(other) => {
            return Err(invalid(
                key("source"),
                format!("`{other}` is not a source; valid: {SOURCES}"),
            ))
        }
    };
    if let Some((field, _)) = table_keys(file).iter().find(|(_, given)| *given) {
        return Err(invalid(
            key(field),
            format!("applies to table feeds only; a `{source}` feed reads no table"),
        ));
    }
    let redis = source != "nats";
    let (schemes, hint) = match redis {
        true => (
            ["redis", "rediss"],
            "redis://host:6379, or rediss://… for TLS",
        ),
        false => (["nats", "tls"], "nats://host:4222, or tls://… for TLS"),
    };
    let url = file
        .url
        .clone()
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| {
            invalid(
                key("url"),
                format!("is required for a `{source}` feed ({hint})"),
            )
        })?;
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    if !scheme.is_some_and(|s| schemes.contains(&s)) {
        return Err(invalid(
            key("url"),
            format!(
                "`{}` is not a {} URL; use {hint}",
                crate::source::redact(&url),
                if redis { "Redis" } else { "NATS" }
            ),
        ));
    }
    // The one key that names what to read, and the others' keys refused.
    let (own, others): (&str, [&str; 3]) = match source {
        "redis-stream" => ("stream", ["channel", "subject", ""]),
        "redis-channel" => ("channel", ["stream", "subject", "field"]),
        _ => ("subject", ["stream", "channel", "field"]),
    };
    let given = |field: &str| topic_keys(file).iter().any(|(k, g)| *k == field && *g);
    if let Some(field) = others.iter().find(|f| !f.is_empty() && given(f)) {
        let owner = match *field {
            "stream" | "field" => "redis-stream",
            "channel" => "redis-channel",
            _ => "nats",
        };
        return Err(invalid(
            key(field),
            format!("applies to `source = \"{owner}\"` feeds only"),
        ));
    }
    let named = match own {
        "stream" => file.stream.clone(),
        "channel" => file.channel.clone(),
        _ => file.subject.clone(),
    };
    let named = named
        .filter(|n| !n.trim().is_empty() && !n.contains(['\0', '\n', '\r', ' ']))
        .ok_or_else(|| {
            invalid(
                key(own),
                format!("is required for a `{source}` feed: one word, with no spaces"),
            )
        })?;
    let format = match file.format.as_deref().map(str::trim) {
        None | Some("json") => Format::Json,
        Some("laravel") => Format::Laravel,
        Some(other) => {
            return Err(invalid(
                key("format"),
                format!("`{other}` is not a format; valid: json, laravel"),
            ))
        }
    };
    let kind = match source {
        "redis-stream" => TopicKind::RedisStream {
            stream: named,
            field: match file.field.clone() {
                Some(field) if field.is_empty() => {
                    return Err(invalid(key("field"), "must not be empty"))
                }
                Some(field) => field,
                None => "data".to_owned(),
            },
        },
        "redis-channel" => TopicKind::RedisChannel { channel: named },
        _ => TopicKind::Nats { subject: named },
    };
    Ok(Some(Topic { kind, url, format }))
}
