//! The `tally citizens` commands' work: file in, file out, codes out,
//! progress and the summary line.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use tally_domain::enrollment::EnrollmentKey;
use tally_platform::Settings;

use super::generate::citizens;
use super::import::{COLUMNS, import};
use super::load::{BATCH, insert_batch};
use super::progress::Progress;

pub enum RegistryCommand {
    Import {
        file: PathBuf,
        skip_bad_rows: bool,
    },
    Generate {
        count: u64,
        seed: u64,
        first_id: i64,
        output: Option<PathBuf>,
        into_db: bool,
    },
    /// Codes for these citizens to stdout, or for every citizen without an
    /// enrolled account to a new file.
    Codes {
        ids: Vec<i64>,
        without_account: Option<PathBuf>,
    },
}

/// Bad rows printed in full; past this only their count.
const BAD_ROWS_SHOWN: usize = 1_000;

pub async fn run(command: RegistryCommand, settings: &Settings) -> anyhow::Result<()> {
    match command {
        RegistryCommand::Import { file, skip_bad_rows } => {
            let pool = tally_platform::postgres::pool(&settings.database)?;
            let input = std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?;
            let size = input.metadata().map(|m| m.len()).unwrap_or(0);
            let started = Instant::now();
            // The share of the file read so far is the share done.
            let progress = Progress::new(size, "bytes");
            let input = std::io::BufReader::new(progress.bar().wrap_read(input));
            let report = import(&pool, input, skip_bad_rows, |rows| {
                progress.note(format!("({} rows)", indicatif::HumanCount(rows)));
            })
            .await;
            progress.finish();
            let report = report?;
            for bad in report.bad.iter().take(BAD_ROWS_SHOWN) {
                eprintln!("{}:{}: {}", file.display(), bad.line, bad.reason);
            }
            if report.bad.len() > BAD_ROWS_SHOWN {
                eprintln!("… and {} more bad rows", report.bad.len() - BAD_ROWS_SHOWN);
            }
            let secs = started.elapsed().as_secs_f64();
            if report.committed {
                println!(
                    "imported {} citizens from {} rows in {secs:.1}s; {} bad rows skipped",
                    report.imported,
                    report.rows,
                    report.bad.len()
                );
                Ok(())
            } else {
                anyhow::bail!(
                    "nothing imported: {} of {} rows are bad (fix them, or pass --skip-bad-rows to import the rest)",
                    report.bad.len(),
                    report.rows
                )
            }
        }
        RegistryCommand::Codes { ids, without_account } => {
            let key = EnrollmentKey::new(settings.auth.enrollment_key()?);
            let pool = tally_platform::postgres::pool(&settings.database)?;
            match without_account {
                None => {
                    let issued = super::codes::issue(&pool, &key, &ids).await?;
                    let mut out = std::io::stdout().lock();
                    for (citizen_id, code) in &issued {
                        writeln!(out, "{citizen_id},{code}")?;
                    }
                    out.flush()?;
                    eprintln!(
                        "new codes issued: {}; older codes of these citizens no longer work",
                        issued.len()
                    );
                }
                Some(path) => {
                    let started = Instant::now();
                    let mut out = std::io::BufWriter::new(secret_file(&path)?);
                    let progress = Progress::new(super::codes::without_account(&pool).await?, "codes");
                    let issued =
                        super::codes::issue_without_account(&pool, &key, &mut out, |n| progress.set(n)).await;
                    progress.finish();
                    let issued = issued?;
                    println!(
                        "{issued} codes written to {} in {:.1}s; mail them, then delete the file",
                        path.display(),
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            Ok(())
        }
        RegistryCommand::Generate { count, seed, first_id, output, into_db } => {
            let started = Instant::now();
            if into_db {
                let pool = tally_platform::postgres::pool(&settings.database)?;
                let progress = Progress::new(count, "citizens");
                let mut added = 0;
                let mut next = first_id;
                let mut left = count;
                while left > 0 {
                    let n = left.min(BATCH as u64);
                    let chunk: Vec<_> = citizens(seed, next, n).collect();
                    added += insert_batch(&pool, &chunk).await?;
                    next += n as i64;
                    left -= n;
                    progress.set(count - left);
                }
                progress.finish();
                println!("{added} new citizens in {:.1}s", started.elapsed().as_secs_f64());
            } else {
                let sink: Box<dyn Write> = match &output {
                    Some(path) => Box::new(
                        std::fs::File::create(path)
                            .with_context(|| format!("creating {}", path.display()))?,
                    ),
                    None => Box::new(std::io::stdout().lock()),
                };
                let progress = Progress::new(count, "citizens");
                let written = write_csv(sink, seed, first_id, count, &progress);
                progress.finish();
                written?;
                if let Some(path) = output {
                    eprintln!(
                        "{count} citizens written to {} in {:.1}s",
                        path.display(),
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            Ok(())
        }
    }
}

/// A new file only its owner can read: it holds codes. An existing file
/// is never overwritten (it may be a mailing not yet sent).
fn secret_file(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).with_context(|| format!("creating {} (it must not exist yet)", path.display()))
}

fn write_csv(
    sink: impl Write,
    seed: u64,
    first_id: i64,
    count: u64,
    progress: &Progress,
) -> anyhow::Result<()> {
    let mut writer = csv::Writer::from_writer(std::io::BufWriter::with_capacity(1 << 20, sink));
    writer.write_record(COLUMNS)?;
    let mut id = itoa_buf();
    for (n, c) in citizens(seed, first_id, count).enumerate() {
        if n % 10_000 == 0 {
            progress.set(n as u64);
        }
        let dob = c.dob.to_string();
        writer.write_record([
            id.format(c.citizen_id),
            &c.full_name,
            &dob,
            &c.pob,
            &c.permanent_address,
            &c.province,
        ])?;
    }
    writer.flush().context("writing CSV")?;
    Ok(())
}

/// A reusable integer formatter, to avoid an allocation per row.
struct IdBuf(String);

fn itoa_buf() -> IdBuf {
    IdBuf(String::with_capacity(20))
}

impl IdBuf {
    fn format(&mut self, id: i64) -> &str {
        use std::fmt::Write;
        self.0.clear();
        let _ = write!(self.0, "{id}");
        &self.0
    }
}
