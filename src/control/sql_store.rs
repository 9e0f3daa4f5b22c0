//! [`SqlControlStore`]: the control tables in a SQL store (Postgres or SQLite), written once over the store's own
//! transactions. This file holds the type, its statements, schema setup and registration; the roles live beside it.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::changes::Changes;
use super::dialect::{ControlSql, FENCE};
use super::read::{RECORD_COLUMNS, select_list};
use super::{ControlError, EventKind, Registrar};
use crate::definition::Registration;
use crate::registry::{Registry, unknown_script};
use crate::store::{PgStore, SqlParam, SqlStore, SqlTx, SqliteStore};

/// `background_migrations` and its events and batches tables in a Postgres database or a SQLite file.
///
/// On Postgres, every change is announced with `NOTIFY`, so other processes wake at once. On SQLite several worker
/// *processes* may share one file: every write runs in `BEGIN IMMEDIATE`, so a claim's read and its update happen
/// under the file's single write lock, and `busy_timeout` queues the other writers; there is no `LISTEN`, so
/// [`HistoryStore::changes`](super::HistoryStore::changes) wakes on this process's own writes at once and on other
/// processes' within about 250 ms (a watcher of the file's `PRAGMA data_version`).
pub struct SqlControlStore {
    pub(super) store: Arc<dyn SqlStore>,
    pub(super) sql: ControlSql,
    pub(super) statements: Statements,
    pub(super) changes: Changes,
}

/// The workflows' statements, rendered once for the store's dialect.
pub(super) struct Statements {
    pub(super) register: String,
    pub(super) insert_event: String,
    /// `insert_event` unless the migration has an event of the same kind and `topic` after `$5` (an RFC 3339 time).
    pub(super) insert_event_once: String,
    pub(super) claim_candidate: String,
    pub(super) claimable: String,
    pub(super) claim: String,
    pub(super) renew: String,
    pub(super) set_rows_total: String,
    pub(super) write_checkpoint: String,
    pub(super) record_batch: String,
    /// The batches table's trim, run after `record_batch` where that statement does not trim it itself (SQLite):
    /// `$1` name, `$2` the highest id to drop.
    pub(super) trim_batches: Option<String>,
    pub(super) held_record: String,
    pub(super) record_by_name: String,
    pub(super) list_records: String,
    pub(super) lock_status: String,
    pub(super) lock_args: String,
    pub(super) write_args: String,
    pub(super) set_throttled: String,
    pub(super) ranges: super::ranges::RangeStatements,
}

/// `template` with each `{key}` replaced by its value.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    values
        .iter()
        .fold(template.to_owned(), |sql, (key, value)| {
            sql.replace(&format!("{{{key}}}"), value)
        })
}

impl Statements {
    fn render(sql: ControlSql) -> Self {
        let now = sql.now();
        let records = select_list(sql, RECORD_COLUMNS);
        let trimming = sql.insert_trimming(super::BATCHES_KEPT);
        let candidate = |lock: &str| {
            fill(
                include_str!("sql/claim_candidate.sql"),
                &[
                    ("scripts", &sql.names_of_param(1, "s")),
                    ("depends_on", &sql.names_of_column("m.depends_on", "d")),
                    ("now", now),
                    ("lock", lock),
                ],
            )
        };
        Self {
            register: fill(
                include_str!("sql/register.sql"),
                &[
                    ("args", &sql.json_param(3)),
                    ("definition", &sql.json_param(4)),
                    ("depends_on", &sql.names_param(5)),
                    ("now", now),
                ],
            ),
            insert_event: format!(
                "INSERT INTO background_migration_events (migration_name, kind, actor, detail) \
                 VALUES ($1, $2, $3, {})",
                sql.json_param(4)
            ),
            insert_event_once: format!(
                "INSERT INTO background_migration_events (migration_name, kind, actor, detail) \
                 SELECT $1, $2, $3, {detail} WHERE NOT EXISTS (SELECT 1 FROM background_migration_events \
                 WHERE migration_name = $1 AND kind = $2 AND at > {} \
                 AND {} IS NOT DISTINCT FROM {})",
                sql.timestamp_param(5),
                sql.json_text_field("detail", "topic"),
                sql.json_text_field(&sql.json_param(4), "topic"),
                detail = sql.json_param(4),
            ),
            claim_candidate: candidate(&sql.lock_rows_skip_locked("m")),
            claimable: candidate(""),
            claim: fill(
                include_str!("sql/claim.sql"),
                &[("now", now), ("expires", &sql.now_plus_seconds(3))],
            ),
            renew: format!(
                "UPDATE background_migrations SET locked_at = {now}, lease_expires_at = {} WHERE {FENCE}",
                sql.now_plus_seconds(4)
            ),
            set_rows_total: format!(
                "UPDATE background_migrations SET rows_total = CAST($4 AS BIGINT), updated_at = {now} \
                 WHERE {FENCE}"
            ),
            write_checkpoint: fill(
                include_str!("sql/write_checkpoint.sql"),
                &[
                    ("state", &sql.json_param(4)),
                    ("now", now),
                    ("fence", FENCE),
                    ("follows", &sql.checkpoint_follows(10, 4)),
                ],
            ),
            record_batch: fill(
                include_str!("sql/record_batch.sql"),
                &[
                    ("started_at", &sql.timestamp_param(2)),
                    ("state", &sql.json_param(7)),
                    ("open", trimming.as_ref().map_or("", |(open, _)| open)),
                    ("trim", trimming.as_ref().map_or("", |(_, trim)| trim)),
                ],
            ),
            trim_batches: trimming.is_none().then(|| {
                "DELETE FROM background_migration_batches WHERE migration_name = $1 AND id <= $2".to_owned()
            }),
            held_record: format!("SELECT {records} FROM background_migrations WHERE {FENCE}"),
            record_by_name: format!("SELECT {records} FROM background_migrations WHERE name = $1"),
            list_records: format!("SELECT {records} FROM background_migrations ORDER BY name"),
            lock_status: format!(
                "SELECT status FROM background_migrations m WHERE name = $1 {}",
                sql.lock_rows("m")
            ),
            lock_args: format!(
                "SELECT CAST(args AS TEXT) FROM background_migrations m WHERE name = $1 {}",
                sql.lock_rows("m")
            ),
            set_throttled: format!(
                "UPDATE background_migrations SET throttled = $4, updated_at = {now} WHERE {FENCE}"
            ),
            ranges: super::ranges::RangeStatements::render(sql),
            write_args: format!(
                "UPDATE background_migrations SET args = {}, updated_at = {now} WHERE name = $1",
                sql.json_param(2)
            ),
        }
    }
}

impl SqlControlStore {
    /// The control store in `store`'s Postgres database; changes are announced with `NOTIFY`.
    pub fn postgres(store: &PgStore) -> Self {
        Self::build(
            Arc::new(store.clone()),
            Changes::postgres(store.pool().clone()),
        )
    }

    /// The control store in `store`'s SQLite file (sharing its pool); other processes' changes are noticed by
    /// watching the file's `PRAGMA data_version`.
    pub fn sqlite(store: &SqliteStore) -> Self {
        Self::build(
            Arc::new(store.clone()),
            Changes::sqlite(store.pool().clone()),
        )
    }

    fn build(store: Arc<dyn SqlStore>, changes: Changes) -> Self {
        let sql = ControlSql::new(store.dialect());
        Self {
            statements: Statements::render(sql),
            sql,
            store,
            changes,
        }
    }

    /// Opens a write transaction on the control database.
    pub(super) async fn write(&self) -> Result<Box<dyn SqlTx>, ControlError> {
        Ok(self.store.begin().await?)
    }

    /// Commits a write transaction and wakes this process's waiters (other processes: `NOTIFY` or polling).
    pub(super) async fn commit(&self, tx: Box<dyn SqlTx>) -> Result<(), ControlError> {
        tx.commit().await?;
        self.changes.wake();
        Ok(())
    }

    /// Appends an event in `tx` and announces the change, delivered when `tx` commits.
    pub(super) async fn insert_event(
        &self,
        tx: &mut dyn SqlTx,
        name: &str,
        kind: EventKind,
        actor: &str,
        detail: &Value,
    ) -> Result<(), ControlError> {
        self.insert_event_unless(tx, (name, kind, actor, detail), None)
            .await
            .map(|_| ())
    }

    /// Inserts the event (and announces it) unless `after` is given and the migration has an event of the same
    /// kind after that time; says whether it did.
    pub(super) async fn insert_event_unless(
        &self,
        tx: &mut dyn SqlTx,
        (name, kind, actor, detail): (&str, EventKind, &str, &Value),
        after: Option<DateTime<Utc>>,
    ) -> Result<bool, ControlError> {
        let mut params = vec![
            SqlParam::Text(name.to_owned()),
            SqlParam::Text(kind.as_str().to_owned()),
            SqlParam::Text(actor.to_owned()),
            SqlParam::Text(detail.to_string()),
        ];
        let statement = match after {
            Some(after) => {
                params.push(SqlParam::Text(
                    after.to_rfc3339_opts(SecondsFormat::Millis, true),
                ));
                &self.statements.insert_event_once
            }
            None => &self.statements.insert_event,
        };
        if tx.execute(statement, &params).await? == 0 {
            return Ok(false);
        }
        if let Some(announce) = self.sql.announce() {
            tx.execute(&announce, &[SqlParam::Text(name.to_owned())])
                .await?;
        }
        Ok(true)
    }
}

/// `Some(text)` as a text parameter, `None` as NULL.
pub(super) fn text_or_null(value: Option<String>) -> SqlParam {
    value.map_or(SqlParam::Null, SqlParam::Text)
}

#[async_trait]
impl Registrar for SqlControlStore {
    async fn ensure_schema(&self) -> Result<(), ControlError> {
        let mut tx = self.write().await?;
        if let Some(lock) = self.sql.schema_lock() {
            tx.execute(&lock, &[]).await?;
        }
        tx.execute_script(self.sql.schema()).await?;
        for (column, ddl) in self.sql.added_columns() {
            let present = tx
                .fetch_count(
                    "SELECT count(*) FROM pragma_table_info('background_migrations') WHERE name = $1",
                    &[SqlParam::Text((*column).to_owned())],
                )
                .await?;
            if present == 0 {
                tx.execute(ddl, &[]).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn register(
        &self,
        registrations: &[Registration],
        registry: &Registry,
    ) -> Result<Vec<String>, ControlError> {
        let mut tx = self.write().await?;
        let mut inserted = Vec::new();
        for reg in registrations {
            let unknown =
                (!registry.knows(&reg.script)).then(|| unknown_script(&reg.script, registry));
            let depends_on = reg
                .depends_on
                .as_ref()
                .map(|names| Value::from(names.clone()).to_string());
            let params = [
                SqlParam::Text(reg.name.clone()),
                SqlParam::Text(reg.script.clone()),
                SqlParam::Text(reg.args.to_string()),
                SqlParam::Text(reg.params.to_string()),
                text_or_null(depends_on),
                text_or_null(unknown.clone()),
            ];
            let row = tx
                .fetch_all_text(&self.statements.register, &params)
                .await?;
            if let Some(name) = row.into_iter().next().and_then(|mut r| r.remove(0)) {
                let detail =
                    json!({"script": reg.script, "args": reg.args, "failed_reason": unknown});
                self.insert_event(
                    tx.as_mut(),
                    &name,
                    EventKind::Registered,
                    "registration",
                    &detail,
                )
                .await?;
                inserted.push(name);
            }
        }
        self.commit(tx).await?;
        Ok(inserted)
    }
}
