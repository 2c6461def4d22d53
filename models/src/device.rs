//! Device selection: `cpu` (burn's `flex` backend, f32) or `cuda[:N]` (burn's CUDA backend,
//! bf16, only in builds with the `cuda` feature).
//!
//! Nothing here touches CUDA unless a `cuda` device is asked for, so the default build and the
//! tests run on machines without a GPU or a CUDA installation.
//!
//! [`on_cuda`] is the one way in to a CUDA device: cubecl reports a missing driver, NVRTC or
//! header, and a failed launch, by panicking, and it turns that into an error that says what to
//! check.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{Element, Int, Tensor, TensorData, backend::Backend};

use crate::ModelError;
use crate::kernel_options::KernelOptions;

/// The CPU backend: pure-Rust kernels, f32 weights.
pub type CpuBackend = burn::backend::Flex<f32, i32>;

#[cfg(feature = "cuda")]
pub use crate::cuda::{CudaBackend, CudaDevice};

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

/// Runs `work` on CUDA device `index`, turning a panic into an error that carries its message.
///
/// cubecl reports a missing driver, NVRTC or CUDA header, an out-of-memory device and a failed
/// kernel by panicking (on its own thread, then on the caller's).
#[cfg(feature = "cuda")]
pub fn on_cuda<T, E: From<ModelError>>(
    index: usize,
    work: impl FnOnce(&CudaDevice) -> Result<T, E>,
) -> Result<T, E> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        work(&CudaDevice::new(index))
    }))
    .unwrap_or_else(|panic| {
        let message = crate::cuda::panic_message(&*panic);
        Err(ModelError::Backend(format!(
            "the CUDA backend failed on cuda:{index}: {message}. If the device did not come up, \
             check that an NVIDIA driver is installed (nvidia-smi) and the GPU has memory free, \
             that LD_LIBRARY_PATH reaches libnvrtc, and that $CUDA_PATH/include holds the CUDA \
             headers (cuda_bf16.h); scripts/gpu-check.sh sets both from PyTorch's wheels"
        ))
        .into())
    })
}

/// f32 values as a tensor of the backend's float type.
pub fn upload<B: Backend, const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    let dtype = <B::FloatElem as Element>::dtype();
    Tensor::from_data(TensorData::new(values, shape).convert_dtype(dtype), device)
}

/// The greedy choice of each row of `logits: [rows, vocab]` (the first of equal scores),
/// `[rows, 1]`, computed on `logits`' device: burn's `argmax`, or on CUDA a kernel that gives each
/// row a whole cube (burn's, without autotuning, gives it one thread: see
/// [`crate::cuda::argmax`]; `kernels.cuda_argmax` switches it).
pub fn greedy_ids<B: Backend>(logits: Tensor<B, 2>, kernels: &KernelOptions) -> Tensor<B, 2, Int> {
    #[cfg(feature = "cuda")]
    if let Some(ids) = crate::cuda::argmax::argmax_rows(&logits, kernels) {
        return ids;
    }
    let _ = kernels;
    logits.argmax(1)
}

/// Token ids on their way from the device to the host.
pub struct PendingIds(Pending);

enum Pending {
    Arrived(TensorData),
    /// Read only at the wait, as if the backend queued its work (see [`defer_reads`]).
    #[cfg(test)]
    Deferred(Box<dyn FnOnce() -> TensorData + Send>),
    #[cfg(feature = "cuda")]
    Queued(crate::cuda::IntsOnTheirWay),
}

impl PendingIds {
    /// Starts reading `ids` back. On CUDA the copy is queued behind the work issued so far and
    /// waited for in [`Self::wait`], so that the host can issue the next decode step first and
    /// the GPU does not idle between steps (unless `kernels.cuda_queued_reads` is off); other
    /// backends have computed `ids` already, and they are read at once.
    pub fn read<B: Backend, const D: usize>(
        ids: Tensor<B, D, Int>,
        kernels: &KernelOptions,
    ) -> Self {
        #[cfg(test)]
        if DEFER_READS.get() {
            return Self(Pending::Deferred(Box::new(move || ids.into_data())));
        }
        #[cfg(feature = "cuda")]
        if let Some(wait) = crate::cuda::read_ints_later(&ids, kernels) {
            return Self(Pending::Queued(wait));
        }
        let _ = kernels;
        Self(Pending::Arrived(ids.into_data()))
    }

    /// Whether the ids are still being computed or copied: the backend queues work, and the
    /// host may issue more before it waits.
    pub fn is_queued(&self) -> bool {
        !matches!(self.0, Pending::Arrived(_))
    }

    /// The ids, once they have arrived.
    pub fn wait(self) -> Result<Vec<i64>, ModelError> {
        // One arm only in a build without `cuda`, outside tests.
        #[allow(clippy::infallible_destructuring_match)]
        let data = match self.0 {
            Pending::Arrived(data) => data,
            #[cfg(test)]
            Pending::Deferred(read) => read(),
            #[cfg(feature = "cuda")]
            Pending::Queued(ids) => ids
                .wait()
                .map_err(|e| ModelError::Backend(format!("reading token ids back: {e}")))?,
        };
        Ok(data.iter::<i64>().collect())
    }
}

#[cfg(test)]
thread_local! {
    static DEFER_READS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `work` with every [`PendingIds`] of this thread queued until its wait, as on CUDA, so
/// that the CPU tests cover the decoding loops' order for a backend that queues work.
#[cfg(test)]
pub(crate) fn defer_reads<T>(work: impl FnOnce() -> T) -> T {
    /// Switches the deferral off again, even when `work` panics.
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            DEFER_READS.set(false);
        }
    }
    DEFER_READS.set(true);
    let _reset = Reset;
    work()
}
