//! The quarantine: accepted ballots that no worker could open or check,
//! kept whole and still sealed in `<stream>_QUARANTINE` until an operator
//! replays or rejects them. Nothing here is ever dropped on its own, and
//! an election with ballots here is not final (see `close`).

use anyhow::Context;
use async_nats::jetstream::{AckKind, Message};
use tally_domain::ballot::{KEY_HEADER, VoteCommand};
use tally_platform::Deps;
use tally_platform::nats;

/// Why a worker set the message aside, in the words of its error (which
/// never quote what the ballot holds).
pub const REASON_HEADER: &str = "Tally-Quarantine-Reason";
/// Where the votes stream first stored the message. A replay is stored
/// again, after the election's fence perhaps; this keeps its place
/// before it (see `commit::late`).
pub const STORED_AT_HEADER: &str = "Tally-Stored-At";
/// How long to wait for the broker's ack of a copy or a replay.
const PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Copies a message no worker can open or check to the quarantine, headers
/// and all, notes it by subject and error (never its bytes or size), and
/// only then acks it. If any step fails, it stays in the queue.
pub async fn set_aside(deps: &Deps, message: Message, error: String) {
    metrics::counter!("tally_quarantined_ballots_total").increment(1);
    tracing::warn!(subject = %message.subject, error = %error, "ballot quarantined: it cannot be opened or checked");
    let election = message.subject.rsplit('.').next().unwrap_or("unknown").to_string();
    let subject = nats::quarantine_subject(&deps.settings.nats, &election);
    // Every header but the dedup id, which would make the quarantine drop
    // a second copy of the same citizen's message.
    let mut headers = copy_headers(message.headers.as_ref(), async_nats::header::NATS_MESSAGE_ID.as_ref());
    headers.insert(REASON_HEADER, error.as_str());
    if headers.get(STORED_AT_HEADER).is_none() {
        let stored_at = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        headers.insert(STORED_AT_HEADER, stored_at.to_string().as_str());
    }
    let kept = async {
        nats::publish_acked(&deps.jetstream, subject, headers, message.payload.clone(), PUBLISH_TIMEOUT)
            .await?;
        note(deps, message.subject.as_str(), &error).await
    }
    .await;
    let kind = match kept {
        Ok(()) => AckKind::Ack,
        Err(e) => {
            tracing::warn!(error = format!("{e:#}"), "quarantine failed; the message stays in the queue");
            AckKind::Nak(Some(std::time::Duration::from_secs(1)))
        }
    };
    if let Err(e) = message.ack_with(kind).await {
        tracing::debug!(error = %e, "quarantine ack not sent");
    }
}

/// A line in `dead_letters`: the subject and what happened, never the
/// message's bytes or size.
async fn note(deps: &Deps, subject: &str, error: &str) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO dead_letters (subject, error) VALUES ($1, $2)")
        .bind(subject)
        .bind(error)
        .execute(&deps.db)
        .await
        .context("noting a dead letter")?;
    Ok(())
}

fn copy_headers(from: Option<&async_nats::HeaderMap>, except: &str) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    for (name, values) in from.iter().flat_map(|h| h.iter()) {
        if !AsRef::<str>::as_ref(name).eq_ignore_ascii_case(except) {
            for value in values {
                headers.append(name.clone(), value.clone());
            }
        }
    }
    headers
}

/// One quarantined message, as `tally quarantine list` shows it: never
/// opened.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Quarantined {
    pub sequence: u64,
    pub election: String,
    pub reason: String,
    pub key_id: String,
}

/// The quarantined messages (of one election, or all), without opening any.
pub async fn list(deps: &Deps, election: Option<i64>) -> anyhow::Result<Vec<Quarantined>> {
    Ok(messages(deps, election)
        .await?
        .into_iter()
        .map(|(sequence, message)| {
            let header = |name: &str| {
                message.headers.get(name).map(|v| v.as_str().to_string()).unwrap_or_else(|| "-".into())
            };
            Quarantined {
                sequence,
                election: message.subject.rsplit('.').next().unwrap_or_default().to_string(),
                reason: header(REASON_HEADER),
                key_id: header(KEY_HEADER),
            }
        })
        .collect())
}

async fn messages(
    deps: &Deps,
    election: Option<i64>,
) -> anyhow::Result<Vec<(u64, async_nats::jetstream::message::StreamMessage)>> {
    let settings = &deps.settings.nats;
    let mut stream = deps
        .jetstream
        .get_stream(nats::quarantine_stream(settings))
        .await
        .context("opening the quarantine")?;
    let state = stream.info().await.context("reading the quarantine")?.state.clone();
    let wanted = election.map(|e| nats::quarantine_subject(settings, &e.to_string()));
    let mut found = Vec::new();
    if state.messages == 0 {
        return Ok(found);
    }
    for sequence in state.first_sequence..=state.last_sequence {
        let Ok(message) = stream.get_raw_message(sequence).await else { continue };
        if wanted.as_deref().is_none_or(|w| message.subject.as_str() == w) {
            found.push((sequence, message));
        }
    }
    Ok(found)
}

/// Puts quarantined messages back in the work queue, for workers that can
/// now open them (a new key, a newer version), then takes them out of the
/// quarantine. Those still unreadable come back to it.
pub async fn replay(deps: &Deps, election: Option<i64>) -> anyhow::Result<usize> {
    let settings = &deps.settings.nats;
    let stream = deps.jetstream.get_stream(nats::quarantine_stream(settings)).await?;
    let mut replayed = 0;
    for (sequence, message) in messages(deps, election).await? {
        let Some(election) = message.subject.rsplit('.').next().and_then(|e| e.parse::<i64>().ok()) else {
            continue;
        };
        let mut headers = copy_headers(Some(&message.headers), REASON_HEADER);
        // Its own dedup id: the original's is still in the broker's window.
        headers.insert(async_nats::header::NATS_MESSAGE_ID, format!("replay:{sequence}").as_str());
        nats::publish_acked(
            &deps.jetstream,
            nats::ballot_subject(settings, election),
            headers,
            message.payload.clone(),
            PUBLISH_TIMEOUT,
        )
        .await
        .with_context(|| format!("replaying quarantined message {sequence}"))?;
        stream.delete_message(sequence).await.with_context(|| format!("clearing quarantined {sequence}"))?;
        replayed += 1;
    }
    Ok(replayed)
}

/// What `reject` did.
#[derive(Debug, Default)]
pub struct Rejected {
    /// Opened, so the voter reads `rejected: unreadable` on the receipt.
    pub with_receipt: usize,
    /// Not even this process can open them: the receipt cannot be known.
    pub without_receipt: usize,
}

/// Rejects an election's quarantined ballots with the reason `unreadable`,
/// for the final count to go ahead. A ballot this process can open (it
/// has the workers' keys) gets the reason on its receipt, and its voter,
/// if not on the voter roll, may cast again.
pub async fn reject(deps: &Deps, election: i64) -> anyhow::Result<Rejected> {
    let opener = deps.settings.sealing.opener()?;
    let stream = deps.jetstream.get_stream(nats::quarantine_stream(&deps.settings.nats)).await?;
    let mut done = Rejected::default();
    for (sequence, message) in messages(deps, Some(election)).await? {
        match VoteCommand::open(&opener, Some(&message.headers), &message.payload) {
            Ok(command) if command.election_id == election => {
                let released = crate::record::reject(&deps.db, &[(&command, "unreadable")]).await?;
                tally_platform::voters::release_rejected(&deps.redis, &deps.keys, &released).await?;
                done.with_receipt += 1;
            }
            _ => done.without_receipt += 1,
        }
        note(deps, message.subject.as_str(), "rejected by an operator as unreadable").await?;
        stream.delete_message(sequence).await.with_context(|| format!("clearing quarantined {sequence}"))?;
    }
    Ok(done)
}
