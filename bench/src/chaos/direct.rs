//! Ballots the run publishes straight to the stream, as no client can:
//! those of a newer API (one minor version ahead, with a field today's
//! workers do not know) during a rolling restart of the workers, and a
//! poison ballot (its voter removed from the registry while it waits)
//! amid others in a busy batch. Each is accounted for like a voter's.

use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tally_domain::ballot::{SCHEMA_MAJOR, SCHEMA_MINOR, VoteCommand};
use tally_platform::Settings;
use time::OffsetDateTime;
use uuid::Uuid;

use super::voters::VoterLog;

/// Voters each fault of these kinds takes from the spare ones.
pub const PER_UPGRADE: usize = 30;
pub const PER_POISON: usize = 21;

pub struct Direct {
    settings: Settings,
    js: async_nats::jetstream::Context,
    db: PgPool,
    election: i64,
    /// Voters no client casts for: (citizen id, token, runner).
    spare: Vec<(i64, String, i64)>,
    used: usize,
    /// One per spare voter, in their order: a 202 and the receipt for a
    /// ballot published, nothing for one not (yet) used.
    pub logs: Vec<VoterLog>,
    /// (citizen, receipt) of each poison ballot: rejected, never counted.
    pub poison: Vec<(i64, Uuid)>,
}

impl Direct {
    pub async fn new(
        settings: &Settings,
        db: PgPool,
        election: i64,
        spare: Vec<(i64, String, i64)>,
    ) -> anyhow::Result<Direct> {
        let nats = &settings.nats;
        let js = tally_platform::nats::jetstream(tally_platform::nats::connect(nats).await?, nats);
        let logs = spare
            .iter()
            .map(|(citizen_id, _, runner)| VoterLog {
                citizen_id: *citizen_id,
                runner: *runner,
                ..VoterLog::default()
            })
            .collect();
        Ok(Direct { settings: settings.clone(), js, db, election, spare, used: 0, logs, poison: Vec::new() })
    }

    /// The next `n` spare voters, as indices into `logs`.
    pub fn take(&mut self, n: usize) -> anyhow::Result<std::ops::Range<usize>> {
        let start = self.used;
        anyhow::ensure!(start + n <= self.spare.len(), "out of spare voters for direct ballots");
        self.used += n;
        Ok(start..start + n)
    }

    /// Publishes the ballots of these spare voters as the next minor
    /// version of the API would seal them. Each is logged as accepted.
    pub async fn newer(&mut self, voters: std::ops::Range<usize>) -> anyhow::Result<()> {
        for i in voters {
            self.publish(i, (SCHEMA_MAJOR, SCHEMA_MINOR + 1), b"\x01\x07a field of a later version").await?;
        }
        Ok(())
    }

    /// Removes the first of these voters from the registry, then publishes
    /// the others' ballots with theirs in the middle, as today's API seals
    /// them: one batch holds them all.
    pub async fn poison(&mut self, voters: std::ops::Range<usize>) -> anyhow::Result<()> {
        let poison = voters.start;
        let citizen = self.spare[poison].0;
        sqlx::query("DELETE FROM citizens WHERE citizen_id = $1")
            .bind(citizen)
            .execute(&self.db)
            .await
            .context("removing a voter from the registry")?;
        let others: Vec<usize> = voters.skip(1).collect();
        let (before, after) = others.split_at(others.len() / 2);
        for &i in before {
            self.publish(i, (SCHEMA_MAJOR, SCHEMA_MINOR), &[]).await?;
        }
        let receipt = self.publish(poison, (SCHEMA_MAJOR, SCHEMA_MINOR), &[]).await?;
        // Its voter is not accounted as a client's: its fate is checked
        // on its own (see `check_poison`).
        self.logs[poison] =
            VoterLog { citizen_id: citizen, runner: self.spare[poison].2, ..VoterLog::default() };
        self.poison.push((citizen, receipt));
        for &i in after {
            self.publish(i, (SCHEMA_MAJOR, SCHEMA_MINOR), &[]).await?;
        }
        Ok(())
    }

    async fn publish(&mut self, i: usize, version: (u8, u8), appended: &[u8]) -> anyhow::Result<Uuid> {
        let (citizen_id, _, runner) = self.spare[i].clone();
        let command = VoteCommand {
            receipt: Uuid::new_v4(),
            election_id: self.election,
            citizen_id,
            selections: vec![runner],
            accepted_at: OffsetDateTime::now_utc(),
        };
        let sealer = self.settings.sealing.sealer()?;
        let sealed = command.seal_as(&sealer, 1, version, appended);
        let nats = &self.settings.nats;
        // As a careful client: until the broker confirms it.
        let mut tries = 0;
        loop {
            let stored = tally_platform::nats::publish_acked(
                &self.js,
                tally_platform::nats::ballot_subject(nats, self.election),
                sealed.headers.clone(),
                sealed.payload.clone(),
                Duration::from_secs(2),
            )
            .await;
            match stored {
                Ok(_) => break,
                Err(e) if tries < 30 => {
                    tries += 1;
                    tracing::debug!(error = %e, "direct ballot not confirmed; again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e).context("publishing a direct ballot"),
            }
        }
        self.logs[i].statuses.push(202);
        self.logs[i].receipt = Some(command.receipt);
        Ok(command.receipt)
    }

    /// Every poison ballot rejected as `not_registered`, its voter not on
    /// the roll. Returns the violations.
    pub async fn check_poison(&self) -> anyhow::Result<Vec<String>> {
        let mut violations = Vec::new();
        for (citizen, receipt) in &self.poison {
            let reason: Option<String> =
                sqlx::query_scalar("SELECT reason FROM rejected_ballots WHERE receipt = $1")
                    .bind(receipt)
                    .fetch_optional(&self.db)
                    .await?;
            let on_roll: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM voter_roll WHERE election_id = $1 AND citizen_id = $2)",
            )
            .bind(self.election)
            .bind(citizen)
            .fetch_one(&self.db)
            .await?;
            if reason.as_deref() != Some("not_registered") || on_roll {
                violations.push(format!(
                    "poison ballot of {citizen}: rejection {reason:?}, on the roll: {on_roll}"
                ));
            }
        }
        Ok(violations)
    }
}
