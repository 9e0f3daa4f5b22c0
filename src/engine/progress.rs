//! Progress of one running migration: smoothed rate, ETA, and the periodic log line.

use std::time::{Duration, Instant};

use serde::Serialize;

/// Weight of the newest batch in the smoothed rate.
const RATE_SMOOTHING: f64 = 0.3;

/// A progress snapshot, broadcast to observers (terminal bars, later the web UI).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProgressUpdate {
    /// Migration name.
    pub name: String,
    /// Rows walked so far.
    pub rows_done: u64,
    /// Estimated rows in all.
    pub rows_total: Option<u64>,
    /// Smoothed rows per second.
    pub rows_per_sec: f64,
    /// Batch size in force.
    pub batch_size: u64,
    /// True once the migration has finished.
    pub finished: bool,
}

impl ProgressUpdate {
    /// Seconds left at the current rate, if known. Batches that walk no rows (a heap-order backfill listing its
    /// keys) decay the smoothed rate toward zero, so the quotient can exceed what a `Duration` holds: unknown then.
    pub fn eta(&self) -> Option<Duration> {
        let total = self.rows_total?;
        if self.rows_per_sec <= 0.0 {
            return None;
        }
        Duration::try_from_secs_f64(total.saturating_sub(self.rows_done) as f64 / self.rows_per_sec)
            .ok()
    }

    /// The log line: `migration=... rows=.../... pct=... rate=.../s eta=... batch=...`.
    pub fn log_line(&self) -> String {
        let total = self.rows_total.map_or("?".to_owned(), |t| t.to_string());
        let pct = self
            .rows_total
            .filter(|t| *t > 0)
            .map_or("?".to_owned(), |t| {
                format!(
                    "{:.1}",
                    (self.rows_done as f64 * 100.0 / t as f64).min(100.0)
                )
            });
        let eta = self.eta().map_or("?".to_owned(), format_duration);
        format!(
            "migration={} rows={}/{} pct={} rate={:.0}/s eta={} batch={}",
            self.name, self.rows_done, total, pct, self.rows_per_sec, eta, self.batch_size
        )
    }
}

/// `1h02m`, `3m05s`, `42s`.
pub fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

/// Tracks one migration's progress between batches.
pub struct ProgressTracker {
    update: ProgressUpdate,
    last_batch_end: Instant,
    last_log: Option<Instant>,
    log_every: Duration,
}

impl ProgressTracker {
    /// Starts tracking from the row's stored progress.
    pub fn new(name: &str, rows_done: u64, rows_total: Option<u64>, log_every: Duration) -> Self {
        Self {
            update: ProgressUpdate {
                name: name.to_owned(),
                rows_done,
                rows_total,
                rows_per_sec: 0.0,
                batch_size: 0,
                finished: false,
            },
            last_batch_end: Instant::now(),
            last_log: None,
            log_every,
        }
    }

    /// The rate the tracker would have after a batch of `rows` ending now (wall time since the previous batch, so
    /// throttling sleeps count).
    pub fn rate_after(&self, rows: u64) -> f64 {
        let elapsed = self.last_batch_end.elapsed().as_secs_f64().max(1e-6);
        let sample = rows as f64 / elapsed;
        if self.update.rows_per_sec == 0.0 {
            sample
        } else {
            RATE_SMOOTHING * sample + (1.0 - RATE_SMOOTHING) * self.update.rows_per_sec
        }
    }

    /// Records a committed batch.
    pub fn record(&mut self, rows: u64, batch_size: u64, rate: f64) {
        self.update.rows_done += rows;
        self.update.batch_size = batch_size;
        self.update.rows_per_sec = rate;
        self.last_batch_end = Instant::now();
    }

    /// Marks the migration finished (the total becomes exact).
    pub fn finish(&mut self) {
        self.update.finished = true;
        self.update.rows_total = Some(self.update.rows_done);
    }

    /// Sets the estimated total.
    pub fn set_total(&mut self, rows_total: Option<u64>) {
        self.update.rows_total = rows_total;
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> &ProgressUpdate {
        &self.update
    }

    /// The log line, if the last one is older than the logging interval.
    pub fn due_log_line(&mut self) -> Option<String> {
        let due = self
            .last_log
            .is_none_or(|at| at.elapsed() >= self.log_every);
        due.then(|| {
            self.last_log = Some(Instant::now());
            self.update.log_line()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_line_names_rows_percent_rate_eta_and_batch() {
        let update = ProgressUpdate {
            name: "m".into(),
            rows_done: 250,
            rows_total: Some(1000),
            rows_per_sec: 50.0,
            batch_size: 100,
            finished: false,
        };
        assert_eq!(
            update.log_line(),
            "migration=m rows=250/1000 pct=25.0 rate=50/s eta=15s batch=100"
        );
    }

    /// A rate decayed toward zero by batches that walk no rows: the ETA is unknown, not a panic (the heap-order
    /// backfill's listing batches crashed the runner this way).
    #[test]
    fn a_rate_near_zero_gives_no_eta() {
        let update = ProgressUpdate {
            name: "m".into(),
            rows_done: 0,
            rows_total: Some(3_000_000),
            rows_per_sec: 1e-300,
            batch_size: 100,
            finished: false,
        };
        assert_eq!(update.eta(), None);
        assert!(update.log_line().contains("eta=?"));
    }

    #[test]
    fn unknown_totals_print_question_marks() {
        let tracker = ProgressTracker::new("m", 0, None, Duration::from_secs(5));
        assert_eq!(
            tracker.snapshot().log_line(),
            "migration=m rows=0/? pct=? rate=0/s eta=? batch=0"
        );
    }

    #[test]
    fn durations_read_like_a_clock() {
        assert_eq!(format_duration(Duration::from_secs(42)), "42s");
        assert_eq!(format_duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(format_duration(Duration::from_secs(3720)), "1h02m");
    }
}
