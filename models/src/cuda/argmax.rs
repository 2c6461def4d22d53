//! Each row's greedy choice from a step's logits, on the device.
//!
//! Burn's `argmax` leaves the choice of reduction to autotuning, which our `cuda` build does not
//! have (see `models/Cargo.toml`); without it, one thread reduces a whole row, a large share
//! of a batch-1 decode step for a vocabulary-wide row (measured in `docs/gpu.md`). Here a whole
//! cube takes each row
//! (cubek's cube routine, its planes combining their candidates), with the same answer: the
//! first of equal maxima.

use burn::tensor::{Int, Tensor, backend::Backend, get_device_settings};
use burn_cubecl::kernel::reduce::{KernelReduceStrategy, reduce_dim};
use cubek_reduce::ReduceStrategy;
use cubek_reduce::components::instructions::ReduceOperationConfig;
use cubek_reduce::launch::{RoutineStrategy, VectorizationStrategy};
use cubek_reduce::routines::BlueprintStrategy;
use cubek_reduce::routines::cube::CubeStrategy;

use super::{CudaBackend, as_cuda, contiguous, from_cuda_int, warn_once};
use crate::kernel_options::KernelOptions;

/// The index of the largest value of each row of `scores: [rows, n]`, `[rows, 1]` (the first of
/// equal ones, as burn's `argmax(1)`); `None` when `scores` is not a CUDA tensor, with
/// `kernels.cuda_argmax` off, or when cubek refuses the problem (with a warning).
pub fn argmax_rows<B: Backend>(
    scores: &Tensor<B, 2>,
    kernels: &KernelOptions,
) -> Option<Tensor<B, 2, Int>> {
    if !kernels.cuda_argmax {
        return None;
    }
    let scores = contiguous(as_cuda(scores)?);
    let ids_dtype = get_device_settings::<CudaBackend>(&scores.device).int_dtype;
    let one_cube_a_row = ReduceStrategy {
        routine: RoutineStrategy::Cube(BlueprintStrategy::Inferred(CubeStrategy {
            use_planes: true,
        })),
        vectorization: VectorizationStrategy {
            parallel_output_vectorization: false,
        },
    };
    let shape = scores.meta.shape().clone();
    match reduce_dim(
        scores,
        Some(ids_dtype.into()),
        1,
        KernelReduceStrategy::Specific(one_cube_a_row),
        ReduceOperationConfig::ArgMax,
    ) {
        Ok(ids) => Some(from_cuda_int(ids)),
        Err(e) => {
            warn_once(format!(
                "the one-cube-a-row argmax cannot take scores of shape {shape:?} ({e}); using \
                 burn's"
            ));
            None
        }
    }
}
