//! The `backfill` kind against a real Postgres: exact results for every key shape, validation before any row
//! changes.

mod common;

use bgmigrate::Status;
use common::TestDb;

/// Runs every registered migration to the end with one library runner.
async fn run_to_end(db: &TestDb) {
    common::run_to_end(&db.connect().await, &db.migrations()).await;
}

async fn scalar(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .expect(sql)
}

/// Text keys sort differently from insertion order ('id-10' < 'id-9'); every row is updated exactly once anyway.
#[tokio::test]
async fn backfill_is_exact_on_text_keys() {
    let db = TestDb::create("text_keys").await;
    let pool = db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE items (id text PRIMARY KEY, a int NOT NULL, b int NOT NULL, total int, hits int NOT NULL DEFAULT 0);
         INSERT INTO items (id, a, b) SELECT 'id-' || g, g, g * 3 FROM generate_series(1, 10007) g;",
    )
    .execute(&pool)
    .await
    .unwrap();
    db.define(
        "0001_total",
        "kind = \"backfill\"\nstore = \"postgres\"\ntable = \"items\"\nkey = [\"id\"]\n\
         set = { total = \"a + b\", hits = \"hits + 1\" }\n[args]\nbatchSize = 1000",
    );
    run_to_end(&db).await;
    assert_eq!(db.status_of("0001_total").await, Status::Finished);
    assert_eq!(
        scalar(
            &pool,
            "SELECT count(*) FROM items WHERE hits <> 1 OR total IS DISTINCT FROM a + b"
        )
        .await,
        0
    );
    let rows_done = scalar(&pool, "SELECT rows_done FROM background_migrations").await;
    assert_eq!(rows_done, 10007, "progress counts every key once");
}

/// A composite (tenant, id) key with integer and uuid columns is walked as a tuple.
#[tokio::test]
async fn backfill_is_exact_on_composite_keys() {
    let db = TestDb::create("composite").await;
    let pool = db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE scores (tenant int NOT NULL, id uuid NOT NULL, v int NOT NULL, doubled int, hits int NOT NULL DEFAULT 0,
                              PRIMARY KEY (tenant, id));
         INSERT INTO scores (tenant, id, v)
         SELECT g % 7, md5(g::text)::uuid, g FROM generate_series(1, 6000) g;",
    )
    .execute(&pool)
    .await
    .unwrap();
    db.define(
        "0001_double",
        "kind = \"backfill\"\nstore = \"postgres\"\ntable = \"scores\"\nkey = [\"tenant\", \"id\"]\n\
         set = { doubled = \"v * 2\", hits = \"hits + 1\" }\n[args]\nbatchSize = 333",
    );
    run_to_end(&db).await;
    assert_eq!(db.status_of("0001_double").await, Status::Finished);
    assert_eq!(
        scalar(
            &pool,
            "SELECT count(*) FROM scores WHERE hits <> 1 OR doubled <> v * 2"
        )
        .await,
        0
    );
}

/// Many rows share one timestamp (more than a batch): a (timestamp, id) key still advances and ends — the
/// original system looped forever here.
#[tokio::test]
async fn backfill_is_exact_with_many_equal_timestamps() {
    let db = TestDb::create("equal_ts").await;
    let pool = db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE traces (created_at timestamptz NOT NULL, id text NOT NULL, name text, upper_name text,
                              hits int NOT NULL DEFAULT 0, UNIQUE (created_at, id));
         INSERT INTO traces (created_at, id, name)
         SELECT CASE WHEN g <= 2500 THEN timestamptz '2024-10-24 12:00:00.123456+00'
                     ELSE timestamptz '2024-10-24 12:00:00+00' + g * interval '1 millisecond' END,
                'trace-' || g, 'n' || g
         FROM generate_series(1, 4000) g;",
    )
    .execute(&pool)
    .await
    .unwrap();
    db.define(
        "0001_upper",
        "kind = \"backfill\"\nstore = \"postgres\"\ntable = \"traces\"\nkey = [\"created_at\", \"id\"]\n\
         set = { upper_name = \"upper(name)\", hits = \"hits + 1\" }\n[args]\nbatchSize = 500",
    );
    run_to_end(&db).await;
    assert_eq!(db.status_of("0001_upper").await, Status::Finished);
    assert_eq!(
        scalar(
            &pool,
            "SELECT count(*) FROM traces WHERE hits <> 1 OR upper_name <> upper(name)"
        )
        .await,
        0
    );
    let batches = scalar(&pool, "SELECT count(*) FROM background_migration_batches").await;
    assert_eq!(
        batches, 9,
        "4000 rows in batches of 500, then the empty tail"
    );
}

/// `where` limits the rows updated, while progress still walks every key.
#[tokio::test]
async fn backfill_updates_only_rows_matching_where() {
    let db = TestDb::create("where").await;
    let pool = db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE observations (id bigint PRIMARY KEY, type text NOT NULL, input_cost numeric, output_cost numeric,
                                    total_cost numeric);
         INSERT INTO observations (id, type, input_cost, output_cost)
         SELECT g, CASE WHEN g % 3 = 0 THEN 'GENERATION' ELSE 'SPAN' END,
                CASE WHEN g % 5 = 0 THEN NULL ELSE g END, 1
         FROM generate_series(1, 3000) g;",
    )
    .execute(&pool)
    .await
    .unwrap();
    db.define(
        "20241024_1216_add_generations_cost_backfill",
        "kind = \"backfill\"\nstore = \"postgres\"\ntable = \"observations\"\nkey = [\"id\"]\n\
         set = { total_cost = \"coalesce(input_cost, 0) + coalesce(output_cost, 0)\" }\n\
         where = \"type = 'GENERATION'\"\n[args]\nbatchSize = 400",
    );
    run_to_end(&db).await;
    let pending = "SELECT count(*) FROM observations WHERE type = 'GENERATION'
                   AND total_cost IS DISTINCT FROM coalesce(input_cost, 0) + coalesce(output_cost, 0)";
    assert_eq!(scalar(&pool, pending).await, 0);
    assert_eq!(
        scalar(
            &pool,
            "SELECT count(*) FROM observations WHERE type = 'SPAN' AND total_cost IS NOT NULL"
        )
        .await,
        0
    );
    assert_eq!(
        scalar(&pool, "SELECT rows_done FROM background_migrations").await,
        3000
    );
}

/// A table without a unique key, a missing column, and a broken expression each fail the migration with a
/// sentence naming the problem, before any row changes.
#[tokio::test]
async fn invalid_backfills_fail_validation_before_any_row_changes() {
    let db = TestDb::create("invalid").await;
    let pool = db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE t (id int NOT NULL, a int, total int);
         CREATE TABLE u (id int PRIMARY KEY, a int, total int);
         INSERT INTO t SELECT g, g FROM generate_series(1, 100) g;
         INSERT INTO u SELECT g, g FROM generate_series(1, 100) g;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let define = |name: &str, table: &str, set: &str| {
        db.define(
            name,
            &format!("kind = \"backfill\"\nstore = \"postgres\"\ntable = \"{table}\"\nkey = [\"id\"]\nset = {{ {set} }}"),
        )
    };
    define("0001_no_unique_key", "t", "total = \"a\"");
    define("0002_missing_column", "u", "nope = \"a\"");
    define("0003_broken_expression", "u", "total = \"a +* 2\"");
    define("0004_missing_table", "gone", "total = \"a\"");
    run_to_end(&db).await;
    let connected = db.connect().await;
    let expectations = [
        (
            "0001_no_unique_key",
            "no unique index or primary key on exactly (id) of t",
        ),
        (
            "0002_missing_column",
            "set assigns column nope, which does not exist in u",
        ),
        (
            "0003_broken_expression",
            "the set expressions or the where filter do not work on u",
        ),
        ("0004_missing_table", "table gone does not exist"),
    ];
    for (name, reason) in expectations {
        let record = connected.control.get(name).await.unwrap();
        assert_eq!(record.status, Status::Failed, "{name}");
        let failed_reason = record.failed_reason.unwrap_or_default();
        assert!(failed_reason.contains(reason), "{name}: {failed_reason}");
        assert_eq!(record.rows_done, 0, "{name}");
    }
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM t WHERE total IS NOT NULL").await,
        0
    );
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM u WHERE total IS NOT NULL").await,
        0
    );
}

/// An empty table finishes in one batch with zero rows.
#[tokio::test]
async fn an_empty_table_finishes_at_once() {
    let db = TestDb::create("empty").await;
    let pool = db.pool().await;
    sqlx::raw_sql("CREATE TABLE e (id int PRIMARY KEY, a int, total int)")
        .execute(&pool)
        .await
        .unwrap();
    db.define("0001_e", "kind = \"backfill\"\nstore = \"postgres\"\ntable = \"e\"\nkey = [\"id\"]\nset = { total = \"a\" }");
    run_to_end(&db).await;
    assert_eq!(db.status_of("0001_e").await, Status::Finished);
    assert_eq!(
        scalar(&pool, "SELECT rows_done FROM background_migrations").await,
        0
    );
}

/// A checkpoint as earlier versions wrote it (`{"cursor": ["60"]}`) resumes after that key; one that cannot be read
/// (a number where the key's text belongs) fails the migration, saying to fix the state or start again, before any
/// row changes.
#[tokio::test]
async fn a_stored_checkpoint_resumes_and_an_unreadable_one_fails_saying_what_to_do() {
    let db = TestDb::create("checkpoints").await;
    let pool = db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE items (id int PRIMARY KEY, a int NOT NULL, total int);
         CREATE TABLE other (id int PRIMARY KEY, a int NOT NULL, total int);
         INSERT INTO items SELECT g, g FROM generate_series(1, 100) g;
         INSERT INTO other SELECT g, g FROM generate_series(1, 100) g;",
    )
    .execute(&pool)
    .await
    .unwrap();
    for (name, table) in [("0001_resume", "items"), ("0002_unreadable", "other")] {
        db.define(
            name,
            &format!(
                "kind = \"backfill\"\nstore = \"postgres\"\ntable = \"{table}\"\nkey = [\"id\"]\n\
                 set = {{ total = \"a\" }}\n[args]\nbatchSize = 15"
            ),
        );
    }
    let connected = db.connect().await;
    common::register_dir(&connected, &db.migrations(), &bgmigrate::builtin_registry()).await;
    sqlx::raw_sql(
        "UPDATE background_migrations SET state = '{\"cursor\": [\"60\"]}' WHERE name = '0001_resume';
         UPDATE background_migrations SET state = '{\"cursor\": [60]}' WHERE name = '0002_unreadable';",
    )
    .execute(&pool)
    .await
    .unwrap();
    common::run_registered(&connected, "w1").await;

    assert_eq!(db.status_of("0001_resume").await, Status::Finished);
    assert_eq!(
        scalar(
            &pool,
            "SELECT count(*) FROM items WHERE total IS DISTINCT FROM (CASE WHEN id > 60 THEN a END)"
        )
        .await,
        0,
        "only the keys after the stored cursor are updated"
    );
    let record = connected.control.get("0002_unreadable").await.unwrap();
    assert_eq!(record.status, Status::Failed);
    let reason = record.failed_reason.unwrap_or_default();
    assert!(
        reason.contains("the checkpoint {\"cursor\":[60]} cannot be read")
            && reason.contains("fix the state or retry --from-start"),
        "{reason}"
    );
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM other WHERE total IS NOT NULL").await,
        0
    );
}

/// A batch whose checkpoint is written in its own transaction commits without waiting for the disk
/// (`synchronous_commit = off` for that transaction only: a crash can lose batch and checkpoint only together),
/// except the last batch, on which the migration is marked finished. A deferred trigger reads the setting at each
/// batch's commit, after everything the batch itself ran.
#[tokio::test]
async fn a_backfill_commits_its_batches_without_waiting_for_the_disk_except_the_last() {
    let db = TestDb::create("unflushed_commit").await;
    let pool = db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE t (id int PRIMARY KEY, v int);
         INSERT INTO t (id) SELECT g FROM generate_series(1, 4500) g;
         CREATE TABLE commits (xid bigint PRIMARY KEY, synchronous_commit text NOT NULL, rows int NOT NULL);
         CREATE FUNCTION note_commit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO commits VALUES (txid_current(), current_setting('synchronous_commit'), 1)
             ON CONFLICT (xid) DO UPDATE SET rows = commits.rows + 1;
             RETURN NULL;
         END $$;
         CREATE CONSTRAINT TRIGGER note_commit AFTER UPDATE ON t DEFERRABLE INITIALLY DEFERRED
             FOR EACH ROW EXECUTE FUNCTION note_commit();",
    )
    .execute(&pool)
    .await
    .unwrap();
    db.define(
        "0001_v",
        "kind = \"backfill\"\nstore = \"postgres\"\ntable = \"t\"\nkey = [\"id\"]\n\
         set = { v = \"id * 2\" }\n[args]\nbatchSize = 1000",
    );
    run_to_end(&db).await;

    assert_eq!(db.status_of("0001_v").await, Status::Finished);
    assert_eq!(
        scalar(
            &pool,
            "SELECT count(*) FROM t WHERE v IS DISTINCT FROM id * 2"
        )
        .await,
        0
    );
    let commits: Vec<(String, i32)> =
        sqlx::query_as("SELECT synchronous_commit, rows FROM commits ORDER BY xid")
            .fetch_all(&pool)
            .await
            .unwrap();
    let off = ("off".to_owned(), 1000);
    assert_eq!(
        commits,
        [
            off.clone(),
            off.clone(),
            off.clone(),
            off,
            ("on".to_owned(), 500)
        ],
        "four batches commit without waiting for the disk, the last one waits"
    );
}

/// Tables `t0`..`t{count - 1}` of 2,500 rows each, with a text `column` for a backfill to record a setting in.
async fn tables_for_a_setting(pool: &sqlx::PgPool, count: usize, column: &str) {
    for i in 0..count {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE t{i} (id int PRIMARY KEY, {column} text);
             INSERT INTO t{i} (id) SELECT g FROM generate_series(1, 2500) g;"
        )))
        .execute(pool)
        .await
        .unwrap();
    }
}

/// `walCompression`: by default a superuser's batches compress their WAL with lz4 (`SET LOCAL`, so the server's
/// setting stays `off` for every other session); `"server"` leaves it; a named method is used. The `set`
/// expression reads the setting inside each batch.
#[tokio::test]
async fn a_backfill_sets_wal_compression_on_its_own_batches_only() {
    let db = TestDb::create("wal_compression").await;
    let pool = db.pool().await;
    let cases = [("auto", "lz4"), ("server", "off"), ("zstd", "zstd")];
    tables_for_a_setting(&pool, cases.len(), "method").await;
    for (i, (choice, _)) in cases.iter().enumerate() {
        db.define(
            &format!("000{i}_{choice}"),
            &format!(
                "kind = \"backfill\"\nstore = \"postgres\"\ntable = \"t{i}\"\nkey = [\"id\"]\n\
                 set = {{ method = \"current_setting('wal_compression')\" }}\n\
                 [args]\nbatchSize = 1000\nwalCompression = \"{choice}\""
            ),
        );
    }
    run_to_end(&db).await;
    for (i, (choice, method)) in cases.iter().enumerate() {
        assert_eq!(
            db.status_of(&format!("000{i}_{choice}")).await,
            Status::Finished
        );
        let methods: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT DISTINCT method FROM t{i}"
        )))
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(methods, [*method], "walCompression = {choice}");
    }
    let server: String = sqlx::query_scalar("SHOW wal_compression")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(server, "off", "the server's setting is untouched");
}

/// `flushAfterKb`: by default the batches ask the kernel to write their dirty pages every 256 kB only while the
/// engine yields to the foreground (here: another session busy in a statement), and only where the server leaves
/// `backend_flush_after` off (an operator's value stands); `0` leaves the server's; a number always sets it. All on
/// the batch's transaction only. The `set` expression reads the setting inside each batch.
#[tokio::test]
async fn a_backfill_sets_backend_flush_after_on_its_batches_while_yielding_unless_the_server_has_one()
 {
    let db = TestDb::create("flush_after").await;
    let pool = db.pool().await;
    tables_for_a_setting(&pool, 7, "setting").await;
    // Defines `t{i}`'s backfill with the args `pace` and `arg`, runs it to the end, and returns the distinct settings
    // its batches saw and the one its last batch saw.
    let run = |i: usize, pace: &'static str, arg: &'static str| {
        let (db, pool) = (&db, pool.clone());
        async move {
            db.define(
                &format!("000{i}_flush"),
                &format!(
                    "kind = \"backfill\"\nstore = \"postgres\"\ntable = \"t{i}\"\nkey = [\"id\"]\n\
                     set = {{ setting = \"current_setting('backend_flush_after')\" }}\n[args]\n{pace}\n{arg}"
                ),
            );
            run_to_end(db).await;
            let seen: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT setting FROM t{i} ORDER BY id"
            )))
            .fetch_all(&pool)
            .await
            .unwrap();
            let last = seen.last().cloned().unwrap_or_default();
            let distinct: std::collections::BTreeSet<String> = seen.into_iter().collect();
            (distinct.into_iter().collect::<Vec<_>>(), last)
        }
    };
    const FAST: &str = "batchSize = 1000";
    // 25 batches over about 1.5 s: the foreground's load is an average over about a second, so the first few
    // batches run before the engine yields.
    const PACED: &str = "batchSize = 100\nsleepMs = 50";

    // Idle: only an explicit value is set.
    assert_eq!(run(0, FAST, "").await.0, ["0"], "idle, default");
    assert_eq!(run(1, FAST, "flushAfterKb = 0").await.0, ["0"]);
    assert_eq!(run(2, FAST, "flushAfterKb = 1024").await.0, ["1MB"]);

    // A foreground session busy in a statement: the engine yields, and the default sets 256 kB.
    let busy = BusySession::start(&pool).await;
    let (seen, last) = run(3, PACED, "").await;
    assert_eq!(last, "256kB", "yielding, default: {seen:?}");
    assert!(seen.iter().all(|s| s == "0" || s == "256kB"), "{seen:?}");
    assert_eq!(run(4, PACED, "flushAfterKb = 0").await.0, ["0"]);
    // An operator's value (here the database's, for new sessions) stands under the default.
    common::psql(&format!(
        "ALTER DATABASE {} SET backend_flush_after = '512kB'",
        db.name
    ));
    assert_eq!(run(5, PACED, "").await.0, ["512kB"]);
    assert_eq!(run(6, PACED, "flushAfterKb = 1024").await.0, ["1MB"]);
    busy.stop(&pool).await;
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM t0 WHERE setting = '0'").await,
        2500
    );
}

/// Another session running one long statement (`pg_sleep`) until stopped: foreground activity, as the throttle's
/// `foregroundActivePercent` counts it.
struct BusySession {
    pid: i32,
    task: tokio::task::JoinHandle<()>,
}

impl BusySession {
    async fn start(pool: &sqlx::PgPool) -> BusySession {
        let mut conn = pool.acquire().await.unwrap().detach();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let task = tokio::spawn(async move {
            let _ = sqlx::query("SELECT pg_sleep(600)").execute(&mut conn).await;
        });
        while scalar(
            pool,
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND state = 'active'"
            ),
        )
        .await
            == 0
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        BusySession { pid, task }
    }

    async fn stop(self, pool: &sqlx::PgPool) {
        sqlx::query("SELECT pg_cancel_backend($1)")
            .bind(self.pid)
            .execute(pool)
            .await
            .unwrap();
        self.task.await.unwrap();
    }
}

/// A role that may not set `wal_compression` runs with the server's under `"auto"`, and a named method fails the
/// backfill before any row changes, saying how to grant it.
#[tokio::test]
async fn a_role_without_the_setting_keeps_the_servers_or_is_told_how_to_grant_it() {
    // Declared before the database, so dropped after it (the role owns it), on a panic too.
    let role = PlainRole::create(&format!("bgm_plain_{}", std::process::id()));
    let db = TestDb::create("wal_compression_role").await;
    common::psql(&format!("ALTER DATABASE {} OWNER TO {}", db.name, role.0));
    let mut url = reqwest::Url::parse(&db.url).unwrap();
    url.set_username(&role.0).unwrap();
    let as_role = TestDb {
        name: db.name.clone(),
        url: url.to_string(),
        dir: tempfile::tempdir().unwrap(),
    };
    std::fs::create_dir_all(as_role.migrations().join("background")).unwrap();
    let pool = sqlx::PgPool::connect(&as_role.url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE t (id int PRIMARY KEY, method text); INSERT INTO t (id) SELECT g FROM generate_series(1, 100) g;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let define = |name: &str, choice: &str| {
        as_role.define(
            name,
            &format!(
                "kind = \"backfill\"\nstore = \"postgres\"\ntable = \"t\"\nkey = [\"id\"]\n\
                 set = {{ method = \"current_setting('wal_compression')\" }}\n[args]\nwalCompression = \"{choice}\""
            ),
        );
    };
    define("0001_auto", "auto");
    define("0002_lz4", "lz4");
    common::run_to_end(&as_role.connect().await, &as_role.migrations()).await;
    assert_eq!(as_role.status_of("0001_auto").await, Status::Finished);
    let connected = as_role.connect().await;
    let refused = connected.control.get("0002_lz4").await.unwrap();
    assert_eq!(refused.status, Status::Failed);
    let reason = refused.failed_reason.unwrap_or_default();
    assert!(
        reason.contains("args.walCompression")
            && reason.contains("GRANT SET ON PARAMETER wal_compression"),
        "{reason}"
    );
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM t WHERE method = 'off'").await,
        100,
        "auto left the server's setting; the refused run changed no row"
    );
    pool.close().await;
}

/// A login role without superuser rights, dropped with this value.
struct PlainRole(String);

impl PlainRole {
    fn create(name: &str) -> PlainRole {
        common::psql(&format!(
            "DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN"
        ));
        PlainRole(name.to_owned())
    }
}

impl Drop for PlainRole {
    fn drop(&mut self) {
        common::psql(&format!("DROP ROLE IF EXISTS {}", self.0));
    }
}
