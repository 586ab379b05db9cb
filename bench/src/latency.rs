//! Latencies in one HdrHistogram (three significant figures, up to an
//! hour), recorded from many tasks at once and read as quantiles to a
//! tenth of a millisecond.

use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

const HOUR_US: u64 = 3_600_000_000;

pub struct Latencies {
    histogram: Mutex<Histogram<u64>>,
}

impl Default for Latencies {
    fn default() -> Self {
        let histogram =
            Histogram::new_with_max(HOUR_US, 3).expect("an hour at three figures is a valid range");
        Latencies { histogram: Mutex::new(histogram) }
    }
}

impl Latencies {
    /// Longer than an hour counts as an hour.
    pub fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.histogram().saturating_record(us);
    }

    pub fn count(&self) -> u64 {
        self.histogram().len()
    }

    /// The latency below which `q` (0..=1) of the samples fall, in ms to a
    /// tenth; `None` without samples.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let histogram = self.histogram();
        if histogram.is_empty() {
            return None;
        }
        let us = histogram.value_at_quantile(q);
        Some((us as f64 / 100.0).round() / 10.0)
    }

    fn histogram(&self) -> std::sync::MutexGuard<'_, Histogram<u64>> {
        self.histogram.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_read_to_a_tenth_of_a_millisecond() {
        let l = Latencies::default();
        assert_eq!(l.quantile_ms(0.5), None);
        for ms in 1..=100 {
            l.record(Duration::from_millis(ms));
        }
        l.record(Duration::from_micros(100_440));
        assert_eq!(l.count(), 101);
        assert_eq!(l.quantile_ms(0.5), Some(51.0));
        assert_eq!(l.quantile_ms(0.99), Some(100.0));
        assert_eq!(l.quantile_ms(1.0), Some(100.5));
    }
}
