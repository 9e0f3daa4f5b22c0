//! `GET /api/events`: server-sent events. Each `snapshot` event carries the indicator and the live texts of every
//! migration; one is sent at once, then whenever something changed (woken by the control store's change signal,
//! and polled every second because batch progress does not signal).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::badge::colour;
use super::error::ApiError;
use super::view::MigrationView;
use super::{Shared, WebState};

/// How often the stream looks for changes that did not signal.
const POLL: Duration = Duration::from_secs(1);

/// The payload of one `snapshot` event, or `None` when the control store cannot be read right now.
async fn snapshot(state: &WebState) -> Option<Value> {
    match state.snapshot().await {
        Ok(snapshot) => Some(json!({
            "colour": colour(snapshot.indicator.state),
            "indicator": snapshot.indicator,
            "migrations": snapshot.records.iter().map(|record| {
                json!({"name": record.name, "cells": MigrationView::new(record).cells()})
            }).collect::<Vec<_>>(),
        })),
        Err(err) => {
            tracing::warn!(error = %err, "live updates: cannot read the control store; retrying");
            None
        }
    }
}

struct Cursor {
    state: Shared,
    changes: Option<Arc<Notify>>,
    last: Option<Value>,
}

/// The next snapshot that differs from the last one sent.
async fn next_change(mut cursor: Cursor) -> Option<(Result<Event, Infallible>, Cursor)> {
    loop {
        if cursor.last.is_some() {
            match &cursor.changes {
                Some(changes) => {
                    tokio::select! {
                        _ = changes.notified() => {}
                        _ = tokio::time::sleep(POLL) => {}
                    }
                }
                None => tokio::time::sleep(POLL).await,
            }
        }
        let Some(current) = snapshot(&cursor.state).await else {
            cursor.last.get_or_insert(Value::Null);
            continue;
        };
        if cursor.last.as_ref() != Some(&current) {
            let event = Event::default().event("snapshot").data(current.to_string());
            cursor.last = Some(current);
            return Some((Ok(event), cursor));
        }
    }
}

/// `GET /api/events`.
pub async fn events(
    State(state): State<Shared>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    state.access.require_read(&headers)?;
    let changes = state.control.changes().await.ok();
    let cursor = Cursor {
        state,
        changes,
        last: None,
    };
    Ok(
        Sse::new(futures_util::stream::unfold(cursor, next_change))
            .keep_alive(KeepAlive::default()),
    )
}
