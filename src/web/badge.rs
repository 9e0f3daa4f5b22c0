//! `/badge.svg`: the status indicator as a small SVG a host application can embed.

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;

use super::Shared;
use super::error::ApiError;
use super::indicator::{Indicator, IndicatorState};

/// The badge's colour for a state.
pub fn colour(state: IndicatorState) -> &'static str {
    match state {
        IndicatorState::Failed => "#c62828",
        IndicatorState::DisabledWithPending => "#e65100",
        IndicatorState::Running => "#1565c0",
        IndicatorState::Pending => "#616161",
        IndicatorState::Finished => "#2e7d32",
    }
}

/// The badge's right-hand text.
fn label(indicator: &Indicator) -> String {
    match indicator.state {
        IndicatorState::Failed => format!("{} failed", indicator.failed.len()),
        IndicatorState::DisabledWithPending => "disabled, pending".into(),
        IndicatorState::Running => format!("{} running", indicator.running.len()),
        IndicatorState::Pending => format!("{} pending", indicator.pending.len()),
        IndicatorState::Finished => "all finished".into(),
    }
}

/// Draws the badge (text width estimated at 7 px per character, as shields-style badges do).
pub fn svg(indicator: &Indicator) -> String {
    let left = "migrations";
    let right = label(indicator);
    let (lw, rw) = (left.len() * 7 + 10, right.len() * 7 + 10);
    let width = lw + rw;
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20" role="img" aria-label="{left}: {right}"><title>{title}</title><rect width="{lw}" height="20" fill="#555"/><rect x="{lw}" width="{rw}" height="20" fill="{colour}"/><g fill="#fff" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11"><text x="5" y="14">{left}</text><text x="{rx}" y="14">{right}</text></g></svg>"##,
        title = maud::html! { (indicator.message) }.into_string(),
        colour = colour(indicator.state),
        rx = lw + 5,
    )
}

/// `GET /badge.svg`.
pub async fn badge(
    State(state): State<Shared>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    state.access.require_read(&headers)?;
    let snapshot = state.snapshot().await?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        svg(&snapshot.indicator),
    ))
}
