//! `skiff-cni`: the CNI plugin binary. A container runtime runs it inside the
//! node's network namespace with `CNI_*` variables and the network config on
//! stdin; it prints the result (or the spec's error object) on stdout.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::process::ExitCode;

use skiff_cni::errors::{CniError, Code};
use skiff_cni::invoke::{invoke_blocking, Outcome};
use skiff_cni::Netns;

/// This very binary, even if its file was replaced since it started.
const SELF_EXE: &str = "/proc/self/exe";

fn main() -> ExitCode {
    if let Some(code) = skiff_cni::unlink::helper_main() {
        return code;
    }
    // One thread (and, for DEL/CHECK/STATUS/GC, one current-thread runtime):
    // namespace work can stay on it.
    skiff_cni::netns::enter_on_calling_thread();
    // DEL leaves the kernel's link teardown to a copy of this binary.
    skiff_cni::unlink::use_helper_process(SELF_EXE.into());
    let mut stdin = Vec::new();
    let node = Netns::current();
    let env = |k: &str| std::env::var(k).ok();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Err(e) => Outcome {
            stdout: CniError::new(
                Code::Io,
                format!("reading the network config from stdin failed: {e}"),
            )
            .to_json(skiff_cni::SPEC_VERSION)
            .to_string(),
            success: false,
        },
        // ADD and VERSION need no runtime: its start-up would be part of every ADD.
        Ok(_) => match invoke_blocking(&env, &stdin, &node) {
            Ok(done) => done,
            // Netlink needs only the I/O driver; timers and signals cost start-up time.
            Err(pending) => match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
            {
                Ok(rt) => rt.block_on(pending.run(&node)),
                Err(e) => Outcome {
                    stdout: CniError::new(
                        Code::Io,
                        format!("starting the async runtime failed: {e}"),
                    )
                    .to_json(skiff_cni::SPEC_VERSION)
                    .to_string(),
                    success: false,
                },
            },
        },
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    if outcome.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
