//! `tally record`: export an election's record to a directory, and check
//! one offline (the whole record, or one receipt's inclusion proof) with
//! nothing but its files and a verifier key.

use std::path::Path;

use anyhow::Context;
use tally_domain::record::checkpoint::Checkpoint;
use tally_domain::record::note::NoteVerifier;
use tally_domain::record::proof::{self, parse_receipts};
use tally_domain::record::{CHECKPOINT, Files, RECEIPTS, is_file_name, parse_receipt, verify};
use tally_platform::Settings;

/// Writes the stored record of `election` into `out` (created if missing).
pub async fn export(settings: &Settings, election: i64, out: &Path) -> anyhow::Result<usize> {
    let pool = tally_platform::postgres::pool(&settings.database)?;
    let files = tally_platform::records::files(&pool, election).await?;
    if files.is_empty() {
        anyhow::bail!("election {election} has no record yet: it is built once the election is final");
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for (name, bytes) in &files {
        std::fs::write(out.join(name), bytes).with_context(|| format!("writing {name}"))?;
    }
    Ok(files.len())
}

/// The record files found in `dir`; anything else there is not read.
pub fn read_dir(dir: &Path) -> anyhow::Result<Files> {
    let mut files = Files::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_file_name(&name) && entry.file_type()?.is_file() {
            files.insert(name, std::fs::read(entry.path())?);
        }
    }
    Ok(files)
}

/// The key given on the command line, or else the configured one's public half.
pub fn verifier(given: Option<&str>, settings: &Settings) -> anyhow::Result<NoteVerifier> {
    match given {
        Some(text) => NoteVerifier::parse(text).context("--verifier-key"),
        None => Ok(settings.record.verifier()?),
    }
}

/// Every check, or the first that fails, by name.
pub fn verify_dir(dir: &Path, key: &NoteVerifier) -> anyhow::Result<String> {
    let files = read_dir(dir)?;
    let verified =
        verify::verify(&files, key).map_err(|failure| anyhow::anyhow!("record verify: {failure}"))?;
    Ok(verified.to_string())
}

/// One receipt's proof, made from `receipts.txt` and checked against the
/// signed checkpoint; the proof as JSON and a line saying what it shows.
pub fn prove(receipt: &str, dir: &Path, key: &NoteVerifier) -> anyhow::Result<(String, String)> {
    let receipt = parse_receipt(receipt).context("a receipt is 32 hex digits, or a UUID")?;
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .with_context(|| format!("reading {name} in {}", dir.display()))
    };
    let note = read(CHECKPOINT)?;
    let text = key.open(&note).map_err(|e| anyhow::anyhow!("record prove: the checkpoint: {e}"))?;
    let checkpoint =
        Checkpoint::parse(text).map_err(|e| anyhow::anyhow!("record prove: the checkpoint: {e}"))?;
    let election = checkpoint.election_id().context("the checkpoint's origin names no election")?;
    let receipts =
        parse_receipts(&read(RECEIPTS)?).context("receipts.txt has a line that is not a receipt")?;
    let proof = proof::prove(election, &receipts, &receipt, &note).with_context(|| {
        format!("record prove: receipt {} is not in the record", tally_domain::record::receipt_hex(&receipt))
    })?;
    if !proof::check(&proof, &receipt, &checkpoint) {
        anyhow::bail!(
            "record prove: the proof does not lead to the signed root (receipts.txt is not the checkpoint's)"
        );
    }
    let line = format!(
        "receipt {} is leaf {} of {} in election {election}'s record, under the root signed by {}",
        tally_domain::record::receipt_hex(&receipt),
        proof.leaf_index,
        proof.tree_size,
        key.name
    );
    Ok((serde_json::to_string_pretty(&proof)?, line))
}
