//! Fast migrations: schema changes applied synchronously by `migrate` and `web`, held back at a deployment stop.

pub mod clickhouse;
pub mod postgres;
pub mod stops;
