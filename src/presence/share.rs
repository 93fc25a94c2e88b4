//! Presence across instances: each instance says on the bus which members
//! it has (a join or a leave as it happens, and its whole list every
//! [`HEARTBEAT`]), and takes what the others say, so that every instance
//! shows the same members. An instance not heard from for [`TTL`] is taken
//! for dead and its members leave, unless another has them. The bus keeps
//! none of it: a message lost while a connection is down is made good by
//! the next whole list.

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

/// What one instance says.
#[derive(Debug, Serialize, Deserialize)]
struct Message {
    /// Who says it.
    instance: u64,
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
    let mut failing = false;
    loop {
        let news = tokio::select! {
            said = said.recv() => match said {
                Some(said) => Some(news_of(said)),
                None => return,
            },
            _ = beat.tick() => {
                presence.forget_silent(TTL);
                let members = presence.here().into_iter().map(Member::from).collect();
                Some(News::All { members })
            }
            heard = listener.next() => {
                match heard {
                    Ok(bytes) => take(&presence, instance, &bytes),
                    Err(err) => {
                        if !failing {
                            tracing::warn!(feed = %feed, cause = %err, "cannot hear other instances' presence; retrying");
                        }
                        failing = true;
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
            let message = Message { instance, news };
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

/// Takes one message another instance said.
fn take(presence: &Presence, me: u64, bytes: &[u8]) {
    let message: Message = match serde_json::from_slice(bytes) {
        Ok(message) => message,
        Err(err) => {
            tracing::debug!(cause = %err, "passed over a presence message that is not rowcast's");
            return;
        }
    };
    if message.instance == me {
        return;
    }
    let heard = |members: Vec<Member>| members.into_iter().map(Heard::from).collect();
    match message.news {
        News::Join { members } => presence.heard(message.instance, heard(members), false),
        News::All { members } => presence.heard(message.instance, heard(members), true),
        News::Leave { scope, key } => presence.heard_leave(message.instance, &scope, &key),
    }
}
