//! An election's lifecycle: its status, computed in exactly this one
//! place from stored times and flags.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

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
