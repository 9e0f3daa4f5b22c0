//! The `copy` kind with a query as its source (`from = { query = "SELECT ...", key = [...] }`) against real
//! Postgres, ClickHouse and SQLite: a join with computed columns (and large computed values) copies exactly over
//! many small batches; a query that does not run, or whose result lacks the key, fails validation before any row
//! moves; duplicate keys in the query's result fail the migration naming the key; the SQL writer takes a query
//! too, and a SQLite source is refused.

mod clickhouse_common;
mod common;

use std::sync::Arc;

use bgmigrate::Status;
use bgmigrate::store::{SqlStore, SqliteStore, sqlite};
use clickhouse_common::TestClickHouse;
use common::{TestDb, run_to_end};

/// Traces with their project: `name` has NULLs and unicode, three bodies are 2 MB (read in slices by key).
const PG_TABLES: &str = "
CREATE TABLE projects (id text PRIMARY KEY, name text NOT NULL);
CREATE TABLE traces (
    id         bigint PRIMARY KEY,
    project_id text NOT NULL REFERENCES projects,
    name       text,
    created_at timestamptz NOT NULL,
    body       text
);
INSERT INTO projects SELECT 'p' || g, 'Project ' || g || ' ✓' FROM generate_series(0, 4) g;
INSERT INTO traces
SELECT g, 'p' || (g % 5),
       CASE WHEN g % 7 = 0 THEN NULL ELSE 'NaÏve TRACE ' || g END,
       timestamptz '2024-10-24 12:00:00+00' + (g / 100) * interval '1 minute',
       CASE WHEN g % 11 = 0 THEN NULL
            WHEN g IN (500, 501, 1500) THEN repeat(md5(g::text), 65536)
            ELSE 'body ' || g END
FROM generate_series(1, 2000) g;
ANALYZE projects;
ANALYZE traces";

/// The copied query: a join, a lower-cased name, a computed body; every tenth trace left out.
const QUERY: &str = "SELECT t.id, p.name AS project, lower(t.name) AS name, t.created_at, t.body || '.' AS body \
                     FROM traces t JOIN projects p ON p.id = t.project_id WHERE t.id % 10 <> 3";

/// Rows the query returns (every id but those ending in 3).
const QUERY_ROWS: usize = 1_800;

const CH_TRACE_VIEW: &str = "CREATE TABLE trace_view (id Int64, project String, name Nullable(String), \
                             created_at DateTime, body Nullable(String)) ENGINE = ReplacingMergeTree ORDER BY id";

async fn setup(db: &TestDb) -> sqlx::PgPool {
    let pool = db.pool().await;
    sqlx::raw_sql(PG_TABLES).execute(&pool).await.unwrap();
    pool
}

/// A copy definition reading `query` (a multi-line TOML string, as docs/clickhouse.md shows) with `key` into
/// ClickHouse `table`.
fn query_definition(query: &str, key: &str, table: &str, args: &str) -> String {
    format!(
        "kind = \"copy\"\nfrom = {{ store = \"postgres\", key = {key}, query = \"\"\"\n  {query}\n\"\"\" }}\n\
         to = {{ store = \"clickhouse\", table = \"{table}\" }}\n[args]\n{args}\n"
    )
}

/// The query's rows in Postgres that match `filter`, as comparable text (bodies as md5), in key order.
async fn query_rows(pool: &sqlx::PgPool, filter: &str) -> Vec<String> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT concat_ws('|', id, project, coalesce(name, 'NULL'), extract(epoch FROM created_at)::bigint,
                coalesce(md5(body), 'NULL'))
         FROM ({QUERY}) AS q WHERE {filter} ORDER BY id"
    )))
    .fetch_all(pool)
    .await
    .unwrap()
}

/// A join with a computed column and three 2 MB computed values arrives exactly, walked in batches of 150 rows
/// (each batch resuming from the previous one's cursor), with the planner's estimate as the total.
#[tokio::test]
async fn a_query_with_a_join_and_computed_columns_copies_exactly_across_many_small_batches() {
    let db = TestDb::create("copy_query_exact").await;
    let ch = TestClickHouse::create("copy_query_exact").await;
    let pool = setup(&db).await;
    ch.exec(CH_TRACE_VIEW).await;
    let name = "20241024_1730_copy_trace_view";
    db.define(
        name,
        &query_definition(QUERY, "[\"id\"]", "trace_view", "batchSize = 150"),
    );
    let connected = db.connect_with_clickhouse(&ch.url).await;
    run_to_end(&connected, &db.migrations()).await;

    let record = connected.control.get(name).await.unwrap();
    assert_eq!(
        (record.status, record.rows_done),
        (Status::Finished, QUERY_ROWS as i64),
        "{:?}",
        record.failed_reason
    );
    let total = record.rows_total.expect("an estimate");
    assert!(
        (QUERY_ROWS as i64 / 2..=QUERY_ROWS as i64 * 2).contains(&total),
        "the planner's estimate of the query's rows is near {QUERY_ROWS}: {total}"
    );
    let batches = connected.control.batches(name, 100).await.unwrap();
    assert!(
        batches.len() >= QUERY_ROWS / 150 && batches.iter().all(|b| b.rows <= 150),
        "{:?}",
        batches.iter().map(|b| b.rows).collect::<Vec<_>>()
    );
    let expected = query_rows(&pool, "true").await;
    assert_eq!(expected.len(), QUERY_ROWS);
    let copied = ch
        .client
        .query_rows(
            "SELECT concat(toString(id), '|', project, '|', ifNull(name, 'NULL'), '|',
                           toString(toUInt32(created_at)), '|', ifNull(lower(hex(MD5(body))), 'NULL'))
             FROM trace_view FINAL ORDER BY id",
        )
        .await
        .unwrap();
    let copied: Vec<String> = copied.into_iter().map(|mut row| row.remove(0)).collect();
    assert_eq!(copied.len(), QUERY_ROWS);
    assert!(
        copied == expected,
        "the copy differs from the query's result"
    );
    assert!(
        expected.iter().any(|row| row.starts_with("500|")) && expected[0].contains(" trace 1|"),
        "the data covers large values and the computed lower-case name: {}",
        expected[0]
    );
}

/// A query source split into key ranges (`parallelism = 3`): the cuts are keys of the query's result, each range
/// reads the query bounded by its end, and the copy equals the query's result exactly.
#[tokio::test]
async fn a_query_source_split_into_key_ranges_copies_exactly() {
    let db = TestDb::create("copy_query_ranges").await;
    let ch = TestClickHouse::create("copy_query_ranges").await;
    let pool = setup(&db).await;
    ch.exec(CH_TRACE_VIEW).await;
    let name = "20241024_1730_copy_trace_view";
    db.define(
        name,
        &query_definition(
            QUERY,
            "[\"id\"]",
            "trace_view",
            "batchSize = 100\nparallelism = 3",
        ),
    );
    let connected = db.connect_with_clickhouse(&ch.url).await;
    run_to_end(&connected, &db.migrations()).await;

    let record = connected.control.get(name).await.unwrap();
    assert_eq!(
        (record.status, record.rows_done),
        (Status::Finished, QUERY_ROWS as i64),
        "{:?}",
        record.failed_reason
    );
    let ranges = connected.control.ranges(name).await.unwrap();
    assert_eq!(ranges.len(), 3, "{ranges:?}");
    assert!(
        ranges.iter().all(|r| r.done && r.rows_done > 0),
        "{ranges:?}"
    );
    // Compared as sorted numbers: each side's own text and order of the ids are not the point here.
    let copied = ch
        .client
        .query_rows("SELECT toString(id) FROM trace_view FINAL")
        .await
        .unwrap();
    let mut copied: Vec<i64> = copied
        .into_iter()
        .map(|mut row| row.remove(0).parse().unwrap())
        .collect();
    copied.sort_unstable();
    let expected: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM ({QUERY}) AS q ORDER BY id"
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        copied == expected,
        "{} rows copied, {} expected",
        copied.len(),
        expected.len()
    );
}

/// A query naming a column that does not exist, a key that is not among the query's output columns, an unnamed
/// computed column and a column name used twice each fail validation with a message naming the problem; no row reaches ClickHouse.
#[tokio::test]
async fn a_query_naming_a_missing_column_or_without_the_key_fails_validation_before_any_row_moves()
{
    let db = TestDb::create("copy_query_invalid").await;
    let ch = TestClickHouse::create("copy_query_invalid").await;
    setup(&db).await;
    ch.exec(CH_TRACE_VIEW).await;
    let cases = [
        (
            "20240101_0001_missing_column",
            "SELECT t.id, t.nme AS name FROM traces t",
            "[\"id\"]",
            "validation failed: from.query does not run on store postgres: describe the query: error returned \
             from database: column t.nme does not exist",
        ),
        (
            "20240101_0002_key_not_in_output",
            "SELECT t.id AS trace_id, t.name FROM traces t",
            "[\"id\"]",
            "validation failed: key column id does not exist in the result of from.query (its columns: \
             trace_id, name)",
        ),
        (
            "20240101_0003_unnamed_column",
            "SELECT t.id, lower(t.name) || '' FROM traces t",
            "[\"id\"]",
            "validation failed: from.query has an unnamed output column (text); name every computed column \
             with AS",
        ),
        (
            "20240101_0004_column_twice",
            "SELECT t.id, t.name, p.name FROM traces t JOIN projects p ON p.id = t.project_id",
            "[\"id\"]",
            "validation failed: from.query has two output columns named name; rename one with AS (columns are \
             copied by name)",
        ),
    ];
    for (name, query, key, _) in &cases {
        db.define(name, &query_definition(query, key, "trace_view", ""));
    }
    let connected = db.connect_with_clickhouse(&ch.url).await;
    run_to_end(&connected, &db.migrations()).await;

    for (name, _, _, reason) in &cases {
        let record = connected.control.get(name).await.unwrap();
        assert_eq!(record.status, Status::Failed, "{name}");
        // Postgres' message may be followed by where in its source it was raised (`at line N`).
        let failed = record.failed_reason.unwrap_or_default();
        assert!(failed.starts_with(reason), "{name}: {failed}");
        assert_eq!(record.rows_done, 0, "{name}");
    }
    assert_eq!(ch.value("SELECT count() FROM trace_view").await, "0");
}

/// A query whose result repeats a key (a join that fans out) fails the migration with a message naming the key
/// Project members, two of them in project p2: a join of traces with them repeats the id of each trace of p2.
const MEMBERS: &str = "CREATE TABLE members (project_id text NOT NULL, login text NOT NULL, PRIMARY KEY (project_id, login));
    INSERT INTO members VALUES ('p0', 'ann'), ('p1', 'bob'), ('p2', 'cy'), ('p2', 'dee'), ('p3', 'eve'), ('p4', 'fay')";

/// A copy of traces joined with their project's members, keyed on the trace's id alone, into `trace_members`.
fn fan_out_definition() -> String {
    query_definition(
        "SELECT t.id, m.login FROM traces t JOIN members m ON m.project_id = t.project_id",
        "[\"id\"]",
        "trace_members",
        "batchSize = 50",
    )
}

/// and its value, instead of letting the target keep one of the two rows at random.
#[tokio::test]
async fn duplicate_keys_in_the_query_result_fail_the_migration_naming_the_key() {
    let db = TestDb::create("copy_query_duplicates").await;
    let ch = TestClickHouse::create("copy_query_duplicates").await;
    let pool = setup(&db).await;
    sqlx::raw_sql(MEMBERS).execute(&pool).await.unwrap();
    ch.exec(
        "CREATE TABLE trace_members (id Int64, login String) ENGINE = ReplacingMergeTree ORDER BY id",
    )
    .await;
    let name = "20240101_0001_fan_out";
    db.define(name, &fan_out_definition());
    let connected = db.connect_with_clickhouse(&ch.url).await;
    run_to_end(&connected, &db.migrations()).await;

    let record = connected.control.get(name).await.unwrap();
    assert_eq!(record.status, Status::Failed);
    // Trace 2 is the first trace of project p2, which has two members.
    assert_eq!(
        record.failed_reason.as_deref(),
        Some(
            "the source has two rows with the key (id) = (2); the copy needs a key unique in the source (for \
             from.query: in the query's result)"
        )
    );
    assert_eq!(record.rows_done, 0, "the first batch already held the pair");
}

/// Into a SQL store in the same Postgres database (one `INSERT ... SELECT` per key range), a key repeated in the
/// query's result fails the migration saying so, with the range it is in, and no row of that range is written.
#[tokio::test]
async fn duplicate_keys_in_a_query_copied_into_a_sql_store_fail_the_migration_naming_the_range() {
    let db = TestDb::create("copy_query_sql_duplicates").await;
    let pool = setup(&db).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "{MEMBERS}; CREATE TABLE trace_members (id bigint PRIMARY KEY, login text NOT NULL)"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let name = "20240101_0001_fan_out";
    db.define(
        name,
        &fan_out_definition().replace("store = \"clickhouse\"", "store = \"postgres\""),
    );
    let connected = db.connect().await;
    run_to_end(&connected, &db.migrations()).await;

    let record = connected.control.get(name).await.unwrap();
    assert_eq!(record.status, Status::Failed);
    let reason = record.failed_reason.unwrap_or_default();
    assert!(
        reason.starts_with("the source has two rows with one key after the start up to (")
            && reason.ends_with(
                "; the copy needs a key unique in the source (for from.query: in the query's result)"
            ),
        "{reason}"
    );
    assert_eq!(record.rows_done, 0, "the first batch already held the pair");
    let written: i64 = sqlx::query_scalar("SELECT count(*) FROM trace_members")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(written, 0);
}

/// The SQL writer takes a query too (Postgres → Postgres, with a `where` on the query's output columns), and a query
/// over a SQLite source is refused with a message asking for a table.
#[tokio::test]
async fn a_query_copies_into_a_sql_store_and_a_sqlite_source_query_is_refused() {
    let db = TestDb::create("copy_query_sql").await;
    let pool = setup(&db).await;
    sqlx::raw_sql(
        "CREATE TABLE trace_view (id bigint PRIMARY KEY, project text NOT NULL, name text,
                                  created_at timestamptz NOT NULL, body text)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let file = db.dir.path().join("analytics.db");
    let analytics: Arc<dyn SqlStore> = Arc::new(SqliteStore::new(
        sqlite::connect_pool(&format!("sqlite://{}", file.display()), 2)
            .await
            .unwrap(),
        SqliteStore::id_for_path(&file),
    ));
    let mut connected = db.connect().await;
    connected.stores = connected.stores.clone().with_sql("analytics", analytics);
    db.define(
        "20240101_0001_query_to_postgres",
        &format!(
            "kind = \"copy\"\nfrom = {{ store = \"postgres\", query = \"{QUERY}\", key = [\"id\"], \
             where = \"name IS NOT NULL\" }}\n\
             to = {{ store = \"postgres\", table = \"trace_view\" }}\n[args]\nbatchSize = 150\n"
        ),
    );
    db.define(
        "20240101_0002_sqlite_query",
        "kind = \"copy\"\nfrom = { store = \"analytics\", query = \"SELECT 1 AS id\", key = [\"id\"] }\n\
         to = { store = \"postgres\", table = \"trace_view\" }\n",
    );
    run_to_end(&connected, &db.migrations()).await;

    let record = connected
        .control
        .get("20240101_0001_query_to_postgres")
        .await
        .unwrap();
    let expected = query_rows(&pool, "name IS NOT NULL").await;
    assert!(expected.len() > 1_000 && expected.len() < QUERY_ROWS);
    assert_eq!(
        (record.status, record.rows_done),
        (Status::Finished, expected.len() as i64),
        "{:?}",
        record.failed_reason
    );
    let copied: Vec<String> = sqlx::query_scalar(
        "SELECT concat_ws('|', id, project, coalesce(name, 'NULL'), extract(epoch FROM created_at)::bigint,
                coalesce(md5(body), 'NULL'))
         FROM trace_view ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        copied == expected,
        "the copy differs from the query's result"
    );
    let refused = connected
        .control
        .get("20240101_0002_sqlite_query")
        .await
        .unwrap();
    assert_eq!(refused.status, Status::Failed);
    assert_eq!(
        refused.failed_reason.as_deref(),
        Some(
            "validation failed: from.query needs a Postgres source, but store analytics cannot describe a \
             query's columns; copy from a table (from.table) instead"
        )
    );
}
