//! Shared test fixtures: a fresh Postgres database per test, a migrations directory, the CLI binary, and a fast
//! runner configuration. Each test owns its database; it is dropped when the fixture is.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bgmigrate::config::{self, Connected};
use bgmigrate::engine::RetryPolicy;
use bgmigrate::{RunnerConfig, Status};

/// Where the test Postgres listens (the machine's service; CI starts it with scripts/ensure-services.sh).
pub fn admin_url() -> String {
    std::env::var("BGMIGRATE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A database of its own, dropped (with its connections) when this value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl TestDb {
    /// Creates an empty database named after the test.
    pub async fn create(test: &str) -> TestDb {
        let name = format!(
            "bgm_{}_{}_{}",
            test.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(30)
                .collect::<String>(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        psql(&format!("CREATE DATABASE {name}"));
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("migrations/background")).unwrap();
        std::fs::create_dir_all(dir.path().join("migrations/postgres")).unwrap();
        TestDb {
            url: format!("{}/{name}", admin_url()),
            name,
            dir,
        }
    }

    /// Connects the library to this database.
    pub async fn connect(&self) -> Connected {
        let connected = config::connect(&self.url).await.expect("connect");
        connected
            .control
            .ensure_schema()
            .await
            .expect("control schema");
        connected
    }

    /// Connects the library to this database and to the ClickHouse at `clickhouse_url` (the `clickhouse` store).
    pub async fn connect_with_clickhouse(&self, clickhouse_url: &str) -> Connected {
        self.connect()
            .await
            .with_clickhouse(Some(clickhouse_url))
            .expect("clickhouse url")
    }

    /// `(kind, actor, detail)` of every event of `name`, oldest first, read through the control store.
    pub async fn events(&self, name: &str) -> Vec<(String, String, serde_json::Value)> {
        let events = self.connect().await.control.events(name, i64::MAX).await;
        let mut events: Vec<_> = events
            .expect("events")
            .into_iter()
            .map(|e| (e.kind, e.actor, e.detail))
            .collect();
        events.reverse();
        events
    }

    /// `(batch_size, rows, state)` of every recorded batch of `name`, oldest first, read through the control store.
    pub async fn batches(&self, name: &str) -> Vec<(i32, i64, serde_json::Value)> {
        let batches = self.connect().await.control.batches(name, i64::MAX).await;
        let mut batches: Vec<_> = batches
            .expect("batches")
            .into_iter()
            .map(|b| (b.batch_size, b.rows, b.state))
            .collect();
        batches.reverse();
        batches
    }

    /// A plain pool for arranging and checking data.
    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url).await.expect("pool")
    }

    /// The migrations directory of this test.
    pub fn migrations(&self) -> PathBuf {
        self.dir.path().join("migrations")
    }

    /// Writes `background/NAME.toml`.
    pub fn define(&self, name: &str, toml: &str) {
        std::fs::write(
            self.migrations()
                .join("background")
                .join(format!("{name}.toml")),
            toml,
        )
        .unwrap();
    }

    /// Writes `postgres/FILE`.
    pub fn fast_migration(&self, file: &str, sql: &str) {
        std::fs::write(self.migrations().join("postgres").join(file), sql).unwrap();
    }

    /// Runs the CLI against this database and directory.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_env(args, &[])
    }

    /// Runs the CLI with extra environment variables.
    pub fn cli_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.command(args, env).output().expect("run bgmigrate")
    }

    /// The CLI as a command, for spawning.
    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_bgmigrate"));
        command
            .args(args)
            .env("DATABASE_URL", &self.url)
            .env("BGMIGRATE_MIGRATIONS_DIR", self.migrations())
            .env_remove("ENABLE_BACKGROUND_MIGRATIONS")
            .env("RUST_LOG", "info,sqlx=warn");
        for (key, value) in env {
            command.env(key, value);
        }
        command
    }

    /// Runs one `worker --exit-when-done` process per id at once, with `env`, and waits until every one exited
    /// successfully.
    pub fn run_workers(&self, ids: &[&str], env: &[(&str, &str)]) {
        let workers: Vec<_> = ids
            .iter()
            .map(|id| {
                self.command(&["worker", "--exit-when-done", "--worker-id", id], env)
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("spawn a worker")
            })
            .collect();
        for (mut worker, id) in workers.into_iter().zip(ids) {
            assert!(worker.wait().expect("wait").success(), "worker {id} failed");
        }
    }

    /// Registers the definitions, runs two worker processes (`w1`, `w2`, short leases) on them with ClickHouse at
    /// `clickhouse_url`, and checks that migration `name` finished in at least two ranges, every one done, both
    /// workers among their walkers. Returns the stores and the ranges.
    pub async fn two_workers_finish_in_ranges(
        &self,
        clickhouse_url: &str,
        name: &str,
    ) -> (Connected, Vec<bgmigrate::control::RangeRecord>) {
        let env = [
            ("CLICKHOUSE_URL", clickhouse_url),
            ("BGMIGRATE_LEASE_TTL", "2s"),
            ("BGMIGRATE_HEARTBEAT", "500ms"),
            ("BGMIGRATE_POLL", "200ms"),
        ];
        assert!(self.cli_with_env(&["migrate"], &env).status.success());
        self.run_workers(&["w1", "w2"], &env);
        let connected = self.connect_with_clickhouse(clickhouse_url).await;
        let record = connected.control.get(name).await.expect("row");
        assert_eq!(
            record.status,
            Status::Finished,
            "{:?}",
            record.failed_reason
        );
        let ranges = connected.control.ranges(name).await.expect("ranges");
        assert!(
            ranges.len() >= 2 && ranges.iter().all(|r| r.done),
            "{ranges:?}"
        );
        let walkers: std::collections::BTreeSet<_> =
            ranges.iter().filter_map(|r| r.worker_id.clone()).collect();
        assert_eq!(walkers.len(), 2, "both workers walked ranges: {ranges:?}");
        (connected, ranges)
    }

    /// Status of one migration, read from the control table.
    pub async fn status_of(&self, name: &str) -> Status {
        let connected = self.connect().await;
        connected.control.get(name).await.expect("row").status
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// Runs `sql` as the admin on the server's `postgres` database, asserting it succeeds.
pub fn psql(sql: &str) {
    let url = format!("{}/postgres", admin_url());
    let status = Command::new("psql")
        .args([url.as_str(), "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .status()
        .expect("psql");
    assert!(status.success(), "psql failed: {sql}");
}

/// A runner configuration with short leases and quick polling, for tests.
pub fn fast_config(worker_id: &str) -> RunnerConfig {
    RunnerConfig {
        worker_id: worker_id.to_owned(),
        lease_ttl: Duration::from_secs(2),
        heartbeat_interval: Duration::from_millis(300),
        poll_interval: Duration::from_millis(200),
        exit_when_done: true,
        enabled: true,
        retry: RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(400),
        },
        progress_log_interval: Duration::from_secs(5),
    }
}

/// Polls `check` until it returns true or `timeout` passes (then panics with `what`).
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < timeout,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// stdout and stderr of a CLI run, for assertion messages.
pub fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Registers the directory's definitions through the library, as `migrate` does.
pub async fn register_dir(connected: &Connected, dir: &Path, registry: &bgmigrate::Registry) {
    let registrations =
        bgmigrate::definition::load_dir(&dir.join("background")).expect("definitions");
    connected
        .control
        .register(&registrations, registry)
        .await
        .expect("register");
}

/// Registers one migration of a built-in kind through the library (no definition file), running after every
/// earlier one.
pub async fn register_builtin(
    connected: &Connected,
    name: &str,
    script: &str,
    params: serde_json::Value,
    args: serde_json::Value,
) {
    let registration = bgmigrate::Registration {
        name: name.into(),
        script: script.into(),
        params,
        args,
        depends_on: None,
    };
    connected
        .control
        .register(&[registration], &bgmigrate::builtin_registry())
        .await
        .expect("register");
}

/// Starts one library runner named `worker` on the built-in kinds, with [`fast_config`] (`--exit-when-done`).
pub fn spawn_runner(connected: &Connected, worker: &str) -> bgmigrate::RunnerHandle {
    bgmigrate::Runner::new(
        connected.control.clone(),
        bgmigrate::builtin_registry(),
        connected.stores.clone(),
        fast_config(worker),
    )
    .spawn()
}

/// Runs every registered migration to the end with one library runner named `worker` (`--exit-when-done`).
pub async fn run_registered(connected: &Connected, worker: &str) {
    spawn_runner(connected, worker)
        .join()
        .await
        .expect("runner");
}

/// Registers the definitions in `dir`, then runs every migration to the end with one library runner (`w1`).
pub async fn run_to_end(connected: &Connected, dir: &Path) {
    register_dir(connected, dir, &bgmigrate::builtin_registry()).await;
    run_registered(connected, "w1").await;
}
