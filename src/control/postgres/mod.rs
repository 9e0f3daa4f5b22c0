//! The control store on Postgres.
//!
//! Layout: this file holds the type, schema setup, registration and the change listener; [`lease`] the worker's
//! fenced writes; [`operator`] the operator's validated actions; [`read`] the queries behind `status` and `show`.

mod lease;
mod operator;
mod read;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Postgres};
use tokio::sync::{Notify, OnceCell};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    BatchCommit, BatchRecord, Claim, ControlError, ControlStore, EventKind, EventRecord, Lease,
    MigrationRecord,
};
use crate::definition::Registration;
use crate::registry::{Registry, unknown_script};
use crate::status::Action;
use crate::store::{PgStore, SqlTx, StoreError};

/// The channel every change is announced on.
const CHANNEL: &str = "bgmigrate_changes";
/// Advisory lock key under which the control schema is created or upgraded.
const SCHEMA_LOCK: i64 = 0x6267_6d69_6772_0001;

/// `background_migrations` and friends in a Postgres database.
pub struct PgControlStore {
    pool: PgPool,
    id: String,
    listener: OnceCell<(Arc<Notify>, DropGuard)>,
}

impl PgControlStore {
    /// A control store on `store`'s database.
    pub fn new(store: &PgStore) -> Self {
        Self {
            pool: store.pool().clone(),
            id: crate::store::SqlStore::id(store).to_owned(),
            listener: OnceCell::new(),
        }
    }

    fn sql_err(context: &str) -> impl FnOnce(sqlx::Error) -> ControlError + '_ {
        move |err| ControlError::Store(StoreError::sql(context)(err))
    }
}

/// Inserts an event and announces the change, inside the caller's transaction or on the pool.
async fn insert_event<'e, E>(
    executor: E,
    name: &str,
    kind: EventKind,
    actor: &str,
    detail: &Value,
) -> Result<(), ControlError>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    sqlx::query(
        "WITH e AS (INSERT INTO background_migration_events (migration_name, kind, actor, detail) \
         VALUES ($1, $2, $3, $4)) SELECT pg_notify($5, $1)",
    )
    .bind(name)
    .bind(kind.as_str())
    .bind(actor)
    .bind(detail)
    .bind(CHANNEL)
    .execute(executor)
    .await
    .map_err(PgControlStore::sql_err("record an event"))?;
    Ok(())
}

#[async_trait]
impl ControlStore for PgControlStore {
    fn store_id(&self) -> &str {
        &self.id
    }

    async fn ensure_schema(&self) -> Result<(), ControlError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(Self::sql_err("open the control store"))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SCHEMA_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(Self::sql_err("lock the control schema"))?;
        sqlx::raw_sql(include_str!("sql/schema.sql"))
            .execute(&mut *tx)
            .await
            .map_err(Self::sql_err("create or upgrade the control tables"))?;
        tx.commit()
            .await
            .map_err(Self::sql_err("commit the control schema"))
    }

    async fn register(
        &self,
        registrations: &[Registration],
        registry: &Registry,
    ) -> Result<Vec<String>, ControlError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(Self::sql_err("begin registration"))?;
        let mut inserted = Vec::new();
        for reg in registrations {
            let unknown =
                (!registry.knows(&reg.script)).then(|| unknown_script(&reg.script, registry));
            let row: Option<String> = sqlx::query_scalar(
                "INSERT INTO background_migrations \
                 (name, script, args, definition, depends_on, status, failed_at, failed_reason) \
                 VALUES ($1, $2, $3, $4, $5, CASE WHEN $6::text IS NULL THEN 'pending' ELSE 'failed' END, \
                         CASE WHEN $6::text IS NULL THEN NULL ELSE now() END, $6) \
                 ON CONFLICT (name) DO NOTHING RETURNING name",
            )
            .bind(&reg.name)
            .bind(&reg.script)
            .bind(&reg.args)
            .bind(&reg.params)
            .bind(&reg.depends_on)
            .bind(&unknown)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Self::sql_err("register a background migration"))?;
            if let Some(name) = row {
                let detail =
                    json!({"script": reg.script, "args": reg.args, "failed_reason": unknown});
                insert_event(
                    &mut *tx,
                    &name,
                    EventKind::Registered,
                    "registration",
                    &detail,
                )
                .await?;
                inserted.push(name);
            }
        }
        tx.commit()
            .await
            .map_err(Self::sql_err("commit registration"))?;
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
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(Self::sql_err("begin a checkpoint"))?;
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
        let Some(pg) = tx
            .as_any_mut()
            .downcast_mut::<crate::store::postgres::PgTx>()
        else {
            return Err(ControlError::Corrupt(
                "a batch transaction of another store was handed to the Postgres control store"
                    .into(),
            ));
        };
        lease::checkpoint(&mut pg.tx, lease, commit).await
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
        insert_event(&self.pool, name, kind, actor, &detail).await
    }

    async fn changes(&self) -> Result<Arc<Notify>, ControlError> {
        let (notify, _) = self
            .listener
            .get_or_try_init(|| async {
                let mut listener = PgListener::connect_with(&self.pool)
                    .await
                    .map_err(Self::sql_err("listen for changes"))?;
                listener
                    .listen(CHANNEL)
                    .await
                    .map_err(Self::sql_err("listen for changes"))?;
                let notify = Arc::new(Notify::new());
                let stop = CancellationToken::new();
                tokio::spawn(forward_notifications(
                    listener,
                    notify.clone(),
                    stop.clone(),
                ));
                Ok::<_, ControlError>((notify, stop.drop_guard()))
            })
            .await?;
        Ok(notify.clone())
    }
}

/// Wakes `notify` on every notification until `stop`; reconnects with capped backoff (the pollers cover the gap).
async fn forward_notifications(
    mut listener: PgListener,
    notify: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            received = listener.recv() => match received {
                Ok(_) => {
                    backoff = Duration::from_millis(100);
                    notify.notify_waiters();
                }
                Err(err) => {
                    tracing::debug!(error = %err, "change listener lost its connection; reconnecting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    notify.notify_waiters();
                }
            }
        }
    }
}
