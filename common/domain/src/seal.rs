//! Sealing ballots so that only the workers can read them, and only the
//! API can write them.
//!
//! HPKE (RFC 9180: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256) in Auth mode:
//! the API's own static key proves the sender, so someone who may publish
//! on NATS cannot forge a ballot. The public-key work is done once per API
//! process: its HPKE context exports a ChaCha20-Poly1305 key, and each
//! ballot then costs one AEAD with a counter nonce. The encapsulated key
//! travels with every message, so any worker derives the same AEAD key
//! once and caches it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hpke::aead::ExportOnlyAead;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

type Kem = X25519HkdfSha256;
pub type PrivateKey = <Kem as hpke::Kem>::PrivateKey;
pub type PublicKey = <Kem as hpke::Kem>::PublicKey;
type EncappedKey = <Kem as hpke::Kem>::EncappedKey;

/// Bound into every context, with the key id after it.
const INFO: &[u8] = b"tally sealed ballots v2 ";
const EXPORT_LABEL: &[u8] = b"tally ballot aead key";
/// Contexts a worker keeps; one per API process start, so this is plenty.
const MAX_CONTEXTS: usize = 4096;
pub const TAG_LEN: usize = 16;
/// What sealing adds to a plaintext: the nonce in front, the tag behind.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("key `{0}` is not base64url of 32 bytes")]
    BadKey(String),
    #[error("no private key with id `{0}`")]
    UnknownKey(String),
    #[error("the encapsulated key is malformed")]
    BadEncapsulation,
    #[error("the sealed ballot does not open with this key and context")]
    DoesNotOpen,
    #[error("HPKE failed: {0}")]
    Hpke(String),
}

/// A key pair as text: what `tally keys generate` prints.
pub struct KeyPair {
    pub public: String,
    pub private: String,
}

pub fn generate() -> KeyPair {
    let (private, public) = Kem::gen_keypair(&mut rand_core::UnwrapErr(rand_core::OsRng));
    encode_pair(&private, &public)
}

/// A key pair derived from a fixed seed: the development keys. Production
/// refuses them.
pub fn development_pair(seed: &str) -> KeyPair {
    let (private, public) = Kem::derive_keypair(seed.as_bytes());
    encode_pair(&private, &public)
}

fn encode_pair(private: &PrivateKey, public: &PublicKey) -> KeyPair {
    KeyPair {
        public: URL_SAFE_NO_PAD.encode(public.to_bytes()),
        private: URL_SAFE_NO_PAD.encode(private.to_bytes()),
    }
}

pub fn public_key(text: &str) -> Result<PublicKey, SealError> {
    let bytes = URL_SAFE_NO_PAD.decode(text.trim()).map_err(|_| SealError::BadKey("public".into()))?;
    PublicKey::from_bytes(&bytes).map_err(|_| SealError::BadKey("public".into()))
}

pub fn private_key(text: &str) -> Result<PrivateKey, SealError> {
    let bytes = URL_SAFE_NO_PAD.decode(text.trim()).map_err(|_| SealError::BadKey("private".into()))?;
    PrivateKey::from_bytes(&bytes).map_err(|_| SealError::BadKey("private".into()))
}

fn info(key_id: &str) -> Vec<u8> {
    [INFO, key_id.as_bytes()].concat()
}

fn aead_key(export: impl FnOnce(&mut [u8]) -> Result<(), hpke::HpkeError>) -> Result<LessSafeKey, SealError> {
    let mut secret = [0u8; 32];
    export(&mut secret).map_err(|e| SealError::Hpke(e.to_string()))?;
    let key = UnboundKey::new(&CHACHA20_POLY1305, &secret).map_err(|_| SealError::Hpke("aead key".into()))?;
    Ok(LessSafeKey::new(key))
}

/// The API's side: one HPKE context for the life of the process.
pub struct Sealer {
    key_id: String,
    encapsulated: String,
    key: LessSafeKey,
    sealed: AtomicU64,
}

impl Sealer {
    pub fn new(key_id: &str, workers: &PublicKey, api_private: &PrivateKey) -> Result<Sealer, SealError> {
        let api_public = Kem::sk_to_pk(api_private);
        let mode = OpModeS::Auth((api_private.clone(), api_public));
        let (encapsulated, context) = hpke::setup_sender::<ExportOnlyAead, HkdfSha256, Kem, _>(
            &mode,
            workers,
            &info(key_id),
            &mut rand_core::UnwrapErr(rand_core::OsRng),
        )
        .map_err(|e| SealError::Hpke(e.to_string()))?;
        Ok(Sealer {
            key_id: key_id.to_string(),
            encapsulated: URL_SAFE_NO_PAD.encode(encapsulated.to_bytes()),
            key: aead_key(|out| context.export(EXPORT_LABEL, out))?,
            sealed: AtomicU64::new(0),
        })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The encapsulated key, as text for a message header.
    pub fn encapsulated(&self) -> &str {
        &self.encapsulated
    }

    /// `nonce || ciphertext || tag`. The nonce is a counter: this context's
    /// key is fresh for this process, so a counter never repeats under it.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let n = self.sealed.fetch_add(1, Ordering::Relaxed);
        let mut nonce = [0u8; NONCE_LEN];
        nonce[NONCE_LEN - 8..].copy_from_slice(&n.to_be_bytes());
        let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[NONCE_LEN..],
            )
            .unwrap_or_else(|_| unreachable!("ChaCha20-Poly1305 seals any length below 256 GiB"));
        out.extend_from_slice(tag.as_ref());
        out
    }
}

/// The workers' side: every live private key by id, and the contexts met
/// so far.
pub struct Opener {
    keys: BTreeMap<String, PrivateKey>,
    api_public: PublicKey,
    contexts: Mutex<HashMap<(String, String), Arc<LessSafeKey>>>,
}

impl Opener {
    pub fn new(keys: BTreeMap<String, PrivateKey>, api_public: PublicKey) -> Opener {
        Opener { keys, api_public, contexts: Mutex::default() }
    }

    pub fn open(
        &self,
        key_id: &str,
        encapsulated: &str,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        if sealed.len() < OVERHEAD {
            return Err(SealError::DoesNotOpen);
        }
        let key = self.context(key_id, encapsulated)?;
        let nonce =
            Nonce::try_assume_unique_for_key(&sealed[..NONCE_LEN]).map_err(|_| SealError::DoesNotOpen)?;
        let mut buffer = sealed[NONCE_LEN..].to_vec();
        let plaintext =
            key.open_in_place(nonce, Aad::from(aad), &mut buffer).map_err(|_| SealError::DoesNotOpen)?;
        let len = plaintext.len();
        buffer.truncate(len);
        Ok(buffer)
    }

    fn context(&self, key_id: &str, encapsulated: &str) -> Result<Arc<LessSafeKey>, SealError> {
        let cache_key = (key_id.to_string(), encapsulated.to_string());
        if let Some(key) = self.contexts.lock().unwrap_or_else(|e| e.into_inner()).get(&cache_key) {
            return Ok(key.clone());
        }
        let private = self.keys.get(key_id).ok_or_else(|| SealError::UnknownKey(key_id.to_string()))?;
        let bytes = URL_SAFE_NO_PAD.decode(encapsulated).map_err(|_| SealError::BadEncapsulation)?;
        let encapped = EncappedKey::from_bytes(&bytes).map_err(|_| SealError::BadEncapsulation)?;
        let mode = OpModeR::Auth(self.api_public.clone());
        // A context that fails here was not made by the API's key.
        let context =
            hpke::setup_receiver::<ExportOnlyAead, HkdfSha256, Kem>(&mode, private, &encapped, &info(key_id))
                .map_err(|_| SealError::DoesNotOpen)?;
        let key = Arc::new(aead_key(|out| context.export(EXPORT_LABEL, out))?);
        let mut contexts = self.contexts.lock().unwrap_or_else(|e| e.into_inner());
        if contexts.len() >= MAX_CONTEXTS {
            contexts.clear();
        }
        contexts.insert(cache_key, key.clone());
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An API sealing to the workers, the workers, and the workers' public
    /// key (which anyone may know).
    fn parties() -> (Sealer, Opener, PublicKey) {
        let workers = generate();
        let api = generate();
        let workers_public = public_key(&workers.public).unwrap();
        let sealer = Sealer::new("k1", &workers_public, &private_key(&api.private).unwrap()).unwrap();
        let opener = Opener::new(
            BTreeMap::from([("k1".to_string(), private_key(&workers.private).unwrap())]),
            public_key(&api.public).unwrap(),
        );
        (sealer, opener, workers_public)
    }

    #[test]
    fn a_sealed_ballot_opens_with_the_same_context() {
        let (sealer, opener, _) = parties();
        let sealed = sealer.seal(b"context", b"ballot");
        assert_eq!(sealed.len(), b"ballot".len() + OVERHEAD);
        assert_eq!(opener.open("k1", sealer.encapsulated(), b"context", &sealed).unwrap(), b"ballot");
        let again = sealer.seal(b"context", b"ballot");
        assert_ne!(sealed, again, "each ballot has its own nonce");
        assert_eq!(opener.open("k1", sealer.encapsulated(), b"context", &again).unwrap(), b"ballot");
    }

    #[test]
    fn a_forged_or_replayed_ballot_does_not_open() {
        let (sealer, opener, workers_public) = parties();
        let sealed = sealer.seal(b"election 1 citizen 7", b"ballot");
        // Replayed under another citizen: the associated data differs.
        assert_eq!(
            opener.open("k1", sealer.encapsulated(), b"election 1 citizen 8", &sealed),
            Err(SealError::DoesNotOpen)
        );
        // A forger who knows the workers' public key but not the API's
        // private key makes a context the workers refuse.
        let forger_key = private_key(&generate().private).unwrap();
        let forger = Sealer::new("k1", &workers_public, &forger_key).unwrap();
        let forged = forger.seal(b"election 1 citizen 7", b"ballot");
        assert_eq!(
            opener.open("k1", forger.encapsulated(), b"election 1 citizen 7", &forged),
            Err(SealError::DoesNotOpen)
        );
        let mut flipped = sealed.clone();
        flipped[NONCE_LEN] ^= 1;
        assert_eq!(
            opener.open("k1", sealer.encapsulated(), b"election 1 citizen 7", &flipped),
            Err(SealError::DoesNotOpen)
        );
        assert_eq!(
            opener.open("k2", sealer.encapsulated(), b"election 1 citizen 7", &sealed),
            Err(SealError::UnknownKey("k2".into()))
        );
        assert_eq!(opener.open("k1", "!!", b"x", &sealed), Err(SealError::BadEncapsulation));
    }

    #[test]
    fn keys_round_trip_as_text() {
        let pair = development_pair("seed");
        assert_eq!(pair.public, development_pair("seed").public);
        assert!(public_key(&pair.public).is_ok());
        assert!(private_key(&pair.private).is_ok());
        assert!(public_key("not a key").is_err());
    }
}
