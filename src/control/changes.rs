//! The change signal: wakes waiting workers and live pages when a row changes. Every store wakes this process's own
//! waiters after its commits; Postgres also forwards other processes' `NOTIFY`s.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, OnceCell};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::ControlError;
use super::dialect::CHANNEL;
use crate::store::StoreError;

/// Where change wake-ups come from.
pub(super) struct Changes {
    notify: Arc<Notify>,
    /// Postgres: the pool to `LISTEN` on, and the listener task once started (stopped on drop).
    listen: Option<(PgPool, OnceCell<DropGuard>)>,
}

impl Changes {
    /// Wake-ups from this process's own writes only.
    pub(super) fn local() -> Self {
        Self {
            notify: Arc::new(Notify::new()),
            listen: None,
        }
    }

    /// Wake-ups from every process writing the Postgres database behind `pool`.
    pub(super) fn postgres(pool: PgPool) -> Self {
        Self {
            listen: Some((pool, OnceCell::new())),
            ..Self::local()
        }
    }

    /// Wakes this process's waiters.
    pub(super) fn wake(&self) {
        self.notify.notify_waiters();
    }

    /// The signal, starting the listener on first use.
    pub(super) async fn signal(&self) -> Result<Arc<Notify>, ControlError> {
        if let Some((pool, listener)) = &self.listen {
            listener
                .get_or_try_init(|| async {
                    let sql_err =
                        |err| ControlError::Store(StoreError::sql("listen for changes")(err));
                    let mut listener = PgListener::connect_with(pool).await.map_err(sql_err)?;
                    listener.listen(CHANNEL).await.map_err(sql_err)?;
                    let stop = CancellationToken::new();
                    tokio::spawn(forward_notifications(
                        listener,
                        self.notify.clone(),
                        stop.clone(),
                    ));
                    Ok::<_, ControlError>(stop.drop_guard())
                })
                .await?;
        }
        Ok(self.notify.clone())
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
