//! Postgres health: replication lag of every streaming standby (time and bytes), WAL kept for replication slots,
//! the rate WAL is generated at, sessions waiting for locks, an anti-wraparound autovacuum of the migration's table,
//! foreground activity, and foreground sessions blocked by our batch — the last sampled *while the batch runs*
//! ([`HealthCheck::sample`]), since between batches our session holds no lock. How much to yield is in
//! [`super::pressure`]; the advice on checkpoints forced by the WAL's volume in [`super::checkpoints`].
//!
//! A regular autovacuum of the table does not hold: it is what cleans up the dead rows our batches leave, its own
//! cost-based delay already paces it, and holding for it would make a backfill wait for the cleanup of itself. Nor
//! does it count as foreground activity, and neither does a session idle in a transaction: only client sessions
//! running a statement are the foreground's load (an autovacuum of the table our backfill dirties, counted as busy,
//! would make the backfill yield on an idle database).
//!
//! What an unreadable signal does: replication and slot figures need `pg_monitor` on managed services; without it
//! Postgres shows NULLs, which read as "no lag" — letting go, because a role without that grant would otherwise
//! never run. Any query error lets go too (logged by the engine): health must not turn a reachable database into a
//! stuck migration; the batch itself will fail loudly if the database is really down. The same for the samples
//! taken during a batch: a role without `pg_read_all_stats` sees no state or wait of other roles' sessions, which
//! reads as "nobody busy, nobody blocked" — letting go, and the batch is still bounded by `targetBatchMs`; a sample
//! that fails is skipped (logged once) rather than failing a batch that is doing fine.

use std::sync::{Mutex, OnceLock};

use async_trait::async_trait;
use sqlx::{PgPool, Row};

use super::checkpoints::{CheckpointReading, CheckpointWatch};
use super::pressure::{Pressure, Sample};
use super::rate::Rate;
use super::{Advice, Health, HealthCheck, Limits, bytes};

/// The application name bgmigrate's Postgres sessions carry, so foreground activity can leave them out.
pub const APPLICATION_NAME: &str = "bgmigrate";

/// Every Postgres signal for one database (and optionally the migration's table).
pub struct PgHealth {
    pool: PgPool,
    table: Option<String>,
    /// The foreground as measured before and during our batches: whether and how much to yield.
    pressure: Mutex<Pressure>,
    /// The WAL position's growth per second.
    wal: Mutex<Rate>,
    /// Checkpoints the WAL's volume forces: advice for `max_wal_size`.
    checkpoints: Mutex<CheckpointWatch>,
    /// The query that reads them on this server's version ([`CHECKPOINTS_BEFORE_17`] or [`CHECKPOINTS_FROM_17`]).
    checkpoint_sql: OnceLock<&'static str>,
}

/// The checkpoint reading's query with `$counter`, the requested-checkpoint counter's subquery.
macro_rules! checkpoint_reading {
    ($counter:literal) => {
        concat!(
            "SELECT ",
            $counter,
            " AS requested, \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS wal_position, \
                    (SELECT setting::bigint * CASE unit WHEN 'MB' THEN 1048576 WHEN 'kB' THEN 1024 \
                                                        WHEN '8kB' THEN 8192 ELSE 1 END \
                     FROM pg_settings WHERE name = 'max_wal_size') AS max_wal_size, \
                    (SELECT setting::bigint FROM pg_settings WHERE name = 'checkpoint_timeout') AS timeout_s, \
                    current_setting('checkpoint_completion_target')::float8 AS completion_target"
        )
    };
}
/// Before Postgres 17 the counter is in `pg_stat_bgwriter`.
const CHECKPOINTS_BEFORE_17: &str =
    checkpoint_reading!("(SELECT checkpoints_req FROM pg_stat_bgwriter)");
/// From Postgres 17 on, in `pg_stat_checkpointer`.
const CHECKPOINTS_FROM_17: &str =
    checkpoint_reading!("(SELECT num_requested FROM pg_stat_checkpointer)");

impl PgHealth {
    /// Checks on the database behind `pool`; `table` (schema-qualified or not) for the autovacuum signal.
    pub fn new(pool: PgPool, table: Option<String>) -> Self {
        Self {
            pool,
            table,
            pressure: Mutex::new(Pressure::default()),
            wal: Mutex::new(Rate::default()),
            checkpoints: Mutex::new(CheckpointWatch::default()),
            checkpoint_sql: OnceLock::new(),
        }
    }

    /// The requested-checkpoint counter, the WAL position and the settings that decide when a checkpoint is
    /// requested, in one query; any role may read them. The server's version, which names the counter's view, is
    /// read once.
    async fn checkpoint_reading(&self) -> Result<CheckpointReading, sqlx::Error> {
        let sql = match self.checkpoint_sql.get() {
            Some(sql) => *sql,
            None => {
                let version: i32 =
                    sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
                        .fetch_one(&self.pool)
                        .await?;
                *self.checkpoint_sql.get_or_init(|| {
                    if version >= 170_000 {
                        CHECKPOINTS_FROM_17
                    } else {
                        CHECKPOINTS_BEFORE_17
                    }
                })
            }
        };
        let row = sqlx::query(sql).fetch_one(&self.pool).await?;
        Ok(CheckpointReading {
            requested: row.try_get::<i64, _>("requested")?.max(0) as u64,
            wal_position: row.try_get::<i64, _>("wal_position")?.max(0) as u64,
            max_wal_size: row.try_get::<i64, _>("max_wal_size")?.max(0) as u64,
            timeout: std::time::Duration::from_secs(
                row.try_get::<i64, _>("timeout_s")?.max(1) as u64
            ),
            completion_target: row.try_get("completion_target")?,
        })
    }

    async fn replication(&self, limits: &Limits) -> Result<Option<Health>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT coalesce(application_name, client_addr::text, pid::text) AS standby, \
                    coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::bigint AS lag_bytes, \
                    coalesce(extract(epoch FROM replay_lag) * 1000, 0)::bigint AS lag_ms \
             FROM pg_stat_replication",
        )
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            let standby: String = row.try_get("standby")?;
            let lag_bytes = row.try_get::<i64, _>("lag_bytes")?.max(0) as u64;
            let lag_ms = row.try_get::<i64, _>("lag_ms")?.max(0) as u64;
            if limits.max_replication_lag_bytes > 0 && lag_bytes > limits.max_replication_lag_bytes
            {
                return Ok(Some(hold(
                    "replication_lag",
                    format!(
                        "replication lag {} > {} on standby {standby} (maxReplicationLagBytes)",
                        bytes(lag_bytes),
                        bytes(limits.max_replication_lag_bytes)
                    ),
                )));
            }
            if limits.max_replication_lag_ms > 0 && lag_ms > limits.max_replication_lag_ms {
                return Ok(Some(hold(
                    "replication_lag",
                    format!(
                        "replication lag {:.1} s > {:.1} s on standby {standby} (maxReplicationLagMs)",
                        lag_ms as f64 / 1000.0,
                        limits.max_replication_lag_ms as f64 / 1000.0
                    ),
                )));
            }
        }
        if limits.max_slot_retained_bytes > 0 {
            let slot = sqlx::query(
                "SELECT slot_name::text, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS kept \
                 FROM pg_replication_slots WHERE restart_lsn IS NOT NULL ORDER BY 2 DESC LIMIT 1",
            )
            .fetch_optional(&self.pool)
            .await?;
            if let Some(slot) = slot {
                let name: String = slot.try_get(0)?;
                let kept = slot.try_get::<i64, _>(1)?.max(0) as u64;
                if kept > limits.max_slot_retained_bytes {
                    return Ok(Some(hold(
                        "wal_retention",
                        format!(
                            "replication slot {name} keeps {} of WAL > {} (maxSlotRetainedBytes)",
                            bytes(kept),
                            bytes(limits.max_slot_retained_bytes)
                        ),
                    )));
                }
            }
        }
        Ok(None)
    }

    /// WAL generated per second over the last window, by every session of the server (ours included: when we
    /// hold, the rate falls and we go on, so the server's WAL stays near the threshold on average).
    async fn wal_rate(&self, limits: &Limits) -> Result<Option<Health>, sqlx::Error> {
        if limits.max_wal_bytes_per_second == 0 {
            return Ok(None);
        }
        let position: i64 =
            sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
                .fetch_one(&self.pool)
                .await?;
        let rate = self
            .wal
            .lock()
            .expect("poisoned")
            .sample(position.max(0) as u64, tokio::time::Instant::now());
        Ok(rate
            .filter(|rate| *rate > limits.max_wal_bytes_per_second as f64)
            .map(|rate| {
                hold(
                    "wal_rate",
                    format!(
                        "WAL generated at {}/s > {}/s (maxWalBytesPerSecond)",
                        bytes(rate as u64),
                        bytes(limits.max_wal_bytes_per_second)
                    ),
                )
            }))
    }

    async fn sessions(&self, limits: &Limits) -> Result<Option<Health>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT count(*) FILTER (WHERE wait_event_type = 'Lock') AS waiting, \
                    count(*) FILTER (WHERE state = 'active' AND backend_type = 'client backend' \
                                     AND application_name NOT LIKE $1 || '%') AS active, \
                    count(*) FILTER (WHERE backend_type = 'autovacuum worker' AND query LIKE '%to prevent wraparound%' \
                                     AND $2::text IS NOT NULL AND query LIKE '%' || $2 || '%') AS wraparound \
             FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
               AND backend_type IN ('client backend', 'autovacuum worker')",
        )
        .bind(APPLICATION_NAME)
        .bind(self.table.as_deref().map(|t| t.rsplit('.').next().unwrap_or(t).to_owned()))
        .fetch_one(&self.pool)
        .await?;
        let waiting = row.try_get::<i64, _>("waiting")?.max(0) as u64;
        let active = row.try_get::<i64, _>("active")?.max(0) as u64;
        let wraparound = row.try_get::<i64, _>("wraparound")?;
        if wraparound > 0 {
            return Ok(Some(hold(
                "autovacuum",
                format!(
                    "an autovacuum to prevent wraparound runs on {}",
                    self.table.as_deref().unwrap_or("the table")
                ),
            )));
        }
        if limits.max_lock_waiters > 0 && waiting > limits.max_lock_waiters {
            return Ok(Some(hold(
                "lock_waits",
                format!(
                    "{waiting} sessions wait for locks > {} (maxLockWaiters)",
                    limits.max_lock_waiters
                ),
            )));
        }
        Ok(self.pressure.lock().expect("poisoned").before_batch(
            active,
            limits,
            tokio::time::Instant::now(),
        ))
    }

    /// Foreground sessions running a statement, and those of them waiting for a lock that a bgmigrate session
    /// holds (`pg_blocking_pids`; only waiting sessions are looked up, so an unblocked database pays one scan of
    /// `pg_stat_activity`). Any bgmigrate session counts — two migrations on one table block the foreground alike.
    async fn foreground(&self) -> Result<Sample, sqlx::Error> {
        let row = sqlx::query(
            "SELECT count(*) AS busy, \
                    count(*) FILTER (WHERE a.wait_event_type = 'Lock' AND EXISTS ( \
                        SELECT 1 FROM pg_stat_activity b \
                        WHERE b.pid = ANY (pg_blocking_pids(a.pid)) AND b.application_name LIKE $1 || '%')) AS blocked \
             FROM pg_stat_activity a \
             WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.state = 'active' \
               AND a.backend_type = 'client backend' AND a.application_name NOT LIKE $1 || '%'",
        )
        .bind(APPLICATION_NAME)
        .fetch_one(&self.pool)
        .await?;
        Ok(Sample {
            busy: row.try_get::<i64, _>("busy")?.max(0) as u64,
            blocked: row.try_get::<i64, _>("blocked")?.max(0) as u64,
        })
    }
}

fn hold(signal: &'static str, reason: String) -> Health {
    Health::Hold { signal, reason }
}

#[async_trait]
impl HealthCheck for PgHealth {
    async fn check(&self, limits: &Limits) -> Result<Health, String> {
        let replication = self
            .replication(limits)
            .await
            .map_err(|err| format!("replication signals unreadable: {err}"))?;
        if let Some(health) = replication {
            return Ok(health);
        }
        let wal = self
            .wal_rate(limits)
            .await
            .map_err(|err| format!("WAL position unreadable: {err}"))?;
        if let Some(health) = wal {
            return Ok(health);
        }
        let sessions = self
            .sessions(limits)
            .await
            .map_err(|err| format!("session signals unreadable: {err}"))?;
        Ok(sessions.unwrap_or(Health::Fine))
    }

    async fn sample(&self, limits: &Limits) -> Result<(), String> {
        if limits.yield_on_blocked_sessions == 0 && limits.foreground_active_percent == 0 {
            return Ok(());
        }
        let sample = self
            .foreground()
            .await
            .map_err(|err| format!("foreground sessions unreadable during a batch: {err}"))?;
        self.pressure
            .lock()
            .expect("poisoned")
            .during_batch(sample, tokio::time::Instant::now());
        Ok(())
    }

    /// Checkpoints forced by the WAL's volume ([`super::checkpoints`]), read every few seconds.
    async fn advice(&self) -> Result<Option<Advice>, String> {
        let due = self
            .checkpoints
            .lock()
            .expect("poisoned")
            .read_due(tokio::time::Instant::now());
        if !due {
            return Ok(None);
        }
        let reading = self
            .checkpoint_reading()
            .await
            .map_err(|err| format!("checkpoint counters unreadable: {err}"))?;
        Ok(self
            .checkpoints
            .lock()
            .expect("poisoned")
            .observe(reading, tokio::time::Instant::now()))
    }
}
