//! Holding back on health signals: before each batch the migration's checks are read; while one says hold, the
//! engine waits — between batches, with no transaction or lock open — and looks again every `throttleCheckMs`;
//! while one says yield, it runs shorter batches and rests after each, both in proportion to the foreground's
//! pressure. While a batch runs the checks sample the store beside it ([`Throttle::during`]). The row says why
//! (`throttled`), an event marks each period, and `bgmigrate_throttled_seconds_total{migration,reason}` counts the
//! time. Advice that holds nothing back (a server setting that costs the migration) becomes an `advised` event
//! ([`Throttle::advise`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::args::Args;
use crate::control::{EventKind, Lease, LeaseStore};
use crate::migration::MigrationError;
use crate::throttle::{Health, HealthCheck, Limits, SAMPLE_EVERY};

/// How long a reading of the checks that let the migration run stands. Short batches (a yield's run a few
/// milliseconds) share one reading instead of paying three queries of the server's statistics views each — a cost
/// the foreground pays too on a small server — while a hold is still seen within this time, and a held migration
/// reads again before every batch it lets through.
const READING_STANDS_FOR: Duration = Duration::from_millis(50);

/// The throttle state of one running migration.
pub(crate) struct Throttle {
    checks: Vec<Arc<dyn HealthCheck>>,
    /// The last reading that let the migration run, and when it was taken.
    last_reading: Option<(Instant, Health)>,
    /// The reason in force (as written to the row), its signal, and since when.
    current: Option<(String, &'static str, Instant)>,
    /// Unreadable-signal messages already logged (each once).
    logged: BTreeSet<String>,
    /// Throttled time not yet counted in the (whole-second) metric.
    uncounted: Duration,
}

/// How the coming batch should go, and what to do after it ran.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AfterBatch {
    /// Rest for this many times the batch's duration.
    pub(crate) rest_ratio: f64,
    /// Whether it held back before the batch (the row may have changed meanwhile).
    pub(crate) waited: bool,
    /// While yielding: the batch duration adaptive sizing aims for instead of `targetBatchMs` (`yieldBatchMs`).
    pub(crate) batch_ms: Option<u64>,
    /// Whether the migration yields to the foreground for this batch (see [`crate::migration::Batch::yielding`]).
    pub(crate) yielding: bool,
}

impl AfterBatch {
    /// Aims adaptive batches at the shorter yielding duration, if any; an explicit `batchSize` stays as it is.
    pub(crate) fn shorten(&self, args: &mut Args) {
        if let (Some(ms), Some(sizing)) = (self.batch_ms, args.adaptive.as_mut()) {
            sizing.target_ms = sizing.target_ms.min(ms);
        }
    }
}

impl Throttle {
    pub(crate) fn new(checks: Vec<Arc<dyn HealthCheck>>) -> Self {
        Self {
            checks,
            last_reading: None,
            current: None,
            logged: BTreeSet::new(),
            uncounted: Duration::ZERO,
        }
    }

    /// The first hold among the checks, else the first yield, else fine. An unreadable signal lets go (each check
    /// documents why); its message is logged once. A reading that let the migration run stands for
    /// [`READING_STANDS_FOR`].
    async fn read(&mut self, limits: &Limits, migration: &str) -> Health {
        if let Some((at, health)) = &self.last_reading
            && at.elapsed() < READING_STANDS_FOR
        {
            return health.clone();
        }
        let verdict = self.read_now(limits, migration).await;
        self.last_reading = match verdict {
            Health::Hold { .. } => None,
            _ => Some((Instant::now(), verdict.clone())),
        };
        verdict
    }

    async fn read_now(&mut self, limits: &Limits, migration: &str) -> Health {
        let mut verdict = Health::Fine;
        for check in &self.checks {
            match check.check(limits).await {
                Ok(hold @ Health::Hold { .. }) => return hold,
                Ok(yielding @ Health::Yield { .. }) if verdict == Health::Fine => {
                    verdict = yielding
                }
                Ok(_) => {}
                Err(message) => {
                    if self.logged.insert(message.clone()) {
                        tracing::warn!(migration, "{message}; going on without this signal");
                    }
                }
            }
        }
        verdict
    }

    /// Waits while a check says hold, re-reading the args (thresholds may change) through `reread`; returns how to
    /// rest after the coming batch. Stops waiting when `stop` fires.
    pub(crate) async fn before_batch<F, Fut>(
        &mut self,
        leases: &dyn LeaseStore,
        lease: &Lease,
        args: &Args,
        stop: &CancellationToken,
        mut reread: F,
    ) -> Result<AfterBatch, MigrationError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Args, MigrationError>>,
    {
        let mut limits = args.throttle.clone();
        let mut waited = false;
        loop {
            match self.read(&limits, &lease.name).await {
                Health::Fine => {
                    self.set(leases, lease, None).await?;
                    return Ok(AfterBatch {
                        rest_ratio: 0.0,
                        waited,
                        batch_ms: None,
                        yielding: false,
                    });
                }
                Health::Yield {
                    signal,
                    reason,
                    rest_ratio,
                    batch_ms,
                } => {
                    self.set(leases, lease, Some((reason, signal))).await?;
                    return Ok(AfterBatch {
                        rest_ratio,
                        waited,
                        batch_ms: (batch_ms > 0).then_some(batch_ms),
                        yielding: true,
                    });
                }
                Health::Hold { signal, reason } => {
                    self.set(leases, lease, Some((reason, signal))).await?;
                    let wait = Duration::from_millis(limits.check_ms);
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(AfterBatch { rest_ratio: 0.0, waited: true, batch_ms: None, yielding: false }),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    self.count(&lease.name, signal, wait);
                    waited = true;
                    limits = reread().await?.throttle;
                }
            }
        }
    }

    /// Runs `batch` while every check samples the store each [`SAMPLE_EVERY`] beside it, on its own connection
    /// (what only shows while a batch runs: foreground sessions waiting for its locks). The samples go on until
    /// the batch is done, retries included, and stop with it; one that fails is logged once and skipped.
    pub(crate) async fn during<T>(
        &mut self,
        limits: &Limits,
        batch: impl std::future::Future<Output = T>,
    ) -> T {
        if self.checks.is_empty() {
            return batch.await;
        }
        let done = CancellationToken::new();
        let sampler = tokio::spawn({
            let (checks, limits, done) = (self.checks.clone(), limits.clone(), done.clone());
            async move {
                let mut failed = BTreeSet::new();
                loop {
                    tokio::select! {
                        _ = done.cancelled() => return failed,
                        _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                    }
                    for check in &checks {
                        // A sample still waiting for a connection when the batch ends is dropped, not awaited.
                        tokio::select! {
                            _ = done.cancelled() => return failed,
                            sampled = check.sample(&limits) => if let Err(message) = sampled {
                                failed.insert(message);
                            }
                        }
                    }
                }
            }
        });
        let out = batch.await;
        done.cancel();
        for message in sampler.await.unwrap_or_default() {
            if self.logged.insert(message.clone()) {
                tracing::warn!("{message}; going on without this sample");
            }
        }
        out
    }

    /// Records the checks' advice due now, if any: an `advised` event with the figures, a warning in the log and
    /// `bgmigrate_advice_total{migration,topic}` — unless another stream of the migration (another key range, another
    /// worker) gave advice within the advice's `repeat_after`, which then goes unsaid. Called before each batch;
    /// each check paces its own readings.
    pub(crate) async fn advise(
        &mut self,
        leases: &dyn LeaseStore,
        lease: &Lease,
    ) -> Result<(), MigrationError> {
        for check in &self.checks {
            let advice = match check.advice().await {
                Ok(Some(advice)) => advice,
                Ok(None) => continue,
                Err(message) => {
                    if self.logged.insert(message.clone()) {
                        tracing::warn!(migration = %lease.name, "{message}; no advice from it");
                    }
                    continue;
                }
            };
            let detail =
                json!({"topic": advice.topic, "advice": advice.message, "figures": advice.figures});
            let recorded = leases
                .record_event_once(
                    &lease.name,
                    EventKind::Advised,
                    &lease.worker_id,
                    detail,
                    advice.repeat_after,
                )
                .await?;
            if !recorded {
                tracing::debug!(migration = %lease.name, topic = advice.topic, "advice already given by another stream");
                continue;
            }
            tracing::warn!(migration = %lease.name, topic = advice.topic, "advice: {}", advice.message);
            metrics::counter!(
                "bgmigrate_advice_total",
                "migration" => lease.name.clone(),
                "topic" => advice.topic
            )
            .increment(1);
        }
        Ok(())
    }

    /// Rests after a batch that took `took` while yielding.
    pub(crate) async fn rest(
        &mut self,
        lease: &Lease,
        after: AfterBatch,
        took: Duration,
        stop: &CancellationToken,
    ) {
        if after.rest_ratio <= 0.0 {
            return;
        }
        let rest = took.mul_f64(after.rest_ratio);
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(rest) => {}
        }
        if let Some(signal) = self.current.as_ref().map(|(_, signal, _)| *signal) {
            self.count(&lease.name, signal, rest);
        }
    }

    /// Adds `waited` to `bgmigrate_throttled_seconds_total` in whole seconds, carrying the rest.
    fn count(&mut self, migration: &str, signal: &'static str, waited: Duration) {
        self.uncounted += waited;
        let seconds = self.uncounted.as_secs();
        if seconds > 0 {
            self.uncounted -= Duration::from_secs(seconds);
            metrics::counter!(
                "bgmigrate_throttled_seconds_total",
                "migration" => migration.to_owned(),
                "reason" => signal
            )
            .increment(seconds);
        }
    }

    /// Writes a change of reason to the row (with an event); nothing when it did not change.
    async fn set(
        &mut self,
        leases: &dyn LeaseStore,
        lease: &Lease,
        next: Option<(String, &'static str)>,
    ) -> Result<(), MigrationError> {
        let unchanged = match (&self.current, &next) {
            (None, None) => true,
            (Some((reason, ..)), Some((next_reason, _))) => reason == next_reason,
            _ => false,
        };
        if unchanged {
            return Ok(());
        }
        match &next {
            Some((reason, signal)) => {
                tracing::info!(migration = %lease.name, signal, "holding back: {reason}");
                let detail = json!({"signal": signal, "reason": reason});
                leases.set_throttled(lease, Some(reason), detail).await?;
            }
            None => {
                let seconds = self
                    .current
                    .as_ref()
                    .map(|(_, _, since)| since.elapsed().as_secs_f64());
                tracing::info!(migration = %lease.name, seconds, "no longer holding back");
                let signal = self.current.as_ref().map(|(_, signal, _)| *signal);
                let detail = json!({"signal": signal, "seconds": seconds});
                leases.set_throttled(lease, None, detail).await?;
            }
        }
        self.current = next.map(|(reason, signal)| {
            let since = match &self.current {
                Some((_, _, since)) => *since,
                None => Instant::now(),
            };
            (reason, signal, since)
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// Counts its samples; a sample fails after the third.
    #[derive(Default)]
    struct Sampled(AtomicU64);

    #[async_trait::async_trait]
    impl HealthCheck for Sampled {
        async fn check(&self, _limits: &Limits) -> Result<Health, String> {
            Ok(Health::Fine)
        }
        async fn sample(&self, _limits: &Limits) -> Result<(), String> {
            match self.0.fetch_add(1, Ordering::SeqCst) {
                0..3 => Ok(()),
                _ => Err("unreadable".into()),
            }
        }
    }

    /// A batch is sampled every 10 ms while it runs and not after it; a failing sample is logged once and the
    /// batch's outcome is untouched.
    #[tokio::test(start_paused = true)]
    async fn a_running_batch_is_sampled_every_ten_milliseconds_and_not_after() {
        let check = Arc::new(Sampled::default());
        let mut throttle = Throttle::new(vec![check.clone()]);
        let out = throttle
            .during(&Limits::default(), async {
                tokio::time::sleep(Duration::from_millis(55)).await;
                "committed"
            })
            .await;
        assert_eq!(out, "committed");
        assert_eq!(
            check.0.load(Ordering::SeqCst),
            5,
            "at 10, 20, 30, 40 and 50 ms"
        );
        assert_eq!(throttle.logged.len(), 1, "{:?}", throttle.logged);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            check.0.load(Ordering::SeqCst),
            5,
            "nothing samples between batches"
        );
    }

    /// Counts its readings; says hold while `hold` is set.
    #[derive(Default)]
    struct Counted {
        reads: AtomicU64,
        hold: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl HealthCheck for Counted {
        async fn check(&self, _limits: &Limits) -> Result<Health, String> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            Ok(match self.hold.load(Ordering::SeqCst) {
                true => Health::Hold {
                    signal: "test",
                    reason: "held".into(),
                },
                false => Health::Fine,
            })
        }
    }

    /// Batches that follow each other within 50 ms share one reading of the checks; a hold is read again before
    /// every batch, and seen within those 50 ms.
    #[tokio::test(start_paused = true)]
    async fn short_batches_share_one_reading_and_a_hold_is_read_again() {
        use crate::engine::fake_leases::{FakeLeases, Renewal};
        let check = Arc::new(Counted::default());
        let mut throttle = Throttle::new(vec![check.clone()]);
        let store = FakeLeases::new(Renewal::Holds);
        let lease = FakeLeases::claim().lease;
        let args = Args::parse(&json!({"throttleCheckMs": 100})).unwrap();
        let stop = CancellationToken::new();
        let reread = || async { Ok(Args::parse(&json!({"throttleCheckMs": 100})).unwrap()) };
        for _ in 0..10 {
            throttle
                .before_batch(&*store, &lease, &args, &stop, reread)
                .await
                .unwrap();
            tokio::time::advance(Duration::from_millis(4)).await;
        }
        assert_eq!(
            check.reads.load(Ordering::SeqCst),
            1,
            "ten 4 ms batches, one reading"
        );
        tokio::time::advance(Duration::from_millis(20)).await;
        check.hold.store(true, Ordering::SeqCst);
        let released = {
            let check = check.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(250)).await;
                check.hold.store(false, Ordering::SeqCst);
            })
        };
        let after = throttle
            .before_batch(&*store, &lease, &args, &stop, reread)
            .await
            .unwrap();
        released.await.unwrap();
        assert!(
            after.waited,
            "the hold was seen 60 ms after the first reading"
        );
        assert_eq!(
            check.reads.load(Ordering::SeqCst),
            5,
            "read again every 100 ms while held (at 0, 100, 200 ms) and once it let go (300 ms)"
        );
    }

    /// Yielding aims adaptive batches at `yieldBatchMs`; an explicit `batchSize`, or no yield, changes nothing.
    #[test]
    fn a_yield_shortens_adaptive_batches_only() {
        let yielding = AfterBatch {
            rest_ratio: 1.0,
            waited: false,
            batch_ms: Some(50),
            yielding: true,
        };
        let mut adaptive = Args::parse(&json!({})).unwrap();
        yielding.shorten(&mut adaptive);
        assert_eq!(adaptive.adaptive.unwrap().target_ms, 50);
        let mut fixed = Args::parse(&json!({"batchSize": 2500})).unwrap();
        yielding.shorten(&mut fixed);
        assert_eq!((fixed.batch_size, fixed.adaptive), (2500, None));
        let mut short = Args::parse(&json!({"targetBatchMs": 20})).unwrap();
        yielding.shorten(&mut short);
        assert_eq!(
            short.adaptive.unwrap().target_ms,
            20,
            "never longer than targetBatchMs"
        );
        let fine = AfterBatch {
            batch_ms: None,
            ..yielding
        };
        let mut untouched = Args::parse(&json!({})).unwrap();
        fine.shorten(&mut untouched);
        assert_eq!(untouched.adaptive.unwrap().target_ms, 500);
    }
}
