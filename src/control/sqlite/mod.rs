//! The control store on SQLite: the same tables as on Postgres (JSON and timestamps as TEXT), the same fenced
//! writes, for one machine and the `bgmigrate demo`.
//!
//! Several worker *processes* may share one file: every write runs in a `BEGIN IMMEDIATE` transaction, so a claim's
//! read and its update happen under SQLite's single write lock, and `busy_timeout` queues the other writers. SQLite
//! has no LISTEN: [`ControlStore::changes`] wakes on this process's own writes; the runner's polling covers other
//! processes.
//!
//! Layout: this file holds the type, schema setup, registration and the change signal; [`lease`] the worker's fenced
//! writes; [`operator`] the operator's validated actions; [`read`] the queries behind `status` and `show`.

mod lease;
mod operator;
mod read;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use sqlx::{Sqlite, SqlitePool, Transaction};
use tokio::sync::Notify;

use super::{
    BatchCommit, BatchRecord, Claim, ControlError, ControlStore, EventKind, EventRecord, Lease,
    MigrationRecord,
};
use crate::definition::Registration;
use crate::registry::{Registry, unknown_script};
use crate::status::Action;
use crate::store::sqlite::{BEGIN_IMMEDIATE, SqliteTx};
use crate::store::{SqlStore, SqlTx, SqliteStore, StoreError};

/// `background_migrations` and friends in a SQLite database file.
pub struct SqliteControlStore {
    pool: SqlitePool,
    id: String,
    changed: Arc<Notify>,
}

impl SqliteControlStore {
    /// A control store in `store`'s database file (sharing its pool).
    pub fn new(store: &SqliteStore) -> Self {
        Self {
            pool: store.pool().clone(),
            id: store.id().to_owned(),
            changed: Arc::new(Notify::new()),
        }
    }

    fn sql_err(context: &str) -> impl FnOnce(sqlx::Error) -> ControlError + '_ {
        move |err| ControlError::Store(StoreError::sql(context)(err))
    }

    /// Opens a write transaction (`BEGIN IMMEDIATE`: the write lock is taken now, or waited for).
    async fn write_tx(&self, what: &str) -> Result<Transaction<'static, Sqlite>, ControlError> {
        self.pool
            .begin_with(BEGIN_IMMEDIATE)
            .await
            .map_err(Self::sql_err(what))
    }

    /// Commits a write transaction and wakes this process's waiters.
    async fn commit(
        &self,
        tx: Transaction<'static, Sqlite>,
        what: &str,
    ) -> Result<(), ControlError> {
        tx.commit().await.map_err(Self::sql_err(what))?;
        self.changed.notify_waiters();
        Ok(())
    }
}

/// Inserts an event on `conn` (the caller's transaction).
async fn insert_event(
    conn: &mut sqlx::SqliteConnection,
    name: &str,
    kind: EventKind,
    actor: &str,
    detail: &Value,
) -> Result<(), ControlError> {
    sqlx::query(
        "INSERT INTO background_migration_events (migration_name, kind, actor, detail) VALUES ($1, $2, $3, $4)",
    )
    .bind(name)
    .bind(kind.as_str())
    .bind(actor)
    .bind(detail.to_string())
    .execute(&mut *conn)
    .await
    .map_err(SqliteControlStore::sql_err("record an event"))?;
    Ok(())
}

#[async_trait]
impl ControlStore for SqliteControlStore {
    fn store_id(&self) -> &str {
        &self.id
    }

    async fn ensure_schema(&self) -> Result<(), ControlError> {
        let mut tx = self.write_tx("open the control store").await?;
        sqlx::raw_sql(include_str!("sql/schema.sql"))
            .execute(&mut *tx)
            .await
            .map_err(Self::sql_err("create the control tables"))?;
        tx.commit()
            .await
            .map_err(Self::sql_err("commit the control schema"))
    }

    async fn register(
        &self,
        registrations: &[Registration],
        registry: &Registry,
    ) -> Result<Vec<String>, ControlError> {
        let mut tx = self.write_tx("begin registration").await?;
        let mut inserted = Vec::new();
        for reg in registrations {
            let unknown =
                (!registry.knows(&reg.script)).then(|| unknown_script(&reg.script, registry));
            let depends_on = reg
                .depends_on
                .as_ref()
                .map(|names| Value::from(names.clone()).to_string());
            let row: Option<String> = sqlx::query_scalar(include_str!("sql/register.sql"))
                .bind(&reg.name)
                .bind(&reg.script)
                .bind(reg.args.to_string())
                .bind(reg.params.to_string())
                .bind(depends_on)
                .bind(&unknown)
                .fetch_optional(&mut *tx)
                .await
                .map_err(Self::sql_err("register a background migration"))?;
            if let Some(name) = row {
                let detail =
                    json!({"script": reg.script, "args": reg.args, "failed_reason": unknown});
                insert_event(
                    &mut tx,
                    &name,
                    EventKind::Registered,
                    "registration",
                    &detail,
                )
                .await?;
                inserted.push(name);
            }
        }
        self.commit(tx, "commit registration").await?;
        Ok(inserted)
    }

    async fn claim_next(
        &self,
        worker_id: &str,
        ttl: Duration,
        scripts: &[String],
    ) -> Result<Option<Claim>, ControlError> {
        self.claim(worker_id, ttl, scripts).await
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, ControlError> {
        self.renew(lease, ttl).await
    }

    async fn current(&self, lease: &Lease) -> Result<MigrationRecord, ControlError> {
        self.held_record(lease).await
    }

    async fn set_rows_total(
        &self,
        lease: &Lease,
        rows_total: Option<u64>,
    ) -> Result<(), ControlError> {
        self.fenced_set_rows_total(lease, rows_total).await
    }

    async fn write_checkpoint(
        &self,
        lease: &Lease,
        commit: &BatchCommit,
    ) -> Result<(), ControlError> {
        let mut tx = self.write_tx("begin a checkpoint").await?;
        lease::checkpoint(&mut tx, lease, commit).await?;
        tx.commit()
            .await
            .map_err(Self::sql_err("commit a checkpoint"))
    }

    async fn write_checkpoint_in(
        &self,
        tx: &mut dyn SqlTx,
        lease: &Lease,
        commit: &BatchCommit,
    ) -> Result<(), ControlError> {
        let Some(sqlite) = tx.as_any_mut().downcast_mut::<SqliteTx>() else {
            return Err(ControlError::Corrupt(
                "a batch transaction of another store was handed to the SQLite control store"
                    .into(),
            ));
        };
        lease::checkpoint(&mut sqlite.tx, lease, commit).await
    }

    async fn finish(&self, lease: &Lease) -> Result<(), ControlError> {
        self.end(lease, lease::Ending::Finished).await
    }

    async fn fail(&self, lease: &Lease, reason: &str) -> Result<(), ControlError> {
        self.end(lease, lease::Ending::Failed(reason)).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), ControlError> {
        self.end(lease, lease::Ending::Released).await
    }

    async fn list(&self) -> Result<Vec<MigrationRecord>, ControlError> {
        self.list_records().await
    }

    async fn get(&self, name: &str) -> Result<MigrationRecord, ControlError> {
        self.get_record(name).await
    }

    async fn events(&self, name: &str, limit: i64) -> Result<Vec<EventRecord>, ControlError> {
        self.list_events(name, limit).await
    }

    async fn batches(&self, name: &str, limit: i64) -> Result<Vec<BatchRecord>, ControlError> {
        self.list_batches(name, limit).await
    }

    async fn act(
        &self,
        name: &str,
        action: Action,
        from_start: bool,
        actor: &str,
    ) -> Result<MigrationRecord, ControlError> {
        self.apply_action(name, action, from_start, actor).await
    }

    async fn set_args(
        &self,
        name: &str,
        patch: &Value,
        actor: &str,
    ) -> Result<MigrationRecord, ControlError> {
        self.patch_args(name, patch, actor).await
    }

    async fn record_event(
        &self,
        name: &str,
        kind: EventKind,
        actor: &str,
        detail: Value,
    ) -> Result<(), ControlError> {
        let mut tx = self.write_tx("begin an event").await?;
        insert_event(&mut tx, name, kind, actor, &detail).await?;
        self.commit(tx, "commit an event").await
    }

    async fn changes(&self) -> Result<Arc<Notify>, ControlError> {
        Ok(self.changed.clone())
    }
}
