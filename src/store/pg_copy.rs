//! Rows from one Postgres database into another at `COPY` speed: `COPY (<select>) TO STDOUT` on the source streams
//! straight into `COPY <table> FROM STDIN` inside the target's transaction, in Postgres's text format, without a row
//! being decoded in the worker (what `psql -c "COPY ... TO STDOUT" | psql -c "COPY ... FROM STDIN"` does).
//!
//! `COPY` takes no bind parameters, so the select's parameters travel as transaction-local settings
//! (`set_config(name, value, true)`) that the select reads back with `current_setting(name)`: values are never
//! spliced into SQL.

use futures_util::TryStreamExt;

use super::StoreError;
use super::postgres::{PgStore, PgTx};

/// What goes to the target at once: the source sends one message per row, and one write per row would cost a
/// system call each.
const CHUNK_BYTES: usize = 256 * 1024;

/// The setting that carries the `n`th (1-based) parameter of a piped select: read it with
/// `current_setting('bgmigrate.param_<n>')` and cast it to its type.
pub fn setting(n: usize) -> String {
    format!("current_setting('bgmigrate.param_{n}')")
}

/// Streams `copy_out` (a `COPY (...) TO STDOUT`, reading its parameters through [`setting`]) from `source`, run in a
/// read-only transaction with `params` set, into `copy_in` (a `COPY ... FROM STDIN`) on the target's transaction
/// `target`. Returns the rows the target received and the bytes that travelled.
pub async fn pipe(
    source: &PgStore,
    params: &[String],
    copy_out: &str,
    target: &mut PgTx,
    copy_in: &str,
) -> Result<(u64, u64), StoreError> {
    let mut from = source
        .pool()
        .begin_with("BEGIN READ ONLY")
        .await
        .map_err(StoreError::sql("begin a transaction"))?;
    if !params.is_empty() {
        let names: Vec<String> = (1..=params.len())
            .map(|n| format!("bgmigrate.param_{n}"))
            .collect();
        sqlx::query("SELECT set_config(s.name, s.value, true) FROM unnest($1::text[], $2::text[]) AS s(name, value)")
            .bind(&names)
            .bind(params)
            .execute(&mut *from)
            .await
            .map_err(StoreError::sql("set the copy's parameters"))?;
    }
    // Built when an error happens, not per message: the stream yields one message per row.
    let out_failed = |err| StoreError::running(copy_out)(err);
    let in_failed = |err| StoreError::running(copy_in)(err);
    let mut rows_out = from.copy_out_raw(copy_out).await.map_err(out_failed)?;
    let mut sink = target
        .connection()
        .copy_in_raw(copy_in)
        .await
        .map_err(in_failed)?;
    let mut buffer: Vec<u8> = Vec::with_capacity(CHUNK_BYTES + 64 * 1024);
    let mut bytes = 0u64;
    let streamed: Result<(), StoreError> = async {
        while let Some(chunk) = rows_out.try_next().await.map_err(out_failed)? {
            bytes += chunk.len() as u64;
            buffer.extend_from_slice(&chunk);
            if buffer.len() >= CHUNK_BYTES {
                sink.send(buffer.as_slice()).await.map_err(in_failed)?;
                buffer.clear();
            }
        }
        if !buffer.is_empty() {
            sink.send(buffer.as_slice()).await.map_err(in_failed)?;
        }
        Ok(())
    }
    .await;
    if let Err(err) = streamed {
        // Ends the target's COPY cleanly (its transaction then rolls back); the source's transaction is dropped.
        let _ = sink.abort("the source's COPY failed").await;
        return Err(err);
    }
    let rows = sink.finish().await.map_err(in_failed)?;
    drop(rows_out);
    from.commit()
        .await
        .map_err(StoreError::sql("end the source's read"))?;
    Ok((rows, bytes))
}
