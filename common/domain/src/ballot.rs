//! A ballot on its way through the pipeline: the command the API publishes
//! and the workers record, and the rule for a valid set of selections.

use std::collections::HashSet;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::election::Candidacy;
use crate::seal::{Opener, Sealer};

/// A ballot as the API accepted it. On the bus it travels only sealed
/// (see `seal` and `open`): the citizen id and the election are in clear,
/// the receipt, the time and the choice are not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoteCommand {
    pub receipt: Uuid,
    pub election_id: i64,
    pub citizen_id: i64,
    pub selections: Vec<i64>,
    pub accepted_at: OffsetDateTime,
}

/// The message layout's version. Workers read any minor version of a major
/// they know, ignoring what a newer minor appends.
pub const SCHEMA_MAJOR: u8 = 2;
pub const SCHEMA_MINOR: u8 = 0;
/// Major, minor, election id, citizen id: the clear part of a message.
const CLEAR_LEN: usize = 18;
/// Receipt, acceptance time, number of selection slots.
const PLAIN_FIXED_LEN: usize = 16 + 8 + 2;
pub const KEY_HEADER: &str = "Tally-Key";
pub const ENCAPSULATION_HEADER: &str = "Tally-Enc";

/// A sealed ballot ready to publish.
pub struct SealedBallot {
    pub headers: async_nats::HeaderMap,
    pub payload: bytes::Bytes,
}

impl VoteCommand {
    /// Seals the ballot with `slots` selection places, the number of posts
    /// of its election, so every ballot of an election has one length.
    pub fn seal(&self, sealer: &Sealer, slots: usize) -> SealedBallot {
        self.seal_as(sealer, slots, (SCHEMA_MAJOR, SCHEMA_MINOR), &[])
    }

    /// Seals in the layout of another version: `appended` goes after the
    /// selections, where a later minor version puts what it adds. What a
    /// newer or older API would publish, for compatibility tests and the
    /// rolling-upgrade fault.
    pub fn seal_as(&self, sealer: &Sealer, slots: usize, version: (u8, u8), appended: &[u8]) -> SealedBallot {
        let mut clear = Vec::with_capacity(CLEAR_LEN);
        clear.push(version.0);
        clear.push(version.1);
        clear.extend_from_slice(&self.election_id.to_be_bytes());
        clear.extend_from_slice(&self.citizen_id.to_be_bytes());
        let slots = slots.max(self.selections.len());
        let mut plain = Vec::with_capacity(PLAIN_FIXED_LEN + slots * 8);
        plain.extend_from_slice(self.receipt.as_bytes());
        let micros = (self.accepted_at.unix_timestamp_nanos() / 1_000) as i64;
        plain.extend_from_slice(&micros.to_be_bytes());
        plain.extend_from_slice(&(slots as u16).to_be_bytes());
        for i in 0..slots {
            plain.extend_from_slice(&self.selections.get(i).copied().unwrap_or(0).to_be_bytes());
        }
        plain.extend_from_slice(appended);
        let sealed = sealer.seal(&associated_data(&clear, sealer.key_id()), &plain);
        let mut payload = clear;
        payload.extend_from_slice(&sealed);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, self.msg_id().as_str());
        headers.insert(KEY_HEADER, sealer.key_id());
        headers.insert(ENCAPSULATION_HEADER, sealer.encapsulated());
        SealedBallot { headers, payload: bytes::Bytes::from(payload) }
    }

    /// Opens and checks a message. Errors name what is wrong, never what
    /// the ballot holds.
    pub fn open(
        opener: &Opener,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
    ) -> Result<VoteCommand, String> {
        if payload.len() < CLEAR_LEN {
            return Err("too short for a sealed ballot".into());
        }
        if payload[0] != SCHEMA_MAJOR {
            return Err(format!("unknown schema major version {}", payload[0]));
        }
        let header = |name: &str| {
            headers
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
                .ok_or_else(|| format!("no {name} header"))
        };
        let key_id = header(KEY_HEADER)?;
        let encapsulated = header(ENCAPSULATION_HEADER)?;
        let (clear, sealed) = payload.split_at(CLEAR_LEN);
        let id_at = |at: usize| i64::from_be_bytes(clear[at..at + 8].try_into().unwrap_or_default());
        let (election_id, citizen_id) = (id_at(2), id_at(10));
        if election_id <= 0 || citizen_id <= 0 {
            return Err("ids must be positive".into());
        }
        let plain = opener
            .open(&key_id, &encapsulated, &associated_data(clear, &key_id), sealed)
            .map_err(|e| e.to_string())?;
        if plain.len() < PLAIN_FIXED_LEN {
            return Err("sealed ballot too short".into());
        }
        let receipt = Uuid::from_slice(&plain[..16]).map_err(|_| "bad receipt".to_string())?;
        let micros = i64::from_be_bytes(plain[16..24].try_into().unwrap_or_default());
        let accepted_at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
            .map_err(|_| "acceptance time out of range".to_string())?;
        let slots = usize::from(u16::from_be_bytes([plain[24], plain[25]]));
        let places = plain.get(PLAIN_FIXED_LEN..PLAIN_FIXED_LEN + slots * 8).ok_or("selections cut short")?;
        let selections = places
            .chunks_exact(8)
            .map(|c| i64::from_be_bytes(c.try_into().unwrap_or_default()))
            .filter(|id| *id != 0)
            .collect();
        Ok(VoteCommand { receipt, election_id, citizen_id, selections, accepted_at })
    }

    /// The broker's deduplication key: one ballot per citizen per election.
    pub fn msg_id(&self) -> String {
        format!("{}:{}", self.election_id, self.citizen_id)
    }
}

/// What the ciphertext is bound to: layout version, election, citizen and
/// key id. A ballot moved to another citizen or election does not open.
fn associated_data(clear: &[u8], key_id: &str) -> Vec<u8> {
    [clear, key_id.as_bytes()].concat()
}

/// Why a set of selections is not a valid ballot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    #[error("choose at least one runner")]
    Empty,
    #[error("runner {0} does not run in this election")]
    UnknownRunner(i64),
    #[error("runner {0} is chosen twice")]
    Repeated(i64),
    #[error("more than one runner chosen for {0}")]
    TwoForOnePost(String),
}

/// At least one runner, each running in this election, at most one per post.
pub fn check_selections(selections: &[i64], runners: &[impl Candidacy]) -> Result<(), SelectionError> {
    if selections.is_empty() {
        return Err(SelectionError::Empty);
    }
    let mut chosen = HashSet::new();
    let mut posts = HashSet::new();
    for &id in selections {
        let runner =
            runners.iter().find(|r| r.citizen_id() == id).ok_or(SelectionError::UnknownRunner(id))?;
        if !chosen.insert(id) {
            return Err(SelectionError::Repeated(id));
        }
        if !posts.insert(runner.post()) {
            return Err(SelectionError::TwoForOnePost(runner.post().to_string()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::Runner;
    use proptest::prelude::*;

    fn runner(id: i64, post: &str) -> Runner {
        Runner { citizen_id: id, full_name: format!("R{id}"), post: post.into(), total_votes: 0 }
    }

    #[test]
    fn selection_rules() {
        let runners = [runner(1, "President"), runner(2, "President"), runner(3, "Senator")];
        assert_eq!(check_selections(&[1, 3], &runners), Ok(()));
        assert_eq!(check_selections(&[2], &runners), Ok(()));
        assert_eq!(check_selections(&[], &runners), Err(SelectionError::Empty));
        assert_eq!(check_selections(&[9], &runners), Err(SelectionError::UnknownRunner(9)));
        assert_eq!(check_selections(&[3, 3], &runners), Err(SelectionError::Repeated(3)));
        assert_eq!(
            check_selections(&[1, 2], &runners),
            Err(SelectionError::TwoForOnePost("President".into()))
        );
    }

    fn parties() -> (Sealer, Opener) {
        let workers = crate::seal::generate();
        let api = crate::seal::generate();
        let sealer = Sealer::new(
            "k1",
            &crate::seal::public_key(&workers.public).unwrap(),
            &crate::seal::private_key(&api.private).unwrap(),
        )
        .unwrap();
        let opener = Opener::new(
            [("k1".to_string(), crate::seal::private_key(&workers.private).unwrap())].into(),
            crate::seal::public_key(&api.public).unwrap(),
        );
        (sealer, opener)
    }

    fn command(citizen_id: i64, selections: Vec<i64>) -> VoteCommand {
        VoteCommand {
            receipt: Uuid::new_v4(),
            election_id: 4,
            citizen_id,
            selections,
            accepted_at: time::macros::datetime!(2026-06-01 12:00:00.123456 UTC),
        }
    }

    #[test]
    fn sealed_ballots_open_and_refuse_junk() {
        let (sealer, opener) = parties();
        let original = command(9, vec![1, 3]);
        let sealed = original.seal(&sealer, 3);
        assert_eq!(VoteCommand::open(&opener, Some(&sealed.headers), &sealed.payload), Ok(original.clone()));
        assert_eq!(original.msg_id(), "4:9");
        assert!(VoteCommand::open(&opener, Some(&sealed.headers), b"{}").is_err());
        assert!(VoteCommand::open(&opener, None, &sealed.payload).is_err());
        // Moved to another citizen: the bound context no longer matches.
        let mut moved = sealed.payload.to_vec();
        moved[17] ^= 1;
        assert!(VoteCommand::open(&opener, Some(&sealed.headers), &moved).is_err());
        let mut future = sealed.payload.to_vec();
        future[0] = SCHEMA_MAJOR + 1;
        assert!(VoteCommand::open(&opener, Some(&sealed.headers), &future).unwrap_err().contains("major"));
    }

    #[test]
    fn a_newer_minor_version_opens_and_its_additions_are_ignored() {
        let (sealer, opener) = parties();
        let original = command(9, vec![1, 3]);
        let newer = original.seal_as(&sealer, 3, (SCHEMA_MAJOR, SCHEMA_MINOR + 1), b"a field of tomorrow");
        assert_eq!(VoteCommand::open(&opener, Some(&newer.headers), &newer.payload), Ok(original.clone()));
        let next_major = original.seal_as(&sealer, 3, (SCHEMA_MAJOR + 1, 0), &[]);
        let refused = VoteCommand::open(&opener, Some(&next_major.headers), &next_major.payload);
        assert_eq!(refused, Err(format!("unknown schema major version {}", SCHEMA_MAJOR + 1)));
    }

    #[test]
    fn every_ballot_of_an_election_has_one_length_and_no_clear_choice() {
        let (sealer, _) = parties();
        let a = command(9, vec![1]).seal(&sealer, 3).payload;
        let b = command(123_456_789, vec![1, 3, 77_777]).seal(&sealer, 3).payload;
        assert_eq!(a.len(), b.len());
        let needle = 77_777i64.to_be_bytes();
        assert!(!b.windows(8).any(|w| w == needle), "the choice is never in clear");
    }

    proptest! {
        #[test]
        fn opening_arbitrary_bytes_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..256)) {
            let (sealer, opener) = parties();
            let headers = command(1, vec![1]).seal(&sealer, 1).headers;
            let _ = VoteCommand::open(&opener, Some(&headers), &raw);
        }

        #[test]
        fn a_ballot_survives_the_queue(
            election_id in 1i64..i64::MAX,
            citizen_id in 1i64..i64::MAX,
            selections in proptest::collection::vec(1i64..i64::MAX, 0..70),
            micros in 0i64..4_000_000_000_000_000,
        ) {
            let (sealer, opener) = parties();
            let original = VoteCommand {
                receipt: Uuid::from_u128(u128::from(election_id.unsigned_abs()) << 64 | u128::from(citizen_id.unsigned_abs())),
                election_id,
                citizen_id,
                selections,
                accepted_at: OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000).unwrap(),
            };
            let sealed = original.seal(&sealer, 0);
            prop_assert_eq!(VoteCommand::open(&opener, Some(&sealed.headers), &sealed.payload), Ok(original));
        }

        #[test]
        fn a_valid_ballot_has_one_runner_per_post(picks in proptest::collection::vec(0i64..6, 0..6)) {
            let runners: Vec<Runner> = (0..6).map(|i| runner(i, ["A", "B", "C"][(i % 3) as usize])).collect();
            if check_selections(&picks, &runners).is_ok() {
                let posts: HashSet<i64> = picks.iter().map(|p| p % 3).collect();
                prop_assert_eq!(posts.len(), picks.len());
                prop_assert!(!picks.is_empty());
            }
        }
    }
}
