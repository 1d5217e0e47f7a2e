//! Where the shared data is, for tests that read it; they skip, saying so, where it is absent.

use std::path::PathBuf;

/// `shared/data/benchmarks`, beside the repository, or `None` (with a message) when absent.
pub fn benchmarks() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/benchmarks");
    if root.join("benchmark").is_dir() {
        Some(root)
    } else {
        eprintln!(
            "skipped: {} is absent (the shared benchmark data is not here)",
            root.display()
        );
        None
    }
}
