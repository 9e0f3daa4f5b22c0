//! Parallel work inside one migration (`parallelism` > 1): its key space cut into ranges that any worker leases.
//!
//! The worker holding the migration's row *coordinates*: it plans the ranges once (from the migration's
//! [`split`](crate::migration::Migration::split), starting at the row's checkpoint, so a migration that ran as one
//! stream goes on from where it was), works ranges like everyone else, and finishes the migration when every range
//! is done. Other workers *join* from their claim loop ([`run_joined`]). A worker that finds no free range steals:
//! it splits the range with the most rows left that another worker walks, and takes its second half, so the tail
//! stays short. Raising `parallelism` lets more workers join (stealing creates the ranges they need); lowering it
//! makes the holders of the highest-numbered ranges give them back after their batch in flight.

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::EngineContext;
use super::execute::{Ending, build_validated, hold, stream};
use super::progress::ProgressTracker;
use crate::control::{Claim, EventKind, Lease, MigrationRecord, RangePlan, RangeRecord};
use crate::migration::{Migration, MigrationError};

/// A range holds at least this many batches' worth of rows before another worker may split it: smaller ranges
/// finish sooner than a split pays off, and the holder's batch in flight stays clear of the cut.
const STEAL_MIN_BATCHES: u64 = 4;
/// Nor is a range split with fewer rows left than this.
const STEAL_MIN_ROWS: u64 = 1_000;
/// How often the coordinator looks again while other workers walk the last ranges.
const COORDINATOR_POLL: Duration = Duration::from_secs(1);

/// What the coordinator starts from.
pub(super) struct Start<'a> {
    /// The migration's row as claimed.
    pub record: &'a MigrationRecord,
    /// Its estimated rows.
    pub rows_total: Option<u64>,
    /// `parallelism` in its args now.
    pub parallelism: u64,
    /// Whether its ranges exist already (a previous holder planned them).
    pub planned: bool,
}

/// The coordinator's part, under the migration's own `lease`: plan, work, wait, finish.
pub(super) async fn coordinate(
    ctx: &EngineContext,
    lease: &Lease,
    migration: &dyn Migration,
    start: Start<'_>,
    stop: &CancellationToken,
) -> Result<Ending, MigrationError> {
    if !start.planned {
        let record = start.record;
        let rows_left = start
            .rows_total
            .map(|total| total.saturating_sub(record.rows_done.max(0) as u64));
        let starts = migration
            .split(&record.state, None, start.parallelism, rows_left)
            .await?;
        let plans = plans(&record.state, starts, rows_left);
        if ctx.leases.plan_ranges(lease, &plans).await? {
            tracing::info!(migration = %lease.name, ranges = plans.len(), "key space split into ranges");
        }
    }
    loop {
        if let Some(ending) = work(ctx, migration, &lease.migration_id, None, stop).await? {
            return Ok(ending);
        }
        if stop.is_cancelled() {
            return Ok(Ending::Released);
        }
        let ranges = ctx.leases.ranges_of(&lease.migration_id).await?;
        if ranges.iter().all(|r| r.done) {
            let states: Vec<serde_json::Value> = ranges.into_iter().map(|r| r.state).collect();
            let detail = serde_json::json!({"ranges": states.len()});
            ctx.leases
                .record_event(&lease.name, EventKind::RangesDone, &lease.worker_id, detail)
                .await?;
            let record = ctx.leases.current(lease).await?;
            let args = super::execute::parse_args(migration, &record)?;
            migration.ranges_done(&states, &args).await?;
            return Ok(Ending::Finished);
        }
        // Other workers walk the rest; their leases may expire, so look again soon.
        tokio::select! {
            _ = stop.cancelled() => return Ok(Ending::Released),
            _ = tokio::time::sleep(COORDINATOR_POLL.min(ctx.config.poll_interval)) => {}
        }
    }
}

/// Ranges starting at `first` and at each of `starts`, each ending where the next starts, the rows shared evenly.
fn plans(
    first: &serde_json::Value,
    starts: Vec<serde_json::Value>,
    rows: Option<u64>,
) -> Vec<RangePlan> {
    let count = starts.len() as u64 + 1;
    let share = rows.map(|rows| rows / count);
    let mut bounds = std::iter::once(first.clone()).chain(starts).peekable();
    let mut plans = Vec::new();
    while let Some(state) = bounds.next() {
        plans.push(RangePlan {
            state,
            upper: bounds.peek().cloned(),
            rows_total: share,
        });
    }
    plans
}

/// A joining worker's part, from its claim loop: the migration of the range it claimed, its ranges until none is
/// left to claim or steal.
pub(crate) async fn run_joined(
    ctx: &EngineContext,
    claim: Claim,
    shutdown: &CancellationToken,
) -> Ending {
    let migration = match build_validated(ctx, &claim.record, shutdown).await {
        Ok(migration) => migration,
        Err(err) => {
            let reason = err.to_string();
            return hold(ctx, &claim.lease, shutdown, |_| async move {
                Ok(Ending::Failed(reason))
            })
            .await;
        }
    };
    let id = claim.lease.migration_id.clone();
    match work(ctx, &*migration, &id, Some(claim), shutdown).await {
        Ok(Some(ending)) => ending,
        Ok(None) => Ending::Released,
        Err(err) => {
            tracing::warn!(error = %err, "could not claim a key range");
            Ending::Released
        }
    }
}

/// Walks ranges of migration `migration_id` (`first`, then whatever is free or can be stolen) until none is left.
/// Returns an ending only when the migration failed.
async fn work(
    ctx: &EngineContext,
    migration: &dyn Migration,
    migration_id: &str,
    first: Option<Claim>,
    stop: &CancellationToken,
) -> Result<Option<Ending>, MigrationError> {
    let mut next = first;
    loop {
        if stop.is_cancelled() {
            return Ok(None);
        }
        let claim = match next.take() {
            Some(claim) => claim,
            None => match claim_or_steal(ctx, migration, migration_id).await? {
                Some(claim) => claim,
                None => return Ok(None),
            },
        };
        if let Some(previous) = &claim.took_over_from {
            metrics::counter!("bgmigrate_lease_takeovers_total", "migration" => claim.lease.name.clone())
                .increment(1);
            tracing::info!(migration = %claim.lease.name, previous_worker = %previous, "took over an expired key range");
        }
        if let Ending::Failed(reason) = walk(ctx, migration, claim, stop).await {
            return Ok(Some(Ending::Failed(reason)));
        }
    }
}

/// Walks one claimed range to its end (or until its lease is lost, it is given back, or the worker stops).
async fn walk(
    ctx: &EngineContext,
    migration: &dyn Migration,
    claim: Claim,
    stop: &CancellationToken,
) -> Ending {
    let lease = claim.lease;
    let no = lease.range.map_or(0, |range| range.no);
    hold(ctx, &lease, stop, |range_stop| {
        let lease = lease.clone();
        async move {
            let held = ctx.leases.current_range(&lease).await?;
            let tracker = ProgressTracker::new(
                &format!("{} range {no}", lease.name),
                held.range.rows_done.max(0) as u64,
                held.range.rows_total.map(|t| t.max(0) as u64),
                ctx.config.progress_log_interval,
            );
            let size = held.range.batch_size.map(|b| b.max(1) as u64);
            stream(ctx, migration, lease, size, tracker, &range_stop).await
        }
    })
    .await
}

/// A free range of the migration, or else half of the largest range another worker walks.
async fn claim_or_steal(
    ctx: &EngineContext,
    migration: &dyn Migration,
    migration_id: &str,
) -> Result<Option<Claim>, MigrationError> {
    let (worker, ttl) = (&ctx.config.worker_id, ctx.config.lease_ttl);
    let scripts = ctx.registry.scripts();
    if let Some(claim) = ctx
        .leases
        .claim_range(worker, ttl, &scripts, Some(migration_id))
        .await?
    {
        return Ok(Some(claim));
    }
    let ranges = ctx.leases.ranges_of(migration_id).await?;
    let Some(victim) = victim(&ranges, worker) else {
        return Ok(None);
    };
    let rows = victim.rows_left();
    let cut = migration
        .split(&victim.state, victim.upper.as_ref(), 2, Some(rows))
        .await?;
    let Some(at) = cut.into_iter().next() else {
        return Ok(None);
    };
    // The store checks again, under the migration's lock, that the victim has not moved and that parallelism
    // allows one more range.
    Ok(ctx
        .leases
        .split_range(worker, ttl, migration_id, victim, &at, Some(rows / 2))
        .await?)
}

/// The range worth splitting: held by another worker now, with the most rows left, and enough of them.
fn victim<'a>(ranges: &'a [RangeRecord], worker: &str) -> Option<&'a RangeRecord> {
    let now = Utc::now();
    ranges
        .iter()
        .filter(|r| r.is_held(now) && r.worker_id.as_deref() != Some(worker))
        .filter(|r| {
            let batch = r.batch_size.map_or(0, |b| b.max(0) as u64);
            r.rows_left() >= (batch * STEAL_MIN_BATCHES).max(STEAL_MIN_ROWS)
        })
        .max_by_key(|r| r.rows_left())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn range(
        no: i64,
        worker: Option<&str>,
        rows_total: i64,
        rows_done: i64,
        batch: i32,
    ) -> RangeRecord {
        RangeRecord {
            no,
            state: json!({"cursor": [no.to_string()]}),
            upper: None,
            done: false,
            splits: 0,
            worker_id: worker.map(str::to_owned),
            lease_epoch: 1,
            lease_expires_at: Some(Utc::now() + chrono::Duration::seconds(30)),
            rows_done,
            rows_total: Some(rows_total),
            rows_per_sec: None,
            batch_size: Some(batch),
            updated_at: Utc::now(),
        }
    }

    /// Ranges start at the checkpoint and at each split, each ending where the next starts, the last at the end.
    #[test]
    fn planned_ranges_chain_from_the_checkpoint_to_the_end() {
        let plans = plans(
            &json!({}),
            vec![json!({"cursor": ["b"]}), json!({"cursor": ["m"]})],
            Some(9),
        );
        let bounds: Vec<_> = plans
            .iter()
            .map(|p| (p.state.clone(), p.upper.clone(), p.rows_total))
            .collect();
        assert_eq!(
            bounds,
            [
                (json!({}), Some(json!({"cursor": ["b"]})), Some(3)),
                (
                    json!({"cursor": ["b"]}),
                    Some(json!({"cursor": ["m"]})),
                    Some(3)
                ),
                (json!({"cursor": ["m"]}), None, Some(3)),
            ]
        );
    }

    /// A thief takes from the largest range another worker holds, never its own, and never a range about to end.
    #[test]
    fn the_victim_is_the_largest_range_another_worker_holds() {
        let ranges = [
            range(0, Some("me"), 100_000, 0, 1_000),
            range(1, Some("w2"), 50_000, 10_000, 1_000),
            range(2, Some("w3"), 90_000, 20_000, 1_000),
            range(3, Some("w4"), 10_000, 7_000, 1_000),
            range(4, None, 500_000, 0, 1_000),
        ];
        assert_eq!(victim(&ranges, "me").map(|r| r.no), Some(2));
        let small = [range(3, Some("w4"), 10_000, 7_000, 1_000)];
        assert!(
            victim(&small, "me").is_none(),
            "3,000 rows left < 4 batches of 1,000"
        );
    }
}
