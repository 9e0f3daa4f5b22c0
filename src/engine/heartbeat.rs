//! Keeps a lease alive and tells the batch loop the moment it is lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::{CancellationToken, DropGuard};

use crate::control::{ControlStore, Lease};

/// A running heartbeat: `lost` fires when the lease is gone; dropping the guard stops the heartbeat.
pub struct Heartbeat {
    /// Cancelled when the lease was lost (taken over, paused, cancelled) or could not be renewed in time.
    pub lost: CancellationToken,
    _stop: DropGuard,
}

/// Starts renewing `lease` every `interval`; the lease counts as lost if no renewal succeeded within `ttl`.
pub fn start(
    control: Arc<dyn ControlStore>,
    lease: Lease,
    ttl: Duration,
    interval: Duration,
) -> Heartbeat {
    let lost = CancellationToken::new();
    let stop = CancellationToken::new();
    tokio::spawn(renew_until_lost(
        control,
        lease,
        ttl,
        interval,
        lost.clone(),
        stop.clone(),
    ));
    Heartbeat {
        lost,
        _stop: stop.drop_guard(),
    }
}

async fn renew_until_lost(
    control: Arc<dyn ControlStore>,
    lease: Lease,
    ttl: Duration,
    interval: Duration,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let mut last_renewed = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match control.renew_lease(&lease, ttl).await {
            Ok(true) => last_renewed = Instant::now(),
            Ok(false) => {
                tracing::warn!(migration = %lease.name, "lease lost (taken over, paused or cancelled); stopping");
                lost.cancel();
                return;
            }
            Err(err) if last_renewed.elapsed() < ttl => {
                tracing::warn!(migration = %lease.name, error = %err, "could not renew the lease; will retry");
            }
            Err(err) => {
                tracing::error!(migration = %lease.name, error = %err, "lease expired without renewal; stopping");
                lost.cancel();
                return;
            }
        }
    }
}
