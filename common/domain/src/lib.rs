//! The election's own rules, with no I/O: citizens' values parsed at the
//! edge, elections and their lifecycle, eligibility, who may see which
//! counts, the ballot and its sealed message, enrollment codes.
//!
//! The lowest layer: it names neither `tally-platform` nor `tally-http`.

pub mod ballot;
pub mod citizen;
pub mod election;
pub mod enrollment;
pub mod lifecycle;
pub mod record;
pub mod seal;
pub mod secret;
pub mod visibility;
