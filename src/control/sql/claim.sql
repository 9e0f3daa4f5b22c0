-- Takes the lease on the candidate: a new owner and a new epoch (the fencing token that locks out the old owner).
-- $1 id, $2 worker id, $3 lease seconds.
UPDATE background_migrations
SET status = 'running',
    worker_id = $2,
    lease_epoch = lease_epoch + 1,
    locked_at = {now},
    lease_expires_at = {expires},
    started_at = coalesce(started_at, {now}),
    attempts = attempts + 1,
    updated_at = {now}
WHERE id = $1
RETURNING lease_epoch
