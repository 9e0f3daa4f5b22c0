//! One contract, every store: the control store (claims, leases, fencing, registration, operator actions, events and
//! batches) and the backfill kind, written once as generic functions and run against a real Postgres (a database
//! per test) and a real SQLite file (a file per test). Plus: two worker *processes* sharing one SQLite file.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bgmigrate::config::{self, Connected};
use bgmigrate::control::{BatchCommit, EventKind};
use bgmigrate::migration::Checkpointer;
use bgmigrate::store::SqlStore;
use bgmigrate::{
    Action, Args, Batch, ControlError, MigrationError, Registration, Registry, Runner, Status,
    builtin_registry,
};
use chrono::Utc;
use common::{TestDb, fast_config, text};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------------------------
// The two stores behind one fixture
// ---------------------------------------------------------------------------------------------------------------

/// A control store and the SQL store of the same database, plus what keeps that database alive.
struct Env {
    connected: Connected,
    /// The database's URL, for processes.
    url: String,
    /// The name definitions use for the store (`postgres` / `sqlite`).
    store: &'static str,
    /// The test database or the temporary directory of the file, dropped with the fixture.
    _owner: Box<dyn std::any::Any + Send + Sync>,
}

impl Env {
    async fn postgres(test: &str) -> Env {
        let db = TestDb::create(test).await;
        Env {
            connected: db.connect().await,
            url: db.url.clone(),
            store: "postgres",
            _owner: Box::new(db),
        }
    }

    async fn sqlite(_test: &str) -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("control.db").display());
        let connected = config::connect(&url).await.expect("open the SQLite file");
        connected.control.ensure_schema().await.expect("schema");
        Env {
            connected,
            url,
            store: config::SQLITE_STORE,
            _owner: Box::new(dir),
        }
    }

    fn sql(&self) -> Arc<dyn SqlStore> {
        self.connected.stores.sql(self.store).expect("the store")
    }

    fn control(&self) -> &dyn bgmigrate::ControlStore {
        self.connected.control.as_ref()
    }

    /// Runs statements (each in its own transaction) through the store's own contract.
    async fn exec(&self, statements: &[&str]) {
        for sql in statements {
            let mut tx = self.sql().begin().await.expect("begin");
            tx.execute(sql, &[]).await.expect(sql);
            tx.commit().await.expect("commit");
        }
    }

    async fn scalar(&self, sql: &str) -> i64 {
        let mut tx = self.sql().begin().await.expect("begin");
        tx.fetch_count(sql, &[]).await.expect(sql)
    }

    /// A backfill definition on this store.
    fn backfill(
        &self,
        name: &str,
        table: &str,
        key: &[&str],
        set: Value,
        batch: u64,
    ) -> Registration {
        Registration {
            name: name.to_owned(),
            script: "backfill".into(),
            params: json!({"store": self.store, "table": table, "key": key, "set": set}),
            args: json!({ "batchSize": batch }),
            depends_on: None,
        }
    }

    async fn register(&self, registrations: &[Registration], registry: &Registry) -> Vec<String> {
        self.control()
            .register(registrations, registry)
            .await
            .expect("register")
    }

    async fn run_to_end(&self) {
        Runner::new(
            self.connected.control.clone(),
            builtin_registry(),
            self.connected.stores.clone(),
            fast_config("w1"),
        )
        .spawn()
        .join()
        .await
        .expect("runner");
    }
}

/// A registry that knows the script `noop` (never built: these tests only claim and write).
fn noop_registry() -> Registry {
    let mut registry = Registry::empty();
    registry.register("noop", |_, _| Err("noop is never run".into()));
    registry
}

fn noop(name: &str) -> Registration {
    Registration {
        name: name.to_owned(),
        script: "noop".into(),
        params: json!({}),
        args: json!({"batchSize": 10}),
        depends_on: None,
    }
}

/// A batch's commit from checkpoint `previous` (a registered row starts at `{}`) to `state`.
fn commit_of(previous: Value, state: Value, rows: u64) -> BatchCommit {
    BatchCommit {
        previous,
        state,
        rows,
        bytes: 0,
        batch_size: rows,
        started_at: Utc::now(),
        duration: std::time::Duration::from_millis(3),
        rows_per_sec: 100.0,
        done: false,
    }
}

/// Registers the no-op migration `0001_a` and claims it as `w1` for a minute.
async fn claimed_noop(env: &Env) -> bgmigrate::control::Claim {
    env.register(&[noop("0001_a")], &noop_registry()).await;
    env.control()
        .claim_next("w1", Duration::from_secs(60), &scripts())
        .await
        .unwrap()
        .unwrap()
}

/// The checkpoint after `n` batches of the counting tests: `{}` before the first.
fn after(n: i64) -> Value {
    match n {
        0 => json!({}),
        n => json!({"n": n}),
    }
}

/// Rows generated the same way on both stores: `n` from 1 to `count`.
fn series(count: u64) -> String {
    format!(
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {count}) SELECT n FROM g"
    )
}

/// The scripts the claim tests can run.
fn scripts() -> Vec<String> {
    vec!["noop".to_owned()]
}
const SHORT_TTL: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------------------------------
// The contract
// ---------------------------------------------------------------------------------------------------------------

async fn concurrent_claims_give_a_migration_to_exactly_one_worker(env: &Env) {
    env.register(&[noop("0001_a")], &noop_registry()).await;
    let claims = join_all(
        (0..6)
            .map(|i| {
                let control = env.connected.control.clone();
                tokio::spawn(async move {
                    control
                        .claim_next(&format!("w{i}"), Duration::from_secs(30), &scripts())
                        .await
                        .expect("claim")
                })
            })
            .collect(),
    )
    .await;
    let winners: Vec<_> = claims.into_iter().flatten().collect();
    assert_eq!(winners.len(), 1, "exactly one claim wins");
    let record = env.control().get("0001_a").await.unwrap();
    assert_eq!(record.status, Status::Running);
    assert_eq!(
        record.worker_id.as_deref(),
        Some(winners[0].lease.worker_id.as_str())
    );
    assert_eq!(record.attempts, 1);
}

async fn claimable_sees_what_a_claim_would_take_even_while_another_claim_holds_its_row(env: &Env) {
    env.register(&[noop("0001_a")], &noop_registry()).await;
    assert!(env.control().claimable(&scripts()).await.unwrap());
    assert!(
        !env.control()
            .claimable(&["other".to_owned()])
            .await
            .unwrap(),
        "not for a worker without the script"
    );
    if env.store == "postgres" {
        // A claim in flight: its row is locked until it commits. claim_next passes it by; claimable still sees it,
        // so a draining worker waits instead of exiting. (On SQLite a claim in flight holds the whole database.)
        let mut claim_in_flight = env.sql().begin().await.unwrap();
        claim_in_flight
            .execute(
                "SELECT 1 FROM background_migrations WHERE name = '0001_a' FOR UPDATE",
                &[],
            )
            .await
            .unwrap();
        let passed_by = env
            .control()
            .claim_next("w1", Duration::from_secs(30), &scripts())
            .await
            .unwrap();
        assert!(passed_by.is_none(), "the locked row is skipped");
        assert!(env.control().claimable(&scripts()).await.unwrap());
        claim_in_flight.commit().await.unwrap();
    }
    let claim = env
        .control()
        .claim_next("w1", Duration::from_secs(30), &scripts())
        .await
        .unwrap()
        .expect("claimed");
    assert!(
        !env.control().claimable(&scripts()).await.unwrap(),
        "running under a live lease: nothing to claim"
    );
    env.control().fail(&claim.lease, "stop").await.unwrap();
    assert!(!env.control().claimable(&scripts()).await.unwrap());
}

/// Awaits every task, in order.
async fn join_all<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.expect("task"));
    }
    out
}

async fn an_expired_lease_is_taken_over_and_the_stale_owner_is_fenced_out(env: &Env) {
    env.register(&[noop("0001_a")], &noop_registry()).await;
    let first = env
        .control()
        .claim_next("w1", SHORT_TTL, &scripts())
        .await
        .unwrap()
        .expect("w1 claims");
    assert!(
        env.control()
            .claim_next("w2", SHORT_TTL, &scripts())
            .await
            .unwrap()
            .is_none(),
        "a live lease is not taken over"
    );
    tokio::time::sleep(SHORT_TTL * 3).await;
    let second = env
        .control()
        .claim_next("w2", Duration::from_secs(30), &scripts())
        .await
        .unwrap()
        .expect("w2 takes over");
    assert_eq!(second.took_over_from.as_deref(), Some("w1"));
    assert!(second.lease.epoch > first.lease.epoch);

    let stale = &first.lease;
    let lost = |result: Result<(), ControlError>| matches!(result, Err(ControlError::LeaseLost(_)));
    assert!(lost(
        env.control()
            .write_checkpoint(stale, &commit_of(json!({}), json!({"n": 99}), 99))
            .await
    ));
    assert!(lost(env.control().set_rows_total(stale, Some(5)).await));
    assert!(lost(env.control().finish(stale).await));
    assert!(lost(env.control().fail(stale, "stale").await));
    assert!(!env.control().renew_lease(stale, SHORT_TTL).await.unwrap());
    assert!(matches!(
        env.control().current(stale).await,
        Err(ControlError::LeaseLost(_))
    ));

    env.control()
        .write_checkpoint(&second.lease, &commit_of(json!({}), json!({"n": 1}), 1))
        .await
        .expect("the new owner writes");
    let record = env.control().get("0001_a").await.unwrap();
    assert_eq!(record.state, json!({"n": 1}));
    assert_eq!(record.rows_done, 1);
    assert_eq!(record.worker_id.as_deref(), Some("w2"));
    let kinds: Vec<String> = env
        .control()
        .events("0001_a", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["lease_taken_over", "claimed", "registered"]);
}

async fn registering_again_never_overwrites_args_or_state(env: &Env) {
    let registry = noop_registry();
    assert_eq!(env.register(&[noop("0001_a")], &registry).await, ["0001_a"]);
    env.control()
        .set_args("0001_a", &json!({"batchSize": 20}), "cli:test")
        .await
        .unwrap();
    let mut changed = noop("0001_a");
    changed.args = json!({"batchSize": 30});
    assert!(env.register(&[changed, noop("0002_b")], &registry).await == ["0002_b"]);
    let record = env.control().get("0001_a").await.unwrap();
    assert_eq!(
        record.args,
        json!({"batchSize": 20}),
        "the operator's edit wins"
    );
    assert_eq!(record.status, Status::Pending);
}

async fn a_definition_with_an_unknown_script_is_registered_as_failed_with_a_reason(env: &Env) {
    let mut unknown = noop("0001_a");
    unknown.script = "nope".into();
    env.register(&[unknown, noop("0002_b")], &noop_registry())
        .await;
    let record = env.control().get("0001_a").await.unwrap();
    assert_eq!(record.status, Status::Failed);
    let reason = record.failed_reason.unwrap_or_default();
    assert!(
        reason.contains("no migration kind/script named \"nope\""),
        "{reason}"
    );
    assert!(record.failed_at.is_some());
    // A failed migration does not block the next one (the original system's rule).
    let claim = env
        .control()
        .claim_next("w1", SHORT_TTL, &scripts())
        .await
        .unwrap();
    assert_eq!(claim.map(|c| c.lease.name).as_deref(), Some("0002_b"));
}

async fn operator_actions_follow_the_legal_transitions_only(env: &Env) {
    env.register(&[noop("0001_a")], &noop_registry()).await;
    let act = |action| env.control().act("0001_a", action, false, "cli:test");
    assert_eq!(act(Action::Pause).await.unwrap().status, Status::Paused);
    assert!(
        env.control()
            .claim_next("w1", SHORT_TTL, &scripts())
            .await
            .unwrap()
            .is_none(),
        "a paused migration is not claimed"
    );
    assert!(matches!(
        act(Action::Retry).await,
        Err(ControlError::Transition { .. })
    ));
    assert_eq!(act(Action::Resume).await.unwrap().status, Status::Pending);
    let claim = env
        .control()
        .claim_next("w1", SHORT_TTL, &scripts())
        .await
        .unwrap()
        .unwrap();
    env.control()
        .write_checkpoint(&claim.lease, &commit_of(json!({}), json!({"n": 7}), 7))
        .await
        .unwrap();
    assert_eq!(act(Action::Cancel).await.unwrap().status, Status::Cancelled);
    assert!(
        matches!(
            env.control()
                .write_checkpoint(
                    &claim.lease,
                    &commit_of(json!({"n": 7}), json!({"n": 8}), 1)
                )
                .await,
            Err(ControlError::LeaseLost(_))
        ),
        "a cancelled migration's worker is fenced out"
    );
    assert!(matches!(
        act(Action::Pause).await,
        Err(ControlError::Transition { .. })
    ));
    let resumed = act(Action::Retry).await.unwrap();
    assert_eq!(
        (resumed.status, resumed.state.clone()),
        (Status::Pending, json!({"n": 7}))
    );
    env.control()
        .act("0001_a", Action::Cancel, false, "cli:test")
        .await
        .unwrap();
    let restarted = env
        .control()
        .act("0001_a", Action::Retry, true, "cli:test")
        .await
        .unwrap();
    assert_eq!(
        (restarted.state, restarted.rows_done),
        (json!({}), 0),
        "--from-start clears the checkpoint"
    );
    assert!(matches!(
        env.control()
            .act("missing", Action::Pause, false, "cli:test")
            .await,
        Err(ControlError::NotFound(_))
    ));
    let actors: Vec<String> = env
        .control()
        .events("0001_a", 3)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.actor)
        .collect();
    assert_eq!(actors, ["cli:test", "cli:test", "cli:test"]);
}

async fn set_args_validates_before_writing_anything(env: &Env) {
    env.register(&[noop("0001_a")], &noop_registry()).await;
    let refused = env
        .control()
        .set_args("0001_a", &json!({"batchSize": "many"}), "cli:test")
        .await;
    assert!(
        matches!(refused, Err(ControlError::InvalidArgs { .. })),
        "{refused:?}"
    );
    assert_eq!(
        env.control().get("0001_a").await.unwrap().args,
        json!({"batchSize": 10})
    );
    let record = env
        .control()
        .set_args(
            "0001_a",
            &json!({"sleepMs": 5, "custom": "kept"}),
            "cli:test",
        )
        .await
        .unwrap();
    assert_eq!(
        record.args,
        json!({"batchSize": 10, "sleepMs": 5, "custom": "kept"})
    );
    let event = &env.control().events("0001_a", 1).await.unwrap()[0];
    assert_eq!(event.kind, "args_changed");
    assert_eq!(event.detail["before"], json!({"batchSize": 10}));
}

async fn checkpoints_finishes_and_failures_are_recorded_as_batches_and_events(env: &Env) {
    env.register(&[noop("0001_a"), noop("0002_b")], &noop_registry())
        .await;
    let a = env
        .control()
        .claim_next("w1", SHORT_TTL * 100, &scripts())
        .await
        .unwrap()
        .unwrap();
    env.control()
        .set_rows_total(&a.lease, Some(20))
        .await
        .unwrap();
    for n in 1..=2 {
        env.control()
            .write_checkpoint(&a.lease, &commit_of(after(n - 1), json!({"n": n}), 10))
            .await
            .unwrap();
    }
    env.control().finish(&a.lease).await.unwrap();
    let b = env
        .control()
        .claim_next("w1", SHORT_TTL * 100, &scripts())
        .await
        .unwrap()
        .unwrap();
    env.control()
        .fail(&b.lease, "the table is gone")
        .await
        .unwrap();

    let a = env.control().get("0001_a").await.unwrap();
    assert_eq!(
        (a.status, a.rows_done, a.rows_total),
        (Status::Finished, 20, Some(20))
    );
    assert!(a.finished_at.is_some() && a.worker_id.is_none());
    let batches = env.control().batches("0001_a", 10).await.unwrap();
    let states: Vec<&Value> = batches.iter().map(|b| &b.state).collect();
    assert_eq!(states, [&json!({"n": 2}), &json!({"n": 1})], "newest first");
    assert_eq!(batches[0].rows, 10);
    assert_eq!(batches[0].worker_id, "w1");
    let b = env.control().get("0002_b").await.unwrap();
    assert_eq!(b.status, Status::Failed);
    assert_eq!(b.failed_reason.as_deref(), Some("the table is gone"));
    let kinds: Vec<String> = env
        .control()
        .events("0002_b", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["failed", "claimed", "registered"]);
    let latest = |kind| async move {
        env.control()
            .latest_event("0002_b", kind)
            .await
            .unwrap()
            .map(|e| (e.kind, e.detail))
    };
    assert_eq!(
        latest(EventKind::Claimed)
            .await
            .map(|(kind, _)| kind)
            .as_deref(),
        Some("claimed"),
        "the newest of one kind, with newer events of others after it"
    );
    assert_eq!(latest(EventKind::Advised).await, None);

    // Advice any stream may give: the first within the hour lands, a second of the same topic does not, another
    // topic does, and with no time given the same topic lands again.
    let once = |topic: &str, within| {
        let detail = json!({"topic": topic, "advice": format!("about {topic}")});
        async move {
            env.control()
                .record_event_once("0002_b", EventKind::Advised, "w1", detail, within)
                .await
                .unwrap()
        }
    };
    let hour = std::time::Duration::from_secs(3_600);
    assert!(once("checkpoints", hour).await);
    assert!(!once("checkpoints", hour).await, "given within the hour");
    assert!(once("vacuum", hour).await, "another topic");
    assert!(
        once("checkpoints", std::time::Duration::ZERO).await,
        "none newer than now"
    );
    let advised = env.control().events("0002_b", 10).await.unwrap();
    let topics: Vec<&str> = advised
        .iter()
        .filter(|e| e.kind == "advised")
        .map(|e| e.detail["topic"].as_str().unwrap())
        .collect();
    assert_eq!(topics, ["checkpoints", "vacuum", "checkpoints"]);
    let listed: Vec<String> = env
        .control()
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(listed, ["0001_a", "0002_b"]);
}

async fn the_batches_table_keeps_only_the_latest_batches_of_each_migration(env: &Env) {
    let claim = claimed_noop(env).await;
    let written = bgmigrate::control::BATCHES_KEPT + 5;
    for n in 1..=written {
        env.control()
            .write_checkpoint(&claim.lease, &commit_of(after(n - 1), json!({"n": n}), 1))
            .await
            .unwrap();
    }
    let kept = env.control().batches("0001_a", written * 2).await.unwrap();
    assert_eq!(kept.len() as i64, bgmigrate::control::BATCHES_KEPT);
    assert_eq!(kept[0].state, json!({"n": written}), "the newest is kept");
    assert_eq!(
        kept.last().unwrap().state,
        json!({"n": 6}),
        "the oldest five were dropped"
    );
    assert_eq!(
        env.control().get("0001_a").await.unwrap().rows_done,
        written
    );
}

/// Registers one backfill, runs every migration to the end and checks that it finished.
async fn backfill_to_the_end(
    env: &Env,
    name: &str,
    table: &str,
    key: &[&str],
    set: Value,
    batch: u64,
) {
    env.register(
        &[env.backfill(name, table, key, set, batch)],
        &builtin_registry(),
    )
    .await;
    env.run_to_end().await;
    assert_eq!(
        env.control().get(name).await.unwrap().status,
        Status::Finished
    );
}

async fn backfill_is_exact_on_text_keys(env: &Env) {
    env.exec(&[
        "CREATE TABLE items (id text NOT NULL PRIMARY KEY, a integer NOT NULL, b integer NOT NULL, total integer,
                             hits integer NOT NULL DEFAULT 0)",
        &format!("INSERT INTO items (id, a, b) SELECT 'id-' || n, n, n * 3 FROM ({}) s", series(10007)),
    ])
    .await;
    let set = json!({"total": "a + b", "hits": "hits + 1"});
    backfill_to_the_end(env, "0001_total", "items", &["id"], set, 1000).await;
    assert_eq!(
        env.scalar("SELECT count(*) FROM items WHERE hits <> 1 OR coalesce(total, -1) <> a + b")
            .await,
        0
    );
    assert_eq!(
        env.control().get("0001_total").await.unwrap().rows_done,
        10007
    );
}

async fn backfill_is_exact_on_composite_keys(env: &Env) {
    env.exec(&[
        "CREATE TABLE scores (tenant integer NOT NULL, id text NOT NULL, v integer NOT NULL, doubled integer,
                              hits integer NOT NULL DEFAULT 0, PRIMARY KEY (tenant, id))",
        &format!("INSERT INTO scores (tenant, id, v) SELECT n % 7, 's' || n, n FROM ({}) s", series(6000)),
    ])
    .await;
    let set = json!({"doubled": "v * 2", "hits": "hits + 1"});
    backfill_to_the_end(env, "0001_double", "scores", &["tenant", "id"], set, 333).await;
    assert_eq!(
        env.scalar("SELECT count(*) FROM scores WHERE hits <> 1 OR coalesce(doubled, -1) <> v * 2")
            .await,
        0
    );
}

/// Integer keys whose text order differs from their numeric order ('1000' < '999'), in batches that straddle them.
async fn backfill_is_exact_on_integer_keys(env: &Env) {
    env.exec(&[
        "CREATE TABLE nums (id bigint NOT NULL PRIMARY KEY, v integer NOT NULL, d integer, hits integer NOT NULL DEFAULT 0)",
        &format!("INSERT INTO nums (id, v) SELECT n * 7, n FROM ({}) s", series(5000)),
    ])
    .await;
    let set = json!({"d": "v * 2", "hits": "hits + 1"});
    backfill_to_the_end(env, "0001_d", "nums", &["id"], set, 97).await;
    assert_eq!(
        env.scalar("SELECT count(*) FROM nums WHERE hits <> 1 OR coalesce(d, -1) <> v * 2")
            .await,
        0
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM background_migration_batches")
            .await,
        52
    );
}

async fn a_backfill_batch_and_its_checkpoint_commit_together_or_not_at_all(env: &Env) {
    env.exec(&[
        "CREATE TABLE items (id integer PRIMARY KEY, hits integer NOT NULL DEFAULT 0)",
        &format!("INSERT INTO items (id) SELECT n FROM ({}) s", series(100)),
    ])
    .await;
    let registration = env.backfill(
        "0001_hits",
        "items",
        &["id"],
        json!({"hits": "hits + 1"}),
        10,
    );
    let migration = builtin_registry()
        .build("backfill", &registration.params, &env.connected.stores)
        .expect("build");
    env.register(&[registration], &builtin_registry()).await;
    migration.validate().await.expect("valid");
    let scripts = vec!["backfill".to_owned()];
    let stale = env
        .control()
        .claim_next("w1", SHORT_TTL, &scripts)
        .await
        .unwrap()
        .unwrap()
        .lease;
    tokio::time::sleep(SHORT_TTL * 3).await;
    let live = env
        .control()
        .claim_next("w2", Duration::from_secs(30), &scripts)
        .await
        .unwrap()
        .unwrap()
        .lease;
    let args = Args::parse(&json!({"batchSize": 10})).unwrap();
    let start = json!({});

    let no_rate = |_: u64| 0.0;
    let stale_writer = Checkpointer::new(env.control(), &stale, &start, 10, &no_rate);
    let refused = migration
        .run_batch(&mut Batch::new(&start, None, &args, &stale_writer))
        .await;
    assert!(
        matches!(refused, Err(MigrationError::LeaseLost)),
        "{refused:?}"
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM items WHERE hits > 0")
            .await,
        0,
        "the UPDATE rolled back"
    );

    let live_writer = Checkpointer::new(env.control(), &live, &start, 10, &no_rate);
    let outcome = migration
        .run_batch(&mut Batch::new(&start, None, &args, &live_writer))
        .await
        .unwrap();
    assert_eq!(
        env.scalar("SELECT count(*) FROM items WHERE hits = 1")
            .await,
        10
    );
    let record = env.control().get("0001_hits").await.unwrap();
    assert_eq!(
        record.state, outcome.state,
        "the checkpoint landed with the rows"
    );
    assert_eq!(record.state, json!({"cursor": ["10"]}));
}

macro_rules! contract {
    ($($(#[doc = $doc:expr])* $name:ident,)*) => {
        mod postgres {
            $(
                $(#[doc = $doc])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let env = super::Env::postgres(stringify!($name)).await;
                    super::$name(&env).await;
                }
            )*
        }
        mod sqlite {
            $(
                $(#[doc = $doc])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let env = super::Env::sqlite(stringify!($name)).await;
                    super::$name(&env).await;
                }
            )*
        }
    };
}

contract! {
    /// Six workers race for one pending migration; exactly one gets it.
    concurrent_claims_give_a_migration_to_exactly_one_worker,
    /// `claimable` answers as a claim would, locks aside: a row whose claim is in flight still counts, a running or
    /// failed one does not.
    claimable_sees_what_a_claim_would_take_even_while_another_claim_holds_its_row,
    /// A lease that was not renewed is taken over by another worker; every write of the old owner is refused.
    an_expired_lease_is_taken_over_and_the_stale_owner_is_fenced_out,
    /// Registration inserts new names only: an operator's args survive a redeploy of the definition.
    registering_again_never_overwrites_args_or_state,
    /// A row whose script this build lacks is failed with a sentence, and does not block later migrations.
    a_definition_with_an_unknown_script_is_registered_as_failed_with_a_reason,
    /// pause / resume / cancel / retry follow the status machine; illegal ones are typed errors; cancel fences.
    operator_actions_follow_the_legal_transitions_only,
    /// A bad args patch changes nothing; a good one merges and is recorded with before and after.
    set_args_validates_before_writing_anything,
    /// Checkpoints land in the batches table, finish and fail in the row and in the events; the newest event of a
    /// kind is found past newer ones; an event recorded once per topic and time lands only once.
    checkpoints_finishes_and_failures_are_recorded_as_batches_and_events,
    /// The batches table is bounded: after more than BATCHES_KEPT checkpoints only the newest remain.
    the_batches_table_keeps_only_the_latest_batches_of_each_migration,
    /// Text keys sort differently from insertion order; every row is updated exactly once.
    backfill_is_exact_on_text_keys,
    /// A composite (tenant, id) key is walked as a tuple; every row is updated exactly once.
    backfill_is_exact_on_composite_keys,
    /// Integer keys are compared as integers, not as their text cursors; every row exactly once.
    backfill_is_exact_on_integer_keys,
    /// A batch whose lease went stale rolls back its UPDATE; with a live lease the rows and checkpoint land together.
    a_backfill_batch_and_its_checkpoint_commit_together_or_not_at_all,
}

/// On Postgres a checkpoint is written only over the one its batch started from (or over itself, when a write that
/// landed is retried): a batch run from a checkpoint that a server crash lost (committed with `synchronous_commit`
/// off, read before the crash) is refused as a lost lease, its transaction rolls back, and the row keeps the
/// durable checkpoint for the next holder to resume from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_a_checkpoint_that_does_not_follow_the_rows() {
    let env = Env::postgres("checkpoint_follows").await;
    let claim = claimed_noop(&env).await;
    let write = |commit: BatchCommit| {
        let control = env.control();
        let lease = claim.lease.clone();
        async move { control.write_checkpoint(&lease, &commit).await }
    };
    write(commit_of(after(0), after(1), 10)).await.unwrap();
    assert!(
        matches!(
            write(commit_of(after(2), after(3), 10)).await,
            Err(ControlError::LeaseLost(_))
        ),
        "a batch run from checkpoint 2, which the row never durably held, is refused"
    );
    let record = env.control().get("0001_a").await.unwrap();
    assert_eq!((record.state, record.rows_done), (after(1), 10));
    write(commit_of(after(0), after(1), 0))
        .await
        .expect("a retried write that had landed goes through");
    write(commit_of(after(1), after(2), 10))
        .await
        .expect("the next batch follows");
    assert_eq!(env.control().get("0001_a").await.unwrap().state, after(2));
}

// ---------------------------------------------------------------------------------------------------------------
// Several processes on one SQLite file
// ---------------------------------------------------------------------------------------------------------------

fn worker_process(url: &str, migrations: &Path, id: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_bgmigrate"))
        .args(["worker", "--exit-when-done", "--poll", "200ms"])
        .env("DATABASE_URL", url)
        .env("BGMIGRATE_MIGRATIONS_DIR", migrations)
        .env("BGMIGRATE_WORKER_ID", id)
        .env_remove("ENABLE_BACKGROUND_MIGRATIONS")
        .env("RUST_LOG", "info,sqlx=warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start a worker")
}

/// Two real worker processes share one SQLite file and four independent backfills (paced, so they overlap): every
/// row of every backfill is updated exactly once, every migration is claimed once, and both processes take part.
#[tokio::test]
async fn two_worker_processes_sharing_one_sqlite_file_finish_a_backfill_exactly_once() {
    let env = Env::sqlite("two_processes").await;
    let dir = tempfile::tempdir().unwrap();
    let migrations = dir.path().join("migrations");
    std::fs::create_dir_all(migrations.join("background")).unwrap();
    for n in 1..=4 {
        std::fs::write(
            migrations.join(format!("background/000{n}_h{n}.toml")),
            format!(
                "kind = \"backfill\"\nstore = \"sqlite\"\ntable = \"items\"\nkey = [\"id\"]\n\
                 set = {{ h{n} = \"h{n} + 1\" }}\ndepends_on = []\n[args]\nbatchSize = 700\nsleepMs = 40"
            ),
        )
        .unwrap();
    }
    env.exec(&[
        "CREATE TABLE items (id text NOT NULL PRIMARY KEY, h1 integer NOT NULL DEFAULT 0, h2 integer NOT NULL DEFAULT 0,
                             h3 integer NOT NULL DEFAULT 0, h4 integer NOT NULL DEFAULT 0)",
        &format!("INSERT INTO items (id) SELECT 'item-' || n FROM ({}) s", series(30000)),
    ])
    .await;
    let workers = [
        worker_process(&env.url, &migrations, "p1"),
        worker_process(&env.url, &migrations, "p2"),
    ];
    for worker in workers {
        let output = tokio::task::spawn_blocking(move || worker.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert!(output.status.success(), "{}", text(&output));
    }
    let mismatched = env
        .scalar("SELECT count(*) FROM items WHERE h1 <> 1 OR h2 <> 1 OR h3 <> 1 OR h4 <> 1")
        .await;
    assert_eq!(
        mismatched, 0,
        "every row updated exactly once by every backfill"
    );
    for record in env.control().list().await.unwrap() {
        assert_eq!(record.status, Status::Finished, "{}", record.name);
        assert_eq!(record.attempts, 1, "{} was claimed once", record.name);
        assert_eq!(record.rows_done, 30000, "{}", record.name);
    }
    let mut claimed_by = Vec::new();
    for record in env.control().list().await.unwrap() {
        let events = env.control().events(&record.name, 20).await.unwrap();
        claimed_by.extend(
            events
                .into_iter()
                .filter(|e| e.kind != "registered" && e.kind != "finished")
                .map(|e| e.actor),
        );
    }
    assert_eq!(
        claimed_by.len(),
        4,
        "one claim per migration, no takeover: {claimed_by:?}"
    );
    claimed_by.sort();
    claimed_by.dedup();
    assert_eq!(
        claimed_by,
        ["p1", "p2"],
        "both processes worked (each migration sleeps ~1.7 s in all)"
    );
}
