//! Deployment stops as the API and the list page show them: which fast migrations wait on which unfinished
//! background migrations (read from the migrations directory the host gave, against the control table).

use std::path::{Path, PathBuf};

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use maud::{Markup, html};
use serde::Serialize;

use super::Shared;
use super::error::ApiError;
use crate::control::MigrationRecord;
use crate::fast::stops::{self, Blocked};

/// What `GET /api/deployment-stops` returns.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StopsView {
    /// Each fast migration held back, with the unfinished background migrations it waits on (paths relative to
    /// the migrations directory).
    pub waiting: Vec<Blocked>,
    /// Why the migrations directory could not be read (a malformed header, say); null when it could.
    pub problem: Option<String>,
}

/// The stops of `dir` that wait now; without a directory (a host that did not give one), none.
pub async fn of(dir: Option<&Path>, records: &[MigrationRecord]) -> StopsView {
    let Some(dir) = dir else {
        return StopsView::default();
    };
    let owned: PathBuf = dir.to_owned();
    let declared = tokio::task::spawn_blocking(move || stops::declared(&owned))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    match declared {
        Ok(declared) => {
            let mut waiting = stops::waiting(&declared, records);
            for blocked in &mut waiting {
                if let Ok(relative) = Path::new(&blocked.file).strip_prefix(dir) {
                    blocked.file = relative.display().to_string();
                }
            }
            StopsView {
                waiting,
                problem: None,
            }
        }
        Err(problem) => StopsView {
            waiting: Vec::new(),
            problem: Some(problem),
        },
    }
}

/// `GET /api/deployment-stops`.
pub async fn api(
    State(state): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<StopsView>, ApiError> {
    state.access.require_read(&headers)?;
    let records = state.control.list().await?;
    Ok(Json(of(state.migrations_dir.as_deref(), &records).await))
}

/// The notice on the list page; nothing when no fast migration waits.
pub fn notice(base: &str, view: &StopsView) -> Markup {
    html! {
        @if let Some(problem) = &view.problem {
            div.notice.err role="status" { strong { "Deployment stops unknown: " } (problem) }
        }
        @for blocked in &view.waiting {
            @let names: Vec<&str> = blocked.waiting_on.iter().map(|u| u.name.as_str()).collect();
            div.notice.err role="status" data-stop=(blocked.file) {
                strong { "Deployment stop: " }
                "fast migration " code { (blocked.file) } " (and those after it) waits until "
                @for (i, unfinished) in blocked.waiting_on.iter().enumerate() {
                    @if i > 0 { ", " }
                    a href={ (base) "/migrations/" (super::layout::encode(&unfinished.name)) } { code { (unfinished.name) } }
                    " (" (unfinished.status)
                    @if let Some(percent) = unfinished.percent { ", " (format!("{percent:.1}%")) }
                    ")"
                }
                " finished. "
                code { "bgmigrate finalize " (names.join(" ")) } " finishes them now."
            }
        }
    }
}
