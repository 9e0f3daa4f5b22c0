//! The web UI in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven over WebDriver): the list
//! updates a running migration's progress live, an operator logs in and retries a failed migration, invalid
//! args are refused with the error next to the field, a page on another port of the same host cannot change
//! anything with the operator's login cookie, and a framed page does not render. Screenshots of the list and detail pages are saved under
//! test-output/.

mod common;
mod web_support;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bgmigrate::{Runner, RunnerHandle, Status, builtin_registry};
use common::{TestDb, fast_config, wait_until};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use web_support::*;

/// chromedriver on a free loopback port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts chromedriver and a fresh headless Chromium session behind it.
async fn browser() -> (Driver, Client) {
    let port = free_port();
    let chromedriver =
        std::env::var("BGMIGRATE_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let child = Command::new(&chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {chromedriver} ({e}); run scripts/ensure-services.sh with BGMIGRATE_NEED_BROWSER=1"));
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _profile: tempfile::tempdir().unwrap(),
    };
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "chromedriver did not listen on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let chromium =
        std::env::var("BGMIGRATE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--window-size=1400,1000",
                     format!("--user-data-dir={}", driver._profile.path().display())],
        }),
    );
    let client = ClientBuilder::new(HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session");
    (driver, client)
}

/// Where screenshots go: test-output/ in the crate (gitignored).
fn save_screenshot(name: &str, png: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("test-output");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, png).unwrap();
    path
}

/// The text of the first element matching `css`, waiting for it to appear (a form post navigates asynchronously,
/// so an element found on the page being left can go stale before its text is read: then it is looked up again).
async fn text(client: &Client, css: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let element = client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        match element.text().await {
            Ok(text) => return text,
            Err(err) if std::time::Instant::now() < deadline => {
                eprintln!("{css}: {err}; looking it up again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("{css}: {err}"),
        }
    }
}

/// Polls the page until `css`'s text satisfies `check`, or panics with `what` and the last text seen.
async fn wait_for_text(
    client: &Client,
    css: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&str) -> bool,
) -> String {
    let started = Instant::now();
    loop {
        let seen = match client.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if check(&seen) {
            return seen;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out waiting until {what}; last saw {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clicks the element `locator` finds.
async fn click(client: &Client, locator: Locator<'_>) {
    client.find(locator).await.unwrap().click().await.unwrap();
}

/// Types `text` into the field with id `id`.
async fn type_into(client: &Client, id: &str, text: &str) {
    client
        .find(Locator::Id(id))
        .await
        .unwrap()
        .send_keys(text)
        .await
        .unwrap();
}

/// Logs in through the form on the current page (which must be the login page).
async fn log_in(client: &Client, name: &str) {
    type_into(client, "token", ADMIN).await;
    type_into(client, "name", name).await;
    click(client, Locator::Id("login")).await;
}

fn runner(
    connected: &bgmigrate::config::Connected,
    worker: &str,
    exit_when_done: bool,
) -> RunnerHandle {
    let config = bgmigrate::RunnerConfig {
        exit_when_done,
        ..fast_config(worker)
    };
    Runner::new(
        control(connected),
        builtin_registry(),
        connected.stores.clone(),
        config,
    )
    .spawn()
}

const EARLIER_DONE: &str = "20240201_0001_add_total_cost";
const EARLIER_FAILED: &str = "20240215_0001_backfill_scores";
const SLOW: &str = "20240301_0001_slow_backfill";
const LATER: &str = "20240302_0001_after_the_slow_one";
const BROKEN: &str = "20240301_0002_broken_backfill";

/// The list page shows a running migration, and its progress advances in place (live updates, no reload).
#[tokio::test]
async fn the_list_page_shows_a_running_migrations_progress_advancing_live() {
    let db = TestDb::create("browser_live").await;
    items(&db, 6000).await;
    db.define(SLOW, &backfill("items", "batchSize = 100\nsleepMs = 200"));
    // Neighbours in other states, as an operator's list would have them.
    db.define(EARLIER_DONE, &backfill("items", "batchSize = 1000"));
    db.define(EARLIER_FAILED, &backfill("scores", "batchSize = 1000"));
    db.define(LATER, &backfill("items", "batchSize = 500"));
    let connected = db.connect().await;
    register(&db, &connected).await;
    force_status(&db, EARLIER_DONE, "finished", None).await;
    let reason = "validation failed: table \"scores\" does not exist; create it, then retry";
    force_status(&db, EARLIER_FAILED, "failed", Some(reason)).await;
    let server = serve(admin_state(&connected)).await;
    // The browser first: its start-up time must not eat into the migration's run.
    let (_driver, client) = browser().await;
    let worker = runner(&connected, "browser-worker", false);
    wait_until("the backfill runs", Duration::from_secs(10), || async {
        connected.control.get(SLOW).await.unwrap().rows_done > 0
    })
    .await;

    client.goto(&server.base).await.unwrap();
    assert_eq!(
        client.title().await.unwrap(),
        "Background migrations · bgmigrate"
    );
    let row = format!("tr[data-migration='{SLOW}']");
    assert_eq!(
        text(&client, &format!("{row} [data-field=status]")).await,
        "running"
    );
    assert_eq!(
        text(
            &client,
            &format!("tr[data-migration='{LATER}'] [data-field=status]")
        )
        .await,
        "pending"
    );
    assert!(
        text(&client, "#migrations").await.contains(reason),
        "the failed reason is listed"
    );
    assert_eq!(
        text(&client, "#indicator").await,
        format!("1 failed: {EARLIER_FAILED}")
    );
    client
        .execute("window.notReloaded = true;", vec![])
        .await
        .unwrap();
    let percent_css = format!("{row} [data-field=percent_text]");
    let first: f64 = text(&client, &percent_css)
        .await
        .trim_end_matches('%')
        .parse()
        .unwrap();
    let later = wait_for_text(
        &client,
        &percent_css,
        "the percentage grows",
        Duration::from_secs(20),
        |seen| {
            seen.trim_end_matches('%')
                .parse::<f64>()
                .is_ok_and(|p| p >= first + 5.0)
        },
    )
    .await;
    let marker = client
        .execute("return window.notReloaded === true;", vec![])
        .await
        .unwrap();
    assert_eq!(
        marker,
        json!(true),
        "the page reloaded instead of updating in place"
    );
    let style = client
        .find(Locator::Css(&format!("{row} .fill")))
        .await
        .unwrap()
        .attr("style")
        .await
        .unwrap()
        .unwrap_or_default();
    let width: f64 = style
        .trim_start_matches("width:")
        .trim()
        .trim_end_matches(';')
        .trim_end_matches('%')
        .parse()
        .unwrap_or_else(|_| panic!("bar style {style:?}"));
    let later: f64 = later.trim_end_matches('%').parse().unwrap();
    assert!(
        // The text is rounded to 0.1 %, the bar is not: allow for that rounding.
        width >= first + 5.0 - 0.05 && (width - later).abs() < 5.0,
        "the bar is {width}% wide while the text says {later}%"
    );
    assert!(
        text(&client, &format!("{row} [data-field=rate]"))
            .await
            .ends_with("/s")
    );
    let path = save_screenshot("list.png", &client.screenshot().await.unwrap());
    eprintln!("list page screenshot: {}", path.display());
    client.close().await.unwrap();
    worker.shutdown().await.unwrap();
}

/// A failed migration is retried from the UI: the action asks to log in, then to confirm, shows its result, and
/// the migration then runs to the end, which the page shows without a reload.
#[tokio::test]
async fn an_operator_logs_in_retries_a_failed_migration_and_sees_it_finish() {
    let db = TestDb::create("browser_retry").await;
    db.define(BROKEN, &backfill("later_items", "batchSize = 50"));
    let connected = db.connect().await;
    register(&db, &connected).await;
    runner(&connected, "first-worker", true)
        .join()
        .await
        .unwrap();
    let failed = connected.control.get(BROKEN).await.unwrap();
    assert_eq!(
        failed.status,
        Status::Failed,
        "the table is missing, so validation fails"
    );
    // The operator fixes the cause: the table now exists.
    let pool = db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE later_items (id text PRIMARY KEY, a int, b int, total int); \
                   INSERT INTO later_items SELECT 'k' || i, i, i FROM generate_series(1, 500) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let server = serve(admin_state(&connected)).await;

    let (_driver, client) = browser().await;
    client
        .goto(&format!("{}/migrations/{BROKEN}", server.base))
        .await
        .unwrap();
    assert_eq!(text(&client, "h1 [data-field=status]").await, "failed");
    assert!(
        text(&client, "#indicator")
            .await
            .contains(&format!("1 failed: {BROKEN}"))
    );
    assert!(
        client
            .source()
            .await
            .unwrap()
            .contains(failed.failed_reason.as_deref().unwrap())
    );
    click(&client, Locator::LinkText("Retry")).await;
    assert!(
        client
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/login"),
        "an anonymous retry asks to log in"
    );
    log_in(&client, "alice").await;
    let confirm = client
        .wait()
        .at_most(Duration::from_secs(5))
        .for_element(Locator::Id("confirm"))
        .await
        .unwrap();
    assert_eq!(confirm.text().await.unwrap(), "Yes, retry");
    confirm.click().await.unwrap();
    let notice = text(&client, ".notice.ok").await;
    assert_eq!(notice, "Retry done; the migration is now pending.");
    assert_eq!(text(&client, "h1 [data-field=status]").await, "pending");
    let events = text(&client, "#events").await;
    assert!(
        events.contains("retry") && events.contains("web:alice"),
        "{events}"
    );

    let worker = runner(&connected, "second-worker", true);
    wait_for_text(
        &client,
        "h1 [data-field=status]",
        "the page shows it finished",
        Duration::from_secs(20),
        |s| s == "finished",
    )
    .await;
    assert_eq!(text(&client, "[data-field=percent_text]").await, "100.0%");
    worker.join().await.unwrap();
    client.close().await.unwrap();
}

/// Invalid args typed into the editor are refused with the reason next to the field, and nothing is saved; valid
/// ones are saved and shown in the event history with before and after.
#[tokio::test]
async fn invalid_args_are_refused_with_the_error_next_to_the_field() {
    let db = TestDb::create("browser_args").await;
    items(&db, 4000).await;
    db.define(
        SLOW,
        &backfill(
            "items",
            "batchSize = 100\nsleepMs = 20\nwebhookToken = \"tok-123\"",
        ),
    );
    let connected = db.connect().await;
    register(&db, &connected).await;
    let worker = runner(&connected, "args-worker", true);
    wait_until("a quarter is done", Duration::from_secs(20), || async {
        connected.control.get(SLOW).await.unwrap().rows_done >= 1000
    })
    .await;
    connected
        .control
        .set_args(SLOW, &json!({"batchSize": 300}), "cli:ops@host")
        .await
        .unwrap();
    worker.join().await.unwrap();
    let server = serve(admin_state(&connected)).await;

    let (_driver, client) = browser().await;
    client
        .goto(&format!("{}/login?next=/migrations/{SLOW}", server.base))
        .await
        .unwrap();
    log_in(&client, "bob").await;
    let field = client
        .wait()
        .at_most(Duration::from_secs(5))
        .for_element(Locator::Id("arg-batchSize"))
        .await
        .unwrap();
    assert!(
        !client.source().await.unwrap().contains("tok-123"),
        "a secret reached the browser"
    );
    field.clear().await.unwrap();
    field.send_keys("abc").await.unwrap();
    click(&client, Locator::Css("form.args button[type=submit]")).await;
    // The field's error span is on the page before the post too, empty: wait for the answer's.
    let error = wait_for_text(
        &client,
        "[data-error-for=batchSize]",
        "the post's answer names the error",
        Duration::from_secs(10),
        |text| !text.is_empty(),
    )
    .await;
    assert_eq!(
        error,
        "args.batchSize must be an integer from 1 to 10000000, got \"abc\""
    );
    assert_eq!(
        client
            .find(Locator::Id("arg-batchSize"))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some("abc")
    );
    let args = connected.control.get(SLOW).await.unwrap().args;
    assert_eq!(
        args,
        json!({"batchSize": 300, "sleepMs": 20, "webhookToken": "tok-123"}),
        "nothing was saved"
    );

    client.set_window_size(1400, 2300).await.unwrap();
    let path = save_screenshot("detail.png", &client.screenshot().await.unwrap());
    eprintln!("detail page screenshot: {}", path.display());

    let field = client.find(Locator::Id("arg-batchSize")).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys("250").await.unwrap();
    click(&client, Locator::Css("form.args button[type=submit]")).await;
    assert_eq!(
        text(&client, ".notice.ok").await,
        "Args saved; the worker uses them from its next batch."
    );
    let args = connected.control.get(SLOW).await.unwrap().args;
    assert_eq!(
        args,
        json!({"batchSize": 250, "sleepMs": 20, "webhookToken": "tok-123"}),
        "the secret was kept"
    );
    let history = text(&client, "#events tbody tr").await;
    assert!(
        history.contains("args_changed")
            && history.contains("web:bob")
            && history.contains("\"batchSize\":300"),
        "{history}"
    );
    assert!(
        history.contains("\"webhookToken\":\"********\""),
        "{history}"
    );
    client.close().await.unwrap();
}

/// An attacker's site: `html` served at `/` on another port of the same host (the same *site* as bgmigrate's, so
/// SameSite=Strict cookies go along with its requests).
async fn attacker(html: String) -> Server {
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let html = html.clone();
            async move { axum::response::Html(html) }
        }),
    );
    serve_app(app, "").await
}

/// A logged-in operator visits a page on another port of the same host: its script's API calls (with and without
/// a guessed CSRF header) and its auto-submitted forms change nothing. A script of bgmigrate's own page, with the
/// token from its meta tag, does change the migration, so the defence is not just "everything refused".
#[tokio::test]
async fn a_page_on_another_port_cannot_change_anything_with_the_login_cookie() {
    const TARGET: &str = "20240401_0001_target";
    let db = TestDb::create("browser_csrf").await;
    items(&db, 100).await;
    db.define(TARGET, &backfill("items", "batchSize = 10"));
    let connected = db.connect().await;
    register(&db, &connected).await;
    let server = serve(admin_state(&connected)).await;
    let api = format!("{}/api/migrations/{TARGET}", server.base);
    let evil = attacker(format!(
        r#"<!doctype html><title>cute cats</title>
<form id="api" method="post" action="{api}/pause" target="sink1"></form>
<form id="form" method="post" action="{base}/migrations/{TARGET}/action" target="sink2">
  <input name="action" value="cancel"><input name="csrf" value="">
</form>
<iframe name="sink1"></iframe><iframe name="sink2"></iframe>
<script>
  window.results = [];
  fetch("{api}/pause", {{method: "POST", credentials: "include", mode: "no-cors"}})
    .then(() => results.push("no-cors sent"), e => results.push("no-cors " + e));
  fetch("{api}/cancel", {{method: "POST", credentials: "include", headers: {{"X-CSRF-Token": "guess"}}}})
    .then(r => results.push("cors " + r.status), e => results.push("cors blocked"));
  fetch("{api}/args", {{method: "PUT", credentials: "include", mode: "no-cors", body: '{{"batchSize": 1}}'}})
    .then(() => results.push("args sent"), e => results.push("args " + e));
  document.getElementById("api").submit();
  document.getElementById("form").submit();
</script>"#,
        base = server.base
    ))
    .await;

    let (_driver, client) = browser().await;
    client
        .goto(&format!("{}/login?next=/migrations/{TARGET}", server.base))
        .await
        .unwrap();
    log_in(&client, "victim").await;
    assert_eq!(text(&client, "h1 [data-field=status]").await, "pending");
    client.goto(&evil.base).await.unwrap();
    wait_until(
        "the attacker's requests are done",
        Duration::from_secs(10),
        || async {
            client
                .execute(
                    "return window.results && window.results.length === 3",
                    vec![],
                )
                .await
                .unwrap()
                == json!(true)
        },
    )
    .await;
    // The auto-submitted forms have no result to wait for: give them the same time again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let record = connected.control.get(TARGET).await.unwrap();
    assert_eq!(
        record.status,
        Status::Pending,
        "the attacker changed the status"
    );
    assert_eq!(
        record.args,
        json!({"batchSize": 10}),
        "the attacker changed the args"
    );
    let events = connected.control.events(TARGET, 10).await.unwrap();
    assert!(
        events.iter().all(|e| !e.actor.starts_with("web:")),
        "an action was recorded for the victim: {events:?}"
    );

    client
        .goto(&format!("{}/migrations/{TARGET}", server.base))
        .await
        .unwrap();
    let status = client
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
               const token = document.querySelector('meta[name="csrf-token"]').content;
               fetch(document.body.dataset.base + "/api/migrations/" + arguments[0] + "/pause",
                     {method: "POST", headers: {"X-CSRF-Token": token}})
                 .then(r => done(r.status), e => done(String(e)));"#,
            vec![json!(TARGET)],
        )
        .await
        .unwrap();
    assert_eq!(status, json!(200), "bgmigrate's own page could not pause");
    assert_eq!(
        connected.control.get(TARGET).await.unwrap().status,
        Status::Paused
    );
    client.close().await.unwrap();
}

/// A logged-in confirmation page put in another page's frame does not render (clickjacking).
#[tokio::test]
async fn a_framed_page_does_not_render() {
    const TARGET: &str = "20240401_0002_framed";
    let db = TestDb::create("browser_framing").await;
    items(&db, 10).await;
    db.define(TARGET, &backfill("items", "batchSize = 10"));
    let connected = db.connect().await;
    register(&db, &connected).await;
    let server = serve(admin_state(&connected)).await;
    let confirm = format!("{}/migrations/{TARGET}/confirm/cancel", server.base);
    let evil = attacker(format!(
        r#"<!doctype html><title>win a prize</title><p>Click the button!</p>
<iframe id="victim" src="{confirm}" width="900" height="600"></iframe>"#
    ))
    .await;

    let (_driver, client) = browser().await;
    client
        .goto(&format!(
            "{}/login?next=/migrations/{TARGET}/confirm/cancel",
            server.base
        ))
        .await
        .unwrap();
    log_in(&client, "victim").await;
    let own = text(&client, "#confirm").await;
    assert_eq!(own, "Yes, cancel", "the page renders on its own");
    client.goto(&evil.base).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    client.enter_frame(0).await.unwrap();
    let framed = client.source().await.unwrap();
    assert!(
        client.find(Locator::Id("confirm")).await.is_err() && !framed.contains("Yes, cancel"),
        "the confirmation page rendered inside another site's frame:\n{framed}"
    );
    client.enter_parent_frame().await.unwrap();
    client.close().await.unwrap();
}
