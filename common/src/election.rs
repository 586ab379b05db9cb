//! Elections as every role sees them: the lifecycle status, computed in
//! exactly this one place from stored times and flags, and eligibility.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::{age_on, valid_province};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Scheduled,
    Open,
    Closed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Scheduled => "scheduled",
            Status::Open => "open",
            Status::Closed => "closed",
            Status::Cancelled => "cancelled",
        }
    }
}

impl FromStr for Status {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "scheduled" => Ok(Status::Scheduled),
            "open" => Ok(Status::Open),
            "closed" => Ok(Status::Closed),
            "cancelled" => Ok(Status::Cancelled),
            _ => Err(()),
        }
    }
}

/// What an election's clock and flags say, at `now`.
///
/// An election that reaches its start without any post contested by two
/// runners can never be voted in, so from then on it counts as cancelled.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub start_at: OffsetDateTime,
    pub end_at: OffsetDateTime,
    pub closed_at: Option<OffsetDateTime>,
    pub cancelled_at: Option<OffsetDateTime>,
    /// Some post has at least two runners.
    pub contested: bool,
}

impl Schedule {
    pub fn status(&self, now: OffsetDateTime) -> Status {
        if self.cancelled_at.is_some_and(|at| at <= now) {
            Status::Cancelled
        } else if now < self.start_at {
            Status::Scheduled
        } else if !self.contested {
            Status::Cancelled
        } else if now >= self.end_at || self.closed_at.is_some_and(|at| at <= now) {
            Status::Closed
        } else {
            Status::Open
        }
    }

    /// When voting stops, whichever of the end and an early close is first.
    pub fn voting_ends(&self) -> OffsetDateTime {
        self.closed_at.map_or(self.end_at, |c| c.min(self.end_at))
    }
}

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

/// What of the counts may be shown, for REST results and live frames alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shown {
    pub turnout: bool,
    pub votes: bool,
    /// The version counts commits, so it is hidden whenever counts are.
    pub version: bool,
}

impl Visibility {
    /// While voting is open, what the visibility allows. From the end until
    /// every ballot is recorded (`final`), nothing: the last live figure and
    /// the final one must never differ by a small group. Then everything.
    pub fn shown(self, status: Status, is_final: bool) -> Shown {
        let nothing = Shown { turnout: false, votes: false, version: false };
        match status {
            Status::Closed | Status::Cancelled if is_final => {
                Shown { turnout: true, votes: true, version: true }
            }
            Status::Closed | Status::Cancelled => nothing,
            _ => match self {
                Visibility::Live => Shown { turnout: true, votes: true, version: true },
                Visibility::TurnoutOnly => Shown { turnout: true, votes: false, version: false },
                Visibility::AfterClose => nothing,
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Counts are public while voting is open.
    Live,
    /// Only turnout until the election closes.
    TurnoutOnly,
    /// Nothing but the status until it closes.
    AfterClose,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Live => "live",
            Visibility::TurnoutOnly => "turnout_only",
            Visibility::AfterClose => "after_close",
        }
    }
}

impl FromStr for Visibility {
    type Err = &'static str;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw {
            "live" => Ok(Visibility::Live),
            "turnout_only" => Ok(Visibility::TurnoutOnly),
            "after_close" => Ok(Visibility::AfterClose),
            _ => Err("must be live, turnout_only or after_close"),
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
