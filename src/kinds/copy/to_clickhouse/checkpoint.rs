//! The checkpoint of a copy into ClickHouse: the position of its walk — `{"cursor": ["key", ...]}` in key order,
//! `{"ctid": "(page,offset)", "since": {...}}` in physical order, with `"walked": true` once only the catch-up pass
//! is left — and, once the last batch was sent and the definition asks for
//! it, the verify phase's progress beside it (`"verify": {...}`).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::catch_up::WriteHorizon;
use super::pages::Tid;
use super::verify::VerifyState;
use crate::kinds::checkpoint::{Checkpoint, KeyCursor, KeyPosition};

/// A copy's checkpoint; `W` is the walk's position, [`crate::kinds::checkpoint::KeyCursor`] or [`PageCursor`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CopyCheckpoint<W> {
    /// Where the copy's walk is.
    #[serde(flatten)]
    pub walk: W,
    /// The verify phase's progress, once it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyState>,
    /// The key after which this key range starts, for a range split off by `parallelism` (absent for the first
    /// range, which starts at the table's start): where the range's own verify pass begins, so that the ranges
    /// together verify every key once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_start: Option<Vec<String>>,
}

impl<W> CopyCheckpoint<W> {
    /// The checkpoint after a batch that walked to `walk`, in the same range as `self`.
    pub fn walked_to<V>(&self, walk: V, verify: Option<VerifyState>) -> CopyCheckpoint<V> {
        CopyCheckpoint {
            walk,
            verify,
            range_start: self.range_start.clone(),
        }
    }
}

impl<W: Serialize + DeserializeOwned> Checkpoint for CopyCheckpoint<W> {
    const SHAPE: &'static str = "{\"cursor\": [\"key\", ...]} or {\"ctid\": \"(page,offset)\"}, with \
                                 \"verify\": {...} once verifying and \"range_start\": [\"key\", ...] in a key \
                                 range";
}

impl KeyPosition for CopyCheckpoint<KeyCursor> {
    fn cursor(&self) -> &KeyCursor {
        &self.walk
    }

    fn after_key(key: Vec<String>) -> Self {
        Self {
            walk: KeyCursor::after(Some(key.clone())),
            verify: None,
            range_start: Some(key),
        }
    }
}

/// The position of a walk in physical order: the `ctid` of the last row sent (absent or `null` before the first),
/// the horizon the walk started at, and whether only its catch-up pass is left (see [`super::catch_up`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageCursor {
    /// The last row sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctid: Option<Tid>,
    /// Where the walk's writes start: read before its first batch (absent in checkpoints of earlier versions,
    /// whose catch-up then copies every row again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<WriteHorizon>,
    /// True once a walk run as one stream has read the table to its end: the catch-up pass comes next.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub walked: bool,
}

impl PageCursor {
    /// A cursor after `tid`, of a walk that started at `since`.
    pub fn after_tid(tid: Tid, since: Option<WriteHorizon>) -> Self {
        Self {
            ctid: Some(tid),
            since,
            walked: false,
        }
    }

    /// The `ctid` after which rows remain: `(0,0)` before the first batch.
    pub fn after(&self) -> Tid {
        self.ctid.unwrap_or(Tid::page_start(0))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::kinds::checkpoint::KeyCursor;

    /// Rows written by earlier versions resume: every shape they wrote reads and writes back unchanged.
    #[test]
    fn a_copy_checkpoint_keeps_the_json_of_earlier_versions() {
        let verify = json!({"cursor": ["9"], "rows": 10, "ranges": 1, "mismatched": 0, "mismatches": [],
                            "complete": false});
        for state in [
            json!({"cursor": ["10", "a"]}),
            json!({"cursor": null}),
            json!({"cursor": ["10"], "verify": verify}),
            json!({"cursor": ["10"], "range_start": ["4"]}),
        ] {
            let read = CopyCheckpoint::<KeyCursor>::read(&state).unwrap();
            assert_eq!(read.to_state(), state);
        }
        for state in [
            json!({"ctid": "(12,3)"}),
            json!({"ctid": "(12,3)", "verify": verify}),
            json!({"ctid": "(12,3)", "since": {"xid": 4_000_000_000u32, "filenode": 16384}}),
            json!({"ctid": "(40,0)", "since": {"xid": 7, "filenode": 1}, "walked": true, "verify": verify}),
        ] {
            let read = CopyCheckpoint::<PageCursor>::read(&state).unwrap();
            assert_eq!(read.to_state(), state);
        }
        let start = CopyCheckpoint::<PageCursor>::read(&json!({"ctid": null})).unwrap();
        assert_eq!(start.walk.after(), Tid::page_start(0));
    }

    #[test]
    fn a_ctid_that_is_not_page_and_offset_is_refused_with_the_standard_error() {
        for state in [json!({"ctid": "12,3"}), json!({"ctid": 7})] {
            let err = CopyCheckpoint::<PageCursor>::read(&state)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("cannot be read (")
                    && err.ends_with("fix the state or retry --from-start"),
                "{err}"
            );
        }
    }
}
