//! Advice, not a throttle: checkpoints that the WAL's volume forces on a Postgres server while a migration writes.
//!
//! After every checkpoint the first change to each page writes the whole page into the WAL again. A backfill
//! keeps changing pages all through its run (its own, and the key index's leaves that moved rows reach at random),
//! so on a server whose `max_wal_size` is small against the WAL the backfill writes, each checkpoint it forces
//! makes it write more WAL, which forces the next one sooner. The parallel benchmark measured it at 10,000,000
//! rows with the default 1 GB: 1,321 WAL bytes a row and 23 checkpoints, against 439 bytes and none with
//! `max_wal_size` 64 GB — and 175.91 s against 113.90 s. Holding back would not help (the checkpoints come per
//! byte of WAL, not per second), and bgmigrate sets no server setting, so the engine tells the operator, with
//! the figures to size `max_wal_size` by; this module decides when, from readings the Postgres check takes.

use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::{Advice, bytes};

/// How often the counters are read: they move once per checkpoint, seconds apart at the least.
pub(crate) const READ_EVERY: Duration = Duration::from_secs(5);
/// The window the checkpoints are counted over; a new one starts after it (and after each advice).
const WINDOW: Duration = Duration::from_secs(600);
/// Requested checkpoints within a window before it is advice rather than a coincidence.
const MIN_REQUESTED: u64 = 3;
/// The shortest time between two pieces of this advice from one stream, and from all of a migration's streams
/// together ([`Advice::repeat_after`]).
const REPEAT_AFTER: Duration = Duration::from_secs(3_600);

/// One reading of the server's checkpoint counter, its WAL position and the settings that decide checkpoints.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CheckpointReading {
    /// Checkpoints requested since the statistics were reset: by the WAL's volume, or by a `CHECKPOINT` command.
    pub(crate) requested: u64,
    /// The WAL position, in bytes.
    pub(crate) wal_position: u64,
    /// `max_wal_size`, in bytes.
    pub(crate) max_wal_size: u64,
    /// `checkpoint_timeout`.
    pub(crate) timeout: Duration,
    /// `checkpoint_completion_target`: Postgres requests a checkpoint once `max_wal_size / (1 + target)` of WAL
    /// has been written since the last one.
    pub(crate) completion_target: f64,
}

impl CheckpointReading {
    /// The WAL written between two checkpoints that its volume requests.
    fn wal_per_requested(&self) -> f64 {
        self.max_wal_size as f64 / (1.0 + self.completion_target)
    }
}

/// The readings of one stream so far.
#[derive(Debug, Default)]
pub(crate) struct CheckpointWatch {
    /// The window's first reading and when it was taken.
    window_start: Option<(Instant, CheckpointReading)>,
    /// When the counters were last read.
    last_read: Option<Instant>,
    /// When this stream last gave the advice.
    advised_at: Option<Instant>,
}

impl CheckpointWatch {
    /// Whether the counters are due to be read at `now`; a yes counts as a read, so a reading that fails is not
    /// tried again before [`READ_EVERY`].
    pub(crate) fn read_due(&mut self, now: Instant) -> bool {
        let due = self
            .last_read
            .is_none_or(|at| now.saturating_duration_since(at) >= READ_EVERY);
        if due {
            self.last_read = Some(now);
        }
        due
    }

    /// Folds in a reading taken at `now`; returns advice when, within the window, at least [`MIN_REQUESTED`]
    /// checkpoints were requested, more often than every half `checkpoint_timeout`, and the WAL written meanwhile
    /// is what requests them (at least half of `max_wal_size / (1 + completion target)` per checkpoint — so
    /// `CHECKPOINT` commands on a quiet server are not mistaken for it).
    pub(crate) fn observe(&mut self, reading: CheckpointReading, now: Instant) -> Option<Advice> {
        let Some((since, first)) = self.window_start else {
            self.window_start = Some((now, reading));
            return None;
        };
        let elapsed = now.saturating_duration_since(since);
        let requested = reading.requested.saturating_sub(first.requested);
        let written = reading.wal_position.saturating_sub(first.wal_position);
        let often = requested >= MIN_REQUESTED
            && elapsed.as_secs_f64() / (requested as f64) < reading.timeout.as_secs_f64() / 2.0;
        let by_volume = written as f64 >= requested as f64 * reading.wal_per_requested() / 2.0;
        let quiet = self
            .advised_at
            .is_some_and(|at| now.saturating_duration_since(at) < REPEAT_AFTER);
        if often && by_volume && !quiet {
            self.advised_at = Some(now);
            self.window_start = Some((now, reading));
            return Some(advice(&reading, requested, elapsed, written));
        }
        if elapsed >= WINDOW {
            self.window_start = Some((now, reading));
        }
        None
    }
}

/// The advice: what happened, in figures, and the `max_wal_size` that would leave checkpoints to the timeout at
/// this WAL rate (an upper bound: with fewer checkpoints the WAL itself shrinks).
fn advice(reading: &CheckpointReading, requested: u64, elapsed: Duration, written: u64) -> Advice {
    let seconds = elapsed.as_secs_f64().max(0.001);
    let rate = written as f64 / seconds;
    let suggested =
        (rate * reading.timeout.as_secs_f64() * (1.0 + reading.completion_target)) as u64;
    let timeout = reading.timeout.as_secs();
    Advice {
        topic: "checkpoints",
        message: format!(
            "the WAL's volume requested {requested} checkpoints in {seconds:.0} s, one every {:.1} s \
             (max_wal_size {}, checkpoint_timeout {timeout} s): after each, the first change to every page logs \
             the whole page again, so this migration writes more WAL and runs slower a row. For its duration, raise \
             max_wal_size towards {} at most (the WAL written at this rate, {}/s, over one checkpoint_timeout; with \
             fewer checkpoints the rate itself falls), if the disk has the room and a longer crash recovery is \
             acceptable",
            seconds / requested as f64,
            bytes(reading.max_wal_size),
            bytes(suggested),
            bytes(rate as u64),
        ),
        figures: json!({
            "requested_checkpoints": requested,
            "seconds": (seconds * 10.0).round() / 10.0,
            "wal_bytes": written,
            "max_wal_size_bytes": reading.max_wal_size,
            "checkpoint_timeout_s": timeout,
            "suggested_max_wal_size_bytes": suggested,
        }),
        repeat_after: REPEAT_AFTER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    /// The server's defaults: `max_wal_size` 1 GiB, `checkpoint_timeout` 5 min, completion target 0.9.
    fn reading(requested: u64, wal_position: u64) -> CheckpointReading {
        CheckpointReading {
            requested,
            wal_position,
            max_wal_size: 1024 * MIB,
            timeout: Duration::from_secs(300),
            completion_target: 0.9,
        }
    }

    fn at(start: Instant, seconds: u64) -> Instant {
        start + Duration::from_secs(seconds)
    }

    /// A backfill writing 80 MiB/s forces a checkpoint about every 7 s: the third within the window gives the
    /// advice, naming the figures and a `max_wal_size` that lasts one `checkpoint_timeout` at that rate; then the
    /// same stream stays quiet for an hour.
    #[tokio::test(start_paused = true)]
    async fn checkpoints_forced_by_the_wal_give_advice_once_an_hour() {
        let start = Instant::now();
        let mut watch = CheckpointWatch::default();
        assert!(watch.read_due(start));
        assert_eq!(
            watch.observe(reading(10, 0), start),
            None,
            "the first reading"
        );
        assert!(!watch.read_due(at(start, 4)) && watch.read_due(at(start, 5)));
        assert!(!watch.read_due(at(start, 9)), "the read at 5 s counts");
        assert_eq!(watch.observe(reading(12, 1_120 * MIB), at(start, 14)), None);
        let advice = watch
            .observe(reading(13, 1_680 * MIB), at(start, 21))
            .expect("three checkpoints in 21 s, by volume");
        assert_eq!(advice.topic, "checkpoints");
        assert!(
            advice
                .message
                .contains("requested 3 checkpoints in 21 s, one every 7.0 s"),
            "{}",
            advice.message
        );
        assert!(
            advice.message.contains("max_wal_size 1.0 GiB")
                && advice.message.contains("80.0 MiB/s"),
            "{}",
            advice.message
        );
        let suggested = advice.figures["suggested_max_wal_size_bytes"]
            .as_u64()
            .unwrap();
        assert!(
            (suggested as f64 / MIB as f64 - 80.0 * 300.0 * 1.9).abs() < 1.0,
            "80 MiB/s over 300 s, times 1.9: {suggested}"
        );
        assert!(advice.message.contains("44.5 GiB"), "{}", advice.message);

        let mut requested = 13;
        for minute in 1..60 {
            requested += 8;
            let later = at(start, 21 + minute * 60);
            let wal = (1_680 + minute * 4_800) * MIB;
            assert_eq!(
                watch.observe(reading(requested, wal), later),
                None,
                "minute {minute}"
            );
        }
        assert!(
            watch
                .observe(reading(requested + 8, 300_000 * MIB), at(start, 21 + 3_600))
                .is_some(),
            "again after an hour"
        );
    }

    /// Checkpoints as far apart as the timeout would make them, and `CHECKPOINT` commands on a server that wrote
    /// little WAL, are not advice; a window with too few requests starts over after ten minutes.
    #[tokio::test(start_paused = true)]
    async fn timed_checkpoints_and_checkpoint_commands_are_not_advice() {
        let start = Instant::now();
        let mut spaced = CheckpointWatch::default();
        spaced.observe(reading(0, 0), start);
        assert_eq!(
            spaced.observe(reading(3, 3_000 * MIB), at(start, 540)),
            None,
            "one every 180 s: not under half the 300 s timeout"
        );

        let mut commands = CheckpointWatch::default();
        commands.observe(reading(0, 0), start);
        assert_eq!(
            commands.observe(reading(5, 20 * MIB), at(start, 10)),
            None,
            "five checkpoints over 20 MiB of WAL were asked for, not forced"
        );

        let mut slow = CheckpointWatch::default();
        slow.observe(reading(0, 0), start);
        assert_eq!(slow.observe(reading(2, 1_200 * MIB), at(start, 600)), None);
        assert_eq!(
            slow.observe(reading(4, 2_400 * MIB), at(start, 640)),
            None,
            "a new window began at 600 s: two requests in it so far"
        );
        assert!(
            slow.observe(reading(5, 3_000 * MIB), at(start, 650))
                .is_some()
        );
    }
}
