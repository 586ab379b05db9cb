//! One live viewer: the current frame at once, then the newest frame
//! whenever the version or status changes, at most `rate` frames a second.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_websockets::{CloseCode, Message, Payload};

use crate::frame::Frame;
use crate::handshake::Socket;

pub struct Pace {
    pub min_gap: Duration,
    pub ping_every: Duration,
    /// A viewer whose socket accepts nothing for this long is dropped (and
    /// counted), so it cannot hold resources forever.
    pub send_timeout: Duration,
}

/// Counts frames a viewer skipped because newer ones replaced them.
pub fn note_sent(frame: &Frame, last_version: &mut Option<i64>, transport: &'static str) {
    metrics::counter!("tally_broadcast_messages_total", "transport" => transport).increment(1);
    if let Some(last) = *last_version
        && frame.version > last + 1
    {
        metrics::counter!("tally_broadcast_coalesced_total", "transport" => transport)
            .increment((frame.version - last - 1) as u64);
    }
    if last_version.is_none_or(|last| frame.version > last)
        && let Some(accepted) = frame.oldest_accepted_at
    {
        let delay = (OffsetDateTime::now_utc() - accepted).as_seconds_f64().max(0.0);
        metrics::histogram!("tally_broadcast_delay_seconds", "transport" => transport).record(delay);
    }
    *last_version = Some(frame.version);
}

pub async fn serve(
    socket: Socket,
    mut frames: watch::Receiver<Arc<Frame>>,
    pace: Pace,
    shutdown: CancellationToken,
) {
    let (mut sink, mut incoming) = socket.split();
    let mut last_version = None;
    let mut last_heard = Instant::now();
    let mut pings = tokio::time::interval_at(Instant::now() + pace.ping_every, pace.ping_every);
    let mut next_send = Instant::now();
    let mut pending = true;
    let reason = loop {
        if pending && Instant::now() >= next_send {
            let frame = frames.borrow_and_update().clone();
            let text = Message::text(Payload::from(frame.json.clone()));
            let sent = tokio::time::timeout(pace.send_timeout, sink.send(text)).await;
            match sent {
                Ok(Ok(())) => note_sent(&frame, &mut last_version, "websocket"),
                Ok(Err(_)) => break None,
                Err(_) => {
                    metrics::counter!("tally_broadcast_dropped_total", "reason" => "send_timeout")
                        .increment(1);
                    break Some((CloseCode::POLICY_VIOLATION, "too slow to receive updates"));
                }
            }
            pending = false;
            next_send = Instant::now() + pace.min_gap;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break Some((CloseCode::GOING_AWAY, "server shutting down")),
            changed = frames.changed(), if !pending => {
                if changed.is_err() {
                    break Some((CloseCode::INTERNAL_SERVER_ERROR, "feed ended"));
                }
                pending = true;
            }
            _ = tokio::time::sleep_until(next_send), if pending => {}
            _ = pings.tick() => {
                if last_heard.elapsed() > pace.ping_every * 2 {
                    metrics::counter!("tally_broadcast_dropped_total", "reason" => "no_pong").increment(1);
                    break Some((CloseCode::GOING_AWAY, "no answer to ping"));
                }
                if sink.send(Message::ping(Bytes::new())).await.is_err() {
                    break None;
                }
            }
            message = incoming.next() => match message {
                Some(Ok(message)) if message.is_close() => break None,
                None => break None,
                Some(Err(tokio_websockets::Error::PayloadTooLong { .. })) => {
                    metrics::counter!("tally_broadcast_dropped_total", "reason" => "frame_too_big").increment(1);
                    break Some((CloseCode::MESSAGE_TOO_BIG, "frames from viewers must be small"));
                }
                Some(Err(_)) => break None,
                Some(Ok(_)) => last_heard = Instant::now(),
            },
        }
    };
    let goodbye = async {
        if let Some((code, text)) = reason {
            // Refused when tokio-websockets has already queued a close of
            // its own (1009 for an oversized frame, 1002 for a broken one).
            let _ = sink.send(Message::close(Some(code), text)).await;
        }
        // Sends that close, or the answer to the viewer's own close.
        sink.flush().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), goodbye).await;
}
