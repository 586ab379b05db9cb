//! The MANIFEST's text: `sha256sum` lines, `<hex>  <file>`, for every
//! other file of the record, in name order. It is signed as a note, so the
//! hashes it lists are as trustworthy as the key.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::note::hex;

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The lines for `files` (a map, so already in name order).
pub fn text(files: &BTreeMap<String, Vec<u8>>) -> String {
    files.iter().map(|(name, bytes)| format!("{}  {name}\n", sha256_hex(bytes))).collect()
}

/// File name → hex hash, from the MANIFEST's text.
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut listed = BTreeMap::new();
    for line in text.lines() {
        let (hash, name) =
            line.split_once("  ").ok_or_else(|| format!("not a `<hex>  <file>` line: {line:?}"))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("not a SHA-256 in hex: {line:?}"));
        }
        if listed.insert(name.to_string(), hash.to_ascii_lowercase()).is_some() {
            return Err(format!("{name} is listed twice"));
        }
    }
    Ok(listed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_like_sha256sum() {
        let files = BTreeMap::from([("b.txt".to_string(), b"b".to_vec()), ("a.txt".to_string(), Vec::new())]);
        let text = text(&files);
        assert!(
            text.starts_with("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  a.txt\n")
        );
        let listed = parse(&text).unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed["b.txt"], sha256_hex(b"b"));
        assert!(parse("abc  x\n").is_err());
    }
}
