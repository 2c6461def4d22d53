//! `silu(gate) * up` from the fused gate/up projection, in one kernel.
//!
//! `silu` is computed in f32 and rounded once to the storage type (as `transformers` does),
//! then multiplied by `up` and rounded again.

use burn::tensor::{Tensor, backend::Backend};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use cubecl::prelude::{CubeCount, CubeDim};

use super::{Runtime, array_arg, as_cuda, contiguous, from_cuda, vector_size};
use crate::kernel_options::KernelOptions;

/// Threads per cube.
const THREADS: usize = 256;

/// `silu(gate) * up` for `gate_up: [rows, 2 * inner]` (gate first), `[rows, inner]`; `None` when
/// it is not a CUDA tensor or `kernels.cuda_fused` is off.
pub fn swiglu<B: Backend>(gate_up: &Tensor<B, 2>, kernels: &KernelOptions) -> Option<Tensor<B, 2>> {
    if !kernels.cuda_fused {
        return None;
    }
    let gu = contiguous(as_cuda(gate_up)?);
    let [rows, both] = gate_up.dims();
    let inner = both / 2;
    let vector = vector_size(&gu, &[inner]);
    let out = empty_device_contiguous_dtype(
        gu.client.clone(),
        gu.device.clone(),
        [rows, inner].into(),
        gu.dtype,
    );
    let total = rows * inner / vector;
    let cubes = u32::try_from(total.div_ceil(THREADS)).ok()?;
    let client = gu.client.clone();
    let (input, output) = (array_arg(&gu), array_arg(&out));
    // SAFETY: thread `i < total` reads vectors of row `i / (inner / vector)` of `gate_up` and
    // writes vector `i` of `out`.
    unsafe {
        with_float_type!(gu.dtype, T => kernels::swiglu_kernel::launch_unchecked::<T, Runtime>(
            &client,
            CubeCount::new_1d(cubes),
            CubeDim::new_1d(THREADS as u32),
            vector,
            input,
            output,
            total,
            inner / vector,
        ), else return None);
    }
    Some(from_cuda(out))
}

pub(crate) mod kernels {
    use cubecl::prelude::*;

    /// `silu(gate) * up`, rounded as burn's operations round it: `silu` in f32, rounded to the
    /// storage type, then the product in f32, rounded again.
    #[cube]
    pub(crate) fn silu_times<F: Float, N: Size>(
        gate: Vector<F, N>,
        up: Vector<F, N>,
    ) -> Vector<F, N> {
        let gate = Vector::<f32, N>::cast_from(gate);
        let one = Vector::<f32, N>::new(1.0);
        let zero = Vector::<f32, N>::new(0.0);
        let silu = Vector::<F, N>::cast_from(gate / (one + Vector::exp(zero - gate)));
        Vector::cast_from(Vector::<f32, N>::cast_from(silu) * Vector::<f32, N>::cast_from(up))
    }

    /// Element `i` (in vectors) of the `[rows, inner]` output: `gate_up` row `i / inner_vectors`
    /// holds the gate in its first half and `up` in its second.
    #[cube(launch_unchecked)]
    pub(super) fn swiglu_kernel<F: Float, N: Size>(
        gate_up: &Array<Vector<F, N>>,
        out: &mut Array<Vector<F, N>>,
        total: usize,
        #[comptime] inner_vectors: usize,
    ) {
        let i = ABSOLUTE_POS;
        if i < total {
            let row = i / inner_vectors;
            let col = i % inner_vectors;
            let at = row * 2 * inner_vectors + col;
            out[i] = silu_times::<F, N>(gate_up[at], gate_up[at + inner_vectors]);
        }
    }
}
