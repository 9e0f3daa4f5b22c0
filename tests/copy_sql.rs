//! The `copy` kind between SQL stores, through the same code for SQLite → SQLite (a second database file),
//! Postgres → Postgres (the control database itself), Postgres → SQLite and SQLite → Postgres: exact copies for text and composite keys, NULLs and unicode,
//! small batches under `maxBatchBytes`, and no duplicate when every batch is sent again.

mod common;

use std::sync::Arc;

use bgmigrate::Status;
use bgmigrate::config::{self, Connected};
use bgmigrate::store::{SqlStore, SqliteStore, sqlite};
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

/// SQLite → a second SQLite file (not the control database: the engine writes the checkpoint after the upsert).
#[tokio::test]
async fn a_sqlite_to_sqlite_copy_is_exact_and_a_resent_copy_leaves_no_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("migrations/background")).unwrap();
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    let connected = config::connect(&url).await.expect("connect");
    connected.control.ensure_schema().await.expect("schema");
    let (connected, analytics) = with_analytics(connected, "sqlite", dir.path()).await;
    let source = connected.stores.sql("sqlite").unwrap();
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
