//! `tally citizens import`: streams a registry CSV into `citizens`.
//!
//! Every bad row is reported with its line and reason (control characters,
//! NUL included, make a row bad). By default the file
//! goes in whole or not at all; with `skip_bad_rows` the good rows go in and
//! the bad ones are only reported.

use std::collections::{HashMap, HashSet};
use std::io::Read;

use anyhow::Context;
use sqlx::PgPool;
use tally_domain::citizen::valid_province;
use time::Date;

use super::Citizen;
use super::load::BATCH;

pub const COLUMNS: [&str; 6] = ["citizen_id", "full_name", "dob", "pob", "permanent_address", "province"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    pub line: u64,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct ImportReport {
    pub rows: u64,
    pub imported: u64,
    pub bad: Vec<BadRow>,
    pub committed: bool,
}

pub async fn import(
    pool: &PgPool,
    input: impl Read,
    skip_bad_rows: bool,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<ImportReport> {
    let mut reader =
        csv::ReaderBuilder::new().has_headers(true).flexible(true).trim(csv::Trim::All).from_reader(input);
    let headers = reader.headers().context("reading the header row")?.clone();
    let index = column_index(&headers)?;

    let mut report = ImportReport::default();
    let mut seen = HashSet::new();
    let mut batch: Vec<(u64, Citizen)> = Vec::with_capacity(BATCH);
    let mut tx = pool.begin().await.context("starting the import transaction")?;
    let today = time::OffsetDateTime::now_utc().date();
    for record in reader.records() {
        report.rows += 1;
        if report.rows % 100_000 == 0 {
            progress(report.rows);
        }
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(report.rows + 1, |p| p.line());
                report.bad.push(BadRow { line, reason: format!("unreadable row: {e}") });
                continue;
            }
        };
        let line = record.position().map_or(report.rows + 1, |p| p.line());
        match parse_row(&record, &index, today) {
            Err(reason) => report.bad.push(BadRow { line, reason }),
            Ok(citizen) if !seen.insert(citizen.citizen_id) => report.bad.push(BadRow {
                line,
                reason: format!("duplicate citizen_id {} in this file", citizen.citizen_id),
            }),
            Ok(citizen) => batch.push((line, citizen)),
        }
        if batch.len() == BATCH {
            flush(&mut tx, &mut batch, &mut report).await?;
        }
    }
    flush(&mut tx, &mut batch, &mut report).await?;
    report.bad.sort_by_key(|b| b.line);
    if report.bad.is_empty() || skip_bad_rows {
        tx.commit().await.context("committing the import")?;
        report.committed = true;
    } else {
        tx.rollback().await.context("rolling back the import")?;
        report.imported = 0;
    }
    Ok(report)
}

fn column_index(headers: &csv::StringRecord) -> anyhow::Result<[usize; 6]> {
    let mut index = [0usize; 6];
    for (slot, name) in index.iter_mut().zip(COLUMNS) {
        *slot = headers.iter().position(|h| h == name).ok_or_else(|| {
            anyhow::anyhow!("the header row lacks column `{name}`; expected: {}", COLUMNS.join(","))
        })?;
    }
    Ok(index)
}

fn parse_row(record: &csv::StringRecord, index: &[usize; 6], today: Date) -> Result<Citizen, String> {
    let field = |i: usize| -> Result<&str, String> {
        match record.get(index[i]) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(format!("missing {}", COLUMNS[i])),
        }
    };
    // A NUL or a terminal escape would reach every screen and report that
    // shows the name; none belongs in a registry record.
    for (column, &i) in COLUMNS.iter().zip(index) {
        if let Some(c) = record.get(i).and_then(|v| v.chars().find(|c| c.is_control())) {
            return Err(format!("{column} contains the control character U+{:04X}", u32::from(c)));
        }
    }
    let raw_id = field(0)?;
    let citizen_id = raw_id
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| format!("citizen_id `{raw_id}` is not a positive integer"))?;
    let raw_dob = field(2)?;
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let dob =
        Date::parse(raw_dob, &format).map_err(|_| format!("dob `{raw_dob}` is not a date (YYYY-MM-DD)"))?;
    if dob > today {
        return Err(format!("dob {raw_dob} is in the future"));
    }
    let province = field(5)?;
    if !valid_province(province) {
        return Err(format!(
            "province `{province}` is not a province name (a capital letter, then letters, spaces or -)"
        ));
    }
    let text = |i: usize| -> Result<String, String> {
        let v = field(i)?;
        if v.chars().count() > 255 {
            Err(format!("{} is longer than 255 characters", COLUMNS[i]))
        } else {
            Ok(v.to_string())
        }
    };
    Ok(Citizen {
        citizen_id,
        full_name: text(1)?,
        dob,
        pob: text(3)?,
        permanent_address: text(4)?,
        province: province.to_string(),
    })
}

/// Inserts the batch; ids already in the registry are reported as bad rows.
async fn flush(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    batch: &mut Vec<(u64, Citizen)>,
    report: &mut ImportReport,
) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let citizens: Vec<Citizen> = batch.iter().map(|(_, c)| c.clone()).collect();
    let inserted: HashSet<i64> =
        super::load::insert_returning(&mut **tx, &citizens).await?.into_iter().collect();
    report.imported += inserted.len() as u64;
    let lines: HashMap<i64, u64> = batch.iter().map(|(line, c)| (c.citizen_id, *line)).collect();
    for (id, line) in lines {
        if !inserted.contains(&id) {
            report.bad.push(BadRow { line, reason: format!("citizen_id {id} is already in the registry") });
        }
    }
    batch.clear();
    Ok(())
}
