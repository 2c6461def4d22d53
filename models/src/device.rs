//! Device selection: `cpu` (burn's `flex` backend, f32) or `cuda[:N]` (burn's CUDA backend,
//! bf16, only in builds with the `cuda` feature).
//!
//! Nothing here touches CUDA unless a `cuda` device is asked for, so the default build and the
//! tests run on machines without a GPU or a CUDA installation.

use std::fmt;
use std::str::FromStr;

use crate::ModelError;

/// The CPU backend: pure-Rust kernels, f32 weights.
pub type CpuBackend = burn::backend::Flex<f32, i32>;

/// The CUDA backend: bf16 weights and activations (f32 for norms and softmax).
#[cfg(feature = "cuda")]
pub type CudaBackend = burn_cuda::Cuda<half::bf16, i32>;

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The CPU.
    Cpu,
    /// The CUDA GPU with this index.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, ModelError> {
        let bad = || {
            ModelError::Usage(format!(
                "unknown device {s:?}: use `cpu`, `cuda` or `cuda:N` (N the GPU index)"
            ))
        };
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => {
                let index = s.strip_prefix("cuda:").ok_or_else(bad)?;
                index.parse().map(Self::Cuda).map_err(|_| bad())
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

impl DeviceSpec {
    /// Fails with advice when this build cannot serve the device.
    pub fn check_available(self) -> Result<(), ModelError> {
        match self {
            Self::Cpu => Ok(()),
            Self::Cuda(_) if cfg!(feature = "cuda") => Ok(()),
            Self::Cuda(_) => Err(ModelError::Usage(
                "this build has no CUDA support: rebuild with `--features cuda`, or use \
                 `--device cpu`"
                    .into(),
            )),
        }
    }
}
