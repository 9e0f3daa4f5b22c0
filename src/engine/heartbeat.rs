//! Keeps a lease alive and tells the batch loop the moment it is lost.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio_util::sync::{CancellationToken, DropGuard};

use crate::control::{Lease, LeaseStore};

/// A running heartbeat: `lost` fires when the lease is gone; dropping the guard stops the heartbeat.
pub struct Heartbeat {
    /// Cancelled when the lease was lost (taken over, paused, cancelled) or could not be renewed in time.
    pub lost: CancellationToken,
    _stop: DropGuard,
}

/// Starts renewing `lease` every `interval`; the lease counts as lost if no renewal succeeded within `ttl`.
pub fn start(
    control: Arc<dyn LeaseStore>,
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
    control: Arc<dyn LeaseStore>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fake_leases::{FakeLeases, Renewal};

    const TTL: Duration = Duration::from_secs(30);
    const EVERY: Duration = Duration::from_secs(10);

    /// Lets the paused clock run `by` while the heartbeat task takes its turns.
    async fn run_for(by: Duration) {
        tokio::time::sleep(by).await;
    }

    /// A held lease is renewed once per interval and never reported lost.
    #[tokio::test(start_paused = true)]
    async fn a_held_lease_is_renewed_every_interval() {
        let store = FakeLeases::new(Renewal::Holds);
        let beat = start(store.clone(), FakeLeases::lease(), TTL, EVERY);
        run_for(Duration::from_secs(35)).await;
        assert_eq!(store.seen.lock().unwrap().renewals, 3);
        assert!(!beat.lost.is_cancelled());
    }

    /// A renewal that finds the lease gone (taken over, paused, cancelled) stops at once.
    #[tokio::test(start_paused = true)]
    async fn a_lease_taken_over_is_reported_lost_at_the_next_renewal() {
        let store = FakeLeases::new(Renewal::LostAfter(2));
        let beat = start(store.clone(), FakeLeases::lease(), TTL, EVERY);
        run_for(Duration::from_secs(25)).await;
        assert!(!beat.lost.is_cancelled(), "two renewals held");
        run_for(Duration::from_secs(6)).await;
        assert!(beat.lost.is_cancelled(), "the third found it gone");
    }

    /// An unreachable store is retried until the lease would have expired: only then is it reported lost, so a
    /// worker never writes on after its lease may belong to someone else.
    #[tokio::test(start_paused = true)]
    async fn an_unreachable_store_loses_the_lease_only_when_the_ttl_has_passed() {
        let store = FakeLeases::new(Renewal::Unreachable);
        let beat = start(store, FakeLeases::lease(), TTL, EVERY);
        run_for(Duration::from_secs(25)).await;
        assert!(
            !beat.lost.is_cancelled(),
            "failures at 10 s and 20 s are within the TTL"
        );
        run_for(Duration::from_secs(10)).await;
        assert!(beat.lost.is_cancelled(), "the failure at 30 s is not");
    }

    /// Dropping the heartbeat stops the renewals.
    #[tokio::test(start_paused = true)]
    async fn dropping_the_heartbeat_stops_renewing() {
        let store = FakeLeases::new(Renewal::Holds);
        drop(start(store.clone(), FakeLeases::lease(), TTL, EVERY));
        run_for(Duration::from_secs(60)).await;
        assert_eq!(store.seen.lock().unwrap().renewals, 0);
    }
}
