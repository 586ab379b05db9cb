//! A synthetic population that is the same for the same seed: plausible
//! names, an age pyramid that includes minors, and every province.

use time::{Date, Month};

use super::Citizen;

pub const PROVINCES: &[&str] =
    &["Capital", "Northland", "Eastmarch", "Southvale", "Westport", "Highlands", "Lakeside", "Riverbend"];

const GIVEN: &[&str] = &[
    "Amara", "Bastien", "Chloe", "Dmitri", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kira",
    "Luca", "Maya", "Nikolai", "Olivia", "Pavel", "Quinn", "Rosa", "Samir", "Tessa", "Umar", "Vera", "Wen",
    "Ximena", "Yusuf", "Zofia", "Aiko", "Bruno", "Carmen", "Dario", "Esther", "Felix",
];
const FAMILY: &[&str] = &[
    "Abara", "Berg", "Castillo", "Dubois", "Eriksen", "Fontaine", "Garcia", "Haddad", "Ivanova", "Jensen",
    "Kowalski", "Larsen", "Moreau", "Nakamura", "Okafor", "Petrov", "Quispe", "Rossi", "Silva", "Tanaka",
    "Ueda", "Varga", "Weber", "Xu", "Yilmaz", "Zimmer", "Alvarez", "Brennan", "Costa", "Dimitrov",
];
const STREETS: &[&str] =
    &["Oak Street", "Harbour Road", "Mill Lane", "Station Avenue", "Church Street", "Park Row"];

/// Share of the population in each decade of age, 0-9 through 90-99: a
/// broad pyramid, so about a fifth are minors.
const AGE_WEIGHTS: [u32; 10] = [12, 12, 13, 14, 13, 12, 10, 8, 4, 2];

/// Ages are counted back from this fixed day so the same seed gives the
/// same registry whenever it runs.
pub const REFERENCE_DATE: Date = match Date::from_calendar_date(2026, Month::January, 1) {
    Ok(d) => d,
    Err(_) => panic!("valid date"),
};

/// SplitMix64: tiny, fast, and reproducible across platforms.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Citizens `first_id ..` in order; each depends only on the seed and its
/// id, so any slice of the registry can be generated on its own.
pub fn citizens(seed: u64, first_id: i64, count: u64) -> impl Iterator<Item = Citizen> {
    (0..count).map(move |i| citizen(seed, first_id + i as i64))
}

pub fn citizen(seed: u64, citizen_id: i64) -> Citizen {
    let mut rng = Rng(seed ^ (citizen_id as u64).wrapping_mul(0xA24B_AED4_963E_E407));
    let province = rng.pick(PROVINCES);
    let full_name = format!("{} {}", rng.pick(GIVEN), rng.pick(FAMILY));
    let total: u32 = AGE_WEIGHTS.iter().sum();
    let mut roll = rng.below(u64::from(total)) as u32;
    let decade = AGE_WEIGHTS.iter().position(|w| match roll.checked_sub(*w) {
        Some(rest) => {
            roll = rest;
            false
        }
        None => true,
    });
    let age_days = (decade.unwrap_or(0) as i64 * 10 * 365) + rng.below(10 * 365) as i64;
    let dob = REFERENCE_DATE - time::Duration::days(age_days);
    let pob = rng.pick(PROVINCES).to_string();
    let permanent_address = format!("{} {}, {province}", 1 + rng.below(400), rng.pick(STREETS));
    Citizen { citizen_id, full_name, dob, pob, permanent_address, province: province.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_registry() {
        let a: Vec<_> = citizens(7, 1, 50).collect();
        let b: Vec<_> = citizens(7, 1, 50).collect();
        assert_eq!(a, b);
        let c: Vec<_> = citizens(8, 1, 50).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn ages_spread_and_include_minors() {
        let people: Vec<_> = citizens(1, 1, 10_000).collect();
        let adult_cutoff = REFERENCE_DATE - time::Duration::days(18 * 365);
        let minors = people.iter().filter(|c| c.dob > adult_cutoff).count();
        assert!((1_000..3_500).contains(&minors), "minors: {minors}");
        let over_80 =
            people.iter().filter(|c| c.dob < REFERENCE_DATE - time::Duration::days(80 * 365)).count();
        assert!(over_80 > 100, "over 80: {over_80}");
    }

    #[test]
    fn every_province_appears() {
        let people: Vec<_> = citizens(3, 1, 2_000).collect();
        for p in PROVINCES {
            assert!(people.iter().any(|c| c.province == *p), "{p} missing");
        }
    }
}
