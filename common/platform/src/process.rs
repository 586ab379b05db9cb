//! Process gauges (CPU, memory, open files) read from `/proc` when metrics
//! are scraped. On systems without `/proc` they are simply absent.

pub fn record() {
    if let Some((cpu_seconds, rss_bytes)) = cpu_and_rss() {
        metrics::gauge!("tally_process_cpu_seconds").set(cpu_seconds);
        metrics::gauge!("tally_process_resident_memory_bytes").set(rss_bytes);
    }
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!("tally_process_open_fds").set(entries.count() as f64);
    }
}

fn cpu_and_rss() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is parenthesised and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks_per_sec = 100.0; // USER_HZ on every Linux the project targets
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let rss_pages: f64 = fields.get(21)?.parse().ok()?;
    Some(((utime + stime) / ticks_per_sec, rss_pages * 4096.0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let (cpu, rss) = super::cpu_and_rss().expect("/proc is readable on Linux");
        assert!(cpu >= 0.0);
        assert!(rss > 1_000_000.0, "a test process uses more than 1 MB: {rss}");
    }
}
