//! The residual add and the RMSNorm after it, in one kernel.
//!
//! For each row, `sum = x + branch` (rounded to the storage type, as burn's add is) and
//! `normed = (sum / rms(sum)) * weight`, the statistic in f32 and the two roundings of
//! `llama::rms_norm` kept: `sum · inv_rms` is rounded to the storage type before the weight
//! multiplies it.

use burn::tensor::{Tensor, backend::Backend};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use cubecl::prelude::{CubeCount, CubeDim};

use super::{Runtime, array_arg, as_cuda, contiguous, from_cuda, vector_size};
use crate::kernel_options::KernelOptions;

/// Planes per cube, all on one row: a decode step has as few rows as sequences, and one plane
/// per row left the GPU waiting on a single plane's loads.
const PLANES: usize = 4;

/// `(x + branch, rms_norm(x + branch) * weight)` for `x`, `branch`: `[batch, len, d]` (without
/// `branch`: `(x, rms_norm(x) * weight)`), or `None` when the tensors are not CUDA tensors or
/// `kernels.cuda_fused` is off.
#[allow(clippy::type_complexity)]
pub fn add_rms_norm<B: Backend>(
    x: &Tensor<B, 3>,
    branch: Option<&Tensor<B, 3>>,
    weight: &Tensor<B, 1>,
    eps: f64,
    kernels: &KernelOptions,
) -> Option<(Tensor<B, 3>, Tensor<B, 3>)> {
    if !kernels.cuda_fused {
        return None;
    }
    let xc = contiguous(as_cuda(x)?);
    let bc = match branch {
        Some(b) => Some(contiguous(as_cuda(b)?)),
        None => None,
    };
    let wc = contiguous(as_cuda(weight)?);
    let [batch, len, d] = x.dims();
    if branch.is_some_and(|b| b.dims() != [batch, len, d]) || weight.dims() != [d] {
        return None;
    }
    let dtype = xc.dtype;
    if bc.as_ref().is_some_and(|b| b.dtype != dtype) || wc.dtype != dtype {
        return None;
    }
    let vector = vector_size(&xc, &[d]);
    let shape: burn::tensor::Shape = [batch, len, d].into();
    let client = xc.client.clone();
    let sum = match &bc {
        Some(_) => {
            empty_device_contiguous_dtype(client.clone(), xc.device.clone(), shape.clone(), dtype)
        }
        None => xc.clone(),
    };
    let normed = empty_device_contiguous_dtype(client.clone(), xc.device.clone(), shape, dtype);
    let rows = u32::try_from(batch * len).ok()?;
    let branch_arg = array_arg(bc.as_ref().unwrap_or(&xc));
    let (add, d_vectors) = (bc.is_some(), d / vector);
    // SAFETY: row `r` of the cube grid reads and writes elements `r * d .. (r + 1) * d` of
    // the `[rows, d]` buffers, and the weight's `d`.
    unsafe {
        with_float_type!(dtype, T => kernels::add_rms_norm_kernel::launch_unchecked::<T, Runtime>(
            &client,
            CubeCount::new_1d(rows),
            CubeDim::new_2d(super::LANES as u32, PLANES as u32),
            vector,
            array_arg(&xc),
            branch_arg,
            array_arg(&wc),
            array_arg(&sum),
            array_arg(&normed),
            eps as f32,
            d as f32,
            d_vectors,
            add,
        ), else return None);
    }
    Some((from_cuda(sum), from_cuda(normed)))
}

mod kernels {
    use cubecl::prelude::*;

    use super::PLANES;
    use crate::cuda::LANES;

    /// One cube per row: thread `t` takes the row's vectors `t, t + 128, ...`; the sum of squares
    /// is added across each plane, then across the planes in shared memory.
    #[cube(launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_rms_norm_kernel<F: Float, N: Size>(
        x: &Array<Vector<F, N>>,
        branch: &Array<Vector<F, N>>,
        weight: &Array<Vector<F, N>>,
        sum: &mut Array<Vector<F, N>>,
        normed: &mut Array<Vector<F, N>>,
        eps: f32,
        width: f32,
        #[comptime] d_vectors: usize,
        #[comptime] add: bool,
    ) {
        let row = CUBE_POS_X as usize * d_vectors;
        let tid = UNIT_POS as usize;
        let threads = comptime!(LANES * PLANES);
        let steps = comptime!(d_vectors.div_ceil(threads));
        let mut squares = Vector::<f32, N>::new(0.0);
        for step in 0..steps {
            let i = step * threads + tid;
            if i < d_vectors {
                let mut v = x[row + i];
                if add {
                    v = Vector::cast_from(
                        Vector::<f32, N>::cast_from(v)
                            + Vector::<f32, N>::cast_from(branch[row + i]),
                    );
                    sum[row + i] = v;
                }
                let v = Vector::<f32, N>::cast_from(v);
                squares += v * v;
            }
        }
        let mut partial = SharedMemory::<f32>::new(PLANES);
        let plane_total = plane_sum(f32::cast_from(Vector::vector_sum(squares)));
        if UNIT_POS_X == 0 {
            partial[UNIT_POS_Y as usize] = plane_total;
        }
        sync_cube();
        let mut total = 0.0f32;
        #[unroll]
        for p in 0..PLANES {
            total += partial[p];
        }
        let inv_rms = f32::inverse_sqrt(total / width + eps);
        let inv = Vector::<f32, N>::new(inv_rms);
        for step in 0..steps {
            let i = step * threads + tid;
            if i < d_vectors {
                let v = if add { sum[row + i] } else { x[row + i] };
                let scaled = Vector::<F, N>::cast_from(Vector::<f32, N>::cast_from(v) * inv);
                normed[row + i] = Vector::cast_from(
                    Vector::<f32, N>::cast_from(scaled) * Vector::<f32, N>::cast_from(weight[i]),
                );
            }
        }
    }
}
