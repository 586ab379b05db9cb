//! Who may see which counts, and when: the one rule that REST results
//! and live frames both apply.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::lifecycle::Status;

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
