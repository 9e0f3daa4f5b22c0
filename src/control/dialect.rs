//! What truly differs between the control tables on Postgres and on SQLite, and nothing else: the clock, lease
//! expiry, row locks, how JSON, name lists and timestamps travel as text, the schema script and the change
//! announcement. Every workflow is written once over these fragments; the statements are rendered once, when the
//! control store is built.

use crate::store::Dialect;

/// Advisory lock key under which the Postgres control schema is created or upgraded.
const SCHEMA_LOCK: i64 = 0x6267_6d69_6772_0001;

/// The channel Postgres announces every change on (`LISTEN bgmigrate_changes`).
pub(super) const CHANNEL: &str = "bgmigrate_changes";

/// The condition every worker write carries: same owner, same epoch, still running. `$1` id, `$2` worker, `$3`
/// epoch.
pub(super) const FENCE: &str =
    "id = $1 AND worker_id = $2 AND lease_epoch = $3 AND status = 'running'";

/// The fence of a key range's holder, written once: `$1` migration id, `$2` range, `$3` worker, `$4` the range's
/// epoch; the range is not done and its migration still runs (a pause or cancel stops every range's writes).
pub(super) const RANGE_FENCE: &str = "migration_id = $1 AND range_no = $2 AND worker_id = $3 AND lease_epoch = $4 \
     AND done = 0 AND EXISTS (SELECT 1 FROM background_migrations m WHERE m.id = $1 AND m.status = 'running')";

/// The control tables' SQL for one dialect.
#[derive(Debug, Clone, Copy)]
pub(super) struct ControlSql {
    dialect: Dialect,
}

impl ControlSql {
    pub(super) fn new(dialect: Dialect) -> Self {
        Self { dialect }
    }

    /// Now, as the dialect stores timestamps (SQLite: ISO-8601 UTC text with milliseconds, so text order is time
    /// order).
    pub(super) fn now(self) -> &'static str {
        match self.dialect {
            Dialect::Postgres => "now()",
            Dialect::Sqlite => "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        }
    }

    /// Now plus `$n` seconds (a float): when a lease renewed now expires.
    pub(super) fn now_plus_seconds(self, n: usize) -> String {
        match self.dialect {
            Dialect::Postgres => format!("now() + make_interval(secs => ${n})"),
            Dialect::Sqlite => {
                format!("strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+' || ${n} || ' seconds')")
            }
        }
    }

    /// Appended to a read that the same transaction then updates. SQLite needs none: control writes run in
    /// `BEGIN IMMEDIATE`, which holds the file's write lock from the first statement.
    pub(super) fn lock_rows(self, of: &str) -> String {
        match self.dialect {
            Dialect::Postgres => format!("FOR UPDATE OF {of}"),
            Dialect::Sqlite => String::new(),
        }
    }

    /// The same for a claim, where concurrent workers pass each other's locked rows instead of waiting.
    pub(super) fn lock_rows_skip_locked(self, of: &str) -> String {
        match self.dialect {
            Dialect::Postgres => format!("FOR UPDATE OF {of} SKIP LOCKED"),
            Dialect::Sqlite => String::new(),
        }
    }

    /// Parameter `$n`, JSON text, as the column type of a JSON column.
    pub(super) fn json_param(self, n: usize) -> String {
        match self.dialect {
            Dialect::Postgres => format!("CAST(${n} AS jsonb)"),
            Dialect::Sqlite => format!("${n}"),
        }
    }

    /// Text field `field` (a plain name) of the JSON document `json` (a JSON column, or [`ControlSql::json_param`]).
    pub(super) fn json_text_field(self, json: &str, field: &str) -> String {
        match self.dialect {
            Dialect::Postgres => format!("({json} ->> '{field}')"),
            Dialect::Sqlite => format!("json_extract({json}, '$.{field}')"),
        }
    }

    /// Parameter `$n`, a JSON array of names or NULL, as the column type of `depends_on`.
    pub(super) fn names_param(self, n: usize) -> String {
        match self.dialect {
            Dialect::Postgres => format!(
                "CASE WHEN CAST(${n} AS jsonb) IS NULL THEN NULL \
                 ELSE ARRAY(SELECT jsonb_array_elements_text(CAST(${n} AS jsonb))) END"
            ),
            Dialect::Sqlite => format!("${n}"),
        }
    }

    /// A table of the names in parameter `$n` (a JSON array), with one column `value`, aliased `alias`.
    pub(super) fn names_of_param(self, n: usize, alias: &str) -> String {
        match self.dialect {
            Dialect::Postgres => {
                format!("jsonb_array_elements_text(CAST(${n} AS jsonb)) AS {alias}(value)")
            }
            Dialect::Sqlite => format!("json_each(${n}) AS {alias}"),
        }
    }

    /// A table of the names in the `depends_on` column `column`, with one column `value`, aliased `alias`.
    pub(super) fn names_of_column(self, column: &str, alias: &str) -> String {
        match self.dialect {
            Dialect::Postgres => format!("unnest({column}) AS {alias}(value)"),
            Dialect::Sqlite => format!("json_each({column}) AS {alias}"),
        }
    }

    /// Whether the `state` column still holds the checkpoint a batch started from, parameter `$previous`, or
    /// already holds its new one, `$new` (a retried write that landed). Postgres only: a batch committed there with
    /// `synchronous_commit` off can be lost by a server crash while the worker that read it lives on (see
    /// [`crate::control::BatchCommit::previous`]). SQLite lives in the worker's process, so a crash that loses its
    /// commits loses the worker's memory too; and its JSON comparison would depend on key order, so a checkpoint
    /// an operator rewrote by hand would never match again. There it is always true (`$n IS $n`: the parameter is
    /// still used, since SQLite binds by position).
    pub(super) fn checkpoint_follows(self, previous: usize, new: usize) -> String {
        match self.dialect {
            Dialect::Postgres => {
                format!("(state = CAST(${previous} AS jsonb) OR state = CAST(${new} AS jsonb))")
            }
            Dialect::Sqlite => format!("${previous} IS ${previous}"),
        }
    }

    /// How the batches table's insert (`record_batch.sql`) trims the migration's older batches: on Postgres, the
    /// `WITH` that opens it and the `DELETE` that closes it, so that one statement appends and trims (a batch of a
    /// few milliseconds pays for each round trip); on SQLite `None`, and the caller trims with a statement of its
    /// own (SQLite has no `DELETE` in a `WITH`, and its calls are local).
    pub(super) fn insert_trimming(self, kept: i64) -> Option<(&'static str, String)> {
        match self.dialect {
            Dialect::Postgres => Some((
                "WITH bgm_batch AS (\n",
                format!(
                    "\n), bgm_trimmed AS (DELETE FROM background_migration_batches WHERE migration_name = $1 \
                     AND id <= (SELECT id FROM bgm_batch) - {kept})\nSELECT id FROM bgm_batch"
                ),
            )),
            Dialect::Sqlite => None,
        }
    }

    /// Whether JSON `column` holds the same document as parameter `$n` (JSON text), whatever its spacing.
    pub(super) fn json_equals(self, column: &str, n: usize) -> String {
        match self.dialect {
            Dialect::Postgres => format!("CAST({column} AS jsonb) = CAST(${n} AS jsonb)"),
            Dialect::Sqlite => format!("json({column}) = json(${n})"),
        }
    }

    /// Parameter `$n`, an RFC 3339 timestamp, as a timestamp column's type.
    pub(super) fn timestamp_param(self, n: usize) -> String {
        match self.dialect {
            Dialect::Postgres => format!("CAST(${n} AS timestamptz)"),
            Dialect::Sqlite => format!("${n}"),
        }
    }

    /// A timestamp column as RFC 3339 UTC text. On Postgres the original system's columns may be `timestamp`
    /// without a zone, hence the cast first.
    pub(super) fn timestamp_text(self, column: &str) -> String {
        match self.dialect {
            Dialect::Postgres => format!(
                "to_char(CAST({column} AS timestamptz) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
            ),
            Dialect::Sqlite => column.to_owned(),
        }
    }

    /// The `depends_on` column as a JSON array of names (or NULL).
    pub(super) fn names_text(self, column: &str) -> String {
        match self.dialect {
            Dialect::Postgres => format!("CAST(array_to_json({column}) AS TEXT)"),
            Dialect::Sqlite => column.to_owned(),
        }
    }

    /// The script that creates or upgrades the control tables, idempotently.
    pub(super) fn schema(self) -> &'static str {
        match self.dialect {
            Dialect::Postgres => include_str!("sql/postgres_schema.sql"),
            Dialect::Sqlite => include_str!("sql/sqlite_schema.sql"),
        }
    }

    /// Columns added after a release that created the tables, with the statement that adds each, where the
    /// schema script cannot say "add if missing" itself (Postgres' script does: `ADD COLUMN IF NOT EXISTS`).
    pub(super) fn added_columns(self) -> &'static [(&'static str, &'static str)] {
        match self.dialect {
            Dialect::Postgres => &[],
            Dialect::Sqlite => &[(
                "throttled",
                "ALTER TABLE background_migrations ADD COLUMN throttled TEXT",
            )],
        }
    }

    /// Serialises schema changes of concurrent processes, inside the schema's transaction (SQLite: `BEGIN
    /// IMMEDIATE` already does).
    pub(super) fn schema_lock(self) -> Option<String> {
        match self.dialect {
            Dialect::Postgres => Some(format!("SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")),
            Dialect::Sqlite => None,
        }
    }

    /// Tells other processes that migration `$1` changed, delivered when the transaction commits (SQLite has no
    /// such channel: other processes poll).
    pub(super) fn announce(self) -> Option<String> {
        match self.dialect {
            Dialect::Postgres => Some(format!("SELECT pg_notify('{CHANNEL}', $1)")),
            Dialect::Sqlite => None,
        }
    }
}
