//! A model of `parallelism` beyond this 2-core machine: 8 to 64 workers on one migration, simulated batch by batch
//! (no database), to show what the range planning and work stealing of `src/engine/ranges.rs` do to the finish time
//! when workers are not equally fast, against a static split of the same ranges (PeerDB's scheme).
//!
//! The model: `ROWS` rows cut into one range per worker, of equal rows. A worker walks its range in batches of
//! `BATCH` rows; a batch takes `BATCH / rate`, its rate jittered ±30 % per batch. The server is assumed to have a
//! core per stream (each stream keeps about one Postgres backend busy: measured here, 1 worker ≈ 1 core); with
//! fewer, every stream slows alike, the absolute times grow by workers / cores and the ratios below stay. A worker
//! whose range is done steals as the engine does: the held range with the most rows left, if that is at least 4
//! batches and 1,000 rows, cut at its middle; the victim's batch in flight is lost (its checkpoint is fenced on the
//! split count) and run again. What matters is the finish time's ratio to the
//! ideal (all rows at the summed rate).
//!
//! `cargo bench --bench parallel_model`.

/// Rows of the migration.
const ROWS: u64 = 100_000_000;
/// Rows per batch.
const BATCH: u64 = 10_000;
/// A range is split only if it has this many batches left, and at least `STEAL_MIN_ROWS` (the engine's rule).
const STEAL_MIN_BATCHES: u64 = 4;
const STEAL_MIN_ROWS: u64 = 1_000;

/// A deterministic generator (64-bit LCG), uniform in [0, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One worker: its speed and the range it walks.
struct Worker {
    rate: f64,
    /// Its range: the next row, and the row after its last.
    at: u64,
    end: u64,
    /// When its batch in flight completes, and the rows it covers.
    busy_until: f64,
    in_flight: u64,
}

/// The outcome of one run: finish time, steals, batches in flight lost to steals.
struct Run {
    finish: f64,
    steals: u64,
    lost: u64,
}

/// Runs `rates.len()` workers; with `steal`, workers out of rows split the largest range left.
fn simulate(rates: &[f64], steal: bool, seed: u64) -> Run {
    let n = rates.len() as u64;
    let mut rng = Lcg(seed);
    let mut workers: Vec<Worker> = rates
        .iter()
        .enumerate()
        .map(|(i, &rate)| Worker {
            rate,
            at: ROWS * i as u64 / n,
            end: ROWS * (i as u64 + 1) / n,
            busy_until: 0.0,
            in_flight: 0,
        })
        .collect();
    let (mut now, mut steals, mut lost) = (0.0f64, 0, 0);
    loop {
        // Every idle worker starts a batch, or steals, or stays idle.
        for i in 0..workers.len() {
            if workers[i].busy_until > now {
                continue;
            }
            workers[i].at += workers[i].in_flight;
            workers[i].in_flight = 0;
            if workers[i].at >= workers[i].end && steal {
                let victim = (0..workers.len())
                    .filter(|&v| v != i)
                    .filter(|&v| {
                        let left = workers[v].end - workers[v].at;
                        left >= (BATCH * STEAL_MIN_BATCHES).max(STEAL_MIN_ROWS)
                    })
                    .max_by_key(|&v| workers[v].end - workers[v].at);
                if let Some(v) = victim {
                    let mid = workers[v].at + (workers[v].end - workers[v].at) / 2;
                    (workers[i].at, workers[i].end) = (mid, workers[v].end);
                    workers[v].end = mid;
                    // The victim's batch in flight is fenced out: it starts again now.
                    if workers[v].in_flight > 0 {
                        lost += 1;
                        workers[v].in_flight = 0;
                        workers[v].busy_until = now;
                    }
                    steals += 1;
                }
            }
            let worker = &mut workers[i];
            if worker.at < worker.end {
                let rows = BATCH.min(worker.end - worker.at);
                let jitter = 0.7 + 0.6 * rng.next();
                worker.in_flight = rows;
                worker.busy_until = now + rows as f64 / (worker.rate * jitter);
            }
        }
        let next = workers
            .iter()
            .filter(|w| w.in_flight > 0)
            .map(|w| w.busy_until)
            .fold(f64::INFINITY, f64::min);
        if next.is_infinite() {
            return Run {
                finish: now,
                steals,
                lost,
            };
        }
        now = next;
    }
}

fn main() {
    println!(
        "parallelism model: {ROWS} rows, {BATCH}-row batches, one range per worker, per-batch speed ±30 %; finish time \
         relative to the ideal (every row at the summed rate), ideal in batch times of one full-speed stream"
    );
    println!(
        "{:>7} {:>18} {:>11} {:>13} {:>9} {:>7} {:>12}",
        "workers", "scenario", "ideal", "static split", "stealing", "steals", "rows redone"
    );
    for workers in [8usize, 16, 32, 64] {
        let mut slow = vec![1.0; workers];
        slow[workers / 2] = 0.25;
        for (scenario, rates) in [
            ("equal workers", vec![1.0; workers]),
            ("one at 1/4 speed", slow),
        ] {
            let ideal = ROWS as f64 / rates.iter().sum::<f64>();
            let fixed = simulate(&rates, false, 7);
            let stolen = simulate(&rates, true, 7);
            println!(
                "{workers:>7} {scenario:>18} {:>11.0} {:>12.2}x {:>8.2}x {:>7} {:>11.3}%",
                ideal / BATCH as f64,
                fixed.finish / ideal,
                stolen.finish / ideal,
                stolen.steals,
                (stolen.lost * BATCH) as f64 / ROWS as f64 * 100.0
            );
        }
    }
}
