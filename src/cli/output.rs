//! Plain-text tables and JSON views for `status` and `show`.

use bgmigrate::control::MigrationRecord;
use bgmigrate::engine::progress::format_duration;
use serde::Serialize;

/// A record plus the figures derived from it (percent, ETA), as `status --json` prints it; secret-looking args
/// values are masked as in the UI.
#[derive(Serialize)]
pub struct RecordView {
    #[serde(flatten)]
    record: MigrationRecord,
    percent: Option<f64>,
    eta_seconds: Option<f64>,
}

impl RecordView {
    /// Wraps a record.
    pub fn new(record: &MigrationRecord) -> Self {
        let mut masked = record.clone();
        masked.args = bgmigrate::web::mask_secrets(&record.args);
        Self {
            record: masked,
            percent: record.percent(),
            eta_seconds: record.eta_seconds(),
        }
    }
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
