//! A short-polling client, as a page or a mobile app polls
//! `GET /api/messages?after=…`: one request a second with its cursor, then
//! the cursor of the answer for the next one, on one kept connection.

use crate::http::Connection;
use anyhow::{anyhow, bail, Context as _};
use serde::Deserialize;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// How long a request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct PollClient {
    pub conn: Connection,
    /// The request's path before the cursor, and after it.
    pub path: Arc<(String, String)>,
    /// The cursor of the first request.
    pub start: i64,
}

/// One answered request.
pub struct Answered {
    /// When it was sent, from the start of the run.
    pub sent: Duration,
    /// From sending the request to the end of the answer, in µs.
    pub took_us: i64,
    /// Whether the answer had rows.
    pub rows: bool,
}

/// What a client did.
pub struct Log {
    /// The cursor of its first request.
    pub start: i64,
    /// The cursor of its last answer: what it would send next.
    pub cursor: i64,
    /// The ids of the rows it got, in the order it got them.
    pub ids: Vec<i64>,
    pub answered: Vec<Answered>,
    /// Requests that failed or timed out, and the last reason.
    pub failures: usize,
    pub last_failure: Option<String>,
}

#[derive(Deserialize)]
struct Answer {
    rows: Vec<RowId>,
    cursor: String,
}

#[derive(Deserialize)]
struct RowId {
    id: i64,
}

impl PollClient {
    /// Polls once a second from `run_start + first` until `stop`; a request
    /// under way when `stop` comes is finished.
    pub async fn run(
        mut self,
        run_start: Instant,
        first: Duration,
        stop: CancellationToken,
    ) -> Log {
        let mut log = Log {
            start: self.start,
            cursor: self.start,
            ids: Vec::new(),
            answered: Vec::new(),
            failures: 0,
            last_failure: None,
        };
        let mut tick = tokio::time::interval_at((run_start + first).into(), Duration::from_secs(1));
        // A slow answer delays the next request, as a client's timer would.
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let path = format!("{}{}{}", self.path.0, log.cursor, self.path.1);
            let sent = Instant::now();
            let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, self.request(&path)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(anyhow!("no answer within {REQUEST_TIMEOUT:?}")),
            };
            let took = sent.elapsed();
            match outcome {
                Ok(answer) => {
                    log.answered.push(Answered {
                        sent: sent - run_start,
                        took_us: took.as_micros() as i64,
                        rows: !answer.rows.is_empty(),
                    });
                    log.ids.extend(answer.rows.iter().map(|r| r.id));
                    log.cursor = answer.cursor.parse().unwrap_or(log.cursor);
                }
                Err(err) => {
                    log.failures += 1;
                    log.last_failure = Some(format!("{err:#}"));
                    // Whatever the connection was in the middle of, start anew.
                    self.conn.close();
                }
            }
        }
        log
    }

    async fn request(&mut self, path: &str) -> anyhow::Result<Answer> {
        let response = self.conn.get(path).await?;
        if response.status != 200 {
            bail!(
                "answered {}: {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            );
        }
        let answer: Answer =
            serde_json::from_slice(&response.body).context("an answer is not rows and a cursor")?;
        answer
            .cursor
            .parse::<i64>()
            .with_context(|| format!("cursor {:?} is not a row id", answer.cursor))?;
        Ok(answer)
    }
}

impl Log {
    /// What is wrong with the rows this client got, if anything: they must
    /// come in strictly increasing id order, and be every row of `written`
    /// (all ids of the table, ascending) after its first cursor up to its
    /// last one, and no other.
    pub fn check(&self, written: &[i64]) -> Option<String> {
        let mut problems = Vec::new();
        let mut previous = self.start;
        let mut disorder = 0;
        let mut first_disorder = None;
        for &id in &self.ids {
            if id <= previous {
                disorder += 1;
                first_disorder.get_or_insert((previous, id));
            }
            previous = id;
        }
        if let Some((before, id)) = first_disorder {
            problems.push(format!(
                "{disorder} rows out of order or repeated (first: id {id} after {before})"
            ));
        }
        let seen: HashSet<i64> = self.ids.iter().copied().collect();
        let due: Vec<i64> = written
            .iter()
            .copied()
            .filter(|&id| id > self.start && id <= self.cursor)
            .collect();
        let missing: Vec<i64> = due
            .iter()
            .copied()
            .filter(|id| !seen.contains(id))
            .collect();
        if let Some(first) = missing.first() {
            problems.push(format!(
                "{} of the {} rows up to its cursor {} missing (first: id {first})",
                missing.len(),
                due.len(),
                self.cursor
            ));
        }
        let due: HashSet<i64> = due.into_iter().collect();
        let stray = seen.iter().filter(|id| !due.contains(id)).count();
        if stray > 0 {
            problems.push(format!(
                "{stray} rows not written, before its first cursor or after its last one"
            ));
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::Log;

    fn log(start: i64, cursor: i64, ids: &[i64]) -> Log {
        Log {
            start,
            cursor,
            ids: ids.to_vec(),
            answered: Vec::new(),
            failures: 0,
            last_failure: None,
        }
    }

    const WRITTEN: [i64; 6] = [1, 2, 3, 4, 5, 6];

    #[test]
    fn every_row_up_to_the_cursor_in_order_passes() {
        assert_eq!(log(1, 5, &[2, 3, 4, 5]).check(&WRITTEN), None);
        assert_eq!(log(1, 1, &[]).check(&WRITTEN), None);
    }

    #[test]
    fn a_missing_row_is_reported() {
        let problem = log(1, 5, &[2, 4, 5]).check(&WRITTEN).unwrap();
        assert!(problem.contains("1 of the 4 rows up to its cursor 5 missing (first: id 3)"));
    }

    #[test]
    fn a_repeated_or_reordered_row_is_reported() {
        let problem = log(1, 5, &[2, 3, 3, 4, 5]).check(&WRITTEN).unwrap();
        assert!(problem.contains("first: id 3 after 3"), "{problem}");
        let problem = log(1, 5, &[2, 4, 3, 5]).check(&WRITTEN).unwrap();
        assert!(problem.contains("first: id 3 after 4"), "{problem}");
    }

    #[test]
    fn a_row_past_the_cursor_or_never_written_is_reported() {
        let problem = log(1, 3, &[2, 3, 4]).check(&WRITTEN).unwrap();
        assert!(problem.contains("1 rows not written"), "{problem}");
        let problem = log(1, 9, &[2, 3, 4, 5, 6, 9]).check(&WRITTEN).unwrap();
        assert!(problem.contains("1 rows not written"), "{problem}");
    }
}
