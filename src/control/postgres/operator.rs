//! The operator's side: validated status transitions and args edits, each recorded with its actor.

use serde_json::{Value, json};

use super::{PgControlStore, insert_event};
use crate::args::merge_patch;
use crate::control::{ControlError, EventKind, MigrationRecord, action_assignments};
use crate::status::{Action, Status};

impl PgControlStore {
    pub(super) async fn apply_action(
        &self,
        name: &str,
        action: Action,
        from_start: bool,
        actor: &str,
    ) -> Result<MigrationRecord, ControlError> {
        let mut tx = self.pool.begin().await.map_err(Self::sql_err("begin"))?;
        let current: Option<String> = sqlx::query_scalar(
            "SELECT status FROM background_migrations WHERE name = $1 FOR UPDATE",
        )
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
            "UPDATE background_migrations SET status = $2, {set}, updated_at = now() WHERE name = $1"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .bind(to.as_str())
            .execute(&mut *tx)
            .await
            .map_err(Self::sql_err("change the status"))?;
        let detail =
            json!({"from": from, "to": to, "from_start": from_start && action == Action::Retry});
        insert_event(&mut *tx, name, EventKind::Operator(action), actor, &detail).await?;
        // Read inside the transaction: once it commits, a woken worker may claim the row at once.
        let record = Self::record_in(&mut tx, name).await?;
        tx.commit()
            .await
            .map_err(Self::sql_err("commit the status change"))?;
        Ok(record)
    }

    pub(super) async fn patch_args(
        &self,
        name: &str,
        patch: &Value,
        actor: &str,
    ) -> Result<MigrationRecord, ControlError> {
        let mut tx = self.pool.begin().await.map_err(Self::sql_err("begin"))?;
        let before: Value =
            sqlx::query_scalar("SELECT args FROM background_migrations WHERE name = $1 FOR UPDATE")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(Self::sql_err("read the args"))?
                .ok_or_else(|| ControlError::NotFound(name.to_owned()))?;
        let after = merge_patch(&before, patch).map_err(|source| ControlError::InvalidArgs {
            name: name.to_owned(),
            source,
        })?;
        sqlx::query(
            "UPDATE background_migrations SET args = $2, updated_at = now() WHERE name = $1",
        )
        .bind(name)
        .bind(&after)
        .execute(&mut *tx)
        .await
        .map_err(Self::sql_err("write the args"))?;
        let detail = json!({"before": before, "after": after});
        insert_event(&mut *tx, name, EventKind::ArgsChanged, actor, &detail).await?;
        // Read inside the transaction: once it commits, a woken worker may claim the row at once.
        let record = Self::record_in(&mut tx, name).await?;
        tx.commit()
            .await
            .map_err(Self::sql_err("commit the args"))?;
        Ok(record)
    }
}
