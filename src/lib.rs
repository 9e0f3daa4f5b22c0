#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod args;
pub mod clickhouse;
pub mod config;
pub mod control;
pub mod definition;
pub mod engine;
pub mod fast;
pub mod kinds;
pub mod migration;
pub mod registry;
pub mod status;
pub mod store;
pub mod throttle;
pub mod web;

pub use args::Args;
pub use control::{ControlError, ControlStore, SqlControlStore};
pub use definition::Registration;
pub use engine::{Runner, RunnerConfig, RunnerError, RunnerHandle};
pub use kinds::builtin_registry;
pub use migration::{Batch, BatchOutcome, Migration, MigrationError};
pub use registry::Registry;
pub use status::{Action, Status};
pub use store::{PgStore, SqlStore, SqliteStore, Stores};
