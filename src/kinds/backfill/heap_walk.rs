//! The heap-order walk (`order = "physical"`, Postgres): the first batch of a range lists its keys in page order in
//! a table beside the target; each later batch updates the next run of listed keys. Exactness rests on the key,
//! not on where a row sits: a row that a batch (or the application) moves to another page is still updated once,
//! through its listed key.
//!
//! The list is an ordinary (logged) table, so it survives a server crash and a failover with the checkpoint that
//! points into it. Its name is written in the checkpoint; the last batch drops it in its own transaction.

use serde_json::Value;

use super::{Backfill, BackfillCheckpoint, BackfillSql, texts};
use crate::kinds::checkpoint::{Checkpoint, range_end, unreadable};
use crate::migration::{Batch, BatchOutcome, MigrationError};
use crate::store::SqlParam;

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

/// One batch of a heap-order backfill: the listing if the range has no list yet, else the next run of it.
pub(super) async fn run_batch(
    backfill: &Backfill,
    statements: &BackfillSql,
    batch: &mut Batch<'_>,
) -> Result<BatchOutcome, MigrationError> {
    let checkpoint = BackfillCheckpoint::read(batch.state)?;
    match checkpoint.list.clone() {
        None => list_keys(backfill, statements, checkpoint, batch).await,
        Some(list) => walk(backfill, statements, checkpoint, &list, batch).await,
    }
}

/// Lists the range's keys (after the cursor, up to the range's end) in one statement, so under one snapshot: every
/// row present then is listed once. It walks no row, so it counts none (and does not teach the batch sizer).
async fn list_keys(
    backfill: &Backfill,
    statements: &BackfillSql,
    checkpoint: BackfillCheckpoint,
    batch: &mut Batch<'_>,
) -> Result<BatchOutcome, MigrationError> {
    let arity = statements.arity();
    let lower = checkpoint.at.keys(arity, batch.state)?;
    let end = range_end::<BackfillCheckpoint>(batch.upper, arity)?;
    let mut params = texts(lower.unwrap_or_default());
    params.extend(texts(end.as_deref().unwrap_or_default()));
    let list = new_list_name(&backfill.spec.table);
    let quoted = backfill.store.dialect().quote_ident(&list);

    let mut tx = backfill.store.begin().await?;
    let create = statements.create_key_list(&quoted, lower.is_some(), end.is_some());
    let listed = tx.execute(&create, &params).await?;
    let done = listed == 0;
    if done {
        tx.execute(&BackfillSql::drop_key_list(&quoted), &[])
            .await?;
    } else {
        tx.execute(&BackfillSql::index_key_list(&quoted), &[])
            .await?;
        tx.execute(&BackfillSql::analyze_key_list(&quoted), &[])
            .await?;
    }
    tracing::info!(list = %list, rows = listed, "keys listed in page order");
    let next = BackfillCheckpoint {
        list: (!done).then_some(list),
        listed: Some(listed),
        done,
        ..checkpoint
    };
    let outcome = BatchOutcome {
        state: next.to_state(),
        done,
        rows: 0,
        bytes: 0,
    };
    batch.commit(tx, &outcome).await?;
    Ok(outcome)
}

/// Updates the next `batchSize` listed keys; the last run drops the list.
async fn walk(
    backfill: &Backfill,
    statements: &BackfillSql,
    checkpoint: BackfillCheckpoint,
    list: &str,
    batch: &mut Batch<'_>,
) -> Result<BatchOutcome, MigrationError> {
    let list = checked_list_name(list, batch.state)?;
    let listed = checkpoint.listed.ok_or_else(|| {
        unreadable(
            batch.state,
            BackfillCheckpoint::SHAPE,
            "it names a list but not how many keys it holds (listed)",
        )
    })?;
    let walked = checkpoint.walked.min(listed);
    let through = walked.saturating_add(batch.args.batch_size).min(listed);
    let quoted = backfill.store.dialect().quote_ident(list);

    let mut tx = backfill.store.begin().await?;
    let exists = tx
        .fetch_count(
            "SELECT count(to_regclass($1::text))",
            &[SqlParam::Text(quoted.clone())],
        )
        .await?;
    if exists == 0 {
        return Err(MigrationError::Permanent(format!(
            "the key list {list} of this backfill is gone ({walked} of its {listed} keys were updated): the rest \
             cannot be known; retry --from-start lists the keys again and updates every row again"
        )));
    }
    tx.execute(BackfillSql::join_by_index(), &[]).await?;
    let position = |n: u64| SqlParam::Int(i64::try_from(n).unwrap_or(i64::MAX));
    tx.execute(
        &statements.update_listed(&quoted),
        &[position(walked), position(through)],
    )
    .await?;
    let done = through == listed;
    if done {
        tx.execute(&BackfillSql::drop_key_list(&quoted), &[])
            .await?;
    }
    let next = BackfillCheckpoint {
        walked: through,
        done,
        ..checkpoint
    };
    let outcome = BatchOutcome {
        state: next.to_state(),
        done,
        rows: through - walked,
        bytes: 0,
    };
    batch.commit(tx, &outcome).await?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
