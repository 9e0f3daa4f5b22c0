//! The args editor as a form: one input per key, values typed as JSON (bare words count as strings), secret
//! values never sent to the browser. Turns a submission into the patch `ControlStore::set_args` validates.

use serde_json::{Map, Value};

use super::view::{MASK, looks_secret};
use crate::args::ArgsError;

/// Keys every migration understands, offered even when unset.
const KNOWN_KEYS: [&str; 3] = ["batchSize", "maxBatchBytes", "sleepMs"];

/// One input of the editor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The args key.
    pub key: String,
    /// The text in the input (empty for secrets, which are never sent out).
    pub value: String,
    /// Whether the key looks secret (a password input, left empty to keep the value).
    pub secret: bool,
    /// The validation error of this key, shown next to it.
    pub error: Option<String>,
}

/// The editor's content: inputs, a row to add a key, and an error that concerns no single key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArgsForm {
    /// The inputs.
    pub fields: Vec<Field>,
    /// Name of a key to add.
    pub new_key: String,
    /// Its value.
    pub new_value: String,
    /// An error next to the new key.
    pub new_error: Option<String>,
    /// An error about the whole form.
    pub error: Option<String>,
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// JSON if it parses, else the text as a string (so `abc` is the string "abc").
fn value_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

impl ArgsForm {
    /// The editor filled with `args` (secrets left empty).
    pub fn from_args(args: &Value) -> Self {
        let map = args.as_object().cloned().unwrap_or_default();
        let mut keys: Vec<String> = KNOWN_KEYS.iter().map(|k| (*k).to_owned()).collect();
        keys.extend(
            map.keys()
                .filter(|k| !KNOWN_KEYS.contains(&k.as_str()))
                .cloned(),
        );
        let fields = keys
            .into_iter()
            .map(|key| {
                let secret = looks_secret(&key);
                let value = match map.get(&key) {
                    Some(_) if secret => String::new(),
                    Some(value) => text_of(value),
                    None => String::new(),
                };
                Field {
                    key,
                    value,
                    secret,
                    error: None,
                }
            })
            .collect();
        Self {
            fields,
            ..Self::default()
        }
    }

    /// The editor as submitted (`k.KEY`, `new_key`, `new_value`; other fields such as `csrf` are ignored).
    pub fn from_submission(pairs: &[(String, String)]) -> Self {
        let mut form = Self::default();
        for (name, value) in pairs {
            if let Some(key) = name.strip_prefix("k.") {
                form.fields.push(Field {
                    key: key.to_owned(),
                    value: value.trim().to_owned(),
                    secret: looks_secret(key),
                    error: None,
                });
            } else if name == "new_key" {
                form.new_key = value.trim().to_owned();
            } else if name == "new_value" {
                form.new_value = value.trim().to_owned();
            }
        }
        form
    }

    /// The patch this submission means against `current`: a changed value replaces, an emptied one removes the
    /// key, an empty secret keeps its value, and the new key (if named) is added.
    pub fn patch(&self, current: &Value) -> Value {
        let current = current.as_object().cloned().unwrap_or_default();
        let mut patch = Map::new();
        for field in &self.fields {
            let unchanged_secret = field.secret && (field.value.is_empty() || field.value == MASK);
            if unchanged_secret {
                continue;
            }
            if field.value.is_empty() {
                if current.contains_key(&field.key) {
                    patch.insert(field.key.clone(), Value::Null);
                }
            } else {
                let value = value_of(&field.value);
                if current.get(&field.key) != Some(&value) {
                    patch.insert(field.key.clone(), value);
                }
            }
        }
        if !self.new_key.is_empty() {
            patch.insert(self.new_key.clone(), value_of(&self.new_value));
        }
        Value::Object(patch)
    }

    /// Puts a validation error next to the key it names (or on the form), and blanks secrets again.
    pub fn with_error(mut self, err: &ArgsError) -> Self {
        let message = err.to_string();
        let key = match err {
            ArgsError::OutOfRange { key, .. } | ArgsError::NotOneOf { key, .. } => Some(*key),
            _ => None,
        };
        for field in &mut self.fields {
            if field.secret {
                field.value.clear();
            }
        }
        match key {
            Some(key) if key == self.new_key => self.new_error = Some(message),
            Some(key) => match self.fields.iter_mut().find(|f| f.key == key) {
                Some(field) => field.error = Some(message),
                None => self.error = Some(message),
            },
            None => self.error = Some(message),
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn submit(pairs: &[(&str, &str)]) -> ArgsForm {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ArgsForm::from_submission(&pairs)
    }

    #[test]
    fn a_submission_becomes_a_patch_of_what_changed_keeping_untouched_secrets() {
        let current = json!({"batchSize": 5000, "sleepMs": 10, "apiToken": "s3cret", "note": "a"});
        let form = submit(&[
            ("csrf", "x"),
            ("k.batchSize", "2500"),
            ("k.sleepMs", ""),
            ("k.maxBatchBytes", ""),
            ("k.apiToken", ""),
            ("k.note", "a"),
            ("new_key", "label"),
            ("new_value", "blue"),
        ]);
        assert_eq!(
            form.patch(&current),
            json!({"batchSize": 2500, "sleepMs": null, "label": "blue"})
        );
    }

    #[test]
    fn secrets_are_never_put_back_into_the_editor() {
        let form = ArgsForm::from_args(&json!({"password": "hunter2", "batchSize": 7}));
        let password = form.fields.iter().find(|f| f.key == "password").unwrap();
        assert!(password.secret && password.value.is_empty());
        assert_eq!(form.fields[0].value, "7");
    }

    #[test]
    fn an_out_of_range_error_lands_next_to_its_key() {
        let form = submit(&[("k.batchSize", "abc")]);
        let err = crate::args::Args::parse(&json!({"batchSize": "abc"})).unwrap_err();
        let form = form.with_error(&err);
        assert!(
            form.fields[0]
                .error
                .as_deref()
                .unwrap()
                .contains("args.batchSize")
        );
        assert_eq!(form.error, None);
    }
}
