//! Open-loop pacing: how many ballots are due at each wake-up of the
//! client, on a schedule of `rate` per second from the start. A timer
//! cannot wake a task every few microseconds, so at high rates each
//! wake-up sends what the schedule owes rather than one ballot.

use std::time::Duration;

pub struct Schedule {
    rate: f64,
    sent: u64,
    skipped: u64,
}

impl Schedule {
    pub fn new(rate: u32) -> Self {
        Self { rate: f64::from(rate.max(1)), sent: 0, skipped: 0 }
    }

    /// The wake-up period: the rate's own, but never below a millisecond.
    pub fn tick(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.rate).max(Duration::from_millis(1))
    }

    /// Ballots to send now, `elapsed` after the start. After a stall (every
    /// in-flight slot taken, the client starved of CPU) at most a tenth of
    /// a second's worth is made up in one burst; beyond that the schedule
    /// moves on, as a real crowd does not queue up behind a slow server.
    pub fn due(&mut self, elapsed: Duration) -> u64 {
        let owed_since_start = (elapsed.as_secs_f64() * self.rate) as u64;
        let owed = owed_since_start.saturating_sub(self.sent + self.skipped);
        let burst = (self.rate / 10.0).ceil() as u64;
        let due = owed.min(burst);
        self.skipped += owed - due;
        self.sent += due;
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_high_rate_is_met_on_average_from_millisecond_wakeups() {
        let mut schedule = Schedule::new(5_000);
        assert_eq!(schedule.tick(), Duration::from_millis(1));
        let sent: u64 = (1..=1_000).map(|ms| schedule.due(Duration::from_millis(ms))).sum();
        assert_eq!(sent, 5_000);
    }

    #[test]
    fn a_low_rate_wakes_once_per_ballot() {
        let mut schedule = Schedule::new(300);
        assert_eq!(schedule.tick(), Duration::from_secs_f64(1.0 / 300.0));
        assert_eq!(schedule.due(Duration::from_millis(2)), 0);
        assert_eq!(schedule.due(Duration::from_millis(4)), 1);
        assert_eq!(schedule.due(Duration::from_millis(5)), 0);
    }

    #[test]
    fn a_stall_is_made_up_only_up_to_a_tenth_of_a_second() {
        let mut schedule = Schedule::new(1_000);
        assert_eq!(schedule.due(Duration::from_millis(10)), 10);
        assert_eq!(schedule.due(Duration::from_secs(2)), 100);
        // The rest of the stall is skipped: the schedule goes on from here.
        assert_eq!(schedule.due(Duration::from_millis(2_001)), 1);
    }
}
