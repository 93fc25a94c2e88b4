//! What other instances say they have: their members join and leave the
//! scopes here as they do there, and a key any instance has stays a
//! member. An instance that goes silent is forgotten, with its members.

use super::{Presence, Room, Scope, State};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// Another instance, as this one heard it.
pub(super) struct Instance {
    heard: Instant,
    members: HashSet<(Scope, Arc<str>)>,
}

/// One instance's join or leave, for the others.
#[derive(Debug, Clone)]
pub enum Said {
    Join {
        scope: Scope,
        key: String,
        meta: serde_json::Value,
        since: SystemTime,
    },
    Leave {
        scope: Scope,
        key: String,
    },
}

/// A member as another instance has it.
#[derive(Debug, Clone)]
pub struct Heard {
    pub scope: Scope,
    pub key: String,
    pub meta: serde_json::Value,
    pub since: SystemTime,
    /// Its streams there.
    pub connections: usize,
}

impl Presence {
    /// Whether `instance` has been heard from (and not forgotten since).
    pub fn knows(&self, instance: u64) -> bool {
        self.state().instances.contains_key(&instance)
    }

    /// Takes what `instance` says it has: its whole list when `whole`,
    /// else members it adds.
    pub fn heard(&self, instance: u64, members: Vec<Heard>, whole: bool) {
        let mut state = self.state();
        let State {
            rooms,
            latest,
            instances,
            ..
        } = &mut *state;
        let known = instances.entry(instance).or_insert_with(|| Instance {
            heard: Instant::now(),
            members: Default::default(),
        });
        known.heard = Instant::now();
        let listed: HashSet<(Scope, Arc<str>)> = members
            .iter()
            .map(|m| (m.scope.clone(), Arc::from(m.key.as_str())))
            .collect();
        if whole {
            let gone: Vec<_> = known.members.difference(&listed).cloned().collect();
            for (scope, key) in gone {
                known.members.remove(&(scope.clone(), key.clone()));
                drop_remote(rooms, latest, &scope, &key, instance, &self.leaves);
            }
        }
        for heard in members {
            let room = Room::of(rooms, &heard.scope, *latest);
            let (key, member) = room.member(&heard.key, heard.since, &heard.meta);
            let was_anywhere = member.is_anywhere();
            member.remote.insert(instance, heard.connections);
            known.members.insert((heard.scope, key.clone()));
            if !was_anywhere {
                room.joined(&key, latest, &self.joins);
            }
        }
    }

    /// Takes `instance`'s word that `key` left `scope` there.
    pub fn heard_leave(&self, instance: u64, scope: &Scope, key: &str) {
        let mut state = self.state();
        let State {
            rooms,
            latest,
            instances,
            ..
        } = &mut *state;
        let key: Arc<str> = Arc::from(key);
        if let Some(known) = instances.get_mut(&instance) {
            known.heard = Instant::now();
            known.members.remove(&(scope.clone(), key.clone()));
        }
        drop_remote(rooms, latest, scope, &key, instance, &self.leaves);
    }

    /// Forgets the instances not heard from for `ttl`: their members leave
    /// unless another instance has them.
    pub fn forget_silent(&self, ttl: Duration) {
        let mut state = self.state();
        let State {
            rooms,
            latest,
            instances,
            ..
        } = &mut *state;
        let silent: Vec<u64> = (instances.iter())
            .filter(|(_, known)| known.heard.elapsed() >= ttl)
            .map(|(id, _)| *id)
            .collect();
        for instance in silent {
            let Some(known) = instances.remove(&instance) else {
                continue;
            };
            tracing::info!(
                instance,
                members = known.members.len(),
                "an instance sharing presence went silent: its members leave"
            );
            for (scope, key) in known.members {
                drop_remote(rooms, latest, &scope, &key, instance, &self.leaves);
            }
        }
    }
}

/// Takes `instance`'s streams of `key` out of `scope`: a leave when no
/// instance has the key any more.
fn drop_remote(
    rooms: &mut HashMap<Scope, Room>,
    latest: &mut u64,
    scope: &Scope,
    key: &Arc<str>,
    instance: u64,
    leaves: &AtomicU64,
) {
    let Some(room) = rooms.get_mut(scope) else {
        return;
    };
    let Some(member) = room.members.get_mut(key) else {
        return;
    };
    member.remote.remove(&instance);
    room.settle(key, latest, leaves);
    if room.is_unused() {
        rooms.remove(scope);
    }
}
