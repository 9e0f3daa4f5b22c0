//! Ranges of a rewrite for `parallelism` and work stealing: runs of whole partitions where partition boundaries
//! fall near equal shares of rows, and key ranges inside a partition where they do not — a table of one partition,
//! or one partition much larger than the rest, still splits into ranges of about equal rows.
//!
//! A range starts at a checkpoint and ends where the next range starts ([`RangeEnd`]). A start inside a partition
//! is a checkpoint in the middle of a split (`{"split": {"partition": P, "after": [K], "rows": ...}}`): the same
//! state a partition rewritten in key ranges after a memory error has, so a range resumes through the one code path.
//! Keys bounding a range come from the source's sorting key ([`super::key_range::KeyOrder`]); a table without one splits at partition
//! boundaries only.

use super::{ClickHouseRewrite, RewriteCheckpoint, Split};
use crate::kinds::ch_error;
use crate::kinds::checkpoint::Checkpoint;
use crate::migration::MigrationError;

/// Where a range ends: read from the checkpoint its next range starts at.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum RangeEnd {
    /// With this partition, whole (the next range starts after it).
    Partition(String),
    /// Inside this partition, up to this key inclusive (the next range starts after it); `None`: before the
    /// partition (the next range starts at its first key).
    Inside {
        partition: String,
        upto: Option<Vec<String>>,
    },
}

impl RangeEnd {
    /// The end of the range whose next range starts at `upper` (`None`: no end).
    pub(super) fn of(
        upper: Option<&serde_json::Value>,
    ) -> Result<Option<RangeEnd>, MigrationError> {
        let Some(next) = upper.map(RewriteCheckpoint::read).transpose()? else {
            return Ok(None);
        };
        Ok(match (next.split, next.partition) {
            (Some(split), _) => Some(RangeEnd::Inside {
                partition: split.partition,
                upto: split.after,
            }),
            (None, Some(partition)) => Some(RangeEnd::Partition(partition)),
            (None, None) => None,
        })
    }

    /// Whether partition `id` has rows in the range, as far as its end goes.
    pub(super) fn admits(&self, id: &str) -> bool {
        match self {
            RangeEnd::Partition(last) => id <= last.as_str(),
            RangeEnd::Inside {
                partition,
                upto: Some(_),
            } => id <= partition.as_str(),
            RangeEnd::Inside {
                partition,
                upto: None,
            } => id < partition.as_str(),
        }
    }

    /// The key the range ends at inside `partition`, if it ends inside that one.
    pub(super) fn key_in(&self, partition: &str) -> Option<&[String]> {
        match self {
            RangeEnd::Inside {
                partition: p,
                upto: Some(upto),
            } if p == partition => Some(upto),
            _ => None,
        }
    }
}

/// The rows of one partition that a range holds: all of them, or those after a key, up to a key.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Segment {
    pub partition: String,
    pub after: Option<Vec<String>>,
    pub upto: Option<Vec<String>>,
    pub rows: u64,
}

/// Where a planned cut lies: after a segment (a partition boundary), or `offset` rows into one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Cut {
    After(usize),
    Inside { segment: usize, offset: u64 },
}

/// The cuts that deal `segments` into at most `parts` ranges of about equal rows. A share's end snaps to a
/// partition boundary within a quarter of a share of it (no key lookup, and whole partitions per batch); elsewhere
/// it cuts inside the partition, when `inside` allows (the table has a sorting key). Every range gets rows.
pub(super) fn plan_cuts(segments: &[Segment], parts: u64, inside: bool) -> Vec<Cut> {
    let total: u64 = segments.iter().map(|s| s.rows).sum();
    let parts = parts.max(1);
    let share = total / parts;
    if share == 0 {
        return Vec::new();
    }
    let mut cuts = Vec::new();
    let mut last_at = 0u64;
    for k in 1..parts {
        let target = total * k / parts;
        let mut before = 0u64;
        let Some((index, segment)) = segments.iter().enumerate().find(|(_, s)| {
            before += s.rows;
            before >= target
        }) else {
            break;
        };
        let start = before - segment.rows;
        let (boundary, cut) = if target - start <= before - target && index > 0 {
            (start, Cut::After(index - 1))
        } else {
            (before, Cut::After(index))
        };
        let (at, cut) = if boundary.abs_diff(target) <= share / 4 || !inside {
            (boundary, cut)
        } else {
            (
                target,
                Cut::Inside {
                    segment: index,
                    offset: target - start,
                },
            )
        };
        // Never an empty range: each cut strictly after the one before it and before the end.
        if at > last_at && at < total {
            cuts.push(cut);
            last_at = at;
        }
    }
    cuts
}

impl ClickHouseRewrite {
    /// The range's rows per partition, from checkpoint `from` to `end`: partitions wholly inside from
    /// `system.parts`, the partly done first one and the partly held last one counted on the key.
    pub(super) async fn segments(
        &self,
        partitions: &[(String, u64)],
        from: &RewriteCheckpoint,
        end: Option<&RangeEnd>,
    ) -> Result<Vec<Segment>, MigrationError> {
        let mut segments = Vec::new();
        for (id, rows) in partitions {
            let started = match (&from.split, &from.partition) {
                (Some(split), _) => *id >= split.partition,
                (None, Some(done)) => id > done,
                (None, None) => true,
            };
            if !started || !end.is_none_or(|end| end.admits(id)) {
                continue;
            }
            let after = from
                .split
                .as_ref()
                .filter(|split| split.partition == *id)
                .and_then(|split| split.after.clone());
            let upto = end.and_then(|end| end.key_in(id)).map(<[String]>::to_vec);
            let rows = if after.is_none() && upto.is_none() {
                *rows
            } else {
                self.count_between(id, after.as_deref(), upto.as_deref())
                    .await?
            };
            segments.push(Segment {
                partition: id.clone(),
                after,
                upto,
                rows,
            });
        }
        Ok(segments)
    }

    /// The rows of `partition` after key `after`, up to key `upto`.
    async fn count_between(
        &self,
        partition: &str,
        after: Option<&[String]>,
        upto: Option<&[String]>,
    ) -> Result<u64, MigrationError> {
        let order = self.key_order().await.map_err(ch_error)?.ok_or_else(|| {
            MigrationError::Permanent(format!(
                "the checkpoint bounds partition {partition} of {} by key, but the table has no sorting key",
                self.spec.from
            ))
        })?;
        self.count_in(partition, &order.condition(after, upto), &[])
            .await
            .map_err(ch_error)
    }

    /// The checkpoint a range starts at for each cut: after a whole partition, or after the key `offset` rows into
    /// a segment. A key cut that falls on the segment's own end (many rows share the last key) is dropped.
    pub(super) async fn cut_checkpoints(
        &self,
        segments: &[Segment],
        cuts: &[Cut],
    ) -> Result<Vec<RewriteCheckpoint>, MigrationError> {
        let mut checkpoints = Vec::new();
        for cut in cuts {
            let checkpoint = match *cut {
                Cut::After(index) => RewriteCheckpoint {
                    partition: Some(segments[index].partition.clone()),
                    done: false,
                    split: None,
                },
                Cut::Inside { segment, offset } => {
                    let segment = &segments[segment];
                    let Some(order) = self.key_order().await.map_err(ch_error)? else {
                        continue;
                    };
                    let bound = order.bound_query(
                        &self.spec.from,
                        &segment.partition,
                        segment.after.as_deref(),
                        segment.upto.as_deref(),
                        offset,
                    );
                    let key = self.clickhouse.query_rows(&bound).await.map_err(ch_error)?;
                    let Some(key) = key.into_iter().next() else {
                        continue;
                    };
                    if segment.upto.as_ref() == Some(&key) {
                        continue;
                    }
                    RewriteCheckpoint {
                        partition: None,
                        done: false,
                        split: Some(Split {
                            partition: segment.partition.clone(),
                            after: Some(key),
                            rows: segment.rows,
                        }),
                    }
                }
            };
            if checkpoints.last() != Some(&checkpoint) {
                checkpoints.push(checkpoint);
            }
        }
        Ok(checkpoints)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn segments(rows: &[u64]) -> Vec<Segment> {
        rows.iter()
            .enumerate()
            .map(|(i, rows)| Segment {
                partition: format!("2024{:02}", i + 1),
                after: None,
                upto: None,
                rows: *rows,
            })
            .collect()
    }

    #[test]
    fn partitions_near_equal_shares_are_cut_at_their_boundaries() {
        assert_eq!(
            plan_cuts(&segments(&[10, 10, 10, 10]), 2, true),
            [Cut::After(1)]
        );
        assert_eq!(
            plan_cuts(&segments(&[10, 10, 10, 10]), 4, true),
            [Cut::After(0), Cut::After(1), Cut::After(2)]
        );
        assert_eq!(
            plan_cuts(&segments(&[10; 40]), 3, true),
            [Cut::After(12), Cut::After(26)],
            "40 daily partitions: whole runs, no key lookups"
        );
    }

    #[test]
    fn one_partition_or_one_far_larger_is_cut_inside_by_key() {
        assert_eq!(
            plan_cuts(&segments(&[1000]), 4, true),
            [
                Cut::Inside {
                    segment: 0,
                    offset: 250
                },
                Cut::Inside {
                    segment: 0,
                    offset: 500
                },
                Cut::Inside {
                    segment: 0,
                    offset: 750
                }
            ]
        );
        assert_eq!(
            plan_cuts(&segments(&[100, 1, 1, 1, 1]), 2, true),
            [Cut::Inside {
                segment: 0,
                offset: 52
            }]
        );
    }

    #[test]
    fn without_a_sorting_key_only_partition_boundaries_are_cut() {
        assert!(plan_cuts(&segments(&[1000]), 4, false).is_empty());
        assert_eq!(
            plan_cuts(&segments(&[100, 1, 1, 1, 1]), 2, false),
            [Cut::After(0)]
        );
    }

    #[test]
    fn no_cut_leaves_a_range_empty() {
        assert!(plan_cuts(&segments(&[]), 2, true).is_empty());
        assert!(plan_cuts(&segments(&[1]), 2, true).is_empty());
        assert!(
            plan_cuts(&segments(&[3]), 8, true).is_empty(),
            "less than a row per range"
        );
        assert_eq!(
            plan_cuts(&segments(&[3]), 2, true),
            [Cut::Inside {
                segment: 0,
                offset: 1
            }]
        );
    }

    #[test]
    fn a_range_ends_at_the_start_its_next_range_reads_from() {
        assert_eq!(RangeEnd::of(None).unwrap(), None);
        let whole = RangeEnd::of(Some(&json!({"partition": "202402"}))).unwrap();
        assert_eq!(whole, Some(RangeEnd::Partition("202402".into())));
        let inside = RangeEnd::of(Some(&json!({"partition": null, "split": {
            "partition": "202402", "after": ["e5"], "rows": 10}})))
        .unwrap()
        .unwrap();
        assert!(inside.admits("202402") && !inside.admits("202403"));
        assert_eq!(inside.key_in("202402"), Some(&["e5".to_owned()][..]));
        assert_eq!(inside.key_in("202401"), None);
        let before = RangeEnd::Inside {
            partition: "202402".into(),
            upto: None,
        };
        assert!(before.admits("202401") && !before.admits("202402"));
    }
}
