//! Argon2id hashing on a bounded set of blocking threads, so a burst of
//! logins queues here instead of stalling the async workers that carry
//! ballots.
//!
//! Each hash needs 19 MiB. The permit that bounds them travels into the
//! blocking task: a request that times out drops its future, but not the
//! hash already running, so the permit must live exactly as long as the
//! hash does. A caller that cannot get a permit in time is turned away
//! with 503 rather than queued without end.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::AuthSettings;

/// OWASP's minimum for argon2id: 19 MiB, two passes, one lane.
const MEMORY_KIB: u32 = 19 * 1024;
const PASSES: u32 = 2;
const LANES: u32 = 1;

#[derive(Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    /// How long a caller may wait for a permit before getting 503.
    wait: Duration,
    /// Verified against when the user does not exist, so a wrong id takes
    /// as long as a wrong password.
    decoy: Arc<String>,
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(MEMORY_KIB, PASSES, LANES, None).expect("constant parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn hash_now(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| anyhow::anyhow!("no randomness for a salt"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Ok(argon2()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing: {e}"))?
        .to_string())
}

fn verify_now(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|parsed| argon2().verify_password(password.as_bytes(), &parsed).is_ok())
}

impl Passwords {
    /// At most `auth.max_concurrent_hashes` at once, waiting at most
    /// `auth.hash_wait_ms` for a place.
    pub fn from_settings(settings: &AuthSettings) -> anyhow::Result<Passwords> {
        Passwords::with_wait(settings.max_concurrent_hashes, Duration::from_millis(settings.hash_wait_ms))
    }

    /// At most `max_concurrent` at once, waiting as long as it takes (for
    /// tools and tests; a server bounds the wait).
    pub fn new(max_concurrent: usize) -> anyhow::Result<Passwords> {
        Passwords::with_wait(max_concurrent, Duration::MAX)
    }

    fn with_wait(max_concurrent: usize, wait: Duration) -> anyhow::Result<Passwords> {
        register_metrics();
        let decoy = hash_now("decoy password that no account has")?;
        let permits = Arc::new(Semaphore::new(max_concurrent));
        Ok(Passwords { permits, wait, decoy: Arc::new(decoy) })
    }

    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        Ok(self.run(move || hash_now(&password)).await??)
    }

    /// True when `password` matches `phc`; with no hash, spends the same
    /// time on the decoy and returns false.
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool, HashError> {
        let (phc, real) = match phc {
            Some(phc) => (phc, true),
            None => (self.decoy.as_ref().clone(), false),
        };
        let matched = self.run(move || verify_now(&password, &phc)).await?;
        Ok(real && matched)
    }

    /// Runs `work` on a blocking thread once a permit is free, holding the
    /// permit until `work` ends even if the caller has gone.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let permit = match tokio::time::timeout(self.wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(closed)) => return Err(HashError::Failed(closed.into())),
            Err(_) => {
                metrics::counter!("tally_password_hashes_refused_total").increment(1);
                return Err(HashError::Busy(self.wait));
            }
        };
        tokio::task::spawn_blocking(move || {
            let _running = Running::start(permit);
            work()
        })
        .await
        .map_err(|panicked| HashError::Failed(panicked.into()))
    }
}

/// Why a password could not be hashed or checked.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every hashing slot stayed taken for the whole allowed wait.
    #[error("no password hashing slot within {0:?}")]
    Busy(Duration),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Hashes running in this process now, and the most ever at once.
static RUNNING: Mutex<Counts> = Mutex::new(Counts { now: 0, peak: 0 });

struct Counts {
    now: usize,
    peak: usize,
}

fn register_metrics() {
    metrics::gauge!("tally_password_hashes_running").increment(0.0);
    metrics::gauge!("tally_password_hashes_peak").increment(0.0);
    metrics::counter!("tally_password_hashes_refused_total").increment(0);
}

/// One hash in progress: counted while alive, and the owner of its permit.
struct Running {
    _permit: OwnedSemaphorePermit,
}

impl Running {
    fn start(permit: OwnedSemaphorePermit) -> Running {
        // Under the lock so that the gauges are set in the order counted.
        let mut counts = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        counts.now += 1;
        counts.peak = counts.peak.max(counts.now);
        metrics::gauge!("tally_password_hashes_running").set(counts.now as f64);
        metrics::gauge!("tally_password_hashes_peak").set(counts.peak as f64);
        Running { _permit: permit }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut counts = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        counts.now -= 1;
        metrics::gauge!("tally_password_hashes_running").set(counts.now as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_phc_and_verify() {
        let passwords = Passwords::new(1).unwrap();
        let phc = passwords.hash("correct horse battery".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(passwords.verify("correct horse battery".into(), Some(phc.clone())).await.unwrap());
        assert!(!passwords.verify("wrong horse battery".into(), Some(phc)).await.unwrap());
        assert!(!passwords.verify("decoy password that no account has".into(), None).await.unwrap());
    }
}
