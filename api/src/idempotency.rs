//! Retrying a ballot safely (docs/api.md, "Retries").
//!
//! A client that sends `Idempotency-Key: <uuid>` gets a receipt derived
//! from that key, HMAC(receipt key, election ‖ citizen ‖ key): the same on
//! every retry, and derivable by nobody without both secrets. Before the
//! ballot is published the voter's entry in Redis is reserved with an
//! intent: keyed hashes of the key and of the canonical selections. A
//! retry with the same intent is the same ballot; the same key with
//! other selections is refused; another key, or no key, while a ballot is
//! reserved or stored, is a second ballot. Neither the key nor anything a
//! reader could reverse is stored or logged. The reservation itself is kept
//! with the voter set, in `tally_platform::voters`.

use axum::http::HeaderMap;
use ring::hmac;
use tally_http::ApiError;
use uuid::Uuid;

pub use tally_http::middleware::IDEMPOTENCY_KEY as HEADER;
/// The intent of a ballot sent without a key: it reserves nothing.
pub const KEYLESS: &str = "-";

/// The key's part of an intent: names the key's ballot, in its dedup id,
/// without revealing the key.
pub fn key_tag(intent: &str) -> &str {
    intent.split_once(':').map_or(intent, |(key, _)| key)
}

/// The client's key, if it sent one. Anything but a UUID is refused.
pub fn key(headers: &HeaderMap) -> Result<Option<Uuid>, ApiError> {
    let Some(value) = headers.get(HEADER) else { return Ok(None) };
    value.to_str().ok().and_then(|v| Uuid::parse_str(v.trim()).ok()).map(Some).ok_or_else(|| {
        ApiError::new(axum::http::StatusCode::BAD_REQUEST, "invalid_idempotency_key")
            .with_detail("Idempotency-Key must be a UUID the client chose for this ballot")
    })
}

/// What a ballot sent with a key reserves, and the receipt it gets.
pub struct Keyed {
    pub receipt: Uuid,
    /// `<key hash>:<ballot hash>`, stored as the voter's intent.
    pub intent: String,
}

impl Keyed {
    pub fn new(secret: &[u8], election_id: i64, citizen_id: i64, key: Uuid, selections: &[i64]) -> Keyed {
        let secret = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let tag = |label: &[u8], parts: &[&[u8]]| {
            let mut context = hmac::Context::with_key(&secret);
            context.update(label);
            context.update(&election_id.to_be_bytes());
            context.update(&citizen_id.to_be_bytes());
            context.update(key.as_bytes());
            for part in parts {
                context.update(part);
            }
            context.sign()
        };
        let mut canonical = selections.to_vec();
        canonical.sort_unstable();
        let canonical: Vec<u8> = canonical.iter().flat_map(|s| s.to_be_bytes()).collect();
        let receipt_tag = tag(b"tally receipt v1", &[]);
        let mut receipt = [0u8; 16];
        receipt.copy_from_slice(&receipt_tag.as_ref()[..16]);
        let key_tag = tag(b"tally intent key v1", &[]);
        let ballot_tag = tag(b"tally intent ballot v1", &[&canonical]);
        let hex = |t: &hmac::Tag| t.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect::<String>();
        Keyed {
            receipt: uuid::Builder::from_custom_bytes(receipt).into_uuid(),
            intent: format!("{}:{}", hex(&key_tag), hex(&ballot_tag)),
        }
    }
}

/// How a reserved intent relates to this request's.
#[derive(Debug, PartialEq, Eq)]
pub enum Match {
    /// The same key and the same selections: a retry of this ballot.
    Same,
    /// The same key with other selections.
    OtherSelections,
    /// Another key, or no key: another ballot of this voter.
    OtherBallot,
}

pub fn compare(reserved: &str, mine: &str) -> Match {
    if reserved == mine && mine != KEYLESS {
        return Match::Same;
    }
    match (reserved.split_once(':'), mine.split_once(':')) {
        (Some((theirs, _)), Some((ours, _))) if theirs == ours => Match::OtherSelections,
        _ => Match::OtherBallot,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a receipt key of at least 32 bytes, for tests";

    #[test]
    fn a_retry_gets_the_same_receipt_and_anything_else_another() {
        let key = Uuid::new_v4();
        let first = Keyed::new(SECRET, 4, 9, key, &[3, 1]);
        let again = Keyed::new(SECRET, 4, 9, key, &[1, 3]);
        assert_eq!(first.receipt, again.receipt);
        assert_eq!(compare(&first.intent, &again.intent), Match::Same);
        let other_choice = Keyed::new(SECRET, 4, 9, key, &[2]);
        assert_eq!(first.receipt, other_choice.receipt);
        assert_eq!(compare(&first.intent, &other_choice.intent), Match::OtherSelections);
        let other_key = Keyed::new(SECRET, 4, 9, Uuid::new_v4(), &[1, 3]);
        assert_ne!(first.receipt, other_key.receipt);
        assert_eq!(compare(&first.intent, &other_key.intent), Match::OtherBallot);
        assert_eq!(compare(KEYLESS, &first.intent), Match::OtherBallot);
        assert_eq!(compare(KEYLESS, KEYLESS), Match::OtherBallot, "a keyless ballot is never retried");
        let other_voter = Keyed::new(SECRET, 4, 10, key, &[1, 3]);
        assert_ne!(first.receipt, other_voter.receipt);
        let other_secret = Keyed::new(b"another receipt key of at least 32 bytes!!", 4, 9, key, &[1, 3]);
        assert_ne!(first.receipt, other_secret.receipt, "the receipt needs the server's secret");
    }

    #[test]
    fn only_a_uuid_is_a_key() {
        let mut headers = HeaderMap::new();
        assert!(key(&headers).unwrap().is_none());
        headers.insert(HEADER, "not-a-uuid".parse().unwrap());
        assert!(key(&headers).is_err());
        let id = Uuid::new_v4();
        headers.insert(HEADER, id.to_string().parse().unwrap());
        assert_eq!(key(&headers).unwrap(), Some(id));
    }
}
