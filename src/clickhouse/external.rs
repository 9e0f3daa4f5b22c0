//! External data for a query: a small table sent beside the SQL (`multipart/form-data`), which the query names like
//! any table (`WHERE id IN bgm_keys`). ClickHouse reads it as data, not as SQL, so a list of 100,000 keys costs no
//! parsing and meets no `max_ast_elements` / `max_query_size` limit. Part of the HTTP interface on 18.16 and current
//! servers alike.

use super::ChType;

/// Rows for an external table, as `TabSeparated`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalTable {
    name: String,
    structure: String,
    tsv: Vec<u8>,
}

impl ExternalTable {
    /// A table `name` with `columns` (name and type each) holding `rows` (one text per column; integers as
    /// decimal text).
    pub fn new(name: &str, columns: &[(&str, &ChType)], rows: &[Vec<String>]) -> ExternalTable {
        let structure = columns
            .iter()
            .map(|(column, ty)| format!("{column} {}", type_name(ty)))
            .collect::<Vec<_>>()
            .join(", ");
        let mut tsv = Vec::with_capacity(rows.len() * 40);
        for row in rows {
            for (i, value) in row.iter().enumerate() {
                if i > 0 {
                    tsv.push(b'\t');
                }
                escape_into(value, &mut tsv);
            }
            tsv.push(b'\n');
        }
        ExternalTable {
            name: name.to_owned(),
            structure,
            tsv,
        }
    }

    /// The URL parameters that describe the table: `<name>_structure`, `<name>_format`.
    pub fn url_params(&self) -> [(String, String); 2] {
        [
            (format!("{}_structure", self.name), self.structure.clone()),
            (format!("{}_format", self.name), "TabSeparated".to_owned()),
        ]
    }

    /// The request body and its content type, with a boundary that does not occur in the data.
    pub fn multipart(&self, mut boundary: String) -> (Vec<u8>, String) {
        while contains(&self.tsv, boundary.as_bytes()) {
            boundary.push('x');
        }
        let mut body = Vec::with_capacity(self.tsv.len() + 256);
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{0}\"; filename=\"{0}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n",
                self.name
            )
            .as_bytes(),
        );
        body.extend_from_slice(&self.tsv);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        (body, format!("multipart/form-data; boundary={boundary}"))
    }
}

/// The type as the external table declares it (key columns are `String`, integers or `UUID`, sent as text).
fn type_name(ty: &ChType) -> String {
    match ty {
        ChType::Int(_) | ChType::UInt(_) | ChType::Uuid => ty.to_string(),
        ChType::Nullable(inner) => format!("Nullable({})", type_name(inner)),
        _ => "String".to_owned(),
    }
}

/// `TabSeparated` escaping: backslash, tab, newline and carriage return.
fn escape_into(value: &str, out: &mut Vec<u8>) {
    for byte in value.bytes() {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            other => out.push(other),
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_escaped_tab_separated_and_described_in_the_url() {
        let table = ExternalTable::new(
            "bgm_keys",
            &[("id", &ChType::String), ("n", &ChType::UInt(32))],
            &[
                vec!["a\tb\\c\nd".into(), "7".into()],
                vec!["é".into(), "8".into()],
            ],
        );
        assert_eq!(table.tsv, "a\\tb\\\\c\\nd\t7\né\t8\n".as_bytes());
        assert_eq!(
            table.url_params(),
            [
                ("bgm_keys_structure".into(), "id String, n UInt32".into()),
                ("bgm_keys_format".into(), "TabSeparated".into())
            ]
        );
    }

    #[test]
    fn the_multipart_boundary_never_occurs_in_the_data() {
        let table = ExternalTable::new("k", &[("id", &ChType::String)], &[vec!["--b".into()]]);
        let (body, content_type) = table.multipart("b".into());
        assert_eq!(content_type, "multipart/form-data; boundary=bx");
        let body = String::from_utf8(body).unwrap();
        assert!(
            body.starts_with("--bx\r\nContent-Disposition: form-data; name=\"k\"; filename=\"k\"")
        );
        assert!(body.ends_with("\r\n\r\n--b\n\r\n--bx--\r\n"), "{body:?}");
    }
}
