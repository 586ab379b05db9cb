//! Live viewers that reconnect, as the live page does, when their
//! broadcaster goes away, and remember the last tally each one saw.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What a frame said: turnout and votes per runner.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Seen {
    pub turnout: i64,
    pub votes: BTreeMap<i64, i64>,
}

impl Seen {
    pub fn parse(frame: &str) -> Option<Seen> {
        let value: serde_json::Value = serde_json::from_str(frame).ok()?;
        let mut votes = BTreeMap::new();
        for post in value.get("posts")?.as_array()? {
            for runner in post.get("runners")?.as_array()? {
                votes.insert(runner.get("citizen_id")?.as_i64()?, runner.get("votes")?.as_i64()?);
            }
        }
        Some(Seen { turnout: value.get("turnout")?.as_i64()?, votes })
    }
}

pub struct Audience {
    pub last: Arc<Vec<Mutex<Option<Seen>>>>,
    pub reconnects: Arc<AtomicU64>,
    tasks: JoinSet<()>,
}

impl Audience {
    pub fn start(broadcasters: Vec<u16>, election: i64, viewers: usize, stop: CancellationToken) -> Audience {
        let last: Arc<Vec<Mutex<Option<Seen>>>> = Arc::new((0..viewers).map(|_| Mutex::new(None)).collect());
        let reconnects = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        for viewer in 0..viewers {
            let (last, reconnects, stop, broadcasters) =
                (last.clone(), reconnects.clone(), stop.clone(), broadcasters.clone());
            tasks.spawn(async move {
                let mut attempt = viewer;
                while !stop.is_cancelled() {
                    let port = broadcasters[attempt % broadcasters.len()];
                    let url = format!("ws://127.0.0.1:{port}/v1/elections/{election}/live");
                    watch(&url, &last[viewer], &stop).await;
                    if stop.is_cancelled() {
                        break;
                    }
                    reconnects.fetch_add(1, Ordering::Relaxed);
                    attempt += 1;
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            });
        }
        Audience { last, reconnects, tasks }
    }

    pub fn snapshot(&self) -> Vec<Option<Seen>> {
        self.last.iter().map(|seen| seen.lock().unwrap_or_else(|e| e.into_inner()).clone()).collect()
    }

    pub async fn finish(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Reads frames until the connection ends or `stop` fires.
async fn watch(url: &str, last: &Mutex<Option<Seen>>, stop: &CancellationToken) {
    let connected = tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(url)).await;
    let Ok(Ok((mut socket, _))) = connected else { return };
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            message = socket.next() => message,
        };
        match message {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
                if let Some(seen) = Seen::parse(&text) {
                    *last.lock().unwrap_or_else(|e| e.into_inner()) = Some(seen);
                }
            }
            Some(Ok(_)) => {}
            _ => return,
        }
    }
}
