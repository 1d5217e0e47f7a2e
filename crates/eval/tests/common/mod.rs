//! Where the shared data is, for tests that read it (see `guardreasoner-test-support`).

use std::path::PathBuf;

/// `shared/data/benchmarks`, beside the repository; `None` where absent and not required.
pub fn benchmarks() -> Option<PathBuf> {
    guardreasoner_test_support::shared_benchmarks()
}
