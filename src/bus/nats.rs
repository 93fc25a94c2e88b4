//! The bus on NATS JetStream (not built yet: refused at start-up).

use super::{Appended, Error, Key, Position, Stored};
use std::time::Duration;

#[derive(Clone)]
pub struct NatsBus;

impl NatsBus {
    pub async fn new(url: &str, _prefix: &str) -> Result<NatsBus, Error> {
        Err(Error::Url {
            url: crate::source::redact(url),
            problem: "the NATS bus is not available yet; use redis://".to_owned(),
        })
    }

    pub async fn append(&self, _feed: &str, _key: Key, _bytes: &[u8]) -> Result<Appended, Error> {
        unreachable!("never connected")
    }

    pub async fn last(&self, _feed: &str) -> Result<Option<Stored>, Error> {
        unreachable!("never connected")
    }

    pub fn reader(&self, _feed: &str) -> NatsReader {
        NatsReader
    }

    pub async fn ping(&self) -> Result<(), Error> {
        unreachable!("never connected")
    }
}

pub struct NatsReader;

impl NatsReader {
    pub async fn read(&mut self, _after: Position, _wait: Duration) -> Result<Vec<Stored>, Error> {
        unreachable!("never connected")
    }
}
