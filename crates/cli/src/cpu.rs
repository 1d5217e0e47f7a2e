//! The CPU this binary was compiled for, and the check that it runs on one that has what it needs.
//!
//! Builds are tuned to the CPU that builds them (`.cargo/config.toml`: `target-cpu=native`, and so
//! `-march=native` for llama.cpp): the compilers may use any instruction set of that CPU anywhere
//! in the binary. Started on a CPU without one of them, the binary would die with SIGILL wherever
//! that instruction first runs, possibly before `main` (llama.cpp's C++ static initialisers are
//! compiled the same way). So the check runs from `.preinit_array`, before every initialiser of
//! the binary, compares the features rustc was allowed to use with those the CPU (and the OS)
//! reports, and exits with a message naming the missing ones.

/// The target features rustc compiled this binary with, comma-separated (from the build script).
pub const TARGET_FEATURES: &str = env!("GUARDREASONER_TARGET_FEATURES");
/// The `target-cpu` the build asked for (`native` in this repository).
pub const TARGET_CPU: &str = env!("GUARDREASONER_TARGET_CPU");
/// The name of the CPU that built this binary.
pub const BUILD_CPU: &str = env!("GUARDREASONER_BUILD_CPU");

pub use crate::cpu_name::cpu_name as running_cpu;

/// One line naming what the build is tuned for.
pub fn built_for() -> String {
    format!("target-cpu={TARGET_CPU}, built on {BUILD_CPU}")
}

/// The instruction sets rustc compiled the binary with, space-separated.
pub fn instruction_sets() -> String {
    TARGET_FEATURES.replace(',', " ")
}

/// The text of `guardreasoner --version`: the version, what the build is tuned for, and what
/// llama.cpp's kernels were compiled with (as llama.cpp reports it).
pub fn long_version() -> String {
    let mut text = format!(
        "{}\nbuilt for: {}\nrunning on: {}\ninstruction sets: {}",
        env!("CARGO_PKG_VERSION"),
        built_for(),
        running_cpu(),
        instruction_sets(),
    );
    #[cfg(feature = "llama-cpp")]
    match guardreasoner_engine::backends::llama_cpp::system_info() {
        Ok(info) => text.push_str(&format!("\nllama.cpp: {info}")),
        Err(error) => text.push_str(&format!("\nllama.cpp: unavailable ({error})")),
    }
    text
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod start_check {
    use core::arch::x86_64::{__cpuid_count, _xgetbv, CpuidResult};

    /// Run by the dynamic loader before any initialiser of the binary (ELF `.preinit_array`).
    #[used]
    #[link_section = ".preinit_array"]
    static CHECK_AT_START: extern "C" fn() = refuse_missing_features;

    const HEAD: &str = "error: this guardreasoner cannot run on this CPU: it was compiled to use ";
    const TAIL: &str = concat!(
        ", which this CPU (or its operating system) does not offer.\n",
        "It is tuned to the CPU that built it (target-cpu=",
        env!("GUARDREASONER_TARGET_CPU"),
        ", built on ",
        env!("GUARDREASONER_BUILD_CPU"),
        "). Build it on this machine (./scripts/quickstart, or cargo install --locked --path ",
        "crates/cli), or build for a range of CPUs with RUSTFLAGS=\"-C target-cpu=x86-64-v3\" ",
        "(see the README, \"One machine's build on another\").\n",
    );

    /// CPUID registers.
    const EBX: u8 = 1;
    const ECX: u8 = 2;
    const EDX: u8 = 3;
    const EAX: u8 = 0;
    /// Register state the operating system must save for a feature to be usable (XCR0 bits).
    const NONE: u64 = 0;
    const YMM: u64 = 0b110;
    const ZMM: u64 = 0b1110_0110;

    /// Whether the CPU reports CPUID.(leaf, subleaf).register[bit], and the OS saves `state`.
    /// std's `is_x86_feature_detected!` cannot answer this: it answers `true`, without asking the
    /// CPU, for every feature the binary was compiled with.
    // `__cpuid_count` is a safe function in recent Rust, an unsafe one in older releases.
    #[allow(unused_unsafe)]
    fn has(leaf: u32, subleaf: u32, register: u8, bit: u32, state: u64) -> bool {
        // SAFETY: CPUID exists on every x86-64 CPU; leaves past the maximum are not queried.
        let max = unsafe { __cpuid_count(leaf & 0x8000_0000, 0) }.eax;
        if leaf > max {
            return false;
        }
        if leaf == 7 && subleaf > 0 && unsafe { __cpuid_count(7, 0) }.eax < subleaf {
            return false;
        }
        let CpuidResult { eax, ebx, ecx, edx } = unsafe { __cpuid_count(leaf, subleaf) };
        let value = match register {
            EAX => eax,
            EBX => ebx,
            ECX => ecx,
            _ => edx,
        };
        if value & (1 << bit) == 0 {
            return false;
        }
        if state == NONE {
            return true;
        }
        // OSXSAVE: the OS enabled XGETBV, which then says which register state it saves.
        if unsafe { __cpuid_count(1, 0) }.ecx & (1 << 27) == 0 {
            return false;
        }
        // SAFETY: OSXSAVE is set, so XGETBV is available.
        let xcr0 = unsafe { _xgetbv(0) };
        xcr0 & state == state
    }

    /// Every x86 feature rustc may be told to use past the x86-64 baseline: where the CPU reports
    /// it (Intel SDM vol. 2, CPUID), and the register state it needs. Handed to `$use`, a macro
    /// taking `feature => (leaf, subleaf, register, bit, state)` rows: the check at start and its
    /// test read the one table.
    macro_rules! x86_features {
        ($use:ident) => {
            $use!(
                "sse3" => (1, 0, ECX, 0, NONE),
                "pclmulqdq" => (1, 0, ECX, 1, NONE),
                "ssse3" => (1, 0, ECX, 9, NONE),
                "fma" => (1, 0, ECX, 12, YMM),
                "cmpxchg16b" => (1, 0, ECX, 13, NONE),
                "sse4.1" => (1, 0, ECX, 19, NONE),
                "sse4.2" => (1, 0, ECX, 20, NONE),
                "movbe" => (1, 0, ECX, 22, NONE),
                "popcnt" => (1, 0, ECX, 23, NONE),
                "aes" => (1, 0, ECX, 25, NONE),
                "xsave" => (1, 0, ECX, 26, NONE),
                "avx" => (1, 0, ECX, 28, YMM),
                "f16c" => (1, 0, ECX, 29, YMM),
                "rdrand" => (1, 0, ECX, 30, NONE),
                "bmi1" => (7, 0, EBX, 3, NONE),
                "avx2" => (7, 0, EBX, 5, YMM),
                "bmi2" => (7, 0, EBX, 8, NONE),
                "avx512f" => (7, 0, EBX, 16, ZMM),
                "avx512dq" => (7, 0, EBX, 17, ZMM),
                "rdseed" => (7, 0, EBX, 18, NONE),
                "adx" => (7, 0, EBX, 19, NONE),
                "avx512ifma" => (7, 0, EBX, 21, ZMM),
                "avx512cd" => (7, 0, EBX, 28, ZMM),
                "sha" => (7, 0, EBX, 29, NONE),
                "avx512bw" => (7, 0, EBX, 30, ZMM),
                "avx512vl" => (7, 0, EBX, 31, ZMM),
                "avx512vbmi" => (7, 0, ECX, 1, ZMM),
                "avx512vbmi2" => (7, 0, ECX, 6, ZMM),
                "gfni" => (7, 0, ECX, 8, NONE),
                "vaes" => (7, 0, ECX, 9, YMM),
                "vpclmulqdq" => (7, 0, ECX, 10, YMM),
                "avx512vnni" => (7, 0, ECX, 11, ZMM),
                "avx512bitalg" => (7, 0, ECX, 12, ZMM),
                "avx512vpopcntdq" => (7, 0, ECX, 14, ZMM),
                "avx512fp16" => (7, 0, EDX, 23, ZMM),
                "avxvnni" => (7, 1, EAX, 4, YMM),
                "avx512bf16" => (7, 1, EAX, 5, ZMM),
                "xsaveopt" => (0xD, 1, EAX, 0, NONE),
                "xsavec" => (0xD, 1, EAX, 1, NONE),
                "xsaves" => (0xD, 1, EAX, 3, NONE),
                "lzcnt" => (0x8000_0001, 0, ECX, 5, NONE),
                "sse4a" => (0x8000_0001, 0, ECX, 6, NONE),
            )
        };
    }

    /// Writes the missing features and exits. Deliberately plain (branches, scalar arithmetic,
    /// `write` calls on static strings): it runs on the very CPU that may lack wider instructions,
    /// and is tested under an emulated CPU without AVX (scripts/check-cpu-build).
    extern "C" fn refuse_missing_features() {
        let mut missing = 0usize;
        macro_rules! require {
            ($($feature:tt => ($leaf:expr, $subleaf:expr, $register:expr, $bit:expr, $state:expr)),* $(,)?) => {$(
                if cfg!(target_feature = $feature) && !has($leaf, $subleaf, $register, $bit, $state) {
                    say(if missing == 0 { HEAD } else { ", " });
                    say($feature);
                    missing += 1;
                }
            )*};
        }
        x86_features!(require);
        if missing > 0 {
            say(TAIL);
            // SAFETY: ends the process; nothing has been initialised that needs tearing down.
            unsafe { libc::_exit(1) };
        }
    }

    fn say(text: &str) {
        // SAFETY: writes `text.len()` bytes of a valid string to standard error.
        unsafe { libc::write(2, text.as_ptr().cast(), text.len()) };
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// The table agrees with std's run-time detection on this CPU for the features this
        /// build does not enable (std asks the CPU for those). For the ones it enables (std
        /// answers `true` without asking), the build's record names them and the table finds
        /// them on this CPU, where the tests run as the build was tuned.
        #[test]
        fn cpuid_bits_agree_with_std_and_with_the_build() {
            macro_rules! agree {
                ($($feature:tt => ($leaf:expr, $subleaf:expr, $register:expr, $bit:expr, $state:expr)),* $(,)?) => {$(
                    let present = has($leaf, $subleaf, $register, $bit, $state);
                    if cfg!(target_feature = $feature) {
                        assert!(
                            crate::cpu::TARGET_FEATURES.split(',').any(|f| f == $feature),
                            "{} is enabled but not in the build's record", $feature
                        );
                        assert!(present, "{}: enabled by the build, absent by cpuid", $feature);
                    } else {
                        assert_eq!(present, std::arch::is_x86_feature_detected!($feature), $feature);
                    }
                )*};
            }
            x86_features!(agree);
            assert!(has(1, 0, ECX, 0, NONE), "sse3");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_records_what_it_is_tuned_for() {
        assert!(!TARGET_CPU.is_empty());
        assert!(!BUILD_CPU.is_empty());
        if cfg!(target_arch = "x86_64") {
            // rustc always enables the x86-64 baseline.
            assert!(
                TARGET_FEATURES.split(',').any(|f| f == "sse2"),
                "{TARGET_FEATURES}"
            );
        }
    }
}
