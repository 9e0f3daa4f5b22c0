//! How hard to yield to the foreground, from what the store measures of it: the pure maths behind the Postgres
//! `foreground_load` and `blocked_by_batch` yields, fed by samples and tested without a database.
//!
//! Two questions, two measurements:
//! * **Whether** to yield: other sessions busy, averaged over time ([`LOAD_WINDOW`]) from every reading — the
//!   checks between batches and the samples taken while batches run — past `foregroundActivePercent`; or our batch
//!   blocked at least `yieldOnBlockedSessions` foreground sessions at one of the samples taken *while it ran*.
//!   Either keeps the migration yielding for [`LINGER`] after it was last seen.
//! * **How much**: the foreground's pressure is the number of its sessions busy while our batches run (smoothed
//!   over batches). By Little's law that is its arrival rate times its latency — the share of the server it wants
//!   right when we compete with it. While yielding, the rest after a batch is `yieldPercent` of the batch's time
//!   *per busy foreground session* (at least one), and batches aim for `yieldBatchMs` divided by the same
//!   pressure: under a light load the backfill rests half as long as each batch (the default `yieldPercent` 50;
//!   1:1, with 100, was measured first and kept the same p99 at less speed), under a heavy one it runs shorter
//!   batches less often, so fewer transactions queue behind one batch and the queue drains between batches. A
//!   batch that blocked the foreground halves the next yield batch's duration again (down to 1/16), and each batch
//!   that blocked no one lets it grow back by 20 % (GitLab's optimizer step).

use std::time::Duration;

use tokio::time::Instant;

use super::{Health, Limits};

/// Weight of the newest batch's samples in the smoothed pressure.
const SMOOTHING: f64 = 0.3;
/// The time constant of the foreground's load average. Each reading counts in proportion to the time since the one
/// before, so the average means "sessions busy over about the last second" however often batches run. A weight per
/// reading did not: with 100-row batches the checks came 200 times a second, one monitoring query caught busy at
/// one of them passed the threshold alone, and the idle database yielded (the foreground benchmark's idle run with
/// `batchSize` 100: throttled by `foreground_load`, its 100 ms progress poll the only other session).
const LOAD_WINDOW: Duration = Duration::from_secs(1);
/// How long a yield lasts after the last reading that called for it. One sample counts the sessions busy at one
/// instant, so under a steady light load the average dips below the threshold every few batches; without this the
/// migration flipped back to full-length batches and their lock waits (the foreground benchmark at 100 tx/s: p99
/// 4.2x with flipping).
pub(crate) const LINGER: Duration = Duration::from_secs(10);
/// The most pressure counted: at 8 busy sessions the backfill already rests 4x its batch time (`yieldPercent` 50);
/// beyond that the foreground is past what any pacing of ours can help, and the migration still moves.
const MAX_PRESSURE: f64 = 8.0;
/// The smallest factor the yield batch's duration shrinks to after batches that blocked the foreground.
const MIN_SHRINK: f64 = 1.0 / 16.0;
/// Growth of that factor per batch that blocked no one.
const REGROW: f64 = 1.2;
/// The shortest yield batch aimed for: below it a batch is mostly its own fixed cost (its transaction's statements
/// and checkpoint), and `minBatchSize` bounds it anyway.
const MIN_BATCH_MS: f64 = 2.0;

/// What one sample of the store saw.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Sample {
    /// Other (non-bgmigrate) sessions running a statement.
    pub(crate) busy: u64,
    /// Of those, sessions waiting for a lock that a bgmigrate session holds.
    pub(crate) blocked: u64,
}

/// The samples taken while the batch in flight ran.
#[derive(Debug, Clone, Copy, Default)]
struct BatchSamples {
    count: u64,
    busy: u64,
    blocked_max: u64,
}

/// Busy other sessions averaged over time: an exponential moving average whose weights follow the time between
/// readings ([`LOAD_WINDOW`]).
#[derive(Debug, Default)]
struct LoadAverage {
    busy: f64,
    /// When the last reading was folded in (`None` before the first, which only starts the clock).
    at: Option<Instant>,
}

impl LoadAverage {
    fn add(&mut self, busy: u64, now: Instant) {
        if let Some(at) = self.at {
            let elapsed = now.saturating_duration_since(at).as_secs_f64();
            let weight = 1.0 - (-elapsed / LOAD_WINDOW.as_secs_f64()).exp();
            self.busy += weight * (busy as f64 - self.busy);
        }
        self.at = Some(now);
    }
}

/// The foreground as measured so far by one migration's stream.
#[derive(Debug)]
pub(crate) struct Pressure {
    /// Busy other sessions over about the last second, from every reading.
    load: LoadAverage,
    /// Busy other sessions while our batches ran, smoothed (`None` before the first sampled batch).
    during: Option<f64>,
    /// The batch in flight's samples.
    batch: BatchSamples,
    /// Factor on the yield batch's duration after batches that blocked the foreground.
    shrink: f64,
    /// Until when each trigger keeps the migration yielding: the foreground's load, our batch blocking it.
    load_until: Option<Instant>,
    blocked_until: Option<Instant>,
}

impl Default for Pressure {
    fn default() -> Self {
        Self {
            load: LoadAverage::default(),
            during: None,
            batch: BatchSamples::default(),
            shrink: 1.0,
            load_until: None,
            blocked_until: None,
        }
    }
}

impl Pressure {
    /// Records a sample taken while a batch ran, at `now`.
    pub(crate) fn during_batch(&mut self, sample: Sample, now: Instant) {
        self.load.add(sample.busy, now);
        self.batch.count += 1;
        self.batch.busy += sample.busy;
        self.batch.blocked_max = self.batch.blocked_max.max(sample.blocked);
    }

    /// Folds in the last batch's samples and the check before the next one (`busy` other sessions now), and says
    /// whether and how much to yield.
    pub(crate) fn before_batch(
        &mut self,
        busy: u64,
        limits: &Limits,
        now: Instant,
    ) -> Option<Health> {
        let batch = std::mem::take(&mut self.batch);
        if batch.count > 0 {
            let mean = batch.busy as f64 / batch.count as f64;
            self.during = Some(match self.during {
                Some(during) => SMOOTHING * mean + (1.0 - SMOOTHING) * during,
                None => mean,
            });
        }
        let blocking = limits.yield_on_blocked_sessions;
        if blocking > 0 && batch.blocked_max >= blocking {
            self.shrink = (self.shrink / 2.0).max(MIN_SHRINK);
            self.blocked_until = Some(now + LINGER);
        } else if batch.count > 0 {
            self.shrink = (self.shrink * REGROW).min(1.0);
        }
        self.load.add(busy, now);
        let threshold = limits.foreground_active_percent as f64 / 100.0;
        if limits.foreground_active_percent > 0 && self.load.busy > threshold {
            self.load_until = Some(now + LINGER);
        }
        let load = limits.foreground_active_percent > 0 && self.load_until.is_some_and(|t| now < t);
        let blocked = blocking > 0 && self.blocked_until.is_some_and(|t| now < t);
        if !load && !blocked {
            return None;
        }
        let pressure = self.during.unwrap_or(0.0).clamp(1.0, MAX_PRESSURE);
        let batch_ms = match limits.yield_batch_ms {
            0 => 0,
            ms => (ms as f64 * self.shrink / pressure)
                .max(MIN_BATCH_MS)
                .round() as u64,
        };
        // No live figure in the reason: a reason that changes is a new throttle event.
        let mut why = Vec::new();
        if blocked {
            why.push(format!(
                "our batches blocked foreground sessions (>= {blocking} at once, yieldOnBlockedSessions)"
            ));
        }
        if load {
            why.push(format!(
                "other sessions busy > {threshold:.2} on average (foregroundActivePercent)"
            ));
        }
        Some(Health::Yield {
            signal: if blocked {
                "blocked_by_batch"
            } else {
                "foreground_load"
            },
            reason: format!(
                "yielding to the foreground: {} within the last {} s; shorter batches and rests of {}% of each \
                 batch's time per busy foreground session (yieldPercent)",
                why.join("; "),
                LINGER.as_secs(),
                limits.yield_percent
            ),
            rest_ratio: limits.yield_percent as f64 / 100.0 * pressure,
            batch_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yield_of(health: Option<Health>) -> (&'static str, f64, u64) {
        match health {
            Some(Health::Yield {
                signal,
                rest_ratio,
                batch_ms,
                ..
            }) => (signal, rest_ratio, batch_ms),
            other => panic!("expected a yield, got {other:?}"),
        }
    }

    /// A 50 ms batch sampled every 10 ms: `busy` foreground sessions ran and `blocked` of them waited for our locks.
    async fn batch(pressure: &mut Pressure, busy: u64, blocked: u64) {
        for _ in 0..5 {
            tokio::time::advance(Duration::from_millis(10)).await;
            pressure.during_batch(Sample { busy, blocked }, Instant::now());
        }
    }

    /// `n` batches during which `busy` sessions ran, each followed by a check that saw as many: a steady load.
    async fn steady(
        pressure: &mut Pressure,
        busy: u64,
        n: usize,
        limits: &Limits,
    ) -> Option<Health> {
        let mut verdict = None;
        for _ in 0..n {
            batch(pressure, busy, 0).await;
            verdict = pressure.before_batch(busy, limits, Instant::now());
        }
        verdict
    }

    /// On an idle database nothing yields, however long it runs.
    #[tokio::test(start_paused = true)]
    async fn an_idle_database_never_yields() {
        let limits = Limits::default();
        let mut pressure = Pressure::default();
        for _ in 0..100 {
            batch(&mut pressure, 0, 0).await;
            assert_eq!(pressure.before_batch(0, &limits, Instant::now()), None);
            tokio::time::advance(Duration::from_millis(500)).await;
        }
    }

    /// The load is averaged over time, not over readings: a query caught busy at one check among 200 a second does
    /// not make an idle database yield, while a steady 0.3 busy sessions (past the default 0.2) does within a second.
    #[tokio::test(start_paused = true)]
    async fn one_busy_reading_among_many_does_not_yield_but_a_steady_load_does() {
        let limits = Limits::default();
        let mut pressure = Pressure::default();
        for n in 0..400 {
            tokio::time::advance(Duration::from_millis(5)).await;
            let busy = u64::from(n == 200);
            assert_eq!(
                pressure.before_batch(busy, &limits, Instant::now()),
                None,
                "reading {n}"
            );
        }
        let mut yielded_after = None;
        for n in 1..=300 {
            tokio::time::advance(Duration::from_millis(5)).await;
            let busy = u64::from(n % 3 == 0);
            if pressure
                .before_batch(busy, &limits, Instant::now())
                .is_some()
            {
                yielded_after = Some(n * 5);
                break;
            }
        }
        let ms = yielded_after.expect("a steady 0.33 busy sessions yields");
        assert!((200..=1_000).contains(&ms), "yielded after {ms} ms");
    }

    /// Under a light load (one busy session while we run) the yield rests `yieldPercent` (50) % of each batch's
    /// time, with batches of `yieldBatchMs`.
    #[tokio::test(start_paused = true)]
    async fn a_light_load_rests_half_of_each_batch() {
        let limits = Limits::default();
        let mut pressure = Pressure::default();
        let verdict = steady(&mut pressure, 1, 20, &limits).await;
        assert_eq!(
            yield_of(verdict),
            ("foreground_load", 0.5, limits.yield_batch_ms)
        );
    }

    /// The rest grows and the batch shrinks in proportion to the sessions busy while our batches run, up to 8.
    #[tokio::test(start_paused = true)]
    async fn the_yield_scales_with_the_sessions_busy_during_our_batches() {
        let limits = Limits {
            yield_batch_ms: 12,
            ..Limits::default()
        };
        let mut pressure = Pressure::default();
        let (_, rest, ms) = yield_of(steady(&mut pressure, 3, 20, &limits).await);
        assert_eq!(
            ((rest * 1e6).round() / 1e6, ms),
            (1.5, 4),
            "3 busy sessions: rest 3 x 50 %, 12/3 ms batches"
        );
        let (_, rest, ms) = yield_of(steady(&mut pressure, 40, 30, &limits).await);
        assert_eq!(
            (rest, ms),
            (4.0, MIN_BATCH_MS as u64),
            "capped at 8 x 50 %, never under the shortest yield batch"
        );
        let doubled = Limits {
            yield_percent: 200,
            ..Limits::default()
        };
        let (_, rest, _) = yield_of(steady(&mut pressure, 40, 1, &doubled).await);
        assert_eq!(rest, 16.0, "yieldPercent scales it");
    }

    /// A batch that blocked a foreground session yields even when the load alone would not, halves the next
    /// batch's duration, and lets it grow back by 20 % per batch that blocked no one.
    #[tokio::test(start_paused = true)]
    async fn a_batch_that_blocks_the_foreground_shrinks_the_next_one() {
        let limits = Limits {
            yield_batch_ms: 200,
            ..Limits::default()
        };
        let mut pressure = Pressure::default();
        batch(&mut pressure, 1, 1).await;
        let (signal, rest, ms) = yield_of(pressure.before_batch(0, &limits, Instant::now()));
        assert_eq!((signal, rest, ms), ("blocked_by_batch", 0.5, 100));
        batch(&mut pressure, 1, 1).await;
        assert_eq!(
            yield_of(pressure.before_batch(0, &limits, Instant::now())).2,
            50
        );
        batch(&mut pressure, 1, 0).await;
        assert_eq!(
            yield_of(pressure.before_batch(0, &limits, Instant::now())).2,
            60
        );
        let off = Limits {
            yield_on_blocked_sessions: 0,
            ..Limits::default()
        };
        let mut ignored = Pressure::default();
        batch(&mut ignored, 0, 3).await;
        assert_eq!(
            ignored.before_batch(0, &off, Instant::now()),
            None,
            "0 turns it off"
        );
    }

    /// A yield lasts 10 s after the last reading that called for it, with one reason throughout; the reason names
    /// every trigger in force.
    #[tokio::test(start_paused = true)]
    async fn a_yield_lingers_ten_seconds_after_the_last_reading_that_called_for_it() {
        let limits = Limits::default();
        let reason = |h: &Option<Health>| match h {
            Some(Health::Yield { reason, .. }) => reason.clone(),
            other => panic!("{other:?}"),
        };
        let mut pressure = Pressure::default();
        batch(&mut pressure, 0, 1).await;
        let first = pressure.before_batch(0, &limits, Instant::now());
        assert!(
            reason(&first).contains("our batches blocked foreground sessions (>= 1 at once"),
            "{first:?}"
        );
        tokio::time::advance(Duration::from_secs(9)).await;
        batch(&mut pressure, 0, 0).await;
        let later = pressure.before_batch(0, &limits, Instant::now());
        assert_eq!(reason(&later), reason(&first));
        tokio::time::advance(Duration::from_secs(2)).await;
        batch(&mut pressure, 0, 0).await;
        assert_eq!(pressure.before_batch(0, &limits, Instant::now()), None);

        let mut both = Pressure::default();
        steady(&mut both, 2, 20, &limits).await;
        batch(&mut both, 2, 1).await;
        let both = reason(&both.before_batch(2, &limits, Instant::now()));
        assert!(
            both.contains("blocked foreground sessions")
                && both.contains("other sessions busy > 0.20"),
            "{both}"
        );
    }
}
