//! The copy's typed targets against the real ClickHouse 18.16 server, end to end: `Decimal` (32/64/128, exact),
//! `UUID` keys, `Enum8`, `FixedString`, `DateTime` with a zone, arrays of decimals — copied, verified, compared
//! value by value; and a value that does not fit fails the batch naming key, column, value and type, with nothing
//! inserted. Types 18.16 lacks (`Map`, `Bool`, `IPv4/6`, `Int128+`, `Date32`, `DateTime64`) are proven on current
//! ClickHouse in `tests/chdb_types.rs`.

mod clickhouse_common;
mod common;

use bgmigrate::{Action, Status, builtin_registry};
use clickhouse_common::TestClickHouse;
use common::{TestDb, register_dir, run_registered};

const PG: &str = "
CREATE TYPE level AS ENUM ('DEBUG', 'DEFAULT', 'WARNING', 'ERROR');
CREATE TABLE costs (
    id       uuid PRIMARY KEY,
    level    level NOT NULL,
    code     text,
    total    numeric(65, 30),
    small    numeric(9, 2) NOT NULL,
    huge     numeric NOT NULL,
    units    bigint NOT NULL,
    parts    numeric[],
    local_at timestamp(3) NOT NULL
);
INSERT INTO costs
SELECT md5(g::text)::uuid,
       (ARRAY['DEBUG', 'DEFAULT', 'WARNING', 'ERROR'])[g % 4 + 1]::level,
       CASE WHEN g % 5 = 0 THEN NULL ELSE 'c' || (g % 100) END,
       CASE WHEN g % 7 = 0 THEN NULL ELSE (g * 0.000000000123 - 50)::numeric(65, 30) END,
       (g * 1.25 - 300)::numeric(9, 2),
       ('-12345678901234567890123456.' || lpad(g::text, 10, '0'))::numeric,
       g::bigint * 1000000007,
       ARRAY[g * 0.5, -g * 0.125, NULL],
       timestamp '2024-01-01 00:30:00.123' + g * interval '17 minutes'
FROM generate_series(1, 3000) g;
INSERT INTO costs VALUES ('00000000-0000-0000-0000-000000000001', 'ERROR', 'ü!', 999999.999999999999, 9999999.99,
    '99999999999999999999999999.9999999999', 9223372036854775807, '{}', '1970-01-01 01:00:01');
";

const CH: &str = "
CREATE TABLE costs (
    id UUID, level Enum8('DEBUG' = 0, 'DEFAULT' = 1, 'WARNING' = 2, 'ERROR' = 3), code Nullable(FixedString(4)),
    total Nullable(Decimal64(12)), small Decimal32(2), huge Decimal128(10), units Decimal(38, 0),
    parts Array(Nullable(Decimal(18, 6))), local_at DateTime('Europe/Berlin')
) ENGINE = ReplacingMergeTree ORDER BY id";

/// Each row of Postgres, as text the same way both sides print it.
const PG_ROWS: &str = "
SELECT concat_ws('|', id, level, coalesce(code, 'NULL'), coalesce(trim_scale(total)::text, 'NULL'),
       trim_scale(small), units,
       coalesce((SELECT string_agg(coalesce(trim_scale(p)::text, 'NULL'), ',') FROM unnest(parts) p), ''),
       to_char(local_at, 'YYYY-MM-DD HH24:MI:SS'))
FROM costs";

/// The same from ClickHouse: decimals printed without trailing zeros, the wall-clock time in the column's zone.
/// `huge` (`Decimal128`) is left out: 18.16's `toString` garbles some of its digits, even of its own
/// `toDecimal128('-12345678901234567890123456.0000000319', 10)`; verify compares its bytes here, and
/// `tests/chdb_types.rs` its digits on current ClickHouse.
const CH_ROWS: &str = "
SELECT concat(toString(id), '|', toString(level), '|', ifNull(replaceAll(toString(code), '\\0', ''), 'NULL'), '|',
       ifNull(toString(total), 'NULL'), '|', toString(small), '|', toString(units), '|',
       arrayStringConcat(arrayMap(p -> ifNull(toString(p), 'NULL'), parts), ','), '|', toString(local_at))
FROM costs FINAL";

/// Trailing zeros after a decimal point go (18.16 prints `Decimal(18, 12)` with all 12 digits).
fn trim(value: &str) -> String {
    value
        .split(['|', ','])
        .map(|part| {
            if part.contains('.') && !part.contains(':') {
                let part = part.trim_end_matches('0');
                part.strip_suffix('.').unwrap_or(part).to_owned()
            } else {
                part.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("|")
}

/// Decimals (huge and negative ones too), UUID keys, enums, fixed strings, zoned times and decimal arrays arrive
/// exactly, and verify agrees.
#[tokio::test]
async fn typed_columns_arrive_exactly_and_verify_agrees() {
    let db = TestDb::create("copy_types").await;
    let ch = TestClickHouse::create("copy_types").await;
    let pool = db.pool().await;
    sqlx::raw_sql(PG).execute(&pool).await.unwrap();
    ch.exec(CH).await;
    let name = "20240101_0001_copy_costs";
    db.define(
        name,
        "kind = \"copy\"\nverify = true\nfrom = { store = \"postgres\", table = \"costs\", key = [\"id\"] }\n\
         to = { store = \"clickhouse\", table = \"costs\" }\n[args]\nbatchSize = 700\n",
    );
    let connected = db.connect_with_clickhouse(&ch.url).await;
    register_dir(&connected, &db.migrations(), &builtin_registry()).await;
    run_registered(&connected, "w1").await;
    let record = connected.control.get(name).await.unwrap();
    assert_eq!(
        record.status,
        Status::Finished,
        "{:?}",
        record.failed_reason
    );

    let mut pg: Vec<String> = sqlx::query_scalar(PG_ROWS).fetch_all(&pool).await.unwrap();
    let mut clickhouse: Vec<String> = ch
        .client
        .query_rows(CH_ROWS)
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.concat())
        .collect();
    let mut pg: Vec<String> = pg.drain(..).map(|r| trim(&r)).collect();
    let mut clickhouse: Vec<String> = clickhouse.drain(..).map(|r| trim(&r)).collect();
    pg.sort();
    clickhouse.sort();
    assert_eq!(clickhouse.len(), 3001);
    for (p, c) in pg.iter().zip(&clickhouse) {
        assert_eq!(p, c);
    }
}

/// A value that does not fit its Decimal column fails the batch naming the key, the column, the Postgres type,
/// the value and the ClickHouse type; nothing of the batch is inserted.
#[tokio::test]
async fn a_value_that_does_not_fit_fails_the_batch_naming_it_and_nothing_is_inserted() {
    let db = TestDb::create("copy_types_bad").await;
    let ch = TestClickHouse::create("copy_types_bad").await;
    let pool = db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE prices (id int PRIMARY KEY, price numeric, kind text NOT NULL);
         INSERT INTO prices SELECT g, g * 1.5, 'a' FROM generate_series(1, 50) g;
         UPDATE prices SET price = 1234567.25 WHERE id = 40;",
    )
    .execute(&pool)
    .await
    .unwrap();
    ch.exec(
        "CREATE TABLE prices (id Int32, price Nullable(Decimal64(12)), kind Enum8('a' = 1)) \
         ENGINE = ReplacingMergeTree ORDER BY id",
    )
    .await;
    let name = "20240101_0001_copy_prices";
    db.define(
        name,
        "kind = \"copy\"\nfrom = { store = \"postgres\", table = \"prices\", key = [\"id\"] }\n\
         to = { store = \"clickhouse\", table = \"prices\" }\n",
    );
    let connected = db.connect_with_clickhouse(&ch.url).await;
    register_dir(&connected, &db.migrations(), &builtin_registry()).await;
    run_registered(&connected, "w1").await;
    let record = connected.control.get(name).await.unwrap();
    assert_eq!(record.status, Status::Failed);
    assert_eq!(
        record.failed_reason.as_deref(),
        Some(
            "the row with key (40): column price (numeric) holds \"1234567.25\", which does not fit the ClickHouse \
             type Decimal(18, 12): it needs more than 18 digits (6 before the point)"
        )
    );
    assert_eq!(ch.value("SELECT count() FROM prices").await, "0");

    sqlx::query("UPDATE prices SET price = 1, kind = 'b' WHERE id = 40")
        .execute(&pool)
        .await
        .unwrap();
    connected
        .control
        .act(name, Action::Retry, false, "cli:test")
        .await
        .unwrap();
    run_registered(&connected, "w1").await;
    let record = connected.control.get(name).await.unwrap();
    assert!(
        record
            .failed_reason
            .as_deref()
            .unwrap_or_default()
            .contains("column kind (text) holds \"b\", which does not fit the ClickHouse type Enum8('a' = 1): it is not one of the enum's names"),
        "{:?}",
        record.failed_reason
    );
    assert_eq!(ch.value("SELECT count() FROM prices").await, "0");
}
