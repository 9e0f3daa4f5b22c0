//! The copy's source, checked before any row moves (for both writers): a table must exist with a NOT NULL unique
//! key; a query must compile on its store and name each of its output columns once, the key among them. And the
//! source's row estimate, for progress.

use super::spec::{Relation, Source};
use crate::kinds::keyset;
use crate::migration::MigrationError;
use crate::store::{ColumnInfo, SqlStore, StoreError};

/// The source as validation found it: its columns, its key's types, and the columns to copy.
pub(super) struct SourceShape {
    /// Every column of the table, or of the query's result.
    pub columns: Vec<ColumnInfo>,
    /// The key columns' types, in key order.
    pub key_types: Vec<String>,
    /// The columns to copy (`from.columns`, or every column).
    pub names: Vec<String>,
}

impl SourceShape {
    /// Checks the source before any row moves: a table must exist with a NOT NULL unique key; a query must run
    /// and have the key among its output columns (its uniqueness is checked as rows are read, see
    /// [`crate::kinds::keyset::Keyset::next_key`]).
    pub async fn check(store: &dyn SqlStore, from: &Source) -> Result<SourceShape, MigrationError> {
        let invalid = MigrationError::Invalid;
        let source_columns = match &from.relation {
            Relation::Table(table) => {
                let columns = store.columns(table).await?;
                if columns.is_empty() {
                    return Err(invalid(format!(
                        "table {table} does not exist in store {}",
                        from.store
                    )));
                }
                columns
            }
            Relation::Query(query) => query_columns(store, from, query).await?,
        };
        let table = match &from.relation {
            Relation::Table(table) => Some(table.as_str()),
            Relation::Query(_) => None,
        };
        let key_types = keyset::key_types(&source_columns, &from.key, &from.relation, table)?;
        if let Some(table) = table {
            keyset::check_unique_key(store, table, &from.key).await?;
        }
        let names: Vec<String> = match &from.columns {
            Some(columns) => columns.clone(),
            None => source_columns.iter().map(|c| c.name.clone()).collect(),
        };
        Ok(SourceShape {
            columns: source_columns,
            key_types,
            names,
        })
    }

    /// The source column called `name`, if any.
    pub fn column(&self, name: &str) -> Option<&ColumnInfo> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// The output columns of `from.query`: the query must compile on its store (a Postgres store) and name each of
/// its columns, once.
async fn query_columns(
    store: &dyn SqlStore,
    from: &Source,
    query: &str,
) -> Result<Vec<ColumnInfo>, MigrationError> {
    let described = store.query_columns(query).await.map_err(|err| {
        if err.is_transient() {
            MigrationError::Store(err)
        } else {
            MigrationError::Invalid(format!(
                "from.query does not run on store {}: {err}",
                from.store
            ))
        }
    })?;
    let columns = described.ok_or_else(|| {
        MigrationError::Invalid(format!(
            "from.query needs a Postgres source, but store {} cannot describe a query's columns; copy from a \
             table (from.table) instead",
            from.store
        ))
    })?;
    if let Some(unnamed) = columns.iter().find(|c| c.name == "?column?") {
        return Err(MigrationError::Invalid(format!(
            "from.query has an unnamed output column ({}); name every computed column with AS",
            unnamed.type_name
        )));
    }
    if let Some(twice) = columns
        .iter()
        .enumerate()
        .find_map(|(i, c)| columns[..i].iter().any(|d| d.name == c.name).then_some(c))
    {
        return Err(MigrationError::Invalid(format!(
            "from.query has two output columns named {}; rename one with AS (columns are copied by name)",
            twice.name
        )));
    }
    Ok(columns)
}

/// `a, b, c`: the column names, for messages.
pub(super) fn names_of(columns: &[ColumnInfo]) -> String {
    columns
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The source's row estimate for progress and ETA: the store's statistics for a table, the planner's estimate
/// of the query's result for a query; never a count.
pub(super) async fn estimate(
    store: &dyn SqlStore,
    from: &Source,
) -> Result<Option<u64>, StoreError> {
    match &from.relation {
        Relation::Table(table) => store.estimate_rows(table).await,
        Relation::Query(query) => store.estimate_query_rows(query).await,
    }
}
