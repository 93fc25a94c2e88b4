//! The writes of the fan-out: what each client gets of a pass's batches,
//! as one chunk, and letting go of a stream whose socket cannot take it.

use super::wire::{self, ChunkHeader, Written};
use super::{Back, Direct};
use crate::cursor::Cursor;
use crate::feed::{after, Batch, Event};
use std::io::IoSlice;
use std::sync::Arc;

/// Vectored writes longer than this are copied into one buffer first.
const MAX_PARTS: usize = 64;

/// Writes to a client, as one chunk, what `batches` hold that is new to it
/// and passes its filter. `false` when the task let go of the stream.
pub(super) fn deliver(direct: &mut Direct, batches: &[Arc<Batch>]) -> bool {
    let whole = |batch: &Batch, position: Cursor| {
        !batch.late
            && direct.filter.is_empty()
            && (batch.events.first()).is_some_and(|first| Cursor::At(first.id) > position)
    };
    // The common case, one batch all new to an unfiltered client, is its
    // shared frames as they are.
    if let [batch] = batches {
        if whole(batch, direct.position) {
            let header = ChunkHeader::new(batch.frames.len());
            let mut parts = [
                IoSlice::new(header.as_bytes()),
                IoSlice::new(&batch.frames),
                IoSlice::new(wire::CHUNK_END),
            ];
            let position = direct.position.max(batch.head);
            return write(direct, &mut parts, position);
        }
    }
    let mut frames: Vec<&[u8]> = Vec::new();
    let mut position = direct.position;
    for batch in batches {
        if whole(batch, position) {
            frames.push(&batch.frames);
        } else {
            // Late events have no id and are new to everyone.
            let new = match batch.late {
                true => &batch.events[..],
                false => after(&batch.events, position),
            };
            frames.extend(
                new.iter()
                    .filter(|e| e.passes(&direct.filter))
                    .map(|e| &e.frame[..]),
            );
        }
        if !batch.late {
            position = position.max(batch.head);
        }
    }
    write_frames(direct, &frames, position)
}

/// Writes a joining stream the ring's events after its position that pass
/// its filter. `false` when the task let go of the stream.
pub(super) fn join(direct: &mut Direct, backlog: &[Arc<Event>]) -> bool {
    let frames: Vec<&[u8]> = after(backlog, direct.position)
        .iter()
        .filter(|e| e.passes(&direct.filter))
        .map(|e| &e.frame[..])
        .collect();
    let position = match backlog.last() {
        Some(last) => direct.position.max(Cursor::At(last.id)),
        None => direct.position,
    };
    write_frames(direct, &frames, position)
}

/// Writes `frames` as one chunk, which moves the client to `position`.
fn write_frames(direct: &mut Direct, frames: &[&[u8]], position: Cursor) -> bool {
    if frames.is_empty() {
        direct.position = position;
        return true;
    }
    let len = frames.iter().map(|f| f.len()).sum();
    let header = ChunkHeader::new(len);
    let joined: Vec<u8>;
    let mut parts = Vec::with_capacity(frames.len().min(MAX_PARTS) + 2);
    parts.push(IoSlice::new(header.as_bytes()));
    if frames.len() > MAX_PARTS {
        joined = frames.concat();
        parts.push(IoSlice::new(&joined));
    } else {
        parts.extend(frames.iter().map(|f| IoSlice::new(f)));
    }
    parts.push(IoSlice::new(wire::CHUNK_END));
    write(direct, &mut parts, position)
}

/// A keep-alive for a stream that was quiet for a whole round.
pub(super) fn keep_alive_round(direct: &mut Direct) -> bool {
    if std::mem::take(&mut direct.wrote) {
        return true;
    }
    let header = ChunkHeader::new(crate::sse::KEEP_ALIVE.len());
    let mut parts = [
        IoSlice::new(header.as_bytes()),
        IoSlice::new(crate::sse::KEEP_ALIVE),
        IoSlice::new(wire::CHUNK_END),
    ];
    let position = direct.position;
    write(direct, &mut parts, position)
}

/// Writes one chunk, which moves the client to `position`. `false` when the
/// socket did not take all of it: the stream goes back to its task.
fn write(direct: &mut Direct, parts: &mut [IoSlice<'_>], position: Cursor) -> bool {
    let back = match wire::write_now(&direct.socket, parts) {
        Written::All => {
            direct.wrote = true;
            direct.position = position;
            return true;
        }
        Written::Nothing => Back::Behind {
            position: direct.position,
            pending: None,
        },
        Written::Part(rest) => Back::Behind {
            position,
            pending: Some(rest),
        },
        Written::Failed => Back::Gone,
    };
    if let Some(to) = direct.back.take() {
        let _ = to.send(back);
    }
    false
}
