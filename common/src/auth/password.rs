//! Argon2id hashing on a bounded set of blocking threads, so a burst of
//! logins queues here instead of stalling the async workers that carry
//! ballots.

use std::sync::Arc;

use anyhow::Context;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

/// OWASP's minimum for argon2id: 19 MiB, two passes, one lane.
const MEMORY_KIB: u32 = 19 * 1024;
const PASSES: u32 = 2;
const LANES: u32 = 1;

#[derive(Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
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
    pub fn new(max_concurrent: usize) -> anyhow::Result<Passwords> {
        let decoy = hash_now("decoy password that no account has")?;
        Ok(Passwords { permits: Arc::new(Semaphore::new(max_concurrent)), decoy: Arc::new(decoy) })
    }

    pub async fn hash(&self, password: String) -> anyhow::Result<String> {
        let _permit = self.permits.acquire().await.context("password pool closed")?;
        tokio::task::spawn_blocking(move || hash_now(&password)).await.context("hashing task")?
    }

    /// True when `password` matches `phc`; with no hash, spends the same
    /// time on the decoy and returns false.
    pub async fn verify(&self, password: String, phc: Option<String>) -> anyhow::Result<bool> {
        let _permit = self.permits.acquire().await.context("password pool closed")?;
        let (phc, real) = match phc {
            Some(phc) => (phc, true),
            None => (self.decoy.as_ref().clone(), false),
        };
        let matched = tokio::task::spawn_blocking(move || verify_now(&password, &phc))
            .await
            .context("verifying task")?;
        Ok(real && matched)
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
