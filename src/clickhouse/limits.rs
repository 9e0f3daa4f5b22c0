//! Resource limits sent with a heavy ClickHouse statement (a rewrite's `INSERT ... SELECT`) as query settings, from
//! the migration's `args`: without them one chunk may take every core and as much memory as the server allows.
//!
//! `max_insert_threads` does not exist on 18.x (a server refuses a setting it does not know), so it is sent only
//! where `system.settings` lists it ([`QueryLimits::settings`]).

use serde_json::{Map, Value};

use crate::args::{ArgsError, read_u64};

/// The limits, each an `args` key with a default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// `maxMemoryUsage` (default 2 GiB): `max_memory_usage`, bytes one chunk may use; a chunk that needs more is
    /// split by key range and retried.
    pub max_memory_usage: u64,
    /// `maxThreads` (default 2): `max_threads`, so a chunk leaves the server's other cores to the foreground.
    pub max_threads: u64,
    /// `maxInsertThreads` (default 1): `max_insert_threads`, where the server has it.
    pub max_insert_threads: u64,
    /// `maxBlockSize` (default 65,536, ClickHouse's own): `max_block_size`, rows per block read.
    pub max_block_size: u64,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            max_memory_usage: 2 * 1024 * 1024 * 1024,
            max_threads: 2,
            max_insert_threads: 1,
            max_block_size: 65_536,
        }
    }
}

impl QueryLimits {
    /// Reads the limits from `args`, naming the key and range of a bad one.
    pub fn parse(raw: &Map<String, Value>) -> Result<QueryLimits, ArgsError> {
        let d = QueryLimits::default();
        Ok(QueryLimits {
            max_memory_usage: read_u64(raw, "maxMemoryUsage", (1024 * 1024, 1 << 50))?
                .unwrap_or(d.max_memory_usage),
            max_threads: read_u64(raw, "maxThreads", (1, 1024))?.unwrap_or(d.max_threads),
            max_insert_threads: read_u64(raw, "maxInsertThreads", (1, 1024))?
                .unwrap_or(d.max_insert_threads),
            max_block_size: read_u64(raw, "maxBlockSize", (1, 100_000_000))?
                .unwrap_or(d.max_block_size),
        })
    }

    /// The query settings; `max_insert_threads` only when `insert_threads` (the server knows it).
    pub fn settings(&self, insert_threads: bool) -> Vec<(&'static str, String)> {
        let mut settings = vec![
            ("max_memory_usage", self.max_memory_usage.to_string()),
            ("max_threads", self.max_threads.to_string()),
            ("max_block_size", self.max_block_size.to_string()),
        ];
        if insert_threads {
            settings.push(("max_insert_threads", self.max_insert_threads.to_string()));
        }
        settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn limits_default_and_a_bad_one_names_its_key_and_range() {
        let limits = QueryLimits::parse(json!({"maxThreads": 4}).as_object().unwrap()).unwrap();
        assert_eq!(
            limits,
            QueryLimits {
                max_threads: 4,
                ..QueryLimits::default()
            }
        );
        let err =
            QueryLimits::parse(json!({"maxMemoryUsage": 1000}).as_object().unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "args.maxMemoryUsage must be an integer from 1048576 to 1125899906842624, got 1000"
        );
        let err =
            QueryLimits::parse(json!({"maxBlockSize": "big"}).as_object().unwrap()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("args.maxBlockSize must be an integer"),
            "{err}"
        );
    }

    #[test]
    fn max_insert_threads_is_sent_only_to_servers_that_know_it() {
        let limits = QueryLimits::default();
        let names = |insert: bool| -> Vec<&str> {
            limits
                .settings(insert)
                .into_iter()
                .map(|(name, _)| name)
                .collect()
        };
        assert_eq!(
            names(false),
            ["max_memory_usage", "max_threads", "max_block_size"]
        );
        assert!(names(true).contains(&"max_insert_threads"));
    }
}
