//! The `copy` kind from a real SQLite file into the real ClickHouse server (18.16 on the test machine): an exact copy
//! of values of every storage class, a copy sent twice that leaves one row per key, a copy split into key ranges, a
//! worker killed mid-copy whose
//! successor ends exact, and a value that does not fit its column failing the batch with key, column, value and
//! type named, nothing of that batch written, and a retry that resumes from the checkpoint.

mod clickhouse_common;
mod common;

use std::path::PathBuf;
use std::time::Duration;

use bgmigrate::config::{self, Connected};
use bgmigrate::{Action, Status};
use clickhouse_common::TestClickHouse;
use common::{run_to_end, text, wait_until};

/// Rows in the source: several batches, an odd last one.
const ROWS: i64 = 3_000;

/// The source table: declared types are only hints in SQLite, so the columns hold values of several storage classes.
const SQLITE_EVENTS: &str = "CREATE TABLE events (id INTEGER PRIMARY KEY, name TEXT, score REAL, amount, \
                             created, flag INTEGER NOT NULL, tags TEXT, uid BLOB)";

/// The target, in types ClickHouse 18.16 has.
const CH_EVENTS: &str = "CREATE TABLE events (id UInt32, name Nullable(String), score Float64, \
                         amount Decimal(18, 4), created DateTime, flag UInt8, tags Array(Nullable(Int64)), \
                         uid Nullable(UUID)) ENGINE = ReplacingMergeTree ORDER BY id";

/// Row `n` (1-based) as SQLite `VALUES`: unicode, NULLs, REAL and TEXT amounts, timestamps as text and as unix
/// seconds, JSON arrays, UUIDs as text and as 16-byte blobs.
fn source_row(n: i64) -> String {
    let name = match n % 7 {
        0 => "NULL".to_owned(),
        1 => format!("'ünïcödé ☃ 漢字 {n}'"),
        _ => format!("'it''s {n}'"),
    };
    let amount = if n % 2 == 0 {
        format!("'{n}.0625'")
    } else {
        format!("{n}")
    };
    let created = if n % 3 == 0 {
        format!("{}", 1_729_771_200 + n)
    } else {
        format!("'2024-10-24 12:{:02}:{:02}'", (n / 60) % 60, n % 60)
    };
    let tags = if n % 5 == 0 {
        "'[]'".to_owned()
    } else {
        format!("'[{n}, null, {}]'", n * 2)
    };
    let uid = match n % 3 {
        0 => "NULL".to_owned(),
        1 => format!("'{}'", uuid_text(n)),
        _ => format!("x'{}'", uuid_text(n).replace('-', "")),
    };
    format!(
        "({n}, {name}, {n}.5, {amount}, {created}, {}, {tags}, {uid})",
        n % 2
    )
}

fn uuid_text(n: i64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// Row `n` as ClickHouse prints the query in [`clickhouse_rows`].
fn expected_row(n: i64) -> Vec<String> {
    let name = match n % 7 {
        0 => "NULL".to_owned(),
        1 => format!("ünïcödé ☃ 漢字 {n}"),
        _ => format!("it's {n}"),
    };
    let amount = if n % 2 == 0 {
        format!("{n}.0625")
    } else {
        format!("{n}.0000")
    };
    let created = if n % 3 == 0 {
        1_729_771_200 + n
    } else {
        1_729_771_200 + ((n / 60) % 60) * 60 + n % 60
    };
    let tags = if n % 5 == 0 {
        String::new()
    } else {
        format!("{n}|NULL|{}", n * 2)
    };
    let uid = if n % 3 == 0 {
        "NULL".to_owned()
    } else {
        uuid_text(n)
    };
    [
        n.to_string(),
        name,
        format!("{n}.5"),
        amount,
        created.to_string(),
        (n % 2).to_string(),
        tags,
        uid,
    ]
    .into()
}

/// Every row in ClickHouse (deduplicated at read time with `FINAL`), in key order. On a client of its own: the
/// server may have closed the fixture client's idle keep-alive connection while a worker process ran.
async fn clickhouse_rows(ch: &TestClickHouse) -> Vec<Vec<String>> {
    bgmigrate::clickhouse::ClickHouse::from_url(&ch.url)
        .expect("clickhouse url")
        .query_rows(
            "SELECT toString(id), ifNull(name, 'NULL'), toString(score), toString(amount), \
                    toString(toUInt32(created)), toString(flag), \
                    arrayStringConcat(arrayMap(x -> ifNull(toString(x), 'NULL'), tags), '|'), \
                    ifNull(toString(uid), 'NULL') \
             FROM events FINAL ORDER BY id",
        )
        .await
        .expect("read ClickHouse")
}

/// A test's SQLite control database (`app.db`, store `sqlite`, also the copy's source) filled with [`ROWS`]
/// events, and its own ClickHouse database with the empty target.
struct Fixture {
    dir: tempfile::TempDir,
    ch: TestClickHouse,
    connected: Connected,
    source: sqlx::SqlitePool,
}

impl Fixture {
    async fn create(test: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("migrations/background")).unwrap();
        let ch = TestClickHouse::create(test).await;
        ch.exec(CH_EVENTS).await;
        let url = format!("sqlite://{}", dir.path().join("app.db").display());
        let connected = config::connect(&url)
            .await
            .expect("connect")
            .with_clickhouse(Some(&ch.url))
            .expect("clickhouse url");
        connected.control.ensure_schema().await.expect("schema");
        let source = connected.stores.sqlite("sqlite").unwrap().pool().clone();
        sqlx::query(SQLITE_EVENTS).execute(&source).await.unwrap();
        let rows: Vec<String> = (1..=ROWS).map(source_row).collect();
        for chunk in rows.chunks(500) {
            let insert = format!("INSERT INTO events VALUES {}", chunk.join(", "));
            sqlx::query(sqlx::AssertSqlSafe(insert))
                .execute(&source)
                .await
                .unwrap();
        }
        Fixture {
            dir,
            ch,
            connected,
            source,
        }
    }

    fn migrations(&self) -> PathBuf {
        self.dir.path().join("migrations")
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("app.db").display())
    }

    /// Writes the copy's definition as `name`, with `args` (TOML lines).
    fn define(&self, name: &str, args: &str) {
        std::fs::write(
            self.migrations()
                .join("background")
                .join(format!("{name}.toml")),
            format!(
                "kind = \"copy\"\nfrom = {{ store = \"sqlite\", table = \"events\", key = [\"id\"] }}\n\
                 to = {{ store = \"clickhouse\", table = \"events\" }}\n[args]\n{args}\n"
            ),
        )
        .unwrap();
    }

    async fn run(&self) {
        run_to_end(&self.connected, &self.migrations()).await;
    }

    async fn assert_exact(&self) {
        let expected: Vec<Vec<String>> = (1..=ROWS).map(expected_row).collect();
        let copied = clickhouse_rows(&self.ch).await;
        assert_eq!(copied.len(), expected.len());
        for (copied, expected) in copied.iter().zip(&expected) {
            assert_eq!(copied, expected);
        }
    }
}

fn assert_finished(connected_record: &bgmigrate::control::MigrationRecord) {
    assert_eq!(
        connected_record.status,
        Status::Finished,
        "{:?}",
        connected_record.failed_reason
    );
}

/// Every value arrives exactly in its column's type, whatever SQLite stored it as (TEXT or INTEGER timestamps and
/// decimals, JSON arrays, UUIDs as text or blobs, NULLs, unicode); a second copy of the same rows (every batch
/// sent again, as after a crash) leaves one row per key.
#[tokio::test]
async fn a_sqlite_table_copies_into_clickhouse_exactly_and_a_resent_copy_leaves_no_duplicates() {
    let fixture = Fixture::create("sqlite_ch_exact").await;
    fixture.define("20240101_0001_copy_events", "batchSize = 700");
    fixture.run().await;
    let first = fixture
        .connected
        .control
        .get("20240101_0001_copy_events")
        .await
        .unwrap();
    assert_finished(&first);
    assert_eq!(first.rows_done, ROWS);
    assert_eq!(first.state["cursor"], serde_json::json!([ROWS.to_string()]));
    fixture.assert_exact().await;

    fixture.define("20240101_0002_copy_events_again", "batchSize = 1000");
    fixture.run().await;
    let again = fixture
        .connected
        .control
        .get("20240101_0002_copy_events_again")
        .await
        .unwrap();
    assert_finished(&again);
    assert_eq!(again.rows_done, ROWS, "every row was sent a second time");
    fixture.assert_exact().await;
}

/// With `parallelism = 2` the copy's key space is cut on the SQLite key's index into ranges, each walked to its end,
/// and the copy is exact.
#[tokio::test]
async fn a_copy_split_into_key_ranges_is_exact() {
    let fixture = Fixture::create("sqlite_ch_ranges").await;
    let name = "20240101_0001_copy_events";
    fixture.define(name, "batchSize = 400\nparallelism = 2");
    fixture.run().await;
    let record = fixture.connected.control.get(name).await.unwrap();
    assert_finished(&record);
    assert_eq!(record.rows_done, ROWS);
    let ranges = fixture.connected.control.ranges(name).await.unwrap();
    assert!(
        ranges.len() >= 2 && ranges.iter().all(|r| r.done),
        "{ranges:?}"
    );
    fixture.assert_exact().await;
}

/// A worker process killed mid-copy leaves a running migration with its checkpoint; the next worker resumes it
/// and the copy ends exact, the re-sent batch collapsing in the ReplacingMergeTree.
#[tokio::test]
async fn a_worker_killed_mid_copy_is_resumed_by_the_next_and_the_copy_ends_exact() {
    let fixture = Fixture::create("sqlite_ch_kill").await;
    let name = "20240101_0001_copy_events";
    fixture.define(name, "batchSize = 100\nsleepMs = 30");
    let worker = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_bgmigrate"));
        command
            .args(args)
            .env("DATABASE_URL", fixture.url())
            .env("BGMIGRATE_MIGRATIONS_DIR", fixture.migrations())
            .env("CLICKHOUSE_URL", &fixture.ch.url)
            .env("BGMIGRATE_LEASE_TTL", "2s")
            .env("BGMIGRATE_HEARTBEAT", "500ms")
            .env("BGMIGRATE_POLL", "200ms")
            .env_remove("ENABLE_BACKGROUND_MIGRATIONS");
        command
    };
    let migrate = worker(&["migrate"]).output().unwrap();
    assert!(migrate.status.success(), "{}", text(&migrate));
    let mut first = worker(&["worker"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let control = fixture.connected.control.clone();
    wait_until(
        "the first worker copied some batches",
        Duration::from_secs(60),
        || async { control.get(name).await.is_ok_and(|r| r.rows_done >= 500) },
    )
    .await;
    first.kill().unwrap();
    first.wait().unwrap();
    let killed = control.get(name).await.unwrap();
    assert_eq!(killed.status, Status::Running, "killed mid-copy");
    assert!(killed.rows_done < ROWS, "killed before the end");

    let out = worker(&["worker", "--exit-when-done"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_finished(&control.get(name).await.unwrap());
    fixture.assert_exact().await;
}

/// A TEXT that is no number in a column copied into `UInt8` fails its batch naming the key, the column, the value
/// and the type; none of that batch's rows reach ClickHouse; once the value is fixed, a retry resumes from the
/// checkpoint and the copy ends exact.
#[tokio::test]
async fn a_value_that_does_not_fit_fails_naming_key_column_value_and_type_and_a_retry_resumes() {
    let fixture = Fixture::create("sqlite_ch_misfit").await;
    let name = "20240101_0001_copy_events";
    sqlx::query("UPDATE events SET flag = 'yes' WHERE id = 1234")
        .execute(&fixture.source)
        .await
        .unwrap();
    fixture.define(name, "batchSize = 500");
    fixture.run().await;
    let failed = fixture.connected.control.get(name).await.unwrap();
    assert_eq!(failed.status, Status::Failed, "{failed:?}");
    assert_eq!(
        failed.failed_reason.as_deref(),
        Some(
            "the row with key (1234): column flag (SQLite INTEGER) holds \"yes\", which does not fit the \
             ClickHouse type UInt8: it is not a decimal number"
        )
    );
    assert_eq!(
        failed.rows_done, 1_000,
        "two batches before the failing one"
    );
    assert_eq!(
        fixture
            .ch
            .value("SELECT toString(count()) || ' ' || toString(max(id)) FROM events")
            .await,
        "1000 1000",
        "nothing of the failed batch was written"
    );

    sqlx::query("UPDATE events SET flag = 0 WHERE id = 1234")
        .execute(&fixture.source)
        .await
        .unwrap();
    fixture
        .connected
        .control
        .act(name, Action::Retry, false, "test")
        .await
        .expect("retry");
    fixture.run().await;
    let record = fixture.connected.control.get(name).await.unwrap();
    assert_finished(&record);
    assert_eq!(
        fixture.ch.value("SELECT count() FROM events").await,
        ROWS.to_string(),
        "resumed after the last batch written: no row sent twice"
    );
    fixture.assert_exact().await;
}

/// A SQLite source refuses what only a Postgres source can do, before any row moves: a physical walk.
#[tokio::test]
async fn a_physical_order_copy_from_sqlite_fails_validation_saying_to_remove_order() {
    let fixture = Fixture::create("sqlite_ch_physical").await;
    let name = "20240101_0001_copy_events";
    std::fs::write(
        fixture
            .migrations()
            .join("background")
            .join(format!("{name}.toml")),
        "kind = \"copy\"\nfrom = { store = \"sqlite\", table = \"events\", key = [\"id\"], order = \"physical\" }\n\
         to = { store = \"clickhouse\", table = \"events\" }\n",
    )
    .unwrap();
    fixture.run().await;
    let failed = fixture.connected.control.get(name).await.unwrap();
    assert_eq!(failed.status, Status::Failed);
    assert!(
        failed
            .failed_reason
            .as_deref()
            .unwrap_or_default()
            .contains("a SQLite source is walked in key order, so remove order"),
        "{:?}",
        failed.failed_reason
    );
    assert_eq!(fixture.ch.value("SELECT count() FROM events").await, "0");
}
