//! Terminal progress bars: one per running migration, fed by the runner's progress updates (`worker`, `demo`).

use std::collections::HashMap;

use bgmigrate::engine::ProgressUpdate;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio::sync::broadcast;

/// One terminal progress bar per running migration.
pub async fn draw(mut updates: broadcast::Receiver<ProgressUpdate>) {
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let mut by_name: HashMap<String, ProgressBar> = HashMap::new();
    loop {
        let update = match updates.recv().await {
            Ok(update) => update,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let bar = by_name.entry(update.name.clone()).or_insert_with(|| {
            let bar = bars.add(ProgressBar::new(0));
            bar.set_style(style.clone());
            bar.set_prefix(update.name.clone());
            bar
        });
        bar.set_length(update.rows_total.unwrap_or(0).max(update.rows_done));
        bar.set_position(update.rows_done);
        let eta = update
            .eta()
            .map_or("?".into(), bgmigrate::engine::progress::format_duration);
        bar.set_message(format!(
            "{:.0}/s eta {eta} batch {}",
            update.rows_per_sec, update.batch_size
        ));
        if update.finished {
            bar.finish();
        }
    }
}
