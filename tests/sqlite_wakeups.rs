//! Wake-ups across processes on SQLite: a worker idling on a SQLite control file picks up a retry made by another
//! process (the CLI) within about a second — it watches the file's `PRAGMA data_version` — not at its next poll.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bgmigrate::{Status, config};
use common::text;

const NAME: &str = "20240101_0001_totals";

/// The CLI on the SQLite control file `url`, with the migrations in `dir`.
fn bgmigrate(dir: &Path, url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bgmigrate"));
    command
        .current_dir(dir)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "info,sqlx=warn")
        .env_remove("BGMIGRATE_MIGRATIONS_DIR")
        .env_remove("CLICKHOUSE_URL");
    command
}

/// A cancelled migration, a worker process idling with a 30 s poll, then `bgmigrate retry` from another process:
/// the worker claims the migration within 2 s of the retry (the poll alone would take up to 30 s; by default 5 s).
#[tokio::test]
async fn an_idle_worker_picks_up_another_processs_retry_within_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    let connected = config::connect(&url).await.unwrap();
    let store = connected.stores.sql("sqlite").unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.execute_script(
        "CREATE TABLE items (id integer PRIMARY KEY, a integer, total integer);
         INSERT INTO items (id, a) VALUES (1, 1), (2, 2), (3, 3)",
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let background = dir.path().join("migrations/background");
    std::fs::create_dir_all(&background).unwrap();
    std::fs::write(
        background.join(format!("{NAME}.toml")),
        "kind = \"backfill\"\nstore = \"sqlite\"\ntable = \"items\"\nkey = [\"id\"]\nset = { total = \"a\" }\n",
    )
    .unwrap();
    for args in [&["migrate"][..], &["cancel", NAME][..]] {
        let output = bgmigrate(dir.path(), &url).args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", text(&output));
    }

    let mut worker = bgmigrate(dir.path(), &url)
        .args(["worker", "--poll", "30s"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the worker");
    let mut lines = BufReader::new(worker.stderr.take().unwrap()).lines();
    lines
        .by_ref()
        .map_while(Result::ok)
        .find(|line| line.contains("worker started"))
        .expect("the worker starts");
    // Room for its first (empty) claim and the watcher's first reading.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        connected.control.get(NAME).await.unwrap().status,
        Status::Cancelled
    );

    let retry = bgmigrate(dir.path(), &url)
        .args(["retry", NAME])
        .output()
        .unwrap();
    let retried = Instant::now();
    assert!(retry.status.success(), "{}", text(&retry));
    let picked_up = loop {
        let status = connected.control.get(NAME).await.unwrap().status;
        if matches!(status, Status::Running | Status::Finished) {
            break retried.elapsed();
        }
        if retried.elapsed() > Duration::from_secs(10) {
            break retried.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    worker.kill().expect("stop the worker");
    let _ = worker.wait();
    assert!(
        picked_up < Duration::from_secs(2),
        "the worker picked the retry up after {picked_up:?}"
    );
    println!("picked up {picked_up:?} after the retry");
}
