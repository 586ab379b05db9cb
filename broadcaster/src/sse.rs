//! Server-Sent Events: the same frames for clients without WebSocket.

use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::frame::Frame;
use crate::viewer::{Pace, note_sent};

struct Cursor {
    frames: watch::Receiver<Arc<Frame>>,
    next_send: Instant,
    first: bool,
    last_version: Option<i64>,
    shutdown: CancellationToken,
    pace: Pace,
    /// Kept for as long as the stream lives (the viewer's slot and gauge).
    _held: Box<dyn std::any::Any + Send + Sync>,
}

pub fn events(
    frames: watch::Receiver<Arc<Frame>>,
    pace: Pace,
    shutdown: CancellationToken,
    held: Box<dyn std::any::Any + Send + Sync>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let cursor = Cursor {
        frames,
        next_send: Instant::now(),
        first: true,
        last_version: None,
        shutdown,
        pace,
        _held: held,
    };
    let stream = futures_util::stream::unfold(cursor, |mut c| async move {
        if !c.first {
            tokio::select! {
                _ = c.shutdown.cancelled() => return None,
                changed = c.frames.changed() => changed.ok()?,
            }
            tokio::select! {
                _ = c.shutdown.cancelled() => return None,
                _ = tokio::time::sleep_until(c.next_send) => {}
            }
        }
        c.first = false;
        let frame = c.frames.borrow_and_update().clone();
        note_sent(&frame, &mut c.last_version, "sse");
        c.next_send = Instant::now() + c.pace.min_gap;
        Some((Ok(Event::default().event("tally").data(frame.text())), c))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
