//! The `copy` kind between SQL stores, by each of its movers: in the database (SQLite → SQLite within one file or
//! into a second file, Postgres → Postgres within one database), piped (`COPY` between two Postgres databases) and
//! through the worker (Postgres → SQLite, SQLite → Postgres): exact copies for text and composite keys, NULLs and
//! unicode, small batches under `maxBatchBytes`, no duplicate when every batch is sent again, exact types through
//! `COPY`, a resume after a batch failed mid-copy, and a source file whose write lock another process holds.

mod common;

use std::sync::Arc;

use std::time::Duration;

use bgmigrate::config::{self, Connected};
use bgmigrate::store::{PgStore, SqlStore, SqliteStore, postgres, sqlite};
use bgmigrate::{Action, Status};
use common::{TestDb, run_to_end};

/// Rows in the source table: several batches of 97, and a few batches closed early by `maxBatchBytes`.
const ROWS: usize = 2_500;

/// The source and target tables, in SQL both dialects accept; the target has its own column order.
const TABLES: &str = "CREATE TABLE events (grp text NOT NULL, id integer NOT NULL, body text, score double precision, \
                      PRIMARY KEY (grp, id));
                      CREATE TABLE events_copy (score double precision, body text, id integer NOT NULL, \
                      grp text NOT NULL, PRIMARY KEY (grp, id))";

/// Sample rows: text group ids that sort apart from their numbers, unicode, quotes, NULLs and a few 20 kB bodies.
fn sample_inserts() -> Vec<String> {
    let rows: Vec<String> = (0..ROWS)
        .map(|n| {
            let body = match n % 7 {
                0 => "NULL".to_owned(),
                1 => format!("'ünïcödé ☃ 漢字 {n}'"),
                2 => format!("'it''s {n}'"),
                3 if n % 100 == 3 => format!("'{}'", "x".repeat(20_000)),
                _ => format!("'body {n}'"),
            };
            let score = if n % 5 == 0 {
                "NULL".to_owned()
            } else {
                format!("{}.25", n)
            };
            format!("('g-{}', {n}, {body}, {score})", n % 11)
        })
        .collect();
    rows.chunks(500)
        .map(|chunk| {
            format!(
                "INSERT INTO events (grp, id, body, score) VALUES {}",
                chunk.join(", ")
            )
        })
        .collect()
}

/// Every row of `table`, as text, in key order (the key's own order: `id` sorts as an integer).
async fn rows_of(store: &dyn SqlStore, table: &str) -> Vec<Vec<Option<String>>> {
    let dialect = store.dialect();
    let columns: Vec<String> = ["grp", "id", "body", "score"]
        .iter()
        .map(|c| dialect.as_text(&format!("t.{c}")))
        .collect();
    let sql = format!(
        "SELECT {} FROM {table} AS t ORDER BY t.grp, t.id",
        columns.join(", ")
    );
    let mut tx = store.begin().await.expect("begin");
    let rows = tx.fetch_all_text(&sql, &[]).await.expect("read rows");
    tx.commit().await.expect("commit");
    rows
}

async fn execute(store: &dyn SqlStore, statements: &[String]) {
    let mut tx = store.begin().await.expect("begin");
    for sql in statements {
        tx.execute(sql, &[]).await.expect(sql);
    }
    tx.commit().await.expect("commit");
}

/// A copy definition from `events` in `from` into `events_copy` in `to`.
fn definition(from: &str, to: &str) -> String {
    format!(
        "kind = \"copy\"\nfrom = {{ store = \"{from}\", table = \"events\", key = [\"grp\", \"id\"] }}\n\
         to = {{ store = \"{to}\", table = \"events_copy\" }}\n[args]\nbatchSize = 97\nmaxBatchBytes = 30000\n"
    )
}

/// Copies `events` into `events_copy` with `parallelism = 3`, two library runners sharing the ranges, and checks
/// that the target equals the source exactly and every range ended done.
async fn two_runners_copy_in_key_ranges_exactly(
    connected: &Connected,
    migrations: &std::path::Path,
    source: &dyn SqlStore,
    target: &dyn SqlStore,
    names: (&str, &str),
) {
    let name = "20240101_0000_copy_events";
    std::fs::write(
        migrations.join("background").join(format!("{name}.toml")),
        format!(
            "{}parallelism = 3\nsleepMs = 5\n",
            definition(names.0, names.1)
        ),
    )
    .unwrap();
    common::register_dir(connected, migrations, &bgmigrate::builtin_registry()).await;
    let runners: Vec<_> = ["w1", "w2"]
        .into_iter()
        .map(|id| common::spawn_runner(connected, id))
        .collect();
    for runner in runners {
        runner.join().await.expect("runner");
    }
    let record = connected.control.get(name).await.unwrap();
    assert_eq!(
        (record.status, record.rows_done),
        (Status::Finished, ROWS as i64),
        "{record:?}"
    );
    let ranges = connected.control.ranges(name).await.unwrap();
    assert!(
        ranges.len() >= 3 && ranges.iter().all(|r| r.done),
        "{ranges:?}"
    );
    assert_eq!(
        rows_of(target, "events_copy").await,
        rows_of(source, "events").await
    );
}

/// Copies `events` into `events_copy` twice (the second copy re-sends every batch over the first one's rows, one
/// of which was changed in between) and checks the target equals the source exactly each time.
async fn copy_twice_is_exact(
    connected: &Connected,
    migrations: &std::path::Path,
    source: &dyn SqlStore,
    target: &dyn SqlStore,
    names: (&str, &str),
) {
    let source_rows = rows_of(source, "events").await;
    assert_eq!(source_rows.len(), ROWS);
    for name in [
        "20240101_0000_copy_events",
        "20240101_0001_copy_events_again",
    ] {
        std::fs::write(
            migrations.join("background").join(format!("{name}.toml")),
            definition(names.0, names.1),
        )
        .unwrap();
        run_to_end(connected, migrations).await;
        let record = connected.control.get(name).await.unwrap();
        assert_eq!(
            (record.status, record.rows_done),
            (Status::Finished, ROWS as i64),
            "{record:?}"
        );
        assert_eq!(rows_of(target, "events_copy").await, source_rows, "{name}");
        // Before the second copy, one target row goes stale: the re-sent batch must overwrite it.
        let mut tx = target.begin().await.unwrap();
        let changed = tx
            .execute(
                "UPDATE events_copy SET body = 'stale' WHERE grp = 'g-1' AND id = 1",
                &[],
            )
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(changed, 1);
    }
}

/// The control database `app.db` in `dir` with the filled source table (store `sqlite`), and `analytics.db` with the
/// empty target table (store `analytics`): returns the stores configured, the source and the target.
async fn sqlite_and_analytics(
    dir: &std::path::Path,
) -> (Connected, Arc<dyn SqlStore>, Arc<dyn SqlStore>) {
    std::fs::create_dir_all(dir.join("migrations/background")).unwrap();
    let url = format!("sqlite://{}", dir.join("app.db").display());
    let connected = config::connect(&url).await.expect("connect");
    connected.control.ensure_schema().await.expect("schema");
    let (connected, analytics) = with_analytics(connected, "sqlite", dir).await;
    let source = connected.stores.sql("sqlite").unwrap();
    (connected, source, analytics)
}

/// SQLite → a second SQLite file (not the control database: the engine writes the checkpoint after the upsert).
#[tokio::test]
async fn a_sqlite_to_sqlite_copy_is_exact_and_a_resent_copy_leaves_no_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let (connected, source, analytics) = sqlite_and_analytics(dir.path()).await;
    copy_twice_is_exact(
        &connected,
        &dir.path().join("migrations"),
        source.as_ref(),
        analytics.as_ref(),
        ("sqlite", "analytics"),
    )
    .await;
}

/// Postgres → a SQLite file, as the demo does with `DATABASE_URL` set to Postgres: values cross dialects as text.
#[tokio::test]
async fn a_postgres_to_sqlite_copy_is_exact_and_a_resent_copy_leaves_no_duplicates() {
    let db = TestDb::create("copy_sql_pg_sqlite").await;
    let (connected, analytics) =
        with_analytics(db.connect().await, "postgres", db.dir.path()).await;
    let source = connected.stores.sql("postgres").unwrap();
    copy_twice_is_exact(
        &connected,
        &db.migrations(),
        source.as_ref(),
        analytics.as_ref(),
        ("postgres", "analytics"),
    )
    .await;
}

/// SQLite → Postgres (the control table in the SQLite file, the target a Postgres database): the rows travel to
/// Postgres as one `text[]` per column and are cast back to the target's types there.
#[tokio::test]
async fn a_sqlite_to_postgres_copy_is_exact_and_a_resent_copy_leaves_no_duplicates() {
    let db = TestDb::create("copy_sql_sqlite_pg").await;
    let warehouse = db.connect().await.stores.postgres("postgres").unwrap();
    let tables: Vec<String> = TABLES.split(';').map(str::to_owned).collect();
    execute(&warehouse, &tables[1..]).await;
    std::fs::create_dir_all(db.dir.path().join("sqlite/background")).unwrap();
    let url = format!("sqlite://{}", db.dir.path().join("app.db").display());
    let mut connected = config::connect(&url).await.expect("connect");
    connected.control.ensure_schema().await.expect("schema");
    let source = connected.stores.sql("sqlite").unwrap();
    execute(source.as_ref(), &tables[..1]).await;
    execute(source.as_ref(), &sample_inserts()).await;
    connected.stores = connected
        .stores
        .clone()
        .with_postgres("warehouse", warehouse.clone());
    copy_twice_is_exact(
        &connected,
        &db.dir.path().join("sqlite"),
        source.as_ref(),
        &warehouse,
        ("sqlite", "warehouse"),
    )
    .await;
}

/// Adds `analytics.db` in `dir` as the `analytics` store, with the target table; fills the source table in the
/// store called `source`.
async fn with_analytics(
    mut connected: Connected,
    source: &str,
    dir: &std::path::Path,
) -> (Connected, Arc<dyn SqlStore>) {
    let file = dir.join("analytics.db");
    let pool = sqlite::connect_pool(&format!("sqlite://{}", file.display()), 4)
        .await
        .unwrap();
    let analytics: Arc<dyn SqlStore> =
        Arc::new(SqliteStore::new(pool, SqliteStore::id_for_path(&file)));
    let tables: Vec<String> = TABLES.split(';').map(str::to_owned).collect();
    let source = connected.stores.sql(source).unwrap();
    execute(source.as_ref(), &tables[..1]).await;
    execute(source.as_ref(), &sample_inserts()).await;
    execute(analytics.as_ref(), &tables[1..]).await;
    connected.stores = connected
        .stores
        .clone()
        .with_sql("analytics", analytics.clone());
    (connected, analytics)
}

/// Postgres → Postgres in the control database: each batch's upsert and checkpoint commit in one transaction.
#[tokio::test]
async fn a_postgres_to_postgres_copy_is_exact_and_a_resent_copy_leaves_no_duplicates() {
    let db = TestDb::create("copy_sql_pg").await;
    let connected = db.connect().await;
    let store = connected.stores.sql("postgres").unwrap();
    let tables: Vec<String> = TABLES.split(';').map(str::to_owned).collect();
    execute(store.as_ref(), &tables).await;
    execute(store.as_ref(), &sample_inserts()).await;

    copy_twice_is_exact(
        &connected,
        &db.migrations(),
        store.as_ref(),
        store.as_ref(),
        ("postgres", "postgres"),
    )
    .await;
}

/// `parallelism = 3` within one Postgres database (the in-database mover): three key ranges, each walked to its
/// end by one of two runners, make an exact copy.
#[tokio::test]
async fn a_postgres_copy_in_key_ranges_within_one_database_is_exact() {
    let db = TestDb::create("copy_sql_pg_ranges").await;
    let connected = db.connect().await;
    let store = connected.stores.sql("postgres").unwrap();
    let tables: Vec<String> = TABLES.split(';').map(str::to_owned).collect();
    execute(store.as_ref(), &tables).await;
    execute(store.as_ref(), &sample_inserts()).await;
    two_runners_copy_in_key_ranges_exactly(
        &connected,
        &db.migrations(),
        store.as_ref(),
        store.as_ref(),
        ("postgres", "postgres"),
    )
    .await;
}

/// `parallelism = 3` between two Postgres databases (the piped mover) is exact.
#[tokio::test]
async fn a_piped_postgres_copy_in_key_ranges_is_exact() {
    let (db, _origin, connected, source, target) =
        events_in_two_databases("copy_sql_pipe_ranges").await;
    two_runners_copy_in_key_ranges_exactly(
        &connected,
        &db.migrations(),
        &source,
        target.as_ref(),
        ("origin", "postgres"),
    )
    .await;
}

/// `parallelism = 3` into a SQLite file is exact from a second SQLite file (in the database, the source attached)
/// and from Postgres (through the worker, the rows path); SQLite's one writer takes the ranges' batches in turn.
#[tokio::test]
async fn sqlite_targets_copy_in_key_ranges_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (connected, source, analytics) = sqlite_and_analytics(dir.path()).await;
    two_runners_copy_in_key_ranges_exactly(
        &connected,
        &dir.path().join("migrations"),
        source.as_ref(),
        analytics.as_ref(),
        ("sqlite", "analytics"),
    )
    .await;

    let db = TestDb::create("copy_sql_rows_ranges").await;
    let dir = tempfile::tempdir().unwrap();
    let (connected, analytics) = with_analytics(db.connect().await, "postgres", dir.path()).await;
    let source = connected.stores.sql("postgres").unwrap();
    two_runners_copy_in_key_ranges_exactly(
        &connected,
        &db.migrations(),
        source.as_ref(),
        analytics.as_ref(),
        ("postgres", "analytics"),
    )
    .await;
}

/// A target without a unique key on the copy's key, or without one of the copied columns, fails the copy with a
/// message naming the problem, and no row is written.
#[tokio::test]
async fn a_target_without_the_unique_key_or_a_column_is_refused_before_any_row_moves() {
    let db = TestDb::create("copy_sql_refused").await;
    let connected = db.connect().await;
    let store = connected.stores.sql("postgres").unwrap();
    execute(
        store.as_ref(),
        &[
            TABLES.split(';').next().unwrap().to_owned(),
            "CREATE TABLE events_copy (grp text NOT NULL, id integer NOT NULL, body text, score double precision)"
                .into(),
            "CREATE TABLE events_narrow (grp text NOT NULL, id integer NOT NULL, PRIMARY KEY (grp, id))".into(),
        ],
    )
    .await;
    execute(store.as_ref(), &sample_inserts()).await;
    db.define(
        "20240101_0000_no_unique_key",
        &definition("postgres", "postgres"),
    );
    db.define(
        "20240101_0001_missing_column",
        &definition("postgres", "postgres").replace("events_copy", "events_narrow"),
    );
    run_to_end(&connected, &db.migrations()).await;

    let record = connected
        .control
        .get("20240101_0000_no_unique_key")
        .await
        .unwrap();
    assert_eq!(record.status, Status::Failed);
    let reason = record.failed_reason.unwrap_or_default();
    assert!(
        reason.contains("no unique index or primary key on exactly (grp, id)"),
        "{reason}"
    );
    let record = connected
        .control
        .get("20240101_0001_missing_column")
        .await
        .unwrap();
    assert_eq!(record.status, Status::Failed);
    let reason = record.failed_reason.unwrap_or_default();
    assert!(
        reason.contains(
            "column body: the target table events_narrow in store postgres has no column"
        ),
        "{reason}"
    );
    assert!(rows_of(store.as_ref(), "events_copy").await.is_empty());
}

/// One SQLite file holds the control table, the source and the target: each batch is one `INSERT ... SELECT` that
/// commits with its checkpoint.
#[tokio::test]
async fn a_copy_within_one_sqlite_file_is_exact_and_a_resent_copy_leaves_no_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("migrations/background")).unwrap();
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    let connected = config::connect(&url).await.expect("connect");
    connected.control.ensure_schema().await.expect("schema");
    let store = connected.stores.sql("sqlite").unwrap();
    let tables: Vec<String> = TABLES.split(';').map(str::to_owned).collect();
    execute(store.as_ref(), &tables).await;
    execute(store.as_ref(), &sample_inserts()).await;
    copy_twice_is_exact(
        &connected,
        &dir.path().join("migrations"),
        store.as_ref(),
        store.as_ref(),
        ("sqlite", "sqlite"),
    )
    .await;
}

/// A Postgres store on `db` that is not a control database (no control table in it).
async fn plain_pg_store(db: &TestDb) -> PgStore {
    let pool = postgres::connect_pool(&db.url, 4).await.expect("connect");
    PgStore::new(pool, PgStore::id_for_url(&db.url))
}

/// A control database with the empty target table, and the store `origin` on a second database with the filled
/// source table (both named after `test`): returns both databases, the stores configured, the source and the target.
async fn events_in_two_databases(
    test: &str,
) -> (TestDb, TestDb, Connected, PgStore, Arc<dyn SqlStore>) {
    let db = TestDb::create(test).await;
    let origin = TestDb::create(&format!("{test}_origin")).await;
    let mut connected = db.connect().await;
    let target = connected.stores.sql("postgres").unwrap();
    let source = plain_pg_store(&origin).await;
    let tables: Vec<String> = TABLES.split(';').map(str::to_owned).collect();
    execute(&source, &tables[..1]).await;
    execute(&source, &sample_inserts()).await;
    execute(target.as_ref(), &tables[1..]).await;
    connected.stores = connected
        .stores
        .clone()
        .with_postgres("origin", source.clone());
    (db, origin, connected, source, target)
}

/// Postgres → a second Postgres database (the target holds the control table): `COPY` piped straight into the
/// target table with the checkpoint, and, when every batch is sent again, into a staging table upserted from there.
#[tokio::test]
async fn a_copy_between_two_postgres_databases_is_exact_and_a_resent_copy_leaves_no_duplicates() {
    let (db, _origin, connected, source, target) = events_in_two_databases("copy_sql_pipe").await;
    copy_twice_is_exact(
        &connected,
        &db.migrations(),
        &source,
        target.as_ref(),
        ("origin", "postgres"),
    )
    .await;
}

/// Values piped between two Postgres databases in `COPY`'s text format come out exactly as they went in: numerics
/// beyond a double's precision, timestamps with and without a zone, floats, NULLs beside the text `\N` and `NULL`,
/// text with tabs, newlines and backslashes, JSON, bytes, arrays and uuids.
#[tokio::test]
async fn values_piped_between_two_postgres_databases_keep_their_exact_types() {
    let db = TestDb::create("copy_sql_pipe_types").await;
    let origin = TestDb::create("copy_sql_pipe_types_origin").await;
    let mut connected = db.connect().await;
    let target = connected.stores.sql("postgres").unwrap();
    let source = plain_pg_store(&origin).await;
    let table = |name: &str| {
        format!(
            "CREATE TABLE {name} (id bigint PRIMARY KEY, amount numeric(30, 10), huge numeric, ratio double precision, \
             at timestamptz, local_at timestamp(3), day date, body text, doc jsonb, raw bytea, tags text[], uid uuid, \
             flag boolean)"
        )
    };
    execute(&source, &[table("typed"), r#"INSERT INTO typed VALUES
        (1, 12345678901234567890.0123456789, -99999999999999999999999999.99999999999999, 0.1,
         '2024-10-24 12:00:00.123456+02', '1970-01-01 00:00:00.001', '2024-02-29',
         E'tab\there\nnew line\\back slash\r\n', '{"a": [1, "x\ty"], "b": null}', '\x00ff5c0a',
         ARRAY['a,b', 'c"d', NULL, E'e\\f', ''], 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', true),
        (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
        (3, -0.0000000001, 1e-40, 1e-300, '1900-01-01 00:00:00+00', '2038-01-19 03:14:07.999', '0001-01-01',
         E'\\N', 'null', '\x', '{}', '00000000-0000-0000-0000-000000000000', false),
        (4, 0, 0, 'NaN', 'infinity', '-infinity', 'infinity', 'NULL', '""', '\x5c4e', '{NULL}', NULL, NULL),
        (5, 1, 3.14159265358979323846264338327950288, 0.3333333333333333, '2024-03-31 01:59:59.999999-11:30',
         NULL, NULL, '', '[]', NULL, ARRAY[E'line\nbreak', E'\t'], NULL, true)"#
        .to_owned()]).await;
    execute(target.as_ref(), &[table("typed_copy")]).await;
    connected.stores = connected
        .stores
        .clone()
        .with_postgres("origin", source.clone());
    db.define(
        "20240101_0000_copy_typed",
        "kind = \"copy\"\nfrom = { store = \"origin\", table = \"typed\", key = [\"id\"] }\n\
         to = { store = \"postgres\", table = \"typed_copy\" }\n[args]\nbatchSize = 2\n",
    );
    run_to_end(&connected, &db.migrations()).await;
    let record = connected
        .control
        .get("20240101_0000_copy_typed")
        .await
        .unwrap();
    assert_eq!(
        (record.status, record.rows_done),
        (Status::Finished, 5),
        "{record:?}"
    );
    let rows = |table: &str| format!("SELECT t::text FROM {table} AS t ORDER BY t.id");
    let (expected, copied) = (
        all_text(&source, &rows("typed")).await,
        all_text(target.as_ref(), &rows("typed_copy")).await,
    );
    assert_eq!(copied, expected);
    let first = expected[0][0].as_deref().unwrap_or_default();
    assert!(first.contains("tab\there\nnew line"), "{first}");
}

/// Every row of a query whose columns are text.
async fn all_text(store: &dyn SqlStore, sql: &str) -> Vec<Vec<Option<String>>> {
    let mut tx = store.begin_read().await.expect("begin");
    let rows = tx.fetch_all_text(sql, &[]).await.expect(sql);
    tx.commit().await.expect("commit");
    rows
}

/// A trigger on the target that fails the insert of the row (g-4, 1500), half-way through the key order.
fn failing_trigger(target: &dyn SqlStore) -> Vec<String> {
    match target.dialect() {
        bgmigrate::store::Dialect::Sqlite => vec![
            "CREATE TRIGGER boom BEFORE INSERT ON events_copy WHEN NEW.id = 1500 BEGIN SELECT RAISE(ABORT, 'boom'); END"
                .into(),
        ],
        bgmigrate::store::Dialect::Postgres => vec![
            "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN IF NEW.id = 1500 THEN RAISE EXCEPTION 'boom'; END IF; RETURN NEW; END $$"
                .into(),
            "CREATE TRIGGER boom BEFORE INSERT ON events_copy FOR EACH ROW EXECUTE FUNCTION boom()".into(),
        ],
    }
}

/// Runs a copy whose batch fails half-way (a target trigger), then, the trigger dropped, retries it: the copy
/// resumes from its checkpoint, and the target ends equal to the source with every row counted once.
async fn a_failed_copy_resumes_exactly(
    connected: &Connected,
    migrations: &std::path::Path,
    source: &dyn SqlStore,
    target: &dyn SqlStore,
    names: (&str, &str),
) {
    let name = "20240101_0000_copy_events";
    execute(target, &failing_trigger(target)).await;
    std::fs::write(
        migrations.join("background").join(format!("{name}.toml")),
        definition(names.0, names.1),
    )
    .unwrap();
    run_to_end(connected, migrations).await;
    let failed = connected.control.get(name).await.unwrap();
    assert_eq!(failed.status, Status::Failed, "{failed:?}");
    assert!(
        failed
            .failed_reason
            .as_deref()
            .unwrap_or_default()
            .contains("boom"),
        "{failed:?}"
    );
    let copied = rows_of(target, "events_copy").await.len();
    assert!(
        copied > 0 && copied < ROWS,
        "{copied} rows copied before the failure"
    );
    assert_eq!(failed.rows_done, copied as i64, "{failed:?}");

    let drop = match target.dialect() {
        bgmigrate::store::Dialect::Sqlite => "DROP TRIGGER boom",
        bgmigrate::store::Dialect::Postgres => "DROP TRIGGER boom ON events_copy",
    };
    execute(target, &[drop.to_owned()]).await;
    connected
        .control
        .act(name, Action::Retry, false, "test")
        .await
        .expect("retry");
    run_to_end(connected, migrations).await;
    let record = connected.control.get(name).await.unwrap();
    assert_eq!(
        (record.status, record.rows_done),
        (Status::Finished, ROWS as i64),
        "{record:?}"
    );
    assert_eq!(
        rows_of(target, "events_copy").await,
        rows_of(source, "events").await
    );
}

/// SQLite → a second SQLite file (the source attached to the target): a batch that fails half-way leaves the
/// checkpoint before it, and the retried copy ends exact.
#[tokio::test]
async fn a_sqlite_copy_that_failed_half_way_resumes_from_its_checkpoint_and_ends_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (connected, source, analytics) = sqlite_and_analytics(dir.path()).await;
    a_failed_copy_resumes_exactly(
        &connected,
        &dir.path().join("migrations"),
        source.as_ref(),
        analytics.as_ref(),
        ("sqlite", "analytics"),
    )
    .await;
}

/// Postgres → a second Postgres database (piped): a batch that fails half-way leaves the checkpoint before it,
/// and the retried copy ends exact.
#[tokio::test]
async fn a_piped_postgres_copy_that_failed_half_way_resumes_from_its_checkpoint_and_ends_exact() {
    let (db, _origin, connected, source, target) =
        events_in_two_databases("copy_sql_pipe_resume").await;
    a_failed_copy_resumes_exactly(
        &connected,
        &db.migrations(),
        &source,
        target.as_ref(),
        ("origin", "postgres"),
    )
    .await;
}

/// A copy from one SQLite file into another reads the source through a read-only attachment: it runs to the end
/// while another connection holds the source file's write lock (the control table is in a third file).
#[tokio::test]
async fn a_sqlite_copy_runs_while_another_connection_holds_the_source_files_write_lock() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("migrations/background")).unwrap();
    let url = format!("sqlite://{}", dir.path().join("control.db").display());
    let mut connected = config::connect(&url).await.expect("connect");
    connected.control.ensure_schema().await.expect("schema");
    let app_file = dir.path().join("app.db");
    let app_url = format!("sqlite://{}", app_file.display());
    let app: Arc<dyn SqlStore> = Arc::new(SqliteStore::new(
        sqlite::connect_pool(&app_url, 4).await.unwrap(),
        SqliteStore::id_for_path(&app_file),
    ));
    connected.stores = connected.stores.clone().with_sql("app", app.clone());
    let (connected, analytics) = with_analytics(connected, "app", dir.path()).await;
    let expected = rows_of(app.as_ref(), "events").await;

    let writer = sqlite::connect_pool(&app_url, 1).await.unwrap();
    let mut lock = writer
        .begin_with(sqlite::BEGIN_IMMEDIATE)
        .await
        .expect("lock");
    sqlx::query("UPDATE events SET body = 'uncommitted' WHERE id = 1")
        .execute(&mut *lock)
        .await
        .unwrap();
    std::fs::write(
        dir.path()
            .join("migrations/background/20240101_0000_copy_events.toml"),
        definition("app", "analytics"),
    )
    .unwrap();
    tokio::time::timeout(
        Duration::from_secs(20),
        run_to_end(&connected, &dir.path().join("migrations")),
    )
    .await
    .expect("the copy does not wait for the source's write lock");
    lock.rollback().await.unwrap();
    let record = connected
        .control
        .get("20240101_0000_copy_events")
        .await
        .unwrap();
    assert_eq!(
        (record.status, record.rows_done),
        (Status::Finished, ROWS as i64),
        "{record:?}"
    );
    assert_eq!(rows_of(analytics.as_ref(), "events_copy").await, expected);
}
