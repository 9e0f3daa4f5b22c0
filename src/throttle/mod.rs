//! Health signals that make a migration hold back: the database tells the engine when it is busy, and the engine
//! waits between batches — never with a transaction or a lock open — until it is not.
//!
//! Each signal has an `args` threshold with a documented default ([`Limits`]); a migration names the checks of the
//! stores it touches ([`crate::migration::Migration::health_checks`]). Layout: this file holds the contract and the
//! limits; [`postgres`] reads replication, WAL, lock, vacuum and load signals; [`clickhouse`] reads parts, merges
//! and memory. Checks also give advice that holds nothing back ([`Advice`]; [`checkpoints`]: checkpoints forced
//! by the WAL's volume).

mod checkpoints;
pub mod clickhouse;
pub mod postgres;
mod pressure;
mod rate;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::args::{ArgsError, read_u64};

/// What a health check says about its store now.
#[derive(Debug, Clone, PartialEq)]
pub enum Health {
    /// Go on at full speed.
    Fine,
    /// Hold before the next batch until the check passes; the reason says which signal and by how much.
    Hold {
        /// Short signal name for metrics (`replication_lag`).
        signal: &'static str,
        /// A sentence for operators, e.g. "replication lag 12.0 MiB > 1.0 MiB on standby s1".
        reason: String,
    },
    /// Run, but rest after each batch for `rest_ratio` times the batch's duration, so foreground work gets the
    /// database for that share of the time.
    Yield {
        /// Short signal name for metrics.
        signal: &'static str,
        /// A sentence for operators.
        reason: String,
        /// Rest per unit of batch time.
        rest_ratio: f64,
        /// The duration adaptive batches aim for meanwhile, in ms (0: keep `targetBatchMs`).
        batch_ms: u64,
    },
}

/// What a check tells the operator about its store without holding back: a server setting that costs the
/// migration, with the figures to change it by. The engine records it as an `advised` event and logs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Advice {
    /// Short name for metrics and the event (`checkpoints`).
    pub topic: &'static str,
    /// A sentence for operators: what was measured and what to change.
    pub message: String,
    /// The figures behind it, for the event's detail.
    pub figures: Value,
    /// How long no stream of the same migration gives advice again: the first of its workers to see it says it.
    pub repeat_after: std::time::Duration,
}

/// One signal of one store.
#[async_trait]
pub trait HealthCheck: Send + Sync {
    /// Reads the signal. An error means it could not be read; each check decides (and documents) whether that holds
    /// or lets go, by returning `Hold` or `Fine` itself — errors reaching the engine are logged and let go.
    async fn check(&self, limits: &Limits) -> Result<Health, String>;

    /// Samples the store while a batch runs (every [`SAMPLE_EVERY`]), for what only shows then — foreground
    /// sessions waiting for the batch's locks; the next `check` folds the samples in. An error lets go, like an
    /// unreadable `check`. None by default.
    async fn sample(&self, _limits: &Limits) -> Result<(), String> {
        Ok(())
    }

    /// Advice due now, if any; the check decides how often it reads what the advice rests on. An error is logged
    /// once and changes nothing. None by default.
    async fn advice(&self) -> Result<Option<Advice>, String> {
        Ok(None)
    }
}

/// How often a running batch is sampled: often enough that a 10 ms yield batch is seen at least once, and a
/// foreground statement blocked for longer than that is counted; one `pg_stat_activity` read costs well under a
/// millisecond.
pub const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// The thresholds, from `args` (each optional; 0 turns a signal off).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// `maxReplicationLagMs` (default 5,000): replay lag of any streaming standby.
    pub max_replication_lag_ms: u64,
    /// `maxReplicationLagBytes` (default 256 MiB): WAL a standby has not replayed yet.
    pub max_replication_lag_bytes: u64,
    /// `maxSlotRetainedBytes` (default 10 GiB): WAL kept for a replication slot (disk filling up).
    pub max_slot_retained_bytes: u64,
    /// `maxWalBytesPerSecond` (default 0: off): WAL the server generated per second over the last 5 s. Off by
    /// default because a backfill over random keys writes a full-page image for nearly every row after each
    /// checkpoint: on the benchmark machine it passed 100 MiB/s for seconds at a time, and a 100 MiB/s default (a
    /// 1 Gbit/s standby link) cut the idle backfill to 0.59x one plain `UPDATE`, which writes the same WAL unthrottled.
    /// Set it where a standby or archive link is the bottleneck; `maxReplicationLagBytes` covers standbys anyway.
    pub max_wal_bytes_per_second: u64,
    /// `maxLockWaiters` (default 5): sessions waiting for a lock in the migration's database, read before a batch
    /// (when our session holds no lock): contention among other sessions, which a batch would add to.
    pub max_lock_waiters: u64,
    /// `yieldOnBlockedSessions` (default 1; 0: off): the migration yields, and its next batch is shorter, when a
    /// sample taken while a batch ran saw at least this many foreground sessions waiting for a lock that a bgmigrate
    /// session holds.
    pub yield_on_blocked_sessions: u64,
    /// `foregroundActivePercent` (default 20): when other sessions are busy in the database — on average over about
    /// the last second, in percent of one session — the migration yields.
    pub foreground_active_percent: u64,
    /// `yieldPercent` (default 50): rest after each batch while yielding, in percent of the batch's duration per
    /// foreground session busy while our batches run (at least one; the maths is in `throttle/pressure.rs`). Half
    /// the batch's time since `flushAfterKb` took the writeback stall out of the foreground's commits: in three
    /// runs of the foreground benchmark 50 gave the same p99 during the backfill as 100, at 33–43 % of the idle
    /// speed against 15–33 %.
    pub yield_percent: u64,
    /// `yieldBatchMs` (default 4; 0 keeps `targetBatchMs`): while yielding, adaptive batches aim for this duration
    /// divided by the same pressure (at least 2 ms) — a foreground statement that needs a row of the batch in flight
    /// waits at most about that long. The foreground benchmark measured the load's tail shrinking with our batches
    /// (50 ms: 3.8–12x its p99 alone at 400 tx/s; 10 ms: 7.8–10.4 ms at 1,000,000 rows and 400 tx/s; 3–4 ms:
    /// 5.2–6.7 ms at about the same speed), so a yield batch is a few milliseconds, like the statements of a plain
    /// paced writer (2–4 ms); 2 ms cost a fifth of the speed. What keeps short batches fast is that they share one
    /// reading of the health checks (README, foreground benchmark).
    pub yield_batch_ms: u64,
    /// `maxPartsPercent` (default 60): active parts of one ClickHouse partition, in percent of the table's
    /// `parts_to_delay_insert`.
    pub max_parts_percent: u64,
    /// `maxMergePoolPercent` (default 75): merges running on the ClickHouse server, in percent of its background
    /// merge pool — a pool that is nearly full means new parts wait for their merges (the merge backlog).
    pub max_merge_pool_percent: u64,
    /// `maxServerMemoryPercent` (default 80): memory the ClickHouse server tracks (`MemoryTracking`), in percent of
    /// its `max_server_memory_usage` (servers with `system.server_settings`, 22.x and later).
    pub max_server_memory_percent: u64,
    /// `maxServerMemoryBytes` (default 0: none): an absolute limit on the same figure, for servers that do not
    /// publish `max_server_memory_usage` (18.x) or to hold earlier.
    pub max_server_memory_bytes: u64,
    /// `throttleCheckMs` (default 1,000): how often a held migration looks again.
    pub check_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_replication_lag_ms: 5_000,
            max_replication_lag_bytes: 256 * 1024 * 1024,
            max_slot_retained_bytes: 10 * 1024 * 1024 * 1024,
            max_wal_bytes_per_second: 0,
            max_lock_waiters: 5,
            yield_on_blocked_sessions: 1,
            foreground_active_percent: 20,
            yield_percent: 50,
            yield_batch_ms: 4,
            max_parts_percent: 60,
            max_merge_pool_percent: 75,
            max_server_memory_percent: 80,
            max_server_memory_bytes: 0,
            check_ms: 1_000,
        }
    }
}

impl Limits {
    /// Reads the thresholds from `args`, naming the key and range of a bad one.
    pub fn parse(raw: &Map<String, Value>) -> Result<Limits, ArgsError> {
        let d = Limits::default();
        let big = (0, u64::MAX >> 1);
        Ok(Limits {
            max_replication_lag_ms: read_u64(raw, "maxReplicationLagMs", big)?
                .unwrap_or(d.max_replication_lag_ms),
            max_replication_lag_bytes: read_u64(raw, "maxReplicationLagBytes", big)?
                .unwrap_or(d.max_replication_lag_bytes),
            max_slot_retained_bytes: read_u64(raw, "maxSlotRetainedBytes", big)?
                .unwrap_or(d.max_slot_retained_bytes),
            max_wal_bytes_per_second: read_u64(raw, "maxWalBytesPerSecond", big)?
                .unwrap_or(d.max_wal_bytes_per_second),
            max_lock_waiters: read_u64(raw, "maxLockWaiters", (0, 100_000))?
                .unwrap_or(d.max_lock_waiters),
            yield_on_blocked_sessions: read_u64(raw, "yieldOnBlockedSessions", (0, 10_000))?
                .unwrap_or(d.yield_on_blocked_sessions),
            foreground_active_percent: read_u64(raw, "foregroundActivePercent", (0, 100_000))?
                .unwrap_or(d.foreground_active_percent),
            yield_percent: read_u64(raw, "yieldPercent", (0, 10_000))?.unwrap_or(d.yield_percent),
            yield_batch_ms: read_u64(raw, "yieldBatchMs", (0, 600_000))?
                .unwrap_or(d.yield_batch_ms),
            max_parts_percent: read_u64(raw, "maxPartsPercent", (0, 100))?
                .unwrap_or(d.max_parts_percent),
            max_merge_pool_percent: read_u64(raw, "maxMergePoolPercent", (0, 100))?
                .unwrap_or(d.max_merge_pool_percent),
            max_server_memory_percent: read_u64(raw, "maxServerMemoryPercent", (0, 100))?
                .unwrap_or(d.max_server_memory_percent),
            max_server_memory_bytes: read_u64(raw, "maxServerMemoryBytes", big)?
                .unwrap_or(d.max_server_memory_bytes),
            check_ms: read_u64(raw, "throttleCheckMs", (10, 600_000))?.unwrap_or(d.check_ms),
        })
    }
}

/// Bytes in words (`12.0 MiB`).
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn thresholds_default_and_a_bad_one_names_its_key_and_range() {
        let limits =
            Limits::parse(json!({"maxReplicationLagMs": 100}).as_object().unwrap()).unwrap();
        assert_eq!(limits.max_replication_lag_ms, 100);
        assert_eq!(limits.max_lock_waiters, 5);
        assert_eq!(limits.yield_on_blocked_sessions, 1);
        let err = Limits::parse(json!({"maxPartsPercent": 150}).as_object().unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "args.maxPartsPercent must be an integer from 0 to 100, got 150"
        );
        let err = Limits::parse(json!({"maxWalBytesPerSecond": "1 MB"}).as_object().unwrap())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "args.maxWalBytesPerSecond must be an integer from 0 to 9223372036854775807, got \"1 MB\""
        );
        let err =
            Limits::parse(json!({"maxServerMemoryPercent": -1}).as_object().unwrap()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("args.maxServerMemoryPercent must be an integer from 0 to 100")
        );
        let err =
            Limits::parse(json!({"maxMergePoolPercent": 101}).as_object().unwrap()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("args.maxMergePoolPercent must be an integer from 0 to 100")
        );
        let err = Limits::parse(
            json!({"yieldOnBlockedSessions": 10_001})
                .as_object()
                .unwrap(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "args.yieldOnBlockedSessions must be an integer from 0 to 10000, got 10001"
        );
        let err = Limits::parse(json!({"yieldBatchMs": 1.5}).as_object().unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "args.yieldBatchMs must be an integer from 0 to 600000, got 1.5"
        );
    }

    #[test]
    fn bytes_read_in_binary_units() {
        assert_eq!(bytes(512), "512.0 B");
        assert_eq!(bytes(12 * 1024 * 1024 + 1), "12.0 MiB");
    }
}
