//! The CPU's name as Linux gives it. One file for two users: the build script (the building
//! CPU, recorded in the binary) and the binary (the CPU it runs on).

/// The `model name` line of `/proc/cpuinfo`, or `unknown`.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}
