//! The matmul of the decoder's weight projections on CUDA, chosen by the number of rows.
//!
//! Weights are held in checkpoint layout, `[out, in]` contiguous: one output feature's weights
//! are one contiguous row. A decode step multiplies few activation rows (one per sequence) by
//! every weight, so it is bound by reading the weights once: the kernel here ([`rows_kernel`])
//! gives each weight row to one plane (warp), whose lanes read it in 16-byte vectors, multiply
//! each vector with the same slice of every activation row, and sum across the plane at the end.
//! Consecutive cubes take the same weight rows for successive chunks of activation rows, so a
//! batch larger than a chunk reads each weight from memory once and from L2 for the rest.
//!
//! Burn's tensor-core kernel (cubek's, without autotuning) takes the projections of many rows
//! (prefill, and wide projections of large batches: [`small_rows`]); for decode steps it took
//! about 69 ms per step of a 7B model at batch 1, 8 and 32 alike (run 3 in
//! `docs/gpu-check-results.md`), far from the 4.3 ms that reading 14.5 GB takes.
//!
//! `DRPO_CUDA_SMALL_MATMUL` names the small-row kernel ([`SmallRowKernel`]): `rows` (ours, the
//! default) or `cmma` (the tensor-core kernel), so that `scripts/gpu-check.sh` can measure both
//! on the same build. cubek's own matrix-vector kernels were measured too (run 5) and dropped:
//! they take one row only, and none was faster than ours overall.

use std::sync::OnceLock;

use burn::tensor::{Tensor, TensorPrimitive, backend::Backend};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::{CubeCount, CubeDim};

use super::{
    LANES, Runtime, as_cuda, contiguous, contiguous_arg, from_cuda, vector_size, warn_once,
};
use crate::device::CudaBackend;

/// The most activation rows the small-row kernel takes.
pub const SMALL_M: usize = 32;

/// Output features above which the tensor-core kernel takes batches of more than 8 rows.
const WIDE_N: usize = 8192;

/// Whether the small-row kernel takes `m` activation rows of an `n`-output projection: up to 8
/// rows always, up to [`SMALL_M`] for projections of at most [`WIDE_N`] outputs. From the
/// projections measured alone on an H100 (run 8 in `docs/gpu-check-results.md`): at 16 and 32
/// rows the tensor-core kernel was faster on the 28,672- and 32,000-wide projections, ours on
/// the 4,096- and 6,144-wide ones. `DRPO_CUDA_ROWS_MAX=M` replaces the rule with `m <= M`.
fn small_rows(m: usize, n: usize) -> bool {
    static LIMIT: OnceLock<Option<usize>> = OnceLock::new();
    let limit = LIMIT.get_or_init(|| {
        std::env::var("DRPO_CUDA_ROWS_MAX")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    match limit {
        Some(limit) => m <= *limit,
        None => m <= 8 || (m <= SMALL_M && n <= WIDE_N),
    }
}

/// Activation rows one cube of [`rows_kernel`] multiplies (its register accumulators).
const ROWS_PER_CHUNK: usize = 8;

/// Planes (warps of 32 lanes) per cube of [`rows_kernel`], one weight row each.
const PLANES_PER_CUBE: usize = 4;

/// The kernel for projections of few rows (see [`small_rows`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmallRowKernel {
    /// [`rows_kernel`]: one plane per weight row, 16-byte loads, a plane sum.
    Rows,
    /// Burn's (cubek's) tensor-core kernel, as for many rows.
    Cmma,
}

impl SmallRowKernel {
    /// Every kernel with its `DRPO_CUDA_SMALL_MATMUL` name.
    pub const ALL: [(&'static str, Self); 2] = [("rows", Self::Rows), ("cmma", Self::Cmma)];

    /// The kernel a name means, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
    }

    /// The kernel `DRPO_CUDA_SMALL_MATMUL` names (read once), else [`Self::Rows`].
    pub fn configured() -> Self {
        static CHOICE: OnceLock<SmallRowKernel> = OnceLock::new();
        *CHOICE.get_or_init(|| match std::env::var("DRPO_CUDA_SMALL_MATMUL") {
            Err(_) => Self::Rows,
            Ok(name) => Self::from_name(&name).unwrap_or_else(|| {
                eprintln!(
                    "warning: DRPO_CUDA_SMALL_MATMUL={name:?} is not `rows` or `cmma`; using \
                     `rows`"
                );
                Self::Rows
            }),
        })
    }
}

/// `x · wᵀ` for `x: [m, k]` and `w: [n, k]` (checkpoint layout), with the configured small-row
/// kernel when `x` is a CUDA tensor of few rows (see [`small_rows`]).
pub fn project<B: Backend>(x: Tensor<B, 2>, w: &Tensor<B, 2>) -> Tensor<B, 2> {
    project_with(SmallRowKernel::configured(), x, w)
}

/// [`project`] with a given small-row kernel (for measuring them side by side).
pub fn project_with<B: Backend>(
    kernel: SmallRowKernel,
    x: Tensor<B, 2>,
    w: &Tensor<B, 2>,
) -> Tensor<B, 2> {
    let (Some(xc), Some(wc)) = (as_cuda(&x), as_cuda(w)) else {
        return x.matmul(w.clone().transpose());
    };
    // The kernels read the activations as plain rows (so does the tensor-core kernel best).
    let xc = contiguous(xc);
    if small_rows(xc.meta.shape()[0], wc.meta.shape()[0]) && kernel != SmallRowKernel::Cmma {
        match launch_rows(xc.clone(), wc.clone()) {
            Ok(out) => return from_cuda(out),
            Err(e) => warn_once(format!(
                "the `rows` matmul kernel cannot take {:?} x {:?}ᵀ ({e}); using the tensor-core \
                 kernel",
                xc.meta.shape(),
                wc.meta.shape()
            )),
        }
    }
    from_cuda(tensor_cores(xc, wc))
}

/// `x · wᵀ` with burn's (tensor-core) matmul, computed as `(w · xᵀ)ᵀ`: both operands row-major,
/// and the weights' rows, the long side, along the output rows that the kernel spreads over
/// cubes. At 8 to 32 rows this was faster than `x · wᵀ` with the weights as a transposed view
/// (run 7 in `docs/gpu-check-results.md`), at 128 rows slower.
fn tensor_cores(x: CubeTensor<Runtime>, w: CubeTensor<Runtime>) -> CubeTensor<Runtime> {
    let float = |t| Tensor::<CudaBackend, 2>::from_primitive(TensorPrimitive::Float(t));
    let x_t = contiguous(float(x).transpose().into_primitive().tensor());
    let out_t = float(w).matmul(float(x_t));
    contiguous(out_t.transpose().into_primitive().tensor())
}

/// Launches [`rows_kernel`] for `x: [m, k]` and `w: [n, k]`.
fn launch_rows(
    x: CubeTensor<Runtime>,
    w: CubeTensor<Runtime>,
) -> Result<CubeTensor<Runtime>, String> {
    let (m, k) = (x.meta.shape()[0], x.meta.shape()[1]);
    let n = w.meta.shape()[0];
    if w.meta.shape()[1] != k {
        return Err(format!(
            "inner dimensions differ: x has {k}, w has {}",
            w.meta.shape()[1]
        ));
    }
    if !x.is_contiguous() || !w.is_contiguous() {
        return Err("an operand is not contiguous".into());
    }
    if x.dtype != w.dtype {
        return Err(format!(
            "operand types differ: {:?} and {:?}",
            x.dtype, w.dtype
        ));
    }
    let vector = vector_size(&x, &[k]);
    let out =
        empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), [m, n].into(), x.dtype);
    let chunks = m.div_ceil(m.min(ROWS_PER_CHUNK));
    let cubes = n.div_ceil(PLANES_PER_CUBE) * chunks;
    let cube_count = CubeCount::new_1d(
        u32::try_from(cubes).map_err(|_| format!("{cubes} cubes are too many for one launch"))?,
    );
    let cube_dim = CubeDim::new_2d(LANES as u32, PLANES_PER_CUBE as u32);
    let client = x.client.clone();
    let (x_arg, w_arg, out_arg) = (contiguous_arg(&x), contiguous_arg(&w), contiguous_arg(&out));
    // SAFETY: every index the kernel forms is below `rows * k_vectors` for `x`, `n * k_vectors`
    // for `w` and `rows * n` for `out`, the sizes of the contiguous buffers passed.
    unsafe {
        with_float_type!(x.dtype, T => kernels::rows_kernel::launch_unchecked::<T, Runtime>(
            &client, cube_count, cube_dim, vector, x_arg, w_arg, out_arg, m, k / vector, n,
            PLANES_PER_CUBE,
        ), else return Err(format!("no `rows` kernel for {:?}", x.dtype)));
    }
    Ok(out)
}

/// The kernels, apart from burn's `Tensor` (cubecl has its own).
mod kernels {
    use cubecl::num_traits::Zero;
    use cubecl::prelude::*;

    use super::ROWS_PER_CHUNK;
    use crate::cuda::LANES;

    /// Steps of the inner loop unrolled together.
    const UNROLL: usize = 4;

    /// `acc[r] += w · x[row r]` over vector `i` of a row, for the chunk's rows.
    #[cube]
    fn multiply_add<F: Float, N: Size>(
        x: &Tensor<Vector<F, N>>,
        weights: Vector<F, N>,
        x_rows: &Array<usize>,
        acc: &mut Array<Vector<f32, N>>,
        i: usize,
        #[comptime] chunk: usize,
    ) {
        let w = Vector::<f32, N>::cast_from(weights);
        #[unroll]
        for r in 0..chunk {
            acc[r] += w * Vector::<f32, N>::cast_from(x[x_rows[r] + i]);
        }
    }

    /// `out[r, j] = Σ_i x[r, i] · w[j, i]` for the `rows` activation rows of `x` (`[rows, k]`) and
    /// the `n` weight rows of `w` (`[n, k]`), both contiguous and read as vectors of `N` elements
    /// (`k_vectors` per row); accumulated in f32.
    ///
    /// Cube `c` handles weight rows `(c / chunks) * planes + plane` for the activation rows of chunk
    /// `c % chunks` (each chunk at most [`ROWS_PER_CHUNK`] rows, accumulated in registers), so the
    /// cubes that read the same weight rows run next to each other.
    #[cube(launch_unchecked)]
    pub(super) fn rows_kernel<F: Float, N: Size>(
        x: &Tensor<Vector<F, N>>,
        w: &Tensor<Vector<F, N>>,
        out: &mut Tensor<F>,
        #[comptime] rows: usize,
        #[comptime] k_vectors: usize,
        #[comptime] n: usize,
        #[comptime] planes: usize,
    ) {
        let chunk = comptime!(rows.min(ROWS_PER_CHUNK));
        let chunks = comptime!(rows.div_ceil(chunk));
        let cube = CUBE_POS_X as usize;
        let row = (cube / chunks) * planes + UNIT_POS_Y as usize;
        let first = (cube % chunks) * chunk;
        let lane = UNIT_POS_X as usize;
        if row < n {
            // A ragged last chunk reads its last row again for the missing ones; their sums are
            // never written.
            let mut x_rows = Array::<usize>::new(chunk);
            let mut acc = Array::<Vector<f32, N>>::new(chunk);
            #[unroll]
            for r in 0..chunk {
                x_rows[r] = min(first + r, rows - 1) * k_vectors;
                acc[r] = Vector::zero();
            }
            let weights = row * k_vectors;
            // Every lane takes the same number of full steps, `UNROLL` at a time so that their
            // loads are in flight together; a ragged tail is checked.
            let full_steps = comptime!(k_vectors / LANES);
            let groups = comptime!(full_steps / UNROLL);
            for group in 0..groups {
                #[unroll]
                for u in 0..UNROLL {
                    let i = (group * UNROLL + u) * LANES + lane;
                    multiply_add::<F, N>(x, w[weights + i], &x_rows, &mut acc, i, chunk);
                }
            }
            #[unroll]
            for step in groups * UNROLL..full_steps {
                let i = step * LANES + lane;
                multiply_add::<F, N>(x, w[weights + i], &x_rows, &mut acc, i, chunk);
            }
            if comptime!(!k_vectors.is_multiple_of(LANES)) {
                let i = full_steps * LANES + lane;
                if i < k_vectors {
                    multiply_add::<F, N>(x, w[weights + i], &x_rows, &mut acc, i, chunk);
                }
            }
            #[unroll]
            for r in 0..chunk {
                let total = plane_sum(Vector::vector_sum(acc[r]));
                if lane == 0 && first + r < rows {
                    out[(first + r) * n + row] = F::cast_from(total);
                }
            }
        }
    }
}
