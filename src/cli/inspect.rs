//! `bgmigrate status` and `bgmigrate show NAME`.

use std::process::ExitCode;

use bgmigrate::config::Connected;
use bgmigrate::store::describe_uses;
use bgmigrate::web::{RangeView, mask_secrets};
use serde_json::json;

use super::control;
use super::output::{RecordView, ranges_table, status_table};

const RECENT: i64 = 20;

/// Every migration that ever ran.
pub async fn status(connected: &Connected, as_json: bool) -> anyhow::Result<ExitCode> {
    control(connected).ensure_schema().await?;
    let records = control(connected).list().await?;
    if as_json {
        let mut views = Vec::with_capacity(records.len());
        for record in &records {
            let ranges = control(connected).ranges(&record.name).await?;
            views.push(RecordView::new(record, &ranges));
        }
        println!("{}", serde_json::to_string_pretty(&views)?);
    } else if records.is_empty() {
        println!(
            "no background migrations registered yet (run `bgmigrate migrate` or start a worker)"
        );
    } else {
        println!("{}", status_table(&records));
    }
    Ok(ExitCode::SUCCESS)
}

/// One migration in detail.
pub async fn show(connected: &Connected, name: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    control(connected).ensure_schema().await?;
    let record = control(connected).get(name).await?;
    let batches = control(connected).batches(name, RECENT).await?;
    let events: Vec<_> = control(connected)
        .events(name, RECENT)
        .await?
        .into_iter()
        .map(|mut event| {
            event.detail = mask_secrets(&event.detail);
            event
        })
        .collect();
    let ranges = control(connected).ranges(name).await?;
    let stores = connected.stores.used_by(&record.definition);
    if as_json {
        let view = json!({
            "migration": RecordView::new(&record, &ranges),
            "stores": stores,
            "batches": batches,
            "events": events,
        });
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}", status_table(std::slice::from_ref(&record)));
    println!("\nstores: {}", describe_uses(&stores));
    println!("args:  {}", mask_secrets(&record.args));
    println!("state: {}", record.state);
    println!(
        "attempts: {}  started: {}  finished: {}  failed: {}",
        record.attempts,
        record.started_at.map_or("-".into(), |t| t.to_rfc3339()),
        record.finished_at.map_or("-".into(), |t| t.to_rfc3339()),
        record.failed_at.map_or("-".into(), |t| t.to_rfc3339())
    );
    if let Some(reason) = &record.failed_reason {
        println!("failed reason: {reason}");
    }
    if let Some(reason) = &record.throttled {
        println!("holding back: {reason}");
    }
    if let Some(reason) = &record.unreadable {
        println!("unreadable: {reason}");
    }
    if !ranges.is_empty() {
        println!("\nkey ranges (parallelism):");
        print!("{}", ranges_table(&RangeView::all(&ranges)));
    }
    println!("\nrecent batches (newest first):");
    println!(
        "  {:<32} {:>8} {:>10} {:>10}  cursor",
        "started", "ms", "rows", "batch_size"
    );
    for batch in &batches {
        println!(
            "  {:<32} {:>8} {:>10} {:>10}  {}",
            batch.started_at.to_rfc3339(),
            batch.duration_ms,
            batch.rows,
            batch.batch_size,
            batch.state
        );
    }
    println!("\nevents (newest first):");
    for event in &events {
        println!(
            "  {}  {:<20} {:<28} {}",
            event.at.to_rfc3339(),
            event.kind,
            event.actor,
            event.detail
        );
    }
    Ok(ExitCode::SUCCESS)
}
