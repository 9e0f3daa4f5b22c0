//! The JSON API, the badge, /metrics and the login/CSRF flow over real HTTP, against a real Postgres control store:
//! status codes, the three authentication cases, bad input answered with a 4xx JSON error that says what is wrong
//! (never a 5xx), secrets masked, actors recorded, and the router mounted under a host application's prefix.

mod common;
mod web_support;

use axum::http::{Method, StatusCode};
use bgmigrate::control::EventKind;
use bgmigrate::web::{self, MASK, WebState};
use bgmigrate::{Runner, Status, builtin_registry};
use common::{TestDb, fast_config};
use serde_json::{Value, json};
use web_support::*;

const FIRST: &str = "20240101_0001_first";
const SECOND: &str = "20240101_0002_second";

/// A database with two registered backfills over `items` (not run).
async fn two_migrations(test: &str) -> (TestDb, bgmigrate::config::Connected) {
    let db = TestDb::create(test).await;
    items(&db, 100).await;
    db.define(FIRST, &backfill("items", "batchSize = 10"));
    db.define(SECOND, &backfill("items", "batchSize = 20"));
    let connected = db.connect().await;
    register(&db, &connected).await;
    (db, connected)
}

/// Runs every registered migration to its end with one worker named `worker`.
async fn run_to_the_end(connected: &bgmigrate::config::Connected, worker: &str) {
    Runner::new(
        control(connected),
        builtin_registry(),
        connected.stores.clone(),
        fast_config(worker),
    )
    .spawn()
    .join()
    .await
    .unwrap();
}

/// The list and the detail are JSON with derived figures, and a secret-looking args value never leaves the server.
#[tokio::test]
async fn the_list_and_the_detail_are_json_with_secret_args_masked() {
    let (_db, connected) = two_migrations("api_list_detail").await;
    connected
        .control
        .set_args(FIRST, &json!({"apiToken": "hunter2"}), "test")
        .await
        .unwrap();
    let server = serve(admin_state(&connected)).await;

    let list = get(&format!("{}/api/migrations", server.base), &[]).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    let list = list.json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [FIRST, SECOND]);
    assert_eq!(list[0]["args"], json!({"batchSize": 10, "apiToken": MASK}));
    assert_eq!(list[0]["status"], "pending");

    let detail = get(&format!("{}/api/migrations/{FIRST}", server.base), &[]).await;
    assert_eq!(detail.status, StatusCode::OK);
    assert!(
        !detail.body.contains("hunter2"),
        "the secret leaked: {}",
        detail.body
    );
    let events = detail.json()["events"].clone();
    let edit = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "args_changed")
        .expect("args event");
    assert_eq!(edit["detail"]["after"]["apiToken"], MASK);
    assert_eq!(edit["actor"], "test");
}

/// Mutations answer 401 without a token or with a wrong one, 403 with the read token, and 200 with the admin
/// token, whose use is recorded as the actor.
#[tokio::test]
async fn mutations_need_the_admin_token_and_record_who_used_it() {
    let (_db, connected) = two_migrations("api_auth").await;
    let server = serve(admin_state(&connected).read_token(Some(READER.into()))).await;
    let url = format!("{}/api/migrations/{FIRST}/pause", server.base);

    let none = request(Method::POST, &url, &[], "").await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert!(none.error().contains("admin token"), "{}", none.error());
    let (name, wrong) = bearer("not-the-token");
    let wrong = request(Method::POST, &url, &[(name, &wrong)], "").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let (name, read) = bearer(READER);
    let read = request(Method::POST, &url, &[(name, &read)], "").await;
    assert_eq!(read.status, StatusCode::FORBIDDEN);
    assert_eq!(
        connected.control.get(FIRST).await.unwrap().status,
        Status::Pending,
        "nothing changed yet"
    );

    let (name, admin) = bearer(ADMIN);
    let ok = request(Method::POST, &url, &[(name, &admin)], "").await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(ok.json()["migration"]["status"], "paused");
    let events = connected.control.events(FIRST, 1).await.unwrap();
    assert_eq!(
        (events[0].kind.as_str(), events[0].actor.as_str()),
        ("pause", "api:admin-token")
    );
}

/// With no admin token configured, every mutation is refused with a message that says how to set one.
#[tokio::test]
async fn without_an_admin_token_mutations_are_refused_saying_how_to_set_one() {
    let (_db, connected) = two_migrations("api_no_admin").await;
    let server = serve(WebState::new(connected.control.clone())).await;
    let (name, guess) = bearer("anything");
    for (method, path, body) in [
        (Method::POST, format!("/api/migrations/{FIRST}/cancel"), ""),
        (
            Method::PUT,
            format!("/api/migrations/{FIRST}/args"),
            "{\"batchSize\": 5}",
        ),
    ] {
        let reply = request(
            method,
            &format!("{}{path}", server.base),
            &[(name, &guess)],
            body,
        )
        .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path}");
        assert!(
            reply.error().contains("set BGMIGRATE_ADMIN_TOKEN"),
            "{}",
            reply.error()
        );
    }
    assert_eq!(
        connected.control.get(FIRST).await.unwrap().args,
        json!({"batchSize": 10})
    );
}

/// Malformed JSON, wrong types, unknown names and actions, illegal transitions and bad query parameters each get
/// the 4xx that fits and a JSON error naming the problem; nothing is changed by any of them.
#[tokio::test]
async fn bad_input_gets_a_4xx_json_error_that_names_the_problem_and_changes_nothing() {
    let (db, connected) = two_migrations("api_bad_input").await;
    force_status(&db, SECOND, "finished", None).await;
    let server = serve(admin_state(&connected)).await;
    let (auth, token) = bearer(ADMIN);
    let headers = [(auth, token.as_str())];
    let cases: Vec<(Method, String, &str, StatusCode, &str)> = vec![
        (
            Method::PUT,
            format!("/api/migrations/{FIRST}/args"),
            "{\"batchSize\": ",
            StatusCode::BAD_REQUEST,
            "not valid JSON",
        ),
        (
            Method::PUT,
            format!("/api/migrations/{FIRST}/args"),
            "{\"batchSize\": \"big\"}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "args.batchSize must be an integer from 1 to 10000000",
        ),
        (
            Method::PUT,
            format!("/api/migrations/{FIRST}/args"),
            "{\"sleepMs\": -1}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "args.sleepMs",
        ),
        (
            Method::PUT,
            format!("/api/migrations/{FIRST}/args"),
            "[1, 2]",
            StatusCode::UNPROCESSABLE_ENTITY,
            "must be a JSON object",
        ),
        (
            Method::PUT,
            "/api/migrations/no_such/args".into(),
            "{\"batchSize\": 5}",
            StatusCode::NOT_FOUND,
            "no background migration named \"no_such\"",
        ),
        (
            Method::POST,
            "/api/migrations/no_such/retry".into(),
            "",
            StatusCode::NOT_FOUND,
            "no background migration named",
        ),
        (
            Method::POST,
            format!("/api/migrations/{FIRST}/explode"),
            "",
            StatusCode::NOT_FOUND,
            "use retry, pause, resume or cancel",
        ),
        (
            Method::POST,
            format!("/api/migrations/{SECOND}/pause"),
            "",
            StatusCode::CONFLICT,
            "cannot pause a migration that is finished",
        ),
        (
            Method::POST,
            format!("/api/migrations/{FIRST}/resume"),
            "",
            StatusCode::CONFLICT,
            "resume is allowed only when it is paused",
        ),
        (
            Method::POST,
            format!("/api/migrations/{FIRST}/retry?from_start=maybe"),
            "",
            StatusCode::BAD_REQUEST,
            "from_start must be true or false",
        ),
        (
            Method::POST,
            format!("/api/migrations/{FIRST}/pause?from_start=true"),
            "",
            StatusCode::BAD_REQUEST,
            "retry only",
        ),
        (
            Method::POST,
            format!("/api/migrations/{FIRST}/pause?force=1"),
            "",
            StatusCode::BAD_REQUEST,
            "unknown query parameter",
        ),
        (
            Method::GET,
            "/api/migrations/no_such".into(),
            "",
            StatusCode::NOT_FOUND,
            "no background migration named",
        ),
        (
            Method::GET,
            "/api/nothing/here".into(),
            "",
            StatusCode::NOT_FOUND,
            "openapi.json",
        ),
    ];
    for (method, path, body, status, says) in cases {
        let reply = request(
            method.clone(),
            &format!("{}{path}", server.base),
            &headers,
            body,
        )
        .await;
        assert_eq!(
            reply.status, status,
            "{method} {path} {body}: {}",
            reply.body
        );
        assert!(
            reply.error().contains(says),
            "{method} {path}: {:?} should say {says:?}",
            reply.error()
        );
    }
    let first = connected.control.get(FIRST).await.unwrap();
    assert_eq!(
        (first.status, first.args),
        (Status::Pending, json!({"batchSize": 10}))
    );
    assert_eq!(
        connected.control.get(SECOND).await.unwrap().status,
        Status::Finished
    );
}

/// A good args patch is merged (null removes a key) and its before/after recorded; retry?from_start=true clears
/// the checkpoint.
#[tokio::test]
async fn args_are_merged_and_retry_from_start_clears_the_checkpoint() {
    let (db, connected) = two_migrations("api_args_retry").await;
    let server = serve(admin_state(&connected)).await;
    let (auth, token) = bearer(ADMIN);
    let headers = [(auth, token.as_str()), ("content-type", "application/json")];
    let url = format!("{}/api/migrations/{FIRST}/args", server.base);
    let reply = request(
        Method::PUT,
        &url,
        &headers,
        r#"{"batchSize": 2500, "note": "slow disk"}"#,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let reply = request(Method::PUT, &url, &headers, r#"{"note": null}"#).await;
    assert_eq!(
        reply.json()["migration"]["args"],
        json!({"batchSize": 2500})
    );

    let pool = db.pool().await;
    sqlx::query("UPDATE background_migrations SET status = 'failed', failed_reason = 'boom', state = '{\"cursor\": [\"k000050\"]}', rows_done = 50 WHERE name = $1")
        .bind(FIRST).execute(&pool).await.unwrap();
    let retry = request(
        Method::POST,
        &format!(
            "{}/api/migrations/{FIRST}/retry?from_start=true",
            server.base
        ),
        &headers,
        "",
    )
    .await;
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.body);
    let record = connected.control.get(FIRST).await.unwrap();
    assert_eq!(
        (record.status, record.state, record.rows_done),
        (Status::Pending, json!({}), 0)
    );
    assert_eq!(record.failed_reason, None);
    let events = connected.control.events(FIRST, 10).await.unwrap();
    assert_eq!(events[0].detail["from_start"], true);
    assert!(events.iter().any(|e| e.kind == "args_changed"
        && e.detail["before"] == json!({"batchSize": 2500, "note": "slow disk"})));
}

/// The read token keeps pages and the read API closed to anonymous callers (pages send them to the login form);
/// the OpenAPI document stays readable and lists the contract's paths.
#[tokio::test]
async fn the_read_token_protects_pages_and_the_read_api() {
    let (_db, connected) = two_migrations("api_read_token").await;
    let server = serve(admin_state(&connected).read_token(Some(READER.into()))).await;
    for path in [
        "/api/migrations",
        "/api/status",
        "/badge.svg",
        "/metrics",
        "/api/events",
    ] {
        let reply = get(&format!("{}{path}", server.base), &[]).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(reply.error().contains("BGMIGRATE_READ_TOKEN"), "{path}");
    }
    let (auth, token) = bearer(READER);
    let reply = get(
        &format!("{}/api/migrations", server.base),
        &[(auth, &token)],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let page = get(&format!("{}/", server.base), &[]).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.headers["location"], "/login?next=/");

    let openapi = get(&format!("{}/api/openapi.json", server.base), &[])
        .await
        .json();
    for path in [
        "/api/migrations",
        "/api/migrations/{name}",
        "/api/migrations/{name}/retry",
        "/api/migrations/{name}/pause",
        "/api/migrations/{name}/resume",
        "/api/migrations/{name}/cancel",
        "/api/migrations/{name}/args",
        "/api/status",
        "/api/events",
        "/api/openapi.json",
        "/badge.svg",
        "/metrics",
    ] {
        assert!(openapi["paths"].get(path).is_some(), "OpenAPI lacks {path}");
    }
}

/// The indicator names failed migrations first; with background migrations disabled and some unfinished it says
/// the data may be inconsistent; the badge shows the same state.
#[tokio::test]
async fn the_indicator_names_failures_and_warns_when_disabled_with_pending_work() {
    let (db, connected) = two_migrations("api_indicator").await;
    let server = serve(admin_state(&connected).background_enabled(false)).await;
    let status = get(&format!("{}/api/status", server.base), &[])
        .await
        .json();
    assert_eq!(status["state"], "disabled_with_pending");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("the data may be inconsistent")
    );
    let page = get(&format!("{}/", server.base), &[]).await;
    assert!(
        page.body.contains("ENABLE_BACKGROUND_MIGRATIONS=false"),
        "the banner is missing"
    );

    force_status(&db, FIRST, "failed", Some("validation failed: no table")).await;
    force_status(&db, SECOND, "running", None).await;
    let status = get(&format!("{}/api/status", server.base), &[])
        .await
        .json();
    assert_eq!(status["state"], "failed");
    assert_eq!(status["failed"], json!([FIRST]));
    assert_eq!(status["running"], json!([SECOND]));
    let badge = get(&format!("{}/badge.svg", server.base), &[]).await;
    assert_eq!(badge.headers["content-type"], "image/svg+xml");
    assert!(badge.body.contains("1 failed"), "{}", badge.body);

    force_status(&db, FIRST, "finished", None).await;
    force_status(&db, SECOND, "finished", None).await;
    let status = get(&format!("{}/api/status", server.base), &[])
        .await
        .json();
    assert_eq!(
        (status["state"].as_str(), status["message"].as_str()),
        (Some("finished"), Some("all finished"))
    );
}

/// The latest advice stands: the API gives the newest `advised` event however many events came after it (more than
/// the detail's event list holds), the detail page shows its message until the migration finishes, and a
/// migration without advice has none.
#[tokio::test]
async fn the_latest_advice_stands_on_the_detail_until_the_migration_finishes() {
    let (_db, connected) = two_migrations("api_advice").await;
    let advised = |message: &str| json!({"topic": "checkpoints", "advice": message, "figures": {"checkpoints": 3}});
    let store = &connected.control;
    for message in ["an older advice", "raise max_wal_size towards 4.0 GiB"] {
        store
            .record_event(FIRST, EventKind::Advised, "worker-1", advised(message))
            .await
            .unwrap();
    }
    for n in 0..120 {
        store
            .record_event(
                FIRST,
                EventKind::BatchSizeChanged,
                "worker-1",
                json!({"before": n, "after": n + 1}),
            )
            .await
            .unwrap();
    }
    let server = serve(admin_state(&connected)).await;

    let detail = get(&format!("{}/api/migrations/{FIRST}", server.base), &[])
        .await
        .json();
    assert!(
        detail["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["kind"] != "advised"),
        "the advice is older than the events listed"
    );
    assert_eq!(
        detail["advice"]["detail"],
        advised("raise max_wal_size towards 4.0 GiB")
    );
    assert_eq!(detail["advice"]["actor"], "worker-1");
    let none = get(&format!("{}/api/migrations/{SECOND}", server.base), &[])
        .await
        .json();
    assert_eq!(none["advice"], Value::Null);

    let page = |name: &str| {
        let url = format!("{}/migrations/{name}", server.base);
        async move { get(&url, &[]).await.body }
    };
    let shown = page(FIRST).await;
    assert!(
        shown.contains("<strong>Advice: </strong>raise max_wal_size towards 4.0 GiB ("),
        "{shown}"
    );
    assert!(!shown.contains("an older advice"), "{shown}");
    assert!(!page(SECOND).await.contains("Advice: "));

    run_to_the_end(&connected, "advice-worker").await;
    assert_eq!(
        connected.control.get(FIRST).await.unwrap().status,
        Status::Finished
    );
    assert!(
        !page(FIRST).await.contains("Advice: "),
        "a finished migration's advice no longer stands"
    );
}

/// After a real run, /metrics has the rows processed, the batch duration histogram, the batch size and the status
/// of each migration in Prometheus text.
#[tokio::test]
async fn metrics_count_rows_batches_and_status_per_migration() {
    let (_db, connected) = two_migrations("api_metrics").await;
    web::metrics::install();
    run_to_the_end(&connected, "metrics-worker").await;
    let batches = connected.control.batches(FIRST, 1000).await.unwrap().len();
    let server = serve(admin_state(&connected)).await;
    let text = get(&format!("{}/metrics", server.base), &[]).await.body;
    for line in [
        format!("bgmigrate_rows_processed_total{{migration=\"{FIRST}\"}} 100"),
        format!("bgmigrate_batch_size{{migration=\"{SECOND}\"}} 20"),
        format!("bgmigrate_batch_duration_seconds_count{{migration=\"{FIRST}\"}} {batches}"),
        format!("bgmigrate_migration_status{{migration=\"{FIRST}\",status=\"finished\"}} 1"),
        format!("bgmigrate_migration_status{{migration=\"{FIRST}\",status=\"running\"}} 0"),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    assert!(text.contains(
        "bgmigrate_batch_duration_seconds_bucket{migration=\"20240101_0001_first\",le=\"0.1\"}"
    ));
}

/// Mounted under a host application's prefix, pages link inside the prefix and the API answers there.
#[tokio::test]
async fn the_router_works_under_a_host_applications_prefix() {
    let (_db, connected) = two_migrations("api_prefix").await;
    let prefix = "/admin/background-migrations";
    let app = axum::Router::new().nest(prefix, web::router(admin_state(&connected)));
    let server = serve_app(app, prefix).await;
    let page = get(&server.base, &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body
            .contains(&format!("href=\"{prefix}/migrations/{FIRST}\"")),
        "{}",
        page.body
    );
    assert!(
        page.body.contains(&format!("href=\"{prefix}\"")),
        "the home link leaves the prefix"
    );
    assert!(
        page.body.contains("testapp 9.9.9")
            && page.body.contains(&format!("bgmigrate {}", web::VERSION))
    );
    let detail = get(&format!("{}/migrations/{FIRST}", server.base), &[]).await;
    assert_eq!(detail.status, StatusCode::OK);
    let status = get(&format!("{}/api/status", server.base), &[]).await;
    assert_eq!(status.json()["pending"], json!([FIRST, SECOND]));
}

/// The login form sets a Secure, HttpOnly, SameSite cookie; a form posted with it but without the session's CSRF
/// token is refused, and with it the action runs and is recorded under the name given at login.
#[tokio::test]
async fn login_sets_a_strict_cookie_and_forms_need_its_csrf_token() {
    let (_db, connected) = two_migrations("api_login_csrf").await;
    let server = serve(admin_state(&connected)).await;
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let bad = request(
        Method::POST,
        &format!("{}/login", server.base),
        &form,
        "token=wrong&name=eve&next=/",
    )
    .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert!(bad.headers.get("set-cookie").is_none());
    let login = request(
        Method::POST,
        &format!("{}/login", server.base),
        &form,
        &format!("token={ADMIN}&name=alice&next=/"),
    )
    .await;
    assert_eq!(login.status, StatusCode::SEE_OTHER);
    let set_cookie = login.headers["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_owned();

    let confirm = get(
        &format!("{}/migrations/{FIRST}/confirm/pause", server.base),
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(confirm.status, StatusCode::OK);
    let csrf = confirm
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let action_url = format!("{}/migrations/{FIRST}/action", server.base);
    let with_cookie = [("cookie", cookie.as_str()), form[0]];
    let forged = request(
        Method::POST,
        &action_url,
        &with_cookie,
        "action=pause&csrf=forged",
    )
    .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert_eq!(
        connected.control.get(FIRST).await.unwrap().status,
        Status::Pending
    );
    let ok = request(
        Method::POST,
        &action_url,
        &with_cookie,
        &format!("action=pause&csrf={csrf}"),
    )
    .await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.body);
    assert_eq!(
        connected.control.get(FIRST).await.unwrap().status,
        Status::Paused
    );
    assert_eq!(
        connected.control.events(FIRST, 1).await.unwrap()[0].actor,
        "web:alice"
    );
}

/// The event stream sends a snapshot with the indicator and every migration's live figures at once.
#[tokio::test]
async fn the_event_stream_starts_with_a_snapshot_of_every_migration() {
    let (_db, connected) = two_migrations("api_sse").await;
    let server = serve(admin_state(&connected)).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<hyper::body::Bytes>>();
    let response = client
        .get(format!("{}/api/events", server.base).parse().unwrap())
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let frame = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        http_body_util::BodyExt::frame(&mut body),
    )
    .await
    .expect("a first event within 5 s")
    .unwrap()
    .unwrap();
    let text = String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap();
    assert!(text.starts_with("event: snapshot\ndata: "), "{text}");
    let data: Value =
        serde_json::from_str(text.trim_start_matches("event: snapshot\ndata: ").trim()).unwrap();
    assert_eq!(data["indicator"]["state"], "pending");
    assert_eq!(data["migrations"][0]["name"], FIRST);
    assert_eq!(data["migrations"][0]["cells"]["rows"], "0 / ?");
}

/// `bgmigrate web` applies fast migrations, registers the background ones, serves on --bind with the host's
/// version in the header, and exits 0 on SIGTERM.
#[tokio::test]
async fn the_web_command_prepares_the_database_serves_and_stops_on_sigterm() {
    let db = TestDb::create("web_command").await;
    db.fast_migration(
        "0001_items.sql",
        "CREATE TABLE items (id text PRIMARY KEY, a int, b int, total int);",
    );
    db.define(FIRST, &backfill("items", "batchSize = 10"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bind = format!("127.0.0.1:{port}");
    let mut child = db
        .command(
            &["web", "--bind", &bind, "--app-version", "hostapp 3.1"],
            &[("BGMIGRATE_ADMIN_TOKEN", ADMIN)],
        )
        .spawn()
        .unwrap();
    let base = format!("http://{bind}");
    let started = std::time::Instant::now();
    let status = loop {
        if let Ok(reply) = try_request(Method::GET, &format!("{base}/api/status"), &[], "").await {
            break reply;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "bgmigrate web did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(
        status.json()["pending"],
        json!([FIRST]),
        "the definition was registered"
    );
    assert!(get(&base, &[]).await.body.contains("hostapp 3.1"));
    let pool = db.pool().await;
    let (tables,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM information_schema.tables WHERE table_name = 'items'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(tables, 1, "the fast migration was applied");
    pool.close().await;
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}

/// Fails its first batch with a transient error, then finishes in one batch.
struct FlakyOnce(std::sync::atomic::AtomicBool);

#[async_trait::async_trait]
impl bgmigrate::Migration for FlakyOnce {
    async fn validate(&self) -> Result<(), bgmigrate::MigrationError> {
        Ok(())
    }

    async fn estimate(&self) -> Result<Option<u64>, bgmigrate::MigrationError> {
        Ok(Some(1))
    }

    async fn run_batch(
        &self,
        _batch: &mut bgmigrate::Batch<'_>,
    ) -> Result<bgmigrate::BatchOutcome, bgmigrate::MigrationError> {
        if !self.0.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(bgmigrate::MigrationError::Transient(
                "connection reset by peer".into(),
            ));
        }
        Ok(bgmigrate::BatchOutcome {
            state: json!({"n": 1}),
            done: true,
            rows: 1,
            bytes: 0,
        })
    }
}

/// A claim that takes over a dead worker's expired lease, and a batch retried after a transient error, are counted
/// in /metrics.
#[tokio::test]
async fn metrics_count_lease_takeovers_and_batch_retries() {
    const TAKEN_OVER: &str = "20240401_0001_taken_over";
    const FLAKY: &str = "20240401_0002_flaky";
    let db = TestDb::create("api_metrics_takeover").await;
    items(&db, 50).await;
    db.define(TAKEN_OVER, &backfill("items", "batchSize = 25"));
    let connected = db.connect().await;
    register(&db, &connected).await;
    let mut registry = builtin_registry();
    registry.register("flaky", |_, _| {
        Ok(std::sync::Arc::new(FlakyOnce(std::sync::atomic::AtomicBool::new(false))) as _)
    });
    let flaky = bgmigrate::Registration {
        name: FLAKY.into(),
        script: "flaky".into(),
        params: json!({}),
        args: json!({}),
        depends_on: None,
    };
    connected
        .control
        .register(&[flaky], &registry)
        .await
        .unwrap();
    let pool = db.pool().await;
    sqlx::query(
        "UPDATE background_migrations SET status = 'running', worker_id = 'dead-worker', \
         lease_expires_at = now() - interval '1 minute' WHERE name = $1",
    )
    .bind(TAKEN_OVER)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let router = web::router(admin_state(&connected));
    Runner::new(
        control(&connected),
        registry,
        connected.stores.clone(),
        fast_config("live-worker"),
    )
    .spawn()
    .join()
    .await
    .unwrap();
    let server = serve_app(router, "").await;
    let text = get(&format!("{}/metrics", server.base), &[]).await.body;
    for line in [
        format!("bgmigrate_lease_takeovers_total{{migration=\"{TAKEN_OVER}\"}} 1"),
        format!("bgmigrate_batch_retries_total{{migration=\"{FLAKY}\"}} 1"),
        format!("bgmigrate_migration_status{{migration=\"{FLAKY}\",status=\"finished\"}} 1"),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
}
