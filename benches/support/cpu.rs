//! CPU time of the processes a benchmark run is made of — the Postgres server (postmaster, its live children, and
//! through `cutime` the backends that already exited) and this process (the worker, plus `pgbench` once reaped) —
//! read from `/proc`, so a figure is this run's own and not the other builds sharing the machine.

use std::path::Path;

/// Clock ticks per second of `/proc/*/stat` (`USER_HZ`): 100 on every Linux the benchmarks run on.
const TICKS_PER_SECOND: f64 = 100.0;

/// `(ppid, own ticks, reaped children's ticks)` of a process, from `/proc/PID/stat`.
fn stat(path: &Path) -> Option<(u32, u64, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces: fields count from after its closing parenthesis.
    let fields: Vec<&str> = text.get(text.rfind(')')? + 2..)?.split(' ').collect();
    let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    // After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    Some((
        number(1)? as u32,
        number(11)? + number(12)?,
        number(13)? + number(14)?,
    ))
}

/// Seconds of CPU used so far by the server whose postmaster is `postmaster` and by this process.
pub fn seconds(postmaster: u32) -> f64 {
    let mut ticks = 0;
    if let Some((_, own, reaped)) = stat(Path::new(&format!("/proc/{postmaster}/stat"))) {
        ticks += own + reaped;
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Some((ppid, own, _)) = stat(&entry.path().join("stat"))
                && ppid == postmaster
            {
                ticks += own;
            }
        }
    }
    if let Some((_, own, reaped)) = stat(Path::new("/proc/self/stat")) {
        ticks += own + reaped;
    }
    ticks as f64 / TICKS_PER_SECOND
}

/// The postmaster of the backend `backend_pid` (its parent), if this machine runs it.
pub fn postmaster_of(backend_pid: u32) -> Option<u32> {
    stat(Path::new(&format!("/proc/{backend_pid}/stat"))).map(|(ppid, ..)| ppid)
}
