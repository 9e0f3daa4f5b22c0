//! The operator's web surface: server-rendered pages, the JSON API, server-sent events, an SVG badge and
//! `/metrics`, as one axum [`Router`] that a host application mounts under a prefix of its own.
//!
//! ```no_run
//! # async fn host(control: std::sync::Arc<dyn bgmigrate::ControlStore>) {
//! let state = bgmigrate::web::WebState::new(control).app_version("myapp 2.4.1");
//! let app = axum::Router::new().nest("/admin/background-migrations", bgmigrate::web::router(state));
//! # let _ = app;
//! # }
//! ```
//!
//! Layout: `auth` tokens, login sessions and CSRF; `error` the JSON error type; `api` the JSON handlers; `pages`
//! (and `login`) the HTML handlers, drawn by `layout`, `list`, `detail` (with the args editor of `forms`) and `chart`;
//! `indicator` the status indicator; `live` the SSE stream; `badge` the SVG badge; [`metrics`] the Prometheus
//! endpoint; `view` what a migration looks like to a reader (derived figures, secrets masked).

mod api;
mod auth;
mod badge;
mod chart;
mod detail;
mod error;
mod forms;
mod indicator;
mod layout;
mod list;
mod live;
mod login;
pub mod metrics;
mod pages;
mod view;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post, put};

use crate::control::ControlStore;

pub use self::error::ApiError;
pub use self::indicator::{Indicator, IndicatorState};
pub use self::view::{MASK, looks_secret, mask_secrets};

/// bgmigrate's own version, shown in the header beside the host application's.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the web surface needs: the control store, the tokens, and what the host tells about itself.
pub struct WebState {
    control: Arc<dyn ControlStore>,
    app_version: Option<String>,
    background_enabled: bool,
    access: auth::Access,
}

impl WebState {
    /// A state over `control` with no tokens (read-only: mutations are refused until an admin token is set).
    pub fn new(control: Arc<dyn ControlStore>) -> Self {
        Self {
            control,
            app_version: None,
            background_enabled: true,
            access: auth::Access::new(None, None),
        }
    }

    /// The host application's version, shown in the header (e.g. `myapp 2.4.1`).
    pub fn app_version(mut self, version: impl Into<String>) -> Self {
        self.app_version = Some(version.into());
        self
    }

    /// The token every mutating call needs (`BGMIGRATE_ADMIN_TOKEN`); `None` or empty refuses all mutations.
    pub fn admin_token(mut self, token: Option<String>) -> Self {
        self.access = auth::Access::new(token, self.access.read_token().map(str::to_owned));
        self
    }

    /// The token pages and the read API need (`BGMIGRATE_READ_TOKEN`); `None` or empty leaves them open.
    pub fn read_token(mut self, token: Option<String>) -> Self {
        self.access = auth::Access::new(self.access.admin_token().map(str::to_owned), token);
        self
    }

    /// Whether workers run background migrations (`ENABLE_BACKGROUND_MIGRATIONS`); when false and some are
    /// pending, every page says the data may be inconsistent.
    pub fn background_enabled(mut self, enabled: bool) -> Self {
        self.background_enabled = enabled;
        self
    }
}

/// Shared by every handler.
type Shared = Arc<WebState>;

/// The whole surface: pages at `/`, the JSON API at `/api/`, `/badge.svg` and `/metrics`. Mount it with
/// [`Router::nest`] under any prefix; links inside pages follow the prefix.
pub fn router(state: WebState) -> Router {
    // Installed now, so the engine's metrics are recorded from the start rather than from the first scrape.
    metrics::install();
    let state: Shared = Arc::new(state);
    let api = Router::new()
        .route("/migrations", get(api::list))
        .route("/migrations/{name}", get(api::show))
        .route("/migrations/{name}/{action}", post(api::act))
        .route("/migrations/{name}/args", put(api::set_args))
        .route("/status", get(api::status))
        .route("/events", get(live::events))
        .route("/openapi.json", get(api::openapi))
        .fallback(api::not_found);
    Router::new()
        .route("/", get(pages::list))
        .route("/migrations/{name}", get(pages::detail))
        .route("/migrations/{name}/confirm/{action}", get(pages::confirm))
        .route("/migrations/{name}/action", post(pages::act))
        .route("/migrations/{name}/args", post(pages::set_args))
        .route("/login", get(login::form).post(login::login))
        .route("/logout", post(login::logout))
        .route("/badge.svg", get(badge::badge))
        .route("/metrics", get(metrics::endpoint))
        .nest("/api", api)
        .fallback(pages::not_found)
        .with_state(state)
}

/// Every row and the indicator computed from them, read once per request.
pub(crate) struct Snapshot {
    records: Vec<crate::control::MigrationRecord>,
    indicator: Indicator,
}

impl WebState {
    async fn snapshot(&self) -> Result<Snapshot, crate::control::ControlError> {
        let records = self.control.list().await?;
        let indicator = Indicator::of(&records, self.background_enabled);
        Ok(Snapshot { records, indicator })
    }
}
