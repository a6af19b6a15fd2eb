//! Gives free heap memory back to the operating system.
//!
//! glibc's allocator keeps memory freed by the process in its arenas for
//! reuse. After a burst — thousands of creates decoded and encoded by
//! concurrent requests, an unpaginated list of every pod — tens of MiB stay
//! resident although nothing uses them, and a server that holds 10k pods
//! looks (and, for the kernel, is) that much bigger. `malloc_trim(0)`
//! releases the free pages of every arena (`MADV_DONTNEED`); it is cheap
//! when there is little to release, so it runs on a fixed period, as
//! jemalloc's background purging would.

use std::sync::Once;
use std::time::Duration;

/// How often free memory is released.
const TRIM_INTERVAL: Duration = Duration::from_secs(2);

/// Releases free heap pages every [`TRIM_INTERVAL`] until the process ends
/// (one thread per process, however many servers it runs).
pub fn spawn_trimmer() {
    static STARTED: Once = Once::new();
    STARTED.call_once(start);
}

fn start() {
    let spawned = std::thread::Builder::new()
        .name("heap-trim".into())
        .spawn(|| loop {
            std::thread::sleep(TRIM_INTERVAL);
            release_free_memory();
        });
    if let Err(e) = spawned {
        tracing::warn!("not releasing free heap memory periodically: {e}");
    }
}

/// Returns the allocator's free pages to the kernel.
#[allow(unsafe_code)]
fn release_free_memory() {
    // SAFETY: malloc_trim takes no pointers and is thread-safe (it locks each
    // arena while it trims it); it only returns unused pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
