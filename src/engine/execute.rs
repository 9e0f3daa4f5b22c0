//! The batch loop for one claimed migration (or one key range of it): read args, run a batch, commit it with its
//! checkpoint, report progress, throttle, repeat; stop on finish, failure, lease loss or shutdown.

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::backoff::with_retries;
use super::progress::ProgressTracker;
use super::sizing::BatchSizer;
use super::throttling::Throttle;
use super::{EngineContext, heartbeat};
use crate::args::Args;
use crate::control::{Claim, ControlError, EventKind, Lease, MigrationRecord};
use crate::migration::{Batch, BatchOutcome, Checkpoint, Checkpointer, Migration, MigrationError};

/// How a worker's hold on one migration ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Every batch is done.
    Finished,
    /// Failed with this reason.
    Failed(String),
    /// Given back on shutdown; another worker resumes it from the checkpoint.
    Released,
    /// The lease was lost (takeover, pause, cancel); nothing more was written.
    LeaseLost,
}

/// Runs `claim` until it ends.
pub(crate) async fn run_claimed(
    ctx: &EngineContext,
    claim: Claim,
    shutdown: &CancellationToken,
) -> Ending {
    let lease = claim.lease.clone();
    hold(ctx, &lease, shutdown, |stop| async move {
        batch_loop(ctx, &claim, &stop).await
    })
    .await
}

/// Runs `body` while holding `lease`: a heartbeat renews it, and `body`'s stop token fires when the lease is lost
/// or on shutdown; then the ending is written.
pub(super) async fn hold<F, Fut>(
    ctx: &EngineContext,
    lease: &Lease,
    shutdown: &CancellationToken,
    body: F,
) -> Ending
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<Ending, MigrationError>>,
{
    let beat = heartbeat::start(
        ctx.leases.clone(),
        lease.clone(),
        ctx.config.lease_ttl,
        ctx.config.heartbeat_interval,
    );
    // Either signal stops the loop between batches; a batch in flight still commits or rolls back as a whole.
    let stop = CancellationToken::new();
    let stop_on_signal = {
        let (stop, lost, shutdown) = (stop.clone(), beat.lost.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! { _ = lost.cancelled() => {}, _ = shutdown.cancelled() => {} }
            stop.cancel();
        })
    };
    let result = body(stop).await;
    stop_on_signal.abort();
    let ending = match result {
        Ok(ending) => ending,
        Err(MigrationError::LeaseLost) => Ending::LeaseLost,
        Err(_) if shutdown.is_cancelled() && !beat.lost.is_cancelled() => Ending::Released,
        Err(err) => Ending::Failed(err.to_string()),
    };
    let ending = match ending {
        Ending::Released if beat.lost.is_cancelled() => Ending::LeaseLost,
        other => other,
    };
    record_ending(ctx, lease, ending).await
}

/// Writes the outcome (finished / failed / released); a lost lease writes nothing. A key range's last checkpoint
/// already marked it done, and a range whose lease was lost is given back in case only its split count moved.
async fn record_ending(ctx: &EngineContext, lease: &Lease, ending: Ending) -> Ending {
    let written = match (&ending, &lease.range) {
        (Ending::Finished, None) => ctx.leases.finish(lease).await,
        (Ending::Finished, Some(_)) => Ok(()),
        (Ending::Failed(reason), _) => ctx.leases.fail(lease, reason).await,
        (Ending::Released, _) | (Ending::LeaseLost, Some(_)) => ctx.leases.release(lease).await,
        (Ending::LeaseLost, None) => Ok(()),
    };
    let what = match &lease.range {
        Some(range) => format!("range {}", range.no),
        None => "migration".to_owned(),
    };
    match (written, &ending) {
        (Err(ControlError::LeaseLost(_)), _) => {
            tracing::warn!(migration = %lease.name, what, "lease lost before the outcome could be written");
            Ending::LeaseLost
        }
        (Err(err), _) => {
            tracing::error!(migration = %lease.name, what, error = %err, "could not record the outcome; the lease will expire");
            ending
        }
        (Ok(()), Ending::Finished) => {
            tracing::info!(migration = %lease.name, what, "finished");
            ending
        }
        (Ok(()), Ending::Failed(reason)) => {
            tracing::error!(migration = %lease.name, what, reason = %reason, "failed");
            ending
        }
        (Ok(()), Ending::Released) => {
            tracing::info!(migration = %lease.name, what, "released; the next worker resumes from the checkpoint");
            ending
        }
        (Ok(()), Ending::LeaseLost) => {
            tracing::warn!(migration = %lease.name, what, "stopped: the lease was taken over, the range split, the migration paused or cancelled, or its checkpoint is not the one the batch started from (a database crash lost the batches before it: it resumes from the checkpoint once the lease expires)");
            ending
        }
    }
}

/// `record`'s args, validated with the migration's defaults; unreadable args fail the migration with the fix.
pub(super) fn parse_args(
    migration: &dyn Migration,
    record: &MigrationRecord,
) -> Result<Args, MigrationError> {
    if let Some(reason) = &record.unreadable {
        return Err(MigrationError::Permanent(format!(
            "the control row cannot be read: {reason}"
        )));
    }
    Args::parse_for(
        &record.args,
        migration.default_batch_size(),
        migration.default_target_batch_ms(),
    )
    .map_err(|err| {
        MigrationError::Permanent(format!(
            "invalid args: {err}; fix them with `bgmigrate set-args {} '{{...}}'`, then `bgmigrate retry {}`",
            record.name, record.name
        ))
    })
}

/// A log callback for retried steps of migration `name`.
pub(super) fn retry_log(
    name: &str,
    what: &'static str,
) -> impl Fn(u32, &MigrationError, std::time::Duration) + use<> {
    let name = name.to_owned();
    move |attempt: u32, err: &MigrationError, wait: std::time::Duration| {
        tracing::warn!(migration = %name, attempt, error = %err, wait_ms = wait.as_millis() as u64, "{what} failed; retrying");
    }
}

/// Builds and validates the claimed migration (validation errors fail it with their message).
pub(super) async fn build_validated(
    ctx: &EngineContext,
    record: &MigrationRecord,
    stop: &CancellationToken,
) -> Result<std::sync::Arc<dyn Migration>, MigrationError> {
    let migration = ctx
        .registry
        .build(&record.script, &record.definition, &ctx.stores)
        .map_err(MigrationError::Invalid)?;
    with_retries(
        &ctx.config.retry,
        stop,
        retry_log(&record.name, "validation"),
        || migration.validate(),
    )
    .await
    .map_err(|err| match err {
        MigrationError::Invalid(reason) | MigrationError::Permanent(reason) => {
            MigrationError::Invalid(format!("validation failed: {reason}"))
        }
        other => other,
    })?;
    Ok(migration)
}

async fn batch_loop(
    ctx: &EngineContext,
    claim: &Claim,
    stop: &CancellationToken,
) -> Result<Ending, MigrationError> {
    let lease = &claim.lease;
    let record = &claim.record;
    let migration = match build_validated(ctx, record, stop).await {
        Ok(migration) => migration,
        Err(MigrationError::Invalid(reason)) => return Ok(Ending::Failed(reason)),
        Err(other) => return Err(other),
    };
    let mut rows_total = record.rows_total.map(|t| t.max(0) as u64);
    if record.rows_total.is_none() {
        let estimate = with_retries(
            &ctx.config.retry,
            stop,
            retry_log(&lease.name, "estimate"),
            || migration.estimate(),
        )
        .await?;
        ctx.leases.set_rows_total(lease, estimate).await?;
        rows_total = estimate;
    }
    let args = parse_args(&*migration, record)?;
    let ranges = ctx.leases.ranges_of(&lease.migration_id).await?;
    if args.parallelism == 1 && ranges.is_empty() {
        let tracker = ProgressTracker::new(
            &lease.name,
            record.rows_done.max(0) as u64,
            rows_total,
            ctx.config.progress_log_interval,
        );
        let initial_size = record.batch_size.map(|b| b.max(1) as u64);
        let ending = stream(ctx, &*migration, lease.clone(), initial_size, tracker, stop).await?;
        // A stream gives its migration back unasked only when `parallelism` was raised: it goes on in key ranges
        // from its checkpoint.
        if ending != Ending::Released || stop.is_cancelled() {
            return Ok(ending);
        }
    }
    let record = ctx.leases.current(lease).await?;
    let start = super::ranges::Start {
        parallelism: parse_args(&*migration, &record)?.parallelism,
        record: &record,
        rows_total,
        planned: !ranges.is_empty(),
    };
    super::ranges::coordinate(ctx, lease, &*migration, start, stop).await
}

/// Where the next batch starts, read again before it: the checkpoint, where the range ends (key ranges only), the
/// args, and whether to stop this stream: a key range held beyond what `parallelism` now allows is given back, and
/// a migration run as one stream goes on in key ranges once `parallelism` is raised above 1.
struct Position {
    state: Value,
    upper: Option<Value>,
    args: Args,
    give_back: bool,
}

/// Reads the position `lease` holds; a key range's lease learns the range's current split count.
async fn position(
    ctx: &EngineContext,
    migration: &dyn Migration,
    lease: &mut Lease,
    stop: &CancellationToken,
) -> Result<Position, MigrationError> {
    let current = |lease: Lease| async move {
        Ok(match &lease.range {
            None => (ctx.leases.current(&lease).await?, None),
            Some(_) => {
                let held = ctx.leases.current_range(&lease).await?;
                (held.record, Some((held.range, held.held_before)))
            }
        })
    };
    let (record, range) = with_retries(
        &ctx.config.retry,
        stop,
        retry_log(&lease.name, "re-reading the migration"),
        || current(lease.clone()),
    )
    .await?;
    let args = parse_args(migration, &record)?;
    Ok(match (range, lease.range.as_mut()) {
        (Some((range, held_before)), Some(hold)) => {
            hold.splits = range.splits;
            Position {
                state: range.state,
                upper: range.upper,
                give_back: held_before >= args.parallelism,
                args,
            }
        }
        _ => Position {
            state: record.state,
            upper: None,
            give_back: args.parallelism > 1,
            args,
        },
    })
}

/// The batch loop of one stream: the whole migration, or one key range of it under a range lease.
pub(super) async fn stream(
    ctx: &EngineContext,
    migration: &dyn Migration,
    mut lease: Lease,
    initial_size: Option<u64>,
    mut tracker: ProgressTracker,
    stop: &CancellationToken,
) -> Result<Ending, MigrationError> {
    let policy = &ctx.config.retry;
    let first = position(ctx, migration, &mut lease, stop).await?;
    let mut sizer = BatchSizer::new(initial_size, &first.args);
    // The first batch starts from the position just read; every later one reads it again.
    let mut first = Some(first);
    let mut throttle = Throttle::new(migration.health_checks());
    loop {
        if stop.is_cancelled() {
            return Ok(Ending::Released);
        }
        let mut at = match first.take() {
            Some(at) => at,
            None => position(ctx, migration, &mut lease, stop).await?,
        };
        if at.give_back {
            return Ok(Ending::Released);
        }
        let args_lease = lease.clone();
        let after = throttle
            .before_batch(&*ctx.leases, &lease, &at.args, stop, || async {
                let mut lease = args_lease.clone();
                Ok(position(ctx, migration, &mut lease, stop).await?.args)
            })
            .await?;
        if stop.is_cancelled() {
            return Ok(Ending::Released);
        }
        throttle.advise(&*ctx.leases, &lease).await?;
        // After a wait the row is read again: an operator may have changed it meanwhile.
        if after.waited {
            at = position(ctx, migration, &mut lease, stop).await?;
        }
        let mut args = at.args;
        after.shorten(&mut args);
        let (size, change) = sizer.next(&args);
        args.batch_size = size;
        if let Some(change) = change {
            let mut detail = json!({"before": change.before, "after": change.after});
            if let Some(reason) = &change.reason {
                detail["reason"] = json!(reason);
            }
            if let Some(range) = &lease.range {
                detail["range"] = json!(range.no);
            }
            ctx.leases
                .record_event(
                    &lease.name,
                    EventKind::BatchSizeChanged,
                    &lease.worker_id,
                    detail,
                )
                .await?;
            tracing::info!(migration = %lease.name, batch_size = size, reason = change.reason.as_deref().unwrap_or("batchSize set in args"), "batch size changed");
        }

        let slice = Slice {
            state: &at.state,
            upper: at.upper.as_ref(),
            args: &args,
            yielding: after.yielding,
        };
        let (outcome, checkpoint, sizing_rows) = throttle
            .during(
                &args.throttle,
                run_one_batch(ctx, migration, &lease, slice, &tracker, stop),
            )
            .await?;
        let commit = match checkpoint {
            Checkpoint::Written(commit) => commit,
            Checkpoint::Pending(commit) => {
                with_retries(
                    policy,
                    stop,
                    retry_log(&lease.name, "checkpoint"),
                    || async { Ok(ctx.leases.write_checkpoint(&lease, &commit).await?) },
                )
                .await?;
                commit
            }
        };
        let name = lease.name.clone();
        metrics::counter!("bgmigrate_rows_processed_total", "migration" => name.clone())
            .increment(outcome.rows);
        metrics::histogram!("bgmigrate_batch_duration_seconds", "migration" => name.clone())
            .record(commit.duration.as_secs_f64());
        metrics::gauge!("bgmigrate_batch_size", "migration" => name).set(args.batch_size as f64);
        tracker.record(outcome.rows, args.batch_size, commit.rows_per_sec);
        sizer.observe(args.adaptive, sizing_rows, commit.duration);
        if outcome.done {
            tracker.finish();
        }
        // Progress bars follow whole migrations; a key range's progress is in its row.
        if lease.range.is_none() {
            let _ = ctx.progress.send(tracker.snapshot().clone());
        }
        if let Some(line) = tracker.due_log_line() {
            tracing::info!("{line}");
        }
        if outcome.done {
            return Ok(Ending::Finished);
        }
        throttle.rest(&lease, after, commit.duration, stop).await;
        if args.sleep_ms > 0 {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(std::time::Duration::from_millis(args.sleep_ms)) => {}
            }
        }
    }
}

/// What one batch walks: from `state`, up to `upper` (key ranges), within `args`.
#[derive(Clone, Copy)]
struct Slice<'a> {
    state: &'a Value,
    upper: Option<&'a Value>,
    args: &'a Args,
    /// Whether the engine yields to the foreground for this batch.
    yielding: bool,
}

/// One batch with transient retries. Returns the outcome, its checkpoint (written or still to be written) and the
/// rows adaptive sizing learns from.
async fn run_one_batch(
    ctx: &EngineContext,
    migration: &dyn Migration,
    lease: &Lease,
    slice: Slice<'_>,
    tracker: &ProgressTracker,
    stop: &CancellationToken,
) -> Result<(BatchOutcome, Checkpoint, u64), MigrationError> {
    let name = lease.name.clone();
    let leases = ctx.leases.clone();
    let on_retry = move |attempt: u32, err: &MigrationError, wait: std::time::Duration| {
        tracing::warn!(migration = %name, attempt, error = %err, wait_ms = wait.as_millis() as u64, "batch failed; retrying");
        metrics::counter!("bgmigrate_batch_retries_total", "migration" => name.clone())
            .increment(1);
        let (leases, name, detail) = (
            leases.clone(),
            name.clone(),
            json!({"attempt": attempt, "error": err.to_string()}),
        );
        tokio::spawn(async move {
            let _ = leases
                .record_event(&name, EventKind::BatchRetried, "engine", detail)
                .await;
        });
    };
    let rate_after = |rows: u64| tracker.rate_after(rows);
    with_retries(&ctx.config.retry, stop, on_retry, || async {
        let checkpointer = Checkpointer::new(
            &*ctx.leases,
            lease,
            slice.state,
            slice.args.batch_size,
            &rate_after,
        );
        let mut batch = Batch::new(slice.state, slice.upper, slice.args, &checkpointer);
        batch.yielding = slice.yielding;
        batch.in_range = lease.range.is_some();
        let outcome = migration.run_batch(&mut batch).await?;
        let sizing_rows = batch.sizing_rows(&outcome);
        let checkpoint = batch.into_checkpoint(&outcome)?;
        Ok((outcome, checkpoint, sizing_rows))
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::json;
    use tokio::sync::broadcast;

    use super::*;
    use crate::engine::RunnerConfig;
    use crate::engine::fake_leases::{Counting, FakeLeases, Renewal};
    use crate::registry::Registry;
    use crate::store::Stores;

    fn context(leases: Arc<FakeLeases>, batches: u64) -> EngineContext {
        let mut registry = Registry::empty();
        registry.register("count", move |_, _| Ok(Arc::new(Counting { batches })));
        EngineContext {
            leases,
            registry,
            stores: Stores::new(),
            config: RunnerConfig {
                worker_id: "w1".into(),
                lease_ttl: Duration::from_secs(30),
                heartbeat_interval: Duration::from_secs(10),
                ..RunnerConfig::default()
            },
            progress: broadcast::channel(64).0,
        }
    }

    /// Every batch's checkpoint is written, then the outcome.
    #[tokio::test(start_paused = true)]
    async fn a_migration_runs_to_the_end_and_is_marked_finished() {
        let store = FakeLeases::new(Renewal::Holds);
        let ctx = context(store.clone(), 5);
        let ending = run_claimed(&ctx, FakeLeases::claim(), &CancellationToken::new()).await;
        assert_eq!(ending, Ending::Finished);
        let seen = store.seen.lock().unwrap();
        assert_eq!(seen.checkpoints.last(), Some(&json!({"n": 5})));
        assert_eq!(seen.checkpoints.len(), 5);
        assert_eq!(seen.endings, ["finished"]);
    }

    /// Shutdown lets the batch in flight commit, then gives the migration back with its checkpoint.
    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_between_batches_and_releases_the_lease() {
        let store = FakeLeases::new(Renewal::Holds);
        let ctx = Arc::new(context(store.clone(), 1_000));
        let shutdown = CancellationToken::new();
        let run = {
            let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
            tokio::spawn(async move { run_claimed(&ctx, FakeLeases::claim(), &shutdown).await })
        };
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        shutdown.cancel();
        assert_eq!(run.await.unwrap(), Ending::Released);
        let seen = store.seen.lock().unwrap();
        assert_eq!(seen.endings, ["released"]);
        assert_eq!(
            seen.checkpoints.last(),
            Some(&json!({"n": 4})),
            "the batch in flight when shutdown came committed"
        );
    }

    /// A lost lease stops the loop and writes nothing more: no checkpoint, no outcome.
    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_stops_the_loop_without_writing_an_outcome() {
        let store = FakeLeases::new(Renewal::LostAfter(1));
        let ctx = context(store.clone(), 1_000);
        let ending = run_claimed(&ctx, FakeLeases::claim(), &CancellationToken::new()).await;
        assert_eq!(ending, Ending::LeaseLost);
        let seen = store.seen.lock().unwrap();
        assert!(seen.endings.is_empty(), "{:?}", seen.endings);
        assert!(
            seen.checkpoints.len() <= 21,
            "stopped at the renewal that found the lease gone (20 s), not later: {}",
            seen.checkpoints.len()
        );
    }

    /// A migration whose batches run `F`, for tests about what the engine does with a batch's outcome.
    struct Scripted<F>(F);

    #[async_trait::async_trait]
    impl<F> Migration for Scripted<F>
    where
        F: Fn(&mut Batch<'_>) -> Result<BatchOutcome, MigrationError> + Send + Sync,
    {
        async fn validate(&self) -> Result<(), MigrationError> {
            Ok(())
        }
        async fn estimate(&self) -> Result<Option<u64>, MigrationError> {
            Ok(None)
        }
        async fn run_batch(&self, batch: &mut Batch<'_>) -> Result<BatchOutcome, MigrationError> {
            (self.0)(batch)
        }
    }

    /// A checkpoint that does not move fails the migration instead of looping forever.
    #[tokio::test(start_paused = true)]
    async fn a_cursor_that_does_not_move_fails_the_migration() {
        let store = FakeLeases::new(Renewal::Holds);
        let mut ctx = context(store.clone(), 1);
        ctx.registry.register("count", |_, _| {
            Ok(Arc::new(Scripted(|batch: &mut Batch<'_>| {
                Ok(BatchOutcome {
                    state: batch.state.clone(),
                    done: false,
                    rows: 1,
                    bytes: 0,
                })
            })))
        });
        let ending = run_claimed(&ctx, FakeLeases::claim(), &CancellationToken::new()).await;
        let Ending::Failed(reason) = ending else {
            panic!("{ending:?}")
        };
        assert!(reason.contains("the cursor did not advance"), "{reason}");
        assert_eq!(store.seen.lock().unwrap().endings.len(), 1);
    }

    /// A batch that walks no rows but says what its work was worth (a heap-order backfill's sweep) teaches
    /// adaptive sizing like a batch of that many rows; one that does not teaches it nothing.
    #[tokio::test]
    async fn a_batch_counted_for_sizing_teaches_the_batch_size_though_it_walks_no_rows() {
        for counts in [true, false] {
            let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
            let seen = sizes.clone();
            let listing = Arc::new(Scripted(move |batch: &mut Batch<'_>| {
                let size = batch.args.batch_size;
                seen.lock().unwrap().push(size);
                // Far below the 500 ms target: a batch that teaches the sizer makes the next one twice as big.
                std::thread::sleep(Duration::from_micros(size / 2));
                if counts {
                    batch.count_for_sizing(size);
                }
                let n = batch.state["n"].as_u64().unwrap_or(0) + 1;
                Ok(BatchOutcome {
                    state: json!({ "n": n }),
                    done: n >= 4,
                    rows: 0,
                    bytes: 0,
                })
            }));
            let mut ctx = context(FakeLeases::with_args(Renewal::Holds, json!({})), 1);
            ctx.registry
                .register("count", move |_, _| Ok(listing.clone()));
            let ending = run_claimed(&ctx, FakeLeases::claim(), &CancellationToken::new()).await;
            assert_eq!(ending, Ending::Finished);
            let expected: &[u64] = if counts {
                &[10_000, 20_000, 40_000, 80_000]
            } else {
                &[10_000; 4]
            };
            assert_eq!(*sizes.lock().unwrap(), expected, "counts: {counts}");
        }
    }
}
