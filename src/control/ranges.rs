//! Key ranges (`parallelism` > 1): the migration's key space cut into ranges, each leased on its own by any worker,
//! with its own checkpoint. The worker that holds the migration's row plans the ranges and finishes the migration
//! once every range is done; any worker (that one included) claims free ranges, and one that runs out of them
//! splits the largest range another worker still walks and takes its second half.
//!
//! Every write of a range's holder is fenced on the range's owner and epoch and on the migration still running
//! ([`RANGE_FENCE`]); a checkpoint also on the range's split count, so a batch that ran while a thief cut its range
//! short is not written (its transaction rolls back, or, into ClickHouse, its rows collapse with the thief's). Locks
//! are always taken migration row first, then range rows, so claims, splits and checkpoints never deadlock.

use std::time::Duration;

use serde_json::{Value, json};

use super::dialect::{ControlSql, FENCE, RANGE_FENCE};
use super::read::{RANGE_COLUMNS, decode_range, select_list};
use super::record::RangeHold;
use super::sql_store::{SqlControlStore, text_or_null};
use super::{BatchCommit, Claim, ControlError, EventKind, Lease, RangePlan, RangeRecord};
use crate::args::Args;
use crate::store::{SqlParam, SqlTx};

/// A range lease's view when re-read before a batch: the migration's row (args, status), the range, and how many
/// ranges numbered below it are held (with more than `parallelism` of them, the range is given back).
#[derive(Debug, Clone)]
pub struct HeldRange {
    /// The migration's row.
    pub record: super::MigrationRecord,
    /// The range.
    pub range: RangeRecord,
    /// Held ranges numbered below this one.
    pub held_before: u64,
}

/// The range statements, rendered once for the store's dialect.
pub(super) struct RangeStatements {
    pub(super) by_migration: String,
    pub(super) by_name: String,
    lock_migration: String,
    lock_running: String,
    candidates: String,
    claim: String,
    insert: String,
    held: String,
    renew: String,
    add_progress: String,
    checkpoint: String,
    release: String,
    fail: String,
    throttled: String,
    cut: String,
}

impl RangeStatements {
    pub(super) fn render(sql: ControlSql) -> Self {
        let now = sql.now();
        let ranges = select_list(sql, RANGE_COLUMNS);
        let held_now =
            format!("l.done = 0 AND l.worker_id IS NOT NULL AND l.lease_expires_at >= {now}");
        let free = format!(
            "(r.worker_id IS NULL OR r.lease_expires_at IS NULL OR r.lease_expires_at < {now})"
        );
        Self {
            by_migration: format!(
                "SELECT {ranges} FROM background_migration_ranges r WHERE r.migration_id = $1 ORDER BY r.range_no"
            ),
            by_name: format!(
                "SELECT {ranges} FROM background_migration_ranges r JOIN background_migrations m \
                 ON m.id = r.migration_id WHERE m.name = $1 ORDER BY r.range_no"
            ),
            lock_migration: format!(
                "SELECT name FROM background_migrations m WHERE m.id = $1 AND m.status = 'running' {}",
                sql.lock_rows("m")
            ),
            // The running migrations with ranges left, locked first in a statement of their own: the candidates
            // are then read with a snapshot taken after any concurrent claim committed (Postgres takes a statement's
            // snapshot before it waits for a lock), and two workers cannot both pass the parallelism check.
            lock_running: format!(
                "SELECT m.id FROM background_migrations m WHERE m.status = 'running' \
                 AND m.script IN (SELECT s.value FROM {}) AND (CAST($2 AS TEXT) IS NULL OR m.id = $2) \
                 AND EXISTS (SELECT 1 FROM background_migration_ranges r WHERE r.migration_id = m.id AND r.done = 0) \
                 ORDER BY m.name {}",
                sql.names_of_param(1, "s"),
                sql.lock_rows("m")
            ),
            // Free ranges of those migrations, with how many ranges each has held now.
            candidates: format!(
                "SELECT CAST(m.id AS TEXT), m.name, CAST(m.args AS TEXT), CAST(r.range_no AS TEXT), r.worker_id, \
                 CAST((SELECT count(*) FROM background_migration_ranges l WHERE l.migration_id = m.id AND \
                 {held_now}) AS TEXT) \
                 FROM background_migrations m JOIN background_migration_ranges r ON r.migration_id = m.id \
                 WHERE m.status = 'running' AND m.script IN (SELECT s.value FROM {}) \
                 AND (CAST($2 AS TEXT) IS NULL OR m.id = $2) AND r.done = 0 AND {free} \
                 ORDER BY m.name, r.range_no",
                sql.names_of_param(1, "s"),
            ),
            claim: format!(
                "UPDATE background_migration_ranges SET worker_id = $3, lease_epoch = lease_epoch + 1, \
                 lease_expires_at = {}, rows_per_sec = NULL, updated_at = {now} \
                 WHERE migration_id = $1 AND range_no = $2 AND done = 0 \
                 AND (worker_id IS NULL OR lease_expires_at IS NULL OR lease_expires_at < {now}) \
                 RETURNING CAST(lease_epoch AS TEXT)",
                sql.now_plus_seconds(4)
            ),
            insert: format!(
                "INSERT INTO background_migration_ranges \
                 (migration_id, range_no, state, upper_state, rows_total, worker_id, lease_epoch, lease_expires_at) \
                 VALUES ($1, $2, {}, {}, CAST($5 AS BIGINT), $6, CAST($7 AS BIGINT), \
                 CASE WHEN CAST($6 AS TEXT) IS NULL THEN NULL ELSE {} END)",
                sql.json_param(3),
                sql.json_param(4),
                sql.now_plus_seconds(8)
            ),
            // The range, and (last column) how many ranges numbered below it are held now: read before every
            // batch, so in one statement.
            held: format!(
                "SELECT {ranges}, CAST((SELECT count(*) FROM background_migration_ranges l \
                 WHERE l.migration_id = $1 AND l.range_no < $2 AND {held_now}) AS TEXT) \
                 FROM background_migration_ranges r WHERE {RANGE_FENCE}"
            ),
            // Not fenced on `done`: the heartbeat may beat once between a range's last checkpoint and its end.
            renew: format!(
                "UPDATE background_migration_ranges SET lease_expires_at = {} WHERE migration_id = $1 \
                 AND range_no = $2 AND worker_id = $3 AND lease_epoch = $4 AND EXISTS (SELECT 1 FROM \
                 background_migrations m WHERE m.id = $1 AND m.status = 'running')",
                sql.now_plus_seconds(5)
            ),
            // The migration's progress: its rate is the sum of the held ranges' rates.
            add_progress: format!(
                "UPDATE background_migrations SET rows_done = rows_done + $3, bytes_done = bytes_done + $4, \
                 batch_size = $5, last_batch_ms = $6, rows_per_sec = $7 + (SELECT coalesce(sum(l.rows_per_sec), 0) \
                 FROM background_migration_ranges l WHERE l.migration_id = $1 AND l.range_no <> $2 AND {held_now}), \
                 updated_at = {now} WHERE id = $1 AND status = 'running'"
            ),
            checkpoint: format!(
                "UPDATE background_migration_ranges SET state = {}, done = $6, rows_done = rows_done + $7, \
                 rows_per_sec = $8, batch_size = $9, updated_at = {now} WHERE {RANGE_FENCE} AND splits = $10 \
                 AND {}",
                sql.json_param(5),
                sql.checkpoint_follows(11, 5)
            ),
            release: format!(
                "UPDATE background_migration_ranges SET worker_id = NULL, lease_expires_at = NULL, \
                 rows_per_sec = NULL, updated_at = {now} \
                 WHERE migration_id = $1 AND range_no = $2 AND worker_id = $3 AND lease_epoch = $4 AND done = 0"
            ),
            fail: format!(
                "UPDATE background_migrations SET status = 'failed', failed_at = {now}, failed_reason = $5, \
                 worker_id = NULL, locked_at = NULL, lease_expires_at = NULL, throttled = NULL, updated_at = {now} \
                 WHERE id = $1 AND status = 'running' AND EXISTS (SELECT 1 FROM background_migration_ranges r \
                 WHERE r.migration_id = $1 AND r.range_no = $2 AND r.worker_id = $3 AND r.lease_epoch = $4)"
            ),
            throttled: format!(
                "UPDATE background_migrations SET throttled = $5, updated_at = {now} \
                 WHERE id = $1 AND status = 'running' AND EXISTS (SELECT 1 FROM background_migration_ranges r \
                 WHERE r.migration_id = $1 AND r.range_no = $2 AND r.worker_id = $3 AND r.lease_epoch = $4)"
            ),
            // The thief's compare-and-set: the victim's checkpoint and split count are still what it read.
            cut: format!(
                "UPDATE background_migration_ranges SET upper_state = {}, splits = splits + 1, \
                 rows_total = rows_total - CAST($5 AS BIGINT), updated_at = {now} \
                 WHERE migration_id = $1 AND range_no = $2 AND done = 0 AND splits = $3 AND {}",
                sql.json_param(6),
                sql.json_equals("state", 4)
            ),
        }
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn int_or_null(n: Option<u64>) -> SqlParam {
    n.map_or(SqlParam::Null, |n| SqlParam::Int(to_i64(n)))
}

/// A free range found by the claim query.
struct Candidate {
    migration_id: String,
    name: String,
    range_no: i64,
    previous_worker: Option<String>,
}

/// The first free range whose migration holds fewer ranges than its `parallelism` (rows in migration order).
fn first_claimable(rows: Vec<Vec<Option<String>>>) -> Option<Candidate> {
    rows.into_iter().find_map(|row| {
        let [id, name, args, range_no, worker, held] = <[Option<String>; 6]>::try_from(row).ok()?;
        let args: Value = serde_json::from_str(args.as_deref()?).ok()?;
        // Unreadable args: the holder of the migration's row fails it; nobody joins meanwhile.
        let parallelism = Args::parse(&args).ok()?.parallelism;
        let held: u64 = held?.parse().ok()?;
        (held < parallelism).then_some(Candidate {
            migration_id: id?,
            name: name?,
            range_no: range_no?.parse().ok()?,
            previous_worker: worker,
        })
    })
}

impl SqlControlStore {
    /// The ranges of migration `migration_id`, in range order.
    pub(super) async fn ranges_of_id(
        &self,
        migration_id: &str,
    ) -> Result<Vec<RangeRecord>, ControlError> {
        let rows = self
            .read_rows(
                &self.statements.ranges.by_migration,
                &[SqlParam::Text(migration_id.to_owned())],
            )
            .await?;
        rows.iter().map(|row| decode_range(row)).collect()
    }

    /// Creates the ranges, unless the migration has some (a previous holder of its row planned them).
    pub(super) async fn plan(
        &self,
        lease: &Lease,
        plans: &[RangePlan],
    ) -> Result<bool, ControlError> {
        let mut tx = self.write().await?;
        let touched = tx
            .execute(
                &format!(
                    "UPDATE background_migrations SET updated_at = {} WHERE {FENCE}",
                    self.sql.now()
                ),
                &lease.fence_params(),
            )
            .await?;
        if touched == 0 {
            return Err(ControlError::LeaseLost(lease.name.clone()));
        }
        let id = SqlParam::Text(lease.migration_id.clone());
        let existing = tx
            .fetch_count(
                "SELECT count(*) FROM background_migration_ranges WHERE migration_id = $1",
                std::slice::from_ref(&id),
            )
            .await?;
        if existing > 0 {
            return Ok(false);
        }
        for (no, plan) in plans.iter().enumerate() {
            let params = [
                id.clone(),
                SqlParam::Int(no as i64),
                SqlParam::Text(plan.state.to_string()),
                text_or_null(plan.upper.as_ref().map(Value::to_string)),
                int_or_null(plan.rows_total),
                SqlParam::Null,
                SqlParam::Int(0),
                SqlParam::Float(0.0),
            ];
            tx.execute(&self.statements.ranges.insert, &params).await?;
        }
        let detail = json!({"ranges": plans.len()});
        self.insert_event(
            tx.as_mut(),
            &lease.name,
            EventKind::RangesPlanned,
            &lease.worker_id,
            &detail,
        )
        .await?;
        self.commit(tx).await?;
        Ok(true)
    }

    /// Claims the first free range a migration's `parallelism` allows.
    pub(super) async fn claim_free_range(
        &self,
        worker_id: &str,
        ttl: Duration,
        scripts: &[String],
        migration_id: Option<&str>,
    ) -> Result<Option<Claim>, ControlError> {
        let mut tx = self.write().await?;
        let params = [
            SqlParam::Text(Value::from(scripts.to_vec()).to_string()),
            text_or_null(migration_id.map(str::to_owned)),
        ];
        tx.fetch_all_text(&self.statements.ranges.lock_running, &params)
            .await?;
        let rows = tx
            .fetch_all_text(&self.statements.ranges.candidates, &params)
            .await?;
        let Some(candidate) = first_claimable(rows) else {
            return Ok(None);
        };
        let claimed = tx
            .fetch_all_text(
                &self.statements.ranges.claim,
                &[
                    SqlParam::Text(candidate.migration_id.clone()),
                    SqlParam::Int(candidate.range_no),
                    SqlParam::Text(worker_id.to_owned()),
                    SqlParam::Float(ttl.as_secs_f64()),
                ],
            )
            .await?;
        // The update checks again that the range is free: under the migration's lock it always is.
        let Some(epoch) = claimed
            .first()
            .and_then(|row| row.first().cloned().flatten())
            .and_then(|text| text.parse::<i64>().ok())
        else {
            return Ok(None);
        };
        let detail = json!({
            "range": candidate.range_no,
            "epoch": epoch,
            "previous_worker": candidate.previous_worker,
        });
        self.insert_event(
            tx.as_mut(),
            &candidate.name,
            EventKind::RangeClaimed,
            worker_id,
            &detail,
        )
        .await?;
        let record = self.record_in(tx.as_mut(), &candidate.name).await?;
        self.commit(tx).await?;
        Ok(Some(Claim {
            lease: Lease {
                migration_id: candidate.migration_id,
                name: candidate.name,
                worker_id: worker_id.to_owned(),
                epoch: 0,
                range: Some(RangeHold {
                    no: candidate.range_no,
                    epoch,
                    splits: 0,
                }),
            },
            record,
            took_over_from: candidate.previous_worker,
        }))
    }

    /// Cuts `victim` at `at` and claims the rest as a new range; `None` when the victim moved meanwhile.
    pub(super) async fn cut(
        &self,
        worker_id: &str,
        ttl: Duration,
        migration_id: &str,
        victim: &RangeRecord,
        at: &Value,
        rows: Option<u64>,
    ) -> Result<Option<Claim>, ControlError> {
        let mut tx = self.write().await?;
        let id = SqlParam::Text(migration_id.to_owned());
        let locked = tx
            .fetch_all_text(
                &self.statements.ranges.lock_migration,
                std::slice::from_ref(&id),
            )
            .await?;
        let Some(Some(name)) = locked
            .into_iter()
            .next()
            .and_then(|row| row.into_iter().next())
        else {
            return Ok(None);
        };
        let cut = tx
            .execute(
                &self.statements.ranges.cut,
                &[
                    id.clone(),
                    SqlParam::Int(victim.no),
                    SqlParam::Int(victim.splits),
                    SqlParam::Text(victim.state.to_string()),
                    SqlParam::Int(to_i64(rows.unwrap_or(0))),
                    SqlParam::Text(at.to_string()),
                ],
            )
            .await?;
        if cut == 0 {
            return Ok(None);
        }
        let no = tx
            .fetch_count(
                "SELECT CAST(coalesce(max(range_no), -1) + 1 AS BIGINT) FROM background_migration_ranges WHERE migration_id = $1",
                std::slice::from_ref(&id),
            )
            .await?;
        tx.execute(
            &self.statements.ranges.insert,
            &[
                id,
                SqlParam::Int(no),
                SqlParam::Text(at.to_string()),
                text_or_null(victim.upper.as_ref().map(Value::to_string)),
                int_or_null(rows),
                SqlParam::Text(worker_id.to_owned()),
                SqlParam::Int(1),
                SqlParam::Float(ttl.as_secs_f64()),
            ],
        )
        .await?;
        let detail = json!({"range": victim.no, "new_range": no, "at": at, "rows": rows});
        self.insert_event(
            tx.as_mut(),
            &name,
            EventKind::RangeSplit,
            worker_id,
            &detail,
        )
        .await?;
        let record = self.record_in(tx.as_mut(), &name).await?;
        self.commit(tx).await?;
        Ok(Some(Claim {
            lease: Lease {
                migration_id: migration_id.to_owned(),
                name,
                worker_id: worker_id.to_owned(),
                epoch: 0,
                range: Some(RangeHold {
                    no,
                    epoch: 1,
                    splits: 0,
                }),
            },
            record,
            took_over_from: None,
        }))
    }

    /// The migration's row and the range, while `range` is held.
    pub(super) async fn held_range(
        &self,
        lease: &Lease,
        range: &RangeHold,
    ) -> Result<HeldRange, ControlError> {
        let fence = lease.range_fence_params(range);
        let mut tx = self.store.begin_read().await?;
        let rows = tx
            .fetch_all_text(&self.statements.ranges.held, &fence)
            .await?;
        let Some(row) = rows.first() else {
            tx.commit().await?;
            return Err(ControlError::LeaseLost(lease.name.clone()));
        };
        let found = decode_range(row)?;
        let held_before = row
            .get(RANGE_COLUMNS.len())
            .cloned()
            .flatten()
            .and_then(|text| text.parse::<u64>().ok())
            .ok_or_else(|| {
                ControlError::Corrupt("background_migration_ranges: no held count".into())
            })?;
        let record = self.record_in(tx.as_mut(), &lease.name).await?;
        tx.commit().await?;
        Ok(HeldRange {
            record,
            range: found,
            held_before,
        })
    }

    pub(super) async fn renew_range(
        &self,
        lease: &Lease,
        range: &RangeHold,
        ttl: Duration,
    ) -> Result<bool, ControlError> {
        let mut params = lease.range_fence_params(range);
        params.push(SqlParam::Float(ttl.as_secs_f64()));
        let mut tx = self.write().await?;
        let renewed = tx.execute(&self.statements.ranges.renew, &params).await?;
        tx.commit().await?;
        Ok(renewed == 1)
    }

    /// A range batch's checkpoint and the migration's progress, in `tx`: migration row first (lock order).
    pub(super) async fn range_checkpoint(
        &self,
        tx: &mut dyn SqlTx,
        lease: &Lease,
        range: &RangeHold,
        commit: &BatchCommit,
    ) -> Result<(), ControlError> {
        let progress = [
            SqlParam::Text(lease.migration_id.clone()),
            SqlParam::Int(range.no),
            SqlParam::Int(to_i64(commit.rows)),
            SqlParam::Int(to_i64(commit.bytes)),
            SqlParam::Int(to_i64(commit.batch_size)),
            SqlParam::Int(to_i64(commit.duration_ms())),
            SqlParam::Float(commit.rows_per_sec),
        ];
        if tx
            .execute(&self.statements.ranges.add_progress, &progress)
            .await?
            == 0
        {
            return Err(ControlError::LeaseLost(lease.name.clone()));
        }
        let mut params = lease.range_fence_params(range);
        params.extend([
            SqlParam::Text(commit.state.to_string()),
            SqlParam::Int(i64::from(commit.done)),
            SqlParam::Int(to_i64(commit.rows)),
            SqlParam::Float(commit.rows_per_sec),
            SqlParam::Int(to_i64(commit.batch_size)),
            SqlParam::Int(range.splits),
            SqlParam::Text(commit.previous.to_string()),
        ]);
        if tx
            .execute(&self.statements.ranges.checkpoint, &params)
            .await?
            == 0
        {
            return Err(ControlError::LeaseLost(lease.name.clone()));
        }
        Ok(())
    }

    /// Gives the range back (its checkpoint kept); a lease already gone writes nothing.
    pub(super) async fn release_range(
        &self,
        lease: &Lease,
        range: &RangeHold,
    ) -> Result<(), ControlError> {
        let mut tx = self.write().await?;
        tx.execute(
            &self.statements.ranges.release,
            &lease.range_fence_params(range),
        )
        .await?;
        self.commit(tx).await
    }

    /// Fails the whole migration from one of its ranges.
    pub(super) async fn fail_from_range(
        &self,
        lease: &Lease,
        range: &RangeHold,
        reason: &str,
    ) -> Result<(), ControlError> {
        let mut params = lease.range_fence_params(range);
        params.push(SqlParam::Text(reason.to_owned()));
        let mut tx = self.write().await?;
        if tx.execute(&self.statements.ranges.fail, &params).await? == 0 {
            return Err(ControlError::LeaseLost(lease.name.clone()));
        }
        let detail = json!({"reason": reason, "range": range.no});
        self.insert_event(
            tx.as_mut(),
            &lease.name,
            EventKind::Failed,
            &lease.worker_id,
            &detail,
        )
        .await?;
        self.commit(tx).await
    }

    /// Says why the migration holds back, from one of its ranges.
    pub(super) async fn throttled_from_range(
        &self,
        tx: &mut dyn SqlTx,
        lease: &Lease,
        range: &RangeHold,
        throttled: Option<&str>,
    ) -> Result<(), ControlError> {
        let mut params = lease.range_fence_params(range);
        params.push(text_or_null(throttled.map(str::to_owned)));
        if tx
            .execute(&self.statements.ranges.throttled, &params)
            .await?
            == 0
        {
            return Err(ControlError::LeaseLost(lease.name.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, args: &str, range: i64, held: u64) -> Vec<Option<String>> {
        vec![
            Some(id.into()),
            Some(format!("m-{id}")),
            Some(args.into()),
            Some(range.to_string()),
            None,
            Some(held.to_string()),
        ]
    }

    /// A migration already holding as many ranges as its `parallelism` is passed over for the next one.
    #[test]
    fn a_free_range_is_claimed_only_below_the_migrations_parallelism() {
        let rows = vec![
            row("a", r#"{"parallelism": 2}"#, 3, 2),
            row("b", r#"{"parallelism": 4}"#, 1, 3),
        ];
        let found = first_claimable(rows).unwrap();
        assert_eq!((found.migration_id.as_str(), found.range_no), ("b", 1));
        assert!(first_claimable(vec![row("a", r#"{"parallelism": 1}"#, 0, 1)]).is_none());
        assert!(
            first_claimable(vec![row("a", r#"{"parallelism": "x"}"#, 0, 0)]).is_none(),
            "unreadable args: nobody joins"
        );
    }
}
