//! What a migration looks like to a reader of the API or the pages: the row, the figures derived from it, and
//! every value under a secret-looking key replaced by [`MASK`].

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::control::{EventRecord, MigrationRecord, RangeRecord};
use crate::engine::progress::format_duration;

/// What a secret value is shown as.
pub const MASK: &str = "********";

/// Whether an args key looks like it holds a secret (password, secret, token, key, credential).
pub fn looks_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "passwd", "secret", "token", "credential"]
        .iter()
        .any(|word| key.contains(word))
        || key.ends_with("key")
}

/// A copy of `value` with the value of every secret-looking key, at any depth, replaced by [`MASK`].
pub fn mask_secrets(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| {
                    let shown = if looks_secret(key) && !value.is_null() {
                        Value::String(MASK.into())
                    } else {
                        mask_secrets(value)
                    };
                    (key.clone(), shown)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(mask_secrets).collect()),
        other => other.clone(),
    }
}

/// A key range as `status --json`, `show` and the API return it: the row plus whether a worker holds it now and
/// its percent done.
#[derive(Debug, Clone, Serialize)]
pub struct RangeView {
    #[serde(flatten)]
    range: RangeRecord,
    /// A worker holds it now (not done, lease not expired).
    pub held: bool,
    /// Completion in percent, if known.
    pub percent: Option<f64>,
}

impl RangeView {
    /// The range.
    pub fn range(&self) -> &RangeRecord {
        &self.range
    }

    /// The views of `ranges`, as of now.
    pub fn all(ranges: &[RangeRecord]) -> Vec<RangeView> {
        let now = Utc::now();
        ranges
            .iter()
            .map(|range| RangeView {
                held: range.is_held(now),
                percent: range.percent(),
                range: range.clone(),
            })
            .collect()
    }
}

/// A migration as the API returns it: the row with its args masked, plus percent and ETA.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationView {
    #[serde(flatten)]
    record: MigrationRecord,
    /// Completion in percent, if known.
    pub percent: Option<f64>,
    /// Seconds left at the recent rate, if known.
    pub eta_seconds: Option<f64>,
}

impl MigrationView {
    /// The view of `record`.
    pub fn new(record: &MigrationRecord) -> Self {
        let mut record = record.clone();
        record.args = mask_secrets(&record.args);
        Self {
            percent: record.percent(),
            eta_seconds: record.eta_seconds(),
            record,
        }
    }

    /// The texts the pages show and the live updates replace, keyed by the `data-field` they fill.
    pub fn cells(&self) -> Cells {
        let r = &self.record;
        Cells {
            status: r.status.as_str(),
            percent: self.percent.unwrap_or(0.0),
            percent_text: self.percent.map_or("–".into(), |p| format!("{p:.1}%")),
            rows: format!(
                "{} / {}",
                thousands(r.rows_done),
                r.rows_total.map_or("?".into(), thousands)
            ),
            rate: r
                .rows_per_sec
                .filter(|_| r.status == crate::Status::Running)
                .map_or("–".into(), |rate| {
                    format!("{}/s", thousands(rate.round() as i64))
                }),
            eta: self.eta_seconds.map_or("–".into(), |s| {
                format_duration(std::time::Duration::from_secs_f64(s.max(0.0)))
            }),
            batch: r.batch_size.map_or("–".into(), |b| thousands(b.into())),
            worker: r.worker_id.clone().unwrap_or_default(),
        }
    }
}

/// The live texts of one migration (see [`MigrationView::cells`]).
#[derive(Debug, Clone, Serialize)]
pub struct Cells {
    /// Status name.
    pub status: &'static str,
    /// Completion in percent (0 when unknown), for the bar's width.
    pub percent: f64,
    /// Completion as text.
    pub percent_text: String,
    /// `done / total`.
    pub rows: String,
    /// Recent rate.
    pub rate: String,
    /// Time left.
    pub eta: String,
    /// Batch size.
    pub batch: String,
    /// Lease owner.
    pub worker: String,
}

/// An event with secrets in its details masked.
pub fn masked_event(event: &EventRecord) -> EventRecord {
    let mut event = event.clone();
    event.detail = mask_secrets(&event.detail);
    event
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// A timestamp as the pages show it (UTC, to the second).
pub fn when(at: Option<DateTime<Utc>>) -> String {
    at.map_or("–".into(), |at| {
        at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    })
}

/// A timestamp for a crowded table: `11-25 20:23:26` (UTC; the year is in [`when`]).
pub fn when_short(at: Option<DateTime<Utc>>) -> String {
    at.map_or("–".into(), |at| at.format("%m-%d %H:%M:%S").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_looking_keys_are_masked_at_any_depth_and_others_kept() {
        let args = json!({"batchSize": 10, "password": "p", "nested": {"apiKey": "k", "authToken": 3},
                          "list": [{"clientSecret": "s"}], "keyspace": "kept"});
        assert_eq!(
            mask_secrets(&args),
            json!({"batchSize": 10, "password": MASK, "nested": {"apiKey": MASK, "authToken": MASK},
                   "list": [{"clientSecret": MASK}], "keyspace": "kept"})
        );
    }

    #[test]
    fn thousands_are_separated_by_commas() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(-1000), "-1,000");
    }
}
