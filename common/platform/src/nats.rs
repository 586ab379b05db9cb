//! NATS JetStream: the connection, the subjects, publishing that only
//! counts once the broker's ack has arrived, and counts of what streams
//! hold. Streams themselves are provisioned apart (see `streams`).

use std::time::Duration;

use anyhow::Context;
use async_nats::ServerAddr;
use async_nats::jetstream::{self, stream};

use crate::config::NatsSettings;

/// Connects in the background: the client returns at once and keeps
/// reconnecting for as long as the process runs, to any server of the
/// list, so a broker restart or a dead cluster node is ridden out without
/// restarting us. Credentials go in the CONNECT message only: the
/// addresses the client keeps (and may log) have none.
pub async fn connect(settings: &NatsSettings) -> anyhow::Result<async_nats::Client> {
    let (addresses, user) = addresses_and_user(settings.url.expose())?;
    let mut options = async_nats::ConnectOptions::new();
    if let Some((user, password)) = user {
        options = options.user_and_password(user, password);
    }
    if let Some(token) = &settings.token {
        options = options.token(token.expose().to_string());
    }
    if let Some(seed) = &settings.nkey_seed {
        // Checked here: the client would only log each failed connect.
        nkeys::KeyPair::from_seed(seed.expose())
            .map_err(|_| anyhow::anyhow!("nats.nkey_seed is not an nkey seed (SU…)"))?;
        options = options.nkey(seed.expose().to_string());
    }
    if let Some(credentials) = &settings.credentials {
        // The error would quote the file: only its name is given.
        options = options
            .credentials(credentials.expose())
            .map_err(|_| anyhow::anyhow!("nats.credentials is not a NATS .creds file"))?;
    }
    if let Some(root) = &settings.tls_root_certificate {
        options = options.add_root_certificates(root.clone()).require_tls(true);
    }
    options
        .name("tally")
        .custom_inbox_prefix(&settings.inbox_prefix)
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
        .connect(addresses)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to NATS: {e}"))
}

/// The servers of `urls` (comma-separated: the members of a cluster),
/// each without its `user:password@`, and that user and password. One
/// CONNECT serves every server, so addresses that name a user must agree.
fn addresses_and_user(urls: &str) -> anyhow::Result<(Vec<ServerAddr>, Option<User>)> {
    let mut addresses = Vec::new();
    let mut found: Option<User> = None;
    for url in split_urls(urls) {
        let (address, user) = address_and_user(url)?;
        match (&found, user) {
            (Some(known), Some(user)) if *known != user => {
                anyhow::bail!("nats.url names different users in its addresses; one identity connects")
            }
            (None, Some(user)) => found = Some(user),
            _ => {}
        }
        addresses.push(address);
    }
    if addresses.is_empty() {
        anyhow::bail!("nats.url names no server");
    }
    Ok((addresses, found))
}

/// The addresses of a comma-separated `nats.url`, blanks dropped.
pub fn split_urls(urls: &str) -> impl Iterator<Item = &str> {
    urls.split(',').map(str::trim).filter(|url| !url.is_empty())
}

/// A user and password, for the CONNECT message only.
type User = (String, String);

/// The server's address without the `user:password@` of `url`, and that
/// user and password (percent-decoded). Errors never quote the URL.
fn address_and_user(url: &str) -> anyhow::Result<(ServerAddr, Option<User>)> {
    let address: ServerAddr =
        url.parse().map_err(|_| anyhow::anyhow!("nats.url is not a nats:// or tls:// address"))?;
    let user = address.username().map(|user| (decode(user), decode(address.password().unwrap_or(""))));
    let mut bare = address.into_inner();
    let stripped = bare.set_username("").and_then(|()| bare.set_password(None));
    stripped.map_err(|()| anyhow::anyhow!("nats.url has no host"))?;
    let address = ServerAddr::from_url(bare).map_err(|_| anyhow::anyhow!("nats.url has no host"))?;
    Ok((address, user))
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn jetstream(client: async_nats::Client, settings: &NatsSettings) -> jetstream::Context {
    jetstream::ContextBuilder::new().timeout(Duration::from_millis(settings.publish_timeout_ms)).build(client)
}

pub fn quarantine_stream(settings: &NatsSettings) -> String {
    format!("{}_QUARANTINE", settings.stream)
}

pub(crate) fn quarantine_prefix(settings: &NatsSettings) -> String {
    format!("quarantine.{}", settings.subject_prefix)
}

pub fn quarantine_subject(settings: &NatsSettings, election_id: &str) -> String {
    format!("{}.{election_id}", quarantine_prefix(settings))
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
            // The message was sent; the connection broke before its ack
            // came back, so it may be stored. Calling that "not stored"
            // would free the voter's reservation and let a second ballot
            // through beside a first that counts.
            jetstream::context::PublishErrorKind::TimedOut
            | jetstream::context::PublishErrorKind::BrokenPipe => PublishError::Timeout,
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

/// Whether the stream holds a message on `subject`, from the broker's
/// count of it: no message is read, so an identity that may not read
/// ballots can ask.
pub async fn holds_any<I>(stream: &stream::Stream<I>, subject: &str) -> anyhow::Result<bool> {
    Ok(count_in(stream, subject).await? > 0)
}

/// Ballots waiting in the votes stream, over every election: what no
/// worker has acked yet. Fences are not counted.
pub async fn ballots_waiting(js: &jetstream::Context, settings: &NatsSettings) -> anyhow::Result<u64> {
    count_on(js, &settings.stream, &format!("{}.*", settings.subject_prefix)).await
}

/// Messages of `stream` on the subjects `filter` matches.
pub async fn count_on(js: &jetstream::Context, stream: &str, filter: &str) -> anyhow::Result<u64> {
    let stream = js.get_stream_no_info(stream).await.with_context(|| format!("naming stream {stream}"))?;
    count_in(&stream, filter).await
}

/// The stream's leader counts, from its index of subjects: stream info
/// with a subject filter, which carries counts and never a message.
pub async fn count_in<I>(stream: &stream::Stream<I>, filter: &str) -> anyhow::Result<u64> {
    use futures_util::TryStreamExt;
    let mut subjects =
        stream.info_with_subjects(filter).await.with_context(|| format!("counting {filter}"))?;
    let mut total = 0;
    while let Some((_, count)) = subjects.try_next().await.with_context(|| format!("counting {filter}"))? {
        total += count as u64;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_address() {
        let (address, user) = address_and_user("tls://api:p%40ss%3Aw@queue:4222").expect("parses");
        assert_eq!(address.as_url_str(), "tls://queue:4222");
        assert_eq!(user, Some(("api".to_string(), "p@ss:w".to_string())));
        let (address, user) = address_and_user("nats://queue:4222").expect("parses");
        assert_eq!((address.as_url_str(), user), ("nats://queue:4222", None));
    }

    #[test]
    fn a_list_names_every_server_and_one_user() {
        let (addresses, user) =
            addresses_and_user("nats://a:4222, tls://api:pw@b:4223,,nats://api:pw@c:4224").expect("parses");
        let urls: Vec<&str> = addresses.iter().map(ServerAddr::as_url_str).collect();
        assert_eq!(urls, ["nats://a:4222", "tls://b:4223", "nats://c:4224"]);
        assert_eq!(user, Some(("api".to_string(), "pw".to_string())));
        let one = addresses_and_user("nats://queue:4222").expect("parses").0;
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn a_list_refuses_disagreeing_users_and_bad_members_without_quoting_them() {
        let err = addresses_and_user("nats://api:secret@a:4222,nats://workers:secret@b:4222").unwrap_err();
        assert!(err.to_string().contains("different users") && !err.to_string().contains("secret"), "{err}");
        let err = addresses_and_user("nats://a:4222,http://u:secret@[::1").unwrap_err().to_string();
        assert!(err.contains("nats.url") && !err.contains("secret"), "{err}");
        let err = addresses_and_user(" , ").unwrap_err().to_string();
        assert!(err.contains("names no server"), "{err}");
    }

    #[test]
    fn a_bad_nkey_seed_is_named_without_being_quoted() {
        let mut settings = crate::Settings::default().nats;
        settings.nkey_seed = Some(tally_domain::secret::Secret::new("SUnot-a-seed-secret"));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let err = runtime.block_on(connect(&settings)).unwrap_err().to_string();
        assert!(err.contains("nats.nkey_seed") && !err.contains("secret"), "{err}");
    }

    #[test]
    fn a_bad_url_is_named_without_being_quoted() {
        let err = address_and_user("http://u:secret@[::1").unwrap_err().to_string();
        assert!(err.contains("nats.url") && !err.contains("secret"), "{err}");
    }
}
