//! NATS JetStream: the connection, the `VOTES` stream, and publishing that
//! only counts once the broker's ack has arrived.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, stream};

use crate::config::NatsSettings;

/// Connects in the background: the client returns at once and keeps
/// reconnecting for as long as the process runs, so a broker restart is
/// ridden out without restarting us.
pub async fn connect(settings: &NatsSettings) -> anyhow::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new();
    if let Some(root) = &settings.tls_root_certificate {
        options = options.add_root_certificates(root.clone()).require_tls(true);
    }
    options
        .name("tally")
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_millis(settings.publish_timeout_ms)))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS"),
                other => tracing::debug!(event = %other, "NATS event"),
            }
        })
        .connect(settings.url.expose())
        .await
        .map_err(|e| anyhow::anyhow!("connecting to NATS: {e}"))
}

pub fn jetstream(client: async_nats::Client, settings: &NatsSettings) -> jetstream::Context {
    jetstream::ContextBuilder::new().timeout(Duration::from_millis(settings.publish_timeout_ms)).build(client)
}

/// The stream's configuration. Work-queue retention deletes a ballot once a
/// worker acks it, so no copy of a citizen's choice outlives processing;
/// discard-new turns a full stream into fast publish errors (backpressure)
/// instead of silent loss of old ballots.
pub fn votes_stream_config(settings: &NatsSettings) -> stream::Config {
    stream::Config {
        name: settings.stream.clone(),
        subjects: vec![format!("{}.*", settings.subject_prefix), crate::fence::subjects(settings)],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        duplicate_window: Duration::from_secs(settings.duplicate_window_secs),
        max_bytes: settings.max_bytes,
        max_messages: settings.max_messages,
        num_replicas: settings.replicas,
        ..Default::default()
    }
}

/// Where messages no worker can open are kept, whole and still sealed,
/// for an operator to replay or reject: with the retention, limits and
/// storage of `VOTES`, so a quarantined ballot lives exactly as long as a
/// waiting one would.
pub fn quarantine_stream_config(settings: &NatsSettings) -> stream::Config {
    stream::Config {
        name: quarantine_stream(settings),
        subjects: vec![format!("{}.*", quarantine_prefix(settings))],
        ..votes_stream_config(settings)
    }
}

pub fn quarantine_stream(settings: &NatsSettings) -> String {
    format!("{}_QUARANTINE", settings.stream)
}

fn quarantine_prefix(settings: &NatsSettings) -> String {
    format!("quarantine.{}", settings.subject_prefix)
}

pub fn quarantine_subject(settings: &NatsSettings, election_id: &str) -> String {
    format!("{}.{election_id}", quarantine_prefix(settings))
}

/// Creates the stream, or brings an existing one to the configured settings.
pub async fn ensure_votes_stream(
    js: &jetstream::Context,
    settings: &NatsSettings,
) -> anyhow::Result<stream::Stream> {
    let config = votes_stream_config(settings);
    if js.get_stream(&settings.stream).await.is_ok() {
        js.update_stream(config).await.with_context(|| format!("updating stream {}", settings.stream))?;
    } else {
        js.create_stream(config).await.with_context(|| format!("creating stream {}", settings.stream))?;
    }
    let quarantine = quarantine_stream_config(settings);
    let name = quarantine.name.clone();
    match js.get_stream(&name).await {
        // An older quarantine kept its messages by limits, and the
        // broker cannot change a stream's retention in place. It is left
        // as it is: replacing it could drop what another process copies
        // into it meanwhile, and operators remove messages one by one.
        Ok(old) if old.cached_info().config.retention != quarantine.retention => {
            tracing::warn!(stream = %name, "the quarantine keeps the retention it was created with");
        }
        Ok(_) => {
            js.update_stream(quarantine).await.with_context(|| format!("updating stream {name}"))?;
        }
        Err(_) => {
            js.create_stream(quarantine).await.with_context(|| format!("creating stream {name}"))?;
        }
    }
    js.get_stream(&settings.stream).await.with_context(|| format!("opening stream {}", settings.stream))
}

pub fn ballot_subject(settings: &NatsSettings, election_id: i64) -> String {
    format!("{}.{election_id}", settings.subject_prefix)
}

/// The outcome of a publish the broker acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored at this stream sequence.
    New(u64),
    /// The broker already held a message with this `Nats-Msg-Id` inside its
    /// duplicate window, at this sequence, and dropped this one.
    Duplicate(u64),
}

impl Stored {
    pub fn sequence(self) -> u64 {
        match self {
            Stored::New(sequence) | Stored::Duplicate(sequence) => sequence,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("JetStream did not acknowledge in time")]
    Timeout,
    #[error("JetStream refused the message: {0}")]
    Refused(String),
}

/// Publishes and waits for the broker's ack: only then is the message
/// stored and safe to promise to a client.
pub async fn publish_acked(
    js: &jetstream::Context,
    subject: String,
    headers: async_nats::HeaderMap,
    payload: bytes::Bytes,
    timeout: Duration,
) -> Result<Stored, PublishError> {
    let sent = async {
        let ack_future = js
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| PublishError::Refused(e.to_string()))?;
        ack_future.await.map_err(|e| match e.kind() {
            jetstream::context::PublishErrorKind::TimedOut => PublishError::Timeout,
            _ => PublishError::Refused(e.to_string()),
        })
    };
    match tokio::time::timeout(timeout, sent).await {
        Err(_) => Err(PublishError::Timeout),
        Ok(Err(e)) => Err(e),
        Ok(Ok(ack)) if ack.duplicate => Ok(Stored::Duplicate(ack.sequence)),
        Ok(Ok(ack)) => Ok(Stored::New(ack.sequence)),
    }
}

/// Whether the election has ballots in quarantine: accepted, and neither
/// replayed nor rejected by an operator yet, so its count is not final.
pub async fn quarantined(
    js: &jetstream::Context,
    settings: &NatsSettings,
    election_id: i64,
) -> anyhow::Result<bool> {
    let stream = js.get_stream_no_info(quarantine_stream(settings)).await.context("naming the quarantine")?;
    holds_any(&stream, &quarantine_subject(settings, &election_id.to_string())).await
}

/// Whether the stream holds a message on `subject`. The broker answers
/// from its index of subjects, without walking the stream's blocks.
pub async fn holds_any<I>(stream: &stream::Stream<I>, subject: &str) -> anyhow::Result<bool> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(false),
        Err(e) => Err(anyhow::anyhow!("looking for a message on {subject}: {e}")),
    }
}

/// Ballots waiting in the votes stream, over every election: what no
/// worker has acked yet. Fences are not counted.
pub async fn ballots_waiting(js: &jetstream::Context, settings: &NatsSettings) -> anyhow::Result<u64> {
    count_on(js, &settings.stream, &format!("{}.*", settings.subject_prefix)).await
}

/// Messages of `stream` on the subjects `filter` matches.
pub async fn count_on(js: &jetstream::Context, stream: &str, filter: &str) -> anyhow::Result<u64> {
    use futures_util::TryStreamExt;
    let stream = js.get_stream(stream).await.with_context(|| format!("opening stream {stream}"))?;
    let mut subjects =
        stream.info_with_subjects(filter).await.with_context(|| format!("counting {filter}"))?;
    let mut total = 0;
    while let Some((_, count)) = subjects.try_next().await.with_context(|| format!("counting {filter}"))? {
        total += count as u64;
    }
    Ok(total)
}
