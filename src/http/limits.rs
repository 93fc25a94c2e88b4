//! Limits on open streams per token subject, per client address and in
//! all, so one abusive client cannot hold every connection and streams
//! always leave room for other requests. A stream holds a [`Slot`] until it
//! ends.

use super::error::Error;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open streams per key, with a cap.
#[derive(Debug, Default)]
pub struct Limits {
    /// Most streams one token subject may hold (0: no limit).
    pub per_subject: usize,
    /// Most streams one client address may hold (0: no limit).
    pub per_ip: usize,
    /// Most streams the server holds (0: no limit).
    pub total: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// A stream's place under the limits, given back when it is dropped.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<Limits>,
    keys: Vec<String>,
}

impl Limits {
    /// Limits of `per_subject`, `per_ip` and `total` open streams (0: no
    /// limit).
    pub fn new(per_subject: usize, per_ip: usize, total: usize) -> Limits {
        Limits {
            per_subject,
            per_ip,
            total,
            open: Mutex::default(),
        }
    }

    /// The most streams `max_clients` connections may carry: all but a
    /// reserve (5 %, from 1 to 256) kept for requests that are not streams,
    /// so that `/healthz` or a poll always finds a connection.
    pub fn streams_within(max_clients: usize) -> usize {
        max_clients
            .saturating_sub((max_clients / 20).clamp(1, 256))
            .max(1)
    }

    /// Takes a slot for a stream from `ip` with token subject `subject`, or
    /// refuses with 429.
    pub fn take(self: &Arc<Self>, ip: IpAddr, subject: Option<&str>) -> Result<Slot, Error> {
        let mut wanted = Vec::new();
        if self.total > 0 {
            wanted.push(("all".to_owned(), self.total, "server"));
        }
        if self.per_ip > 0 {
            wanted.push((format!("ip:{ip}"), self.per_ip, "client address"));
        }
        if let (Some(subject), true) = (subject, self.per_subject > 0) {
            wanted.push((format!("sub:{subject}"), self.per_subject, "token subject"));
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        for (key, max, what) in &wanted {
            if open.get(key).copied().unwrap_or(0) >= *max {
                return Err(Error::TooManyStreams(format!(
                    "this {what} already has {max} open streams, the most allowed"
                )));
            }
        }
        for (key, _, _) in &wanted {
            *open.entry(key.clone()).or_default() += 1;
        }
        Ok(Slot {
            limits: self.clone(),
            keys: wanted.into_iter().map(|(k, _, _)| k).collect(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        for key in &self.keys {
            if let Some(n) = open.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    open.remove(key);
                }
            }
        }
    }
}
