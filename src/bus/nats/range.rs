//! Catch-up reads of a feed's entries after a key. JetStream looks messages
//! up by sequence, not by header, but a feed's keys grow with its
//! sequences: the first entry after a key is found by halving the span of
//! sequences the stream holds, then the entries are read one by one.

use super::{failed, NatsBus, KEY_HEADER};
use crate::bus::{Entry, Error, Key, Malformed, Position, Stored};
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};

/// How long one request of a catch-up read may take: longer than other
/// requests' bound (a catch-up read makes one request per entry, and one
/// slow answer on a loaded server would send the whole read to the
/// database), under the client's own, so that ours decides. A bus that is
/// down fails at once all the same.
const RANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1900);

/// An entry as the stream holds it.
struct Message {
    seq: u64,
    /// `None` when it has no key of ours.
    key: Option<Key>,
    payload: bytes::Bytes,
}

impl NatsBus {
    /// Up to `count` entries of `feed` after `after` (from the first), in
    /// order.
    pub async fn range(
        &self,
        feed: &str,
        after: Option<Key>,
        count: usize,
    ) -> Result<Vec<Stored>, Error> {
        let subject = self.subject(feed)?;
        let stream = self.stream().await?;
        let info = (self.bounded(RANGE_TIMEOUT, stream.get_info()).await?)
            .map_err(|err| failed("range", err))?;
        let (mut from, mut to) = (info.state.first_sequence, info.state.last_sequence + 1);
        if let Some(after) = after {
            // The first sequence whose next entry of the feed is after `after`.
            while from < to {
                let middle = from + (to - from) / 2;
                match self.next(&stream, &subject, middle).await? {
                    Some(found) if found.key.is_none_or(|key| key <= after) => from = found.seq + 1,
                    _ => to = middle,
                }
            }
        }
        let mut entries = Vec::new();
        while entries.len() < count {
            let Some(found) = self.next(&stream, &subject, from).await? else {
                break;
            };
            from = found.seq + 1;
            entries.push(Stored {
                position: Position::Nats(found.seq),
                entry: match found.key {
                    Some(_) => Entry::decode(&found.payload),
                    None => Err(Malformed(format!("message {} has no key", found.seq))),
                },
            });
        }
        Ok(entries)
    }

    /// The feed's first message at or after `seq`.
    async fn next(
        &self,
        stream: &Stream<()>,
        subject: &str,
        seq: u64,
    ) -> Result<Option<Message>, Error> {
        let get = stream.get_first_raw_message_by_subject(subject, seq);
        match self.bounded(RANGE_TIMEOUT, get).await? {
            Ok(message) => Ok(Some(Message {
                seq: message.sequence,
                key: (message.headers.get(KEY_HEADER)).and_then(|k| k.as_str().parse().ok()),
                payload: message.payload,
            })),
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(err) => Err(failed("range", err)),
        }
    }
}
