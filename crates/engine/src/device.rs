//! Where a model runs: the CPU or a CUDA GPU.
//!
//! GPU support is compiled in by the `cuda` feature (both backends). `auto` takes the first GPU
//! where the build has CUDA and the machine has one, and the CPU otherwise, so one command line
//! works on both.

use std::fmt;
use std::str::FromStr;

/// Whether this build has the `cuda` feature.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// The CPU threads to use: the number asked for, or every core the process may run on.
pub fn cpu_threads(requested: Option<usize>) -> usize {
    requested.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Where a model runs, as a user names it (`auto`, `cpu`, `cuda`, `cuda:N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The first CUDA GPU where this build has CUDA and one is visible, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The CUDA GPU of this ordinal.
    Cuda(usize),
}

/// A configuration file names a device as the command line does (`"cuda:1"`).
impl<'de> serde::Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|ordinal| ordinal.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| {
                    format!("unknown device `{text}`: expected auto, cpu, cuda or cuda:N")
                }),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
        }
    }
}

/// The error for a GPU asked of a build without CUDA.
pub(crate) fn cuda_not_built(spec: DeviceSpec) -> String {
    format!(
        "device {spec}: this build has no CUDA support (rebuild with `--features cuda`, see docs/engine.md)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_users_write_and_names_what_it_cannot() {
        assert_eq!("auto".parse(), Ok(DeviceSpec::Auto));
        assert_eq!("CPU".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        for bad in ["cuda:", "cuda:x", "metal", "gpu", "cuda:-1"] {
            let error = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(error.contains(&format!("`{bad}`")), "{error}");
        }
        for spec in [DeviceSpec::Auto, DeviceSpec::Cpu, DeviceSpec::Cuda(2)] {
            assert_eq!(spec.to_string().parse(), Ok(spec));
        }
    }
}
