//! The processes of a `skiff up` cluster: `skiff server` and one `skiff agent`
//! per node, children of the same binary, each in its own process group (so a
//! Ctrl-C in the terminal reaches `skiff up` alone, which then tears down in
//! order) and logging to `DIR/logs/<name>.log`.
//!
//! Processes are only ever signalled by a recorded PID, and only after
//! `/proc/<pid>/cmdline` shows it is still the skiff process that was started
//! (it names its own data directory), so a recycled PID is never touched.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How to start one skiff child process.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Name in messages and of the log file (`server`, the node name).
    pub name: String,
    /// Arguments after the binary (`server ...`, `agent ...`).
    pub args: Vec<String>,
    /// Its log file.
    pub log: PathBuf,
}

impl Spec {
    /// Starts the process, appending to its log.
    pub fn spawn(&self) -> Result<Child> {
        // Run this very binary (its inode, through /proc/self/exe), not the
        // file at its path: a rebuild that replaces `skiff` while the cluster
        // runs must not break starting or restarting a node. argv[0] keeps
        // the path for `ps`.
        let exe = std::env::current_exe().context("finding the skiff binary")?;
        if let Some(dir) = self.log.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        Command::new("/proc/self/exe")
            .arg0(&exe)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", self.name))
    }
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether `pid` is a live (not zombie) process whose command line has an
/// argument equal to `marker`.
pub fn is_ours(pid: u32, marker: &Path) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may hold spaces.
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    if zombie {
        return false;
    }
    let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
        return false;
    };
    let marker = marker.as_os_str().as_encoded_bytes();
    cmdline.split(|b| *b == 0).any(|arg| arg == marker)
}

/// The start time of `pid` (clock ticks since boot, /proc/<pid>/stat field
/// 22): with the PID it names one process for the life of the machine.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // After the name: field 3 (state) is the first; field 22 is the 20th.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Stops `pid` if [`is_ours`]: SIGCONT (it may have been stopped) and
/// SIGTERM, then SIGKILL after `grace`. Returns once it is gone.
pub fn stop(pid: u32, marker: &Path, grace: Duration) {
    if !is_ours(pid, marker) {
        return;
    }
    let Ok(raw) = i32::try_from(pid) else {
        return;
    };
    let p = Pid::from_raw(raw);
    let _ = kill(p, Signal::SIGTERM);
    let _ = kill(p, Signal::SIGCONT);
    if wait_gone(pid, marker, grace) {
        return;
    }
    let _ = kill(p, Signal::SIGKILL);
    wait_gone(pid, marker, Duration::from_secs(10));
}

/// Waits up to `timeout` for `pid` to be gone; returns whether it is.
pub fn wait_gone(pid: u32, marker: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while is_ours(pid, marker) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// Live processes with an argument at or below `dir`.
fn mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a.starts_with(needle)))
        })
        .collect()
}

/// Waits up to `grace` for every process with an argument under `dir` (the
/// shims the agents started for their containers) to exit, then SIGKILLs
/// what is left. Only processes naming the cluster's own directory qualify.
pub fn stop_all_under(dir: &Path, grace: Duration) {
    let deadline = Instant::now() + grace;
    while !mentioning(dir).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for pid in mentioning(dir) {
        if let Ok(raw) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !mentioning(dir).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_a_process_by_its_marker_and_stops_it() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("marker");
        // A shell carries the marker as its first argument and sleeps (a loop,
        // not a lone `sleep`: dash would exec that and drop the marker).
        let mut child = Command::new("sh")
            .args(["-c", "for i in $(seq 30); do sleep 1; done", "sh"])
            .arg(&marker)
            .spawn()
            .unwrap();
        let pid = child.id();
        // spawn() returns while the child's exec is still setting up its
        // arguments (/proc/<pid>/cmdline reads empty for a moment).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !is_ours(pid, &marker) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(is_ours(pid, &marker));
        assert!(!is_ours(pid, &dir.path().join("other")));
        let started = start_time(pid).unwrap();
        assert_eq!(start_time(pid), Some(started));
        let reaper = std::thread::spawn(move || child.wait());
        stop(pid, &marker, Duration::from_secs(5));
        assert!(!is_ours(pid, &marker));
        // Gone for good once reaped (a zombie still has /proc/<pid>/stat).
        reaper.join().unwrap().unwrap();
        assert_eq!(start_time(pid), None);
    }
}
