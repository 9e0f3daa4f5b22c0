//! The control stores' record queries, written once for both: Postgres and SQLite run the same statements and
//! differ only in the connection type and in how a row decodes (each module's own `decode`).

/// Adds `list_records`, `get_record`, `record_in` and `held_record` to `$store` (whose `pool` field and `sql_err`
/// are its driver's), selecting `RECORD_COLUMNS` and decoding rows with `decode`, both from the calling module.
macro_rules! record_queries {
    ($store:ty, $conn:ty) => {
        impl $store {
            pub(super) async fn list_records(&self) -> Result<Vec<$crate::control::MigrationRecord>, $crate::control::ControlError> {
                let sql = format!("SELECT {RECORD_COLUMNS} FROM background_migrations ORDER BY name");
                let rows = ::sqlx::query(::sqlx::AssertSqlSafe(sql))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(Self::sql_err("list background migrations"))?;
                rows.iter().map(decode).collect()
            }

            pub(super) async fn get_record(&self, name: &str) -> Result<$crate::control::MigrationRecord, $crate::control::ControlError> {
                let mut conn = self
                    .pool
                    .acquire()
                    .await
                    .map_err(Self::sql_err("read a background migration"))?;
                Self::record_in(&mut conn, name).await
            }

            /// One row, read on `conn` (e.g. inside the transaction that just changed it).
            pub(super) async fn record_in(
                conn: &mut $conn,
                name: &str,
            ) -> Result<$crate::control::MigrationRecord, $crate::control::ControlError> {
                let sql = format!("SELECT {RECORD_COLUMNS} FROM background_migrations WHERE name = $1");
                let row = ::sqlx::query(::sqlx::AssertSqlSafe(sql))
                    .bind(name)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(Self::sql_err("read a background migration"))?;
                row.as_ref()
                    .map(decode)
                    .transpose()?
                    .ok_or_else(|| $crate::control::ControlError::NotFound(name.to_owned()))
            }

            /// The row while `lease` still holds it.
            pub(super) async fn held_record(&self, lease: &$crate::control::Lease) -> Result<$crate::control::MigrationRecord, $crate::control::ControlError> {
                let sql = format!(
                    "SELECT {RECORD_COLUMNS} FROM background_migrations \
                     WHERE id = $1 AND worker_id = $2 AND lease_epoch = $3 AND status = 'running'"
                );
                let row = ::sqlx::query(::sqlx::AssertSqlSafe(sql))
                    .bind(&lease.migration_id)
                    .bind(&lease.worker_id)
                    .bind(lease.epoch)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(Self::sql_err("re-read the migration before a batch"))?;
                row.as_ref()
                    .map(decode)
                    .transpose()?
                    .ok_or_else(|| $crate::control::ControlError::LeaseLost(lease.name.clone()))
            }
        }
    };
}

pub(super) use record_queries;
