-- v3 adds a total cost, filled by the background backfill 20241024_1216_add_observations_cost_backfill.
ALTER TABLE observations ADD COLUMN IF NOT EXISTS total_cost numeric(65, 30);
