//! Settings: built-in defaults, then an optional TOML file, then `TALLY_`
//! environment variables (`__` separates sections). Any setting can also be
//! read from a file named by `TALLY_<SETTING>_FILE`, which is how secrets
//! reach a container without sitting in its environment.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use tally_domain::record::note::{NoteSigner, NoteVerifier};
use tally_domain::secret::Secret;

/// The signing key a development stack uses. Production refuses it.
pub const DEV_SIGNING_KEY: &str = "tally-development-signing-key-never-use-in-production";
const DEV_ENROLLMENT_KEY: &str = "tally-development-enrollment-key-never-use-in-production";
const ENV_PREFIX: &str = "TALLY_";
const FILE_SUFFIX: &str = "_FILE";

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    #[default]
    Development,
    Production,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub env: Environment,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub nats: NatsSettings,
    pub http: HttpSettings,
    pub log: LogSettings,
    pub auth: AuthSettings,
    pub workers: WorkerSettings,
    pub broadcaster: BroadcasterSettings,
    pub limits: LimitSettings,
    pub sealing: SealingSettings,
    pub record: RecordSettings,
}

/// The election record (docs/record.md): where its origin says it comes
/// from, and the Ed25519 key that signs every election's checkpoint and
/// MANIFEST. Workers sign with it; the API serves its public half.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecordSettings {
    /// The host in each checkpoint's origin, `<public_host>/tally/election/<id>`:
    /// where voters reach Tally. Production drops the "localhost" default,
    /// and the workers then refuse to start (`origin_host`).
    pub public_host: String,
    /// `PRIVATE+KEY+<name>+<key id>+<base64>`, as `tally keys generate
    /// --record` prints it.
    pub signing_key: Secret,
}

/// The development record key's name and seed. Production drops it.
const DEV_RECORD_KEY_NAME: &str = "localhost/tally-development";
const DEV_RECORD_SEED: &str = "tally-development-record-key-never-use-in-production";

impl Default for RecordSettings {
    fn default() -> Self {
        RecordSettings { public_host: "localhost".into(), signing_key: Secret::new(development_record_key()) }
    }
}

fn development_record_key() -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, DEV_RECORD_SEED.as_bytes());
    let mut seed = [0u8; 32];
    seed.copy_from_slice(digest.as_ref());
    NoteSigner::from_seed(DEV_RECORD_KEY_NAME, seed).map(|s| s.encode()).unwrap_or_default()
}

impl RecordSettings {
    /// The signing key; workers refuse to start without it.
    pub fn signer(&self) -> Result<NoteSigner, ConfigError> {
        if self.signing_key.expose().is_empty() {
            return Err(ConfigError::new(
                "record.signing_key",
                "is missing; records need their own key (tally keys generate --record)",
            ));
        }
        NoteSigner::parse(self.signing_key.expose())
            .map_err(|e| ConfigError::new("record.signing_key", e.to_string()))
    }

    /// The key anyone checks records with.
    pub fn verifier(&self) -> Result<NoteVerifier, ConfigError> {
        self.signer().map(|s| s.verifier())
    }

    /// The host records name as their origin; workers refuse to start
    /// without one. A record signed as "localhost" names no server anyone
    /// can find, and once signed it cannot be renamed.
    pub fn origin_host(&self) -> Result<&str, ConfigError> {
        if self.public_host.is_empty() {
            return Err(ConfigError::new(
                "record.public_host",
                "is missing or names this machine; production needs the host voters reach Tally at",
            ));
        }
        Ok(&self.public_host)
    }
}

/// Whether `host` (with or without a port) names the machine itself.
fn names_this_machine(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.parse::<u16>().is_ok() && !name.ends_with(':') => name,
        _ => &host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

/// The keys ballots are sealed with (see `seal`). The API needs
/// `key_id`, `public_keys` and `api_private_key`; workers need
/// `private_keys` and `api_public_key`. Rotation: give workers the new
/// private key, then point the API's `key_id` at it, and destroy the old
/// private key once no message sealed to it is left in the stream.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SealingSettings {
    /// The workers' key the API seals to.
    pub key_id: String,
    /// Workers' public keys by id (base64url, 32 bytes).
    pub public_keys: BTreeMap<String, String>,
    /// Workers' private keys by id; several may be live during rotation.
    pub private_keys: BTreeMap<String, Secret>,
    /// The API's own key pair, which proves to workers that a ballot came
    /// from the API.
    pub api_private_key: Secret,
    pub api_public_key: String,
    /// The API's secret for receipts derived from a client's
    /// Idempotency-Key (at least 32 bytes). With it, nobody without the
    /// client's key can derive a receipt from a citizen.
    pub receipt_key: Secret,
}

/// Seeds of the development keys. Production refuses the keys they make.
const DEV_WORKERS_SEED: &str = "tally-development-workers-sealing-key";
const DEV_API_SEED: &str = "tally-development-api-sealing-key";
const DEV_RECEIPT_KEY: &str = "tally-development-receipt-key-never-use-in-production";

impl Default for SealingSettings {
    fn default() -> Self {
        let workers = tally_domain::seal::development_pair(DEV_WORKERS_SEED);
        let api = tally_domain::seal::development_pair(DEV_API_SEED);
        SealingSettings {
            key_id: "dev".into(),
            public_keys: BTreeMap::from([("dev".to_string(), workers.public)]),
            private_keys: BTreeMap::from([("dev".to_string(), Secret::new(workers.private))]),
            api_private_key: Secret::new(api.private),
            api_public_key: api.public,
            receipt_key: Secret::new(DEV_RECEIPT_KEY),
        }
    }
}

impl SealingSettings {
    /// The API's sealer: one HPKE context for this process.
    pub fn sealer(&self) -> Result<tally_domain::seal::Sealer, ConfigError> {
        let public = self.public_keys.get(&self.key_id).ok_or_else(|| {
            ConfigError::new("sealing.key_id", format!("no key `{}` in sealing.public_keys", self.key_id))
        })?;
        let public = tally_domain::seal::public_key(public)
            .map_err(|e| ConfigError::new(&format!("sealing.public_keys.{}", self.key_id), e.to_string()))?;
        if self.api_private_key.expose().is_empty() {
            return Err(ConfigError::new(
                "sealing.api_private_key",
                "is missing; the API needs its own pair (tally keys generate --api)",
            ));
        }
        let private = tally_domain::seal::private_key(self.api_private_key.expose())
            .map_err(|e| ConfigError::new("sealing.api_private_key", e.to_string()))?;
        tally_domain::seal::Sealer::new(&self.key_id, &public, &private)
            .map_err(|e| ConfigError::new("sealing.key_id", e.to_string()))
    }

    /// The API's receipt key, present and long enough.
    pub fn receipt_key(&self) -> Result<&[u8], ConfigError> {
        let key = self.receipt_key.expose().as_bytes();
        if key.len() < 32 {
            return Err(ConfigError::new(
                "sealing.receipt_key",
                "is missing or shorter than 32 bytes; the API needs its own (openssl rand -base64 32)",
            ));
        }
        Ok(key)
    }

    /// The workers' opener, with every live private key.
    pub fn opener(&self) -> Result<tally_domain::seal::Opener, ConfigError> {
        if self.private_keys.is_empty() {
            return Err(ConfigError::new(
                "sealing.private_keys",
                "is empty; workers need their private key (tally keys generate)",
            ));
        }
        if self.api_public_key.is_empty() {
            return Err(ConfigError::new(
                "sealing.api_public_key",
                "is missing; workers need the API's public key",
            ));
        }
        let mut keys = BTreeMap::new();
        for (id, key) in &self.private_keys {
            let key = tally_domain::seal::private_key(key.expose())
                .map_err(|e| ConfigError::new(&format!("sealing.private_keys.{id}"), e.to_string()))?;
            keys.insert(id.clone(), key);
        }
        let api = tally_domain::seal::public_key(&self.api_public_key)
            .map_err(|e| ConfigError::new("sealing.api_public_key", e.to_string()))?;
        Ok(tally_domain::seal::Opener::new(keys, api))
    }

    /// Every key given must be well formed. Which keys a process needs
    /// depends on its roles, so `sealer` and `opener` check presence when
    /// the API or the workers start.
    fn validate(&self) -> Result<(), ConfigError> {
        for (id, key) in &self.public_keys {
            tally_domain::seal::public_key(key)
                .map_err(|e| ConfigError::new(&format!("sealing.public_keys.{id}"), e.to_string()))?;
        }
        for (id, key) in &self.private_keys {
            tally_domain::seal::private_key(key.expose())
                .map_err(|e| ConfigError::new(&format!("sealing.private_keys.{id}"), e.to_string()))?;
        }
        if !self.api_private_key.expose().is_empty() {
            tally_domain::seal::private_key(self.api_private_key.expose())
                .map_err(|e| ConfigError::new("sealing.api_private_key", e.to_string()))?;
        }
        if !self.api_public_key.is_empty() {
            tally_domain::seal::public_key(&self.api_public_key)
                .map_err(|e| ConfigError::new("sealing.api_public_key", e.to_string()))?;
        }
        Ok(())
    }
}

/// Rate limits shared by every replica through Redis (GCRA). Each is a
/// number per minute; 0 turns that limit off.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Requests from one client address, on every public route.
    pub per_client_per_minute: u32,
    /// Receipt look-ups from one client address, counted in the process
    /// (a Redis key there would log when a receipt was polled).
    pub receipts_per_client_per_minute: u32,
    pub refresh_per_citizen_per_minute: u32,
    pub eligibility_per_citizen_per_minute: u32,
    /// New live connections (WebSocket or SSE) from one client address.
    pub live_connects_per_client_per_minute: u32,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: Secret,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
    /// Apply pending migrations when a process starts.
    pub migrate_on_start: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    pub url: Secret,
    /// Namespace for every key and pub/sub channel, so several stacks (or
    /// tests) can share one Redis.
    pub key_prefix: String,
    pub response_timeout_ms: u64,
    /// How long a final or cancelled election's keys stay in Redis (its
    /// results are then read from Postgres).
    pub settled_election_ttl_secs: u64,
    /// A PEM CA certificate to trust for a `rediss://` URL, beside the
    /// public roots (for a private CA).
    pub tls_root_certificate: Option<std::path::PathBuf>,
    /// Sentinels that say which node is the master now. Unset: `url` is
    /// the master.
    pub sentinel: Option<SentinelSettings>,
}

/// Redis behind Sentinel. `redis.url` still gives the master's scheme,
/// password and database; its host is ignored, since the master moves.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelSettings {
    /// The name the sentinels monitor the master by (`sentinel monitor <name> …`).
    pub master_name: String,
    /// `redis://[:password@]host:port` of each sentinel: a TOML array, or
    /// one string of comma-separated URLs, as an environment variable is
    /// usually written.
    #[serde(deserialize_with = "list_or_commas")]
    pub urls: Vec<Secret>,
}

fn list_or_commas<'de, D: serde::Deserializer<'de>>(input: D) -> Result<Vec<Secret>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Urls {
        List(Vec<String>),
        Commas(String),
    }
    let urls = match Urls::deserialize(input)? {
        Urls::List(urls) => urls,
        Urls::Commas(urls) => urls.split(',').map(|url| url.trim().to_string()).collect(),
    };
    Ok(urls.into_iter().filter(|url| !url.is_empty()).map(Secret::new).collect())
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    /// One server, or the members of a cluster separated by commas: the
    /// client connects to any and reconnects to the survivors.
    pub url: Secret,
    pub stream: String,
    /// Ballots go to `<subject_prefix>.<election_id>`.
    pub subject_prefix: String,
    pub consumer: String,
    pub duplicate_window_secs: u64,
    pub max_bytes: i64,
    pub max_messages: i64,
    pub replicas: usize,
    pub publish_timeout_ms: u64,
    pub ack_wait_secs: u64,
    /// A PEM CA certificate to trust for a `tls://` URL (private CA).
    pub tls_root_certificate: Option<std::path::PathBuf>,
    /// Who this process is to NATS, beside a `user:password@` in the URL:
    /// one identity per deployment unit, with the rights of its roles
    /// (docs/operations.md, "NATS identities").
    pub token: Option<Secret>,
    pub nkey_seed: Option<Secret>,
    /// A `.creds` file's contents (user JWT and seed); from the file with
    /// `TALLY_NATS__CREDENTIALS_FILE`.
    pub credentials: Option<Secret>,
    /// Where replies to this process arrive; each identity may subscribe
    /// only under its own, so none reads another's replies.
    pub inbox_prefix: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub api_addr: SocketAddr,
    pub broadcaster_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub body_limit_bytes: usize,
    pub request_timeout_ms: u64,
    /// Requests a listener works on at once; more are answered 503 with
    /// `Retry-After` at once, so overload cannot queue without end.
    pub max_in_flight: usize,
    /// Addresses or CIDR blocks of load balancers whose `X-Forwarded-For`
    /// names the client (for per-address limits). Empty: trust no one.
    pub trusted_proxies: Vec<String>,
    /// How many leading bits of an IPv6 address name one client for
    /// per-address limits (a subscriber commonly holds a /64).
    pub ipv6_client_prefix: u8,
    /// Origins (`https://results.example.org`) whose pages may call the
    /// API from a browser. Empty: CORS is off and browsers refuse them.
    pub cors_allowed_origins: Vec<String>,
    /// Where the voter page (`/vote`) links for live results, such as
    /// `https://results.example.org` or `/` behind a proxy that serves
    /// both. Unset: this host on the broadcaster's port.
    pub live_page_url: Option<String>,
    /// PEM certificate chain and private key: with both, the API and
    /// broadcaster serve HTTPS (with HSTS); without, plain HTTP for use
    /// behind a TLS-terminating proxy.
    pub tls_certificate: Option<std::path::PathBuf>,
    pub tls_private_key: Option<std::path::PathBuf>,
    /// A connection's first request (TLS handshake, protocol preface and
    /// headers) must arrive within this time of connecting, and later
    /// request headers within it too, or it is closed (slowloris).
    pub header_read_timeout_ms: u64,
    /// How long shutdown waits for in-flight requests and batches.
    pub shutdown_grace_secs: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `info,tally_workers=debug`.
    pub filter: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub issuer: String,
    pub audience: String,
    pub access_ttl_secs: u64,
    pub refresh_ttl_secs: u64,
    /// A rotated refresh token presented again this soon, before its
    /// successor was used, is a retry after a lost answer, not theft.
    pub refresh_reuse_grace_secs: u64,
    /// The `kid` new tokens are signed with; it must be one of `keys`.
    pub signing_key_id: String,
    /// Every key tokens may be verified with, by `kid`. Rotation: add the
    /// new key, switch `signing_key_id`, drop the old key once the access
    /// tokens it signed have expired.
    pub keys: BTreeMap<String, Secret>,
    pub clock_skew_secs: u64,
    /// Argon2 work runs on at most this many blocking threads at once.
    pub max_concurrent_hashes: usize,
    /// A login or sign-up that waits longer for one of them gets 503.
    pub hash_wait_ms: u64,
    /// Logins (and below, sign-ups) from one address in a window,
    /// whichever citizens they name.
    pub login_attempts_per_ip: u32,
    pub signup_attempts_per_ip: u32,
    /// Logins, and sign-ups, naming one citizen from one address. Keyed
    /// by the pair, so nobody can lock a chosen citizen out.
    pub attempts_per_citizen_address: u32,
    /// The backstop over all addresses for one citizen: past it, attempts
    /// wait their turn (slowed, never locked) for at most a few seconds.
    pub attempts_per_citizen: u32,
    pub login_window_secs: u64,
    /// The secret enrollment codes are hashed with (at least 32 bytes).
    pub enrollment_key: Secret,
}

impl AuthSettings {
    /// The enrollment key, present and long enough (production drops the
    /// development one, so the API and `tally citizens codes` refuse it).
    pub fn enrollment_key(&self) -> Result<&[u8], ConfigError> {
        let key = self.enrollment_key.expose().as_bytes();
        if key.len() < 32 {
            return Err(ConfigError::new(
                "auth.enrollment_key",
                "is missing or shorter than 32 bytes; codes need their own (openssl rand -base64 32)",
            ));
        }
        Ok(key)
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub batch_size: usize,
    pub batch_wait_ms: u64,
    /// Ballots delivered and not yet acked, across the consumer. Workers
    /// hold up to 2K+1 ballots per open election, so this must cover that
    /// for every open election plus a batch.
    pub max_ack_pending: i64,
    pub reconcile_interval_secs: u64,
    /// K, for elections that do not set their own: workers always keep at
    /// least K ballots of an election uncommitted, and commit in groups of
    /// more than K, so no commit isolates fewer than K voters.
    pub anonymity_set: i32,
}

impl NatsSettings {
    fn has_credentials(&self) -> bool {
        crate::nats::split_urls(self.url.expose()).any(has_password)
            || self.token.is_some()
            || self.nkey_seed.is_some()
            || self.credentials.is_some()
    }
}

impl WorkerSettings {
    /// Ballots a worker may hold for one election of anonymity set `k`.
    pub fn holding_for(k: i32) -> i64 {
        2 * i64::from(k) + 1
    }

    /// Whether elections with these anonymity sets can all hold at once.
    pub fn can_hold(&self, sets: impl IntoIterator<Item = i32>) -> bool {
        let held: i64 = sets.into_iter().map(Self::holding_for).sum();
        held + self.batch_size as i64 <= self.max_ack_pending
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcasterSettings {
    pub max_updates_per_sec: u32,
    pub max_viewers_per_ip: u32,
    pub ping_interval_secs: u64,
    /// The largest frame a viewer may send (they send only pongs and a close).
    pub max_frame_bytes: usize,
    /// A viewer whose socket takes nothing for this long is dropped.
    pub slow_viewer_timeout_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            env: Environment::Development,
            database: DatabaseSettings {
                url: Secret::new("postgres://postgres@127.0.0.1:5432/tally"),
                max_connections: 16,
                acquire_timeout_ms: 3_000,
                migrate_on_start: false,
            },
            redis: RedisSettings {
                url: Secret::new("redis://127.0.0.1:6379"),
                key_prefix: "tally".into(),
                response_timeout_ms: 2_000,
                settled_election_ttl_secs: 24 * 3600,
                tls_root_certificate: None,
                sentinel: None,
            },
            nats: NatsSettings {
                url: Secret::new("nats://127.0.0.1:4222"),
                stream: "VOTES".into(),
                subject_prefix: "votes".into(),
                consumer: "tally-workers".into(),
                duplicate_window_secs: 600,
                max_bytes: 1 << 30,
                max_messages: 10_000_000,
                replicas: 1,
                publish_timeout_ms: 2_000,
                ack_wait_secs: 30,
                tls_root_certificate: None,
                token: None,
                nkey_seed: None,
                credentials: None,
                inbox_prefix: "_INBOX".into(),
            },
            http: HttpSettings {
                api_addr: ([127, 0, 0, 1], 8080).into(),
                broadcaster_addr: ([127, 0, 0, 1], 8081).into(),
                admin_addr: ([127, 0, 0, 1], 9100).into(),
                body_limit_bytes: 16 * 1024,
                request_timeout_ms: 10_000,
                max_in_flight: 1024,
                trusted_proxies: Vec::new(),
                ipv6_client_prefix: 64,
                cors_allowed_origins: Vec::new(),
                live_page_url: None,
                tls_certificate: None,
                tls_private_key: None,
                header_read_timeout_ms: 10_000,
                shutdown_grace_secs: 20,
            },
            log: LogSettings { format: LogFormat::Human, filter: "info".into() },
            auth: AuthSettings {
                issuer: "tally".into(),
                audience: "tally-api".into(),
                access_ttl_secs: 15 * 60,
                refresh_ttl_secs: 30 * 24 * 3600,
                refresh_reuse_grace_secs: 10,
                signing_key_id: "dev".into(),
                keys: BTreeMap::from([("dev".to_string(), Secret::new(DEV_SIGNING_KEY))]),
                clock_skew_secs: 30,
                max_concurrent_hashes: 2,
                hash_wait_ms: 5_000,
                login_attempts_per_ip: 100,
                signup_attempts_per_ip: 20,
                attempts_per_citizen_address: 10,
                attempts_per_citizen: 100,
                login_window_secs: 300,
                enrollment_key: Secret::new(DEV_ENROLLMENT_KEY),
            },
            workers: WorkerSettings {
                batch_size: 1_000,
                batch_wait_ms: 5,
                max_ack_pending: 20_000,
                reconcile_interval_secs: 60,
                anonymity_set: 20,
            },
            broadcaster: BroadcasterSettings {
                max_updates_per_sec: 10,
                max_viewers_per_ip: 200,
                ping_interval_secs: 15,
                max_frame_bytes: 1024,
                slow_viewer_timeout_ms: 10_000,
            },
            limits: LimitSettings {
                per_client_per_minute: 1200,
                receipts_per_client_per_minute: 120,
                refresh_per_citizen_per_minute: 20,
                eligibility_per_citizen_per_minute: 60,
                live_connects_per_client_per_minute: 120,
            },
            sealing: SealingSettings::default(),
            record: RecordSettings::default(),
        }
    }
}

/// A setting that is missing or wrong, named so the operator can fix it.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting `{setting}` (env {env_var}): {reason}")]
pub struct ConfigError {
    pub setting: String,
    pub env_var: String,
    pub reason: String,
}

impl ConfigError {
    fn new(setting: &str, reason: impl Into<String>) -> Self {
        ConfigError { setting: setting.to_string(), env_var: env_var_for(setting), reason: reason.into() }
    }
}

/// Whether a `scheme://user:password@host` URL has a non-empty password.
fn has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else { return false };
    let Some((credentials, _)) = rest.split_once('@') else { return false };
    credentials.split_once(':').is_some_and(|(_, password)| !password.is_empty())
}

/// The `host:port` of a `scheme://user:password@host:port/path` URL.
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.rsplit_once('@').map_or(authority, |(_, host)| host)
}

/// `auth.signing_key_id` → `TALLY_AUTH__SIGNING_KEY_ID`.
pub fn env_var_for(setting: &str) -> String {
    format!("{ENV_PREFIX}{}", setting.replace('.', "__").to_uppercase())
}

impl Settings {
    /// Loads from the process environment and, when given, a TOML file.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Loads from an explicit set of variables (tests use this so they do
    /// not share process-wide state).
    pub fn load_from(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::new("config", format!("file {} does not exist", path.display())));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let plain: Vec<(String, String)> = vars
            .iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && !k.ends_with(FILE_SUFFIX) && k != "TALLY_CONFIG")
            .cloned()
            .collect();
        figment = figment.merge(PrefixedVars(plain));
        for (key, path) in vars.iter().filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.ends_with(FILE_SUFFIX))
        {
            let name = key.get(ENV_PREFIX.len()..key.len() - FILE_SUFFIX.len()).unwrap_or_default();
            if name.is_empty() {
                return Err(ConfigError::new(
                    "config",
                    format!(
                        "{key} names no setting: use TALLY_<SETTING>_FILE, or TALLY_CONFIG for a TOML file"
                    ),
                ));
            }
            let setting = name.to_lowercase().replace("__", ".");
            let value = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::new(&setting, format!("cannot read {key}={path}: {e}")))?;
            figment = figment.merge(Serialized::global(&setting, value.trim_end_matches(['\n', '\r'])));
        }
        let mut settings: Settings = figment.extract().map_err(from_figment)?;
        settings.drop_unused_development_key();
        settings.validate()?;
        Ok(settings)
    }

    /// The built-in development key is a default, not a choice: as soon as
    /// any other key is configured, in any environment, it is removed
    /// rather than accepted for verification. Anyone can read it in the
    /// source, so a stack with a key of its own (an image run without
    /// `TALLY_ENV`, say) would otherwise accept admin tokens anyone mints.
    fn drop_unused_development_key(&mut self) {
        let auth = &mut self.auth;
        let is_development_key = |key: &Secret| key.expose() == DEV_SIGNING_KEY;
        if auth.keys.values().any(|key| !is_development_key(key)) {
            auth.keys.retain(|_, key| !is_development_key(key));
        }
        // Sealing keys that equal the development ones are dropped in
        // production: each role then refuses to start without its own.
        if self.env == Environment::Production {
            let sealing = &mut self.sealing;
            let dev = SealingSettings::default();
            sealing.public_keys.retain(|_, key| !dev.public_keys.values().any(|d| d == key));
            sealing
                .private_keys
                .retain(|_, key| !dev.private_keys.values().any(|d| d.expose() == key.expose()));
            if sealing.api_private_key.expose() == dev.api_private_key.expose() {
                sealing.api_private_key = Secret::new("");
            }
            if sealing.api_public_key == dev.api_public_key {
                sealing.api_public_key = String::new();
            }
            if sealing.receipt_key.expose() == DEV_RECEIPT_KEY {
                sealing.receipt_key = Secret::new("");
            }
            if self.record.signing_key.expose() == development_record_key() {
                self.record.signing_key = Secret::new("");
            }
            if names_this_machine(&self.record.public_host) {
                self.record.public_host = String::new();
            }
            if self.auth.enrollment_key.expose() == DEV_ENROLLMENT_KEY {
                self.auth.enrollment_key = Secret::new("");
            }
        }
    }

    /// Production connects with its own credentials: not the built-in
    /// loopback defaults, and never a database, Redis or NATS without one.
    fn refuse_development_urls(&self) -> Result<(), ConfigError> {
        let defaults = Settings::default();
        let urls = [
            ("database.url", &self.database.url, &defaults.database.url, true),
            ("redis.url", &self.redis.url, &defaults.redis.url, true),
        ];
        for (setting, url, default, needs_password) in urls {
            if url == default {
                return Err(ConfigError::new(
                    setting,
                    "is the development default; production needs its own",
                ));
            }
            if needs_password && !has_password(url.expose()) {
                return Err(ConfigError::new(setting, "carries no password; production needs credentials"));
            }
        }
        // Each member of a NATS cluster list, as if it stood alone.
        if crate::nats::split_urls(self.nats.url.expose()).any(|url| url == defaults.nats.url.expose()) {
            return Err(ConfigError::new("nats.url", "is the development default; production needs its own"));
        }
        // Sentinels on this machine would fail over to this machine: no
        // high availability at all, most likely a development list.
        let mut sentinels = self.redis.sentinel.iter().flat_map(|s| &s.urls);
        if sentinels.any(|url| names_this_machine(url_host(url.expose()))) {
            return Err(ConfigError::new(
                "redis.sentinel.urls",
                "names this machine; production needs sentinels on their own hosts",
            ));
        }
        if !self.nats.has_credentials() {
            return Err(ConfigError::new(
                "nats.url",
                "carries no password and none of nats.token, nats.nkey_seed, nats.credentials is set; \
                 production needs credentials",
            ));
        }
        Ok(())
    }

    /// Production never lets a store connection fall back to plain text or
    /// skip the server's certificate: libpq's default `sslmode=prefer`
    /// quietly does the first, and redis' `#insecure` the second.
    fn refuse_weak_store_tls(&self) -> Result<(), ConfigError> {
        let url = self.database.url.expose();
        let sslmode = url
            .split_once('?')
            .map(|(_, query)| query)
            .unwrap_or_default()
            .split('&')
            .find_map(|pair| pair.strip_prefix("sslmode="));
        if !matches!(sslmode, Some("require" | "verify-ca" | "verify-full")) {
            return Err(ConfigError::new(
                "database.url",
                "needs sslmode=require, verify-ca or verify-full in production",
            ));
        }
        if self.redis.url.expose().contains("#insecure") {
            return Err(ConfigError::new(
                "redis.url",
                "asks not to verify the server's certificate (#insecure); production verifies it",
            ));
        }
        Ok(())
    }

    /// A zero here would panic a timer, or turn a limit or a deadline off.
    fn refuse_zero_durations(&self) -> Result<(), ConfigError> {
        let positive = [
            ("database.acquire_timeout_ms", self.database.acquire_timeout_ms),
            ("database.max_connections", u64::from(self.database.max_connections)),
            ("redis.response_timeout_ms", self.redis.response_timeout_ms),
            ("redis.settled_election_ttl_secs", self.redis.settled_election_ttl_secs),
            ("nats.publish_timeout_ms", self.nats.publish_timeout_ms),
            ("nats.duplicate_window_secs", self.nats.duplicate_window_secs),
            ("http.request_timeout_ms", self.http.request_timeout_ms),
            ("http.header_read_timeout_ms", self.http.header_read_timeout_ms),
            ("http.max_in_flight", self.http.max_in_flight as u64),
            ("auth.refresh_ttl_secs", self.auth.refresh_ttl_secs),
            ("auth.login_window_secs", self.auth.login_window_secs),
            ("auth.hash_wait_ms", self.auth.hash_wait_ms),
            ("workers.reconcile_interval_secs", self.workers.reconcile_interval_secs),
            ("broadcaster.ping_interval_secs", self.broadcaster.ping_interval_secs),
            ("broadcaster.slow_viewer_timeout_ms", self.broadcaster.slow_viewer_timeout_ms),
        ];
        match positive.iter().find(|(_, value)| *value == 0) {
            Some((setting, _)) => Err(ConfigError::new(setting, "must be at least 1")),
            None => Ok(()),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.http.tls_certificate.is_some() != self.http.tls_private_key.is_some() {
            return Err(ConfigError::new(
                "http.tls_private_key",
                "TLS needs both http.tls_certificate and http.tls_private_key",
            ));
        }
        for origin in &self.http.cors_allowed_origins {
            if !(origin.starts_with("https://") || origin.starts_with("http://")) || origin.ends_with('/') {
                return Err(ConfigError::new(
                    "http.cors_allowed_origins",
                    format!("`{origin}` is not an origin such as https://example.org"),
                ));
            }
        }
        crate::proxies::TrustedProxies::parse(&self.http.trusted_proxies)
            .map_err(|why| ConfigError::new("http.trusted_proxies", why))?
            .with_ipv6_prefix(self.http.ipv6_client_prefix)
            .map_err(|why| ConfigError::new("http.ipv6_client_prefix", why))?;
        let auth = &self.auth;
        if !auth.keys.contains_key(&auth.signing_key_id) {
            let reason = if auth.signing_key_id == "dev" {
                "names the development key, which is dropped once a key of your own is configured; \
                 sign with one of yours"
                    .to_string()
            } else {
                format!(
                    "no key `{}` in auth.keys; add TALLY_AUTH__KEYS__{}",
                    auth.signing_key_id,
                    auth.signing_key_id.to_uppercase()
                )
            };
            return Err(ConfigError::new("auth.signing_key_id", reason));
        }
        self.refuse_zero_durations()?;
        for (kid, key) in &auth.keys {
            let setting = format!("auth.keys.{kid}");
            if key.expose().is_empty() {
                return Err(ConfigError::new(&setting, "is empty"));
            }
            if self.env == Environment::Production {
                if key.expose() == DEV_SIGNING_KEY {
                    return Err(ConfigError::new(
                        &setting,
                        "is the development key; production needs its own secret",
                    ));
                }
                if key.expose().len() < 32 {
                    return Err(ConfigError::new(&setting, "is shorter than 32 bytes"));
                }
            }
        }
        if self.env == Environment::Production {
            self.refuse_development_urls()?;
            self.refuse_weak_store_tls()?;
        }
        if auth.access_ttl_secs == 0 || auth.access_ttl_secs > 15 * 60 {
            return Err(ConfigError::new("auth.access_ttl_secs", "must be between 1 and 900 seconds"));
        }
        if self.workers.batch_size == 0 {
            return Err(ConfigError::new("workers.batch_size", "must be at least 1"));
        }
        if self.nats.ack_wait_secs < 3 {
            // Held ballots are kept alive once a second, at a third of it.
            return Err(ConfigError::new("nats.ack_wait_secs", "must be at least 3"));
        }
        if !(2..=10_000).contains(&self.workers.anonymity_set) {
            return Err(ConfigError::new("workers.anonymity_set", "must be between 2 and 10000"));
        }
        if !self.workers.can_hold([self.workers.anonymity_set]) {
            return Err(ConfigError::new(
                "workers.max_ack_pending",
                format!(
                    "must cover 2 × workers.anonymity_set + 1 held ballots plus a batch (at least {})",
                    WorkerSettings::holding_for(self.workers.anonymity_set) + self.workers.batch_size as i64
                ),
            ));
        }
        self.sealing.validate()?;
        if !self.record.signing_key.expose().is_empty() {
            self.record.signer()?;
        }
        // Empty here is production's dropped "localhost": the workers refuse it.
        if self.record.public_host.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(ConfigError::new("record.public_host", "must be a host name, without spaces"));
        }
        if self.broadcaster.max_updates_per_sec == 0 {
            return Err(ConfigError::new("broadcaster.max_updates_per_sec", "must be at least 1"));
        }
        if auth.max_concurrent_hashes == 0 {
            return Err(ConfigError::new("auth.max_concurrent_hashes", "must be at least 1"));
        }
        if self.broadcaster.max_frame_bytes < 125 {
            // A control frame (a pong, a close) may carry 125 bytes.
            return Err(ConfigError::new("broadcaster.max_frame_bytes", "must be at least 125"));
        }
        let redis_schemes = &["redis://", "rediss://"][..];
        let sentinels = self.redis.sentinel.iter().flat_map(|s| &s.urls).map(Secret::expose);
        let nats = crate::nats::split_urls(self.nats.url.expose());
        let every_url = [
            ("database.url", vec![self.database.url.expose()], &["postgres://", "postgresql://"][..]),
            ("redis.url", vec![self.redis.url.expose()], redis_schemes),
            ("redis.sentinel.urls", sentinels.collect(), redis_schemes),
            ("nats.url", nats.collect(), &["nats://", "tls://"][..]),
        ];
        for (setting, urls, schemes) in every_url {
            if urls.iter().any(|url| !schemes.iter().any(|s| url.starts_with(s))) {
                let each = if urls.len() > 1 { "each address " } else { "" };
                return Err(ConfigError::new(
                    setting,
                    format!("{each}must start with {}", schemes.join(" or ")),
                ));
            }
        }
        if crate::nats::split_urls(self.nats.url.expose()).next().is_none() {
            return Err(ConfigError::new("nats.url", "names no server"));
        }
        if let Some(sentinel) = &self.redis.sentinel {
            if sentinel.master_name.trim().is_empty() {
                return Err(ConfigError::new(
                    "redis.sentinel.master_name",
                    "is empty; name the monitored master",
                ));
            }
            if sentinel.urls.is_empty() {
                return Err(ConfigError::new("redis.sentinel.urls", "names no sentinel"));
            }
        }
        Ok(())
    }
}

fn from_figment(error: figment::Error) -> ConfigError {
    let setting = if error.path.is_empty() { "config".to_string() } else { error.path.join(".") };
    let origin = error.metadata.as_ref().map(|m| format!(" (from {})", m.name)).unwrap_or_default();
    ConfigError::new(&setting, format!("{}{origin}", error.kind))
}

/// `TALLY_` variables from an explicit list rather than the process, so the
/// `_FILE` and `TALLY_CONFIG` variables can be set aside first.
struct PrefixedVars(Vec<(String, String)>);

impl figment::Provider for PrefixedVars {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("TALLY_ environment variables")
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut dict = figment::value::Dict::new();
        for (key, value) in &self.0 {
            let Some(name) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path = name.to_lowercase().replace("__", ".");
            let parsed: figment::value::Value = value.parse().unwrap_or_else(|_| value.as_str().into());
            let nested = figment::util::nest(&path, parsed);
            if let figment::value::Value::Dict(_, d) = nested {
                dict = merge_dicts(dict, d);
            }
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

fn merge_dicts(mut base: figment::value::Dict, add: figment::value::Dict) -> figment::value::Dict {
    use figment::value::Value;
    for (k, v) in add {
        match (base.remove(&k), v) {
            (Some(Value::Dict(_, a)), Value::Dict(tag, b)) => {
                base.insert(k, Value::Dict(tag, merge_dicts(a, b)));
            }
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
    base
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Environment::Development => "development",
            Environment::Production => "production",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Store URLs production accepts: its own hosts, with passwords.
    const PRODUCTION_STORES: [(&str, &str); 3] = [
        ("TALLY_DATABASE__URL", "postgres://tally:a-real-password@db/tally?sslmode=require"),
        ("TALLY_REDIS__URL", "redis://:a-real-password@cache:6379"),
        ("TALLY_NATS__URL", "tls://api:a-real-password@queue:4222"),
    ];

    /// Production settings with acceptable stores, plus `extra`.
    fn production(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut all = vec![("TALLY_ENV", "production")];
        all.extend(PRODUCTION_STORES);
        all.extend(extra.iter().copied());
        vars(&all)
    }

    #[test]
    fn defaults_point_at_loopback() {
        let s = Settings::load_from(None, vars(&[])).expect("defaults load");
        assert_eq!(s.database.url.expose(), "postgres://postgres@127.0.0.1:5432/tally");
        assert_eq!(s.http.admin_addr.to_string(), "127.0.0.1:9100");
        assert_eq!(s.http.api_addr.port(), 8080);
        assert_eq!(s.http.broadcaster_addr.port(), 8081);
    }

    #[test]
    fn env_overrides_nested_settings() {
        let s = Settings::load_from(
            None,
            vars(&[("TALLY_WORKERS__BATCH_SIZE", "42"), ("TALLY_LOG__FORMAT", "json"), ("PATH", "/bin")]),
        )
        .expect("loads");
        assert_eq!(s.workers.batch_size, 42);
        assert_eq!(s.log.format, LogFormat::Json);
    }

    #[test]
    fn a_bad_value_names_the_setting_and_its_variable() {
        let err = Settings::load_from(None, vars(&[("TALLY_WORKERS__BATCH_SIZE", "many")])).unwrap_err();
        assert_eq!(err.setting, "workers.batch_size");
        let line = err.to_string();
        assert!(line.contains("TALLY_WORKERS__BATCH_SIZE"), "{line}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Settings::load_from(None, vars(&[("TALLY_DATABASE__URLL", "postgres://x")])).unwrap_err();
        assert!(err.to_string().contains("urll"), "{err}");
    }

    #[test]
    fn secrets_can_come_from_files() {
        let dir = std::env::temp_dir().join(format!("tally-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("key");
        std::fs::write(&file, "a-signing-key-that-is-long-enough-for-production\n").expect("write");
        let s = Settings::load_from(
            None,
            production(&[
                ("TALLY_AUTH__SIGNING_KEY_ID", "k2"),
                ("TALLY_AUTH__KEYS__K2_FILE", file.to_str().expect("utf-8 path")),
                ("TALLY_AUTH__KEYS__DEV", "another-long-enough-secret-for-production-use"),
            ]),
        )
        .expect("loads");
        assert_eq!(s.auth.keys["k2"].expose(), "a-signing-key-that-is-long-enough-for-production");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_missing_secret_file_is_named() {
        let err = Settings::load_from(None, vars(&[("TALLY_DATABASE__URL_FILE", "/nonexistent/db-url")]))
            .unwrap_err();
        assert_eq!(err.setting, "database.url");
    }

    #[test]
    fn production_refuses_the_development_key() {
        let err = Settings::load_from(None, vars(&[("TALLY_ENV", "production")])).unwrap_err();
        assert_eq!(err.setting, "auth.keys.dev");
    }

    #[test]
    fn production_signing_with_its_own_key_drops_the_development_default() {
        let key = "a-signing-key-that-is-long-enough-for-production";
        let s = Settings::load_from(
            None,
            production(&[("TALLY_AUTH__SIGNING_KEY_ID", "main"), ("TALLY_AUTH__KEYS__MAIN", key)]),
        )
        .unwrap();
        assert_eq!(s.auth.keys.keys().collect::<Vec<_>>(), ["main"]);
    }

    #[test]
    fn production_refuses_development_and_password_less_store_urls() {
        let key = "a-signing-key-that-is-long-enough-for-production";
        let load = |replace: (&'static str, &'static str)| {
            let mut all = vec![("TALLY_ENV", "production"), ("TALLY_AUTH__KEYS__DEV", key)];
            all.extend(PRODUCTION_STORES.iter().copied().filter(|(k, _)| *k != replace.0));
            all.push(replace);
            Settings::load_from(None, vars(&all))
        };
        assert!(load(PRODUCTION_STORES[0]).is_ok());
        for (bad, setting) in [
            (("TALLY_DATABASE__URL", "postgres://postgres@127.0.0.1:5432/tally"), "database.url"),
            (("TALLY_DATABASE__URL", "postgres://tally@db/tally"), "database.url"),
            (("TALLY_REDIS__URL", "redis://127.0.0.1:6379"), "redis.url"),
            (("TALLY_REDIS__URL", "redis://cache:6379"), "redis.url"),
            (("TALLY_NATS__URL", "nats://127.0.0.1:4222"), "nats.url"),
            (("TALLY_NATS__URL", "tls://queue:4222"), "nats.url"),
        ] {
            let err = load(bad).unwrap_err();
            assert!(err.to_string().contains(setting), "{bad:?}: {err}");
        }
    }

    #[test]
    fn nats_takes_a_list_and_production_checks_each_member() {
        let list = "nats://127.0.0.1:4222,nats://127.0.0.1:4223, nats://127.0.0.1:4224";
        let s = Settings::load_from(None, vars(&[("TALLY_NATS__URL", list)])).expect("a list loads");
        assert_eq!(crate::nats::split_urls(s.nats.url.expose()).count(), 3);
        let err = Settings::load_from(None, vars(&[("TALLY_NATS__URL", "nats://a:4222,http://b:4222")]))
            .unwrap_err();
        assert_eq!(err.setting, "nats.url");
        assert!(err.reason.contains("each address"), "{err}");
        let key = ("TALLY_AUTH__KEYS__DEV", "a-signing-key-that-is-long-enough-for-production");
        let cluster = "tls://api:pw@queue-0:4222,tls://api:pw@queue-1:4222";
        assert!(Settings::load_from(None, production(&[key, ("TALLY_NATS__URL", cluster)])).is_ok());
        for bad in
            ["tls://api:pw@queue-0:4222,nats://127.0.0.1:4222", "tls://queue-0:4222,tls://queue-1:4222"]
        {
            let err = Settings::load_from(None, production(&[key, ("TALLY_NATS__URL", bad)])).unwrap_err();
            assert_eq!(err.setting, "nats.url", "{bad}");
        }
        // Credentials in one member count for the whole list.
        let one = "tls://queue-0:4222,tls://api:pw@queue-1:4222";
        assert!(Settings::load_from(None, production(&[key, ("TALLY_NATS__URL", one)])).is_ok());
    }

    #[test]
    fn sentinels_come_as_an_array_or_commas_and_production_refuses_loopback_ones() {
        let name = ("TALLY_REDIS__SENTINEL__MASTER_NAME", "tally");
        let array = r#"["redis://127.0.0.1:26379","redis://127.0.0.1:26380"]"#;
        let commas = "redis://127.0.0.1:26379, redis://127.0.0.1:26380";
        for urls in [array, commas] {
            let s = Settings::load_from(None, vars(&[name, ("TALLY_REDIS__SENTINEL__URLS", urls)])).unwrap();
            let sentinel = s.redis.sentinel.expect("sentinel set");
            assert_eq!(sentinel.master_name, "tally");
            let urls: Vec<&str> = sentinel.urls.iter().map(Secret::expose).collect();
            assert_eq!(urls, ["redis://127.0.0.1:26379", "redis://127.0.0.1:26380"], "{urls:?}");
        }
        assert!(Settings::load_from(None, vars(&[])).unwrap().redis.sentinel.is_none());
        let dir = std::env::temp_dir().join(format!("tally-sentinel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("tally.toml");
        std::fs::write(&file, "[redis.sentinel]\nmaster_name = \"tally\"\nurls = [\"redis://s1:26379\"]\n")
            .expect("write");
        let s = Settings::load_from(Some(&file), vars(&[])).expect("loads from TOML");
        assert_eq!(s.redis.sentinel.expect("set").urls.len(), 1);
        std::fs::remove_dir_all(dir).ok();

        for (bad, setting) in [
            (vec![name], "redis.sentinel"),
            (vec![name, ("TALLY_REDIS__SENTINEL__URLS", "http://s1:26379")], "redis.sentinel.urls"),
            (vec![name, ("TALLY_REDIS__SENTINEL__URLS", " , ")], "redis.sentinel.urls"),
            (
                vec![
                    ("TALLY_REDIS__SENTINEL__MASTER_NAME", ""),
                    ("TALLY_REDIS__SENTINEL__URLS", "redis://s:1"),
                ],
                "redis.sentinel.master_name",
            ),
        ] {
            let err = Settings::load_from(None, vars(&bad)).unwrap_err();
            assert!(err.setting.starts_with(setting), "{bad:?}: {err}");
        }
        let key = ("TALLY_AUTH__KEYS__DEV", "a-signing-key-that-is-long-enough-for-production");
        let own = "redis://:pw@sentinel-0:26379,redis://:pw@sentinel-1:26379";
        let loaded =
            Settings::load_from(None, production(&[key, name, ("TALLY_REDIS__SENTINEL__URLS", own)]));
        assert!(loaded.is_ok(), "{:?}", loaded.err());
        for local in ["redis://sentinel-0:26379,redis://127.0.0.1:26380", "redis://:pw@localhost:26379"] {
            let err =
                Settings::load_from(None, production(&[key, name, ("TALLY_REDIS__SENTINEL__URLS", local)]))
                    .unwrap_err();
            assert_eq!(err.env_var, "TALLY_REDIS__SENTINEL__URLS", "{local}");
        }
        let shown = format!(
            "{:?}",
            Settings::load_from(None, vars(&[name, ("TALLY_REDIS__SENTINEL__URLS", "redis://:hunter2@s:1")]))
                .unwrap()
        );
        assert!(!shown.contains("hunter2"), "Debug never shows a sentinel's password");
    }

    #[test]
    fn production_refuses_store_connections_that_may_skip_tls() {
        let key = "a-signing-key-that-is-long-enough-for-production";
        let load = |var: &'static str, url: &'static str| {
            let mut all = production(&[("TALLY_AUTH__KEYS__DEV", key)]);
            all.retain(|(k, _)| k != var);
            all.push((var.to_string(), url.to_string()));
            Settings::load_from(None, all)
        };
        for sslmode in ["require", "verify-ca", "verify-full"] {
            let url = format!("postgres://tally:pw@db/tally?application_name=t&sslmode={sslmode}");
            assert!(load("TALLY_DATABASE__URL", url.leak()).is_ok(), "{sslmode}");
        }
        for weak in ["", "?sslmode=prefer", "?sslmode=disable", "?sslmode=allow"] {
            let url = format!("postgres://tally:pw@db/tally{weak}");
            let err = load("TALLY_DATABASE__URL", url.leak()).unwrap_err();
            assert_eq!(err.setting, "database.url", "{weak}: {err}");
            assert!(err.reason.contains("sslmode=require"), "{err}");
        }
        let err = load("TALLY_REDIS__URL", "rediss://:pw@cache:6380/#insecure").unwrap_err();
        assert_eq!(err.setting, "redis.url");
        assert!(load("TALLY_REDIS__URL", "rediss://:pw@cache:6380/").is_ok());
    }

    #[test]
    fn a_zero_duration_or_limit_window_is_a_clear_error() {
        for (var, setting) in [
            ("TALLY_AUTH__LOGIN_WINDOW_SECS", "auth.login_window_secs"),
            ("TALLY_WORKERS__RECONCILE_INTERVAL_SECS", "workers.reconcile_interval_secs"),
            ("TALLY_BROADCASTER__PING_INTERVAL_SECS", "broadcaster.ping_interval_secs"),
            ("TALLY_HTTP__HEADER_READ_TIMEOUT_MS", "http.header_read_timeout_ms"),
            ("TALLY_NATS__PUBLISH_TIMEOUT_MS", "nats.publish_timeout_ms"),
            ("TALLY_AUTH__HASH_WAIT_MS", "auth.hash_wait_ms"),
            ("TALLY_BROADCASTER__SLOW_VIEWER_TIMEOUT_MS", "broadcaster.slow_viewer_timeout_ms"),
        ] {
            let err = Settings::load_from(None, vars(&[(var, "0")])).unwrap_err();
            assert_eq!(err.setting, setting);
            assert!(err.to_string().contains(var), "{err}");
        }
    }

    #[test]
    fn production_takes_nats_credentials_from_a_token_nkey_or_creds_file() {
        for credential in [
            ("TALLY_NATS__TOKEN", "a-real-token"),
            ("TALLY_NATS__NKEY_SEED", "SUAM-not-checked-here"),
            ("TALLY_NATS__CREDENTIALS", "-----BEGIN NATS USER JWT-----"),
        ] {
            let key = ("TALLY_AUTH__KEYS__DEV", "a-signing-key-that-is-long-enough-for-production");
            let loaded = Settings::load_from(
                None,
                production(&[key, ("TALLY_NATS__URL", "tls://queue:4222"), credential]),
            );
            assert!(loaded.is_ok(), "{credential:?}: {:?}", loaded.err());
        }
    }

    #[test]
    fn a_file_variable_without_a_setting_is_a_clear_error() {
        let err = Settings::load_from(None, vars(&[("TALLY_FILE", "/etc/tally.toml")])).unwrap_err();
        assert!(err.reason.contains("TALLY_CONFIG"), "{err}");
    }

    #[test]
    fn the_development_key_is_dropped_beside_a_key_of_ones_own_in_any_environment() {
        let key = "a-signing-key-that-is-long-enough-for-production";
        let own = [("TALLY_AUTH__SIGNING_KEY_ID", "main"), ("TALLY_AUTH__KEYS__MAIN", key)];
        let s = Settings::load_from(None, vars(&own)).unwrap();
        assert_eq!(s.auth.keys.keys().collect::<Vec<_>>(), ["main"], "development");
        // Still signing with the development key beside one's own is refused.
        let err = Settings::load_from(None, vars(&[("TALLY_AUTH__KEYS__MAIN", key)])).unwrap_err();
        assert_eq!(err.setting, "auth.signing_key_id");
        assert!(err.reason.contains("development key"), "{err}");
        // Alone, it stays: a development stack needs no configuration.
        let s = Settings::load_from(None, vars(&[])).unwrap();
        assert_eq!(s.auth.keys.keys().collect::<Vec<_>>(), ["dev"]);
    }

    #[test]
    fn production_refuses_a_short_key() {
        let err = Settings::load_from(
            None,
            vars(&[("TALLY_ENV", "production"), ("TALLY_AUTH__KEYS__DEV", "short")]),
        )
        .unwrap_err();
        assert!(err.reason.contains("32 bytes"), "{err}");
    }

    #[test]
    fn a_frame_cap_below_a_control_frame_is_refused() {
        let err =
            Settings::load_from(None, vars(&[("TALLY_BROADCASTER__MAX_FRAME_BYTES", "124")])).unwrap_err();
        assert_eq!(err.setting, "broadcaster.max_frame_bytes");
    }

    #[test]
    fn production_refuses_the_development_enrollment_key() {
        let key = "a-signing-key-that-is-long-enough-for-production";
        let own = "an-enrollment-key-that-is-long-enough-for-production";
        let base = [("TALLY_AUTH__KEYS__DEV", key)];
        let s = Settings::load_from(None, production(&base)).unwrap();
        assert_eq!(s.auth.enrollment_key().unwrap_err().setting, "auth.enrollment_key");
        let dev = Settings::load_from(None, vars(&[])).unwrap();
        assert!(dev.auth.enrollment_key().is_ok(), "development has a default");
        let s =
            Settings::load_from(None, production(&[base[0], ("TALLY_AUTH__ENROLLMENT_KEY", own)])).unwrap();
        assert_eq!(s.auth.enrollment_key().unwrap(), own.as_bytes());
    }

    #[test]
    fn production_drops_the_development_record_key_and_the_workers_then_refuse() {
        let dev = Settings::load_from(None, vars(&[])).unwrap();
        assert!(dev.record.signer().is_ok(), "development signs with its own key");
        let s = Settings::load_from(
            None,
            production(&[("TALLY_AUTH__KEYS__K1", &"k".repeat(32)), ("TALLY_AUTH__SIGNING_KEY_ID", "k1")]),
        )
        .unwrap();
        let e = s.record.signer().unwrap_err();
        assert_eq!(e.env_var, "TALLY_RECORD__SIGNING_KEY");
        let own = NoteSigner::from_seed("vote.example/tally", [5; 32]).unwrap().encode();
        let dir = std::env::temp_dir().join(format!("tally-record-key-{}", std::process::id()));
        std::fs::write(&dir, format!("{own}\n")).unwrap();
        let s = Settings::load_from(
            None,
            production(&[
                ("TALLY_AUTH__KEYS__K1", &"k".repeat(32)),
                ("TALLY_AUTH__SIGNING_KEY_ID", "k1"),
                ("TALLY_RECORD__SIGNING_KEY_FILE", dir.to_str().unwrap()),
            ]),
        )
        .unwrap();
        std::fs::remove_file(&dir).ok();
        assert_eq!(s.record.signer().unwrap().name(), "vote.example/tally");
        assert!(!format!("{s:?}").contains(&own[20..]), "Debug never shows the record key");
        let bad =
            Settings::load_from(None, vars(&[("TALLY_RECORD__SIGNING_KEY", "PRIVATE+KEY+x+00000000+AQ==")]));
        assert_eq!(bad.unwrap_err().setting, "record.signing_key");
    }

    #[test]
    fn production_drops_a_local_public_host_and_the_workers_then_refuse() {
        let dev = Settings::load_from(None, vars(&[])).unwrap();
        assert_eq!(dev.record.origin_host().unwrap(), "localhost", "development names itself");
        let auth = [("TALLY_AUTH__KEYS__K1", "k".repeat(32)), ("TALLY_AUTH__SIGNING_KEY_ID", "k1".into())];
        let with_host = |host: Option<&str>| {
            let mut extra: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
            extra.extend(host.map(|h| ("TALLY_RECORD__PUBLIC_HOST", h)));
            Settings::load_from(None, production(&extra)).unwrap()
        };
        for local in [None, Some("localhost"), Some("LOCALHOST:8000"), Some("127.0.0.1"), Some("[::1]:443")] {
            let e = with_host(local).record.origin_host().unwrap_err();
            assert_eq!(e.env_var, "TALLY_RECORD__PUBLIC_HOST", "{local:?}");
        }
        assert_eq!(with_host(Some("vote.example.org")).record.origin_host().unwrap(), "vote.example.org");
        let slashed = Settings::load_from(None, vars(&[("TALLY_RECORD__PUBLIC_HOST", "a/b")]));
        assert_eq!(slashed.unwrap_err().setting, "record.public_host");
    }

    #[test]
    fn debug_never_prints_secrets() {
        let s = Settings::load_from(None, vars(&[("TALLY_DATABASE__URL", "postgres://u:hunter2@db/tally")]))
            .expect("loads");
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"));
        assert!(!shown.contains(DEV_SIGNING_KEY));
    }

    #[test]
    fn toml_file_sits_between_defaults_and_env() {
        let dir = std::env::temp_dir().join(format!("tally-toml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("tally.toml");
        std::fs::write(&file, "[workers]\nbatch_size = 7\nbatch_wait_ms = 9\n").expect("write");
        let s =
            Settings::load_from(Some(&file), vars(&[("TALLY_WORKERS__BATCH_WAIT_MS", "3")])).expect("loads");
        assert_eq!(s.workers.batch_size, 7);
        assert_eq!(s.workers.batch_wait_ms, 3);
        std::fs::remove_dir_all(dir).ok();
    }
}
