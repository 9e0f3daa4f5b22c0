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
//! Layout: `auth` tokens and CSRF; `session` login sessions; `input` names and args refused at the edge; `guard`
//! the host and origin checks, body limits, security headers and JSON errors around every request; `serve` a
//! listener loop with connection timeouts; `error` the JSON error type; `api` the JSON handlers; `pages` (and
//! `login`) the HTML handlers, drawn by `layout`, `list`, `detail` (with the args editor of `forms`) and `chart`;
//! `indicator` the status indicator; `live` the SSE stream; `badge` the SVG badge; `stops` the deployment stops that wait; [`metrics`] the Prometheus
//! endpoint; `view` what a migration looks like to a reader (derived figures, secrets masked).

mod api;
mod auth;
mod badge;
mod chart;
mod detail;
mod error;
mod forms;
mod guard;
mod indicator;
mod input;
mod layout;
mod list;
mod live;
mod login;
pub mod metrics;
mod pages;
mod ranges;
mod serve;
mod session;
mod stops;
mod view;

use std::sync::Arc;

use std::time::Duration;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post, put};

use crate::control::OperatorView;

pub use self::auth::MIN_TOKEN_LEN;
pub use self::error::ApiError;
pub use self::guard::AllowedHosts;
pub use self::indicator::{Indicator, IndicatorState};
pub use self::input::{args_problem, name_problem};
pub use self::serve::{HEADER_TIMEOUT, serve};
pub use self::session::DEFAULT_LIFETIME as DEFAULT_SESSION_LIFETIME;
pub use self::view::{MASK, RangeView, looks_secret, mask_secrets};

/// bgmigrate's own version, shown in the header beside the host application's.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the web surface needs: the control store, the tokens, and what the host tells about itself.
pub struct WebState {
    control: Arc<dyn OperatorView>,
    app_version: Option<String>,
    background_enabled: bool,
    access: auth::Access,
    allowed_hosts: AllowedHosts,
    logins: login::Throttle,
    migrations_dir: Option<std::path::PathBuf>,
    stores: crate::store::Stores,
}

impl WebState {
    /// A state over `control` with no tokens (read-only: mutations are refused until an admin token is set).
    pub fn new(control: Arc<dyn OperatorView>) -> Self {
        Self {
            control,
            app_version: None,
            background_enabled: true,
            access: auth::Access::new(None, None),
            allowed_hosts: AllowedHosts::default(),
            logins: login::Throttle::default(),
            migrations_dir: None,
            stores: crate::store::Stores::new(),
        }
    }

    /// The stores this process has configured, so that a migration's page and API record name the stores it uses
    /// with their kind and location (never a credential); without them only the names are shown.
    pub fn stores(mut self, stores: crate::store::Stores) -> Self {
        self.stores = stores;
        self
    }

    /// The host application's version, shown in the header (e.g. `myapp 2.4.1`).
    pub fn app_version(mut self, version: impl Into<String>) -> Self {
        self.app_version = Some(version.into());
        self
    }

    /// The token every mutating call needs (`BGMIGRATE_ADMIN_TOKEN`); `None` or empty refuses all mutations.
    pub fn admin_token(mut self, token: Option<String>) -> Self {
        self.access.set_admin(token);
        self
    }

    /// The token pages and the read API need (`BGMIGRATE_READ_TOKEN`); `None` or empty leaves them open.
    pub fn read_token(mut self, token: Option<String>) -> Self {
        self.access.set_read(token);
        self
    }

    /// How long a login session lasts from login ([`DEFAULT_SESSION_LIFETIME`], 12 h, unless set). Sessions live in
    /// this process's memory: a restart logs everyone out.
    pub fn session_lifetime(mut self, lifetime: Duration) -> Self {
        self.access.set_session_lifetime(lifetime);
        self
    }

    /// Which `Host` names requests may carry besides IP addresses and `localhost` (`BGMIGRATE_ALLOWED_HOSTS`):
    /// the name the operators' browsers use, e.g. behind a reverse proxy that passes `Host` on.
    pub fn allowed_hosts(mut self, hosts: AllowedHosts) -> Self {
        self.allowed_hosts = hosts;
        self
    }

    /// The migrations directory whose fast migrations' deployment stops (`requires_finished`) the API
    /// (`/api/deployment-stops`) and the list page show while they wait; none are shown without it.
    pub fn migrations_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.migrations_dir = Some(dir.into());
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
        .route("/deployment-stops", get(stops::api))
        .route("/session", get(api::session))
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
        .layer(from_fn_with_state(state.clone(), guard::check))
        .with_state(state)
}

/// `/metrics` alone, for a standalone worker (`worker --metrics-bind`): the same exporter and the same checks
/// (read token, host) as in [`router`].
pub fn metrics_router(state: WebState) -> Router {
    metrics::install();
    let state: Shared = Arc::new(state);
    Router::new()
        .route("/metrics", get(metrics::endpoint))
        .fallback(api::not_found)
        .layer(from_fn_with_state(state.clone(), guard::check))
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
