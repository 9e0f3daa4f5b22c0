//! Proof on current ClickHouse (chDB, ClickHouse 26.x in-process, installed by `scripts/ensure-chdb.sh`) of what
//! the local 18.16 server cannot show: the copy writes every type it maps (from Postgres, and from SQLite's dynamically
//! typed values) — `Decimal32..256`, `Int128..UInt256`,
//! `UUID`, `Enum8/16`, `FixedString`, `IPv4/IPv6`, `Bool`, `Date32`, zoned `DateTime`/`DateTime64`, `Map`,
//! `LowCardinality(Nullable)`, arrays of them — and Langfuse's real v3 tables
//! (`examples/langfuse_v2_to_v3/clickhouse_v3/`) receive v2 rows; the health signals' queries answer there too.
//!
//! `tests/chdb/server.py` answers bgmigrate's ClickHouse HTTP calls with chDB: types come from chDB's own
//! `system.columns`, each `INSERT ... FORMAT RowBinary` body the copy streams is decoded by ClickHouse itself
//! (`INSERT ... SELECT * FROM file(path, 'RowBinary', structure)`), and verify's key lookups run there too. The
//! tests then compare every value as text, Postgres against ClickHouse. They never skip: without chDB they fail.

mod clickhouse_common;
mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use bgmigrate::{Status, builtin_registry};
use clickhouse_common::TestClickHouse;
use common::{TestDb, register_dir, run_registered};

/// chDB behind a ClickHouse HTTP port, stopped on drop.
struct Chdb {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Chdb {
    fn start() -> Chdb {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let ensure = Command::new("bash")
            .arg(root.join("scripts/ensure-chdb.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/ensure-chdb.sh");
        assert!(
            ensure.status.success(),
            "scripts/ensure-chdb.sh failed: chDB is needed"
        );
        let python = String::from_utf8(ensure.stdout).unwrap();
        let python = python
            .lines()
            .last()
            .expect("python path")
            .trim()
            .to_owned();
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(python)
            .arg(root.join("tests/chdb/server.py"))
            .arg(dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start tests/chdb/server.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("chDB server did not start: {line:?}"))
            .trim()
            .to_owned();
        Chdb {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }
}

impl Drop for Chdb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the copy definitions `defs` (name, TOML) with one worker; each must finish.
async fn copy(db: &TestDb, ch: &TestClickHouse, defs: &[(&str, String)]) {
    for (name, toml) in defs {
        db.define(name, toml);
    }
    let connected = db.connect_with_clickhouse(&ch.url).await;
    register_dir(&connected, &db.migrations(), &builtin_registry()).await;
    run_registered(&connected, "w1").await;
    for (name, _) in defs {
        let record = connected.control.get(name).await.unwrap();
        assert_eq!(
            record.status,
            Status::Finished,
            "{name}: {:?}",
            record.failed_reason
        );
    }
}

/// Both sides as sorted rows of text: `columns` are (Postgres expression, ClickHouse expression) pairs.
async fn compare(
    pool: &sqlx::PgPool,
    ch: &TestClickHouse,
    table: &str,
    key: &str,
    columns: &[(&str, &str)],
    rows: usize,
) {
    let pg_sql = format!(
        "SELECT concat_ws(' | ', {}) FROM {table} ORDER BY {key}::text COLLATE \"C\"",
        columns
            .iter()
            .map(|(pg, _)| format!("coalesce(({pg})::text, 'NULL')"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let ch_sql = format!(
        "SELECT concat_ws(' | ', {}) FROM {table} FINAL ORDER BY toString({key})",
        columns
            .iter()
            .map(|(_, ch)| format!("ifNull(toString({ch}), 'NULL')"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let pg: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(pg_sql))
        .fetch_all(pool)
        .await
        .unwrap();
    let clickhouse: Vec<String> = ch
        .client
        .query_rows(&ch_sql)
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.concat())
        .collect();
    eprintln!("{table}, first row in ClickHouse: {}", clickhouse[0]);
    assert_eq!(clickhouse.len(), rows, "rows in ClickHouse");
    assert_eq!(pg.len(), rows, "rows in Postgres");
    for (p, c) in pg.iter().zip(&clickhouse) {
        assert_eq!(p, c, "Postgres (left) and ClickHouse (right) differ");
    }
}

const PG_ALL: &str = r#"
CREATE TYPE mood AS ENUM ('ok', 'sad', 'it''s');
CREATE TABLE all_types (
    id uuid PRIMARY KEY, d32 numeric(9, 4) NOT NULL, d64 numeric(65, 30), d128 numeric NOT NULL,
    d256 numeric NOT NULL, dint bigint NOT NULL, i128 numeric NOT NULL, u128 numeric NOT NULL,
    i256 numeric NOT NULL, u256 numeric NOT NULL, e8 mood NOT NULL, e16 text NOT NULL, fs text NOT NULL,
    ip4 inet NOT NULL, ip6 inet, flag boolean NOT NULL, day date NOT NULL, day32 date NOT NULL,
    ts_utc timestamptz NOT NULL, ts_local timestamp(6) NOT NULL, ts64 timestamptz NOT NULL,
    ts64_local timestamp(6) NOT NULL, ts64_day date NOT NULL, m_str jsonb NOT NULL, m_u64 jsonb NOT NULL,
    m_dec jsonb NOT NULL, m_bool jsonb NOT NULL, m_f64 json NOT NULL, lc text NOT NULL, lcn text,
    uuid_text text NOT NULL, ids uuid[] NOT NULL, decs numeric[] NOT NULL, days date[] NOT NULL,
    maps jsonb[] NOT NULL
);
INSERT INTO all_types
SELECT md5(g::text)::uuid,
       round(g * 1.2345 - 300, 4),
       CASE WHEN g % 9 = 0 THEN NULL ELSE (g * 0.000000000123 - 50)::numeric(65, 30) END,
       ('-123456789012345' || lpad(g::text, 3, '0') || '.' || lpad(g::text, 20, '0'))::numeric,
       (repeat('9', 30) || g || '.' || repeat('1', 39) || (g % 10))::numeric,
       g::bigint * -1000000007,
       ('-170141183460469231731687303715884105' || lpad(g::text, 3, '0'))::numeric,
       ('340282366920938463463374607431768211' || lpad(g::text, 3, '0'))::numeric,
       ('-5789604461865809771178549250434395392663499233282028201972879200395656481' || lpad(g::text, 3, '0'))::numeric,
       ('11579208923731619542357098500868790785326998466564056403945758400791312963' || lpad(g::text, 3, '0'))::numeric,
       (ARRAY['ok', 'sad', 'it''s'])[g % 3 + 1]::mood,
       (ARRAY['x', 'y'])[g % 2 + 1],
       (ARRAY['', 'ab', 'ünï', '12345678'])[g % 4 + 1],
       ('10.' || (g % 256) || '.0.' || (g % 200))::inet,
       CASE WHEN g % 5 = 0 THEN NULL WHEN g % 5 = 1 THEN '1.2.3.4'::inet
            ELSE ('2001:db8::' || to_hex(g))::inet END,
       g % 2 = 0,
       date '2024-01-01' + g,
       date '1900-01-01' + g * 211,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour 7 seconds',
       timestamp '2024-01-01 00:00:00.987654' + g * interval '13 minutes',
       timestamptz '1969-12-31 23:59:58.5+00' + g * interval '1.000001 seconds',
       timestamp '2024-01-10 12:00:00.123987' + g * interval '1 day',
       date '1950-06-01' + g,
       jsonb_build_object('model', 'gpt-' || g, 'n', g, 'deep', jsonb_build_object('a', ARRAY[1, 2]),
                          'none', NULL, 'ünï "q"', E'tab\there'),
       jsonb_build_object('input', g, 'output', g * 2, 'total', 18446744073709551615),
       jsonb_build_object('input', (g * 0.000001)::numeric, 'total', -123456.123456789012),
       jsonb_build_object('yes', true, 'no', false, 'unknown', NULL),
       ('{"b": ' || (g * 0.25) || ', "a": -3, "b2": 1e3}')::json,
       'lc-' || (g % 3),
       CASE WHEN g % 4 = 0 THEN NULL ELSE 'lcn-' || (g % 3) END,
       upper(md5('t' || g)::uuid::text),
       ARRAY[md5('a' || g)::uuid, md5('b' || g)::uuid],
       ARRAY[(g * 0.5)::numeric, NULL, -(g * 0.0000000001)::numeric],
       ARRAY[date '1920-02-29' + g, date '2200-01-01' + g],
       ARRAY[jsonb_build_object('k', g::text), '{}'::jsonb]
FROM generate_series(1, 300) g;
"#;

const CH_ALL: &str = r"
CREATE TABLE all_types (
    id UUID, d32 Decimal32(4), d64 Nullable(Decimal64(12)), d128 Decimal128(20), d256 Decimal256(40),
    dint Decimal(20, 2), i128 Int128, u128 UInt128, i256 Int256, u256 UInt256,
    e8 Enum8('ok' = 1, 'sad' = -2, 'it\'s' = 3), e16 Enum16('x' = 1000, 'y' = -1000), fs FixedString(8),
    ip4 IPv4, ip6 Nullable(IPv6), flag Bool, day Date, day32 Date32, ts_utc DateTime('UTC'),
    ts_local DateTime('Asia/Kolkata'), ts64 DateTime64(6, 'UTC'), ts64_local DateTime64(3, 'America/New_York'),
    ts64_day DateTime64(3, 'UTC'), m_str Map(LowCardinality(String), String), m_u64 Map(String, UInt64),
    m_dec Map(LowCardinality(String), Decimal(18, 12)), m_bool Map(String, Nullable(Bool)),
    m_f64 Map(String, Float64), lc LowCardinality(String), lcn LowCardinality(Nullable(String)),
    uuid_text UUID, ids Array(UUID), decs Array(Nullable(Decimal(38, 10))), days Array(Date32),
    maps Array(Map(String, String))
) ENGINE = ReplacingMergeTree ORDER BY id";

/// A JSON object's members as `k=v;...` in the object's order, each value through `value` (`v` is its text).
fn pg_map(column: &str, value: &str) -> String {
    format!(
        "(SELECT coalesce(string_agg(k || '=' || coalesce({value}, 'null'), ';' ORDER BY o), '') \
         FROM json_each_text({column}::json) WITH ORDINALITY AS e(k, v, o))"
    )
}

fn ch_map(column: &str) -> String {
    format!(
        "arrayStringConcat(arrayMap((k, v) -> concat(k, '=', ifNull(toString(v), 'null')), mapKeys({column}), \
         mapValues({column})), ';')"
    )
}

/// Every mapped type, on current ClickHouse: 300 rows of extremes (Int256 and Decimal256 near their limits,
/// negative decimals, pre-1970 times, unicode, NULLs) arrive with every digit, and verify agrees.
#[tokio::test]
async fn every_mapped_type_round_trips_exactly_through_current_clickhouse() {
    let started = std::time::Instant::now();
    let chdb = Chdb::start();
    let db = TestDb::create("chdb_all_types").await;
    let ch = TestClickHouse::create_on(&chdb.url, "chdb_all_types").await;
    let pool = db.pool().await;
    sqlx::raw_sql(PG_ALL).execute(&pool).await.unwrap();
    ch.exec(CH_ALL).await;
    copy(
        &db,
        &ch,
        &[(
            "20240101_0001_all_types",
            "kind = \"copy\"\nverify = true\nfrom = { store = \"postgres\", table = \"all_types\", key = [\"id\"] }\n\
             to = { store = \"clickhouse\", table = \"all_types\" }\n[args]\nbatchSize = 70\n"
                .to_owned(),
        )],
    )
    .await;

    let ts = |c: &str, fmt: &str| format!("to_char({c}, '{fmt}')");
    let utc = |c: &str, fmt: &str| format!("to_char({c} AT TIME ZONE 'UTC', '{fmt}')");
    let columns: Vec<(String, String)> = vec![
        ("id".into(), "id".into()),
        ("trim_scale(d32)".into(), "d32".into()),
        ("trim_scale(d64)".into(), "d64".into()),
        ("trim_scale(d128)".into(), "d128".into()),
        ("trim_scale(d256)".into(), "d256".into()),
        ("dint".into(), "dint".into()),
        ("i128".into(), "i128".into()),
        ("u128".into(), "u128".into()),
        ("i256".into(), "i256".into()),
        ("u256".into(), "u256".into()),
        ("e8".into(), "e8".into()),
        ("e16".into(), "e16".into()),
        ("fs".into(), "replaceAll(toString(fs), '\\0', '')".into()),
        ("host(ip4)".into(), "ip4".into()),
        (
            "CASE WHEN family(ip6) = 4 THEN '::ffff:' || host(ip6) ELSE host(ip6) END".into(),
            "ip6".into(),
        ),
        ("flag".into(), "flag".into()),
        ("day".into(), "day".into()),
        ("day32".into(), "day32".into()),
        (utc("ts_utc", "YYYY-MM-DD HH24:MI:SS"), "ts_utc".into()),
        (ts("ts_local", "YYYY-MM-DD HH24:MI:SS"), "ts_local".into()),
        (utc("ts64", "YYYY-MM-DD HH24:MI:SS.US"), "ts64".into()),
        (ts("ts64_local", "YYYY-MM-DD HH24:MI:SS.MS"), "ts64_local".into()),
        (ts("ts64_day", "YYYY-MM-DD \"00:00:00.000\""), "ts64_day".into()),
        (pg_map("m_str", "v"), ch_map("m_str")),
        (pg_map("m_u64", "v"), ch_map("m_u64")),
        (pg_map("m_dec", "trim_scale(v::numeric)::text"), ch_map("m_dec")),
        (pg_map("m_bool", "v"), ch_map("m_bool")),
        (pg_map("m_f64", "(v::float8)::text"), ch_map("m_f64")),
        ("lc".into(), "lc".into()),
        ("lcn".into(), "lcn".into()),
        ("lower(uuid_text)".into(), "uuid_text".into()),
        ("array_to_string(ids, ',')".into(), "arrayStringConcat(arrayMap(x -> toString(x), ids), ',')".into()),
        (
            "(SELECT string_agg(coalesce(trim_scale(x)::text, 'NULL'), ',' ORDER BY o) FROM unnest(decs) WITH ORDINALITY u(x, o))".into(),
            "arrayStringConcat(arrayMap(x -> ifNull(toString(x), 'NULL'), decs), ',')".into(),
        ),
        ("array_to_string(days, ',')".into(), "arrayStringConcat(arrayMap(x -> toString(x), days), ',')".into()),
        (
            format!(
                "(SELECT string_agg({}, '/' ORDER BY o) FROM unnest(maps) WITH ORDINALITY u(mm, o))",
                pg_map("mm", "v")
            ),
            format!("arrayStringConcat(arrayMap(mm -> {}, maps), '/')", ch_map("mm")),
        ),
    ];
    let pairs: Vec<(&str, &str)> = columns
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    compare(&pool, &ch, "all_types", "id", &pairs, 300).await;
    eprintln!(
        "every type round-tripped through ClickHouse {} in {:.1} s",
        ch.value("SELECT version()").await,
        started.elapsed().as_secs_f64()
    );
}

const LANGFUSE_V2_ROWS: &str = r#"
INSERT INTO traces (id, "timestamp", name, user_id, metadata, release, version, project_id, public, bookmarked,
                    tags, input, output, session_id, created_at, updated_at)
SELECT 'trace-' || g, timestamp '2024-10-01 00:00:00.123' + g * interval '1 minute 1.001 seconds',
       CASE WHEN g % 6 = 0 THEN NULL ELSE 'chat ✓ ' || g END, CASE WHEN g % 4 = 0 THEN NULL ELSE 'user-' || g END,
       CASE g % 4 WHEN 0 THEN NULL WHEN 1 THEN jsonb_build_object('env', 'prod', 'n', g, 'ok', true, 'nested', jsonb_build_object('a', 'ü'))
                  WHEN 2 THEN '"just a string"'::jsonb ELSE jsonb_build_array(1, g) END,
       'v2.' || (g % 3), NULL, 'project-' || (g % 3), g % 2 = 0, g % 5 = 0, ARRAY['t' || (g % 4), 'ü'],
       jsonb_build_object('q', 'question ' || g), CASE WHEN g % 7 = 0 THEN NULL ELSE '"answer"'::jsonb END,
       'session-' || (g % 5), timestamp '2024-10-01 00:00:00' + g * interval '1 minute',
       timestamp '2024-10-02 00:00:00.999' + g * interval '1 minute'
FROM generate_series(1, 120) g;
INSERT INTO observations (id, trace_id, project_id, type, start_time, end_time, name, metadata, level,
                          status_message, model, model_parameters, input, output, prompt_tokens, completion_tokens,
                          total_tokens, input_cost, output_cost, total_cost, completion_start_time, created_at,
                          updated_at)
SELECT 'obs-' || g, CASE WHEN g % 9 = 0 THEN NULL ELSE 'trace-' || g END, 'project-' || (g % 3),
       (ARRAY['SPAN', 'EVENT', 'GENERATION'])[g % 3 + 1]::"ObservationType",
       timestamp '2024-10-01 00:00:00.5' + g * interval '61 seconds',
       CASE WHEN g % 2 = 0 THEN NULL ELSE timestamp '2024-10-01 00:00:01.75' + g * interval '61 seconds' END,
       'step ' || g, CASE WHEN g % 3 = 0 THEN jsonb_build_object('k', g, 'tag', 'x') END,
       (ARRAY['DEBUG', 'DEFAULT', 'WARNING', 'ERROR'])[g % 4 + 1]::"ObservationLevel",
       CASE WHEN g % 4 = 3 THEN 'failed: ✗' END, 'gpt-4o', jsonb_build_object('temperature', 0.7),
       jsonb_build_object('prompt', 'p' || g), jsonb_build_object('completion', 'c' || g),
       g * 10, g * 3, g * 13,
       CASE WHEN g % 5 = 0 THEN NULL ELSE g * 0.000002500000 END,
       CASE WHEN g % 5 = 0 THEN NULL ELSE g * 0.000010000001 END,
       CASE WHEN g % 5 = 0 THEN NULL ELSE g * 0.000012500001 + 123456.000000000049 END,
       CASE WHEN g % 2 = 0 THEN timestamp '2024-10-01 00:00:00.9' + g * interval '61 seconds' END,
       timestamp '2024-10-01 00:00:00' + g * interval '1 minute',
       timestamp '2024-10-03 00:00:00.001' + g * interval '1 minute'
FROM generate_series(1, 150) g;
INSERT INTO scores (id, "timestamp", project_id, trace_id, observation_id, name, value, source, comment, data_type,
                    string_value, created_at, updated_at)
SELECT 'score-' || g, timestamp '2024-10-01 00:00:00.321' + g * interval '1 minute', 'project-' || (g % 3),
       'trace-' || g, CASE WHEN g % 2 = 0 THEN 'obs-' || g END, 'quality', g / 8.0,
       (ARRAY['ANNOTATION', 'API', 'EVAL'])[g % 3 + 1]::"ScoreSource", CASE WHEN g % 5 = 0 THEN 'ok ✓' END,
       'NUMERIC', NULL, timestamp '2024-10-01 00:00:00' + g * interval '1 minute',
       timestamp '2024-10-04 00:00:00' + g * interval '1 minute'
FROM generate_series(1, 90) g;
"#;

/// A SQLite source's dynamically typed values land exactly in the types only current ClickHouse has: `Bool` from
/// text, `DateTime64(3, 'UTC')` from ISO text and from unix seconds with a fraction, `Date32` before 1970, `Map`
/// and `Array` from JSON text, `Int128` from text and integers, `Decimal(38, 10)` from text and REALs,
/// `LowCardinality(Nullable(String))`, and `UUID` from a 16-byte BLOB; `verify` then compares every key range.
#[tokio::test]
async fn sqlite_values_of_every_storage_class_land_exactly_in_current_clickhouse_types() {
    let chdb = Chdb::start();
    let ch = TestClickHouse::create_on(&chdb.url, "chdb_sqlite").await;
    ch.exec(
        "CREATE TABLE events (id UInt64, flag Bool, at DateTime64(3, 'UTC'), day Date32, \
         meta Map(String, UInt64), label LowCardinality(Nullable(String)), big Int128, amount Decimal(38, 10), \
         tags Array(String), uid UUID) ENGINE = ReplacingMergeTree ORDER BY id",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("migrations/background")).unwrap();
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    let connected = bgmigrate::config::connect(&url)
        .await
        .unwrap()
        .with_clickhouse(Some(&ch.url))
        .unwrap();
    connected.control.ensure_schema().await.unwrap();
    let pool = connected.stores.sqlite("sqlite").unwrap().pool().clone();
    sqlx::query(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, flag, at, day, meta, label, big, amount, tags, uid BLOB)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let rows = 200u32;
    for n in 1..=rows {
        let at = if n % 2 == 0 {
            format!("'2024-10-24T12:00:{:02}.123Z'", n % 60)
        } else {
            format!("{}.25", 1_729_771_200 + n)
        };
        let big = if n == 1 {
            format!("'{}'", i128::MAX)
        } else {
            format!("{}", -1000 * i64::from(n))
        };
        let amount = if n % 2 == 0 {
            format!("'12345678901234567890.{n:010}'")
        } else {
            format!("{n}.25")
        };
        let label = if n % 4 == 0 {
            "NULL".to_owned()
        } else {
            format!("'l{}'", n % 3)
        };
        let sql = format!(
            "INSERT INTO events VALUES ({n}, '{}', {at}, date('1950-06-01', '+{n} days'), \
             '{{\"a\": {n}, \"b\": {}}}', {label}, {big}, {amount}, '[\"x\", \"y {n}\"]', x'{:032x}')",
            if n % 2 == 0 { "true" } else { "f" },
            2 * n,
            u128::from(n) << 64 | 0xabc
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
    }
    std::fs::write(
        dir.path().join("migrations/background/20240101_0001_sqlite_types.toml"),
        "kind = \"copy\"\nverify = true\nfrom = { store = \"sqlite\", table = \"events\", key = [\"id\"] }\n\
         to = { store = \"clickhouse\", table = \"events\" }\n[args]\nbatchSize = 70\n",
    )
    .unwrap();
    common::run_to_end(&connected, &dir.path().join("migrations")).await;
    let record = connected
        .control
        .get("20240101_0001_sqlite_types")
        .await
        .unwrap();
    assert_eq!(
        record.status,
        Status::Finished,
        "{:?}",
        record.failed_reason
    );

    let expected: Vec<String> = (1..=rows)
        .map(|n| {
            let at = if n % 2 == 0 {
                format!("2024-10-24 12:00:{:02}.123", n % 60)
            } else {
                let secs = 1_729_771_200 + i64::from(n);
                let t = chrono::DateTime::from_timestamp(secs, 0).unwrap();
                format!("{}.250", t.format("%Y-%m-%d %H:%M:%S"))
            };
            let day = chrono::NaiveDate::from_ymd_opt(1950, 6, 1).unwrap()
                + chrono::Duration::days(i64::from(n));
            let label = if n % 4 == 0 {
                "NULL".to_owned()
            } else {
                format!("l{}", n % 3)
            };
            let big = if n == 1 {
                i128::MAX.to_string()
            } else {
                (-1000 * i64::from(n)).to_string()
            };
            let amount = if n % 2 == 0 {
                format!("12345678901234567890.{n:010}")
                    .trim_end_matches('0')
                    .to_owned()
            } else {
                format!("{n}.25")
            };
            let uid = format!("{:032x}", u128::from(n) << 64 | 0xabc);
            let uid = format!(
                "{}-{}-{}-{}-{}",
                &uid[..8],
                &uid[8..12],
                &uid[12..16],
                &uid[16..20],
                &uid[20..]
            );
            [
                n.to_string(),
                (n % 2 == 0).to_string(),
                at,
                day.to_string(),
                format!("{{'a':{n},'b':{}}}", 2 * n),
                label,
                big,
                amount,
                format!("['x','y {n}']"),
                uid,
            ]
            .join(" | ")
        })
        .collect();
    let copied: Vec<String> = ch
        .client
        .query_rows(
            "SELECT concat_ws(' | ', toString(id), toString(flag), toString(at), toString(day), toString(meta), \
             ifNull(toString(label), 'NULL'), toString(big), toString(amount), toString(tags), toString(uid)) \
             FROM events FINAL ORDER BY id",
        )
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.concat())
        .collect();
    assert_eq!(copied.len(), expected.len());
    for (c, e) in copied.iter().zip(&expected) {
        assert_eq!(
            c, e,
            "ClickHouse (left) and the expected value (right) differ"
        );
    }
}

/// Langfuse's v2 → v3 move on its real v3 tables (`examples/langfuse_v2_to_v3/current/`): `bgmigrate migrate`
/// applies the v2 Postgres schema and the v3 ClickHouse DDL (Map, Bool, Decimal64(12), DateTime64(3),
/// `ReplacingMergeTree(event_ts, is_deleted)`, `PARTITION BY toYYYYMM`) in current ClickHouse; the three copies
/// (from queries: metadata → Map, tokens → usage_details, costs → cost_details and total_cost) finish with verify,
/// and every derived value is what the query says.
#[tokio::test]
async fn langfuse_v2_rows_land_in_the_real_v3_tables_of_current_clickhouse() {
    let started = std::time::Instant::now();
    let chdb = Chdb::start();
    let db = TestDb::create("chdb_langfuse").await;
    let ch = TestClickHouse::create_on(&chdb.url, "chdb_langfuse").await;
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/langfuse_v2_to_v3/current"
    );
    let env = [
        ("CLICKHOUSE_URL", ch.url.as_str()),
        ("BGMIGRATE_MIGRATIONS_DIR", dir),
    ];
    let out = db.cli_with_env(&["migrate"], &env);
    assert!(out.status.success(), "{}", common::text(&out));
    assert_eq!(
        ch.value("SELECT engine_full LIKE 'ReplacingMergeTree(event_ts, is_deleted)%' FROM system.tables WHERE database = currentDatabase() AND name = 'observations'").await,
        "1"
    );
    let pool = db.pool().await;
    sqlx::raw_sql(LANGFUSE_V2_ROWS)
        .execute(&pool)
        .await
        .unwrap();
    let connected = db.connect_with_clickhouse(&ch.url).await;
    register_dir(&connected, Path::new(dir), &builtin_registry()).await;
    run_registered(&connected, "w1").await;
    for record in connected.control.list().await.unwrap() {
        assert_eq!(
            record.status,
            Status::Finished,
            "{}: {:?}",
            record.name,
            record.failed_reason
        );
    }

    let meta_pg = |c: &str| {
        format!(
            "(SELECT coalesce(string_agg(k || '=' || coalesce(v, 'null'), ';' ORDER BY o), '') FROM jsonb_each_text(\
             CASE WHEN {c} IS NULL THEN '{{}}'::jsonb WHEN jsonb_typeof({c}) = 'object' THEN {c} \
             ELSE jsonb_build_object('metadata', {c}) END) WITH ORDINALITY AS e(k, v, o))"
        )
    };
    let ms = |c: &str| format!("to_char({c}, 'YYYY-MM-DD HH24:MI:SS.MS')");
    compare(
        &pool,
        &ch,
        "traces",
        "id",
        &[
            ("id", "id"),
            (&ms("\"timestamp\""), "timestamp"),
            ("coalesce(name, '')", "name"),
            ("user_id", "user_id"),
            (&meta_pg("metadata"), &ch_map("metadata")),
            ("public", "public"),
            ("bookmarked", "bookmarked"),
            ("array_to_string(tags, ',')", "arrayStringConcat(tags, ',')"),
            ("input::text", "input"),
            ("output::text", "output"),
            (&ms("updated_at"), "event_ts"),
            ("0", "is_deleted"),
        ],
        120,
    )
    .await;
    // jsonb keeps an object's keys shortest first, then by bytes: input, total, output.
    let cost = |c: &str| format!("trim_scale(round({c}, 12))");
    let costs_pg = format!(
        "concat_ws(';', 'input=' || {}, 'total=' || {}, 'output=' || {})",
        cost("input_cost"),
        cost("total_cost"),
        cost("output_cost")
    );
    compare(
        &pool,
        &ch,
        "observations",
        "id",
        &[
            ("id", "id"),
            ("coalesce(trace_id, '')", "trace_id"),
            ("type", "type"),
            (&ms("start_time"), "start_time"),
            (&ms("end_time"), "end_time"),
            (&meta_pg("metadata"), &ch_map("metadata")),
            ("level", "level"),
            ("status_message", "status_message"),
            ("model", "provided_model_name"),
            ("model_parameters::text", "model_parameters"),
            (
                "concat('input=', prompt_tokens, ';total=', total_tokens, ';output=', completion_tokens)",
                &ch_map("usage_details"),
            ),
            (&costs_pg, &ch_map("cost_details")),
            (&costs_pg, &ch_map("provided_cost_details")),
            (&cost("total_cost"), "total_cost"),
            (&ms("completion_start_time"), "completion_start_time"),
            (&ms("updated_at"), "event_ts"),
        ],
        150,
    )
    .await;
    compare(
        &pool,
        &ch,
        "scores",
        "id",
        &[
            ("id", "id"),
            (&ms("\"timestamp\""), "timestamp"),
            ("observation_id", "observation_id"),
            ("value", "value"),
            ("source", "source"),
            ("comment", "comment"),
            ("data_type", "data_type"),
            (&ms("updated_at"), "event_ts"),
        ],
        90,
    )
    .await;
    eprintln!(
        "Langfuse v2 rows copied into the v3 tables of ClickHouse {} in {:.1} s",
        ch.value("SELECT version()").await,
        started.elapsed().as_secs_f64()
    );
}

/// The ClickHouse health query (parts, merges, merge pool, `MemoryTracking`) and the rewrite's settings probe parse
/// and answer on current ClickHouse as on 18.16: a quiet server lets go, eleven unmerged parts hold at 1 % of
/// `parts_to_delay_insert`, an absolute memory limit of one byte holds whenever the server tracks memory at all,
/// and `system.settings` lists `max_insert_threads`, so the rewrite sends it there.
#[tokio::test]
async fn the_health_signals_and_the_rewrite_settings_probe_work_on_current_clickhouse() {
    use bgmigrate::throttle::clickhouse::ChHealth;
    use bgmigrate::throttle::{Health, HealthCheck, Limits};
    let chdb = Chdb::start();
    let ch = TestClickHouse::create_on(&chdb.url, "chdb_health").await;
    ch.exec("CREATE TABLE events (id String) ENGINE = ReplacingMergeTree ORDER BY id")
        .await;
    ch.exec("INSERT INTO events SELECT toString(number) FROM numbers(10)")
        .await;
    let health = ChHealth::new(ch.client.clone(), "events");
    assert_eq!(
        health.check(&Limits::default()).await,
        Ok(Health::Fine),
        "a quiet server"
    );
    // The parts signal holds deterministically: merges stopped, eleven inserts make eleven active parts in one
    // partition, past 1 % of current ClickHouse's `parts_to_delay_insert` (1000).
    ch.exec("SYSTEM STOP MERGES events").await;
    for batch in 0..11 {
        ch.exec(&format!("INSERT INTO events VALUES ('again-{batch}')"))
            .await;
    }
    let one_percent = Limits {
        max_parts_percent: 1,
        ..Limits::default()
    };
    match health.check(&one_percent).await {
        Ok(Health::Hold { signal, reason }) => {
            assert_eq!(signal, "clickhouse_parts", "{reason}");
            assert!(reason.contains("parts_to_delay_insert 1000"), "{reason}");
        }
        other => panic!("expected a parts hold, got {other:?}"),
    }
    // The memory signal compares `MemoryTracking` with the limit. In-process chDB's tracker can read zero or
    // below (memory freed by threads it did not count), where no limit is ever passed, so the expectation
    // follows the server's own reading.
    let tracked: i64 = ch
        .value("SELECT toInt64(sum(value)) FROM system.metrics WHERE metric = 'MemoryTracking'")
        .await
        .parse()
        .expect("MemoryTracking is a number");
    let one_byte = Limits {
        max_server_memory_bytes: 1,
        ..Limits::default()
    };
    match health.check(&one_byte).await {
        Ok(Health::Hold { signal, .. }) => assert_eq!(signal, "clickhouse_memory"),
        Ok(Health::Fine) if tracked <= 1 => {}
        other => panic!("expected a memory hold with {tracked} bytes tracked, got {other:?}"),
    }
    assert_eq!(
        ch.value("SELECT count() FROM system.settings WHERE name = 'max_insert_threads'")
            .await,
        "1"
    );
}
