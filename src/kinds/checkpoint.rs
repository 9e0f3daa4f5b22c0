//! A kind's checkpoint (the control table's `state` column) as a typed struct, read and written through serde, and
//! the one error for a checkpoint that cannot be read.
//!
//! The JSON each struct writes is the contract with rows already in control tables: a migration resumes from the
//! checkpoint an older version wrote. So the structs keep the field names and the `null`s of the JSON they replace
//! (`{"cursor": null}` before a key walk's first row; `done` written only when true, by the backfill), and unknown
//! fields are ignored on reading, as they always were.

use std::fmt::Display;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::migration::MigrationError;

/// A kind's typed checkpoint.
pub trait Checkpoint: Serialize + DeserializeOwned {
    /// The JSON shape, for the error when a checkpoint cannot be read (`{"cursor": ["key", ...]}`).
    const SHAPE: &'static str;

    /// Reads the checkpoint in `state`; `{}` (before the first batch) reads as the start of the walk.
    fn read(state: &Value) -> Result<Self, MigrationError> {
        Self::deserialize(state).map_err(|err| unreadable(state, Self::SHAPE, err))
    }

    /// The JSON the engine stores.
    fn to_state(&self) -> Value {
        serde_json::to_value(self).expect("a checkpoint has string keys only")
    }
}

/// The error for a checkpoint that cannot be read: what is wrong, the shape expected, and what to do.
pub fn unreadable(state: &Value, shape: &str, problem: impl Display) -> MigrationError {
    MigrationError::Permanent(format!(
        "the checkpoint {state} cannot be read ({problem}; expected {shape}); fix the state or retry --from-start"
    ))
}

/// The position of a key walk: the last key done, one text per key column (`null` before the first row).
/// `{"cursor": ["key", ...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCursor {
    /// The last key done; `None` (written `null`) before the first row.
    #[serde(default)]
    pub cursor: Option<Vec<String>>,
}

impl Checkpoint for KeyCursor {
    const SHAPE: &'static str = KEY_CURSOR_SHAPE;
}

/// The shape of a [`KeyCursor`], for messages.
pub const KEY_CURSOR_SHAPE: &str = "{\"cursor\": [\"key\", ...]}";

impl KeyCursor {
    /// A cursor after `keys` (`None`: before the first row).
    pub fn after(keys: Option<Vec<String>>) -> Self {
        Self { cursor: keys }
    }

    /// The last key done, checked to have one text per key column (`state` is the checkpoint it came from, for
    /// the error).
    pub fn keys(&self, arity: usize, state: &Value) -> Result<Option<&[String]>, MigrationError> {
        match &self.cursor {
            Some(keys) if keys.len() != arity => Err(unreadable(
                state,
                KEY_CURSOR_SHAPE,
                format_args!(
                    "its cursor has {} values for a key of {arity} columns",
                    keys.len()
                ),
            )),
            keys => Ok(keys.as_deref()),
        }
    }
}

/// A checkpoint whose position is a [`KeyCursor`]: what key ranges (`parallelism`) are cut at and bounded by.
pub trait KeyPosition: Checkpoint {
    /// The position.
    fn cursor(&self) -> &KeyCursor;

    /// The checkpoint just after `key`: where a range that starts after `key` begins.
    fn after_key(key: Vec<String>) -> Self;
}

/// A bare key cursor is its own position (copies into SQL stores checkpoint nothing else).
impl KeyPosition for KeyCursor {
    fn cursor(&self) -> &KeyCursor {
        self
    }

    fn after_key(key: Vec<String>) -> Self {
        KeyCursor::after(Some(key))
    }
}

/// The last key of a key range, from the checkpoint `upper` at which the next range starts (`None`: no end),
/// checked to have `arity` values.
pub fn range_end<C: KeyPosition>(
    upper: Option<&Value>,
    arity: usize,
) -> Result<Option<Vec<String>>, MigrationError> {
    let Some(upper) = upper else {
        return Ok(None);
    };
    let end = C::read(upper)?;
    Ok(end.cursor().keys(arity, upper)?.map(<[String]>::to_vec))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_key_cursor_reads_and_writes_the_json_of_earlier_versions() {
        for state in [json!({"cursor": ["10", "a"]}), json!({"cursor": null})] {
            assert_eq!(KeyCursor::read(&state).unwrap().to_state(), state);
        }
        assert_eq!(KeyCursor::read(&json!({})).unwrap(), KeyCursor::default());
        let extra = json!({"cursor": ["7"], "note": "kept by an operator"});
        assert_eq!(
            KeyCursor::read(&extra).unwrap().cursor,
            Some(vec!["7".to_owned()])
        );
    }

    #[test]
    fn an_unreadable_cursor_says_to_fix_the_state_or_start_again() {
        let state = json!({"cursor": [1, 2]});
        let err = KeyCursor::read(&state).unwrap_err().to_string();
        assert!(
            err.starts_with("the checkpoint {\"cursor\":[1,2]} cannot be read (")
                && err.ends_with(
                    "expected {\"cursor\": [\"key\", ...]}); fix the state or retry --from-start"
                ),
            "{err}"
        );
        let state = json!({"cursor": ["1", "2"]});
        let short = KeyCursor::read(&state).unwrap();
        let err = short.keys(1, &state).unwrap_err().to_string();
        assert!(
            err.contains("(its cursor has 2 values for a key of 1 columns; expected"),
            "{err}"
        );
    }
}
