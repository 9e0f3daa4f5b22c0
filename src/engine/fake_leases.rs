//! An in-memory [`LeaseStore`] and a migration that counts, for the engine's unit tests: small enough to read at a
//! glance, and fast under `tokio::time::pause`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use serde_json::{Value, json};

use crate::control::{
    BatchCommit, Claim, ControlError, EventKind, HeldRange, Lease, LeaseStore, MigrationRecord,
    RangePlan, RangeRecord,
};
use crate::migration::{Batch, BatchOutcome, Migration, MigrationError};
use crate::status::Status;
use crate::store::{DatabaseId, SqlTx, StoreError};

/// What the engine did to the lease, in order.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    pub(crate) renewals: usize,
    pub(crate) checkpoints: Vec<Value>,
    pub(crate) endings: Vec<String>,
}

/// How renewals answer.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Renewal {
    /// Every renewal succeeds.
    Holds,
    /// Renewals succeed until this many were made; then the lease is gone (taken over).
    LostAfter(usize),
    /// Every renewal fails with a connection error.
    Unreachable,
}

/// The fake store: one migration, leased to one worker.
pub(crate) struct FakeLeases {
    pub(crate) seen: Mutex<Seen>,
    renewal: Renewal,
    database: DatabaseId,
    /// The migration's args as every re-read returns them.
    args: Value,
}

impl FakeLeases {
    pub(crate) fn new(renewal: Renewal) -> Arc<Self> {
        Self::with_args(renewal, json!({"batchSize": 10}))
    }

    /// The same store, its migration's args being `args` (`{}`: adaptive sizing from the default size).
    pub(crate) fn with_args(renewal: Renewal, args: Value) -> Arc<Self> {
        Arc::new(Self {
            seen: Mutex::new(Seen::default()),
            renewal,
            database: DatabaseId::new("fake://control"),
            args,
        })
    }

    pub(crate) fn lease() -> Lease {
        Lease {
            migration_id: "1".into(),
            name: "0001_count".into(),
            worker_id: "w1".into(),
            epoch: 1,
            range: None,
        }
    }

    /// A claim of the counting migration, as the claim loop would hand it over.
    pub(crate) fn claim() -> Claim {
        Claim {
            record: record(json!({}), json!({"batchSize": 10}), Status::Running),
            lease: Self::lease(),
            took_over_from: None,
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().expect("poisoned")
    }
}

fn record(state: Value, args: Value, status: Status) -> MigrationRecord {
    MigrationRecord {
        id: "1".into(),
        name: "0001_count".into(),
        script: "count".into(),
        args,
        state,
        status,
        definition: json!({}),
        depends_on: None,
        started_at: None,
        finished_at: None,
        failed_at: None,
        failed_reason: None,
        worker_id: Some("w1".into()),
        locked_at: None,
        lease_expires_at: None,
        attempts: 1,
        rows_done: 0,
        rows_total: Some(100),
        bytes_done: 0,
        batch_size: None,
        last_batch_ms: None,
        rows_per_sec: None,
        updated_at: Utc::now(),
        throttled: None,
        unreadable: None,
    }
}

#[async_trait]
impl LeaseStore for FakeLeases {
    fn database(&self) -> &DatabaseId {
        &self.database
    }

    async fn claim_next(
        &self,
        _worker_id: &str,
        _ttl: Duration,
        _scripts: &[String],
    ) -> Result<Option<Claim>, ControlError> {
        Ok(Some(Self::claim()))
    }

    async fn claimable(&self, _scripts: &[String]) -> Result<bool, ControlError> {
        Ok(true)
    }

    async fn renew_lease(&self, _lease: &Lease, _ttl: Duration) -> Result<bool, ControlError> {
        let mut seen = self.seen();
        match self.renewal {
            Renewal::Holds => {
                seen.renewals += 1;
                Ok(true)
            }
            Renewal::LostAfter(n) if seen.renewals < n => {
                seen.renewals += 1;
                Ok(true)
            }
            Renewal::LostAfter(_) => Ok(false),
            Renewal::Unreachable => Err(ControlError::Store(StoreError::sql("renew")(
                sqlx::Error::PoolTimedOut,
            ))),
        }
    }

    async fn current(&self, _lease: &Lease) -> Result<MigrationRecord, ControlError> {
        let state = self.seen().checkpoints.last().cloned().unwrap_or(json!({}));
        Ok(record(state, self.args.clone(), Status::Running))
    }

    async fn set_rows_total(&self, _: &Lease, _: Option<u64>) -> Result<(), ControlError> {
        Ok(())
    }

    async fn write_checkpoint(&self, _: &Lease, commit: &BatchCommit) -> Result<(), ControlError> {
        self.seen().checkpoints.push(commit.state.clone());
        Ok(())
    }

    async fn write_checkpoint_in(
        &self,
        _: &mut dyn SqlTx,
        _: &Lease,
        _: &BatchCommit,
    ) -> Result<(), ControlError> {
        unreachable!("the counting migration has no SQL transaction")
    }

    async fn finish(&self, _: &Lease) -> Result<(), ControlError> {
        self.seen().endings.push("finished".into());
        Ok(())
    }

    async fn fail(&self, _: &Lease, reason: &str) -> Result<(), ControlError> {
        self.seen().endings.push(format!("failed: {reason}"));
        Ok(())
    }

    async fn release(&self, _: &Lease) -> Result<(), ControlError> {
        self.seen().endings.push("released".into());
        Ok(())
    }

    async fn set_throttled(
        &self,
        _: &Lease,
        _: Option<&str>,
        _: Value,
    ) -> Result<(), ControlError> {
        Ok(())
    }

    async fn record_event(
        &self,
        _: &str,
        _: EventKind,
        _: &str,
        _: Value,
    ) -> Result<(), ControlError> {
        Ok(())
    }

    async fn record_event_once(
        &self,
        _: &str,
        _: EventKind,
        _: &str,
        _: Value,
        _: Duration,
    ) -> Result<bool, ControlError> {
        Ok(true)
    }

    /// The counting migration runs as one stream: it has no ranges, and none can be claimed.
    async fn ranges_of(&self, _: &str) -> Result<Vec<RangeRecord>, ControlError> {
        Ok(Vec::new())
    }

    async fn plan_ranges(&self, _: &Lease, _: &[RangePlan]) -> Result<bool, ControlError> {
        unreachable!("the fake runs one stream")
    }

    async fn claim_range(
        &self,
        _: &str,
        _: Duration,
        _: &[String],
        _: Option<&str>,
    ) -> Result<Option<Claim>, ControlError> {
        Ok(None)
    }

    async fn split_range(
        &self,
        _: &str,
        _: Duration,
        _: &str,
        _: &RangeRecord,
        _: &Value,
        _: Option<u64>,
    ) -> Result<Option<Claim>, ControlError> {
        unreachable!("the fake runs one stream")
    }

    async fn current_range(&self, _: &Lease) -> Result<HeldRange, ControlError> {
        unreachable!("the fake runs one stream")
    }
}

/// Counts to `batches`, one second of (paused) time per batch; its checkpoint is `{"n": batches done}`.
pub(crate) struct Counting {
    pub(crate) batches: u64,
}

#[async_trait]
impl Migration for Counting {
    async fn validate(&self) -> Result<(), MigrationError> {
        Ok(())
    }

    async fn estimate(&self) -> Result<Option<u64>, MigrationError> {
        Ok(Some(self.batches * 10))
    }

    async fn run_batch(&self, batch: &mut Batch<'_>) -> Result<BatchOutcome, MigrationError> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let n = batch.state["n"].as_u64().unwrap_or(0) + 1;
        Ok(BatchOutcome {
            state: json!({ "n": n }),
            done: n >= self.batches,
            rows: 10,
            bytes: 0,
        })
    }
}
