//! The web surface's defences over real HTTP against a real Postgres control store: CSRF on the JSON API, the
//! login redirect kept on this site, framing forbidden on every response, sessions that are random, expire on the
//! server and end at logout, input the control store cannot hold refused with a 4xx naming it, the framework's own
//! errors answered as JSON, confirmations only for allowed actions, the Bearer scheme in any case, wrong logins
//! throttled, foreign Host names refused, and idle or trickling connections cut off.

mod common;
mod web_support;

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use bgmigrate::Status;
use bgmigrate::web::{self, AllowedHosts};
use common::TestDb;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use web_support::*;

const FIRST: &str = "20240101_0001_first";
const SECOND: &str = "20240101_0002_second";

/// A database with two registered backfills over `items` (not run), the second one finished.
async fn two_migrations(test: &str) -> (TestDb, bgmigrate::config::Connected) {
    let db = TestDb::create(test).await;
    items(&db, 100).await;
    db.define(FIRST, &backfill("items", "batchSize = 10"));
    db.define(SECOND, &backfill("items", "batchSize = 20"));
    let connected = db.connect().await;
    register(&db, &connected).await;
    force_status(&db, SECOND, "finished", None).await;
    (db, connected)
}

async fn status_of(connected: &bgmigrate::config::Connected, name: &str) -> Status {
    connected.control.get(name).await.unwrap().status
}

/// A change through the JSON API with the login cookie needs the session's CSRF token in X-CSRF-Token, and is
/// refused from another origin even with it; Bearer callers are unaffected, whatever Origin they send.
#[tokio::test]
async fn cookie_changes_through_the_api_need_the_csrf_header_and_this_origin() {
    let (_db, connected) = two_migrations("sec_api_csrf").await;
    let server = serve(admin_state(&connected)).await;
    let cookie = login(&server, ADMIN, "alice").await;
    let url = format!("{}/api/migrations/{FIRST}/pause", server.base);
    let origin = server.base.clone();
    let other_origin = "http://127.0.0.1:1";

    let bare = request(Method::POST, &url, &[("cookie", &cookie)], "").await;
    assert_eq!(bare.status, StatusCode::FORBIDDEN, "{}", bare.body);
    assert!(bare.error().contains("X-CSRF-Token"), "{}", bare.error());
    let wrong = request(
        Method::POST,
        &url,
        &[("cookie", &cookie), ("x-csrf-token", "guessed")],
        "",
    )
    .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    let token = csrf_token(&server, &cookie).await;
    for (name, value) in [("origin", other_origin), ("sec-fetch-site", "same-site")] {
        let foreign = request(
            Method::POST,
            &url,
            &[("cookie", &cookie), ("x-csrf-token", &token), (name, value)],
            "",
        )
        .await;
        assert_eq!(foreign.status, StatusCode::FORBIDDEN, "{name}: {value}");
        assert!(foreign.error().contains("Bearer"), "{}", foreign.error());
    }
    assert_eq!(status_of(&connected, FIRST).await, Status::Pending);

    let ok = request(
        Method::POST,
        &url,
        &[
            ("cookie", &cookie),
            ("x-csrf-token", &token),
            ("origin", &origin),
            ("sec-fetch-site", "same-origin"),
        ],
        "",
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(
        connected.control.events(FIRST, 1).await.unwrap()[0].actor,
        "web:alice"
    );
    let (auth, bearer) = bearer(ADMIN);
    let scripted = request(
        Method::POST,
        &format!("{}/api/migrations/{FIRST}/resume", server.base),
        &[(auth, &bearer), ("origin", other_origin)],
        "",
    )
    .await;
    assert_eq!(scripted.status, StatusCode::OK, "{}", scripted.body);
}

/// `next` after login stays a path on this site: white space, control characters and backslashes that browsers
/// would turn into another host fall back to the list page, and none of them gives a 500.
#[tokio::test]
async fn login_redirects_only_to_paths_on_this_site() {
    let (_db, connected) = two_migrations("sec_next").await;
    let server = serve(admin_state(&connected)).await;
    for next in [
        "//evil.example",
        "/%09/evil.example",
        "/%0A/evil.example",
        "/%5Cevil.example",
        "%2F%2Fevil.example",
        "https://evil.example",
        "/%0D%0ASet-Cookie:%20x=1",
    ] {
        let reply = request(
            Method::POST,
            &format!("{}/login", server.base),
            &[("content-type", "application/x-www-form-urlencoded")],
            &format!("token={ADMIN}&name=a&next={next}"),
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::SEE_OTHER,
            "{next}: {}",
            reply.body
        );
        assert_eq!(reply.headers["location"], "/", "{next}");
        let form = get(&format!("{}/login?next={next}", server.base), &[]).await;
        assert_eq!(form.status, StatusCode::OK, "{next}");
        assert!(form.body.contains(r#"name="next" value="/""#), "{next}");
    }
    let reply = request(
        Method::POST,
        &format!("{}/login", server.base),
        &[("content-type", "application/x-www-form-urlencoded")],
        &format!("token={ADMIN}&name=a&next=/migrations/{FIRST}"),
    )
    .await;
    assert_eq!(reply.headers["location"], format!("/migrations/{FIRST}"));
}

/// Every response, page, API answer or error, forbids being framed.
#[tokio::test]
async fn every_response_forbids_framing() {
    let (_db, connected) = two_migrations("sec_framing").await;
    let server = serve(admin_state(&connected)).await;
    let (auth, bearer) = bearer(ADMIN);
    for path in [
        "/".to_owned(),
        "/login".to_owned(),
        format!("/migrations/{FIRST}"),
        format!("/migrations/{FIRST}/confirm/pause"),
        "/api/status".to_owned(),
        "/badge.svg".to_owned(),
        "/nowhere".to_owned(),
        "/api/nowhere".to_owned(),
    ] {
        let reply = get(&format!("{}{path}", server.base), &[(auth, &bearer)]).await;
        assert_eq!(reply.headers["x-frame-options"], "DENY", "{path}");
        let csp = reply.headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(reply.headers["x-content-type-options"], "nosniff");
    }
}

/// Each login gets its own random session; logging out ends that session on the server (a copy of the cookie
/// stops working) and leaves the others; a session stops working at the end of its lifetime.
#[tokio::test]
async fn sessions_are_random_per_login_end_at_logout_and_expire_on_the_server() {
    let (_db, connected) = two_migrations("sec_sessions").await;
    let server = serve(admin_state(&connected).session_lifetime(Duration::from_secs(2))).await;
    let one = login(&server, ADMIN, "alice").await;
    let two = login(&server, ADMIN, "alice").await;
    assert_ne!(one, two, "two logins under one name share a cookie");
    let session = get(&format!("{}/api/session", server.base), &[("cookie", &one)]).await;
    assert_eq!(session.json()["actor"], "web:alice");
    assert!(session.json()["expires_in_seconds"].as_u64().unwrap() <= 2);

    let logout = request(
        Method::POST,
        &format!("{}/logout", server.base),
        &[("cookie", &one)],
        "",
    )
    .await;
    assert_eq!(logout.status, StatusCode::SEE_OTHER);
    let after = get(&format!("{}/api/session", server.base), &[("cookie", &one)]).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED, "{}", after.body);
    let confirm = get(
        &format!("{}/migrations/{FIRST}/confirm/pause", server.base),
        &[("cookie", &one)],
    )
    .await;
    assert_eq!(
        confirm.status,
        StatusCode::SEE_OTHER,
        "sent to the login form"
    );
    let still = get(&format!("{}/api/session", server.base), &[("cookie", &two)]).await;
    assert_eq!(still.status, StatusCode::OK, "the other login is untouched");

    tokio::time::sleep(Duration::from_millis(2200)).await;
    let expired = get(&format!("{}/api/session", server.base), &[("cookie", &two)]).await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED, "{}", expired.body);
}

/// A NUL character or a number that could not be read back in args, or control characters in a name, get a 4xx
/// that names the problem (never a 500), on the API and on the pages that redirect; nothing is changed.
#[tokio::test]
async fn nul_and_control_characters_get_a_4xx_naming_the_field() {
    let (_db, connected) = two_migrations("sec_nul").await;
    let server = serve(admin_state(&connected)).await;
    let (auth, bearer) = bearer(ADMIN);
    let headers = [(auth, bearer.as_str())];
    let args = request(
        Method::PUT,
        &format!("{}/api/migrations/{FIRST}/args", server.base),
        &headers,
        r#"{"note": "a\u0000b", "batchSize": 5}"#,
    )
    .await;
    assert_eq!(
        args.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        args.body
    );
    assert!(
        args.error().starts_with("args.note contains the NUL"),
        "{}",
        args.error()
    );
    let key = request(
        Method::PUT,
        &format!("{}/api/migrations/{FIRST}/args", server.base),
        &headers,
        r#"{"a\u0000": 1}"#,
    )
    .await;
    assert_eq!(key.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", key.body);
    // jsonb keeps this as 309 exact digits, which round past f64::MAX when read back: refused before it is stored.
    let edge = request(
        Method::PUT,
        &format!("{}/api/migrations/{FIRST}/args", server.base),
        &headers,
        r#"{"limit": [-1.7976931348623157e308]}"#,
    )
    .await;
    assert_eq!(
        edge.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        edge.body
    );
    assert!(
        edge.error().starts_with("args.limit[0] is a number"),
        "{}",
        edge.error()
    );
    assert_eq!(
        connected.control.get(FIRST).await.unwrap().args,
        json!({"batchSize": 10})
    );
    for path in [
        "/api/migrations/a%00b".to_owned(),
        "/api/migrations/a%00b/pause".to_owned(),
        "/api/migrations/a%0Ab/args".to_owned(),
    ] {
        let method = if path.ends_with("args") {
            Method::PUT
        } else if path.ends_with("pause") {
            Method::POST
        } else {
            Method::GET
        };
        let reply = request(method, &format!("{}{path}", server.base), &headers, "{}").await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{path}: {}",
            reply.body
        );
        assert!(
            reply.error().contains("control characters"),
            "{}",
            reply.error()
        );
    }
    // Pages that redirect an anonymous visitor to the login form, with a name that cannot be a Location.
    for path in ["/migrations/a%0Db/confirm/pause", "/migrations/a%00b"] {
        let reply = get(&format!("{}{path}", server.base), &[]).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{path}: {}",
            reply.body
        );
        assert!(reply.body.contains("control characters"), "{path}");
    }
}

/// The errors the framework answers by itself are JSON too: 405, 413, 415, 422.
#[tokio::test]
async fn the_frameworks_own_errors_are_json() {
    let (_db, connected) = two_migrations("sec_json_errors").await;
    let server = serve(admin_state(&connected)).await;
    let (auth, bearer) = bearer(ADMIN);
    let not_allowed = request(
        Method::DELETE,
        &format!("{}/api/migrations", server.base),
        &[(auth, &bearer)],
        "",
    )
    .await;
    assert_eq!(not_allowed.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(
        not_allowed.error().contains("does not take DELETE"),
        "{}",
        not_allowed.error()
    );
    let huge = format!("{{\"note\": \"{}\"}}", "x".repeat(200_000));
    let too_large = request(
        Method::PUT,
        &format!("{}/api/migrations/{FIRST}/args", server.base),
        &[(auth, &bearer)],
        &huge,
    )
    .await;
    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        too_large.error().contains("larger than"),
        "{}",
        too_large.error()
    );
    let unsupported = request(
        Method::POST,
        &format!("{}/login", server.base),
        &[("content-type", "application/json")],
        "{}",
    )
    .await;
    assert_eq!(unsupported.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(unsupported.error().contains("x-www-form-urlencoded"));
    let unprocessable = request(
        Method::POST,
        &format!("{}/login", server.base),
        &[("content-type", "application/x-www-form-urlencoded")],
        "name=nobody",
    )
    .await;
    assert_eq!(unprocessable.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        unprocessable.error().contains("token"),
        "{}",
        unprocessable.error()
    );
}

/// The confirmation page is offered only for an action the status allows; otherwise it says why, with no form.
#[tokio::test]
async fn confirmation_is_offered_only_for_allowed_actions() {
    let (_db, connected) = two_migrations("sec_confirm").await;
    let server = serve(admin_state(&connected)).await;
    let (auth, bearer) = bearer(ADMIN);
    let refused = get(
        &format!("{}/migrations/{SECOND}/confirm/pause", server.base),
        &[(auth, &bearer)],
    )
    .await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert!(
        refused
            .body
            .contains("cannot pause a migration that is finished")
    );
    assert!(
        !refused.body.contains("id=\"confirm\""),
        "a form was offered"
    );
    let offered = get(
        &format!("{}/migrations/{FIRST}/confirm/pause", server.base),
        &[(auth, &bearer)],
    )
    .await;
    assert_eq!(offered.status, StatusCode::OK);
    assert!(offered.body.contains("id=\"confirm\""));
}

/// `bearer` in any case is the Bearer scheme; a Basic header a proxy adds is ignored (reads stay open, changes
/// still need the token).
#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_a_basic_header_is_ignored() {
    let (_db, connected) = two_migrations("sec_bearer").await;
    let server = serve(admin_state(&connected)).await;
    let lower = format!("bearer {ADMIN}");
    let paused = request(
        Method::POST,
        &format!("{}/api/migrations/{FIRST}/pause", server.base),
        &[("authorization", &lower)],
        "",
    )
    .await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.body);
    let basic = [("authorization", "Basic cHJveHk6cGFzcw==")];
    let read = get(&format!("{}/api/migrations", server.base), &basic).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    let page = get(&server.base, &basic).await;
    assert_eq!(page.status, StatusCode::OK);
    let change = request(
        Method::POST,
        &format!("{}/api/migrations/{FIRST}/resume", server.base),
        &basic,
        "",
    )
    .await;
    assert_eq!(change.status, StatusCode::UNAUTHORIZED);
}

/// After five wrong tokens in a minute the login form refuses every attempt (429 with Retry-After), even the
/// right token, so guessing is slow.
#[tokio::test]
async fn wrong_logins_are_throttled() {
    let (_db, connected) = two_migrations("sec_throttle").await;
    let server = serve(admin_state(&connected)).await;
    let attempt = |token: &'static str| {
        let url = format!("{}/login", server.base);
        async move {
            request(
                Method::POST,
                &url,
                &[("content-type", "application/x-www-form-urlencoded")],
                &format!("token={token}&name=eve"),
            )
            .await
        }
    };
    for _ in 0..5 {
        assert_eq!(attempt("guess").await.status, StatusCode::UNAUTHORIZED);
    }
    let closed = attempt(ADMIN).await;
    assert_eq!(closed.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(closed.headers.contains_key("retry-after"));
    assert!(closed.headers.get("set-cookie").is_none());
}

/// A Host name that is not this server's (a DNS-rebinding page) is refused; IP addresses and configured names
/// are answered.
#[tokio::test]
async fn a_foreign_host_name_is_refused() {
    let (_db, connected) = two_migrations("sec_host").await;
    let server = serve(admin_state(&connected)).await;
    let rebound = get(
        &format!("{}/api/migrations", server.base),
        &[("host", "rebind.attacker.example")],
    )
    .await;
    assert_eq!(rebound.status, StatusCode::BAD_REQUEST);
    assert!(
        rebound.error().contains("BGMIGRATE_ALLOWED_HOSTS"),
        "{}",
        rebound.error()
    );
    let named =
        serve(admin_state(&connected).allowed_hosts(AllowedHosts::parse("ops.example.com"))).await;
    let ok = get(
        &format!("{}/api/status", named.base),
        &[("host", "ops.example.com")],
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
}

/// Reads from `stream` until the server closes it; how long that took.
async fn closed_after(
    mut stream: tokio::net::TcpStream,
    trickle: Option<&[u8]>,
) -> (Duration, String) {
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        if let Some(bytes) = trickle {
            // One byte a second; a write error means the server hung up.
            if stream.write_all(&bytes[..1]).await.is_err() {
                break;
            }
        }
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never closed");
    }
    (
        started.elapsed(),
        String::from_utf8_lossy(&seen).into_owned(),
    )
}

/// The server `bgmigrate web` runs cuts off a connection that sends nothing, one that trickles its headers, and
/// answers a trickled body with 408.
#[tokio::test]
async fn idle_and_trickling_connections_are_cut_off() {
    let (_db, connected) = two_migrations("sec_slow").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = web::router(admin_state(&connected));
    tokio::spawn(web::serve(listener, app, std::future::pending()));
    let connect = || tokio::net::TcpStream::connect(addr);

    let idle = closed_after(connect().await.unwrap(), None);
    let mut headers = connect().await.unwrap();
    headers
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let headers = closed_after(headers, Some(b"X"));
    let mut body = connect().await.unwrap();
    body.write_all(
        format!(
            "PUT /api/migrations/{FIRST}/args HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ADMIN}\r\n\
             Content-Length: 1000\r\n\r\n{{"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let body = closed_after(body, Some(b" "));
    let ((idle, _), (headers, _), (body, answer)) = tokio::join!(idle, headers, body);
    let limit = web::HEADER_TIMEOUT + Duration::from_secs(3);
    assert!(idle < limit, "idle connection held {idle:?}");
    assert!(headers < limit, "trickled headers held {headers:?}");
    assert!(body < limit, "trickled body held {body:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}
