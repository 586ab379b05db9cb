//! The mock national registry: a deterministic synthetic population,
//! loading citizens into Postgres in batches, and enrollment codes.

pub mod codes;
pub mod commands;
pub mod generate;
pub mod import;
pub mod load;
pub mod progress;

use time::Date;

/// One registry record, as the `citizens` table holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Citizen {
    pub citizen_id: i64,
    pub full_name: String,
    pub dob: Date,
    pub pob: String,
    pub permanent_address: String,
    pub province: String,
}
