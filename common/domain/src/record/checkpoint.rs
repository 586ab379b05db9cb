//! The checkpoint's text (https://c2sp.org/tlog-checkpoint): the origin,
//! the tree size in decimal and the base64 root hash, one per line, and no
//! extension lines. It is signed as a note (`note`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::merkle::Hash;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

/// The origin of election `id`'s log: `<public host>/tally/election/<id>`.
pub fn origin(public_host: &str, election_id: i64) -> String {
    format!("{public_host}/tally/election/{election_id}")
}

impl Checkpoint {
    pub fn text(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, STANDARD.encode(self.root))
    }

    /// Reads a checkpoint's text. Extension lines are refused: Tally
    /// writes none, so one found here was added by someone else.
    pub fn parse(text: &str) -> Result<Checkpoint, &'static str> {
        let lines: Vec<&str> =
            text.strip_suffix('\n').ok_or("the text does not end in a newline")?.split('\n').collect();
        let [origin, size, root] = lines[..] else {
            return Err("expected exactly three lines: origin, size, root");
        };
        if origin.is_empty() {
            return Err("the origin line is empty");
        }
        // Decimal with no sign and no leading zero, as the spec writes it.
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err("the tree size is not a decimal number");
        }
        let size = size.parse().map_err(|_| "the tree size is out of range")?;
        let root = STANDARD.decode(root).map_err(|_| "the root is not base64")?;
        let root = root.try_into().map_err(|_| "the root is not 32 bytes")?;
        Ok(Checkpoint { origin: origin.to_string(), size, root })
    }

    /// The election id its origin names, whatever the host.
    pub fn election_id(&self) -> Option<i64> {
        self.origin.rsplit_once("/tally/election/")?.1.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips() {
        let c = Checkpoint { origin: origin("vote.example", 7), size: 42, root: [3; 32] };
        assert_eq!(c.text().lines().next(), Some("vote.example/tally/election/7"));
        assert_eq!(Checkpoint::parse(&c.text()), Ok(c.clone()));
        assert_eq!(c.election_id(), Some(7));
    }

    #[test]
    fn malformed_texts_are_refused() {
        let good = Checkpoint { origin: "o".into(), size: 1, root: [0; 32] }.text();
        for bad in [
            good.replace("\n1\n", "\n01\n"),
            good.replace("\n1\n", "\n-1\n"),
            format!("{good}extension\n"),
            good.trim_end().to_string(),
            good.replace("AAAA", "AA"),
        ] {
            assert!(Checkpoint::parse(&bad).is_err(), "{bad:?}");
        }
    }
}
