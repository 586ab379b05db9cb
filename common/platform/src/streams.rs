//! The `VOTES` stream and its quarantine: their configuration, created or
//! changed only by the provisioning identity (`tally migrate`), and
//! looked up by the roles that serve traffic, which may not change them.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, stream};

use crate::config::NatsSettings;
use crate::nats::{quarantine_prefix, quarantine_stream};

/// The stream's configuration. Work-queue retention deletes a ballot once a
/// worker acks it, so no copy of a citizen's choice outlives processing;
/// discard-new turns a full stream into fast publish errors (backpressure)
/// instead of silent loss of old ballots. Direct gets let the API read an
/// election's fence by its subject alone, a request its rights can name
/// (see `fence`).
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
        allow_direct: true,
        ..Default::default()
    }
}

/// Where messages no worker can open are kept, whole and still sealed,
/// for an operator to replay or reject: with the retention, limits and
/// storage of `VOTES`, so a quarantined ballot lives exactly as long as a
/// waiting one would. No direct gets: nothing reads it but the operator's
/// identity.
pub fn quarantine_stream_config(settings: &NatsSettings) -> stream::Config {
    stream::Config {
        name: quarantine_stream(settings),
        subjects: vec![format!("{}.*", quarantine_prefix(settings))],
        allow_direct: false,
        ..votes_stream_config(settings)
    }
}

/// Creates both streams, or brings existing ones to the configured
/// settings. Only the provisioning identity may.
pub async fn provision(js: &jetstream::Context, settings: &NatsSettings) -> anyhow::Result<()> {
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
    Ok(())
}

/// Checks that both streams are there as `provision` left them, without
/// changing anything. A missing one is named with the command that
/// creates it.
pub async fn require(js: &jetstream::Context, settings: &NatsSettings) -> anyhow::Result<()> {
    let votes = js.get_stream(&settings.stream).await.map_err(|e| looked_up(&settings.stream, e))?;
    if !votes.cached_info().config.allow_direct {
        anyhow::bail!(
            "NATS stream {} does not allow direct gets, which fences need; `tally migrate` updates it",
            settings.stream
        );
    }
    let quarantine = quarantine_stream(settings);
    js.get_stream(&quarantine).await.map_err(|e| looked_up(&quarantine, e))?;
    Ok(())
}

fn looked_up(name: &str, error: jetstream::context::GetStreamError) -> anyhow::Error {
    match error.kind() {
        jetstream::context::GetStreamErrorKind::JetStream(e)
            if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
        {
            anyhow::anyhow!("NATS stream {name} does not exist; `tally migrate` creates it")
        }
        _ => anyhow::anyhow!("looking up NATS stream {name}: {error}"),
    }
}
