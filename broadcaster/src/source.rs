//! One Redis subscription per broadcaster process: tally events for every
//! election (`<prefix>:*`) and election changes. After any reconnect the
//! watched snapshots are read again, so viewers converge on the current
//! tally without reconnecting themselves. Each subscription asks anew
//! which node is the master, so one lost in a Sentinel failover comes
//! back on the new master.

use futures_util::StreamExt;
use tally_platform::redis::Master;
use tally_platform::retry::Backoff;
use tally_platform::tallies::TallyEvent;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;

pub async fn follow(hub: Hub, master: Master, shutdown: CancellationToken) {
    let keys = hub.deps().keys.clone();
    let pattern = keys.tally_channel_pattern();
    let control = keys.elections_channel();
    let mut backoff = Backoff::default();
    loop {
        let subscribed = async {
            let client = master.client().await?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.psubscribe(&pattern).await?;
            pubsub.subscribe(&control).await?;
            let conn = client.get_multiplexed_async_connection().await?;
            Ok::<_, redis::RedisError>((pubsub, conn))
        };
        let (mut pubsub, mut conn) = match subscribed.await {
            Ok(connected) => connected,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to tally events; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => continue,
                }
            }
        };
        backoff = Backoff::default();
        hub.resync(&mut conn).await;
        drop(conn);
        let mut messages = pubsub.on_message();
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return,
                message = messages.next() => message,
            };
            let Some(message) = message else {
                tracing::warn!("lost the Redis subscription; resubscribing");
                break;
            };
            let channel = message.get_channel_name();
            if channel == control {
                if let Ok(id) = message.get_payload::<i64>() {
                    hub.reload(id).await;
                }
            } else if keys.election_of_channel(channel).is_some() {
                match message.get_payload::<String>().map(|p| serde_json::from_str::<TallyEvent>(&p)) {
                    Ok(Ok(event)) => hub.on_event(event),
                    _ => tracing::warn!(channel, "unreadable tally event"),
                }
            }
        }
    }
}
