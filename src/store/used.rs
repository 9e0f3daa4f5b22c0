//! Which stores a migration uses, as an operator may see them: the store names its definition gives, each with its
//! kind and where it is — never a credential (a Postgres store shows `postgres://host:port/database`, a ClickHouse
//! store its endpoint and database, a SQLite store its file).

use serde::Serialize;
use serde_json::Value;

use super::{Dialect, Stores};

/// One store a migration names, as this process knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreUse {
    /// Where the definition names it: `store` (backfills, rewrites), `from` or `to` (copies).
    pub role: &'static str,
    /// The store's name, as the definition writes it.
    pub name: String,
    /// `postgres`, `sqlite` or `clickhouse`; `None` when this process has no store of that name.
    pub kind: Option<&'static str>,
    /// Where it is, without user or password; `None` when this process has no store of that name.
    pub location: Option<String>,
}

impl Stores {
    /// The stores named by a migration's `definition` (its kind's parameters): `store`, `from.store` and
    /// `to.store`, the fields every built-in kind uses (and custom scripts may follow), in that order.
    pub fn used_by(&self, definition: &Value) -> Vec<StoreUse> {
        let named = [
            ("store", definition.get("store")),
            ("from", definition.get("from").and_then(|f| f.get("store"))),
            ("to", definition.get("to").and_then(|t| t.get("store"))),
        ];
        named
            .into_iter()
            .filter_map(|(role, name)| Some((role, name?.as_str()?)))
            .map(|(role, name)| {
                let (kind, location) = self.describe(name).unzip();
                StoreUse {
                    role,
                    name: name.to_owned(),
                    kind,
                    location,
                }
            })
            .collect()
    }

    /// The kind and the credential-free location of the store called `name`, if configured.
    fn describe(&self, name: &str) -> Option<(&'static str, String)> {
        if let Some(clickhouse) = self.clickhouse(name) {
            let config = clickhouse.config();
            return Some((
                "clickhouse",
                format!("{}{}", config.endpoint, config.database),
            ));
        }
        let store = self.sql(name)?;
        let kind = match store.dialect() {
            Dialect::Postgres => "postgres",
            Dialect::Sqlite => "sqlite",
        };
        Some((kind, store.id().as_str().to_owned()))
    }
}

/// `from postgres (postgres, postgres://db:5432/app), to analytics (not configured here)`: one line for `show` and
/// the UI.
pub fn describe_uses(uses: &[StoreUse]) -> String {
    if uses.is_empty() {
        return "none named in the definition".into();
    }
    uses.iter()
        .map(|u| match (&u.kind, &u.location) {
            (Some(kind), Some(location)) => format!("{} {} ({kind}, {location})", u.role, u.name),
            _ => format!("{} {} (not configured in this process)", u.role, u.name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::clickhouse::ClickHouse;

    #[test]
    fn a_copy_names_its_source_and_target_without_the_password() {
        let clickhouse =
            ClickHouse::from_url("http://app:s3cret@ch.internal:8123/analytics").unwrap();
        let stores = Stores::new().with_clickhouse("clickhouse", clickhouse);
        let uses = stores.used_by(&json!({
            "from": {"store": "postgres", "table": "traces", "key": ["id"]},
            "to": {"store": "clickhouse", "table": "traces"}
        }));
        assert_eq!(
            uses,
            vec![
                StoreUse {
                    role: "from",
                    name: "postgres".into(),
                    kind: None,
                    location: None
                },
                StoreUse {
                    role: "to",
                    name: "clickhouse".into(),
                    kind: Some("clickhouse"),
                    location: Some("http://ch.internal:8123/analytics".into())
                },
            ]
        );
        let line = describe_uses(&uses);
        assert_eq!(
            line,
            "from postgres (not configured in this process), to clickhouse (clickhouse, http://ch.internal:8123/analytics)"
        );
        assert!(!line.contains("s3cret") && !line.contains("app@"));
    }

    #[test]
    fn a_definition_that_names_no_store_says_so() {
        let uses = Stores::new().used_by(&json!({"table": "t"}));
        assert!(uses.is_empty());
        assert_eq!(describe_uses(&uses), "none named in the definition");
    }
}
