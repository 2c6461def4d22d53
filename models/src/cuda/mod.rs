//! The decoder's own CUDA kernels, written with cubecl (the kernel language of burn's CUDA
//! backend) and launched on burn's tensors.
//!
//! Burn runs every tensor operation as its own kernel, and issuing one costs the host more than
//! the GPU takes to run most of them: a 7B decode step of its operations is bound by the host,
//! not by reading the weights. The kernels here do in one launch what took burn several, so
//! that a step is issued faster than the GPU runs it and is bound by the weight reads (the
//! measurements are in `docs/gpu.md`):
//!
//! - [`matmul`]: the weight projections: a matrix-vector kernel on the CUDA cores below 8 rows
//!   (with SwiGLU applied in the same launch for the gate/up projection), a tensor-core kernel
//!   from 8 to 32 rows, burn's matmul for more;
//! - [`norm`]: the residual add and the RMSNorm after it (was 10 operations);
//! - [`rope`]: RoPE on the new queries and keys, written straight into the attention layout
//!   and the KV cache (was about 16 operations and a copy of each cache);
//! - [`swiglu`]: `silu(gate) * up` from the fused gate/up projection (was 4 operations);
//! - [`attention`]: a step's attention over the cache, masks included (was about 12); for a
//!   decode step it takes RoPE's work too;
//! - [`argmax`]: each row's greedy choice, one cube a row (burn's took about 10% of a batch-1
//!   step).
//!
//! With the feature `cuda-compile-only`, the device of `compile_only` stands in for the GPU: it
//! compiles every kernel for an H100 and runs none, so that CI checks the kernels without one.
//!
//! Each entry point takes the generic backend's tensors and returns `None` when they are not
//! CUDA tensors (or the problem is not one the kernel takes), so `llama.rs` keeps one code path
//! with burn's operations for every backend. Every kernel rounds as the burn operations it
//! replaces do (f32 arithmetic, storage-type results where burn stored them), so the CPU
//! reference and the CUDA decoder agree within bf16 rounding. Each entry point also takes the
//! [`KernelOptions`], whose `cuda_*` switches turn a kernel off (burn's operations run instead)
//! or pick one, for measuring them against each other.

/// Evaluates `$launch` with the type alias `$t` naming the element type of `$dtype` (bf16, f16
/// or f32), else `$other`: the one place that lists the element types our kernels take.
macro_rules! with_float_type {
    ($dtype:expr, $t:ident => $launch:expr, else $other:expr) => {
        match $dtype {
            burn::tensor::DType::BF16 => {
                type $t = half::bf16;
                $launch
            }
            burn::tensor::DType::F16 => {
                type $t = half::f16;
                $launch
            }
            burn::tensor::DType::F32 => {
                type $t = f32;
                $launch
            }
            _ => $other,
        }
    };
}

pub mod argmax;
pub mod attention;
#[cfg(feature = "cuda-compile-only")]
pub mod compile_only;
pub mod matmul;
pub mod norm;
pub mod rope;
pub mod swiglu;

use std::any::Any;
use std::pin::Pin;
use std::sync::Mutex;

use burn::tensor::{DType, Int, Shape, Tensor, TensorData, TensorPrimitive, backend::Backend};
use burn_cubecl::tensor::CubeTensor;
use cubecl::bytes::Bytes;
use cubecl::client::ComputeClient;
use cubecl::prelude::ArrayArg;
use cubecl::server::{CopyDescriptor, ServerError};

use crate::kernel_options::KernelOptions;

/// The CUDA backend: bf16 weights and activations (f32 for norms and softmax). burn-cuda's
/// `Cuda<bf16, i32>` (without its `fusion` feature), spelled out over this module's [`Runtime`]
/// so that the `cuda-compile-only` feature can put its compile-only device underneath.
pub type CudaBackend = burn_cubecl::CubeBackend<Runtime, half::bf16, i32, u8>;

/// A device of [`CudaBackend`].
pub type CudaDevice = <Runtime as cubecl::Runtime>::Device;

/// cubecl's CUDA runtime, the one behind [`CudaBackend`].
#[cfg(not(feature = "cuda-compile-only"))]
pub(crate) type Runtime = cubecl::cuda::CudaRuntime;
/// The device that compiles every kernel and runs none (see [`compile_only`]).
#[cfg(feature = "cuda-compile-only")]
pub(crate) type Runtime = compile_only::CompileOnlyCuda;

/// Lanes of a plane (warp) on NVIDIA GPUs.
pub(crate) const LANES: usize = 32;

/// The CUDA tensor behind `t`, if `B` is the CUDA backend.
pub(crate) fn as_cuda<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Option<CubeTensor<Runtime>> {
    (t as &dyn Any)
        .downcast_ref::<Tensor<CudaBackend, D>>()
        .map(|t| t.clone().into_primitive().tensor())
}

/// The CUDA integer tensor behind `t`, if `B` is the CUDA backend.
pub(crate) fn as_cuda_int<B: Backend, const D: usize>(
    t: &Tensor<B, D, Int>,
) -> Option<CubeTensor<Runtime>> {
    (t as &dyn Any)
        .downcast_ref::<Tensor<CudaBackend, D, Int>>()
        .map(|t| t.clone().into_primitive())
}

/// Queues a copy of the CUDA integer tensor behind `t` to the host, behind the work issued so
/// far, and returns the wait for its values; `None` when `t` is not a CUDA tensor, or with
/// `kernels.cuda_queued_reads` off (the caller reads at once).
///
/// The copy and a fence go into the stream now, and only [`IntsOnTheirWay::wait`] blocks: the
/// host can issue a decode step's kernels before it waits for the tokens of the step before.
/// The copy is the one burn's `into_data` makes, issued without waiting.
pub(crate) fn read_ints_later<B: Backend, const D: usize>(
    t: &Tensor<B, D, Int>,
    kernels: &KernelOptions,
) -> Option<IntsOnTheirWay> {
    if !kernels.cuda_queued_reads {
        return None;
    }
    let t = contiguous(as_cuda_int(t)?);
    let shape = t.meta.shape().clone();
    let descriptor = CopyDescriptor::new(
        t.handle.clone().binding(),
        shape.clone(),
        t.meta.strides().clone(),
        t.dtype.size(),
    );
    let copy: HostCopy = Box::pin(lasting_client(&t).read_one_tensor_async(descriptor));
    Some(IntsOnTheirWay {
        copy: Some(copy),
        shape,
        dtype: t.dtype,
    })
}

/// The client of `t`'s device, kept for the life of the process (one per device). cubecl's
/// read future is typed as borrowing the client it was asked through, though it holds nothing
/// of it: a lasting client lets the future outlive the call.
fn lasting_client(t: &CubeTensor<Runtime>) -> &'static ComputeClient<Runtime> {
    static CLIENTS: Mutex<Vec<(usize, &'static ComputeClient<Runtime>)>> = Mutex::new(Vec::new());
    let mut clients = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
    let index = t.device.index;
    match clients.iter().find(|(i, _)| *i == index) {
        Some((_, client)) => client,
        None => {
            let client: &'static ComputeClient<Runtime> = Box::leak(Box::new(t.client.clone()));
            clients.push((index, client));
            client
        }
    }
}

/// cubecl's wait for a copy to the host.
type HostCopy = Pin<Box<dyn Future<Output = Result<Bytes, ServerError>> + Send>>;

/// Integers that [`read_ints_later`] queued for the host.
pub(crate) struct IntsOnTheirWay {
    /// `None` once waited for.
    copy: Option<HostCopy>,
    shape: Shape,
    dtype: DType,
}

impl IntsOnTheirWay {
    /// Blocks until the copy has arrived, and returns it as burn's `into_data` would.
    pub(crate) fn wait(mut self) -> Result<TensorData, String> {
        let copy = self.copy.take().expect("waited for once");
        let bytes = cubecl::reader::read_sync(copy).map_err(|e| format!("{e:?}"))?;
        Ok(TensorData::from_bytes(
            bytes,
            self.shape.clone(),
            self.dtype,
        ))
    }
}

impl Drop for IntsOnTheirWay {
    /// A copy dropped unread is waited for: its host buffer must outlive the copy into it.
    fn drop(&mut self) {
        if let Some(copy) = self.copy.take() {
            let _ = cubecl::reader::read_sync(copy);
        }
    }
}

/// The generic tensor of a CUDA tensor; `B` must be [`CudaBackend`], which callers know from a
/// successful [`as_cuda`] on their inputs.
pub(crate) fn from_cuda<B: Backend, const D: usize>(t: CubeTensor<Runtime>) -> Tensor<B, D> {
    as_generic(Tensor::<CudaBackend, D>::from_primitive(
        TensorPrimitive::Float(t),
    ))
}

/// The generic integer tensor of a CUDA one; `B` must be [`CudaBackend`], as for [`from_cuda`].
pub(crate) fn from_cuda_int<B: Backend, const D: usize>(
    t: CubeTensor<Runtime>,
) -> Tensor<B, D, Int> {
    as_generic(Tensor::<CudaBackend, D, Int>::from_primitive(t))
}

/// A [`CudaBackend`] tensor as the same tensor of the generic backend, which is `CudaBackend`.
fn as_generic<Cuda: 'static, Generic: 'static>(t: Cuda) -> Generic {
    *(Box::new(t) as Box<dyn Any>)
        .downcast::<Generic>()
        .expect("B is CudaBackend: the caller's inputs were CUDA tensors")
}

/// `t` with plain row-major strides: burn may pad the rows of the tensors it creates (pitched
/// memory), and our kernels index dense rows. A copy only when `t` is a padded CUDA tensor.
pub(crate) fn dense<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    match as_cuda(&t) {
        Some(c) if !c.is_contiguous() => from_cuda(contiguous(c)),
        _ => t,
    }
}

/// The message of a caught panic (cubecl panics with a `String` or a `&str`).
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// A kernel argument over a contiguous tensor's elements, whatever its rank.
///
/// Our kernels index their operands as flat arrays: an array argument carries only its length,
/// which cubecl passes in the launch's constant parameters, while a tensor argument also carries
/// its shape and strides, which cubecl uploads to the device in a buffer of their own at every
/// launch.
pub(crate) fn array_arg(t: &CubeTensor<Runtime>) -> ArrayArg<Runtime> {
    let elements = t.meta.shape().iter().product();
    // SAFETY: callers pass contiguous tensors, whose buffers hold exactly `shape`'s elements.
    unsafe { ArrayArg::from_raw_parts(t.handle.clone(), elements) }
}

/// `t` with contiguous row-major strides (a copy only when it has other strides).
pub(crate) fn contiguous(t: CubeTensor<Runtime>) -> CubeTensor<Runtime> {
    if t.is_contiguous() {
        t
    } else {
        burn_cubecl::kernel::into_contiguous(t)
    }
}

/// The widest vector (in elements) that the device loads in one instruction and that divides
/// every one of `lengths`.
pub(crate) fn vector_size(t: &CubeTensor<Runtime>, lengths: &[usize]) -> usize {
    t.client
        .io_optimized_vector_sizes(t.dtype.size())
        .filter(|&v| lengths.iter().all(|l| l.is_multiple_of(v)))
        .max()
        .unwrap_or(1)
}

/// Prints `message` on stderr once per process (keyed by its first 60 characters).
pub(crate) fn warn_once(message: String) {
    static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let key: String = message.chars().take(60).collect();
    if !seen.contains(&key) {
        eprintln!("warning: {message}");
        seen.push(key);
    }
}
