//! The heap-order walk (`order = "physical"`, Postgres), in two phases per key range.
//!
//! 1. **Listing**: batches sweep the heap in windows of pages (TID range scans) and list the keys of the rows there,
//!    each with its page, in a table beside the target: reads in page order and appends, in small transactions
//!    paced like any batch. A row the application moves during the sweep may be seen twice or not at all, so the
//!    last listing batch closes the list: it collects the range's rows written since the sweep began (`xmin` no
//!    older than the oldest transaction running when it began; every other row stayed on its page throughout and
//!    was seen once), lists those whose keys are missing and drops every second entry of theirs. Each key present
//!    then is listed exactly once. The list needs no index: the sweep appended it in the table's page order.
//! 2. **Walking**: batches update the rows listed on a run of the list's own pages (a TID range scan of the list),
//!    found on the table pages they were listed on (a TID range scan of those pages, joined on the key; a key
//!    range's list holds only its share of each page's rows, so its rows are looked up through the key's index),
//!    in [`WALK_PARTS`] turns: a batch updates part 0 of the entries on its new window of
//!    list pages, part 1 of the window before, and so on (an entry's part is its line pointer modulo the parts;
//!    with several ranges walked at once, part 1 of the window two batches before, part 2 of the one four before:
//!    [`CONCURRENT_TURN_LAG`]).
//!    A table page's rows are listed side by side, so each part holds a few of every table page's rows, and each
//!    table page is changed by a few consecutive batches. The first turn moves its rows to other pages (the page
//!    is full), which frees room on the page once that batch has committed; the later turns' new row versions fit
//!    in that room, so they are heap-only (HOT) updates: no new index entries, less WAL, and a table that grows by
//!    a third rather than doubling. A row the application moved since it was listed (our turns move a row only
//!    when they update it) is not on those pages: it is found through the key's index, and updated once too. A
//!    walk begun by an earlier version goes on in one part, by key; a list closed by an earlier still is walked as
//!    that version did: by table page, through the index it built on the list.
//!
//! The list is an ordinary (logged) table, so it survives a server crash and a failover with the checkpoint that
//! points into it. Its name is written in the checkpoint; the last batch drops it in its own transaction.
//!
//! With `parallelism`, a walk is split by pages ([`page_cuts`]): the range cut off walks the same list from the
//! cut (`shared`), and the range cut ends there. Neither drops the list then; the migration's end does
//! ([`drop_lists`]). A sweep is not split: its close reads the whole key range's moved rows.

use serde_json::Value;

use super::{Backfill, BackfillCheckpoint, BackfillSql, LocalSetting, texts};
use crate::kinds::checkpoint::{Checkpoint, range_end, unreadable};
use crate::migration::{Batch, BatchOutcome, MigrationError};
use crate::store::{SqlParam, SqlTx, StoreError};

/// The prefix of every key list's name: operators find stray ones (of a cancelled backfill, or one started over
/// with `retry --from-start`) with `\dt *.bgmigrate_keys_*`.
const LIST_PREFIX: &str = "bgmigrate_keys_";

/// A new key list's name beside `table`: in its schema, if it names one, then the prefix and 12 random hex digits.
fn new_list_name(table: &str) -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    let name = format!("{LIST_PREFIX}{}", hex::encode(bytes));
    match table.rsplit_once('.') {
        Some((schema, _)) => format!("{schema}.{name}"),
        None => name,
    }
}

/// The list named in a checkpoint, checked to be one of ours: the checkpoint is operator-editable, and the last
/// batch drops the table it names.
fn checked_list_name<'a>(name: &'a str, state: &Value) -> Result<&'a str, MigrationError> {
    let table = name.rsplit_once('.').map_or(name, |(_, table)| table);
    let suffix = table.strip_prefix(LIST_PREFIX).unwrap_or_default();
    if suffix.len() == 12 && suffix.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(name)
    } else {
        Err(unreadable(
            state,
            BackfillCheckpoint::SHAPE,
            format_args!(
                "its list {name:?} is not a name bgmigrate gives ({LIST_PREFIX} and 12 hex digits)"
            ),
        ))
    }
}

/// A sweep batch lists about this many times `batchSize` rows: listing a key (a sequential read and an append) costs
/// a fraction of updating its row — on the foreground benchmark's table, idle, 0.75 µs against 10 µs at 1,000,000
/// rows and 1.0 µs against 19 µs at 3,000,000. Full sweep windows teach the batch sizer, so this ratio is what
/// makes the size they settle on about right for the walk's first batch (with 12, the first walk batch at
/// 3,000,000 rows took 2.1 s against its 500 ms target; a slow batch shrinks the next one at once).
const SWEEP_ROWS_PER_BATCH_ROW: u64 = 16;
/// Rows per page assumed for a table never analysed.
const UNKNOWN_ROWS_PER_PAGE: u64 = 50;
/// The turns in which a walk updates each table page's rows (see the module's doc). A full page must first move
/// some rows out, and those are the only ones whose new versions need index entries: one `UPDATE` of 1,000,000
/// rows (300-byte rows, a text key) took 8.5 s, the same in two turns 5.8 s (half of them HOT), in three 5.2 s
/// (two thirds HOT). More turns spread each page over more batches for less gain each.
const WALK_PARTS: usize = 3;
/// How many batches apart a range's turns come on the same list pages while several ranges are walked at once
/// (`parallelism` > 1); one batch apart otherwise. The room a turn frees on a page is reclaimed (the page pruned)
/// only once no transaction older than the batch that freed it still runs, and another worker's batch, begun
/// while ours ran, nearly always does during our next batch: with turns one batch apart, two workers made 37–45 %
/// of their updates heap-only against one worker's 67 %. Every batch in flight when ours commits has ended by
/// the time the batch after next begins, if batches are about as long (the sizer aims them all at one
/// duration), so two batches apart is enough for any number of workers: two workers then made 61–62 % heap-only
/// and wrote 14–31 % less WAL at 1,000,000 rows and 24 % less at 10,000,000, at the same speed (the parallel
/// benchmark). One worker gains nothing from the wait: its later turns come after the page has cooled, and an
/// in-place walk scans the pages between the segments too (at 1,000,000 rows it was slower with two).
const CONCURRENT_TURN_LAG: usize = 2;

/// The batches between a range's turns on the same list pages (see [`CONCURRENT_TURN_LAG`]).
fn turn_lag(parallelism: u64) -> usize {
    if parallelism > 1 {
        CONCURRENT_TURN_LAG
    } else {
        1
    }
}

/// One batch of a heap-order backfill: sweeping and listing keys until the range's are all listed, then walking the
/// list.
pub(super) async fn run_batch(
    backfill: &Backfill,
    statements: &BackfillSql,
    batch: &mut Batch<'_>,
) -> Result<BatchOutcome, MigrationError> {
    let checkpoint = BackfillCheckpoint::read(batch.state)?;
    if checkpoint.page.is_some() {
        walk(backfill, statements, checkpoint, batch).await
    } else {
        list_keys(backfill, statements, checkpoint, batch).await
    }
}

/// Lists the keys on the next window of pages (creating the list first); the last window also closes the list.
/// It updates no row, so it counts none; a full window teaches the batch sizer as a batch of `batchSize` rows.
async fn list_keys(
    backfill: &Backfill,
    statements: &BackfillSql,
    checkpoint: BackfillCheckpoint,
    batch: &mut Batch<'_>,
) -> Result<BatchOutcome, MigrationError> {
    let arity = statements.arity();
    let lower = checkpoint.at.keys(arity, batch.state)?;
    let end = range_end::<BackfillCheckpoint>(batch.upper, arity)?;
    let (has_lower, has_end) = (lower.is_some(), end.is_some());
    let mut bounds = texts(lower.unwrap_or_default());
    bounds.extend(texts(end.as_deref().unwrap_or_default()));
    let dialect = backfill.store.dialect();
    let list = match &checkpoint.list {
        Some(list) => checked_list_name(list, batch.state)?.to_owned(),
        None => new_list_name(&backfill.spec.table),
    };
    let quoted = dialect.quote_ident(&list);

    let mut tx = backfill.begin_batch(batch, Vec::new()).await?;
    let table = [SqlParam::Text(dialect.quote_ident(&backfill.spec.table))];
    let [table_pages, rows_per_page] = numbers(
        tx.fetch_optional_text(BackfillSql::table_shape(), &table)
            .await?,
        "the table's shape",
    )?;
    let (from, sweep_end, horizon) = match checkpoint.list {
        None => {
            tx.execute(&statements.create_key_list(&quoted), &[])
                .await?;
            let horizon = tx
                .fetch_optional_text(BackfillSql::sweep_horizon(), &[])
                .await?
                .and_then(|row| row.first()?.parse::<u64>().ok());
            (0, table_pages, horizon)
        }
        Some(_) => (
            checkpoint.sweep.unwrap_or(0),
            checkpoint.pages.unwrap_or(table_pages),
            checkpoint.horizon,
        ),
    };
    let checkpoint = BackfillCheckpoint {
        horizon,
        ..checkpoint
    };
    let rows_per_page = if rows_per_page > 0 {
        rows_per_page
    } else {
        UNKNOWN_ROWS_PER_PAGE
    };
    let window = (batch.args.batch_size * SWEEP_ROWS_PER_BATCH_ROW / rows_per_page).max(1);
    let to = from.saturating_add(window).min(sweep_end);
    let mut params = bounds.clone();
    params.extend([
        SqlParam::Text(format!("({from},0)")),
        SqlParam::Text(format!("({to},0)")),
    ]);
    let swept_rows = tx
        .execute(&statements.sweep_keys(&quoted, has_lower, has_end), &params)
        .await;
    or_list_gone(backfill, &list, &checkpoint, swept_rows).await?;
    let swept = to >= sweep_end;
    // A full window is a batch's worth of listing: its time teaches the batch size, so sweep batches aim for the
    // target duration too (before, a window of the default 10,000 batch rows took 30 ms or more, where a batch
    // that yields to the foreground aims for a few). The last one closes the list as well, which takes longer and
    // is no measure.
    if !swept && to - from == window {
        batch.count_for_sizing(batch.args.batch_size);
    }
    let next = if swept {
        let horizon = checkpoint.horizon.ok_or_else(|| {
            unreadable(
                batch.state,
                BackfillCheckpoint::SHAPE,
                "it sweeps for keys but has no horizon",
            )
        })?;
        let mut moved_params = bounds.clone();
        moved_params.push(SqlParam::Text(horizon.to_string()));
        tx.execute(&statements.collect_moved(has_lower, has_end), &moved_params)
            .await?;
        tx.execute(&statements.collect_seen(&quoted), &[]).await?;
        tx.execute(&BackfillSql::list_missed(&quoted, arity), &[])
            .await?;
        tx.execute(&BackfillSql::drop_listed_twice(&quoted, arity), &[])
            .await?;
        let [listed, pages] = numbers(
            tx.fetch_optional_text(
                &BackfillSql::list_extent(&quoted),
                &[SqlParam::Text(quoted.clone())],
            )
            .await?,
            "the list's extent",
        )?;
        tracing::info!(list = %list, keys = listed, pages, "keys listed; walking them in page order");
        BackfillCheckpoint {
            list: Some(list),
            listed: Some(listed),
            pages: Some(pages),
            sweep: None,
            horizon: None,
            page: Some(0),
            list_order: true,
            trail: vec![0; turn_lag(batch.args.parallelism) * (WALK_PARTS - 1)],
            in_place: !has_lower && !has_end,
            done: listed == 0,
            ..checkpoint
        }
    } else {
        BackfillCheckpoint {
            list: Some(list),
            pages: Some(sweep_end),
            sweep: Some(to),
            ..checkpoint
        }
    };
    if next.done {
        tx.execute(&BackfillSql::drop_key_list(&quoted), &[])
            .await?;
    }
    let outcome = BatchOutcome {
        state: next.to_state(),
        done: next.done,
        rows: 0,
        bytes: 0,
    };
    batch.commit(tx, &outcome).await?;
    Ok(outcome)
}

/// `N` non-negative integers read as text in one row (the statements here return text, see
/// `fetch_optional_text`).
fn numbers<const N: usize>(
    row: Option<Vec<String>>,
    what: &str,
) -> Result<[u64; N], MigrationError> {
    row.as_deref()
        .filter(|row| row.len() == N)
        .and_then(|row| {
            let parsed: Option<Vec<u64>> = row.iter().map(|n| n.parse().ok()).collect();
            parsed?.try_into().ok()
        })
        .ok_or_else(|| {
            MigrationError::Permanent(format!(
                "reading {what} returned {row:?}, not {N} non-negative integer(s)"
            ))
        })
}

/// Updates the rows listed for the next window: part 0 of the entries on the list's own pages holding about
/// `batchSize` keys and each later part of the windows before (see [`BackfillSql::update_entries`]), or, for a
/// list closed by an earlier version, whole table pages, `batchSize` keys and the rest of the last page's (see
/// [`BackfillSql::update_window`]); the batch that finishes the last part drops the list.
async fn walk(
    backfill: &Backfill,
    statements: &BackfillSql,
    checkpoint: BackfillCheckpoint,
    batch: &mut Batch<'_>,
) -> Result<BatchOutcome, MigrationError> {
    let missing = |field: &str| {
        unreadable(
            batch.state,
            BackfillCheckpoint::SHAPE,
            format_args!("it walks a key list but has no {field}"),
        )
    };
    let list = checkpoint.list.as_deref().ok_or_else(|| missing("list"))?;
    let list = checked_list_name(list, batch.state)?;
    let pages = checkpoint.pages.ok_or_else(|| missing("pages"))?;
    let from = checkpoint.page.unwrap_or(0);
    let cut_at = walk_cut(&checkpoint, batch.upper)?;
    let end = cut_at.unwrap_or(pages).min(pages);
    let quoted = backfill.store.dialect().quote_ident(list);

    // A list in its own order is walked in windows of its entries, planned before the batch's transaction opens:
    // an in-place walk sizes its hash by them. Only such a list is walked in place (`in_place` is set with
    // `list_order`).
    let entries = if checkpoint.list_order {
        let listed = checkpoint.listed.ok_or_else(|| missing("listed"))?;
        let window = entry_window(batch.args.batch_size, listed, pages);
        let to = from.saturating_add(window).min(end);
        // A walk in parts has a trail from the start; one begun by an earlier version goes on in one part.
        let parts = if checkpoint.trail.is_empty() {
            1
        } else {
            WALK_PARTS
        };
        let lag = turn_lag(batch.args.parallelism);
        let starts = PartSegments::of(from, &checkpoint.trail, parts, lag, batch.state)?;
        let spanned = entries_on(to.saturating_sub(starts.oldest()), listed, pages);
        Some(EntryWindow {
            window,
            to,
            starts,
            spanned,
        })
    } else {
        None
    };
    let in_place = checkpoint.list_order && checkpoint.in_place;
    let settings = match &entries {
        Some(entries) if in_place => LocalSetting::fixed(BackfillSql::ENTRY_WALK_SETTINGS)
            .chain([hash_memory(entries.spanned)])
            .collect(),
        _ => LocalSetting::fixed(BackfillSql::WALK_SETTINGS).collect(),
    };
    let mut tx = backfill.begin_batch(batch, settings).await?;
    let (rows, to, trail) = if let Some(EntryWindow {
        window, to, starts, ..
    }) = entries
    {
        let tid = |page: u64| SqlParam::Text(format!("({page},0)"));
        let mut params = vec![tid(starts.oldest()), tid(to)];
        params.extend(starts.segment_bounds().into_iter().map(tid));
        let update = if in_place {
            statements.update_entries(&quoted, starts.parts())
        } else {
            statements.update_entries_by_key(&quoted, starts.parts())
        };
        let walked = tx.fetch_optional_text(&update, &params).await;
        let walked = or_list_gone(backfill, list, &checkpoint, walked).await?;
        let rows = if in_place {
            update_missed(statements, tx.as_mut(), walked).await?
        } else {
            let [rows] = numbers(walked, "a walk window's rows")?;
            rows
        };
        // Its rows are whatever the list holds there: a full window with every part's segment walked is a
        // batch's worth, and teaches the batch size as one (the sizer learns only from batches of about
        // `batchSize` rows; the first and last batches of a walk in parts update fewer parts).
        if from + window <= end && starts.all_walked() {
            batch.count_for_sizing(batch.args.batch_size);
        }
        (rows, to, starts.after_batch())
    } else {
        let params = [
            SqlParam::count(from),
            SqlParam::count(end),
            SqlParam::count(batch.args.batch_size.saturating_sub(1)),
        ];
        let walked = tx
            .fetch_optional_text(&statements.update_window(&quoted), &params)
            .await;
        let walked = or_list_gone(backfill, list, &checkpoint, walked).await?;
        let [rows, to] = numbers(walked, "a walk window's rows and end")?;
        (rows, to, Vec::new())
    };
    let done = trail.last().copied().unwrap_or(to) >= end;
    // A list another range walks too is the migration's end's to drop.
    if done && cut_at.is_none() && !checkpoint.shared {
        tx.execute(&BackfillSql::drop_key_list(&quoted), &[])
            .await?;
    }
    let next = BackfillCheckpoint {
        page: Some(to),
        trail,
        walked: checkpoint.walked + rows,
        done,
        ..checkpoint
    };
    let outcome = BatchOutcome {
        state: next.to_state(),
        done,
        rows,
        bytes: 0,
    };
    batch.commit(tx, &outcome).await?;
    Ok(outcome)
}

/// Bytes of `work_mem` an in-place walk batch allows per row it hashes. Its hash join hashes the rows on the
/// table pages its entries name: as many rows as the list holds on the list pages that all its turns' segments
/// span, three windows of about `batchSize` each once the batch size has settled (the planner hashes that side:
/// the entries, a CTE, have no statistics, so their key looks unfit for a hash), each row with its key and the
/// columns `set` reads: 88 bytes for a 32-character text key and two integers. With the server's default
/// `work_mem` of 4 MB (8 MB for a hash, with the default `hash_mem_multiplier` of 2), batches of 36,000 rows
/// hashed 108,000 and spilled them to temporary files: 3.2 GB of them in a walk of 10,000,000 rows. `work_mem` is
/// a bound, not an allocation (the hash takes what its rows need), so this one is generous: rows whose `set` reads
/// up to a few hundred bytes fit; wider ones spill what does not, as before.
const WORK_MEM_PER_HASHED_ROW: u64 = 512;
/// The bounds of that `work_mem`, in kB: never below the server's default, and no more than one session should
/// be allowed on a busy server (a batch of 170,000 rows or more).
const HASH_MEMORY_KB: (u64, u64) = (4 * 1024, 256 * 1024);

/// The `work_mem` of an in-place walk batch that hashes about `hashed_rows` rows, so that its hash join fits in
/// memory (see [`WORK_MEM_PER_HASHED_ROW`]); the transaction's own, undone at its commit.
fn hash_memory(hashed_rows: u64) -> LocalSetting {
    let kb = (hashed_rows.saturating_mul(WORK_MEM_PER_HASHED_ROW) / 1024)
        .clamp(HASH_MEMORY_KB.0, HASH_MEMORY_KB.1);
    LocalSetting::new("work_mem", format!("{kb}kB"))
}

/// Reads what [`BackfillSql::update_entries`] returned (the keys read, then per key column the keys of the rows
/// it did not update) and updates those rows through the key's index, in a batch that has any; returns the keys
/// read.
async fn update_missed(
    statements: &BackfillSql,
    tx: &mut dyn SqlTx,
    walked: Option<Vec<String>>,
) -> Result<u64, MigrationError> {
    let (rows, missed) = walked
        .as_deref()
        .and_then(|row| Some((row.first()?.parse::<u64>().ok()?, &row[1..])))
        .filter(|(_, missed)| missed.len() == statements.arity())
        .ok_or_else(|| {
            MigrationError::Permanent(format!(
                "reading a walk window's rows returned {walked:?}, not a count and {} key arrays",
                statements.arity()
            ))
        })?;
    if missed.iter().any(|keys| keys != "{}") {
        let lookups: Vec<LocalSetting> =
            LocalSetting::fixed(BackfillSql::KEY_LOOKUP_SETTINGS).collect();
        tx.execute(&LocalSetting::setup(&lookups), &[]).await?;
        let arrays: Vec<SqlParam> = missed.iter().cloned().map(SqlParam::Text).collect();
        tx.execute(&statements.update_missing(), &arrays).await?;
    }
    Ok(rows)
}

/// A walk batch's window over a list in its own order: `window` list pages from the checkpoint's `page` up to
/// `to`, each part's segment from its start in `starts`, and about how many entries all those segments span
/// (`spanned`: the rows an in-place walk's hash join hashes, see [`hash_memory`]).
struct EntryWindow {
    window: u64,
    to: u64,
    starts: PartSegments,
    spanned: u64,
}

/// Where each part of a walk in parts walks this batch, in the list's pages, from the walk's history: where this
/// batch's window (the checkpoint's `page`) and each of the last ones (its `trail`, newest first) began. Part 0
/// walks the new window; part `q` the window part 0 walked `q × lag` batches before (from `history[q × lag]` to
/// `history[q × lag - 1]`), so a list page's turns come `lag` batches apart. After the batch the history shifts
/// by one: every part walks the list in contiguous segments, each entry once.
struct PartSegments {
    /// Where this batch's window and the last ones began, newest first; the last is where the last part starts.
    history: Vec<u64>,
    /// Batches between one part's turn on a window and the next part's.
    lag: usize,
}

impl PartSegments {
    /// Checked: an operator-edited trail that runs ahead of the part before it would skip entries. A trail kept
    /// with another lag (`parallelism` changed between batches) is redrawn for this one: each part keeps its
    /// start, and a part whose segment the new lag leaves behind the part before it waits for it.
    fn of(
        page: u64,
        trail: &[u64],
        parts: usize,
        lag: usize,
        state: &Value,
    ) -> Result<Self, MigrationError> {
        let history: Vec<u64> = std::iter::once(page).chain(trail.iter().copied()).collect();
        if history.windows(2).any(|pair| pair[1] > pair[0]) {
            return Err(unreadable(
                state,
                BackfillCheckpoint::SHAPE,
                format_args!(
                    "its trail {trail:?} runs ahead of its page {page} (each entry must be at or behind the one before)"
                ),
            ));
        }
        if parts == 1 && trail.is_empty() {
            return Ok(Self { history, lag: 1 });
        }
        let later_parts = parts - 1;
        if later_parts == 0 || trail.is_empty() || !trail.len().is_multiple_of(later_parts) {
            return Err(unreadable(
                state,
                BackfillCheckpoint::SHAPE,
                format_args!(
                    "its trail {trail:?} has {} entries, not a multiple of the {later_parts} turns after the first",
                    trail.len()
                ),
            ));
        }
        let kept_lag = trail.len() / later_parts;
        if kept_lag == lag {
            return Ok(Self { history, lag });
        }
        let start = |part: usize| history[part * kept_lag];
        let redrawn = std::iter::once(page)
            .chain((1..=lag * later_parts).map(|k| start(k.div_ceil(lag))))
            .collect();
        Ok(Self {
            history: redrawn,
            lag,
        })
    }

    fn parts(&self) -> usize {
        (self.history.len() - 1) / self.lag + 1
    }

    /// Where the last part starts: every entry before it is done.
    fn oldest(&self) -> u64 {
        *self.history.last().expect("part 0 always has a start")
    }

    /// Where each later part `q` starts and where its segment ends (`history[q × lag]`, `history[q × lag - 1]`).
    fn segments(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        (1..self.parts()).map(|q| (self.history[q * self.lag], self.history[q * self.lag - 1]))
    }

    /// The bounds [`BackfillSql::update_entries`] cuts its window's entries by, newest first: where part 0 starts,
    /// then per later part where its segment ends and, but for the last part's (the window's lower bound), where
    /// it starts.
    fn segment_bounds(&self) -> Vec<u64> {
        let mut bounds = vec![self.history[0]];
        for (q, (start, end)) in self.segments().enumerate() {
            bounds.push(end);
            if q + 2 < self.parts() {
                bounds.push(start);
            }
        }
        bounds
    }

    /// Whether every later part has a segment to walk (false in a walk's first batches in parts).
    fn all_walked(&self) -> bool {
        self.segments().all(|(start, end)| end > start)
    }

    /// The trail after this batch: the history shifted by one, this batch's window its newest.
    fn after_batch(&self) -> Vec<u64> {
        self.history[..self.history.len() - 1].to_vec()
    }
}

/// How many of the list's own pages a walk batch takes: those that hold about `batch_size` of its `listed` keys
/// over `pages` pages (at least one). The sweep fills the list's pages evenly (every entry is a page number and a
/// key), so its average is what any run of them holds, give or take the entries the close dropped.
fn entry_window(batch_size: u64, listed: u64, pages: u64) -> u64 {
    let per_page = listed as f64 / pages.max(1) as f64;
    ((batch_size as f64 / per_page.max(1.0)).round() as u64).max(1)
}

/// About how many of the list's `listed` entries over `pages` pages a run of `run` of its pages holds (the
/// inverse of [`entry_window`]).
fn entries_on(run: u64, listed: u64, pages: u64) -> u64 {
    (run as f64 * listed as f64 / pages.max(1) as f64).ceil() as u64
}

/// The page at which a range's walk stops because its next range walks the same list from there (a steal cut
/// it), or `None`: the walk runs to the list's end.
fn walk_cut(
    checkpoint: &BackfillCheckpoint,
    upper: Option<&Value>,
) -> Result<Option<u64>, MigrationError> {
    let Some(upper) = upper else {
        return Ok(None);
    };
    let next = BackfillCheckpoint::read(upper)?;
    Ok(match (next.list, next.page) {
        (Some(list), Some(page)) if checkpoint.list.as_ref() == Some(&list) => Some(page),
        _ => None,
    })
}

/// Cuts the pages a walk has left (from its checkpoint `from` to its end, see [`walk_cut`]) into `parts` runs of
/// equal pages: the checkpoints where the second and later start, walking the same list. None while keys are
/// listed, nor for a finished walk.
pub(super) fn page_cuts(
    from: &BackfillCheckpoint,
    upper: Option<&Value>,
    parts: u64,
) -> Result<Vec<BackfillCheckpoint>, MigrationError> {
    let (Some(page), Some(pages)) = (from.page, from.pages) else {
        return Ok(Vec::new());
    };
    if from.done {
        return Ok(Vec::new());
    }
    let end = walk_cut(from, upper)?.unwrap_or(pages).min(pages);
    let left = end.saturating_sub(page);
    let parts = parts.min(left);
    Ok((1..parts)
        .map(|k| page + left * k / parts)
        .map(|cut| BackfillCheckpoint {
            page: Some(cut),
            trail: vec![cut; from.trail.len()],
            walked: 0,
            shared: true,
            ..from.clone()
        })
        .collect())
}

/// Drops the key lists that finished ranges name: the shared ones no range dropped (the others are gone already).
pub(super) async fn drop_lists(
    backfill: &Backfill,
    states: &[Value],
) -> Result<(), MigrationError> {
    let mut lists = std::collections::BTreeSet::new();
    for state in states {
        if let Some(list) = &BackfillCheckpoint::read(state)?.list {
            lists.insert(checked_list_name(list, state)?.to_owned());
        }
    }
    if lists.is_empty() {
        return Ok(());
    }
    let mut tx = backfill.store.begin().await?;
    for list in &lists {
        let quoted = backfill.store.dialect().quote_ident(list);
        tx.execute(&BackfillSql::drop_key_list(&quoted), &[])
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The result of the batch's first statement on its list, or — when that failed because the list is gone
/// (dropped by hand) — the error that says so: which rows are left cannot be known then. Asked only after a
/// failure, on a connection of its own (the batch's transaction is aborted), so a batch that works costs no
/// extra query.
async fn or_list_gone<T>(
    backfill: &Backfill,
    list: &str,
    checkpoint: &BackfillCheckpoint,
    result: Result<T, StoreError>,
) -> Result<T, MigrationError> {
    let err = match result {
        Ok(value) => return Ok(value),
        Err(err) => err,
    };
    let mut probe = backfill.store.begin_read().await?;
    let quoted = backfill.store.dialect().quote_ident(list);
    let found = probe
        .fetch_count(
            "SELECT count(to_regclass($1::text))",
            &[SqlParam::Text(quoted)],
        )
        .await?;
    if found > 0 {
        return Err(err.into());
    }
    Err(MigrationError::Permanent(format!(
        "the key list {list} of this backfill is gone ({} keys listed, {} rows updated): which rows are left \
         cannot be known; retry --from-start lists the keys again and updates every row again",
        checkpoint.listed.unwrap_or(0),
        checkpoint.walked
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn walking(page: u64, pages: u64) -> BackfillCheckpoint {
        BackfillCheckpoint {
            list: Some("bgmigrate_keys_0123456789ab".into()),
            listed: Some(pages * 10),
            pages: Some(pages),
            page: Some(page),
            walked: 70,
            ..BackfillCheckpoint::default()
        }
    }

    /// Room for each row its turns' segments span, between the server's default and a quarter of a GiB.
    #[test]
    fn an_in_place_walk_batch_takes_work_mem_for_its_hash() {
        let work_mem = |rows| {
            let setting = hash_memory(rows);
            assert_eq!(setting.name, "work_mem");
            assert!(!setting.keep_server_value);
            setting.value
        };
        assert_eq!(work_mem(3_000), "4096kB");
        assert_eq!(work_mem(108_000), "54000kB");
        assert_eq!(work_mem(300_000), "150000kB");
        assert_eq!(work_mem(30_000_000), "262144kB");
        assert_eq!(entries_on(336, 10_000_000, 93_458), 35_952);
        assert_eq!(entries_on(0, 10_000_000, 93_458), 0);
    }

    /// Walks `pages` list pages in `parts` from page 0 to `end` by windows of 1 to 5 pages, as [`walk`] does, each
    /// batch with a turn lag drawn from `lags` (`parallelism` may change between any two batches), and counts how
    /// often each (page, part) is updated: an entry at page `x` of part `q` is updated by a batch when `x` lies in
    /// part `q`'s segment, as [`BackfillSql::update_entries`] selects it.
    fn walked_in_parts(
        pages: u64,
        parts: usize,
        end: u64,
        lags: &[usize],
        seed: u64,
    ) -> Vec<Vec<u32>> {
        let mut updated = vec![vec![0; parts]; pages as usize];
        let (mut page, mut trail, mut random) = (0, vec![0; lags[0] * (parts - 1)], seed);
        let mut batches = 0;
        loop {
            random = random
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let to = (page + 1 + (random >> 33) % 5).min(end);
            let lag = lags[(random >> 40) as usize % lags.len()];
            let starts = PartSegments::of(page, &trail, parts, lag, &json!({})).unwrap();
            let mut bounds = starts.segment_bounds().into_iter();
            let part_0 = bounds.next().unwrap();
            assert_eq!(part_0, page);
            for x in starts.oldest()..to {
                // The CASE of `update_entries`: part 0 from where it starts, each later part in its segment,
                // none between a segment's end and the start of the one after it.
                let part = if x >= part_0 {
                    Some(0)
                } else {
                    starts
                        .segments()
                        .position(|(start, end)| (start..end).contains(&x))
                        .map(|q| q + 1)
                };
                if let Some(part) = part {
                    updated[x as usize][part] += 1;
                }
            }
            trail = starts.after_batch();
            page = to;
            batches += 1;
            if trail.last().copied().unwrap_or(to) >= end {
                return updated;
            }
            assert!(batches < 10 * pages, "the walk ends");
        }
    }

    #[test]
    fn a_walk_in_parts_updates_every_part_of_every_page_once() {
        for (parts, lags, seed) in [
            (1, &[1][..], 1),
            (2, &[1], 2),
            (3, &[1], 3),
            (3, &[2], 4),
            (3, &[1, 2], 5),
            (3, &[1, 2, 3], 6),
            (5, &[1, 2], 7),
        ] {
            let updated = walked_in_parts(40, parts, 40, lags, seed);
            assert!(
                updated.iter().all(|page| page.iter().all(|&n| n == 1)),
                "{parts} parts, lags {lags:?}: {updated:?}"
            );
        }
        // A range cut at page 25 walks every part of its pages up to the cut, and nothing past it.
        let updated = walked_in_parts(40, 3, 25, &[1, 2], 8);
        assert!(
            updated[..25].iter().all(|page| page == &[1, 1, 1]),
            "{updated:?}"
        );
        assert!(
            updated[25..].iter().all(|page| page == &[0, 0, 0]),
            "{updated:?}"
        );
    }

    /// With a lag of two a part walks the window part 0 walked two batches before: the bounds cut out the window
    /// between them, which that part walks next.
    #[test]
    fn turns_two_batches_apart_leave_a_window_between_the_segments() {
        let starts = PartSegments::of(10, &[8, 6, 4, 2], 3, 2, &json!({})).unwrap();
        assert_eq!(starts.segments().collect::<Vec<_>>(), [(6, 8), (2, 4)]);
        assert_eq!(starts.segment_bounds(), [10, 8, 6, 4]);
        assert_eq!(starts.oldest(), 2);
        assert!(starts.all_walked());
        assert_eq!(starts.after_batch(), [10, 8, 6, 4]);
        let same = PartSegments::of(10, &[8, 6], 3, 1, &json!({})).unwrap();
        assert_eq!(
            same.segment_bounds(),
            [10, 10, 8, 8],
            "one batch apart: no gap"
        );
        // Switching lags keeps each part's start; a part whose segment would now lie ahead waits.
        let longer = PartSegments::of(10, &[8, 6], 3, 2, &json!({})).unwrap();
        assert_eq!(longer.segments().collect::<Vec<_>>(), [(8, 8), (6, 6)]);
        assert!(!longer.all_walked());
        let shorter = PartSegments::of(10, &[8, 6, 4, 2], 3, 1, &json!({})).unwrap();
        assert_eq!(shorter.segments().collect::<Vec<_>>(), [(6, 10), (2, 6)]);
    }

    #[test]
    fn a_trail_ahead_of_its_page_or_of_the_wrong_length_is_refused_and_the_first_batches_are_not_full()
     {
        let err = PartSegments::of(5, &[3, 4], 3, 1, &json!({"page": 5, "trail": [3, 4]}))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("its trail [3, 4] runs ahead of its page 5"),
            "{err}"
        );
        let err = PartSegments::of(5, &[4, 3, 2], 3, 1, &json!({"trail": [4, 3, 2]}))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(
                "its trail [4, 3, 2] has 3 entries, not a multiple of the 2 turns after the first"
            ),
            "{err}"
        );
        let all_walked = |page, trail: &[u64]| {
            PartSegments::of(page, trail, trail.len() + 1, 1, &json!({}))
                .unwrap()
                .all_walked()
        };
        assert!(!all_walked(0, &[0, 0]));
        assert!(!all_walked(4, &[2, 2]));
        assert!(all_walked(4, &[2, 1]));
        assert!(all_walked(4, &[]), "one part");
    }

    #[test]
    fn a_walk_is_cut_into_runs_of_equal_pages_that_share_its_list() {
        let cuts = page_cuts(&walking(10, 110), None, 4).unwrap();
        let pages: Vec<_> = cuts.iter().map(|c| c.page).collect();
        assert_eq!(pages, [Some(35), Some(60), Some(85)]);
        assert!(
            cuts.iter()
                .all(|c| c.shared && c.walked == 0 && c.list == walking(0, 1).list)
        );
        // A cut of a walk in parts starts every part at the cut; the range cut keeps its own trail.
        let in_parts = BackfillCheckpoint {
            trail: vec![8, 6],
            ..walking(10, 110)
        };
        let halves = page_cuts(&in_parts, None, 2).unwrap();
        assert_eq!(
            (halves[0].page, halves[0].trail.clone()),
            (Some(60), vec![60, 60])
        );
        // The first cut's range ends where the second starts, and the first range where the first cut starts.
        let second = cuts[1].to_state();
        assert_eq!(walk_cut(&cuts[0], Some(&second)).unwrap(), Some(60));
        let halves = page_cuts(&walking(10, 110), Some(&second), 2).unwrap();
        assert_eq!(
            halves[0].page,
            Some(35),
            "cut within its own end, not the list's"
        );
    }

    #[test]
    fn a_sweep_a_finished_walk_and_another_ranges_list_are_not_cut_by_pages() {
        let sweeping = BackfillCheckpoint {
            page: None,
            sweep: Some(3),
            ..walking(0, 100)
        };
        assert!(page_cuts(&sweeping, None, 2).unwrap().is_empty());
        let finished = BackfillCheckpoint {
            done: true,
            ..walking(100, 100)
        };
        assert!(page_cuts(&finished, None, 2).unwrap().is_empty());
        assert!(
            page_cuts(&walking(99, 100), None, 2).unwrap().is_empty(),
            "one page left"
        );
        let other = BackfillCheckpoint {
            list: Some("bgmigrate_keys_ffffffffffff".into()),
            ..walking(50, 100)
        };
        assert_eq!(
            walk_cut(&walking(0, 100), Some(&other.to_state())).unwrap(),
            None
        );
    }

    #[test]
    fn a_new_list_sits_in_the_tables_schema_under_a_name_the_walk_accepts() {
        let name = new_list_name("analytics.events");
        assert!(name.starts_with("analytics.bgmigrate_keys_"), "{name}");
        assert_eq!(checked_list_name(&name, &json!({})).unwrap(), name);
        let bare = new_list_name("events");
        assert!(bare.starts_with(LIST_PREFIX) && bare.len() == LIST_PREFIX.len() + 12);
        assert_ne!(bare, new_list_name("events"), "random per listing");
    }

    /// The last batch drops the table the checkpoint names, so an edited checkpoint cannot name another.
    #[test]
    fn a_checkpoint_naming_another_table_is_refused() {
        for name in [
            "public.users",
            "bgmigrate_keys_",
            "bgmigrate_keys_0123456789zz",
        ] {
            let err = checked_list_name(name, &json!({"list": name}))
                .unwrap_err()
                .to_string();
            assert!(err.contains("is not a name bgmigrate gives"), "{err}");
        }
    }
}
