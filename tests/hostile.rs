//! The hostile-input suite: schemathesis (PyPI; installed by scripts/ensure-services.sh through
//! scripts/ensure-schemathesis.sh) generates requests from `/api/openapi.json` — valid and invalid names, bodies,
//! query strings, headers — against the real server on a real Postgres database, with the admin token, so the
//! changing calls run for real. Any 5xx, any response that breaks the documented schema, status codes or content
//! types fails the test. The run is bounded (`--max-time`); BGMIGRATE_SCHEMATHESIS overrides the executable.

mod common;
mod web_support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use bgmigrate::web;
use common::TestDb;
use web_support::*;

/// Seconds schemathesis may spend generating and sending cases.
const BUDGET_SECS: u64 = 120;

/// The schemathesis executable: BGMIGRATE_SCHEMATHESIS, the project's virtualenv, or one on PATH.
fn schemathesis() -> String {
    if let Ok(path) = std::env::var("BGMIGRATE_SCHEMATHESIS") {
        return path;
    }
    let venv = std::env::var("BGMIGRATE_VENV").unwrap_or_else(|_| "/opt/bgmigrate-venv".into());
    let in_venv = format!("{venv}/bin/schemathesis");
    if std::path::Path::new(&in_venv).exists() {
        in_venv
    } else {
        "schemathesis".into()
    }
}

/// schemathesis finds no 5xx, no schema violation, no undocumented status code or content type anywhere in the
/// JSON API, with migrations in every state the calls can move between.
#[tokio::test]
async fn the_json_api_survives_openapi_driven_fuzzing() {
    let db = TestDb::create("hostile_fuzz").await;
    items(&db, 200).await;
    let names = [
        "20240101_0001_pending",
        "20240101_0002_failed",
        "20240101_0003_finished",
        "20240101_0004_paused",
    ];
    for name in names {
        db.define(
            name,
            &backfill("items", "batchSize = 50\napiToken = \"s3cret\""),
        );
    }
    let connected = db.connect().await;
    register(&db, &connected).await;
    force_status(
        &db,
        names[1],
        "failed",
        Some("validation failed: nothing to see"),
    )
    .await;
    force_status(&db, names[2], "finished", None).await;
    force_status(&db, names[3], "paused", None).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = web::router(admin_state(&connected).read_token(Some(READER.into())));
    tokio::spawn(web::serve(listener, app, std::future::pending()));

    let report = tempfile::tempdir().unwrap();
    let program = schemathesis();
    let started = Instant::now();
    let child = tokio::process::Command::new(&program)
        .args([
            "run",
            &format!("{base}/api/openapi.json"),
            "--url",
            &base,
            "--header",
            &format!("Authorization: Bearer {ADMIN}"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            // An endless event stream is no request-response operation to fuzz.
            "--exclude-path",
            "/api/events",
            "--mode",
            "all",
            "--max-examples",
            "150",
            "--max-time",
            &BUDGET_SECS.to_string(),
            // One worker: hypothesis's lambda introspection is not thread-safe (a "recursion depth mismatch" runtime
            // error with two).
            "--workers",
            "1",
            "--seed",
            "14",
            "--request-timeout",
            "15",
            "--suppress-health-check",
            "all",
            "--report-dir",
            &report.path().display().to_string(),
        ])
        // Its caches and reports stay out of the work tree.
        .current_dir(report.path())
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {program} ({e}); run scripts/ensure-services.sh (it installs schemathesis)")
        });
    let output = tokio::time::timeout(
        Duration::from_secs(BUDGET_SECS + 90),
        child.wait_with_output(),
    )
    .await
    .expect("schemathesis ran past its time budget")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!(
        "schemathesis finished in {:.0} s:\n{stdout}\n{stderr}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        output.status.success(),
        "schemathesis found problems (exit {:?}); see its output above",
        output.status.code()
    );
    assert!(
        stdout.contains("test cases") || stdout.contains("passed"),
        "schemathesis ran no test case"
    );
}
