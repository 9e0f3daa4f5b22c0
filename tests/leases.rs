//! Leases with fencing: one worker per migration at a time, takeover of a dead worker's lease without a
//! restart, no writes from a worker that lost its lease, and exact resumption after SIGKILL / SIGTERM of the real
//! binary. Every test runs against the real Postgres in a database of its own.

mod common;

use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bgmigrate::config::Connected;
use bgmigrate::control::{BatchCommit, EventRecord, Lease};
use bgmigrate::store::{SqlParam, SqlStore};
use bgmigrate::{
    Batch, BatchOutcome, ControlError, Migration, MigrationError, Registration, Registry, Runner,
    Status,
};
use common::{TestDb, fast_config, wait_until};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

// ---------------------------------------------------------------------------------------------------------------
// Test migrations
// ---------------------------------------------------------------------------------------------------------------

/// What the test sees of the migrations it registers, and the switch that freezes one of them mid-batch.
struct Probe {
    /// The label of the worker each batch ran in, in order of entry.
    entered: Mutex<Vec<String>>,
    /// The worker whose next batch freezes (taken when it freezes, so it freezes once).
    freeze: Mutex<Option<String>>,
    /// True while a batch is frozen.
    frozen: AtomicBool,
    /// A permit lets the frozen batch go on.
    release: Semaphore,
}

impl Probe {
    /// A probe that freezes nothing.
    fn new() -> Arc<Probe> {
        Arc::new(Probe {
            entered: Mutex::new(Vec::new()),
            freeze: Mutex::new(None),
            frozen: AtomicBool::new(false),
            release: Semaphore::new(0),
        })
    }

    /// A probe that freezes the first batch that worker `who` enters.
    fn freezing(who: &str) -> Arc<Probe> {
        let probe = Probe::new();
        *probe.freeze.lock().unwrap() = Some(who.to_owned());
        probe
    }

    fn entered_by(&self, who: &str) -> usize {
        self.entered
            .lock()
            .unwrap()
            .iter()
            .filter(|w| *w == who)
            .count()
    }

    /// Records the batch's entry and freezes it if it is the one to freeze.
    async fn enter(&self, who: &str) {
        self.entered.lock().unwrap().push(who.to_owned());
        let freeze = {
            let mut freeze = self.freeze.lock().unwrap();
            if freeze.as_deref() == Some(who) {
                freeze.take();
                true
            } else {
                false
            }
        };
        if freeze {
            self.frozen.store(true, Ordering::SeqCst);
            self.release
                .acquire()
                .await
                .expect("semaphore open")
                .forget();
            self.frozen.store(false, Ordering::SeqCst);
        }
    }

    fn unfreeze(&self) {
        self.release.add_permits(1);
    }
}

/// A migration without a store: each batch only moves the counter `{"n": n}` on; the engine writes the checkpoint.
struct Counting {
    who: String,
    probe: Arc<Probe>,
    batches: u64,
}

#[async_trait]
impl Migration for Counting {
    async fn validate(&self) -> Result<(), MigrationError> {
        Ok(())
    }

    async fn estimate(&self) -> Result<Option<u64>, MigrationError> {
        Ok(Some(self.batches))
    }

    async fn run_batch(&self, batch: &mut Batch<'_>) -> Result<BatchOutcome, MigrationError> {
        let n = batch.state.get("n").and_then(Value::as_u64).unwrap_or(0);
        self.probe.enter(&self.who).await;
        Ok(BatchOutcome {
            state: json!({ "n": n + 1 }),
            done: n + 1 >= self.batches,
            rows: 1,
            bytes: 0,
        })
    }
}

/// A backfill-like migration: `UPDATE items SET hits = hits + 1, last_worker = <who>` over an id range, committed
/// with its checkpoint through [`Batch::commit`] in one Postgres transaction. It may freeze after its UPDATE,
/// holding the transaction open.
struct Touching {
    who: String,
    probe: Arc<Probe>,
    store: Arc<dyn SqlStore>,
    total: i64,
}

#[async_trait]
impl Migration for Touching {
    async fn validate(&self) -> Result<(), MigrationError> {
        Ok(())
    }

    async fn estimate(&self) -> Result<Option<u64>, MigrationError> {
        Ok(Some(self.total as u64))
    }

    async fn run_batch(&self, batch: &mut Batch<'_>) -> Result<BatchOutcome, MigrationError> {
        let after = batch
            .state
            .get("after")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let upto = after + batch.args.batch_size as i64;
        let mut tx = self.store.begin().await?;
        let rows = tx
            .execute(
                "UPDATE items SET hits = hits + 1, last_worker = $1 WHERE id > $2 AND id <= $3",
                &[
                    SqlParam::Text(self.who.clone()),
                    SqlParam::Int(after),
                    SqlParam::Int(upto),
                ],
            )
            .await?;
        self.probe.enter(&self.who).await;
        let outcome = BatchOutcome {
            state: json!({ "after": upto }),
            done: upto >= self.total,
            rows,
            bytes: 0,
        };
        batch.commit(tx, &outcome).await?;
        Ok(outcome)
    }
}

/// A registry whose `counting` script runs as worker `who`, reporting to `probe`.
fn counting_registry(who: &str, probe: &Arc<Probe>, batches: u64) -> Registry {
    let (who, probe) = (who.to_owned(), probe.clone());
    let mut registry = Registry::empty();
    registry.register("counting", move |_params, _stores| {
        Ok(Arc::new(Counting {
            who: who.clone(),
            probe: probe.clone(),
            batches,
        }) as Arc<dyn Migration>)
    });
    registry
}

/// A registry whose `touching` script runs as worker `who` against the `postgres` store.
fn touching_registry(who: &str, probe: &Arc<Probe>, total: i64) -> Registry {
    let (who, probe) = (who.to_owned(), probe.clone());
    let mut registry = Registry::empty();
    registry.register("touching", move |_params, stores| {
        let store = stores
            .sql("postgres")
            .ok_or_else(|| "no postgres store".to_owned())?;
        Ok(Arc::new(Touching {
            who: who.clone(),
            probe: probe.clone(),
            store,
            total,
        }) as Arc<dyn Migration>)
    });
    registry
}

async fn register(
    connected: &Connected,
    name: &str,
    script: &str,
    args: Value,
    registry: &Registry,
) {
    let registration = Registration {
        name: name.to_owned(),
        script: script.to_owned(),
        params: json!({}),
        args,
        depends_on: None,
    };
    let inserted = connected
        .control
        .register(&[registration], registry)
        .await
        .expect("register");
    assert_eq!(inserted, vec![name.to_owned()]);
}

fn spawn_runner(connected: &Connected, registry: Registry, who: &str) -> bgmigrate::RunnerHandle {
    Runner::new(
        connected.control.clone(),
        registry,
        connected.stores.clone(),
        fast_config(who),
    )
    .spawn()
}

async fn events(connected: &Connected, name: &str) -> Vec<EventRecord> {
    connected.control.events(name, 200).await.expect("events")
}

fn kinds_by(events: &[EventRecord], actor: &str) -> Vec<String> {
    let mut kinds: Vec<String> = events
        .iter()
        .filter(|e| e.actor == actor)
        .map(|e| e.kind.clone())
        .collect();
    kinds.reverse();
    kinds
}

async fn wait_for_status(connected: &Connected, name: &str, status: Status, timeout: Duration) {
    wait_until(&format!("{name} is {status:?}"), timeout, || async {
        connected.control.get(name).await.expect("row").status == status
    })
    .await;
}

async fn join_within(
    handle: bgmigrate::RunnerHandle,
    timeout: Duration,
) -> bgmigrate::engine::RunSummary {
    tokio::time::timeout(timeout, handle.join())
        .await
        .expect("the runner stops in time")
        .expect("the runner ends without error")
}

// ---------------------------------------------------------------------------------------------------------------
// Library-level lease tests
// ---------------------------------------------------------------------------------------------------------------

/// While worker A is stuck inside a batch (but alive: its heartbeat keeps renewing the lease), worker B must never
/// claim the same migration, however long it waits; only A runs its batches, and A finishes it once unstuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_never_run_the_same_migration_at_once() {
    let db = TestDb::create("two_workers_never_run").await;
    let (a_conn, b_conn) = (db.connect().await, db.connect().await);
    let probe = Probe::freezing("A");
    let name = "20240101_0000_count";
    register(
        &a_conn,
        name,
        "counting",
        json!({}),
        &counting_registry("A", &probe, 3),
    )
    .await;

    let a = spawn_runner(&a_conn, counting_registry("A", &probe, 3), "A");
    wait_until(
        "A is frozen inside its first batch",
        Duration::from_secs(10),
        || async { probe.frozen.load(Ordering::SeqCst) },
    )
    .await;
    let b = spawn_runner(&b_conn, counting_registry("B", &probe, 3), "B");

    // Three lease lifetimes: without A's heartbeat the lease would have expired twice over.
    let ttl = fast_config("A").lease_ttl;
    let until = Instant::now() + 3 * ttl;
    while Instant::now() < until {
        let row = a_conn.control.get(name).await.unwrap();
        assert_eq!(row.status, Status::Running);
        assert_eq!(
            row.worker_id.as_deref(),
            Some("A"),
            "the lease moved while A was alive"
        );
        assert_eq!(
            probe.entered_by("B"),
            0,
            "B entered a batch of a migration A holds"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let row = a_conn.control.get(name).await.unwrap();
    assert_eq!(row.attempts, 1, "nobody but A claimed it");
    assert!(
        row.lease_expires_at.unwrap() > row.locked_at.unwrap(),
        "the heartbeat keeps the lease in the future"
    );

    probe.unfreeze();
    wait_for_status(&a_conn, name, Status::Finished, Duration::from_secs(10)).await;
    let a_summary = join_within(a, Duration::from_secs(10)).await;
    let b_summary = join_within(b, Duration::from_secs(10)).await;

    assert_eq!(a_summary.finished, vec![name.to_owned()]);
    assert!(b_summary.finished.is_empty() && b_summary.failed.is_empty());
    assert_eq!(probe.entered_by("A"), 3);
    assert_eq!(probe.entered_by("B"), 0);
    let row = a_conn.control.get(name).await.unwrap();
    assert_eq!(row.state, json!({"n": 3}));
    assert_eq!(row.rows_done, 3);
    let batches = a_conn.control.batches(name, 50).await.unwrap();
    assert_eq!(batches.len(), 3);
    assert!(batches.iter().all(|b| b.worker_id == "A"), "{batches:?}");
    let events = events(&a_conn, name).await;
    assert_eq!(kinds_by(&events, "A"), vec!["claimed", "finished"]);
    assert!(kinds_by(&events, "B").is_empty(), "{events:?}");
}

/// A worker that died holding a lease (no heartbeat) blocks its migration only until the lease expires: a live
/// worker that is already running takes it over by itself, records `lease_taken_over`, and finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_taken_over_by_a_live_worker() {
    let db = TestDb::create("an_expired_lease_is_taken").await;
    let connected = db.connect().await;
    let probe = Probe::new();
    let registry = counting_registry("B", &probe, 3);
    let name = "20240101_0000_count";
    register(&connected, name, "counting", json!({}), &registry).await;

    let ghost = connected
        .control
        .claim_next("ghost", Duration::from_secs(1), &registry.scripts())
        .await
        .unwrap()
        .expect("the ghost claims it");
    let ghost_expiry = ghost.record.lease_expires_at.expect("lease expiry");
    assert!(ghost.took_over_from.is_none());

    let started = Instant::now();
    let runner = spawn_runner(&connected, registry, "B");
    wait_for_status(&connected, name, Status::Finished, Duration::from_secs(10)).await;
    let summary = join_within(runner, Duration::from_secs(10)).await;
    assert_eq!(summary.finished, vec![name.to_owned()]);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took over promptly after expiry"
    );
    assert_eq!(probe.entered_by("B"), 3);

    let events = events(&connected, name).await;
    let takeover = events
        .iter()
        .find(|e| e.kind == "lease_taken_over")
        .unwrap_or_else(|| panic!("no lease_taken_over event: {events:?}"));
    assert_eq!(takeover.actor, "B");
    assert_eq!(takeover.detail["previous_worker"], json!("ghost"));
    assert!(
        takeover.at >= ghost_expiry,
        "taken over at {} although the ghost's lease ran until {ghost_expiry}",
        takeover.at
    );
    assert!(!events.iter().any(|e| e.actor == "B" && e.kind == "claimed"));
    let row = connected.control.get(name).await.unwrap();
    assert_eq!(row.attempts, 2);
    assert_eq!(row.state, json!({"n": 3}));
}

/// A worker whose lease was taken over can no longer write anything: checkpoint, progress, outcome and renewal are
/// all refused — both while its successor is running (fenced on owner and epoch, not just on status) and after
/// the successor finished — and the row stays exactly as the successor left it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_lost_its_lease_stops_writing() {
    let db = TestDb::create("a_worker_that_lost_its_lease").await;
    let connected = db.connect().await;
    let probe = Probe::freezing("B");
    let registry = counting_registry("B", &probe, 3);
    let name = "20240101_0000_count";
    register(&connected, name, "counting", json!({}), &registry).await;
    let ghost = connected
        .control
        .claim_next("ghost", Duration::from_millis(500), &registry.scripts())
        .await
        .unwrap()
        .expect("the ghost claims it")
        .lease;

    let runner = spawn_runner(&connected, registry, "B");
    wait_until(
        "B took over and froze in a batch",
        Duration::from_secs(10),
        || async { probe.frozen.load(Ordering::SeqCst) },
    )
    .await;
    let successor_epoch = {
        // The successor's epoch is only in the control table; a same-owner lease with the ghost's epoch must fail.
        let pool = db.pool().await;
        let epoch: i64 =
            sqlx::query_scalar("SELECT lease_epoch FROM background_migrations WHERE name = $1")
                .bind(name)
                .fetch_one(&pool)
                .await
                .unwrap();
        epoch
    };
    assert!(successor_epoch > ghost.epoch);
    let stale_b = Lease {
        worker_id: "B".into(),
        ..ghost.clone()
    };

    let before = connected.control.get(name).await.unwrap();
    assert_eq!(before.status, Status::Running);
    assert_eq!(before.worker_id.as_deref(), Some("B"));
    for lease in [&ghost, &stale_b] {
        try_every_write(&connected, lease).await;
    }
    let after = connected.control.get(name).await.unwrap();
    assert_unchanged(&before, &after);
    assert_eq!(after.worker_id.as_deref(), Some("B"));

    probe.unfreeze();
    wait_for_status(&connected, name, Status::Finished, Duration::from_secs(10)).await;
    join_within(runner, Duration::from_secs(10)).await;
    let before = connected.control.get(name).await.unwrap();
    for lease in [&ghost, &stale_b] {
        try_every_write(&connected, lease).await;
    }
    let after = connected.control.get(name).await.unwrap();
    assert_unchanged(&before, &after);
    assert_eq!(after.status, Status::Finished);
    assert_eq!(after.state, json!({"n": 3}));
    assert_eq!(after.rows_done, 3);

    let batches = connected.control.batches(name, 50).await.unwrap();
    assert!(batches.iter().all(|b| b.worker_id == "B"), "{batches:?}");
    let events = events(&connected, name).await;
    assert_eq!(kinds_by(&events, "ghost"), vec!["claimed"]);
}

/// Every fenced write with `lease` must be refused as a lost lease.
async fn try_every_write(connected: &Connected, lease: &Lease) {
    let control = &connected.control;
    let commit = BatchCommit {
        previous: json!({}),
        state: json!({"n": 999}),
        rows: 1000,
        bytes: 1000,
        batch_size: 7,
        started_at: chrono::Utc::now(),
        duration: std::time::Duration::from_millis(1),
        rows_per_sec: 1.0,
        done: false,
    };
    let lost = |what: &str, result: Result<(), ControlError>| match result {
        Err(ControlError::LeaseLost(_)) => {}
        other => panic!("{what} with a lost lease ({lease:?}) returned {other:?}"),
    };
    lost(
        "write_checkpoint",
        control.write_checkpoint(lease, &commit).await,
    );
    lost(
        "set_rows_total",
        control.set_rows_total(lease, Some(12345)).await,
    );
    lost("finish", control.finish(lease).await);
    lost("fail", control.fail(lease, "ghost says no").await);
    lost("release", control.release(lease).await);
    assert!(
        matches!(
            control.current(lease).await,
            Err(ControlError::LeaseLost(_))
        ),
        "current() still hands the row to a lost lease"
    );
    assert!(
        !control
            .renew_lease(lease, Duration::from_secs(60))
            .await
            .unwrap(),
        "a lost lease was renewed"
    );
}

fn assert_unchanged(
    before: &bgmigrate::control::MigrationRecord,
    after: &bgmigrate::control::MigrationRecord,
) {
    assert_eq!(before.status, after.status);
    assert_eq!(before.state, after.state);
    assert_eq!(before.rows_done, after.rows_done);
    assert_eq!(before.rows_total, after.rows_total);
    assert_eq!(before.bytes_done, after.bytes_done);
    assert_eq!(before.batch_size, after.batch_size);
    assert_eq!(before.worker_id, after.worker_id);
    assert_eq!(before.finished_at, after.finished_at);
    assert_eq!(before.failed_at, after.failed_at);
    assert_eq!(before.failed_reason, after.failed_reason);
}

/// A worker stalled in the middle of a batch whose lease expired (its heartbeat did not come in time) and was taken
/// over must not commit that batch when it wakes up: its UPDATE is rolled back together with its fenced
/// checkpoint, it writes nothing more, and its successor's run updates every row exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_worker_whose_lease_was_taken_over_rolls_its_batch_back() {
    let db = TestDb::create("a_stalled_worker_rolls_back").await;
    let pool = db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE items (id bigint PRIMARY KEY, hits int NOT NULL DEFAULT 0, last_worker text);
         INSERT INTO items (id) SELECT generate_series(1, 100);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (a_conn, b_conn) = (db.connect().await, db.connect().await);
    let probe = Probe::freezing("A");
    let name = "20240101_0000_touch";
    register(
        &a_conn,
        name,
        "touching",
        json!({"batchSize": 25}),
        &touching_registry("A", &probe, 100),
    )
    .await;

    // A's heartbeat is slow compared with the test, as for a worker whose process stalls: the lease forced to
    // expire below stays expired.
    let a_config = bgmigrate::RunnerConfig {
        lease_ttl: Duration::from_secs(60),
        heartbeat_interval: Duration::from_secs(30),
        ..fast_config("A")
    };
    let a = Runner::new(
        a_conn.control.clone(),
        touching_registry("A", &probe, 100),
        a_conn.stores.clone(),
        a_config,
    )
    .spawn();
    wait_until(
        "A is frozen after its UPDATE",
        Duration::from_secs(10),
        || async { probe.frozen.load(Ordering::SeqCst) },
    )
    .await;
    sqlx::query("UPDATE background_migrations SET lease_expires_at = now() - interval '1 second' WHERE name = $1")
        .bind(name)
        .execute(&pool)
        .await
        .unwrap();

    let b = spawn_runner(&b_conn, touching_registry("B", &probe, 100), "B");
    wait_until("B took the lease over", Duration::from_secs(10), || async {
        b_conn.control.get(name).await.unwrap().worker_id.as_deref() == Some("B")
    })
    .await;
    // B's first batch waits on the rows A's open transaction holds; A now wakes up and tries to commit.
    probe.unfreeze();
    wait_for_status(&b_conn, name, Status::Finished, Duration::from_secs(15)).await;
    let b_summary = join_within(b, Duration::from_secs(10)).await;
    let a_summary = join_within(a, Duration::from_secs(10)).await;

    assert_eq!(b_summary.finished, vec![name.to_owned()]);
    assert!(
        a_summary.finished.is_empty() && a_summary.failed.is_empty(),
        "{a_summary:?}"
    );
    assert_eq!(
        probe.entered_by("A"),
        1,
        "A ran another batch after losing its lease"
    );
    let (by_a, not_once): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE last_worker = 'A'), count(*) FILTER (WHERE hits <> 1) FROM items",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        by_a, 0,
        "A's batch was committed after its lease was taken over"
    );
    assert_eq!(not_once, 0, "some rows were not updated exactly once");
    let row = b_conn.control.get(name).await.unwrap();
    assert_eq!(row.rows_done, 100);
    assert_eq!(row.state, json!({"after": 100}));
    let batches = b_conn.control.batches(name, 50).await.unwrap();
    assert_eq!(batches.len(), 4);
    assert!(batches.iter().all(|b| b.worker_id == "B"), "{batches:?}");
    let events = events(&b_conn, name).await;
    assert_eq!(kinds_by(&events, "A"), vec!["claimed"], "{events:?}");
    assert_eq!(
        kinds_by(&events, "B"),
        vec!["lease_taken_over", "finished"],
        "{events:?}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// The real binary: kills, signals, first start
// ---------------------------------------------------------------------------------------------------------------

const LEASE_FLAGS: [&str; 6] = [
    "--lease-ttl",
    "2s",
    "--heartbeat",
    "500ms",
    "--poll",
    "200ms",
];

/// `items` with `rows` text-keyed rows (keys in no insertion order), all `hits = 0`.
async fn create_items(pool: &sqlx::PgPool, rows: i64) {
    sqlx::query(
        "CREATE TABLE items (id text PRIMARY KEY, hits int NOT NULL DEFAULT 0, payload text)",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO items (id, payload) SELECT md5(i::text), repeat('x', 50) FROM generate_series(1, $1) i")
        .bind(rows)
        .execute(pool)
        .await
        .unwrap();
}

fn define_hits_backfill(db: &TestDb, name: &str, batch_size: u32, sleep_ms: u32) {
    db.define(
        name,
        &format!(
            r#"kind = "backfill"
store = "postgres"
table = "items"
key = ["id"]
set = {{ hits = "hits + 1" }}
[args]
batchSize = {batch_size}
sleepMs = {sleep_ms}
"#
        ),
    );
}

/// `bgmigrate worker` with short leases, its log written to `log` (in the test's temp dir).
fn spawn_worker(db: &TestDb, log: &Path, extra: &[&str]) -> Child {
    let mut args = vec!["worker"];
    args.extend(LEASE_FLAGS);
    args.extend(extra);
    let file = std::fs::File::create(log).expect("log file");
    db.command(&args, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .spawn()
        .expect("spawn bgmigrate worker")
}

/// Waits for `child` to exit; kills it and panics (showing its log) after `timeout`.
async fn exit_of(child: &mut Child, log: &Path, timeout: Duration) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the worker did not exit within {timeout:?}; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a second worker with `--exit-when-done` to the end; it must exit 0. Returns its log's path.
async fn drain_with_second_worker(db: &TestDb) -> std::path::PathBuf {
    let second_log = db.dir.path().join("second.log");
    let mut second = spawn_worker(
        db,
        &second_log,
        &["--worker-id", "second", "--exit-when-done"],
    );
    let status = exit_of(&mut second, &second_log, Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "second worker: {status:?}\n{}",
        log_of(&second_log)
    );
    second_log
}

fn log_of(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// `(status, rows_done, worker_id, state)` of one migration, read with plain SQL.
async fn row_of(pool: &sqlx::PgPool, name: &str) -> Option<(String, i64, Option<String>, Value)> {
    sqlx::query_as(
        "SELECT status, rows_done, worker_id, state FROM background_migrations WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
    .ok()
    .flatten()
}

async fn hits_not_one(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM items WHERE hits <> 1")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits until the worker has committed some batches of `name` and is still running it.
async fn wait_until_mid_run(pool: &sqlx::PgPool, name: &str, log: &Path) {
    let started = Instant::now();
    loop {
        if let Some((status, rows_done, _, _)) = row_of(pool, name).await {
            if status == "running" && rows_done > 0 {
                return;
            }
            assert!(
                status != "finished" && status != "failed",
                "{name} ended before the test could interrupt it: {status}"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the worker never got going; its log:\n{}",
            log_of(log)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGKILL mid-run leaves an open batch and a lease behind. A second worker takes the lease over once it expires
/// and finishes from the checkpoint; because each batch and its checkpoint commit in one transaction, every row is
/// updated exactly once — none skipped, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_with_sigkill_mid_run_is_resumed_exactly() {
    let db = TestDb::create("a_worker_killed_with_sigkill").await;
    let pool = db.pool().await;
    create_items(&pool, 20_000).await;
    let name = "20240101_0000_hits";
    define_hits_backfill(&db, name, 500, 40);

    let first_log = db.dir.path().join("first.log");
    let mut first = spawn_worker(&db, &first_log, &["--worker-id", "first"]);
    wait_until_mid_run(&pool, name, &first_log).await;
    first.kill().expect("SIGKILL");
    let status = first.wait().unwrap();
    assert!(!status.success(), "killed worker exited with {status:?}");

    let (status, rows_done, worker, _) = row_of(&pool, name).await.unwrap();
    assert_eq!(
        status, "running",
        "the killed worker's row still looks running"
    );
    assert_eq!(worker.as_deref(), Some("first"));
    assert!(
        rows_done > 0 && rows_done < 20_000,
        "killed mid-run, rows_done {rows_done}"
    );
    let updated: i64 = sqlx::query_scalar("SELECT count(*) FROM items WHERE hits = 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        updated, rows_done,
        "committed rows match the checkpoint's progress"
    );

    let second_log = drain_with_second_worker(&db).await;

    let (status, rows_done, worker, _) = row_of(&pool, name).await.unwrap();
    assert_eq!(status, "finished", "{}", log_of(&second_log));
    assert_eq!(worker, None);
    assert_eq!(rows_done, 20_000);
    assert_eq!(
        hits_not_one(&pool).await,
        0,
        "a row was skipped or updated twice"
    );
    let events = db.events(name).await;
    assert!(
        events
            .iter()
            .any(|(kind, actor, detail)| kind == "lease_taken_over"
                && actor == "second"
                && detail["previous_worker"] == json!("first")),
        "{events:?}"
    );
}

/// SIGTERM asks the worker to finish the batch in flight and give the migration back: it exits 0 promptly, the row
/// is `pending` with no owner and its checkpoint kept, a `released` event says so, and the next worker resumes
/// without waiting for a lease to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_batch_and_releases_the_lease() {
    let db = TestDb::create("sigterm_finishes_the_batch").await;
    let pool = db.pool().await;
    create_items(&pool, 20_000).await;
    let name = "20240101_0000_hits";
    define_hits_backfill(&db, name, 500, 40);

    let first_log = db.dir.path().join("first.log");
    let mut first = spawn_worker(&db, &first_log, &["--worker-id", "first"]);
    wait_until_mid_run(&pool, name, &first_log).await;
    let term = std::process::Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status()
        .expect("run kill");
    assert!(term.success());
    let status = exit_of(&mut first, &first_log, Duration::from_secs(5)).await;
    assert!(
        status.success(),
        "after SIGTERM: {status:?}\n{}",
        log_of(&first_log)
    );

    let (status, rows_done, worker, state) = row_of(&pool, name).await.unwrap();
    assert_eq!(status, "pending", "{}", log_of(&first_log));
    assert_eq!(worker, None);
    assert!(
        rows_done > 0 && rows_done < 20_000,
        "released mid-run, rows_done {rows_done}"
    );
    assert!(
        state.get("cursor").is_some_and(|c| c.is_array()),
        "checkpoint kept: {state}"
    );
    let updated: i64 = sqlx::query_scalar("SELECT count(*) FROM items WHERE hits = 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        updated, rows_done,
        "the batch in flight either committed with its checkpoint or not at all"
    );
    let lease_expires: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT lease_expires_at FROM background_migrations WHERE name = $1")
            .bind(name)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(lease_expires, None);
    let events = db.events(name).await;
    assert!(
        events
            .iter()
            .any(|(kind, actor, _)| kind == "released" && actor == "first"),
        "{events:?}"
    );

    drain_with_second_worker(&db).await;
    let (status, rows_done, _, _) = row_of(&pool, name).await.unwrap();
    assert_eq!(status, "finished");
    assert_eq!(rows_done, 20_000);
    assert_eq!(hits_not_one(&pool).await, 0);
    let events = db.events(name).await;
    assert!(
        events
            .iter()
            .any(|(kind, actor, _)| kind == "claimed" && actor == "second"),
        "a released migration is claimed, not taken over: {events:?}"
    );
    assert!(
        !events.iter().any(|(kind, _, _)| kind == "lease_taken_over"),
        "{events:?}"
    );
}

/// Workers may start before any `migrate` or `web` ever ran: on a database without control tables, two workers
/// started at once create them (under a lock), register the definition once, and one of them runs it to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_before_migrate_creates_the_control_tables_itself() {
    let db = TestDb::create("a_worker_started_before_migrate").await;
    let pool = db.pool().await;
    create_items(&pool, 2_000).await;
    let name = "20240101_0000_hits";
    define_hits_backfill(&db, name, 300, 0);
    let exists: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('background_migrations')::text")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        exists, None,
        "the fresh database already has control tables"
    );

    let logs = [db.dir.path().join("one.log"), db.dir.path().join("two.log")];
    let mut one = spawn_worker(&db, &logs[0], &["--worker-id", "one", "--exit-when-done"]);
    let mut two = spawn_worker(&db, &logs[1], &["--worker-id", "two", "--exit-when-done"]);
    let status_one = exit_of(&mut one, &logs[0], Duration::from_secs(20)).await;
    let status_two = exit_of(&mut two, &logs[1], Duration::from_secs(20)).await;
    assert!(
        status_one.success(),
        "worker one: {status_one:?}\n{}",
        log_of(&logs[0])
    );
    assert!(
        status_two.success(),
        "worker two: {status_two:?}\n{}",
        log_of(&logs[1])
    );

    assert_eq!(db.status_of(name).await, Status::Finished);
    assert_eq!(hits_not_one(&pool).await, 0);
    let events = db.events(name).await;
    let count = |k: &str| events.iter().filter(|(kind, _, _)| kind == k).count();
    assert_eq!(count("registered"), 1, "{events:?}");
    assert_eq!(count("claimed"), 1, "{events:?}");
    assert_eq!(count("finished"), 1, "{events:?}");
}
