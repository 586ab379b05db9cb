//! C2SP signed notes with Ed25519 (https://c2sp.org/signed-note): a text,
//! a blank line, and lines `— <key name> <base64(key id ‖ signature)>`.
//! Keys travel as text: the verifier key `<name>+<hex id>+<base64(0x01 ‖
//! public key)>`, and the signing key the same with `PRIVATE+KEY+` before
//! it and the 32-byte seed in place of the public key.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

/// The signature type byte of Ed25519 in the signed-note spec.
const ED25519: u8 = 0x01;
const PRIVATE_PREFIX: &str = "PRIVATE+KEY+";
/// U+2014 and a space: how every signature line starts.
const SIGNATURE_START: &str = "\u{2014} ";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoteError {
    #[error("malformed key: {0}")]
    Key(&'static str),
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    #[error("no signature by {0} with its key id")]
    Unsigned(String),
    #[error("the signature by {0} does not verify")]
    BadSignature(String),
}

/// The 4-byte id of a key: SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key).
pub fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ED25519]);
    h.update(public);
    let digest = h.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// A key name has no whitespace and no `+` (the spec's rule).
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// The key that signs records. Never printed: `Debug` shows its name only.
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    key: SigningKey,
}

impl fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NoteSigner({}, ***)", self.name)
    }
}

impl NoteSigner {
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<NoteSigner, NoteError> {
        if !valid_name(name) {
            return Err(NoteError::Key("the name is empty or holds a space or a +"));
        }
        Ok(NoteSigner { name: name.to_string(), key: SigningKey::from_bytes(&seed) })
    }

    /// A new key from the operating system's randomness.
    pub fn generate(name: &str) -> Result<NoteSigner, NoteError> {
        let mut seed = [0u8; 32];
        rand_core::TryRngCore::try_fill_bytes(&mut rand_core::OsRng, &mut seed)
            .map_err(|_| NoteError::Key("the operating system gave no randomness"))?;
        NoteSigner::from_seed(name, seed)
    }

    /// Reads `PRIVATE+KEY+<name>+<hex id>+<base64(0x01 ‖ seed)>`.
    pub fn parse(text: &str) -> Result<NoteSigner, NoteError> {
        let rest =
            text.trim().strip_prefix(PRIVATE_PREFIX).ok_or(NoteError::Key("no PRIVATE+KEY+ prefix"))?;
        let (name, id, key) = split_key(rest)?;
        let key = decode_typed(key)?;
        let signer = NoteSigner::from_seed(name, key)?;
        if signer.verifier().id != id {
            return Err(NoteError::Key("the key id does not match the name and key"));
        }
        Ok(signer)
    }

    /// The signing key as text; only `tally keys generate` prints it.
    pub fn encode(&self) -> String {
        let id = self.verifier().id;
        format!("{PRIVATE_PREFIX}{}+{}+{}", self.name, hex(&id), encode_typed(self.key.as_bytes()))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn verifier(&self) -> NoteVerifier {
        let public = self.key.verifying_key();
        NoteVerifier { name: self.name.clone(), id: key_id(&self.name, public.as_bytes()), key: public }
    }

    /// The note: `text`, a blank line, one signature line. The text must
    /// end in a newline and hold no blank line, as the spec requires.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        check_text(text)?;
        let signature = self.key.sign(text.as_bytes());
        let mut blob = self.verifier().id.to_vec();
        blob.extend_from_slice(&signature.to_bytes());
        Ok(format!("{text}\n{SIGNATURE_START}{} {}\n", self.name, STANDARD.encode(blob)))
    }
}

/// The public half, which anyone checks a record with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteVerifier {
    pub name: String,
    pub id: [u8; 4],
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Reads `<name>+<hex id>+<base64(0x01 ‖ public key)>`, checking the id.
    pub fn parse(text: &str) -> Result<NoteVerifier, NoteError> {
        let (name, id, key) = split_key(text.trim())?;
        let public = decode_typed(key)?;
        if !valid_name(name) {
            return Err(NoteError::Key("the name is empty or holds a space or a +"));
        }
        if key_id(name, &public) != id {
            return Err(NoteError::Key("the key id does not match the name and key"));
        }
        let key =
            VerifyingKey::from_bytes(&public).map_err(|_| NoteError::Key("not an Ed25519 public key"))?;
        Ok(NoteVerifier { name: name.to_string(), id, key })
    }

    pub fn encode(&self) -> String {
        format!("{}+{}+{}", self.name, hex(&self.id), encode_typed(self.key.as_bytes()))
    }

    /// The text of `note` if it carries this key's signature (name and key
    /// id both match) and that signature verifies. Signatures by other
    /// keys are ignored, as the spec says.
    pub fn open<'n>(&self, note: &'n str) -> Result<&'n str, NoteError> {
        let split = note.rfind("\n\n").ok_or(NoteError::Malformed("no blank line before the signatures"))?;
        let (text, signatures) = (&note[..split + 1], &note[split + 2..]);
        check_text(text)?;
        if !signatures.ends_with('\n') {
            return Err(NoteError::Malformed("the last signature line does not end in a newline"));
        }
        for line in signatures.lines() {
            let line = line.strip_prefix(SIGNATURE_START).ok_or(NoteError::Malformed("a signature line"))?;
            let (name, blob) = line.split_once(' ').ok_or(NoteError::Malformed("a signature line"))?;
            let blob = STANDARD.decode(blob).map_err(|_| NoteError::Malformed("a signature's base64"))?;
            if name != self.name || blob.len() < 4 || blob[..4] != self.id {
                continue;
            }
            let signature =
                Signature::from_slice(&blob[4..]).map_err(|_| NoteError::BadSignature(self.name.clone()))?;
            return match self.key.verify(text.as_bytes(), &signature) {
                Ok(()) => Ok(text),
                Err(_) => Err(NoteError::BadSignature(self.name.clone())),
            };
        }
        Err(NoteError::Unsigned(self.name.clone()))
    }
}

/// A note's text: not empty, ends in a newline, no blank line, and no
/// control character but the newline.
fn check_text(text: &str) -> Result<(), NoteError> {
    if !text.ends_with('\n') || text.contains("\n\n") || text.starts_with('\n') {
        return Err(NoteError::Malformed("the text must be lines ending in newlines, none blank"));
    }
    if text.chars().any(|c| c.is_ascii_control() && c != '\n') {
        return Err(NoteError::Malformed("the text holds a control character"));
    }
    Ok(())
}

/// `<name>+<hex id>+<key>`, cut at the first two `+`: a name has none,
/// and the base64 key may.
fn split_key(text: &str) -> Result<(&str, [u8; 4], &str), NoteError> {
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(NoteError::Key("expected <name>+<key id>+<key>"));
    };
    let id = u32::from_str_radix(id, 16)
        .ok()
        .filter(|_| id.len() == 8)
        .ok_or(NoteError::Key("the key id is not 8 hex digits"))?;
    Ok((name, id.to_be_bytes(), key))
}

fn decode_typed(key: &str) -> Result<[u8; 32], NoteError> {
    let bytes = STANDARD.decode(key).map_err(|_| NoteError::Key("the key is not base64"))?;
    match bytes.split_first() {
        Some((&ED25519, rest)) => rest.try_into().map_err(|_| NoteError::Key("an Ed25519 key is 32 bytes")),
        _ => Err(NoteError::Key("not an Ed25519 key (type 0x01)")),
    }
}

fn encode_typed(key: &[u8; 32]) -> String {
    let mut bytes = vec![ED25519];
    bytes.extend_from_slice(key);
    STANDARD.encode(bytes)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(name: &str, seed: u8) -> NoteSigner {
        NoteSigner::from_seed(name, [seed; 32]).unwrap()
    }

    #[test]
    fn keys_round_trip_as_text() {
        let s = signer("tally.example/record", 7);
        let again = NoteSigner::parse(&s.encode()).unwrap();
        assert_eq!(again.verifier(), s.verifier());
        let v = NoteVerifier::parse(&s.verifier().encode()).unwrap();
        assert_eq!(v, s.verifier());
        assert!(!format!("{s:?}").contains(&s.encode()[12..]), "Debug hides the key");
    }

    #[test]
    fn a_key_whose_base64_holds_a_plus_round_trips() {
        let plus = (0..=255u8)
            .map(|seed| signer("a.example", seed))
            .find(|s| s.verifier().encode().matches('+').count() > 2)
            .unwrap();
        assert_eq!(NoteVerifier::parse(&plus.verifier().encode()), Ok(plus.verifier()));
    }

    #[test]
    fn a_note_opens_with_its_key_only() {
        let s = signer("tally.example/record", 7);
        let note = s.sign("hello\nworld\n").unwrap();
        assert!(note.starts_with("hello\nworld\n\n\u{2014} tally.example/record "));
        assert_eq!(s.verifier().open(&note), Ok("hello\nworld\n"));
        let other = signer("tally.example/record", 8);
        assert!(matches!(other.verifier().open(&note), Err(NoteError::Unsigned(_))));
        let edited = note.replacen("world", "World", 1);
        assert!(matches!(s.verifier().open(&edited), Err(NoteError::BadSignature(_))));
    }

    #[test]
    fn a_wrong_key_id_or_name_is_refused() {
        let s = signer("a.example", 1);
        let text = s.verifier().encode();
        let tampered = text.replacen('+', "x+", 1);
        assert!(NoteVerifier::parse(&tampered).is_err());
        assert!(NoteSigner::from_seed("has space", [0; 32]).is_err());
        assert!(s.sign("no newline").is_err());
        assert!(s.sign("blank\n\nline\n").is_err());
    }

    #[test]
    fn signatures_of_unknown_keys_are_ignored() {
        let s = signer("a.example", 1);
        let mut note = s.sign("text\n").unwrap();
        note.push_str("\u{2014} someone.else AAAAAAAA\n");
        assert_eq!(s.verifier().open(&note), Ok("text\n"));
    }
}
