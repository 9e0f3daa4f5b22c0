//! The worker's side ([`LeaseStore`]): claim, renew, checkpoint and end a migration, every write fenced on the
//! lease (the [`FENCE`](super::dialect::FENCE) predicate, written once).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};

use super::sql_store::SqlControlStore;
use super::{
    BATCHES_KEPT, BatchCommit, Claim, ControlError, EventKind, HeldRange, Lease, LeaseStore,
    MigrationRecord, RangePlan, RangeRecord,
};
use crate::store::{DatabaseId, SqlParam, SqlTx};

/// How a worker ends its hold on a migration.
enum Ending<'a> {
    Finished,
    Failed(&'a str),
    Released,
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `rows_affected` of a fenced write: none means the lease is gone.
fn fenced(rows_affected: u64, lease: &Lease) -> Result<(), ControlError> {
    if rows_affected == 0 {
        return Err(ControlError::LeaseLost(lease.name.clone()));
    }
    Ok(())
}

impl SqlControlStore {
    /// Writes a batch's checkpoint and its batches-table row in `tx` (the batch's transaction or one of its own).
    async fn checkpoint(
        &self,
        tx: &mut dyn SqlTx,
        lease: &Lease,
        commit: &BatchCommit,
    ) -> Result<(), ControlError> {
        if let Some(range) = &lease.range {
            self.range_checkpoint(tx, lease, range, commit).await?;
        } else {
            self.migration_checkpoint(tx, lease, commit).await?;
        }
        self.record_batch(tx, lease, commit).await
    }

    /// The checkpoint of a migration run as one stream, on its row.
    async fn migration_checkpoint(
        &self,
        tx: &mut dyn SqlTx,
        lease: &Lease,
        commit: &BatchCommit,
    ) -> Result<(), ControlError> {
        let mut params = lease.fence_params();
        params.extend([
            SqlParam::Text(commit.state.to_string()),
            SqlParam::Int(to_i64(commit.rows)),
            SqlParam::Int(to_i64(commit.bytes)),
            SqlParam::Int(to_i64(commit.batch_size)),
            SqlParam::Int(to_i64(commit.duration_ms())),
            SqlParam::Float(commit.rows_per_sec),
            SqlParam::Text(commit.previous.to_string()),
        ]);
        let updated = tx
            .execute(&self.statements.write_checkpoint, &params)
            .await?;
        fenced(updated, lease)
    }

    /// Appends the batch to the bounded batches table.
    async fn record_batch(
        &self,
        tx: &mut dyn SqlTx,
        lease: &Lease,
        commit: &BatchCommit,
    ) -> Result<(), ControlError> {
        let state = commit.state.to_string();
        let batch = [
            SqlParam::Text(lease.name.clone()),
            SqlParam::Text(
                commit
                    .started_at
                    .to_rfc3339_opts(SecondsFormat::Millis, true),
            ),
            SqlParam::Int(to_i64(commit.duration_ms())),
            SqlParam::Int(to_i64(commit.rows)),
            SqlParam::Int(to_i64(commit.bytes)),
            SqlParam::Int(to_i64(commit.batch_size)),
            SqlParam::Text(state),
            SqlParam::Text(lease.worker_id.clone()),
        ];
        let id = tx
            .fetch_count(&self.statements.record_batch, &batch)
            .await?;
        // Bounded history: where the insert did not trim, one indexed range delete right after it.
        if let Some(trim) = &self.statements.trim_batches {
            tx.execute(
                trim,
                &[
                    SqlParam::Text(lease.name.clone()),
                    SqlParam::Int(id - BATCHES_KEPT),
                ],
            )
            .await?;
        }
        Ok(())
    }

    /// A fenced single-statement write of its own (renewal, the estimate): `sql` takes the fence as `$1`–`$3`
    /// and `extra` from `$4`.
    async fn fenced_write(
        &self,
        sql: &str,
        lease: &Lease,
        extra: SqlParam,
    ) -> Result<u64, ControlError> {
        let mut params = lease.fence_params();
        params.push(extra);
        let mut tx = self.write().await?;
        let updated = tx.execute(sql, &params).await?;
        tx.commit().await?;
        Ok(updated)
    }

    async fn end(&self, lease: &Lease, ending: Ending<'_>) -> Result<(), ControlError> {
        let now = self.sql.now();
        let (set, kind, detail) = match ending {
            Ending::Finished => (
                format!("status = 'finished', finished_at = {now}, rows_total = rows_done"),
                EventKind::Finished,
                json!({}),
            ),
            Ending::Failed(reason) => (
                format!("status = 'failed', failed_at = {now}, failed_reason = $4"),
                EventKind::Failed,
                json!({"reason": reason}),
            ),
            Ending::Released => (
                "status = 'pending'".to_owned(),
                EventKind::Released,
                json!({}),
            ),
        };
        let sql = format!(
            "UPDATE background_migrations SET {set}, worker_id = NULL, locked_at = NULL, lease_expires_at = NULL, \
             throttled = NULL, updated_at = {now} WHERE {}",
            super::dialect::FENCE
        );
        let mut params = lease.fence_params();
        if let Ending::Failed(reason) = ending {
            params.push(SqlParam::Text(reason.to_owned()));
        }
        let mut tx = self.write().await?;
        fenced(tx.execute(&sql, &params).await?, lease)?;
        self.insert_event(tx.as_mut(), &lease.name, kind, &lease.worker_id, &detail)
            .await?;
        self.commit(tx).await
    }
}

#[async_trait]
impl LeaseStore for SqlControlStore {
    fn database(&self) -> &DatabaseId {
        self.store.id()
    }

    async fn claim_next(
        &self,
        worker_id: &str,
        ttl: Duration,
        scripts: &[String],
    ) -> Result<Option<Claim>, ControlError> {
        let mut tx = self.write().await?;
        let scripts = Value::from(scripts.to_vec()).to_string();
        let candidate = tx
            .fetch_all_text(&self.statements.claim_candidate, &[SqlParam::Text(scripts)])
            .await?;
        let Some([Some(migration_id), Some(name), took_over_from]) = candidate
            .into_iter()
            .next()
            .and_then(|row| <[Option<String>; 3]>::try_from(row).ok())
        else {
            return Ok(None);
        };
        let epoch = tx
            .fetch_count(
                &self.statements.claim,
                &[
                    SqlParam::Text(migration_id.clone()),
                    SqlParam::Text(worker_id.to_owned()),
                    SqlParam::Float(ttl.as_secs_f64()),
                ],
            )
            .await?;
        let (kind, detail) = match &took_over_from {
            Some(previous) => (
                EventKind::LeaseTakenOver,
                json!({"previous_worker": previous, "epoch": epoch}),
            ),
            None => (EventKind::Claimed, json!({"epoch": epoch})),
        };
        self.insert_event(tx.as_mut(), &name, kind, worker_id, &detail)
            .await?;
        let record = self.record_in(tx.as_mut(), &name).await?;
        self.commit(tx).await?;
        let lease = Lease {
            migration_id,
            name,
            worker_id: worker_id.to_owned(),
            epoch,
            range: None,
        };
        Ok(Some(Claim {
            record,
            lease,
            took_over_from,
        }))
    }

    async fn claimable(&self, scripts: &[String]) -> Result<bool, ControlError> {
        let scripts = Value::from(scripts.to_vec()).to_string();
        let rows = self
            .read_rows(&self.statements.claimable, &[SqlParam::Text(scripts)])
            .await?;
        Ok(!rows.is_empty())
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, ControlError> {
        if let Some(range) = &lease.range {
            return self.renew_range(lease, range, ttl).await;
        }
        let renewed = self
            .fenced_write(
                &self.statements.renew,
                lease,
                SqlParam::Float(ttl.as_secs_f64()),
            )
            .await?;
        Ok(renewed == 1)
    }

    async fn current(&self, lease: &Lease) -> Result<MigrationRecord, ControlError> {
        self.held_record(lease).await
    }

    async fn set_rows_total(
        &self,
        lease: &Lease,
        rows_total: Option<u64>,
    ) -> Result<(), ControlError> {
        let total = rows_total.map_or(SqlParam::Null, |n| SqlParam::Int(to_i64(n)));
        let updated = self
            .fenced_write(&self.statements.set_rows_total, lease, total)
            .await?;
        fenced(updated, lease)
    }

    async fn write_checkpoint(
        &self,
        lease: &Lease,
        commit: &BatchCommit,
    ) -> Result<(), ControlError> {
        let mut tx = self.write().await?;
        self.checkpoint(tx.as_mut(), lease, commit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn write_checkpoint_in(
        &self,
        tx: &mut dyn SqlTx,
        lease: &Lease,
        commit: &BatchCommit,
    ) -> Result<(), ControlError> {
        self.checkpoint(tx, lease, commit).await
    }

    async fn finish(&self, lease: &Lease) -> Result<(), ControlError> {
        self.end(lease, Ending::Finished).await
    }

    async fn fail(&self, lease: &Lease, reason: &str) -> Result<(), ControlError> {
        match &lease.range {
            Some(range) => self.fail_from_range(lease, range, reason).await,
            None => self.end(lease, Ending::Failed(reason)).await,
        }
    }

    async fn release(&self, lease: &Lease) -> Result<(), ControlError> {
        match &lease.range {
            Some(range) => self.release_range(lease, range).await,
            None => self.end(lease, Ending::Released).await,
        }
    }

    async fn set_throttled(
        &self,
        lease: &Lease,
        throttled: Option<&str>,
        detail: Value,
    ) -> Result<(), ControlError> {
        let mut tx = self.write().await?;
        if let Some(range) = &lease.range {
            self.throttled_from_range(tx.as_mut(), lease, range, throttled)
                .await?;
        } else {
            let mut params = lease.fence_params();
            params.push(throttled.map_or(SqlParam::Null, |r| SqlParam::Text(r.to_owned())));
            fenced(
                tx.execute(&self.statements.set_throttled, &params).await?,
                lease,
            )?;
        }
        let kind = if throttled.is_some() {
            EventKind::Throttled
        } else {
            EventKind::Unthrottled
        };
        self.insert_event(tx.as_mut(), &lease.name, kind, &lease.worker_id, &detail)
            .await?;
        self.commit(tx).await
    }

    async fn record_event(
        &self,
        name: &str,
        kind: EventKind,
        actor: &str,
        detail: Value,
    ) -> Result<(), ControlError> {
        let mut tx = self.write().await?;
        self.insert_event(tx.as_mut(), name, kind, actor, &detail)
            .await?;
        self.commit(tx).await
    }

    async fn record_event_once(
        &self,
        name: &str,
        kind: EventKind,
        actor: &str,
        detail: Value,
        within: Duration,
    ) -> Result<bool, ControlError> {
        let after =
            Utc::now() - chrono::Duration::from_std(within).unwrap_or(chrono::Duration::MAX);
        let mut tx = self.write().await?;
        let recorded = self
            .insert_event_unless(tx.as_mut(), (name, kind, actor, &detail), Some(after))
            .await?;
        self.commit(tx).await?;
        Ok(recorded)
    }

    async fn ranges_of(&self, migration_id: &str) -> Result<Vec<RangeRecord>, ControlError> {
        self.ranges_of_id(migration_id).await
    }

    async fn plan_ranges(&self, lease: &Lease, plans: &[RangePlan]) -> Result<bool, ControlError> {
        self.plan(lease, plans).await
    }

    async fn claim_range(
        &self,
        worker_id: &str,
        ttl: Duration,
        scripts: &[String],
        migration_id: Option<&str>,
    ) -> Result<Option<Claim>, ControlError> {
        self.claim_free_range(worker_id, ttl, scripts, migration_id)
            .await
    }

    async fn split_range(
        &self,
        worker_id: &str,
        ttl: Duration,
        migration_id: &str,
        victim: &RangeRecord,
        at: &Value,
        rows: Option<u64>,
    ) -> Result<Option<Claim>, ControlError> {
        self.cut(worker_id, ttl, migration_id, victim, at, rows)
            .await
    }

    async fn current_range(&self, lease: &Lease) -> Result<HeldRange, ControlError> {
        match &lease.range {
            Some(range) => self.held_range(lease, range).await,
            None => Err(ControlError::LeaseLost(lease.name.clone())),
        }
    }
}
