//! `kind = "backfill"`: an in-place UPDATE of one table in a SQL store, walked in keyset order over a unique key
//! (single or composite; integer, text, uuid, timestamp columns), one index range per batch.
//!
//! Each batch's UPDATE and its checkpoint commit in one transaction when the table lives in the control database,
//! so a crash at any point neither skips nor repeats a row.
//!
//! With `order = "physical"` (Postgres) the rows are updated in heap order instead, through a key list
//! ([`heap_walk`]).
//!
//! Layout: this file checks the table and runs a key-order batch, with the [`BackfillCheckpoint`]; [`heap_walk`]
//! runs a heap-order batch; [`spec`] parses the definition; [`sql`] builds the statements on the shared
//! [`crate::kinds::keyset::Keyset`].

mod heap_walk;
mod spec;
mod sql;
mod wal;
mod writeback;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::OnceCell;

use super::checkpoint::{Checkpoint, KeyCursor, KeyPosition, range_end};
use super::keyset;
use crate::migration::{Batch, BatchOutcome, Migration, MigrationError};
use crate::store::{Dialect, SqlParam, SqlStore, SqlTx, Stores};

pub use self::spec::{BackfillOrder, BackfillSpec};
pub use self::sql::BackfillSql;

/// A setting a batch's transaction takes for itself (`set_config(name, value, true)`: undone at its commit, other
/// sessions unaffected).
pub(super) struct LocalSetting {
    name: &'static str,
    value: String,
    /// Keep the session's value where it is not `'0'` (the off value of a numeric setting): an operator's choice
    /// for the server, database or role stands.
    keep_server_value: bool,
}

impl LocalSetting {
    /// A setting whose value is `value`, whatever the session's.
    fn new(name: &'static str, value: String) -> Self {
        LocalSetting {
            name,
            value,
            keep_server_value: false,
        }
    }

    /// Settings whose values are fixed, whatever the session's.
    fn fixed(
        settings: &'static [(&'static str, &'static str)],
    ) -> impl Iterator<Item = LocalSetting> {
        settings
            .iter()
            .map(|&(name, value)| LocalSetting::new(name, value.to_owned()))
    }

    /// One statement that sets every one of `settings` (none: no statement), with the values written as literals:
    /// it is sent with the batch's `BEGIN` ([`SqlStore::begin_with_setup`]), which takes no parameters.
    fn setup(settings: &[LocalSetting]) -> String {
        if settings.is_empty() {
            return String::new();
        }
        let calls: Vec<String> = settings
            .iter()
            .map(|setting| {
                let name = format!("'{}'", setting.name);
                let value = format!("'{}'", setting.value.replace('\'', "''"));
                if setting.keep_server_value {
                    format!(
                        "set_config({name}, CASE current_setting({name}) WHEN '0' THEN {value} \
                         ELSE current_setting({name}) END, true)"
                    )
                } else {
                    format!("set_config({name}, {value}, true)")
                }
            })
            .collect();
        format!("SELECT {}", calls.join(", "))
    }
}

/// The name definitions use: `kind = "backfill"`.
pub const KIND: &str = "backfill";

/// A backfill bound to its store.
pub struct Backfill {
    spec: BackfillSpec,
    store: Arc<dyn SqlStore>,
    statements: OnceCell<BackfillSql>,
    /// What a Postgres server allows for `wal_compression`, read at the first batch.
    server_wal: OnceCell<wal::ServerWal>,
}

impl Backfill {
    /// The registry factory: parses the definition and finds its store.
    pub fn build(params: &Value, stores: &Stores) -> Result<Arc<dyn Migration>, String> {
        let spec = BackfillSpec::parse(params)?;
        let store = stores.sql(&spec.store).ok_or_else(|| {
            format!(
                "backfill definition: store {:?} is not configured (configured: {})",
                spec.store,
                stores.sql_names().join(", ")
            )
        })?;
        Ok(Arc::new(Backfill {
            spec,
            store,
            statements: OnceCell::new(),
            server_wal: OnceCell::new(),
        }))
    }

    /// Opens a batch's transaction; on Postgres with the WAL compression (see [`wal`]) and the writeback of dirty
    /// pages (see [`writeback`]) that `args` ask for and the caller's `extra` settings, all set in the statement that
    /// begins it.
    async fn begin_batch(
        &self,
        batch: &Batch<'_>,
        extra: Vec<LocalSetting>,
    ) -> Result<Box<dyn SqlTx>, MigrationError> {
        let args = batch.args;
        if self.store.dialect() != Dialect::Postgres {
            return Ok(self.store.begin().await?);
        }
        let server = self
            .server_wal
            .get_or_try_init(|| wal::ServerWal::probe(self.store.as_ref()))
            .await?;
        let settings: Vec<LocalSetting> = [
            server
                .value_for(args.wal_compression)?
                .map(|method| LocalSetting::new("wal_compression", method.to_owned())),
            writeback::setting(args.flush_after, batch.yielding),
        ]
        .into_iter()
        .flatten()
        .chain(extra)
        .collect();
        Ok(self
            .store
            .begin_with_setup(&LocalSetting::setup(&settings))
            .await?)
    }

    /// Reads the table's columns, checks the key and `set`, and prepares the statements (once).
    async fn statements(&self) -> Result<&BackfillSql, MigrationError> {
        self.statements.get_or_try_init(|| self.prepare()).await
    }

    async fn prepare(&self) -> Result<BackfillSql, MigrationError> {
        let spec = &self.spec;
        let invalid = |message: String| MigrationError::Invalid(message);
        let columns = self.store.columns(&spec.table).await?;
        if columns.is_empty() {
            return Err(invalid(format!(
                "table {} does not exist in store {}",
                spec.table, spec.store
            )));
        }
        if spec.order == BackfillOrder::Physical && self.store.dialect() != Dialect::Postgres {
            return Err(invalid(format!(
                "order = \"physical\" is for Postgres tables; store {} is SQLite, whose tables are stored in rowid \
                 order: use order = \"key\" (the default) with the rowid or INTEGER PRIMARY KEY as the key",
                spec.store
            )));
        }
        let column = |name: &str| columns.iter().find(|c| c.name == name);
        let key_types = keyset::key_types(&columns, &spec.key, &spec.table, Some(&spec.table))?;
        keyset::check_unique_key(self.store.as_ref(), &spec.table, &spec.key).await?;
        if let Some(missing) = spec.set.keys().find(|c| column(c).is_none()) {
            return Err(invalid(format!(
                "set assigns column {missing}, which does not exist in {}",
                spec.table
            )));
        }
        let set: Vec<(String, String)> = spec
            .set
            .iter()
            .map(|(c, e)| (c.clone(), e.clone()))
            .collect();
        let statements = BackfillSql::new(
            self.store.dialect(),
            &spec.table,
            &spec.key,
            &key_types,
            &set,
            spec.filter.as_deref(),
        );
        let mut tx = self.store.begin().await?;
        if spec.order == BackfillOrder::Physical {
            let version = tx
                .fetch_count("SELECT current_setting('server_version_num')::int8", &[])
                .await?;
            if version < 140_000 {
                return Err(invalid(format!(
                    "order = \"physical\" needs Postgres 14 or later (TID range scans); this server is {version}: \
                     use order = \"key\""
                )));
            }
        }
        tx.execute(&statements.dry_run(), &[])
            .await
            .map_err(|err| {
                invalid(format!(
                    "the set expressions or the where filter do not work on {}: {err}",
                    spec.table
                ))
            })?;
        Ok(statements)
    }
}

/// A backfill's checkpoint: `{"cursor": ["key", ...]}`, and `"done": true` after the last batch. A heap-order
/// walk adds its key list: while listing `{"cursor": ..., "list": "bgmigrate_keys_...", "pages": 40, "sweep": 8,
/// "horizon": 7301}`,
/// then `{"cursor": ..., "list": ..., "listed": 1000, "pages": 40, "page": 8, "list_order": true, "trail": [6, 4],
/// "in_place": true, "walked": 200}` (and `"shared": true` in a range cut from another's walk).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackfillCheckpoint {
    /// The last key updated; in a heap-order walk, where its key range starts.
    #[serde(flatten)]
    pub at: KeyCursor,
    /// The key list of a heap-order walk, once created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<String>,
    /// How many keys the closed list holds (written when the sweep closes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listed: Option<u64>,
    /// Where the sweep ends (the table's pages when it began); once listed, where the walk ends: the list's own
    /// pages (`list_order`), or one past the highest table page a listed row was on (a list closed by an earlier
    /// version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages: Option<u64>,
    /// The next page to sweep for keys; `None` before the list exists and once it is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<u64>,
    /// The oldest transaction running when the sweep began (32-bit xid): rows written by older ones did not move
    /// during the sweep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub horizon: Option<u64>,
    /// The next page to walk; `None` while keys are being listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<u64>,
    /// The walk goes through the list's own pages, in the order the sweep appended it (`page` and `pages` count
    /// the list's pages). `false` for a list closed by an earlier version, which is walked by the table page each
    /// key was listed on, through the index that version built on the list.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub list_order: bool,
    /// Where the walk's last windows began, in the list's pages, newest first (`list_order` only; each at or
    /// behind the one before it, all behind `page`). A walk with parts updates each list page's entries in
    /// turns: part 0 when its pages are first walked, part `q` `q × lag` batches later, from the page the trail
    /// holds at `q × lag - 1` (see `heap_walk`): one entry per part after the first when turns come one batch
    /// apart (one stream), two with `parallelism` > 1. Empty for a walk in one part (one begun by an earlier
    /// version).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trail: Vec<u64>,
    /// The walk finds its rows on the table pages they were listed on ([`BackfillSql::update_entries`]), set when
    /// the list of a whole table closes. A key range's list holds only its share of each page's rows, so a scan
    /// of those pages would read the other ranges' rows too: it (and a list closed by the release before) looks
    /// each row up by key ([`BackfillSql::update_entries_by_key`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_place: bool,
    /// How many listed rows the walk has updated (the filter aside).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub walked: u64,
    /// The list is walked by other ranges too (this range was cut from another's walk), so the migration's end
    /// drops it, not this range's last batch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
    /// Written (as `true`) by the last batch only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub done: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Checkpoint for BackfillCheckpoint {
    const SHAPE: &'static str = "{\"cursor\": [\"key\", ...], \"done\": true|false} (heap order: also \
                                 \"list\": \"bgmigrate_keys_...\", \"pages\": n, then \"sweep\": n and \"horizon\": xid, or \"listed\": n, \
                                 \"page\": n, \"list_order\": true, \"trail\": [n, ...], \"in_place\": true|false and \"walked\": n)";
}

impl KeyPosition for BackfillCheckpoint {
    fn cursor(&self) -> &KeyCursor {
        &self.at
    }

    fn after_key(key: Vec<String>) -> Self {
        Self {
            at: KeyCursor::after(Some(key)),
            ..Self::default()
        }
    }
}

fn texts(values: &[String]) -> Vec<SqlParam> {
    values.iter().cloned().map(SqlParam::Text).collect()
}

#[async_trait]
impl Migration for Backfill {
    async fn validate(&self) -> Result<(), MigrationError> {
        self.statements().await.map(|_| ())
    }

    fn health_checks(&self) -> Vec<Arc<dyn crate::throttle::HealthCheck>> {
        self.store
            .health_check(&self.spec.table)
            .into_iter()
            .collect()
    }

    async fn estimate(&self) -> Result<Option<u64>, MigrationError> {
        Ok(self.store.estimate_rows(&self.spec.table).await?)
    }

    /// Cuts at keys `rows / parts` apart on the key's index ([`keyset::split_states`]). A heap-order range is not
    /// cut once it has a list: the list holds keys from all over the range.
    async fn split(
        &self,
        from: &Value,
        upper: Option<&Value>,
        parts: u64,
        rows: Option<u64>,
    ) -> Result<Vec<Value>, MigrationError> {
        let statements = self.statements().await?;
        let checkpoint = BackfillCheckpoint::read(from)?;
        if checkpoint.list.is_some() {
            return Ok(heap_walk::page_cuts(&checkpoint, upper, parts)?
                .iter()
                .map(BackfillCheckpoint::to_state)
                .collect());
        }
        keyset::split_states::<BackfillCheckpoint>(
            self.store.as_ref(),
            statements.keyset(),
            (from, upper),
            parts,
            rows,
        )
        .await
    }

    async fn ranges_done(
        &self,
        states: &[Value],
        _args: &crate::args::Args,
    ) -> Result<(), MigrationError> {
        heap_walk::drop_lists(self, states).await
    }

    async fn run_batch(&self, batch: &mut Batch<'_>) -> Result<BatchOutcome, MigrationError> {
        let statements = self.statements().await?;
        if self.spec.order == BackfillOrder::Physical {
            return heap_walk::run_batch(self, statements, batch).await;
        }
        let checkpoint = BackfillCheckpoint::read(batch.state)?;
        if let Some(list) = &checkpoint.list {
            return Err(MigrationError::Permanent(format!(
                "this backfill was started in heap order (its checkpoint names the key list {list}), but its \
                 definition now says order = \"key\": restore order = \"physical\", or retry --from-start"
            )));
        }
        let lower = checkpoint.at.keys(statements.arity(), batch.state)?;
        let has_lower = lower.is_some();
        let end = range_end::<BackfillCheckpoint>(batch.upper, statements.arity())?;
        let has_end = end.is_some();
        let mut params = texts(lower.unwrap_or_default());
        let mut tail_params = params.clone();
        tail_params.extend(texts(end.as_deref().unwrap_or_default()));
        let size = batch.args.batch_size;

        let mut tx = self.begin_batch(batch, Vec::new()).await?;
        let mut bound_params = tail_params.clone();
        bound_params.push(SqlParam::count(size - 1));
        let upper = tx
            .fetch_optional_text(&statements.upper_bound(has_lower, has_end), &bound_params)
            .await?;
        let outcome = match upper {
            Some(upper) => {
                params.extend(texts(&upper));
                tx.execute(&statements.update_range(has_lower), &params)
                    .await?;
                let next = BackfillCheckpoint {
                    at: KeyCursor::after(Some(upper)),
                    ..BackfillCheckpoint::default()
                };
                BatchOutcome {
                    state: next.to_state(),
                    done: false,
                    rows: size,
                    bytes: 0,
                }
            }
            None => {
                let rows = tx
                    .fetch_count(&statements.count_tail(has_lower, has_end), &tail_params)
                    .await?;
                tx.execute(&statements.update_tail(has_lower, has_end), &tail_params)
                    .await?;
                let last = BackfillCheckpoint {
                    at: KeyCursor::after(lower.map(<[String]>::to_vec)),
                    done: true,
                    ..BackfillCheckpoint::default()
                };
                BatchOutcome {
                    state: last.to_state(),
                    done: true,
                    rows: rows.max(0) as u64,
                    bytes: 0,
                }
            }
        };
        batch.commit(tx, &outcome).await?;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::LocalSetting;

    #[test]
    fn a_batchs_settings_are_one_select_with_literal_values_and_the_server_value_kept_where_asked()
    {
        assert_eq!(LocalSetting::setup(&[]), "");
        let settings = [
            LocalSetting {
                name: "wal_compression",
                value: "lz4".into(),
                keep_server_value: false,
            },
            LocalSetting {
                name: "backend_flush_after",
                value: "32'".into(),
                keep_server_value: true,
            },
        ];
        assert_eq!(
            LocalSetting::setup(&settings),
            "SELECT set_config('wal_compression', 'lz4', true), set_config('backend_flush_after', CASE \
             current_setting('backend_flush_after') WHEN '0' THEN '32''' ELSE current_setting('backend_flush_after') \
             END, true)"
        );
    }
}
