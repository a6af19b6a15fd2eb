//! `skiff-shim`: the per-container shim `skiff agent` starts (see
//! `skiff_nodeagent::runtime::shim`). One runs per container for the
//! container's whole life, so it is its own small binary: the full `skiff`
//! binary (API server, proxy, DNS, tokio runtime) cost several MiB of RSS per
//! shim. `skiff agent --shim-log ...` still works when this binary is missing.
//!
//! Usage: `skiff-shim --shim-log LOG --shim-exit EXIT --shim-pid-file PID -- RUNTIME ARGS...`

use std::path::PathBuf;
use std::process::ExitCode;

fn usage(problem: &str) -> ExitCode {
    eprintln!(
        "skiff-shim: {problem}\nusage: skiff-shim --shim-log LOG --shim-exit EXIT --shim-pid-file PID -- RUNTIME ARGS..."
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut log, mut exit, mut pid) = (None, None, None);
    let mut command = Vec::new();
    while let Some(arg) = args.next() {
        let slot = match arg.as_str() {
            "--shim-log" => &mut log,
            "--shim-exit" => &mut exit,
            "--shim-pid-file" => &mut pid,
            "--" => {
                command.extend(args.by_ref());
                break;
            }
            other => return usage(&format!("unexpected argument {other:?}")),
        };
        let Some(value) = args.next() else {
            return usage(&format!("{arg} needs a value"));
        };
        *slot = Some(PathBuf::from(value));
    }
    let (Some(log), Some(exit), Some(pid)) = (log, exit, pid) else {
        return usage("--shim-log, --shim-exit and --shim-pid-file are required");
    };
    if command.is_empty() {
        return usage("no runtime command after --");
    }
    match skiff_nodeagent::runtime::shim::run(&log, &exit, &pid, &command) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("skiff-shim: {e}");
            ExitCode::from(1)
        }
    }
}
