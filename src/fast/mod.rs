//! Fast migrations: schema changes applied synchronously at `migrate` / `web` start, in order, once.

pub mod clickhouse;
pub mod postgres;
