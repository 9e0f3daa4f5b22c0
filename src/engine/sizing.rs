//! Adaptive batch size: when `args` set no `batchSize`, each batch is sized toward `targetBatchMs` from the
//! measured cost of the last one — growing at most 2× a batch (a small batch's fixed overhead would otherwise
//! overshoot), shrinking at once after a slow batch (a slow batch holds locks and delays the foreground), within
//! `minBatchSize`..`maxBatchSize`. From any start in that range it is within 25 % of the target in 10 batches
//! (2¹⁰ covers a 1,000× range). Only full batches teach it: one cut short by the end of the data, by
//! `maxBatchBytes` or by a migration that sizes its own batches leaves the size alone. An explicit `batchSize` is
//! used exactly, as the original system's troubleshooting expects.
//!
//! Changes are announced as events: an operator's at once, the engine's at most once per [`ANNOUNCE_EVERY`].

use std::time::Duration;

use tokio::time::Instant;

use crate::args::{AdaptiveSizing, Args};

/// A change of size worth an event: at least this factor away from the last size announced.
const NOTEWORTHY: f64 = 1.25;
/// The shortest time between two announcements of adaptive changes; each carries the size then. Batches of a few
/// milliseconds (while yielding to the foreground) swing past [`NOTEWORTHY`] every few batches: announced each
/// time, that was 17 events a second on the foreground benchmark (2,361 in a 138-second run), each its own
/// committed transaction and `NOTIFY`, burying the history an operator reads. The batch chart still shows every
/// batch's size.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(10);

/// The batch size in force and what was last announced of it.
#[derive(Debug)]
pub(crate) struct BatchSizer {
    adaptive_size: u64,
    announced: Option<u64>,
    /// When an adaptive change was last announced.
    adapted_at: Option<Instant>,
}

/// A change of the batch size to record as an event.
#[derive(Debug, PartialEq)]
pub(crate) struct SizeChange {
    pub(crate) before: Option<u64>,
    pub(crate) after: u64,
    /// Why, when the engine chose it (`None`: an operator set `batchSize`).
    pub(crate) reason: Option<String>,
}

impl BatchSizer {
    /// Starts from the size of the migration's last batch, if any, else from the args' default.
    pub(crate) fn new(last_batch_size: Option<u64>, args: &Args) -> Self {
        Self {
            adaptive_size: last_batch_size.unwrap_or(args.batch_size),
            announced: last_batch_size,
            adapted_at: None,
        }
    }

    /// The size of the next batch under `args`, and the change to announce, if any.
    pub(crate) fn next(&mut self, args: &Args) -> (u64, Option<SizeChange>) {
        self.next_at(args, Instant::now())
    }

    fn next_at(&mut self, args: &Args, now: Instant) -> (u64, Option<SizeChange>) {
        let (size, reason) = match args.adaptive {
            None => (args.batch_size, None),
            Some(sizing) => (
                self.adaptive_size.clamp(sizing.min, sizing.max),
                Some(format!("adapted toward targetBatchMs {}", sizing.target_ms)),
            ),
        };
        let noteworthy = match (self.announced, args.adaptive) {
            (None, _) => false,
            (Some(before), None) => before != size,
            (Some(before), Some(_)) => {
                let ratio = size.max(before) as f64 / size.min(before).max(1) as f64;
                ratio >= NOTEWORTHY
                    && self
                        .adapted_at
                        .is_none_or(|at| now.duration_since(at) >= ANNOUNCE_EVERY)
            }
        };
        if noteworthy && args.adaptive.is_some() {
            self.adapted_at = Some(now);
        }
        let change = noteworthy.then_some(SizeChange {
            before: self.announced,
            after: size,
            reason,
        });
        if self.announced.is_none() || noteworthy {
            self.announced = Some(size);
        }
        self.adaptive_size = size;
        (size, change)
    }

    /// Learns from a batch of `rows` rows that took `took` (read to the microsecond: a batch that yields to the
    /// foreground aims for a few milliseconds, where whole milliseconds would misread it by up to half).
    pub(crate) fn observe(&mut self, sizing: Option<AdaptiveSizing>, rows: u64, took: Duration) {
        let Some(sizing) = sizing else {
            return;
        };
        // A batch cut short (the end of the data, maxBatchBytes, a migration that sizes its own batches) says
        // nothing about how long a full one takes.
        if rows == 0 || rows < self.adaptive_size - self.adaptive_size / 10 {
            return;
        }
        let took_ms = (took.as_secs_f64() * 1000.0).max(0.001);
        let ideal = (rows as f64 * sizing.target_ms as f64 / took_ms) as u64;
        let slow = took_ms > sizing.target_ms as f64 * 1.25;
        let next = if slow {
            ideal
        } else {
            ideal.min(self.adaptive_size.saturating_mul(2))
        };
        self.adaptive_size = next.clamp(sizing.min, sizing.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A store where a batch costs 5 ms plus 0.05 ms a row: 500 ms at 9,900 rows.
    fn took_ms(rows: u64) -> u64 {
        5 + rows / 20
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn run(start: u64, batches: usize) -> Vec<u64> {
        let args = Args::parse(&json!({"minBatchSize": 100, "maxBatchSize": 500000})).unwrap();
        let mut sizer = BatchSizer::new(Some(start), &args);
        (0..batches)
            .map(|_| {
                let (size, _) = sizer.next(&args);
                sizer.observe(args.adaptive, size, ms(took_ms(size)));
                size
            })
            .collect()
    }

    #[test]
    fn from_the_smallest_size_it_reaches_the_target_within_ten_batches() {
        let sizes = run(100, 11);
        let last = took_ms(sizes[10]) as f64;
        assert!((400.0..=625.0).contains(&last), "{sizes:?}: {last} ms");
    }

    #[test]
    fn from_the_largest_size_it_shrinks_at_once() {
        let sizes = run(500_000, 3);
        assert_eq!(sizes[0], 500_000);
        assert!(took_ms(sizes[1]) <= 625, "{sizes:?}");
    }

    #[test]
    fn a_slow_batch_shrinks_the_next_one_at_once() {
        let args = Args::parse(&json!({})).unwrap();
        let mut sizer = BatchSizer::new(Some(10_000), &args);
        sizer.next(&args);
        sizer.observe(args.adaptive, 10_000, ms(5_000));
        assert_eq!(sizer.next(&args).0, 1_000);
    }

    /// At the 2–4 ms of a batch that yields to the foreground, the fraction of a millisecond counts: 400 rows in
    /// 2.9 ms against a 2 ms target is 45 % over it (whole milliseconds would read 2 ms, on target), and 400 rows
    /// in 1.9 ms is short of it (whole milliseconds would read 1 ms and double the size).
    #[test]
    fn batches_of_a_few_milliseconds_are_read_to_the_microsecond() {
        let mut args = Args::parse(&json!({"minBatchSize": 10})).unwrap();
        // As a yield to the foreground shortens it (`yieldBatchMs` over the pressure).
        args.adaptive.as_mut().unwrap().target_ms = 2;
        let mut sizer = BatchSizer::new(Some(400), &args);
        sizer.next(&args);
        sizer.observe(args.adaptive, 400, Duration::from_micros(2_900));
        assert_eq!(sizer.next(&args).0, 275, "shrunk at once: 400 x 2 / 2.9");
        sizer.observe(args.adaptive, 275, Duration::from_micros(1_900));
        assert_eq!(
            sizer.next(&args).0,
            289,
            "grown by the shortfall, not doubled"
        );
    }

    #[test]
    fn a_batch_cut_short_leaves_the_size_alone() {
        let args = Args::parse(&json!({})).unwrap();
        let mut sizer = BatchSizer::new(Some(10_000), &args);
        sizer.next(&args);
        sizer.observe(args.adaptive, 3, ms(1));
        assert_eq!(sizer.next(&args), (10_000, None));
    }

    #[test]
    fn adaptive_changes_are_announced_at_most_once_per_interval_with_the_size_then() {
        let args = Args::parse(&json!({})).unwrap();
        let mut sizer = BatchSizer::new(Some(1_000), &args);
        let start = Instant::now();
        let at = |sizer: &mut BatchSizer, size: u64, secs: u64| {
            sizer.adaptive_size = size;
            sizer
                .next_at(&args, start + Duration::from_secs(secs))
                .1
                .map(|c| (c.before, c.after))
        };
        assert_eq!(at(&mut sizer, 2_000, 0), Some((Some(1_000), 2_000)));
        assert_eq!(at(&mut sizer, 500, 1), None, "within the interval");
        assert_eq!(at(&mut sizer, 4_000, 9), None);
        assert_eq!(
            at(&mut sizer, 3_000, 10),
            Some((Some(2_000), 3_000)),
            "the size then, against the last one announced"
        );
        assert_eq!(at(&mut sizer, 3_100, 30), None, "not noteworthy");
        // An operator's size is announced at once, whenever the last adaptive change was.
        let explicit = Args::parse(&json!({"batchSize": 700})).unwrap();
        let change = sizer.next_at(&explicit, start + Duration::from_secs(31)).1;
        assert_eq!(
            change.map(|c| (c.before, c.after)),
            Some((Some(3_000), 700))
        );
    }

    #[test]
    fn an_explicit_batch_size_is_used_exactly_and_announced_when_it_changes() {
        let args = Args::parse(&json!({"batchSize": 2500})).unwrap();
        let mut sizer = BatchSizer::new(Some(10_000), &args);
        let (size, change) = sizer.next(&args);
        assert_eq!(size, 2500);
        assert_eq!(change.unwrap().before, Some(10_000));
        sizer.observe(args.adaptive, 2500, ms(10_000));
        assert_eq!(sizer.next(&args), (2500, None));
    }
}
