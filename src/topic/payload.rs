//! Messages as rows: a Redis or NATS message's payload, checked to be
//! JSON, becomes the row a feed frames, with its filter fields read out as
//! text the way a database renders filter columns. Pure: no I/O.

use crate::config::Format;
use crate::source::Row;
use serde_json::Value;

/// Why a message makes no event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    #[error("the payload is not JSON: {0}")]
    NotJson(String),
    #[error("the payload is not a Laravel broadcast: {0}")]
    NotBroadcast(&'static str),
}

/// How one feed's messages become rows.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// How a payload becomes an event.
    pub format: Format,
    /// The top-level fields (of `data`, for Laravel) clients may filter
    /// on, in the order a row's filters hold them.
    pub filter_columns: Vec<String>,
}

impl Decoder {
    /// The row of a message whose payload is `body`, at cursor `id`.
    pub fn row(&self, id: i128, body: &[u8]) -> Result<Row, Skip> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| Skip::NotJson(e.to_string()))?;
        match self.format {
            // Valid JSON: a raw line break can only be whitespace.
            Format::Json => Ok(self.made(id, &value, one_line(body)?, None)),
            Format::Laravel => self.broadcast(id, value),
        }
    }

    /// The row of a Redis stream entry of `fields` (name, value pairs): the
    /// JSON of field `field` when it holds JSON, else the fields as a JSON
    /// object of strings.
    pub fn entry(&self, id: i128, fields: &[(Vec<u8>, Vec<u8>)], field: &str) -> Result<Row, Skip> {
        let named = fields.iter().find(|(name, _)| name == field.as_bytes());
        if let Some((_, value)) = named {
            match self.row(id, value) {
                Err(Skip::NotJson(_)) => {}
                made => return made,
            }
        }
        let mut object = serde_json::Map::with_capacity(fields.len());
        for (name, value) in fields {
            object.insert(
                String::from_utf8_lossy(name).into_owned(),
                Value::String(String::from_utf8_lossy(value).into_owned()),
            );
        }
        let value = Value::Object(object);
        match self.format {
            Format::Json => {
                let text = value.to_string();
                Ok(self.made(id, &value, text, None))
            }
            Format::Laravel => self.broadcast(id, value),
        }
    }

    /// `{"event":…,"data":{…},"socket":…}`: named `event`, carrying `data`.
    fn broadcast(&self, id: i128, value: Value) -> Result<Row, Skip> {
        let Value::Object(mut broadcast) = value else {
            return Err(Skip::NotBroadcast("not an object"));
        };
        let event = match broadcast.remove("event") {
            Some(Value::String(event))
                if !event.is_empty() && crate::sse::is_field_value(&event) =>
            {
                event
            }
            Some(Value::String(_)) => {
                return Err(Skip::NotBroadcast("`event` is empty or holds a line break"))
            }
            _ => return Err(Skip::NotBroadcast("no `event` string")),
        };
        let data = broadcast.remove("data").unwrap_or(Value::Null);
        let text = data.to_string();
        Ok(self.made(id, &data, text, Some(event)))
    }

    fn made(&self, id: i128, value: &Value, json: String, event: Option<String>) -> Row {
        Row {
            id,
            filters: self
                .filter_columns
                .iter()
                .map(|field| value.get(field).and_then(as_text))
                .collect(),
            json: Some(json),
            unless_filters: None,
            event,
        }
    }
}

/// A filter field's value as text, as databases cast a column: numbers as
/// written, strings without quotes, booleans `true`/`false`; `null` and a
/// missing field match no filter.
fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

/// The payload as one line of text.
fn one_line(body: &[u8]) -> Result<String, Skip> {
    let text = std::str::from_utf8(body).map_err(|e| Skip::NotJson(e.to_string()))?;
    Ok(crate::sse::one_line(text.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder(format: Format) -> Decoder {
        Decoder {
            format,
            filter_columns: vec!["room_id".into(), "kind".into()],
        }
    }

    #[test]
    fn json_is_sent_as_written_with_filters_as_text() {
        let row = decoder(Format::Json)
            .row(7, b"{\"room_id\":5,\n \"kind\":\"chat\",\"n\":[1]}")
            .unwrap();
        assert_eq!(row.id, 7);
        assert_eq!(
            row.json.as_deref(),
            Some("{\"room_id\":5,  \"kind\":\"chat\",\"n\":[1]}")
        );
        assert_eq!(row.filters, vec![Some("5".into()), Some("chat".into())]);
        assert_eq!(row.event, None);
        let row = decoder(Format::Json)
            .row(8, b"{\"room_id\":null,\"kind\":true}")
            .unwrap();
        assert_eq!(row.filters, vec![None, Some("true".into())]);
        // A JSON scalar is JSON: sent, matching no filter.
        let row = decoder(Format::Json).row(9, b"\"hi\"").unwrap();
        assert_eq!(row.json.as_deref(), Some("\"hi\""));
        assert_eq!(row.filters, vec![None, None]);
    }

    #[test]
    fn what_is_not_json_is_skipped() {
        for body in [&b"hello"[..], b"{\"a\":", b"", b"\xff\xfe"] {
            assert!(
                matches!(decoder(Format::Json).row(1, body), Err(Skip::NotJson(_))),
                "{body:?}"
            );
        }
    }

    #[test]
    fn a_laravel_broadcast_is_named_by_its_event_and_carries_its_data() {
        let body = br#"{"event":"App\\Events\\MessageSent","data":{"message":{"id":1,"room_id":5,"body":"hi"},"room_id":5},"socket":null}"#;
        let row = decoder(Format::Laravel).row(3, body).unwrap();
        assert_eq!(row.event.as_deref(), Some("App\\Events\\MessageSent"));
        let data: Value = serde_json::from_str(row.json.as_deref().unwrap()).unwrap();
        assert_eq!(
            data,
            serde_json::json!({"message":{"id":1,"room_id":5,"body":"hi"},"room_id":5})
        );
        assert_eq!(row.filters, vec![Some("5".into()), None]);
        for (body, why) in [
            (&br#"[1]"#[..], "not an object"),
            (br#"{"data":{}}"#, "no `event` string"),
            (
                br#"{"event":"a\nb","data":{}}"#,
                "`event` is empty or holds a line break",
            ),
        ] {
            assert_eq!(
                decoder(Format::Laravel).row(1, body),
                Err(Skip::NotBroadcast(why))
            );
        }
    }

    #[test]
    fn a_stream_entry_sends_its_json_field_or_else_its_fields() {
        let field = |k: &str, v: &str| (k.as_bytes().to_vec(), v.as_bytes().to_vec());
        let d = decoder(Format::Json);
        let row = d
            .entry(
                1,
                &[field("data", r#"{"room_id":5}"#), field("x", "y")],
                "data",
            )
            .unwrap();
        assert_eq!(row.json.as_deref(), Some(r#"{"room_id":5}"#));
        assert_eq!(row.filters[0].as_deref(), Some("5"));
        let row = d
            .entry(
                2,
                &[field("room_id", "6"), field("data", "not json")],
                "data",
            )
            .unwrap();
        let json: Value = serde_json::from_str(row.json.as_deref().unwrap()).unwrap();
        assert_eq!(json, serde_json::json!({"room_id":"6","data":"not json"}));
        assert_eq!(row.filters[0].as_deref(), Some("6"));
        let row = d.entry(3, &[field("payload", "[1]")], "payload").unwrap();
        assert_eq!(row.json.as_deref(), Some("[1]"));
    }
}
