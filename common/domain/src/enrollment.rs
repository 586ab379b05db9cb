//! Enrollment codes: the one-time secret the registry mails to a citizen,
//! which proves at sign-up that the person is that citizen.
//!
//! A code is 80 random bits in Crockford base32 (no I, L, O or U, so it
//! survives being read off paper), shown in groups of four. Only
//! HMAC-SHA256(`auth.enrollment_key`, citizen id ‖ code) is stored: a
//! copy of the database alone yields no usable code, and a code is bound
//! to its citizen.

use ring::hmac;

/// Crockford's base32 alphabet.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters in a code (5 bits each: 80 bits).
pub const CODE_LENGTH: usize = 16;

/// The key codes are hashed with.
#[derive(Clone)]
pub struct EnrollmentKey(hmac::Key);

impl EnrollmentKey {
    pub fn new(secret: &[u8]) -> EnrollmentKey {
        EnrollmentKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// What is stored for `code` issued to `citizen_id`; `None` when the
    /// text cannot be a code at all.
    pub fn hash(&self, citizen_id: i64, code: &str) -> Option<Vec<u8>> {
        let normal = normalize(code)?;
        let mut context = hmac::Context::with_key(&self.0);
        context.update(&citizen_id.to_be_bytes());
        context.update(normal.as_bytes());
        Some(context.sign().as_ref().to_vec())
    }
}

/// A fresh random code, e.g. `7K3M-Q9ZD-0RTW-H4NB`.
pub fn new_code() -> anyhow::Result<String> {
    let mut bytes = [0u8; CODE_LENGTH];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness for an enrollment code"))?;
    let mut code = String::with_capacity(CODE_LENGTH + CODE_LENGTH / 4);
    for (i, byte) in bytes.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            code.push('-');
        }
        // 256 is a multiple of 32, so the low five bits are uniform.
        code.push(char::from(ALPHABET[usize::from(byte & 31)]));
    }
    Ok(code)
}

/// The canonical form: upper case, without dashes or spaces, with the
/// letters people confuse with digits read as those digits. `None` when
/// it has the wrong length or a character outside the alphabet.
fn normalize(code: &str) -> Option<String> {
    let mut normal = String::with_capacity(CODE_LENGTH);
    for c in code.chars().filter(|c| !matches!(c, '-' | ' ')) {
        let c = match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        };
        if !c.is_ascii() || !ALPHABET.contains(&(c as u8)) {
            return None;
        }
        normal.push(c);
    }
    (normal.len() == CODE_LENGTH).then_some(normal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_long_random_and_in_the_alphabet() {
        let (a, b) = (new_code().unwrap(), new_code().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 19, "{a}");
        assert!(normalize(&a).is_some_and(|n| n.len() >= 10));
    }

    #[test]
    fn a_code_matches_however_it_is_typed_and_only_for_its_citizen() {
        let key = EnrollmentKey::new(b"a key for this test only, 32 bytes+");
        let code = "7K3M-Q9ZD-0RTW-H4NB";
        let stored = key.hash(12, code).unwrap();
        assert_eq!(key.hash(12, "7k3mq9zdortwh4nb"), Some(stored.clone()), "case, dashes, O for 0");
        assert_eq!(key.hash(12, "7K3M Q9ZD 0RTW H4NB"), Some(stored.clone()));
        assert_ne!(key.hash(13, code), Some(stored.clone()), "bound to the citizen");
        let other = EnrollmentKey::new(b"another key, also 32 bytes or more");
        assert_ne!(other.hash(12, code), Some(stored), "keyed");
        assert_eq!(key.hash(12, "7K3M-Q9ZD-0RTW"), None, "too short");
        assert_eq!(key.hash(12, "7K3M-Q9ZD-0RTW-H4NU"), None, "U is not in the alphabet");
        assert_eq!(key.hash(12, "7K3M-Q9ZD-0RTW-H4NÉ"), None);
    }
}
