//! Splitting a multi-statement SQL file into statements, respecting quotes and comments.

/// The statements of `sql`, separated by `;` outside quotes and comments; blank and comment-only pieces are dropped.
pub fn split(sql: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut meaningful = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' | '`' => {
                meaningful = true;
                current.push(c);
                while let Some(q) = chars.next() {
                    current.push(q);
                    if q == '\\' {
                        if let Some(escaped) = chars.next() {
                            current.push(escaped);
                        }
                    } else if q == c {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                for skipped in chars.by_ref() {
                    if skipped == '\n' {
                        current.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut previous = ' ';
                for skipped in chars.by_ref() {
                    if previous == '*' && skipped == '/' {
                        break;
                    }
                    previous = skipped;
                }
                current.push(' ');
            }
            ';' => {
                if meaningful {
                    statements.push(current.trim().to_owned());
                }
                current.clear();
                meaningful = false;
            }
            other => {
                meaningful |= !other.is_whitespace();
                current.push(other);
            }
        }
    }
    if meaningful {
        statements.push(current.trim().to_owned());
    }
    statements
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semicolons_inside_strings_and_comments_do_not_split() {
        let sql = "-- a comment; not a split\nCREATE TABLE t (s String DEFAULT 'a;b') ENGINE = Memory;\n\
                   /* block; comment */ INSERT INTO t VALUES ('it\\'s;');\n\n-- trailing comment only\n";
        assert_eq!(
            split(sql),
            vec![
                "CREATE TABLE t (s String DEFAULT 'a;b') ENGINE = Memory".to_owned(),
                "INSERT INTO t VALUES ('it\\'s;')".to_owned(),
            ]
        );
    }
}
