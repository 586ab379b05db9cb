//! Many WebSocket viewers of one election on one broadcaster, for the
//! benchmarks that measure delivery (`viewers`, `e2e --viewers`). Each
//! viewer is one task that hands every text frame, with its arrival time,
//! to a `Watch` of its own; the benchmark reads the watches back at the
//! end. The client shares the cores it measures, so a watch should look
//! only at the field it needs (`number`), not parse the whole frame.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Connections opened at once: a burst of thousands overflows the
/// broadcaster's accept backlog and times out.
const OPENING_AT_ONCE: usize = 256;

/// What one viewer does with the frames it receives.
pub trait Watch: Send + 'static {
    fn frame(&mut self, text: &str, arrived: Instant);
}

pub struct Audience<W> {
    requested: usize,
    connected: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    stop: CancellationToken,
    tasks: JoinSet<W>,
}

/// The WebSocket route of the election on a broadcaster on loopback.
pub fn url(port: u16, election: i64) -> String {
    format!("ws://127.0.0.1:{port}/v1/elections/{election}/live")
}

impl<W: Watch> Audience<W> {
    /// One viewer per watch, each connecting on its own task.
    pub fn start(url: &str, watches: impl IntoIterator<Item = W>) -> Audience<W> {
        let connected = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let opening = Arc::new(tokio::sync::Semaphore::new(OPENING_AT_ONCE));
        let mut tasks = JoinSet::new();
        for watch in watches {
            let (url, opening) = (url.to_owned(), opening.clone());
            let (connected, dropped, stop) = (connected.clone(), dropped.clone(), stop.clone());
            tasks.spawn(view(url, watch, opening, connected, dropped, stop));
        }
        Audience { requested: tasks.len(), connected, dropped, stop, tasks }
    }

    /// Waits until every viewer has connected or failed to, or `within`.
    pub async fn wait_connected(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.connected() + self.dropped() < self.requested as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn connected(&self) -> u64 {
        self.connected.load(Ordering::Relaxed)
    }

    /// Viewers that could not connect or whose connection ended early.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Disconnects every viewer; their watches, in no particular order.
    pub async fn stop(&mut self) -> Vec<W> {
        self.stop.cancel();
        let mut watches = Vec::with_capacity(self.requested);
        while let Some(done) = self.tasks.join_next().await {
            watches.extend(done.ok());
        }
        watches
    }
}

async fn view<W: Watch>(
    url: String,
    mut watch: W,
    opening: Arc<tokio::sync::Semaphore>,
    connected: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    stop: CancellationToken,
) -> W {
    let permit = opening.acquire_owned().await;
    let Ok((mut socket, _)) = tokio_tungstenite::connect_async(&url).await else {
        dropped.fetch_add(1, Ordering::Relaxed);
        return watch;
    };
    drop(permit);
    connected.fetch_add(1, Ordering::Relaxed);
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            message = socket.next() => message,
        };
        match message {
            Some(Ok(Message::Text(text))) => watch.frame(&text, Instant::now()),
            Some(Ok(_)) => {}
            _ => {
                dropped.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    watch
}

/// The non-negative integer `field` of a frame (`version`, `turnout`),
/// found by name: frames are flat at the top and the runners' fields have
/// other names.
pub fn number(frame: &str, field: &str) -> Option<i64> {
    let key = format!("\"{field}\":");
    let rest = &frame[frame.find(&key)? + key.len()..];
    rest[..rest.find(|c: char| !c.is_ascii_digit())?].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::number;

    #[test]
    fn a_field_is_read_by_name_and_null_is_none() {
        let frame = r#"{"type":"tally","election_id":7,"version":12,"turnout":340,"final":false,"posts":[]}"#;
        assert_eq!(number(frame, "version"), Some(12));
        assert_eq!(number(frame, "turnout"), Some(340));
        assert_eq!(number(r#"{"turnout":null}"#, "turnout"), None);
        assert_eq!(number(frame, "votes"), None);
    }
}
