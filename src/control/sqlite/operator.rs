//! The operator's side: validated status transitions and args edits, each recorded with its actor.

use serde_json::{Value, json};

use super::{SqliteControlStore, insert_event};
use crate::args::merge_patch;
use crate::control::{ControlError, EventKind, MigrationRecord, action_assignments};
use crate::status::{Action, Status};

impl SqliteControlStore {
    pub(super) async fn apply_action(
        &self,
        name: &str,
        action: Action,
        from_start: bool,
        actor: &str,
    ) -> Result<MigrationRecord, ControlError> {
        // BEGIN IMMEDIATE holds the write lock: no worker writes between this read and the update.
        let mut tx = self.write_tx("begin").await?;
        let current: Option<String> =
            sqlx::query_scalar("SELECT status FROM background_migrations WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(Self::sql_err("read the migration"))?;
        let from: Status = current
            .ok_or_else(|| ControlError::NotFound(name.to_owned()))?
            .parse()
            .map_err(|e: crate::status::UnknownStatus| ControlError::Corrupt(e.to_string()))?;
        let to = from
            .apply(action)
            .map_err(|source| ControlError::Transition {
                name: name.to_owned(),
                source,
            })?;
        let set = action_assignments(action, from_start);
        let sql = format!(
            "UPDATE background_migrations SET status = $2, {set}, \
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE name = $1"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .bind(to.as_str())
            .execute(&mut *tx)
            .await
            .map_err(Self::sql_err("change the status"))?;
        let detail =
            json!({"from": from, "to": to, "from_start": from_start && action == Action::Retry});
        insert_event(&mut tx, name, EventKind::Operator(action), actor, &detail).await?;
        let record = Self::record_in(&mut tx, name).await?;
        self.commit(tx, "commit the status change").await?;
        Ok(record)
    }

    pub(super) async fn patch_args(
        &self,
        name: &str,
        patch: &Value,
        actor: &str,
    ) -> Result<MigrationRecord, ControlError> {
        let mut tx = self.write_tx("begin").await?;
        let before: String =
            sqlx::query_scalar("SELECT args FROM background_migrations WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(Self::sql_err("read the args"))?
                .ok_or_else(|| ControlError::NotFound(name.to_owned()))?;
        let before: Value = serde_json::from_str(&before)
            .map_err(|err| ControlError::Corrupt(format!("args of {name} are not JSON: {err}")))?;
        let after = merge_patch(&before, patch).map_err(|source| ControlError::InvalidArgs {
            name: name.to_owned(),
            source,
        })?;
        sqlx::query(
            "UPDATE background_migrations SET args = $2, \
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE name = $1",
        )
        .bind(name)
        .bind(after.to_string())
        .execute(&mut *tx)
        .await
        .map_err(Self::sql_err("write the args"))?;
        let detail = json!({"before": before, "after": after});
        insert_event(&mut tx, name, EventKind::ArgsChanged, actor, &detail).await?;
        let record = Self::record_in(&mut tx, name).await?;
        self.commit(tx, "commit the args").await?;
        Ok(record)
    }
}
