//! Rows framed once for every subscriber: each row's complete SSE frame and
//! its JSON as slices of one buffer per batch.

use crate::cursor::{Cursor, Style};
use crate::feed::{Filter, ReadSpan};
use crate::source::Row;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

/// One row, framed.
#[derive(Debug)]
pub struct Event {
    /// The row id.
    pub id: i128,
    /// The complete single-feed SSE frame (`id:`, optional `event:`, `data:`).
    pub frame: Bytes,
    /// The row's JSON, a slice of `frame`.
    pub data: Bytes,
    /// Filter column values as text, in the feed's filter order.
    pub filters: Box<[Option<Box<str>>]>,
    /// The notice that a change moved the row out of a filter: the row's
    /// new filter values, which the clients that get it do not pass.
    pub unless_filters: Option<Box<[Option<Box<str>>]>>,
    /// A row that committed after its gap was passed over: delivered out of
    /// order, without an `id:` so that no client's cursor moves back.
    pub late: bool,
    /// An event every client gets whatever its filter: a frame with only
    /// an `id:` (no data) that moves the client's cursor past a catch-up,
    /// or a reset.
    pub marker: bool,
}

impl Event {
    /// Whether a client with `filter` gets this event.
    pub fn passes(&self, filter: &Filter) -> bool {
        self.marker
            || (filter.matches(&self.filters)
                && !self
                    .unless_filters
                    .as_ref()
                    .is_some_and(|now| filter.matches(now)))
    }

    /// The same event, for every client whatever its filter.
    pub fn for_everyone(&self) -> Event {
        Event {
            id: self.id,
            frame: self.frame.clone(),
            data: self.data.clone(),
            filters: Box::new([]),
            unless_filters: None,
            late: self.late,
            marker: true,
        }
    }

    /// The frame that moves a client to `cursor` and delivers nothing.
    pub fn marker(cursor: Cursor, style: Style) -> Event {
        let Cursor::At(id) = cursor else {
            unreachable!("a marker follows a catch-up, which ends at an event or a poll")
        };
        let frame = crate::sse::position(&style.format(cursor));
        Event {
            id,
            data: frame.slice(0..0),
            frame,
            filters: Box::new([]),
            unless_filters: None,
            late: false,
            marker: true,
        }
    }
}

/// Events published by one poll, framed into one buffer.
#[derive(Debug)]
pub struct Batch {
    /// The events, in id order.
    pub events: Vec<Arc<Event>>,
    /// Every event's frame, back to back: what a subscriber that wants them
    /// all writes in one go.
    pub frames: Bytes,
    /// The poller's cursor before this batch: the batch holds every event
    /// of (`after`, `head`].
    pub after: Cursor,
    /// The poller's cursor after this batch (may pass ids that the feed's
    /// row condition excluded).
    pub head: Cursor,
    /// Late rows, for every subscriber whatever its position.
    pub late: bool,
    /// When the changes poll behind the batch read the table, when known.
    pub read: Option<ReadSpan>,
}

/// The events of `events` (in id order) after `cursor`.
pub fn after(events: &[Arc<Event>], cursor: Cursor) -> &[Arc<Event>] {
    &events[events.partition_point(|e| Cursor::At(e.id) <= cursor)..]
}

fn boxed(values: Vec<Option<String>>) -> Box<[Option<Box<str>>]> {
    values
        .into_iter()
        .map(|v| v.map(String::into_boxed_str))
        .collect()
}

/// Frames rows into events, once, for everyone: every event's frame back to
/// back in one buffer, and each event a slice of it. A row's own event
/// name wins over the feed's. Rows without JSON (the feed's condition
/// excludes them) make no event. Notices that a row left a
/// filter come last (they are numbered so), and the frames that every
/// unfiltered client gets end before them: no such client gets one.
pub(super) fn frame(
    rows: Vec<Row>,
    event_name: Option<&str>,
    late: bool,
    style: Style,
) -> (Vec<Arc<Event>>, Bytes) {
    let mut buf = BytesMut::new();
    let mut spans = Vec::with_capacity(rows.len());
    let mut for_all = None;
    for row in rows {
        if row.unless_filters.is_some() && for_all.is_none() {
            for_all = Some(buf.len());
        }
        let Some(json) = row.json else { continue };
        let start = buf.len();
        // A live feed's cursors are its own: a client has nothing to resume.
        let id = (!late && style.resumable()).then(|| style.format(Cursor::At(row.id)));
        let name = row.event.as_deref().or(event_name);
        crate::sse::put_event(&mut buf, id.as_deref(), name, json.as_bytes());
        // `data: <json>\n\n` ends the frame.
        let data_end = buf.len() - 2;
        let data_start = data_end - json.len();
        spans.push((
            row.id,
            start,
            data_start,
            data_end,
            row.filters,
            row.unless_filters,
        ));
    }
    let buf = buf.freeze();
    let frames = buf.slice(..for_all.unwrap_or(buf.len()));
    let events = spans
        .into_iter()
        .map(|(id, start, data_start, data_end, filters, unless)| {
            Arc::new(Event {
                id,
                frame: buf.slice(start..data_end + 2),
                data: buf.slice(data_start..data_end),
                filters: boxed(filters),
                unless_filters: unless.map(boxed),
                late,
                marker: false,
            })
        })
        .collect();
    (events, frames)
}
