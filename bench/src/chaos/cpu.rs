//! Keeps the system under test on a small, fixed share of the machine so
//! that a load generator on the same box can offer it about twice what it
//! takes. Pinning gives the system one core and the client another; a CPU
//! quota (a cgroup, when this process may create one) shrinks the
//! system's share of its core further, since one core of client rarely
//! outruns one core of server by a factor of two.

use std::path::{Path, PathBuf};

/// Restricts every thread of a process to one CPU (best effort: without
/// `taskset` or on a single core the run is simply less lopsided).
pub fn pin(pid: u32, cpu: usize) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus > 1 {
        let _ = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", &(cpu % cpus).to_string(), &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

const PERIOD_US: u64 = 100_000;

/// A CPU cgroup holding the system under test, removed on drop (its
/// processes are handed back to the parent group first).
pub struct Quota {
    group: PathBuf,
    parent: PathBuf,
}

impl Quota {
    /// A group allowed `share` of one core (0 < share ≤ 1), under cgroup v2
    /// or v1, whichever this machine mounts. `None` when neither can be
    /// written (no root, no cgroup file system, no cpu controller).
    pub fn new(share: f64) -> Option<Self> {
        let quota_us = ((share.clamp(0.01, 1.0) * PERIOD_US as f64) as u64).max(1_000);
        let name = format!("tally-overload-{}", std::process::id());
        let v2 = Path::new("/sys/fs/cgroup");
        let v2_has_cpu = std::fs::read_to_string(v2.join("cgroup.subtree_control"))
            .is_ok_and(|controllers| controllers.split_whitespace().any(|c| c == "cpu"));
        let (parent, limit): (PathBuf, Vec<(&str, String)>) = if v2_has_cpu {
            (v2.to_path_buf(), vec![("cpu.max", format!("{quota_us} {PERIOD_US}"))])
        } else {
            let v1 = v2.join("cpu");
            (
                v1,
                vec![
                    ("cpu.cfs_period_us", PERIOD_US.to_string()),
                    ("cpu.cfs_quota_us", quota_us.to_string()),
                ],
            )
        };
        let group = parent.join(name);
        std::fs::create_dir(&group).ok()?;
        let quota = Self { group, parent };
        for (file, value) in limit {
            std::fs::write(quota.group.join(file), value).ok()?;
        }
        Some(quota)
    }

    /// Moves a process (all its threads, and the children it forks later)
    /// into the group.
    pub fn add(&self, pid: u32) {
        let _ = std::fs::write(self.group.join("cgroup.procs"), pid.to_string());
    }
}

impl Drop for Quota {
    fn drop(&mut self) {
        // A process still exiting can hold the group for a moment after
        // it has been handed back, so removal is retried briefly.
        for _ in 0..40 {
            let members = std::fs::read_to_string(self.group.join("cgroup.procs")).unwrap_or_default();
            for pid in members.lines() {
                let _ = std::fs::write(self.parent.join("cgroup.procs"), pid);
            }
            match std::fs::remove_dir(&self.group) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                _ => return,
            }
        }
        tracing::warn!(group = %self.group.display(), "could not remove the CPU group; rmdir it by hand");
    }
}
