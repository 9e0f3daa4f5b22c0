//! The copy's optional verify phase (`verify = true`): after the last batch, the source is walked again in key order,
//! batch by batch, and each key range is compared on both sides — row count and an order-independent checksum of
//! the rows as `RowBinary` bytes.
//!
//! Postgres sorts text keys by its collation, ClickHouse by bytes, so a range cannot be given by its bounds alone:
//! each verify batch reads its rows (and their keys) from the source (Postgres or SQLite) as the copy would encode them, then asks
//! ClickHouse for exactly those keys (`SELECT ... FINAL WHERE key IN bgm_keys`, the keys sent as an external table). Both answers go through one digest
//! ([`crate::clickhouse::digest`]), so equal digests mean equal rows. A range that differs is recorded in the
//! checkpoint (shown by `show` and the web UI); when the walk ends with any, the migration fails naming them (in
//! one more batch, after the checkpoint listing them is written).

use serde::{Deserialize, Serialize};

use super::CopyPlan;
use super::batch::{ReadError, Window, encode_batch};
use crate::args::Args;
use crate::clickhouse::digest::{DigestError, RowDigest, digest_rows};
use crate::clickhouse::rowbinary::BodyWriter;
use crate::clickhouse::{ChType, ClickHouse, ExternalTable, quote_ident};
use crate::kinds::ch_error;
use crate::migration::MigrationError;

/// Mismatching ranges kept in the checkpoint; more are counted, not listed.
const LISTED_MISMATCHES: usize = 20;

/// The verify phase's checkpoint: `{"verify": {...}}` beside the copy's cursor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyState {
    /// The last key verified, one text per key column; `None` before the first verify batch.
    pub cursor: Option<Vec<String>>,
    /// Source rows verified so far.
    pub rows: u64,
    /// Key ranges verified so far.
    pub ranges: u64,
    /// Key ranges that differed.
    pub mismatched: u64,
    /// The first mismatching ranges.
    pub mismatches: Vec<Mismatch>,
    /// True once every range was compared and some differed: the next batch fails the migration (so the
    /// checkpoint `show` prints lists every range first).
    #[serde(default)]
    pub complete: bool,
}

/// A key range whose rows differ between the source and ClickHouse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mismatch {
    /// The range's first key (inclusive).
    pub from: Vec<String>,
    /// The range's last key (inclusive).
    pub to: Vec<String>,
    /// Rows in the source (named for the first source, Postgres: the checkpoint keeps its shape for SQLite too).
    pub postgres_rows: u64,
    /// Rows in ClickHouse with those keys (after `FINAL`).
    pub clickhouse_rows: u64,
}

impl VerifyState {
    /// Adds one checked range.
    pub fn record(&mut self, checked: Checked) {
        self.rows += checked.source.rows;
        if let Some(last) = checked.keys.last() {
            self.ranges += 1;
            self.cursor = Some(last.clone());
        }
        if checked.source != checked.target
            && let (Some(from), Some(to)) = (checked.keys.first(), checked.keys.last())
        {
            self.mismatched += 1;
            if self.mismatches.len() < LISTED_MISMATCHES {
                self.mismatches.push(Mismatch {
                    from: from.clone(),
                    to: to.clone(),
                    postgres_rows: checked.source.rows,
                    clickhouse_rows: checked.target.rows,
                });
            }
        }
    }

    /// The failure when any range differed, naming them and the `source` (`Postgres`, `SQLite`).
    pub fn failure(&self, source: &str, target_table: &str) -> Option<MigrationError> {
        if self.mismatched == 0 {
            return None;
        }
        let listed: Vec<String> = self
            .mismatches
            .iter()
            .map(|m| {
                let what = if m.postgres_rows == m.clickhouse_rows {
                    format!("{} rows on both sides, checksums differ", m.postgres_rows)
                } else {
                    format!(
                        "{source} {} rows, ClickHouse {} rows",
                        m.postgres_rows, m.clickhouse_rows
                    )
                };
                format!(
                    "keys ({}) to ({}): {what}",
                    m.from.join(", "),
                    m.to.join(", ")
                )
            })
            .collect();
        let more = self.mismatched - self.mismatches.len() as u64;
        let more = if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        };
        Some(MigrationError::Permanent(format!(
            "verify: {} of {} key ranges differ between {source} and ClickHouse table {target_table}: {}{more}. \
             Copy again with `bgmigrate retry --from-start NAME` (re-sent rows collapse in the ReplacingMergeTree) \
             once the source is no longer written",
            self.mismatched,
            self.ranges,
            listed.join("; ")
        )))
    }
}

/// One verified range: its keys in source order and both sides' digests.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// The keys read from the source.
    pub keys: Vec<Vec<String>>,
    /// The source's rows, as the copy encodes them.
    pub source: RowDigest,
    /// The ClickHouse rows with those keys.
    pub target: RowDigest,
    /// True when the source (the key range) has no rows after this range.
    pub exhausted: bool,
}

/// Whether verify can send keys of this ClickHouse type in its keys table (built from their source text, which
/// ClickHouse parses: integers and UUIDs in their usual spelling).
pub fn key_type_supported(ty: &ChType) -> bool {
    matches!(
        ty,
        ChType::String | ChType::Int(_) | ChType::UInt(_) | ChType::Uuid
    )
}

/// Verifies the rows after `lower`, up to `end` (a key range's last key, if any): up to `batchSize` rows or
/// `maxBatchBytes` bytes, as a copy batch would read.
pub async fn verify_batch(
    clickhouse: &ClickHouse,
    plan: &CopyPlan,
    (lower, end): (Option<&[String]>, Option<&[String]>),
    args: &Args,
) -> Result<Checked, MigrationError> {
    let types: Vec<ChType> = plan.columns.iter().map(|c| c.target.clone()).collect();
    let (writer, encoded) = BodyWriter::pipe();
    let mut keys = Vec::new();
    let read = encode_batch(
        plan,
        Window::Keys {
            after: lower,
            upto: end,
        },
        args,
        writer,
        Some(&mut keys),
    );
    let (read, source) = tokio::join!(read, digest_rows(encoded, &types));
    let moved = match read {
        Ok(moved) => moved,
        Err(ReadError::Failed(err)) => return Err(err),
        Err(ReadError::Closed) => return Err(digest_failed("the source's rows", source.err())),
    };
    let source = source.map_err(|err| digest_failed("the source's rows", Some(err)))?;
    let target = if keys.is_empty() {
        RowDigest::default()
    } else {
        let (sql, external) = target_select(plan, &keys);
        let answer = clickhouse
            .select_rowbinary_with(&sql, &external)
            .await
            .map_err(ch_error)?;
        digest_rows(answer, &types)
            .await
            .map_err(|err| digest_failed("ClickHouse's answer", Some(err)))?
    };
    Ok(Checked {
        keys,
        source,
        target,
        exhausted: moved.complete,
    })
}

/// A digest that could not be completed: the stream broke off (retried) or did not match the types.
fn digest_failed(side: &str, err: Option<DigestError>) -> MigrationError {
    let detail = err.map_or_else(|| "the reader stopped".to_owned(), |e| e.to_string());
    MigrationError::Transient(format!("verify could not read {side}: {detail}"))
}

/// The name of the external table that carries a verify batch's keys.
const KEYS_TABLE: &str = "bgm_keys";

/// `SELECT <columns> FROM <table> FINAL WHERE (<key>) IN bgm_keys`, and `bgm_keys`: exactly `keys`, sent as data
/// beside the query (a list of 100,000 keys as SQL literals would cost ClickHouse ~5× more time to parse and
/// exceed `max_ast_elements`).
fn target_select(plan: &CopyPlan, keys: &[Vec<String>]) -> (String, ExternalTable) {
    let key_columns = plan.key_columns();
    let structure: Vec<(&str, &ChType)> = key_columns
        .iter()
        .map(|c| (c.name.as_str(), &c.target))
        .collect();
    let columns: Vec<String> = plan.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let key_names: Vec<String> = key_columns.iter().map(|c| quote_ident(&c.name)).collect();
    let sql = format!(
        "SELECT {} FROM {} FINAL WHERE ({}) IN {KEYS_TABLE}",
        columns.join(", "),
        quote_ident(&plan.target_table),
        key_names.join(", ")
    );
    (sql, ExternalTable::new(KEYS_TABLE, &structure, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(keys: &[&str], source: (u64, u64), target: (u64, u64)) -> Checked {
        let digest = |(rows, checksum)| RowDigest { rows, checksum };
        Checked {
            keys: keys.iter().map(|k| vec![(*k).to_owned()]).collect(),
            source: digest(source),
            target: digest(target),
            exhausted: false,
        }
    }

    #[test]
    fn matching_ranges_advance_the_cursor_and_differing_ones_are_named_in_the_failure() {
        let mut state = VerifyState::default();
        state.record(checked(&["a", "b"], (2, 7), (2, 7)));
        assert_eq!(
            state.failure("Postgres", "traces").map(|e| e.to_string()),
            None
        );
        state.record(checked(&["c", "d"], (2, 9), (1, 4)));
        state.record(checked(&["e", "f"], (2, 9), (2, 5)));
        assert_eq!(state.cursor, Some(vec!["f".to_owned()]));
        assert_eq!((state.rows, state.ranges, state.mismatched), (6, 3, 2));
        let message = state.failure("Postgres", "traces").unwrap().to_string();
        assert!(
            message.contains("2 of 3 key ranges differ")
                && message.contains("keys (c) to (d): Postgres 2 rows, ClickHouse 1 rows")
                && message.contains("keys (e) to (f): 2 rows on both sides, checksums differ"),
            "{message}"
        );
    }

    #[test]
    fn only_string_and_integer_keys_can_be_named_in_the_keys_table() {
        assert!(key_type_supported(&ChType::String) && key_type_supported(&ChType::UInt(32)));
        assert!(!key_type_supported(&ChType::DateTime(None)));
    }
}
