//! Presence across instances: each instance says on the bus which members
//! it has (a join or a leave as it happens, that it is alive every
//! [`HEARTBEAT`], and its whole list every [`FULL_EVERY`] heartbeats or
//! when another instance asks), and takes what the others say, so that
//! every instance shows the same members. An instance not heard from for
//! [`TTL`] is taken for dead and its members leave, unless another has
//! them. The bus keeps none of it: an instance that starts, or hears again
//! after its connection was down, asks the others for their lists, and a
//! message lost otherwise is made good by the next whole list.

use super::{Heard, Presence, Said, Scope};
use crate::bus::Bus;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// How often an instance says its whole list.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long an instance may stay silent before its members leave.
pub const TTL: Duration = Duration::from_secs(3);

/// Heartbeats between two whole lists.
pub const FULL_EVERY: u32 = 10;

/// What one instance says.
#[derive(Debug, Serialize, Deserialize)]
struct Message {
    /// Who says it.
    instance: u64,
    /// It may have missed what others said, and would have their whole
    /// lists.
    #[serde(default)]
    ask: bool,
    #[serde(flatten)]
    news: News,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum News {
    /// Members it added.
    Join { members: Vec<Member> },
    /// A member it no longer has.
    Leave { scope: Scope, key: String },
    /// Every member it has: the others drop what is not in it.
    All { members: Vec<Member> },
    /// It is alive.
    Alive,
}

#[derive(Debug, Serialize, Deserialize)]
struct Member {
    scope: Scope,
    key: String,
    meta: serde_json::Value,
    /// When it joined, in milliseconds since the epoch.
    since_ms: u64,
    connections: usize,
}

impl From<Heard> for Member {
    fn from(heard: Heard) -> Member {
        Member {
            scope: heard.scope,
            key: heard.key,
            meta: heard.meta,
            since_ms: (heard.since.duration_since(UNIX_EPOCH)).map_or(0, |d| d.as_millis() as u64),
            connections: heard.connections,
        }
    }
}

impl From<Member> for Heard {
    fn from(member: Member) -> Heard {
        Heard {
            scope: member.scope,
            key: member.key,
            meta: member.meta,
            since: UNIX_EPOCH + Duration::from_millis(member.since_ms),
            connections: member.connections,
        }
    }
}

/// Shares `presence` of `feed` with the other instances on `bus`, until
/// `shutdown`.
pub async fn share(presence: Arc<Presence>, bus: Bus, feed: String, shutdown: CancellationToken) {
    let Some(mut said) = presence.share() else {
        return;
    };
    // Random per process: tells this instance's messages from the others'.
    let instance = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let name = format!("presence-{feed}");
    let mut listener = bus.listen(&name);
    let mut beat = tokio::time::interval(HEARTBEAT);
    let mut beats = 0u32;
    let mut failing = false;
    // Whether to ask the others for their lists (at start, and after the
    // listener missed messages), and whether one asked for ours.
    let (mut ask, mut asked) = (true, false);
    loop {
        let news = tokio::select! {
            said = said.recv() => match said {
                Some(said) => Some(news_of(said)),
                None => return,
            },
            _ = beat.tick() => {
                presence.forget_silent(TTL);
                beats = beats.wrapping_add(1);
                if std::mem::take(&mut asked) || beats % FULL_EVERY == 1 {
                    let members = presence.here().into_iter().map(Member::from).collect();
                    Some(News::All { members })
                } else {
                    Some(News::Alive)
                }
            }
            heard = listener.next() => {
                match heard {
                    Ok(bytes) => {
                        let (theirs, ours) = take(&presence, instance, &bytes);
                        asked |= theirs;
                        ask |= ours;
                    }
                    Err(err) => {
                        if !failing {
                            tracing::warn!(feed = %feed, cause = %err, "cannot hear other instances' presence; retrying");
                        }
                        failing = true;
                        ask = true;
                        tokio::select! {
                            _ = tokio::time::sleep(HEARTBEAT) => {}
                            _ = shutdown.cancelled() => return,
                        }
                    }
                }
                None
            }
            _ = shutdown.cancelled() => return,
        };
        if let Some(news) = news {
            let message = Message {
                instance,
                ask: std::mem::take(&mut ask),
                news,
            };
            let bytes = Bytes::from(serde_json::to_vec(&message).expect("presence encodes"));
            match bus.say(&name, bytes).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!(feed = %feed, "presence is shared with other instances again");
                }
                Ok(()) => {}
                Err(err) => {
                    if !failing {
                        tracing::warn!(feed = %feed, cause = %err, "cannot tell other instances this one's presence; retrying");
                    }
                    failing = true;
                    // What was not said is in the next whole list.
                    asked = true;
                }
            }
        }
    }
}

fn news_of(said: Said) -> News {
    match said {
        Said::Join {
            scope,
            key,
            meta,
            since,
        } => News::Join {
            members: vec![Member::from(Heard {
                scope,
                key,
                meta,
                since,
                connections: 1,
            })],
        },
        Said::Leave { scope, key } => News::Leave { scope, key },
    }
}

/// Takes one message another instance said. Whether it asks for this
/// instance's whole list (it asked, or it is new here and needs it), and
/// whether this one needs its list (it is new here, and did not give it).
fn take(presence: &Presence, me: u64, bytes: &[u8]) -> (bool, bool) {
    let message: Message = match serde_json::from_slice(bytes) {
        Ok(message) => message,
        Err(err) => {
            tracing::debug!(cause = %err, "passed over a presence message that is not rowcast's");
            return (false, false);
        }
    };
    if message.instance == me {
        return (false, false);
    }
    let new = !presence.knows(message.instance);
    let whole = matches!(message.news, News::All { .. });
    let heard = |members: Vec<Member>| members.into_iter().map(Heard::from).collect();
    match message.news {
        News::Join { members } => presence.heard(message.instance, heard(members), false),
        News::All { members } => presence.heard(message.instance, heard(members), true),
        News::Leave { scope, key } => presence.heard_leave(message.instance, &scope, &key),
        News::Alive => presence.heard(message.instance, Vec::new(), false),
    }
    (message.ask || new, new && !whole)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::Filter;

    #[test]
    fn messages_read_back_as_they_were_said() {
        let mut filter = Filter::default();
        filter.add(0, "5".into());
        let member = Member {
            scope: Scope::of(&filter),
            key: "ann".into(),
            meta: serde_json::json!({"name": "Ann"}),
            since_ms: 1_764_000_000_000,
            connections: 2,
        };
        let said = [
            Message {
                instance: 7,
                ask: true,
                news: News::Alive,
            },
            Message {
                instance: 7,
                ask: false,
                news: News::All {
                    members: vec![member],
                },
            },
        ];
        let text: Vec<String> = said
            .iter()
            .map(|m| serde_json::to_string(m).unwrap())
            .collect();
        assert_eq!(text[0], r#"{"instance":7,"ask":true,"op":"alive"}"#);
        assert_eq!(
            text[1],
            r#"{"instance":7,"ask":false,"op":"all","members":[{"scope":[[0,["5"]]],"key":"ann","meta":{"name":"Ann"},"since_ms":1764000000000,"connections":2}]}"#
        );
        for line in &text {
            let back: Message = serde_json::from_str(line).unwrap();
            assert_eq!(&serde_json::to_string(&back).unwrap(), line);
        }
    }
}
