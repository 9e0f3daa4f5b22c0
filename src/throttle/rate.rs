//! A per-second rate from a counter that only grows (the WAL position), sampled whenever a check runs: before each
//! batch, and every `throttleCheckMs` while held. Samples closer together than [`MIN_WINDOW`] keep the last rate:
//! what a standby or an archive cannot keep up with is a sustained rate, while one batch's burst of full-page
//! images right after a checkpoint passes 100 MiB/s on the benchmark machine — measured per batch, that burst held
//! an idle backfill for a second again and again (foreground benchmark, idle runs).

use std::time::Duration;

use tokio::time::Instant;

/// The shortest window a rate is computed over.
pub(crate) const MIN_WINDOW: Duration = Duration::from_secs(5);

/// The last sample and the rate measured up to it.
#[derive(Debug, Default)]
pub(crate) struct Rate {
    last: Option<(u64, Instant)>,
    per_second: Option<f64>,
}

impl Rate {
    /// Records `value` read at `at`; returns the rate over the latest window of at least [`MIN_WINDOW`], or `None`
    /// before there is one.
    pub(crate) fn sample(&mut self, value: u64, at: Instant) -> Option<f64> {
        match self.last {
            None => self.last = Some((value, at)),
            Some((before, since)) => {
                let window = at.saturating_duration_since(since);
                if window >= MIN_WINDOW {
                    self.per_second =
                        Some(value.saturating_sub(before) as f64 / window.as_secs_f64());
                    self.last = Some((value, at));
                }
            }
        }
        self.per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_the_growth_over_the_last_window_of_at_least_five_seconds() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut rate = Rate::default();
        assert_eq!(rate.sample(1_000, start), None, "one sample has no rate");
        assert_eq!(
            rate.sample(900_000, at(500)),
            None,
            "half a second is too short a window"
        );
        assert_eq!(rate.sample(21_000, at(5_000)), Some(4_000.0));
        assert_eq!(
            rate.sample(9_000_000, at(6_000)),
            Some(4_000.0),
            "a short window keeps the last rate"
        );
        assert_eq!(rate.sample(21_000, at(10_000)), Some(0.0));
    }
}
