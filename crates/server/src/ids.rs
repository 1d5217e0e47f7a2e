//! Response ids: unique within a server's life and unlikely to repeat across restarts.

use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The next id: the server's start time and a counter, in hex.
pub fn next() -> String {
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    format!("{start:x}{:06x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}
