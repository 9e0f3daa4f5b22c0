//! Plain-text tables and JSON views for `status` and `show`.

use bgmigrate::control::{MigrationRecord, RangeRecord};
use bgmigrate::engine::progress::format_duration;
use bgmigrate::web::RangeView;
use serde::Serialize;

/// A record plus the figures derived from it (percent, ETA), as `status --json` prints it; secret-looking args
/// values are masked as in the UI.
#[derive(Serialize)]
pub struct RecordView {
    #[serde(flatten)]
    record: MigrationRecord,
    percent: Option<f64>,
    eta_seconds: Option<f64>,
    /// Its key ranges (`parallelism` > 1), each with its progress and worker; absent while it runs as one stream.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ranges: Vec<RangeView>,
}

impl RecordView {
    /// Wraps a record and its key ranges.
    pub fn new(record: &MigrationRecord, ranges: &[RangeRecord]) -> Self {
        let mut masked = record.clone();
        masked.args = bgmigrate::web::mask_secrets(&record.args);
        Self {
            record: masked,
            percent: record.percent(),
            eta_seconds: record.eta_seconds(),
            ranges: RangeView::all(ranges),
        }
    }
}

/// One line per key range: its progress, rate and worker.
pub fn ranges_table(ranges: &[RangeView]) -> String {
    let mut out = format!(
        "  {:>5} {:>8} {:>22} {:>10}  {:<8} WORKER\n",
        "RANGE", "PROGRESS", "ROWS", "RATE", "STATE"
    );
    for view in ranges {
        let range = view.range();
        let state = match (range.done, view.held) {
            (true, _) => "done",
            (false, true) => "running",
            (false, false) => "waiting",
        };
        let rows = format!(
            "{}/{}",
            range.rows_done,
            range.rows_total.map_or("?".into(), |t| t.to_string())
        );
        out.push_str(&format!(
            "  {:>5} {:>8} {:>22} {:>10}  {:<8} {}\n",
            range.no,
            view.percent.map_or("-".into(), |p| format!("{p:.1}%")),
            rows,
            range
                .rows_per_sec
                .filter(|_| view.held)
                .map_or("-".into(), |r| format!("{r:.0}/s")),
            state,
            range.worker_id.as_deref().unwrap_or("-"),
        ));
    }
    out
}

/// One line per migration, aligned.
pub fn status_table(records: &[MigrationRecord]) -> String {
    let header = [
        "NAME",
        "SCRIPT",
        "STATUS",
        "PROGRESS",
        "ROWS",
        "RATE",
        "ETA",
        "BATCH",
        "WORKER / REASON",
    ];
    let rows: Vec<[String; 9]> = records
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.script.clone(),
                r.status.to_string(),
                r.percent().map_or("-".into(), |p| format!("{p:.1}%")),
                format!(
                    "{}/{}",
                    r.rows_done,
                    r.rows_total.map_or("?".into(), |t| t.to_string())
                ),
                r.rows_per_sec
                    .map_or("-".into(), |rate| format!("{rate:.0}/s")),
                r.eta_seconds().map_or("-".into(), |s| {
                    format_duration(std::time::Duration::from_secs_f64(s))
                }),
                r.batch_size.map_or("-".into(), |b| b.to_string()),
                r.failed_reason
                    .clone()
                    .or_else(|| r.unreadable.clone())
                    .or_else(|| r.throttled.as_ref().map(|t| format!("holding back: {t}")))
                    .or_else(|| r.worker_id.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = vec![line(header.to_vec())];
    out.extend(
        rows.iter()
            .map(|row| line(row.iter().map(String::as_str).collect())),
    );
    out.join("\n")
}
