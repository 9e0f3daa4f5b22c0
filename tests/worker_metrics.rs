//! `worker --metrics-bind ADDR`: a standalone worker serves `/metrics` in Prometheus text, with the engine's batch
//! metrics and every migration's status.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use bgmigrate::Status;
use common::TestDb;

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `GET path` over plain HTTP/1.1; the status line and the body.
fn get(port: u16, path: &str, token: Option<&str>) -> std::io::Result<(String, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    Ok((
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    ))
}

/// After a worker has run batches, its `/metrics` shows rows, batch durations and sizes, and the status of the
/// migration; the read token, when set, is required; SIGTERM stops the worker and its metrics server.
#[tokio::test]
async fn a_standalone_worker_serves_batch_metrics_on_metrics_bind() {
    let db = TestDb::create("worker_metrics").await;
    sqlx::raw_sql(
        "CREATE TABLE items (id int PRIMARY KEY, hits int NOT NULL DEFAULT 0);
         INSERT INTO items (id) SELECT g FROM generate_series(1, 2000) g;",
    )
    .execute(&db.pool().await)
    .await
    .unwrap();
    db.define(
        "0001_hits",
        "kind = \"backfill\"\nstore = \"postgres\"\ntable = \"items\"\nkey = [\"id\"]\n\
         set = { hits = \"hits + 1\" }\n[args]\nbatchSize = 500\n",
    );
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let token = "a-read-token-that-is-long-enough-0123456789";
    let log = db.dir.path().join("worker.log");
    let mut worker = db
        .command(
            &["worker", "--metrics-bind", &bind, "--poll", "200ms"],
            &[("BGMIGRATE_READ_TOKEN", token)],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .expect("spawn worker");

    let connected = db.connect().await;
    common::wait_until("the worker finishes", Duration::from_secs(30), || async {
        let records = connected.control.list().await.unwrap_or_default();
        records.iter().any(|r| r.status == Status::Finished)
    })
    .await;
    // The last batch's commit marks the migration finished before the worker counts that batch's rows, so the
    // counters may trail the control store by a moment.
    let rows_line = "bgmigrate_rows_processed_total{migration=\"0001_hits\"} 2000";
    common::wait_until(
        "the worker counts every row",
        Duration::from_secs(10),
        || async {
            get(port, "/metrics", Some(token)).is_ok_and(|(_, body)| body.contains(rows_line))
        },
    )
    .await;
    let (status, body) = get(port, "/metrics", Some(token)).expect("GET /metrics");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let exit = worker.wait().expect("worker exit");
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.contains("200"), "{status}\n{body}\n{log}");
    for line in [
        rows_line,
        "bgmigrate_batch_duration_seconds_count{migration=\"0001_hits\"} ",
        "bgmigrate_batch_duration_seconds_bucket{migration=\"0001_hits\",le=\"30\"} ",
        "bgmigrate_batch_size{migration=\"0001_hits\"} 500",
        "bgmigrate_migration_status{migration=\"0001_hits\",status=\"finished\"} 1",
    ] {
        assert!(body.contains(line), "no {line:?} in\n{body}");
    }
    assert!(exit.success(), "worker: {exit:?}\n{log}");
}

/// Without the read token (when one is set) `/metrics` is refused with a JSON error.
#[tokio::test]
async fn worker_metrics_require_the_read_token_when_one_is_set() {
    let db = TestDb::create("worker_metrics_token").await;
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let mut worker = db
        .command(
            &["worker", "--metrics-bind", &bind],
            &[(
                "BGMIGRATE_READ_TOKEN",
                "a-read-token-that-is-long-enough-0123456789",
            )],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn worker");
    let mut answer = None;
    for _ in 0..100 {
        if let Ok(response) = get(port, "/metrics", None) {
            answer = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = worker.kill();
    let _ = worker.wait();
    let (status, body) = answer.expect("the worker answers on --metrics-bind");
    assert!(status.contains("401"), "{status}\n{body}");
    assert!(body.starts_with("{\"error\""), "{body}");

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let out = db.cli(&["worker", "--metrics-bind", &address]);
    assert_eq!(out.status.code(), Some(2), "{}", common::text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--metrics-bind"));
}
