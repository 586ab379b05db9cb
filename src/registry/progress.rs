//! Progress of the long registry commands on stderr: on a terminal, a bar
//! with the percentage, rate and time left (`indicatif`); otherwise, as in
//! a script's log, the same figures as a line every few seconds. Stdout is
//! left to the data (CSV, codes).

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, HumanCount, HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a line is written when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    bar: ProgressBar,
    /// What is counted: citizens, codes, or bytes of a file.
    unit: &'static str,
    lines: Option<Mutex<Instant>>,
}

impl Progress {
    /// Counting `total` things called `unit` ("bytes" shows sizes).
    pub fn new(total: u64, unit: &'static str) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let target =
            if terminal { ProgressDrawTarget::stderr_with_hz(4) } else { ProgressDrawTarget::hidden() };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        // Sizes carry their own unit (2.20 MiB); counts are followed by theirs.
        let counts = match unit {
            "bytes" => "{binary_bytes}/{binary_total_bytes}".to_string(),
            _ => format!("{{human_pos}}/{{human_len}} {unit}"),
        };
        let template = format!("{{percent:>3}}% [{{bar:30}}] {counts} · {{per_sec}} · {{eta}} left {{msg}}");
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style.progress_chars("=> "));
        }
        let lines = (!terminal).then(|| Mutex::new(Instant::now()));
        Progress { bar, unit, lines }
    }

    pub fn bar(&self) -> &ProgressBar {
        &self.bar
    }

    /// Moves to `position` and, off a terminal, writes a line if the last
    /// is old enough.
    pub fn set(&self, position: u64) {
        self.bar.set_position(position);
        self.line(false);
    }

    /// Adds a note after the figures (rows read, bad rows).
    pub fn note(&self, note: String) {
        self.bar.set_message(note);
        self.line(false);
    }

    /// Clears the bar; off a terminal, writes the last line.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
        self.line(true);
    }

    fn line(&self, last: bool) {
        let Some(lines) = &self.lines else { return };
        let mut written = lines.lock().unwrap_or_else(|e| e.into_inner());
        if !last && written.elapsed() < LINE_EVERY {
            return;
        }
        *written = Instant::now();
        eprintln!("{}", self.figures());
    }

    /// "42% 4,200/10,000 citizens, 1,300/s, 4s left".
    fn figures(&self) -> String {
        let (done, total) = (self.bar.position(), self.bar.length().unwrap_or(0));
        let percent = done.saturating_mul(100).checked_div(total).unwrap_or(100);
        let rate = self.bar.per_sec();
        let (done, total, rate) = if self.unit == "bytes" {
            (
                HumanBytes(done).to_string(),
                HumanBytes(total).to_string(),
                format!("{}/s", HumanBytes(rate as u64)),
            )
        } else {
            (
                HumanCount(done).to_string(),
                format!("{} {}", HumanCount(total), self.unit),
                format!("{}/s", HumanCount(rate as u64)),
            )
        };
        let left = HumanDuration(self.bar.eta());
        let note = self.bar.message();
        let note = if note.is_empty() { String::new() } else { format!(" {note}") };
        format!("{percent}% {done}/{total}, {rate}, {left} left{note}")
    }
}

#[cfg(test)]
mod tests {
    use super::Progress;

    #[test]
    fn figures_give_the_share_done_and_what_is_counted() {
        let progress = Progress::new(10_000, "citizens");
        progress.bar().set_position(4_200);
        let figures = progress.figures();
        assert!(figures.starts_with("42% 4,200/10,000 citizens, "), "{figures}");
        assert!(figures.contains("/s, ") && figures.contains(" left"), "{figures}");
        progress.note("(3 bad rows)".into());
        assert!(progress.figures().ends_with("left (3 bad rows)"), "{}", progress.figures());
        let empty = Progress::new(0, "codes");
        assert!(empty.figures().starts_with("100% 0/0 codes"), "{}", empty.figures());
        let file = Progress::new(2 << 20, "bytes");
        file.bar().set_position(1 << 20);
        assert!(file.figures().starts_with("50% 1.00 MiB/2.00 MiB, "), "{}", file.figures());
    }
}
