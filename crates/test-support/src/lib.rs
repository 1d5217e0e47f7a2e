//! What the workspace's tests share: where the data and models they read are, and the one rule
//! for when those are absent.
//!
//! Tests that read the benchmark data read it from `shared/data` beside the repository (never a
//! copy in the repository; users download it with `guardreasoner data fetch`), and tests that run
//! a real model read it from the models cache (`scripts/fetch-test-model`). Where one is absent a
//! test skips, saying so, so that `cargo test` works on a bare checkout; where the test command
//! requires it (`scripts/test` sets [`REQUIRE_SHARED_DATA`] and [`REQUIRE_TEST_MODEL`]), the test
//! fails instead, loudly, so that CI cannot pass without running it.

// Every public item says what it is for; keep it so.
#![deny(missing_docs)]

use std::path::{Path, PathBuf};

/// Set (to anything) to make a test fail where `shared/data` is absent, instead of skipping.
pub const REQUIRE_SHARED_DATA: &str = "GUARDREASONER_REQUIRE_SHARED_DATA";
/// Set (to anything) to make a test fail where a test model is absent, instead of skipping.
pub const REQUIRE_TEST_MODEL: &str = "GUARDREASONER_REQUIRE_TEST_MODEL";

/// `shared/data` beside the repository (the benchmarks and GuardReasoner's released outputs), or
/// `None` after saying the test skips.
///
/// # Panics
/// Where it is absent and [`REQUIRE_SHARED_DATA`] is set.
pub fn shared_data() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    let complete = ["benchmarks/benchmark", "benchmarks/test"]
        .iter()
        .all(|dir| root.join(dir).is_dir());
    present_or_skip(
        complete,
        root,
        REQUIRE_SHARED_DATA,
        "the shared benchmark data is not beside the repository",
    )
}

/// `shared/data/benchmarks`: `benchmark/` (the test sets) and `test/` (released outputs).
///
/// # Panics
/// As [`shared_data`].
pub fn shared_benchmarks() -> Option<PathBuf> {
    shared_data().map(|root| root.join("benchmarks"))
}

/// A cached test model file (or tokenizer), or `None` after saying the test skips.
///
/// # Panics
/// Where it is absent and [`REQUIRE_TEST_MODEL`] is set.
pub fn test_model(path: PathBuf) -> Option<PathBuf> {
    let present = path.is_file();
    present_or_skip(
        present,
        path,
        REQUIRE_TEST_MODEL,
        "run scripts/fetch-test-model",
    )
}

fn present_or_skip(present: bool, path: PathBuf, switch: &str, hint: &str) -> Option<PathBuf> {
    if present {
        return Some(path);
    }
    if std::env::var_os(switch).is_some() {
        panic!(
            "{} is missing ({hint}), and {switch} is set",
            path.display()
        );
    }
    eprintln!("skipped: {} is absent ({hint})", path.display());
    None
}
