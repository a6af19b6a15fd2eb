//! The container shim: a small process per container that outlives the agent
//! (so `kill -9` of the agent stops nothing). It runs `runc create` with its
//! stdout/stderr as pipes (the container inherits them), copies both streams
//! into the container's log file in CRI format, becomes the child subreaper so
//! the container's init is reparented to it, and records the init's exit code
//! in a small JSON file the agent reads — runc itself keeps no exit status.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::logs::{cri_line, Stream};

/// First line the shim prints on stdout once `runc create` succeeded.
pub const CREATED: &str = "created";

/// Errors of the shim process.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// Files of the shim.
    #[error("shim I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The runtime command could not be run.
    #[error("shim could not run {cmd:?}: {source}; is runc installed?")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
}

/// How a container's init process ended, as the shim records it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    /// Exit code; 128+signal when killed by a signal.
    pub exit_code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// RFC 3339 time of the exit.
    pub finished_at: String,
}

impl ExitRecord {
    /// Reads an exit file; `None` while the container has not exited.
    pub fn read(path: &Path) -> Option<ExitRecord> {
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// Runs the shim: `cmd` is the full `runc … create …` command line, `pid_file`
/// the `--pid-file` runc writes the init PID to. Returns the process exit code.
pub fn run(
    log: &Path,
    exit_file: &Path,
    pid_file: &Path,
    cmd: &[String],
) -> Result<i32, ShimError> {
    // Our own session: signals to the agent's process group never reach us.
    let _ = nix::unistd::setsid();
    // Orphaned container processes (the init after `runc create` exits) become
    // our children, so we can wait for them and learn the exit code.
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ShimError::Io { path, source }
    };
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io(log))?;
    let file = Arc::new(Mutex::new(file));
    let Some((prog, args)) = cmd.split_first() else {
        return Ok(2);
    };
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ShimError::Spawn {
            cmd: cmd.join(" "),
            source,
        })?;
    let mut copiers = Vec::new();
    if let Some(out) = child.stdout.take() {
        copiers.push(copy_stream(out, Stream::Stdout, file.clone()));
    }
    if let Some(err) = child.stderr.take() {
        copiers.push(copy_stream(err, Stream::Stderr, file.clone()));
    }
    let created = child.wait().map_err(|source| ShimError::Spawn {
        cmd: cmd.join(" "),
        source,
    })?;
    let mut stdout = std::io::stdout();
    if !created.success() {
        let _ = writeln!(stdout, "runc create exited with {created}");
        let _ = stdout.flush();
        return Ok(1);
    }
    let _ = writeln!(stdout, "{CREATED}");
    let _ = stdout.flush();
    let init = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    let record = wait_for_init(init);
    write_exit(exit_file, &record).map_err(io(exit_file))?;
    for c in copiers {
        let _ = c.join();
    }
    // Tells `logs -f` readers that nothing more will be written.
    let done = log.with_extension("log.done");
    File::create(&done).map_err(io(&done))?;
    Ok(0)
}

/// Reaps children until the init exits (or no child is left).
fn wait_for_init(init: Option<i32>) -> ExitRecord {
    let finished = |exit_code, signal| ExitRecord {
        exit_code,
        signal,
        finished_at: crate::logs::now_rfc3339(),
    };
    // Bounded by the life of our children: waitpid fails with ECHILD when none is left.
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(pid, code)) if Some(pid.as_raw()) == init => {
                return finished(code, None)
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if Some(pid.as_raw()) == init => {
                return finished(128 + sig as i32, Some(sig as i32))
            }
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return finished(255, None),
        }
    }
}

fn write_exit(path: &Path, record: &ExitRecord) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(record).unwrap_or_default())?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

/// Copies one stream into the log, one CRI line per output line (long lines
/// split into partial `P` records).
fn copy_stream(
    pipe: impl Read + Send + 'static,
    stream: Stream,
    file: Arc<Mutex<File>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::with_capacity(crate::logs::MAX_LINE, pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = match reader
                .by_ref()
                .take(crate::logs::MAX_LINE as u64)
                .read_until(b'\n', &mut buf)
            {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let full = buf[n - 1] == b'\n';
            let body = if full { &buf[..n - 1] } else { &buf[..n] };
            let line = cri_line(stream, full, body);
            if let Ok(mut f) = file.lock() {
                let _ = f.write_all(&line);
            }
        }
    })
}
