//! A ballot on its way through the pipeline: the command the API publishes
//! and the workers record, and the rule for a valid set of selections.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::catalog::Runner;

/// What the API publishes to `votes.<election_id>`. The only place a
/// citizen id and a choice travel together; the stream deletes it once a
/// worker has recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoteCommand {
    pub receipt: Uuid,
    pub election_id: i64,
    pub citizen_id: i64,
    pub selections: Vec<i64>,
    #[serde(with = "time::serde::rfc3339")]
    pub accepted_at: OffsetDateTime,
}

impl VoteCommand {
    pub fn encode(&self) -> bytes::Bytes {
        serde_json::to_vec(self).map(bytes::Bytes::from).unwrap_or_default()
    }

    pub fn decode(raw: &[u8]) -> Result<VoteCommand, String> {
        // serde's messages quote the offending value, which may be a choice;
        // keep only the kind of error and where it is.
        let command: VoteCommand = serde_json::from_slice(raw).map_err(|e| {
            format!(
                "not a vote command: {:?} error at line {}, column {}",
                e.classify(),
                e.line(),
                e.column()
            )
        })?;
        if command.election_id <= 0 || command.citizen_id <= 0 {
            return Err("ids must be positive".into());
        }
        Ok(command)
    }

    /// The broker's deduplication key: one ballot per citizen per election.
    pub fn msg_id(&self) -> String {
        format!("{}:{}", self.election_id, self.citizen_id)
    }
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
pub fn check_selections(selections: &[i64], runners: &[Runner]) -> Result<(), SelectionError> {
    if selections.is_empty() {
        return Err(SelectionError::Empty);
    }
    let mut chosen = HashSet::new();
    let mut posts = HashSet::new();
    for &id in selections {
        let runner = runners.iter().find(|r| r.citizen_id == id).ok_or(SelectionError::UnknownRunner(id))?;
        if !chosen.insert(id) {
            return Err(SelectionError::Repeated(id));
        }
        if !posts.insert(runner.post.as_str()) {
            return Err(SelectionError::TwoForOnePost(runner.post.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn commands_round_trip_and_refuse_junk() {
        let command = VoteCommand {
            receipt: Uuid::new_v4(),
            election_id: 4,
            citizen_id: 9,
            selections: vec![1, 3],
            accepted_at: time::macros::datetime!(2026-06-01 12:00:00.123 UTC),
        };
        assert_eq!(VoteCommand::decode(&command.encode()), Ok(command.clone()));
        assert_eq!(command.msg_id(), "4:9");
        assert!(VoteCommand::decode(b"{}").is_err());
        let leaky = br#"{"selections": "secret choice"}"#;
        assert!(
            !VoteCommand::decode(leaky).unwrap_err().contains("secret"),
            "errors never quote the payload"
        );
        assert!(VoteCommand::decode(b"\xff\xfe").is_err());
        let negative = String::from_utf8(command.encode().to_vec())
            .unwrap()
            .replace("\"citizen_id\":9", "\"citizen_id\":-9");
        assert!(VoteCommand::decode(negative.as_bytes()).is_err());
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = VoteCommand::decode(&raw);
        }

        #[test]
        fn a_command_survives_the_queue(
            election_id in 1i64..i64::MAX,
            citizen_id in 1i64..i64::MAX,
            selections in proptest::collection::vec(any::<i64>(), 0..70),
            seconds in 0i64..4_000_000_000,
        ) {
            let command = VoteCommand {
                receipt: Uuid::from_u128(u128::from(election_id.unsigned_abs()) << 64 | u128::from(citizen_id.unsigned_abs())),
                election_id,
                citizen_id,
                selections,
                accepted_at: OffsetDateTime::from_unix_timestamp(seconds).unwrap(),
            };
            let decoded = VoteCommand::decode(&command.encode()).unwrap();
            prop_assert_eq!(decoded.msg_id(), command.msg_id());
            prop_assert_eq!(decoded.selections, command.selections);
            prop_assert_eq!(decoded.receipt, command.receipt);
            prop_assert_eq!(decoded.accepted_at, command.accepted_at);
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
