//! The demo's background migration definitions: three backfills and the copy of the traces, written as files a
//! newcomer can read and edit in `bgmigrate-demo/migrations/background/`.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{ANALYTICS_STORE, CopyTarget};

/// The `[args]` header of the demo's definitions, with why they sleep between batches.
const PACED: &str = "# sleepMs paces the demo so there is something to watch; try:\n\
                     #   bgmigrate set-args NAME '{\"sleepMs\": 0, \"batchSize\": 20000}'\n[args]\n";

/// The demo's background migrations: `(file name, definition)` for `store`, the copy into `target`. Each is a file
/// a newcomer can read and edit in `bgmigrate-demo/migrations/background/`.
fn definitions(store: &str, target: CopyTarget) -> Vec<(&'static str, String)> {
    vec![
        (
            "20241024_1216_add_generations_cost_backfill",
            format!(
                "# Total cost of every generation, from its input and output costs.\n\
                 kind  = \"backfill\"\nstore = \"{store}\"\ntable = \"observations\"\nkey   = [\"id\"]\n\
                 set   = {{ total_cost = \"coalesce(input_cost, 0) + coalesce(output_cost, 0)\" }}\n\
                 where = \"type = 'GENERATION'\"\n\n{PACED}batchSize = 2000\nsleepMs = 100\n"
            ),
        ),
        (
            "20241024_1300_traces_created_day_backfill",
            format!(
                "# The day of each trace. About a thousand traces share each created_at: the (created_at, id) key\n\
                 # still advances (a timestamp-only cursor would loop forever here).\n\
                 kind  = \"backfill\"\nstore = \"{store}\"\ntable = \"traces\"\nkey   = [\"created_at\", \"id\"]\n\
                 set   = {{ created_day = \"substr(created_at, 1, 10)\" }}\n\n{PACED}batchSize = 1000\nsleepMs = 50\n"
            ),
        ),
        (
            "20241024_1400_scores_normalized_value_backfill",
            format!(
                "# Scores on a 0..1 scale.\n\
                 kind  = \"backfill\"\nstore = \"{store}\"\ntable = \"scores\"\nkey   = [\"id\"]\n\
                 set   = {{ normalized_value = \"value / 100.0\" }}\n\n{PACED}batchSize = 5000\nsleepMs = 50\n"
            ),
        ),
        copy_definition(store, target),
    ]
}

/// The copy of the traces from `store` into `target`.
fn copy_definition(store: &str, target: CopyTarget) -> (&'static str, String) {
    let (name, what, to_store) = match target {
        CopyTarget::Analytics => (
            "20241024_1730_copy_traces_to_analytics",
            "the analytics store (bgmigrate-demo/analytics.db unless BGMIGRATE_STORE_ANALYTICS says otherwise)",
            ANALYTICS_STORE,
        ),
        CopyTarget::ClickHouse => (
            "20241024_1730_copy_traces_to_clickhouse",
            "ClickHouse (CLICKHOUSE_URL), a ReplacingMergeTree ordered by id",
            "clickhouse",
        ),
    };
    (
        name,
        format!(
            "# The traces, copied into {what}, upserted on id.\n\
             kind = \"copy\"\nfrom = {{ store = \"{store}\", table = \"traces\", key = [\"id\"] }}\n\
             to   = {{ store = \"{to_store}\", table = \"traces\" }}\n\n{PACED}batchSize = 1000\n\
             maxBatchBytes = 4000000\nsleepMs = 50\n"
        ),
    )
}

/// Writes the definitions that are not there yet (a newcomer's edits to them are kept).
pub(super) fn write_definitions(
    migrations: &Path,
    store: &str,
    target: CopyTarget,
) -> anyhow::Result<()> {
    let background = migrations.join("background");
    std::fs::create_dir_all(&background)
        .with_context(|| format!("create {}", background.display()))?;
    for (name, toml) in definitions(store, target) {
        let path: PathBuf = background.join(format!("{name}.toml"));
        if !path.exists() {
            std::fs::write(&path, toml).with_context(|| format!("write {}", path.display()))?;
        }
    }
    Ok(())
}
