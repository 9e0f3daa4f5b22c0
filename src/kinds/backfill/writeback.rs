//! Keeping a Postgres backfill's dirty table pages out of the kernel's page cache (`flushAfterKb`).
//!
//! A backfill rewrites every page of its table. With `shared_buffers` smaller than the table, Postgres pushes the
//! dirtied pages out to the kernel as it goes, and by default (`backend_flush_after = 0`) the kernel keeps them
//! until its own writeback starts — on a machine with much memory, gigabytes later (2.1 GB of dirty data in the
//! foreground benchmark at 3,000,000 rows). Then it writes them in bulk, and every `fsync` queued behind that burst
//! stalls: each foreground commit's WAL flush, and the checkpoint's. That stall, not the WAL volume, was most of
//! the foreground's p99 during a backfill: with the kernel asked to write every 256 kB as pages are pushed out,
//! dirty data stayed under 190 MB and the load's p99 fell from 105 to 8.5 ms at 400 tx/s and from 207 to
//! 11.5 ms at 800 tx/s (see the README's foreground benchmark).
//!
//! It has a price: the backfill's own process then waits on the disk queue — under load it kept 15–33 % of its idle
//! speed with this default against 38–45 % before (both with `yieldPercent` 100, the default then; 50 since brought
//! it to 33–43 %) — and the idle backfill took 18 % longer
//! (49.5–50.1 s against 41.0–44.2 s over two alternating runs). So by default it is asked for only while the
//! engine yields to the foreground ([`crate::migration::Batch::yielding`]): on an idle database nobody's commit
//! waits behind the kernel's writeback, and the kernel's own writeback (within `vm.dirty_expire_centisecs`) drains
//! what piled up before a load arrived.
//!
//! `backend_flush_after` is a setting any role may set for its own session, so the batches set it on their own
//! transaction only (`SET LOCAL`, undone at commit), and by default only where the server leaves it off: an
//! operator's own value stands.

use super::LocalSetting;
use crate::args::FlushAfter;

/// The batch transaction's `backend_flush_after` as `choice` asks, or `None` to leave the session's; `yielding`:
/// whether the engine yields to the foreground for this batch.
pub(super) fn setting(choice: FlushAfter, yielding: bool) -> Option<LocalSetting> {
    let (kb, keep_server_value) = match choice {
        FlushAfter::Server => return None,
        FlushAfter::Auto if !yielding => return None,
        FlushAfter::Auto => (FlushAfter::DEFAULT_KB, true),
        FlushAfter::Kb(kb) => (kb, false),
    };
    Some(LocalSetting {
        name: "backend_flush_after",
        value: format!("{kb}kB"),
        keep_server_value,
    })
}
