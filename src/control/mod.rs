//! The control store: the `background_migrations` table and its events and batches.
//!
//! The contract is split by role, as each caller uses it: [`Registrar`] (schema and registration, at start),
//! [`LeaseStore`] (a worker's claim, heartbeat, checkpoints and outcome, every write fenced on its lease),
//! [`OperatorStore`] (validated actions and args edits) and [`HistoryStore`] (the reads behind `status`, `show` and
//! the web UI). [`ControlStore`] is all four.
//!
//! Layout: one implementation for every SQL store, [`SqlControlStore`] (`sql_store.rs`: the type, schema and
//! registration), written once over the store's transactions; [`dialect`] holds the few fragments Postgres and
//! SQLite spell differently; `lease.rs` the worker's fenced writes; `operator.rs` the operator's side; `read.rs`
//! the rows as text and their decoding; `changes.rs` the change signal; `record.rs` the rows as Rust values.

mod changes;
mod dialect;
mod lease;
mod lenient_json;
mod operator;
mod ranges;
mod read;
mod record;
mod sql_store;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::Notify;

use crate::args::ArgsError;
use crate::definition::Registration;
use crate::registry::Registry;
use crate::status::{Action, TransitionError};
use crate::store::{DatabaseId, SqlTx, StoreError};

pub use self::ranges::HeldRange;
pub use self::record::{
    BatchCommit, BatchRecord, Claim, EventKind, EventRecord, Lease, MigrationRecord, RangeHold,
    RangePlan, RangeRecord,
};
pub use self::sql_store::SqlControlStore;

/// How many recent batches the batches table keeps per migration.
pub const BATCHES_KEPT: i64 = 1000;

/// What can go wrong talking to the control store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The store failed (transient or not: see [`StoreError::is_transient`]).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No row with that name.
    #[error("no background migration named {0:?}; `bgmigrate status` lists them")]
    NotFound(String),
    /// An operator action that the migration's status does not allow.
    #[error("{name}: {source}")]
    Transition {
        /// The migration.
        name: String,
        /// Which transition was refused.
        #[source]
        source: TransitionError,
    },
    /// Args that did not validate; nothing was written.
    #[error("{name}: {source}; nothing was changed")]
    InvalidArgs {
        /// The migration.
        name: String,
        /// What is wrong with them.
        #[source]
        source: ArgsError,
    },
    /// The caller's lease is gone (taken over, paused or cancelled); nothing was written.
    #[error("the lease on {0} was lost; nothing was written")]
    LeaseLost(String),
    /// The table holds something this build cannot read.
    #[error("control table: {0}")]
    Corrupt(String),
}

impl ControlError {
    /// Whether a retry may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, ControlError::Store(err) if err.is_transient())
    }
}

/// Setting up: the tables, and the rows of the definitions a release ships.
#[async_trait]
pub trait Registrar: Send + Sync {
    /// Creates or upgrades the control tables, idempotently, under a lock.
    async fn ensure_schema(&self) -> Result<(), ControlError>;

    /// Inserts rows for definitions not yet registered (never touching existing rows or their `args`); a row whose
    /// script `registry` does not know is inserted as failed with a reason. Returns the names inserted.
    async fn register(
        &self,
        registrations: &[Registration],
        registry: &Registry,
    ) -> Result<Vec<String>, ControlError>;
}

/// A worker's side: claim a migration, keep the lease, checkpoint batches, record the outcome. Every write is
/// fenced on the lease (owner + epoch + still running), so a stalled worker cannot overwrite its successor.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// The database holding the control table: a batch's transaction in this database also carries its checkpoint.
    fn database(&self) -> &DatabaseId;

    /// Atomically claims the next runnable migration among `scripts`: pending and not waiting on another, or
    /// running with an expired lease (a takeover).
    async fn claim_next(
        &self,
        worker_id: &str,
        ttl: Duration,
        scripts: &[String],
    ) -> Result<Option<Claim>, ControlError>;

    /// Whether a migration among `scripts` is runnable as [`LeaseStore::claim_next`] sees it, locks aside: `true`
    /// while `claim_next` found none means another worker's claim of it is in flight (its row is locked until that
    /// claim commits), so a worker draining with `--exit-when-done` waits for it instead of exiting.
    async fn claimable(&self, scripts: &[String]) -> Result<bool, ControlError>;

    /// Renews the lease; `false` when it is no longer held.
    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, ControlError>;

    /// The row, if the lease is still held ([`ControlError::LeaseLost`] otherwise).
    async fn current(&self, lease: &Lease) -> Result<MigrationRecord, ControlError>;

    /// Records the row estimate.
    async fn set_rows_total(
        &self,
        lease: &Lease,
        rows_total: Option<u64>,
    ) -> Result<(), ControlError>;

    /// Writes a batch's checkpoint and progress in a transaction of its own.
    async fn write_checkpoint(
        &self,
        lease: &Lease,
        commit: &BatchCommit,
    ) -> Result<(), ControlError>;

    /// The same inside `tx`, a transaction of the control database ([`LeaseStore::database`]), so a batch and
    /// its checkpoint commit together.
    async fn write_checkpoint_in(
        &self,
        tx: &mut dyn SqlTx,
        lease: &Lease,
        commit: &BatchCommit,
    ) -> Result<(), ControlError>;

    /// Marks the migration finished.
    async fn finish(&self, lease: &Lease) -> Result<(), ControlError>;

    /// Marks the migration failed with a reason a person can act on.
    async fn fail(&self, lease: &Lease, reason: &str) -> Result<(), ControlError>;

    /// Gives the migration back (pending, checkpoint kept), e.g. on shutdown.
    async fn release(&self, lease: &Lease) -> Result<(), ControlError>;

    /// Says why the migration holds back now (`None`: it no longer does), with an event carrying `detail`.
    async fn set_throttled(
        &self,
        lease: &Lease,
        throttled: Option<&str>,
        detail: Value,
    ) -> Result<(), ControlError>;

    /// Appends an event (batch-size changes, retried batches).
    async fn record_event(
        &self,
        name: &str,
        kind: EventKind,
        actor: &str,
        detail: Value,
    ) -> Result<(), ControlError>;

    /// Records an event of `kind` for migration `name` unless it has one of the same `topic` (a field of `detail`,
    /// or none) newer than `within` (by the worker's clock); says whether it did. For what any of a migration's streams may notice (advice): the first to say it does.
    /// Two streams that both write within the same few milliseconds may both land.
    async fn record_event_once(
        &self,
        name: &str,
        kind: EventKind,
        actor: &str,
        detail: Value,
        within: Duration,
    ) -> Result<bool, ControlError>;

    // Key ranges (`parallelism` > 1). A lease with [`Lease::range`] set holds one range: renewal, checkpoints,
    // failure, release and throttling above then act on that range (and fail or throttle the whole migration).

    /// The key ranges of migration `migration_id`, in range order (none while it runs as one stream).
    async fn ranges_of(&self, migration_id: &str) -> Result<Vec<RangeRecord>, ControlError>;

    /// Creates the migration's ranges under `lease` (the migration's own), unless it has some already: a previous
    /// holder planned them, and they keep their checkpoints. Returns whether it created them.
    async fn plan_ranges(&self, lease: &Lease, plans: &[RangePlan]) -> Result<bool, ControlError>;

    /// Claims a free range (never leased, given back, or its lease expired) of a running migration among
    /// `scripts` (of `migration_id` only, when given) that holds fewer ranges than its `parallelism`.
    async fn claim_range(
        &self,
        worker_id: &str,
        ttl: Duration,
        scripts: &[String],
        migration_id: Option<&str>,
    ) -> Result<Option<Claim>, ControlError>;

    /// Work stealing: ends range `victim` (as read) at checkpoint `at` and claims the rest, with `rows` estimated
    /// rows, as a new range for `worker_id`; `None` when the victim moved or was split meanwhile.
    async fn split_range(
        &self,
        worker_id: &str,
        ttl: Duration,
        migration_id: &str,
        victim: &RangeRecord,
        at: &Value,
        rows: Option<u64>,
    ) -> Result<Option<Claim>, ControlError>;

    /// The migration's row and the range `lease` holds, while it holds it ([`ControlError::LeaseLost`] otherwise).
    async fn current_range(&self, lease: &Lease) -> Result<HeldRange, ControlError>;
}

/// The operator's side: status transitions and args edits, validated first and recorded with their actor.
#[async_trait]
pub trait OperatorStore: Send + Sync {
    /// Applies an operator action (validated transition); `from_start` (retry only) also clears the checkpoint.
    async fn act(
        &self,
        name: &str,
        action: Action,
        from_start: bool,
        actor: &str,
    ) -> Result<MigrationRecord, ControlError>;

    /// Merges a JSON patch into `args`, validated first: a bad patch changes nothing.
    async fn set_args(
        &self,
        name: &str,
        patch: &Value,
        actor: &str,
    ) -> Result<MigrationRecord, ControlError>;
}

/// The reads behind `status`, `show`, the web UI and a worker's drain.
#[async_trait]
pub trait HistoryStore: Send + Sync {
    /// Every migration, in run order.
    async fn list(&self) -> Result<Vec<MigrationRecord>, ControlError>;

    /// One migration.
    async fn get(&self, name: &str) -> Result<MigrationRecord, ControlError>;

    /// The latest events of one migration, newest first.
    async fn events(&self, name: &str, limit: i64) -> Result<Vec<EventRecord>, ControlError>;

    /// The newest event of `kind` of one migration, however many events of other kinds came after it (the web
    /// UI's standing notice of the latest advice).
    async fn latest_event(
        &self,
        name: &str,
        kind: EventKind,
    ) -> Result<Option<EventRecord>, ControlError>;

    /// The latest batches of one migration, newest first.
    async fn batches(&self, name: &str, limit: i64) -> Result<Vec<BatchRecord>, ControlError>;

    /// The key ranges of one migration, in range order (none unless it runs with `parallelism` > 1).
    async fn ranges(&self, name: &str) -> Result<Vec<RangeRecord>, ControlError>;

    /// A signal woken whenever a row changes (registrations, operator actions, finished migrations); wake-ups may
    /// be missed while reconnecting, so callers also poll.
    async fn changes(&self) -> Result<Arc<Notify>, ControlError>;
}

/// What the operator surfaces (web UI, API, metrics) use: reads and operator actions, nothing of a worker's.
pub trait OperatorView: OperatorStore + HistoryStore {}

impl<T: OperatorStore + HistoryStore> OperatorView for T {}

/// The whole control store: every role. Implemented for anything that implements them all.
pub trait ControlStore: Registrar + LeaseStore + OperatorView {}

impl<T: Registrar + LeaseStore + OperatorView> ControlStore for T {}
