//! A feed's presence settings: on or off, the claims members show, and a
//! timeout that the keep-alives and the grace leave room for.

use super::{invalid, Error};
use crate::config::tuning::Tuned;
use crate::config::types::{FeedConfig, PresenceConfig};
use std::time::Duration;

/// The least time a stream's unanswered writes are given before its
/// connection counts as gone: below it, a client on a slow link would
/// flap.
pub const MIN_SILENCE: Duration = Duration::from_secs(1);

/// How much later than its `TCP_USER_TIMEOUT` Linux ends a connection
/// whose writes go unanswered: 0.42–0.45 s, measured on the loopback with
/// timeouts of 1 to 8 s.
const KERNEL_SLACK: Duration = Duration::from_millis(500);

/// The presence of feed `name`, from its `presence` and `presence_meta`.
pub(super) fn resolve(
    name: &str,
    presence: Option<bool>,
    meta: Option<Vec<String>>,
) -> Result<Option<PresenceConfig>, Error> {
    let key = |field: &str| format!("feed `{name}`: `{field}`");
    if presence != Some(true) {
        if meta.is_some() {
            return Err(invalid(
                key("presence_meta"),
                "applies to feeds with `presence = true` only",
            ));
        }
        return Ok(None);
    }
    let meta = meta.unwrap_or_default();
    if let Some(claim) = meta.iter().find(|c| c.trim().is_empty()) {
        return Err(invalid(
            key("presence_meta"),
            format!("`{claim}` is not a claim name"),
        ));
    }
    Ok(Some(PresenceConfig { meta }))
}

impl Tuned {
    /// How long a presence feed's stream may leave its writes unanswered
    /// before its connection counts as gone: what `presence_timeout` has
    /// left after a keep-alive interval, the kernel's slack and the grace.
    /// `None` when that is less than [`MIN_SILENCE`].
    pub fn presence_silence(&self, keep_alive: Duration) -> Option<Duration> {
        let used = keep_alive + KERNEL_SLACK + self.presence_grace;
        (self.presence_timeout.checked_sub(used)).filter(|left| *left >= MIN_SILENCE)
    }
}

/// Checks that each presence feed's timeout can hold with `keep_alive`.
pub(super) fn check_timeouts(feeds: &[FeedConfig], keep_alive: Duration) -> Result<(), Error> {
    for feed in feeds.iter().filter(|f| f.presence.is_some()) {
        if feed.tuning.presence_silence(keep_alive).is_none() {
            let least = keep_alive + feed.tuning.presence_grace + KERNEL_SLACK + MIN_SILENCE;
            return Err(invalid(
                format!("feed `{}`: `presence_timeout`", feed.name),
                format!(
                    "must be at least keep_alive ({}) + presence_grace ({}) + 1.5s = {}: a vanished client is found by a keep-alive that gets no answer",
                    humantime::format_duration(keep_alive),
                    humantime::format_duration(feed.tuning.presence_grace),
                    humantime::format_duration(least),
                ),
            ));
        }
    }
    Ok(())
}
