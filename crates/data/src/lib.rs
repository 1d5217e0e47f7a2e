//! The data the project evaluates on, fetched from its public origin into a local cache.
//!
//! - [`manifest`]: every file we download, with its origin, size and SHA-256.
//! - [`cache`]: where the files live on this machine.
//! - [`fetch`]: downloading with resume, verification, and repair of bad files.
//!
//! The cache mirrors the origin's layout (`benchmarks/benchmark/*.json`,
//! `benchmarks/wildguardtest/wildguardtest.parquet`, `benchmarks/test/<size>/<Benchmark>/...`), so
//! that a mirror of it is served by any static file server.

// Every public item says what it is for; keep it so.
#![deny(missing_docs)]

pub mod cache;
pub mod fetch;
pub mod manifest;
#[cfg(feature = "testing")]
pub mod testing;

pub use cache::{benchmarks_dir, data_dir};
pub use fetch::{fetch, FetchError, FetchEvent, FetchOptions, FetchOutcome, Source};
pub use manifest::{DataFile, Group, MANIFEST};
