//! `show`, the JSON API and the detail page name the stores a migration uses — each with its kind and where it is —
//! and never a store's password.

mod common;
mod web_support;

use bgmigrate::config::StoreSetting;
use bgmigrate::web::WebState;
use common::{TestDb, text};
use web_support::{get, items, serve};

const COPY: &str = "20240101_0001_copy_items_to_warehouse";

/// The warehouse's URL with a password in it (the test server trusts every login, so it is never checked).
fn with_password(db: &TestDb) -> String {
    db.url
        .replacen("postgres://postgres@", "postgres://postgres:s3cret@", 1)
}

/// `host:port` of the test server, as the stores show it.
fn host_port(db: &TestDb) -> String {
    let rest = db.url.split_once('@').expect("user@host").1;
    rest.rsplit_once('/').expect("host/db").0.to_owned()
}

/// A copy from the control database (`postgres`) into a second Postgres database (`warehouse`), registered.
async fn copy_into_warehouse(test: &str) -> (TestDb, TestDb) {
    let db = TestDb::create(test).await;
    let warehouse = TestDb::create(&format!("{test}_wh")).await;
    items(&db, 10).await;
    items(&warehouse, 0).await;
    db.define(
        COPY,
        "kind = \"copy\"\nfrom = { store = \"postgres\", table = \"items\", key = [\"id\"] }\n\
         to = { store = \"warehouse\", table = \"items\" }\n",
    );
    let migrate = db.cli_with_env(
        &["migrate"],
        &[("BGMIGRATE_STORE_WAREHOUSE", &with_password(&warehouse))],
    );
    assert!(migrate.status.success(), "{}", text(&migrate));
    (db, warehouse)
}

/// `bgmigrate show NAME` (text and --json) names the copy's source and target stores with their kind and
/// `postgres://host:port/database`, without the password given in BGMIGRATE_STORE_WAREHOUSE.
#[tokio::test]
async fn show_names_the_stores_a_copy_uses_without_their_password() {
    let (db, warehouse) = copy_into_warehouse("show_stores").await;
    let env = [("BGMIGRATE_STORE_WAREHOUSE", with_password(&warehouse))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let shown = db.cli_with_env(&["show", COPY], &env);
    assert!(shown.status.success(), "{}", text(&shown));
    let stdout = String::from_utf8_lossy(&shown.stdout);
    let expected = format!(
        "stores: from postgres (postgres, postgres://{0}/{1}), to warehouse (postgres, postgres://{0}/{2})",
        host_port(&db),
        db.name,
        warehouse.name
    );
    assert!(stdout.contains(&expected), "{expected}\n{stdout}");
    assert!(!stdout.contains("s3cret"), "{stdout}");

    let json = db.cli_with_env(&["show", COPY, "--json"], &env);
    assert!(json.status.success(), "{}", text(&json));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(value["stores"][1]["role"], "to");
    assert_eq!(value["stores"][1]["name"], "warehouse");
    assert_eq!(value["stores"][1]["kind"], "postgres");
    assert_eq!(
        value["stores"][1]["location"],
        format!("postgres://{}/{}", host_port(&db), warehouse.name)
    );
    assert!(!String::from_utf8_lossy(&json.stdout).contains("s3cret"));

    // A process without the warehouse says so instead of guessing.
    let without = db.cli(&["show", COPY]);
    assert!(
        String::from_utf8_lossy(&without.stdout)
            .contains("to warehouse (not configured in this process)"),
        "{}",
        text(&without)
    );
}

/// `GET /api/migrations/NAME` carries the stores the migration uses, and the detail page shows them, both without
/// the password.
#[tokio::test]
async fn the_api_record_and_the_detail_page_name_the_stores_without_their_password() {
    let (db, warehouse) = copy_into_warehouse("api_stores").await;
    let setting =
        StoreSetting::from_flag(&format!("warehouse={}", with_password(&warehouse))).unwrap();
    let connected = db
        .connect()
        .await
        .with_stores(&[setting])
        .await
        .expect("stores");
    let server =
        serve(WebState::new(connected.control.clone()).stores(connected.stores.clone())).await;

    let reply = get(&format!("{}/api/migrations/{COPY}", server.base), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let stores = &reply.json()["stores"];
    assert_eq!(
        stores,
        &serde_json::json!([
            {"role": "from", "name": "postgres", "kind": "postgres",
             "location": format!("postgres://{}/{}", host_port(&db), db.name)},
            {"role": "to", "name": "warehouse", "kind": "postgres",
             "location": format!("postgres://{}/{}", host_port(&db), warehouse.name)},
        ])
    );
    assert!(!reply.body.contains("s3cret"));

    let page = get(&format!("{}/migrations/{COPY}", server.base), &[]).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains(&format!(
            "to warehouse (postgres, postgres://{}/{})",
            host_port(&db),
            warehouse.name
        )),
        "{}",
        page.body
    );
    assert!(!page.body.contains("s3cret"));
}
