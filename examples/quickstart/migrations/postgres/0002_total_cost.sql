-- Fast migration of the release that needs the backfill: add the column (instant), fill it in the background.
ALTER TABLE observations ADD COLUMN total_cost numeric;
