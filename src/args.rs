//! Operator-tunable `args` of a migration: parsed and validated before every batch.
//!
//! `args` are data only: they are never spliced into SQL. Keys this module does not know are kept as they are,
//! so a custom migration can read its own keys from [`Args::raw`].

use serde_json::{Map, Value};

/// Rows per batch when neither the definition nor the operator sets `batchSize` (and the migration has no default
/// of its own, see [`crate::migration::Migration::default_batch_size`]).
pub const DEFAULT_BATCH_SIZE: u64 = 10_000;
/// Bytes per batch when `maxBatchBytes` is not set (a batch closes at whichever limit comes first).
pub const DEFAULT_MAX_BATCH_BYTES: u64 = 64 * 1024 * 1024;

/// The batch duration the engine sizes batches toward when `batchSize` is not set (`targetBatchMs`): long enough
/// that per-batch overhead is small (one plain `UPDATE` is within 10 %, see the README's benchmarks), short enough
/// that row locks and a lost batch cost little — pt-online-schema-change's chunk time.
pub const DEFAULT_TARGET_BATCH_MS: u64 = 500;
/// Smallest adaptive batch (`minBatchSize`).
pub const DEFAULT_MIN_BATCH_SIZE: u64 = 100;
/// Largest adaptive batch (`maxBatchSize`); `maxBatchBytes` still closes a batch of wide rows earlier.
pub const DEFAULT_MAX_BATCH_SIZE: u64 = 500_000;

const BATCH_SIZE_RANGE: (u64, u64) = (1, 10_000_000);
const MAX_BATCH_BYTES_RANGE: (u64, u64) = (1024, 4 * 1024 * 1024 * 1024);
const SLEEP_MS_RANGE: (u64, u64) = (0, 3_600_000);
const TARGET_BATCH_MS_RANGE: (u64, u64) = (10, 600_000);
/// `parallelism`: key ranges worked at once across workers. 64 bounds the ranges a split plans and the leases a
/// migration can hold; past the cores of the stores it only adds contention.
pub const PARALLELISM_RANGE: (u64, u64) = (1, 64);

/// The validated view of a migration's `args` JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    /// Rows per batch (`batchSize`).
    pub batch_size: u64,
    /// Bytes per batch (`maxBatchBytes`); a single larger row still goes through alone.
    pub max_batch_bytes: u64,
    /// Pause between batches in milliseconds (`sleepMs`), to throttle load on the store.
    pub sleep_ms: u64,
    /// How the engine sizes batches: `None` when `batchSize` is set (honoured exactly), else adaptive.
    pub adaptive: Option<AdaptiveSizing>,
    /// The health thresholds past which the migration holds back.
    pub throttle: crate::throttle::Limits,
    /// Key ranges worked at once, by as many workers (`parallelism`, default 1: one stream, no ranges).
    pub parallelism: u64,
    /// Resource limits of heavy ClickHouse statements (a rewrite's chunks).
    pub clickhouse: crate::clickhouse::limits::QueryLimits,
    /// The WAL compression of a Postgres backfill's batches (`walCompression`).
    pub wal_compression: WalCompression,
    /// How often a Postgres backfill's batches push the pages they write out to the disk (`flushAfterKb`).
    pub flush_after: FlushAfter,
    raw: Map<String, Value>,
}

/// `flushAfterKb`: after how many kB of table pages written out of shared buffers a Postgres backfill's batches
/// ask the kernel to start writing them to disk (the session's `backend_flush_after`; see
/// `kinds::backfill::writeback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlushAfter {
    /// Absent (default): [`FlushAfter::DEFAULT_KB`] while the engine yields to the foreground and the server leaves
    /// it off (its own default), else the server's setting.
    #[default]
    Auto,
    /// `0`: the server's setting, untouched.
    Server,
    /// `1` to `2048`: that many kB.
    Kb(u64),
}

impl FlushAfter {
    /// What `Auto` sets: the kernel is asked to write every 256 kB a batch pushes out, as Postgres' own checkpointer
    /// does (`checkpoint_flush_after` on Linux).
    pub const DEFAULT_KB: u64 = 256;
    /// Postgres' range for `backend_flush_after`: 0 to 2 MB.
    const RANGE: (u64, u64) = (0, 2048);

    fn parse(raw: &Map<String, Value>) -> Result<FlushAfter, ArgsError> {
        Ok(match read_u64(raw, "flushAfterKb", Self::RANGE)? {
            None => FlushAfter::Auto,
            Some(0) => FlushAfter::Server,
            Some(kb) => FlushAfter::Kb(kb),
        })
    }
}

/// `walCompression`: how a Postgres backfill's batches compress the full-page images they write (see
/// `kinds::backfill::wal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WalCompression {
    /// `"auto"` (default): lz4 where the server has it and the role may set it, else the server's setting.
    #[default]
    Auto,
    /// `"server"`: the server's setting, untouched.
    Server,
    /// `"pglz"`, `"lz4"` or `"zstd"`: that method, or a clear error where it cannot be set.
    Method(&'static str),
}

impl WalCompression {
    const ALLOWED: &'static str = "\"auto\", \"server\", \"pglz\", \"lz4\" or \"zstd\"";

    fn parse(raw: &Map<String, Value>) -> Result<WalCompression, ArgsError> {
        let Some(value) = raw.get("walCompression") else {
            return Ok(WalCompression::Auto);
        };
        match value.as_str() {
            Some("auto") => Ok(WalCompression::Auto),
            Some("server") => Ok(WalCompression::Server),
            Some("pglz") => Ok(WalCompression::Method("pglz")),
            Some("lz4") => Ok(WalCompression::Method("lz4")),
            Some("zstd") => Ok(WalCompression::Method("zstd")),
            _ => Err(ArgsError::NotOneOf {
                key: "walCompression",
                allowed: Self::ALLOWED,
                got: value.to_string(),
            }),
        }
    }
}

/// Batch sizing toward a target duration, used when `args` set no `batchSize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptiveSizing {
    /// `targetBatchMs`.
    pub target_ms: u64,
    /// `minBatchSize`.
    pub min: u64,
    /// `maxBatchSize`.
    pub max: u64,
}

/// Why an `args` value was refused; the message names the key and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArgsError {
    /// The args are not a JSON object.
    #[error("args must be a JSON object like {{\"batchSize\": 5000}}, got {0}")]
    NotAnObject(String),
    /// A known key has a value of the wrong type or out of range.
    #[error("args.{key} must be an integer from {min} to {max}, got {got}")]
    OutOfRange {
        /// The key, e.g. `batchSize`.
        key: &'static str,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
        /// The JSON that was given.
        got: String,
    },
    /// A known key holds something other than one of its named values.
    #[error("args.{key} must be {allowed}, got {got}")]
    NotOneOf {
        /// The key, e.g. `walCompression`.
        key: &'static str,
        /// The values allowed, in words.
        allowed: &'static str,
        /// The JSON that was given.
        got: String,
    },
    /// Text that is not JSON at all.
    #[error("args are not valid JSON: {0}")]
    NotJson(String),
    /// A key holds a number beyond what can be read (±1.8e308, written by hand in SQL) and the patch leaves it.
    #[error(
        "args.{0} holds a number outside what can be read (about ±1.8e308); set it in the same patch, e.g. {{\"{0}\": 2500}}, or remove it with {{\"{0}\": null}}"
    )]
    Unreadable(String),
}

impl Args {
    /// Validates an `args` JSON value (null counts as `{}`).
    pub fn parse(value: &Value) -> Result<Args, ArgsError> {
        Args::parse_with_default(value, DEFAULT_BATCH_SIZE)
    }

    /// Validates an `args` JSON value; `batchSize` defaults to `default_batch_size` (the migration's own default).
    pub fn parse_with_default(value: &Value, default_batch_size: u64) -> Result<Args, ArgsError> {
        Args::parse_for(value, default_batch_size, DEFAULT_TARGET_BATCH_MS)
    }

    /// Validates an `args` JSON value with a migration's own defaults for `batchSize` and `targetBatchMs`.
    pub fn parse_for(
        value: &Value,
        default_batch_size: u64,
        default_target_batch_ms: u64,
    ) -> Result<Args, ArgsError> {
        let raw = match value {
            Value::Object(map) => map.clone(),
            Value::Null => Map::new(),
            other => return Err(ArgsError::NotAnObject(other.to_string())),
        };
        let explicit = read_u64(&raw, "batchSize", BATCH_SIZE_RANGE)?;
        let min =
            read_u64(&raw, "minBatchSize", BATCH_SIZE_RANGE)?.unwrap_or(DEFAULT_MIN_BATCH_SIZE);
        let max = read_u64(&raw, "maxBatchSize", (min, BATCH_SIZE_RANGE.1))?
            .unwrap_or(DEFAULT_MAX_BATCH_SIZE.max(min));
        let adaptive = AdaptiveSizing {
            target_ms: read_u64(&raw, "targetBatchMs", TARGET_BATCH_MS_RANGE)?
                .unwrap_or(default_target_batch_ms),
            min,
            max,
        };
        Ok(Args {
            batch_size: explicit.unwrap_or(default_batch_size.clamp(min, max)),
            max_batch_bytes: read_u64(&raw, "maxBatchBytes", MAX_BATCH_BYTES_RANGE)?
                .unwrap_or(DEFAULT_MAX_BATCH_BYTES),
            sleep_ms: read_u64(&raw, "sleepMs", SLEEP_MS_RANGE)?.unwrap_or(0),
            adaptive: explicit.is_none().then_some(adaptive),
            throttle: crate::throttle::Limits::parse(&raw)?,
            parallelism: read_u64(&raw, "parallelism", PARALLELISM_RANGE)?.unwrap_or(1),
            clickhouse: crate::clickhouse::limits::QueryLimits::parse(&raw)?,
            wal_compression: WalCompression::parse(&raw)?,
            flush_after: FlushAfter::parse(&raw)?,
            raw,
        })
    }

    /// Parses `args` given as JSON text (CLI, API).
    pub fn parse_text(text: &str) -> Result<Value, ArgsError> {
        serde_json::from_str(text).map_err(|err| ArgsError::NotJson(err.to_string()))
    }

    /// The whole args object, including keys this module does not interpret.
    pub fn raw(&self) -> &Map<String, Value> {
        &self.raw
    }
}

/// Merges an operator's patch into `current`: keys in the patch replace, `null` removes a key.
/// The result is validated before it is returned, so a bad patch changes nothing.
pub fn merge_patch(current: &Value, patch: &Value) -> Result<Value, ArgsError> {
    let Value::Object(patch) = patch else {
        return Err(ArgsError::NotAnObject(patch.to_string()));
    };
    let mut merged = match current {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    for (key, value) in patch {
        if value.is_null() {
            merged.remove(key);
        } else {
            merged.insert(key.clone(), value.clone());
        }
    }
    let merged = Value::Object(merged);
    Args::parse(&merged)?;
    Ok(merged)
}

/// Reads integer `key` from `raw`, refusing values outside `min..=max` with a message naming the key and range.
pub(crate) fn read_u64(
    raw: &Map<String, Value>,
    key: &'static str,
    (min, max): (u64, u64),
) -> Result<Option<u64>, ArgsError> {
    let Some(value) = raw.get(key) else {
        return Ok(None);
    };
    match value.as_u64() {
        Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
        _ => Err(ArgsError::OutOfRange {
            key,
            min,
            max,
            got: value.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn missing_keys_take_defaults_and_unknown_keys_are_kept() {
        let args = Args::parse(&json!({"custom": "x"})).unwrap();
        assert_eq!(args.batch_size, DEFAULT_BATCH_SIZE);
        assert_eq!(args.sleep_ms, 0);
        assert_eq!(args.raw().get("custom"), Some(&json!("x")));
    }

    #[test]
    fn a_migrations_own_default_batch_size_applies_only_when_batch_size_is_not_set() {
        let unset = Args::parse_with_default(&json!({}), 100_000).unwrap();
        assert_eq!(unset.batch_size, 100_000);
        let set = Args::parse_with_default(&json!({"batchSize": 500}), 100_000).unwrap();
        assert_eq!(set.batch_size, 500);
    }

    #[test]
    fn a_string_batch_size_is_refused_naming_the_key_and_range() {
        let err = Args::parse(&json!({"batchSize": "2500"})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "args.batchSize must be an integer from 1 to 10000000, got \"2500\""
        );
    }

    #[test]
    fn zero_and_negative_batch_sizes_are_refused() {
        assert!(Args::parse(&json!({"batchSize": 0})).is_err());
        assert!(Args::parse(&json!({"batchSize": -5})).is_err());
        assert!(Args::parse(&json!({"batchSize": 1.5})).is_err());
    }

    #[test]
    fn without_batch_size_the_engine_adapts_between_the_bounds_and_starts_from_the_default() {
        let args = Args::parse_with_default(&json!({"minBatchSize": 500}), 100).unwrap();
        assert_eq!(
            args.batch_size, 500,
            "the default is clamped into the bounds"
        );
        let sizing = args.adaptive.expect("adaptive");
        assert_eq!(
            (sizing.target_ms, sizing.min, sizing.max),
            (500, 500, 500_000)
        );
        let fixed = Args::parse(&json!({"batchSize": 2500, "minBatchSize": 5000})).unwrap();
        assert_eq!((fixed.batch_size, fixed.adaptive), (2500, None));
    }

    #[test]
    fn a_max_batch_size_below_the_min_is_refused_naming_both_bounds() {
        let err = Args::parse(&json!({"minBatchSize": 1000, "maxBatchSize": 10})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "args.maxBatchSize must be an integer from 1000 to 10000000, got 10"
        );
    }

    #[test]
    fn parallelism_defaults_to_one_and_is_refused_outside_one_to_sixty_four() {
        assert_eq!(Args::parse(&json!({})).unwrap().parallelism, 1);
        assert_eq!(
            Args::parse(&json!({"parallelism": 4})).unwrap().parallelism,
            4
        );
        for bad in [json!(0), json!(65), json!("2"), json!(1.5)] {
            let err = Args::parse(&json!({ "parallelism": bad })).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("args.parallelism must be an integer from 1 to 64, got {bad}")
            );
        }
    }

    #[test]
    fn wal_compression_takes_auto_by_default_and_refuses_other_values_naming_them() {
        assert_eq!(
            Args::parse(&json!({})).unwrap().wal_compression,
            WalCompression::Auto
        );
        assert_eq!(
            Args::parse(&json!({"walCompression": "zstd"}))
                .unwrap()
                .wal_compression,
            WalCompression::Method("zstd")
        );
        for bad in [json!("gzip"), json!(true), json!(1)] {
            let err = Args::parse(&json!({"walCompression": bad}))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("args.walCompression must be \"auto\", \"server\", \"pglz\", \"lz4\" or \"zstd\", got"),
                "{err}"
            );
        }
    }

    #[test]
    fn flush_after_is_auto_by_default_zero_for_the_servers_and_refused_past_two_megabytes() {
        let flush = |args: Value| Args::parse(&args).map(|a| a.flush_after);
        assert_eq!(flush(json!({})), Ok(FlushAfter::Auto));
        assert_eq!(flush(json!({"flushAfterKb": 0})), Ok(FlushAfter::Server));
        assert_eq!(flush(json!({"flushAfterKb": 512})), Ok(FlushAfter::Kb(512)));
        for bad in [json!(2049), json!(-1), json!("256kB"), json!(1.5)] {
            assert_eq!(
                flush(json!({ "flushAfterKb": bad }))
                    .unwrap_err()
                    .to_string(),
                format!("args.flushAfterKb must be an integer from 0 to 2048, got {bad}")
            );
        }
    }

    #[test]
    fn merge_replaces_keys_removes_nulls_and_validates_the_result() {
        let current = json!({"batchSize": 5000, "sleepMs": 10, "note": "a"});
        let merged = merge_patch(&current, &json!({"batchSize": 2500, "sleepMs": null})).unwrap();
        assert_eq!(merged, json!({"batchSize": 2500, "note": "a"}));
        assert!(merge_patch(&current, &json!({"batchSize": "big"})).is_err());
        assert!(merge_patch(&current, &json!([1])).is_err());
    }
}
