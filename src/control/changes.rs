//! The change signal: wakes waiting workers and live pages when a row changes. Every store wakes this process's own
//! waiters after its commits; Postgres also forwards other processes' `NOTIFY`s, and SQLite, which has no
//! `NOTIFY`, watches the file's `PRAGMA data_version`, which moves whenever another connection commits.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, PgPool, SqlitePool};
use tokio::sync::{Notify, OnceCell};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::ControlError;
use super::dialect::CHANNEL;
use crate::store::StoreError;

/// How often a SQLite watcher reads `PRAGMA data_version`: another process's retry or resume wakes this process's
/// waiters within about this long (instead of at the next poll, 5 s by default). One tiny query on a connection of
/// its own, four times a second.
const SQLITE_WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// Where change wake-ups come from.
pub(super) struct Changes {
    notify: Arc<Notify>,
    /// Other processes' changes: what to watch, and the watching task once started (stopped on drop).
    watch: Option<(Watch, OnceCell<DropGuard>)>,
}

/// What tells this process about other processes' changes.
enum Watch {
    /// `LISTEN` on the pool's database.
    Postgres(PgPool),
    /// `PRAGMA data_version` of the pool's file.
    Sqlite(SqlitePool),
}

impl Changes {
    /// Wake-ups from this process's own writes only.
    pub(super) fn local() -> Self {
        Self {
            notify: Arc::new(Notify::new()),
            watch: None,
        }
    }

    /// Wake-ups from every process writing the Postgres database behind `pool`.
    pub(super) fn postgres(pool: PgPool) -> Self {
        Self {
            watch: Some((Watch::Postgres(pool), OnceCell::new())),
            ..Self::local()
        }
    }

    /// Wake-ups from every process writing the SQLite file behind `pool`.
    pub(super) fn sqlite(pool: SqlitePool) -> Self {
        Self {
            watch: Some((Watch::Sqlite(pool), OnceCell::new())),
            ..Self::local()
        }
    }

    /// Wakes this process's waiters.
    pub(super) fn wake(&self) {
        self.notify.notify_waiters();
    }

    /// The signal, starting the watcher on first use.
    pub(super) async fn signal(&self) -> Result<Arc<Notify>, ControlError> {
        if let Some((watch, started)) = &self.watch {
            started
                .get_or_try_init(|| async {
                    let stop = CancellationToken::new();
                    match watch {
                        Watch::Postgres(pool) => {
                            let sql_err = |err| {
                                ControlError::Store(StoreError::sql("listen for changes")(err))
                            };
                            let mut listener =
                                PgListener::connect_with(pool).await.map_err(sql_err)?;
                            listener.listen(CHANNEL).await.map_err(sql_err)?;
                            tokio::spawn(forward_notifications(
                                listener,
                                self.notify.clone(),
                                stop.clone(),
                            ));
                        }
                        Watch::Sqlite(pool) => {
                            tokio::spawn(watch_data_version(
                                (*pool.connect_options()).clone(),
                                self.notify.clone(),
                                stop.clone(),
                            ));
                        }
                    }
                    Ok::<_, ControlError>(stop.drop_guard())
                })
                .await?;
        }
        Ok(self.notify.clone())
    }
}

/// Wakes `notify` whenever the SQLite file's `PRAGMA data_version` moves, until `stop`. The pragma must be read on
/// one and the same connection (it counts commits by *other* connections), so the watcher holds its own, outside
/// the pool; a lost connection is reopened at the next tick (the pollers cover the gap).
async fn watch_data_version(
    options: SqliteConnectOptions,
    notify: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut connection = None;
    let mut last: Option<i64> = None;
    let mut tick = tokio::time::interval(SQLITE_WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if connection.is_none() {
            match options.connect().await {
                Ok(opened) => connection = Some(opened),
                Err(err) => {
                    tracing::debug!(error = %err, "change watcher cannot open the SQLite file; retrying");
                    continue;
                }
            }
            last = None;
        }
        let Some(open) = connection.as_mut() else {
            continue;
        };
        match sqlx::query_scalar::<_, i64>("PRAGMA data_version")
            .fetch_one(open)
            .await
        {
            Ok(version) => {
                if last.is_some_and(|seen| seen != version) {
                    notify.notify_waiters();
                }
                last = Some(version);
            }
            Err(err) => {
                tracing::debug!(error = %err, "change watcher lost its SQLite connection; reopening");
                connection = None;
            }
        }
    }
}

/// Wakes `notify` on every notification until `stop`; reconnects with capped backoff (the pollers cover the gap).
async fn forward_notifications(
    mut listener: PgListener,
    notify: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            received = listener.recv() => match received {
                Ok(_) => {
                    backoff = Duration::from_millis(100);
                    notify.notify_waiters();
                }
                Err(err) => {
                    tracing::debug!(error = %err, "change listener lost its connection; reconnecting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    notify.notify_waiters();
                }
            }
        }
    }
}
