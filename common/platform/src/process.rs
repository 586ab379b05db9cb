//! The standard `process_*` metrics (as every Prometheus client library
//! names them), read from `/proc` when metrics are scraped. On systems
//! without `/proc` they are simply absent. Memory comes from
//! `/proc/self/status`, in kB, so no page size is assumed.

/// Linux reports CPU times in USER_HZ ticks, fixed at 100 for user space
/// whatever the kernel's own tick rate.
const TICKS_PER_SEC: f64 = 100.0;

pub fn record() {
    if let Some(stat) = Stat::read() {
        // Counters hold whole numbers; whole seconds suit rates over minutes.
        metrics::counter!("process_cpu_seconds_total").absolute(stat.cpu_seconds as u64);
        if let Some(boot) = boot_time() {
            metrics::gauge!("process_start_time_seconds").set(boot + stat.start_ticks / TICKS_PER_SEC);
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(kb) = status_kb(&status, "VmRSS:") {
            metrics::gauge!("process_resident_memory_bytes").set(kb * 1024.0);
        }
        if let Some(kb) = status_kb(&status, "VmSize:") {
            metrics::gauge!("process_virtual_memory_bytes").set(kb * 1024.0);
        }
        if let Some(threads) = status_kb(&status, "Threads:") {
            metrics::gauge!("process_threads").set(threads);
        }
    }
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!("process_open_fds").set(entries.count() as f64);
    }
    if let Some(max) = max_fds() {
        metrics::gauge!("process_max_fds").set(max);
    }
}

struct Stat {
    cpu_seconds: f64,
    start_ticks: f64,
}

impl Stat {
    fn read() -> Option<Stat> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is parenthesised and may hold
        // spaces; index 0 here is field 3 (state) of proc(5).
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        let start_ticks: f64 = fields.get(19)?.parse().ok()?;
        Some(Stat { cpu_seconds: (utime + stime) / TICKS_PER_SEC, start_ticks })
    }
}

/// A `Key:   value [kB]` line of `/proc/self/status`.
fn status_kb(status: &str, key: &str) -> Option<f64> {
    status.lines().find_map(|line| line.strip_prefix(key))?.split_whitespace().next()?.parse().ok()
}

fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().find_map(|line| line.strip_prefix("btime "))?.trim().parse().ok()
}

fn max_fds() -> Option<f64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let stat = Stat::read().expect("/proc is readable on Linux");
        assert!(stat.cpu_seconds >= 0.0);
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let rss = status_kb(&status, "VmRSS:").unwrap() * 1024.0;
        assert!(rss > 1_000_000.0, "a test process uses more than 1 MB: {rss}");
        let started = boot_time().unwrap() + stat.start_ticks / TICKS_PER_SEC;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(started <= now + 1.0 && started > now - 86_400.0 * 365.0, "started {started}, now {now}");
        assert!(max_fds().unwrap() >= 64.0);
    }

    #[test]
    fn status_values_are_read_by_their_key_not_a_prefix_of_another() {
        let status = "VmRSSX:\t 1 kB\nVmRSS:\t  2048 kB\nThreads:\t7\n";
        assert_eq!(status_kb(status, "VmRSS:"), Some(2048.0));
        assert_eq!(status_kb(status, "Threads:"), Some(7.0));
        assert_eq!(status_kb(status, "VmSize:"), None);
    }
}
