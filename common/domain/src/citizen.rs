//! Values from outside, parsed once at the edge into types that cannot
//! hold a bad value.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A registry id: positive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CitizenId(i64);

impl CitizenId {
    pub fn parse(raw: i64) -> Result<Self, &'static str> {
        if raw > 0 { Ok(CitizenId(raw)) } else { Err("must be a positive integer") }
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for CitizenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An E.164 telephone number: `+`, a non-zero digit, 7 to 15 digits in all.
#[derive(Clone, PartialEq, Eq)]
pub struct Phone(String);

impl Phone {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let digits = raw.strip_prefix('+').ok_or("must start with + and the country code (E.164)")?;
        let ok = (7..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if ok { Ok(Phone(raw.to_string())) } else { Err("must be + followed by 7 to 15 digits (E.164)") }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Personal data: never printed in full.
impl fmt::Debug for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Phone(***)")
    }
}

pub const PASSWORD_MIN_CHARS: usize = 12;
pub const PASSWORD_MAX_CHARS: usize = 128;

/// A password good enough to accept: 12 to 128 characters and not the
/// citizen's own id or phone number.
pub struct NewPassword(String);

impl NewPassword {
    pub fn parse(raw: &str, citizen_id: CitizenId, phone: &str) -> Result<Self, &'static str> {
        let chars = raw.chars().count();
        if chars < PASSWORD_MIN_CHARS {
            return Err("must be at least 12 characters");
        }
        if chars > PASSWORD_MAX_CHARS {
            return Err("must be at most 128 characters");
        }
        let bare = raw.trim().trim_start_matches('+');
        if bare == citizen_id.to_string() || bare == phone.trim_start_matches('+') {
            return Err("must not be your citizen id or phone number");
        }
        Ok(NewPassword(raw.to_string()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewPassword(***)")
    }
}

/// A province name as the registry writes it.
pub fn valid_province(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_uppercase())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphabetic() || c == ' ' || c == '-')
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Voter,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Voter => "voter",
            Role::Admin => "admin",
        }
    }

    pub fn from_db(raw: &str) -> Role {
        if raw == "admin" { Role::Admin } else { Role::Voter }
    }
}

/// Whole years from `dob` to `on`.
pub fn age_on(dob: time::Date, on: time::Date) -> i32 {
    let mut years = on.year() - dob.year();
    if (on.month() as u8, on.day()) < (dob.month() as u8, dob.day()) {
        years -= 1;
    }
    years
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::date;

    #[test]
    fn phones_must_be_e164() {
        assert!(Phone::parse("+14155550100").is_ok());
        for bad in ["14155550100", "+0123456789", "+1", "+1415555010012345", "+1 415 555", "+1415a550100"] {
            assert!(Phone::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_are_long_and_not_the_obvious() {
        let id = CitizenId::parse(123456789012).unwrap();
        assert!(NewPassword::parse("correct horse battery", id, "+14155550100").is_ok());
        assert!(NewPassword::parse("short", id, "+14155550100").is_err());
        assert!(NewPassword::parse(&"x".repeat(129), id, "+14155550100").is_err());
        assert!(NewPassword::parse("123456789012", id, "+14155550100").is_err());
        assert!(NewPassword::parse("+14155550100", id, "+14155550100").is_err());
        assert!(NewPassword::parse("ééééééééééé", id, "+1").is_err(), "11 characters, 22 bytes");
    }

    #[test]
    fn ages_count_birthdays() {
        assert_eq!(age_on(date!(2008 - 06 - 15), date!(2026 - 06 - 14)), 17);
        assert_eq!(age_on(date!(2008 - 06 - 15), date!(2026 - 06 - 15)), 18);
        assert_eq!(age_on(date!(2004 - 02 - 29), date!(2026 - 02 - 28)), 21);
    }

    #[test]
    fn provinces() {
        assert!(valid_province("Capital"));
        assert!(valid_province("North-East Coast"));
        assert!(!valid_province("capital"));
        assert!(!valid_province("Capital<script>"));
        assert!(!valid_province(""));
    }

    proptest! {
        #[test]
        fn phone_parse_never_panics_and_accepts_only_digits(raw in ".{0,24}") {
            if let Ok(p) = Phone::parse(&raw) {
                prop_assert!(p.as_str()[1..].bytes().all(|b| b.is_ascii_digit()));
            }
        }

        #[test]
        fn citizen_ids_are_positive(raw in any::<i64>()) {
            prop_assert_eq!(CitizenId::parse(raw).is_ok(), raw > 0);
        }
    }
}
