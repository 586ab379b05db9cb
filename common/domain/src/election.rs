//! Elections as every role sees them: their runners, who may vote
//! (restriction and eligibility). The lifecycle is `lifecycle`, what may
//! be shown of the counts `visibility`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use time::OffsetDateTime;

use crate::citizen::{age_on, valid_province};
use crate::lifecycle::{Schedule, Status};
use crate::visibility::Visibility;

/// Who may vote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restriction {
    Everyone,
    Federal,
    Provincial(String),
}

impl FromStr for Restriction {
    type Err = &'static str;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw {
            "@everyone" => Ok(Restriction::Everyone),
            "@federal" => Ok(Restriction::Federal),
            _ => match raw.strip_prefix("@provincial:") {
                Some(p) if valid_province(p) => Ok(Restriction::Provincial(p.to_string())),
                _ => Err("must be @everyone, @federal or @provincial:<Province>"),
            },
        }
    }
}

impl fmt::Display for Restriction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Restriction::Everyone => f.write_str("@everyone"),
            Restriction::Federal => f.write_str("@federal"),
            Restriction::Provincial(p) => write!(f, "@provincial:{p}"),
        }
    }
}

/// Why a voter may not vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ineligible {
    Cancelled,
    NotOpen,
    TooYoung,
    WrongProvince,
}

impl Ineligible {
    pub fn as_str(self) -> &'static str {
        match self {
            Ineligible::Cancelled => "cancelled",
            Ineligible::NotOpen => "not_open",
            Ineligible::TooYoung => "too_young",
            Ineligible::WrongProvince => "wrong_province",
        }
    }
}

/// The registry facts about a voter that eligibility depends on.
pub struct VoterFacts<'a> {
    pub province: &'a str,
    pub dob: time::Date,
}

/// May this voter vote now? Registration is implied: only users of the
/// registry hold tokens. `@everyone` and `@federal` admit every citizen;
/// `@provincial:P` only citizens registered in P. Age is counted on the
/// day voting starts.
pub fn eligibility(
    schedule: &Schedule,
    restriction: &Restriction,
    min_age: i16,
    voter: &VoterFacts<'_>,
    now: OffsetDateTime,
) -> Result<(), Ineligible> {
    match schedule.status(now) {
        Status::Cancelled => return Err(Ineligible::Cancelled),
        Status::Scheduled | Status::Closed => return Err(Ineligible::NotOpen),
        Status::Open => {}
    }
    if age_on(voter.dob, schedule.start_at.date()) < i32::from(min_age) {
        return Err(Ineligible::TooYoung);
    }
    if let Restriction::Provincial(province) = restriction
        && province != voter.province
    {
        return Err(Ineligible::WrongProvince);
    }
    Ok(())
}

/// A contender on the ballot, standing for one post.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Runner {
    pub citizen_id: i64,
    pub full_name: String,
    pub post: String,
    pub total_votes: i64,
}

#[derive(Clone, Debug)]
pub struct Election {
    pub id: i64,
    pub name: String,
    pub schedule: Schedule,
    pub restriction: Restriction,
    pub min_age: i16,
    pub visibility: Visibility,
    pub tally_version: i64,
    pub turnout: i64,
    /// K: workers commit this election's ballots in groups of more than K
    /// and hold K back until the end.
    pub anonymity_set: i32,
    /// Set by the workers once every ballot stored before the election's
    /// fence is recorded or rejected (see `fence`): only then are its
    /// counts final.
    pub final_at: Option<OffsetDateTime>,
    pub runners: Vec<Runner>,
}

impl Election {
    pub fn status(&self, now: OffsetDateTime) -> Status {
        self.schedule.status(now)
    }

    /// Final: closed, and marked final by the workers (`final_at`). As
    /// fresh as the row it was loaded from.
    pub fn is_final(&self, status: Status) -> bool {
        status == Status::Closed && self.final_at.is_some()
    }

    /// Runners grouped by post, posts in name order.
    pub fn posts(&self) -> BTreeMap<&str, Vec<&Runner>> {
        let mut posts: BTreeMap<&str, Vec<&Runner>> = BTreeMap::new();
        for runner in &self.runners {
            posts.entry(runner.post.as_str()).or_default().push(runner);
        }
        posts
    }

    /// The selection places of a sealed ballot: one per post.
    pub fn ballot_slots(&self) -> usize {
        self.posts().len()
    }
}

/// What the ballot rules need to know of a runner: who stands, and for
/// which post. Names and counts play no part in judging a ballot.
pub trait Candidacy {
    fn citizen_id(&self) -> i64;
    fn post(&self) -> &str;
}

impl Candidacy for Runner {
    fn citizen_id(&self) -> i64 {
        self.citizen_id
    }

    fn post(&self) -> &str {
        &self.post
    }
}

/// A runner as the recorder knows them: judging ballots, it never shows a
/// name or a count, so it loads neither.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nominee {
    pub citizen_id: i64,
    pub post: String,
}

impl Candidacy for Nominee {
    fn citizen_id(&self) -> i64 {
        self.citizen_id
    }

    fn post(&self) -> &str {
        &self.post
    }
}

/// Whether some post has two runners to choose between.
pub fn contested(runners: &[impl Candidacy]) -> bool {
    let mut per_post: BTreeMap<&str, usize> = BTreeMap::new();
    runners.iter().any(|r| {
        let n = per_post.entry(r.post()).or_default();
        *n += 1;
        *n >= 2
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    const START: OffsetDateTime = datetime!(2026-06-01 08:00 UTC);
    const END: OffsetDateTime = datetime!(2026-06-01 20:00 UTC);

    fn schedule() -> Schedule {
        Schedule { start_at: START, end_at: END, closed_at: None, cancelled_at: None, contested: true }
    }

    #[test]
    fn status_follows_the_clock_and_the_flags() {
        let s = schedule();
        let noon = datetime!(2026-06-01 12:00 UTC);
        let cases = [
            ("before start", s, datetime!(2026-06-01 07:59 UTC), Status::Scheduled),
            ("at start", s, START, Status::Open),
            ("at end", s, END, Status::Closed),
            (
                "closed early",
                Schedule { closed_at: Some(datetime!(2026-06-01 11:00 UTC)), ..s },
                noon,
                Status::Closed,
            ),
            (
                "cancelled",
                Schedule { cancelled_at: Some(datetime!(2026-05-01 0:00 UTC)), ..s },
                noon,
                Status::Cancelled,
            ),
            (
                "cancelled beats closed",
                Schedule { cancelled_at: Some(noon), closed_at: Some(noon), ..s },
                END,
                Status::Cancelled,
            ),
            ("uncontested at start", Schedule { contested: false, ..s }, noon, Status::Cancelled),
            (
                "uncontested before start",
                Schedule { contested: false, ..s },
                datetime!(2026-05-01 0:00 UTC),
                Status::Scheduled,
            ),
        ];
        for (what, schedule, now, expected) in cases {
            assert_eq!(schedule.status(now), expected, "{what}");
        }
    }

    #[test]
    fn eligibility_table() {
        let noon = datetime!(2026-06-01 12:00 UTC);
        let adult = VoterFacts { province: "Capital", dob: date!(1990 - 01 - 01) };
        let turns_18_on_start = VoterFacts { province: "Capital", dob: date!(2008 - 06 - 01) };
        let turns_18_next_day = VoterFacts { province: "Capital", dob: date!(2008 - 06 - 02) };
        let elsewhere = VoterFacts { province: "Northland", dob: date!(1990 - 01 - 01) };
        let capital = Restriction::Provincial("Capital".into());
        let s = schedule();
        type Case<'a> =
            (&'a str, Schedule, &'a Restriction, &'a VoterFacts<'a>, OffsetDateTime, Result<(), Ineligible>);
        let cases: Vec<Case> = vec![
            ("adult, everyone, open", s, &Restriction::Everyone, &adult, noon, Ok(())),
            ("federal admits every province", s, &Restriction::Federal, &elsewhere, noon, Ok(())),
            ("own province", s, &capital, &adult, noon, Ok(())),
            ("other province", s, &capital, &elsewhere, noon, Err(Ineligible::WrongProvince)),
            ("18 on the start date", s, &Restriction::Everyone, &turns_18_on_start, noon, Ok(())),
            (
                "18 the day after start",
                s,
                &Restriction::Everyone,
                &turns_18_next_day,
                noon,
                Err(Ineligible::TooYoung),
            ),
            (
                "before opening",
                s,
                &Restriction::Everyone,
                &adult,
                datetime!(2026-05-31 12:00 UTC),
                Err(Ineligible::NotOpen),
            ),
            ("after closing", s, &Restriction::Everyone, &adult, END, Err(Ineligible::NotOpen)),
            (
                "cancelled",
                Schedule { cancelled_at: Some(START), ..s },
                &Restriction::Everyone,
                &adult,
                noon,
                Err(Ineligible::Cancelled),
            ),
        ];
        for (what, schedule, restriction, voter, now, expected) in cases {
            assert_eq!(eligibility(&schedule, restriction, 18, voter, now), expected, "{what}");
        }
    }

    #[test]
    fn restrictions_parse_and_print() {
        for raw in ["@everyone", "@federal", "@provincial:North-East Coast"] {
            assert_eq!(raw.parse::<Restriction>().unwrap().to_string(), raw);
        }
        for bad in ["everyone", "@provincial:", "@provincial:lowercase", "@all"] {
            assert!(bad.parse::<Restriction>().is_err(), "{bad}");
        }
    }
}
