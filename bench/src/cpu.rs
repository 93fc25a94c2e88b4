//! CPU time and memory used by processes and threads, and the machine's
//! load, where Linux tells them.

use std::time::Duration;

/// A process's resident memory in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The CPU time of a process, summed over its threads, where Linux tells it.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let mut total = Duration::ZERO;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        total += schedstat(&task.ok()?.path())?;
    }
    Some(total)
}

/// The CPU time of the threads of this process named `name`.
pub fn threads_cpu_time(name: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.trim_end() == name {
            total += schedstat(&dir)?;
        }
    }
    Some(total)
}

/// The CPU time of every PostgreSQL process of this machine: the server's
/// background processes and every backend, whoever it serves. `None` when
/// there is none (a database elsewhere) or Linux does not tell.
pub fn postgres_cpu_time() -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut found = false;
    for entry in std::fs::read_dir("/proc").ok()? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == "postgres" {
            // A process that ended meanwhile counts for nothing.
            if let Some(time) = cpu_time(pid) {
                total += time;
                found = true;
            }
        }
    }
    found.then_some(total)
}

/// The run time of one thread, from its `schedstat`.
fn schedstat(task: &std::path::Path) -> Option<Duration> {
    let stat = std::fs::read_to_string(task.join("schedstat")).ok()?;
    let nanos: u64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// The machine's one-minute load average, where Linux tells it: the other
/// work that competed for the CPU.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| {
            text.split_whitespace()
                .next()
                .map(|l| format!("; load {l}"))
        })
        .unwrap_or_default()
}
