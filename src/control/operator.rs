//! The operator's side ([`OperatorStore`]): validated status transitions and args edits, each recorded with its
//! actor. Each reads the row under a lock (Postgres: the row lock; SQLite: `BEGIN IMMEDIATE`), so no worker writes
//! between the check and the change.

use async_trait::async_trait;
use serde_json::{Value, json};

use super::lenient_json::{is_unreadable_marker, parse_lenient};
use super::sql_store::SqlControlStore;
use super::{ControlError, EventKind, MigrationRecord, OperatorStore};
use crate::args::{ArgsError, merge_patch};
use crate::status::{Action, Status};
use crate::store::SqlParam;

/// The columns an operator action resets besides `status`: one SQL fragment that every store's dialect accepts.
fn action_assignments(action: Action, from_start: bool) -> &'static str {
    match action {
        Action::Pause | Action::Cancel => {
            "worker_id = NULL, locked_at = NULL, lease_expires_at = NULL, throttled = NULL"
        }
        Action::Resume => "worker_id = NULL",
        Action::Retry if from_start => {
            "failed_at = NULL, failed_reason = NULL, finished_at = NULL, state = '{}', rows_done = 0, \
             bytes_done = 0, rows_total = NULL, started_at = NULL, rows_per_sec = NULL"
        }
        Action::Retry => "failed_at = NULL, failed_reason = NULL, finished_at = NULL",
    }
}

/// The first key of `before` holding a number nobody could read (see `lenient_json`) that `patch` leaves as it is.
fn unrepaired_key<'a>(before: &'a Value, patch: &Value) -> Option<&'a str> {
    before
        .as_object()?
        .iter()
        .find(|(key, value)| is_unreadable_marker(value) && patch.get(key.as_str()).is_none())
        .map(|(key, _)| key.as_str())
}

#[async_trait]
impl OperatorStore for SqlControlStore {
    async fn act(
        &self,
        name: &str,
        action: Action,
        from_start: bool,
        actor: &str,
    ) -> Result<MigrationRecord, ControlError> {
        let mut tx = self.write().await?;
        let by_name = [SqlParam::Text(name.to_owned())];
        let current = tx
            .fetch_all_text(&self.statements.lock_status, &by_name)
            .await?;
        let from: Status = current
            .into_iter()
            .next()
            .and_then(|mut row| row.pop().flatten())
            .ok_or_else(|| ControlError::NotFound(name.to_owned()))?
            .parse()
            .map_err(|e: crate::status::UnknownStatus| ControlError::Corrupt(e.to_string()))?;
        let to = from
            .apply(action)
            .map_err(|source| ControlError::Transition {
                name: name.to_owned(),
                source,
            })?;
        let sql = format!(
            "UPDATE background_migrations SET status = $2, {}, updated_at = {} WHERE name = $1",
            action_assignments(action, from_start),
            self.sql.now()
        );
        tx.execute(
            &sql,
            &[
                SqlParam::Text(name.to_owned()),
                SqlParam::Text(to.as_str().to_owned()),
            ],
        )
        .await?;
        // Key ranges (parallelism > 1): every action frees their leases, so that the run after a resume or retry
        // claims them at once instead of after the TTL; a retry from the start forgets them with the checkpoint.
        let ranges: &str = if from_start && action == Action::Retry {
            "DELETE FROM background_migration_ranges WHERE migration_id = \
             (SELECT id FROM background_migrations WHERE name = $1)"
        } else {
            "UPDATE background_migration_ranges SET worker_id = NULL, lease_expires_at = NULL, \
             rows_per_sec = NULL WHERE done = 0 AND migration_id = \
             (SELECT id FROM background_migrations WHERE name = $1)"
        };
        tx.execute(ranges, &by_name).await?;
        let detail =
            json!({"from": from, "to": to, "from_start": from_start && action == Action::Retry});
        self.insert_event(
            tx.as_mut(),
            name,
            EventKind::Operator(action),
            actor,
            &detail,
        )
        .await?;
        // Read inside the transaction: once it commits, a woken worker may claim the row at once.
        let record = self.record_in(tx.as_mut(), name).await?;
        self.commit(tx).await?;
        Ok(record)
    }

    async fn set_args(
        &self,
        name: &str,
        patch: &Value,
        actor: &str,
    ) -> Result<MigrationRecord, ControlError> {
        let mut tx = self.write().await?;
        let by_name = [SqlParam::Text(name.to_owned())];
        let text = tx
            .fetch_all_text(&self.statements.lock_args, &by_name)
            .await?
            .into_iter()
            .next()
            .and_then(|mut row| row.pop().flatten())
            .ok_or_else(|| ControlError::NotFound(name.to_owned()))?;
        // Args holding a number nobody can read are repaired by a patch that sets that key.
        let (before, _) = parse_lenient("args", &text)
            .map_err(|err| ControlError::Corrupt(format!("args of {name} are not JSON: {err}")))?;
        let invalid = |source| ControlError::InvalidArgs {
            name: name.to_owned(),
            source,
        };
        if let Some(key) = unrepaired_key(&before, patch) {
            return Err(invalid(ArgsError::Unreadable(key.to_owned())));
        }
        let after = merge_patch(&before, patch).map_err(invalid)?;
        tx.execute(
            &self.statements.write_args,
            &[
                SqlParam::Text(name.to_owned()),
                SqlParam::Text(after.to_string()),
            ],
        )
        .await?;
        let detail = json!({"before": before, "after": after});
        self.insert_event(tx.as_mut(), name, EventKind::ArgsChanged, actor, &detail)
            .await?;
        // Read inside the transaction: once it commits, a woken worker may claim the row at once.
        let record = self.record_in(tx.as_mut(), name).await?;
        self.commit(tx).await?;
        Ok(record)
    }
}
