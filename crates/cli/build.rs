//! Records what the binary is tuned for, so that it can say so (`--version`, `bench`) and refuse
//! to start, with a clear message, on a CPU that lacks an instruction set it was compiled for
//! (`src/cpu.rs`): the target features rustc enables (with `target-cpu=native`, those of the
//! building CPU), the `target-cpu` asked for, and the building CPU's name.

use std::env;

#[path = "src/cpu_name.rs"]
mod cpu_name;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");

    let features = env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    println!("cargo:rustc-env=GUARDREASONER_TARGET_FEATURES={features}");

    let rustflags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let target_cpu = rustflags
        .split('\x1f')
        .filter_map(|flag| flag.split("target-cpu=").nth(1))
        .next_back()
        .unwrap_or("generic (no target-cpu)");
    println!("cargo:rustc-env=GUARDREASONER_TARGET_CPU={target_cpu}");

    // The building CPU matters only where the build is tuned to it; a cross build says so.
    let native = env::var("HOST").ok() == env::var("TARGET").ok();
    let build_cpu = if native {
        cpu_name::cpu_name()
    } else {
        "another machine (cross build)".to_string()
    };
    println!("cargo:rustc-env=GUARDREASONER_BUILD_CPU={build_cpu}");
}
