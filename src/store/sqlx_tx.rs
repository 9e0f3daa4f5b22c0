//! [`SqlTx`](super::SqlTx) over a sqlx transaction, written once for both drivers: the Postgres and SQLite
//! implementations differ only in the driver's type names, and sqlx's generic executor bounds would cost more lines
//! than the copy they replace.

/// Implements [`SqlTx`](super::SqlTx) for `$tx`, a struct whose `tx` field is a `sqlx::Transaction<'static, $db>`
/// and whose `database` field is its store's [`DatabaseId`](super::DatabaseId) (`$args`: the driver's argument
/// buffer; `$bind_array`: how the driver binds a [`SqlParam::TextArray`](super::SqlParam::TextArray);
/// `$unflushed`: the statement, if any, that makes the transaction's commit not wait for the disk).
macro_rules! sql_tx_over_sqlx {
    ($tx:ty, $db:ty, $args:ty, $bind_array:path, $unflushed:expr) => {
        fn bind_all<'q>(
            mut query: ::sqlx::query::Query<'q, $db, $args>,
            params: &'q [$crate::store::SqlParam],
        ) -> ::sqlx::query::Query<'q, $db, $args> {
            for param in params {
                query = match param {
                    $crate::store::SqlParam::Text(text) => query.bind(text.as_str()),
                    $crate::store::SqlParam::Int(n) => query.bind(*n),
                    $crate::store::SqlParam::Float(x) => query.bind(*x),
                    $crate::store::SqlParam::Null => query.bind(None::<String>),
                    $crate::store::SqlParam::TextArray(values) => $bind_array(query, values),
                };
            }
            query
        }

        /// Runs `sql` on `executor` (a transaction, or the pool for a statement on its own) and returns its rows as
        /// text.
        async fn fetch_all_text_on<'c, E>(
            executor: E,
            sql: &str,
            params: &[$crate::store::SqlParam],
        ) -> Result<Vec<Vec<Option<String>>>, $crate::store::StoreError>
        where
            E: ::sqlx::Executor<'c, Database = $db>,
        {
            let query = bind_all(::sqlx::query(::sqlx::AssertSqlSafe(sql.to_owned())), params);
            let started = ::std::time::Instant::now();
            let rows = query
                .fetch_all(executor)
                .await
                .map_err($crate::store::StoreError::running(sql))?;
            $crate::store::log_if_slow(sql, started, rows.len() as u64);
            rows.iter()
                .map($crate::store::texts_of)
                .collect::<Result<_, _>>()
                .map_err($crate::store::StoreError::sql("read rows as text"))
        }

        #[::async_trait::async_trait]
        impl $crate::store::SqlTx for $tx {
            async fn execute(
                &mut self,
                sql: &str,
                params: &[$crate::store::SqlParam],
            ) -> Result<u64, $crate::store::StoreError> {
                let query = bind_all(::sqlx::query(::sqlx::AssertSqlSafe(sql.to_owned())), params);
                let started = ::std::time::Instant::now();
                let done = query
                    .execute(&mut *self.tx)
                    .await
                    .map_err($crate::store::StoreError::running(sql))?;
                $crate::store::log_if_slow(sql, started, done.rows_affected());
                Ok(done.rows_affected())
            }

            async fn fetch_optional_text(
                &mut self,
                sql: &str,
                params: &[$crate::store::SqlParam],
            ) -> Result<Option<Vec<String>>, $crate::store::StoreError> {
                let query = bind_all(::sqlx::query(::sqlx::AssertSqlSafe(sql.to_owned())), params);
                let started = ::std::time::Instant::now();
                let row = query
                    .fetch_optional(&mut *self.tx)
                    .await
                    .map_err($crate::store::StoreError::running(sql))?;
                $crate::store::log_if_slow(sql, started, u64::from(row.is_some()));
                row.map(|row| {
                    (0..::sqlx::Row::len(&row))
                        .map(|i| ::sqlx::Row::try_get::<String, _>(&row, i))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err($crate::store::StoreError::sql("read a key row"))
                })
                .transpose()
            }

            async fn fetch_all_text(
                &mut self,
                sql: &str,
                params: &[$crate::store::SqlParam],
            ) -> Result<Vec<Vec<Option<String>>>, $crate::store::StoreError> {
                fetch_all_text_on(&mut *self.tx, sql, params).await
            }

            async fn fetch_count(
                &mut self,
                sql: &str,
                params: &[$crate::store::SqlParam],
            ) -> Result<i64, $crate::store::StoreError> {
                let query = bind_all(::sqlx::query(::sqlx::AssertSqlSafe(sql.to_owned())), params);
                let started = ::std::time::Instant::now();
                let row = query
                    .fetch_one(&mut *self.tx)
                    .await
                    .map_err($crate::store::StoreError::running(sql))?;
                $crate::store::log_if_slow(sql, started, 1);
                ::sqlx::Row::try_get::<i64, _>(&row, 0)
                    .map_err($crate::store::StoreError::sql("read a count"))
            }

            async fn execute_script(&mut self, sql: &str) -> Result<(), $crate::store::StoreError> {
                let started = ::std::time::Instant::now();
                let done = ::sqlx::raw_sql(::sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(&mut *self.tx)
                    .await
                    .map_err($crate::store::StoreError::running(sql))?;
                $crate::store::log_if_slow(sql, started, done.rows_affected());
                Ok(())
            }

            async fn commit(self: Box<Self>) -> Result<(), $crate::store::StoreError> {
                self.tx
                    .commit()
                    .await
                    .map_err($crate::store::StoreError::sql("commit the batch"))
            }

            async fn commit_unflushed(
                mut self: Box<Self>,
            ) -> Result<(), $crate::store::StoreError> {
                let unflushed: Option<&str> = $unflushed;
                if let Some(statement) = unflushed {
                    ::sqlx::query(statement)
                        .execute(&mut *self.tx)
                        .await
                        .map_err($crate::store::StoreError::running(statement))?;
                }
                self.commit().await
            }

            fn database(&self) -> &$crate::store::DatabaseId {
                &self.database
            }
        }
    };
}

pub(super) use sql_tx_over_sqlx;
