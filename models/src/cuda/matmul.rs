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
//! That kernel multiplies in f32 on the CUDA cores: one fused multiply-add per weight and row.
//! At 32 rows that is the limit, not the memory, so for 8 to 32 rows [`mma_kernel`] multiplies
//! on the tensor
//! cores instead: each cube takes 32 weight rows, its planes split the inner dimension between
//! them, each plane multiplies 32×16 weight tiles by 16×8 activation tiles (`wmma` m32n8k16,
//! f32 accumulators), and the planes' partial sums are added in shared memory at the end.
//!
//! Burn's tensor-core kernel (cubek's, without autotuning) takes the projections of many rows
//! (prefill); for decode steps it is far from the speed of reading the weights once, whatever
//! the batch.
//!
//! `KernelOptions::cuda_small_matmul` ([`SmallRowKernel`], `DRPO_CUDA_SMALL_MATMUL`) names the
//! small-row kernel: `mma` (the default: tensor cores from 8 rows, `rows` below), `rows` (ours
//! on the CUDA cores up to 8 rows, or 32 on narrow projections) or `cmma` (burn's tensor-core
//! kernel), so that `scripts/gpu-check.sh` can measure them on the same build. cubek's own
//! matrix-vector kernels take one row only and were no faster than ours. The measurements
//! behind these choices are in `docs/gpu.md`.

use burn::tensor::{DType, Tensor, TensorPrimitive, backend::Backend};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::{CubeCount, CubeDim};

use super::{
    CudaBackend, LANES, Runtime, array_arg, as_cuda, contiguous, from_cuda, vector_size, warn_once,
};
use crate::kernel_options::{KernelOptions, SmallRowKernel};

/// The most activation rows the small-row kernels take.
pub const SMALL_M: usize = 32;

/// Output features above which burn's tensor-core kernel rather than `rows` takes more than 8 rows
/// (when `mma` is not the configured kernel).
const WIDE_N: usize = 8192;

/// Whether the `rows` kernel takes `m` activation rows of an `n`-output projection: up to 8
/// rows always, up to [`SMALL_M`] for projections of at most [`WIDE_N`] outputs (where it was
/// faster than burn's tensor-core kernel; see `docs/gpu.md`). `kernels.cuda_rows_max = Some(M)`
/// replaces the rule with `m <= M`.
fn small_rows(m: usize, n: usize, kernels: &KernelOptions) -> bool {
    match kernels.cuda_rows_max {
        Some(limit) => m <= limit,
        None => m <= 8 || (m <= SMALL_M && n <= WIDE_N),
    }
}

/// Activation rows one cube of [`rows_kernel`] multiplies (its register accumulators).
const ROWS_PER_CHUNK: usize = 8;

/// The fewest rows [`mma_kernel`] takes by default: below one whole tile of activation rows, the
/// zero padding costs more than the tensor cores save.
const MMA_MIN_ROWS: usize = MMA_N;

/// Weight rows per cube of [`mma_kernel`] (the tile's `m`).
const MMA_M: usize = 32;
/// Activation rows per tile of [`mma_kernel`] (the tile's `n`).
const MMA_N: usize = 8;
/// Inner elements per tile of [`mma_kernel`] (the tile's `k`).
const MMA_K: usize = 16;
/// Inner tiles a plane of [`mma_kernel`] loads before it multiplies them, so that their loads
/// are in flight together.
const MMA_UNROLL: usize = 4;
/// Planes per cube of [`mma_kernel`] at most (512 threads).
const MMA_MAX_SPLITS: usize = 16;
/// Shared memory of one cube of [`mma_kernel`] for the planes' partial sums (more planes add
/// theirs in rounds).
const MMA_SHARED_BYTES: usize = 32 * 1024;

/// `x · wᵀ` for `x: [m, k]` and `w: [n, k]` (checkpoint layout), with the small-row kernel
/// `kernels.cuda_small_matmul` when `x` is a CUDA tensor of few rows (see [`small_rows`]).
pub fn project<B: Backend>(
    x: Tensor<B, 2>,
    w: &Tensor<B, 2>,
    kernels: &KernelOptions,
) -> Tensor<B, 2> {
    let (Some(xc), Some(wc)) = (as_cuda(&x), as_cuda(w)) else {
        return x.matmul(w.clone().transpose());
    };
    // The kernels read the activations as plain rows (so does the tensor-core kernel best).
    let xc = contiguous(xc);
    let (m, n) = (xc.meta.shape()[0], wc.meta.shape()[0]);
    let kernel = kernels.cuda_small_matmul;
    let mma = || launch_mma(xc.clone(), wc.clone());
    let rows = || launch_rows(xc.clone(), wc.clone(), false, kernels);
    let mut attempts: Vec<(&str, &dyn Fn() -> LaunchResult)> = Vec::with_capacity(2);
    if kernel == SmallRowKernel::Mma && (MMA_MIN_ROWS..=SMALL_M).contains(&m) {
        attempts.push(("mma", &mma));
    }
    if kernel != SmallRowKernel::Cmma && small_rows(m, n, kernels) {
        attempts.push(("rows", &rows));
    }
    for (name, launch) in attempts {
        match launch() {
            Ok(out) => return from_cuda(out),
            Err(e) => warn_once(format!(
                "the `{name}` matmul kernel cannot take {:?} x {:?}ᵀ ({e}); trying the next one",
                xc.meta.shape(),
                wc.meta.shape()
            )),
        }
    }
    from_cuda(tensor_cores(xc, wc))
}

/// `silu(gate) * up` of the fused gate/up projection `x · wᵀ` (`w: [2 * inner, k]`, gate rows
/// first), `[m, inner]`, in one launch of the `rows` kernel when the configured kernel would
/// take `x`'s rows with `rows` (a decode step of few sequences), so that the gate/up products
/// never leave the kernel. `None` otherwise (the caller projects, then applies SwiGLU), with
/// `kernels.cuda_fused` or `kernels.cuda_gated` off, or when `x` is not a CUDA tensor.
pub fn project_swiglu<B: Backend>(
    x: &Tensor<B, 2>,
    w: &Tensor<B, 2>,
    kernels: &KernelOptions,
) -> Option<Tensor<B, 2>> {
    if !kernels.cuda_gated || !kernels.cuda_fused {
        return None;
    }
    let (xc, wc) = (as_cuda(x)?, as_cuda(w)?);
    let (m, n) = (xc.meta.shape()[0], wc.meta.shape()[0]);
    let takes_rows = match kernels.cuda_small_matmul {
        SmallRowKernel::Mma => m < MMA_MIN_ROWS,
        SmallRowKernel::Rows => true,
        SmallRowKernel::Cmma => false,
    };
    if !takes_rows || !small_rows(m, n, kernels) {
        return None;
    }
    match launch_rows(contiguous(xc), wc, true, kernels) {
        Ok(out) => Some(from_cuda(out)),
        Err(e) => {
            warn_once(format!(
                "the gated `rows` kernel cannot take {:?} x {:?}ᵀ ({e}); projecting first",
                x.dims(),
                w.dims()
            ));
            None
        }
    }
}

/// The output of a kernel launch for `x · wᵀ`, or why the kernel does not take these operands.
type LaunchResult = Result<CubeTensor<Runtime>, String>;

/// Rows above which burn's matmul takes `x · wᵀ` with the weights as a transposed view rather
/// than `(w · xᵀ)ᵀ`.
const TRANSPOSED_FORM_ROWS: usize = 64;

/// `x · wᵀ` with burn's (tensor-core) matmul. Up to [`TRANSPOSED_FORM_ROWS`] rows it is computed
/// as `(w · xᵀ)ᵀ`: both operands row-major, and the weights' rows, the long side, along the
/// output rows that the kernel spreads over cubes; at 8 to 32 rows that was faster than `x · wᵀ`
/// with the weights as a transposed view, at 128 rows much slower, so many rows take the direct
/// form.
fn tensor_cores(x: CubeTensor<Runtime>, w: CubeTensor<Runtime>) -> CubeTensor<Runtime> {
    if x.meta.shape()[0] > TRANSPOSED_FORM_ROWS {
        return contiguous(
            float(x)
                .matmul(float(w).transpose())
                .into_primitive()
                .tensor(),
        );
    }
    let x_t = contiguous(float(x).transpose().into_primitive().tensor());
    let out_t = float(w).matmul(float(x_t));
    contiguous(out_t.transpose().into_primitive().tensor())
}

/// `t` as a tensor of burn's CUDA backend, for burn's own operations on it.
fn float(t: CubeTensor<Runtime>) -> Tensor<CudaBackend, 2> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// Checks that `x: [m, k]` and `w: [n, k]` are operands the kernels here take: the same inner
/// size and element type, both contiguous; returns `(m, k, n)`.
fn operands(
    x: &CubeTensor<Runtime>,
    w: &CubeTensor<Runtime>,
) -> Result<(usize, usize, usize), String> {
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
    Ok((m, k, n))
}

/// Planes per cube of [`mma_kernel`] for an inner size `k`: as many as it splits into in whole
/// groups of unrolled tiles, up to [`MMA_MAX_SPLITS`], so that narrow projections still fill the
/// GPU.
fn mma_splits(k: usize) -> Option<usize> {
    (0..=MMA_MAX_SPLITS.ilog2())
        .rev()
        .map(|p| 1 << p)
        .find(|&s| k.is_multiple_of(s * MMA_K * MMA_UNROLL))
}

/// Planes of [`mma_kernel`] whose partial sums of `tiles` activation tiles fit in shared memory
/// at once (a power of two), at most `splits`.
fn mma_planes_per_round(splits: usize, tiles: usize) -> usize {
    let per_plane = tiles * MMA_M * MMA_N * size_of::<f32>();
    let fit = (MMA_SHARED_BYTES / per_plane).max(1);
    splits.min(1 << fit.ilog2())
}

/// Launches [`mma_kernel`] for `x: [m, k]` and `w: [n, k]`, half-precision operands only (the
/// tensor cores' types). Rows are padded with zeros to whole tiles of [`MMA_N`].
fn launch_mma(
    x: CubeTensor<Runtime>,
    w: CubeTensor<Runtime>,
) -> Result<CubeTensor<Runtime>, String> {
    let (m, k, n) = operands(&x, &w)?;
    if !matches!(x.dtype, DType::BF16 | DType::F16) {
        return Err(format!("no tensor-core tiles for {:?}", x.dtype));
    }
    if !(1..=SMALL_M).contains(&m) {
        return Err(format!("{m} rows are not 1 to {SMALL_M}"));
    }
    if !n.is_multiple_of(MMA_M) {
        return Err(format!("{n} outputs are not whole tiles of {MMA_M}"));
    }
    let tiles = m.div_ceil(MMA_N);
    let splits = mma_splits(k).ok_or_else(|| {
        format!(
            "an inner size of {k} is not whole groups of {}",
            MMA_K * MMA_UNROLL
        )
    })?;
    let padded = if m.is_multiple_of(MMA_N) {
        x
    } else {
        let zeros = Tensor::<CudaBackend, 2>::zeros([tiles * MMA_N - m, k], (&x.device, x.dtype));
        contiguous(
            Tensor::cat(vec![float(x), zeros], 0)
                .into_primitive()
                .tensor(),
        )
    };
    let out = empty_device_contiguous_dtype(
        padded.client.clone(),
        padded.device.clone(),
        [m, n].into(),
        padded.dtype,
    );
    let cubes = u32::try_from(n / MMA_M).map_err(|_| format!("{n} outputs are too many"))?;
    let client = padded.client.clone();
    let (x_arg, w_arg, out_arg) = (array_arg(&padded), array_arg(&w), array_arg(&out));
    // SAFETY: the kernel reads `x` below `tiles * MMA_N * k` (the padded rows), `w` below
    // `n * k` (whole tiles of MMA_M rows) and writes `out` below `m * n`.
    unsafe {
        with_float_type!(padded.dtype, T => kernels::mma_kernel::launch_unchecked::<T, Runtime>(
            &client,
            CubeCount::new_1d(cubes),
            CubeDim::new_2d(LANES as u32, splits as u32),
            x_arg, w_arg, out_arg, m, k, n, splits, mma_planes_per_round(splits, tiles),
        ), else return Err(format!("no `mma` kernel for {:?}", padded.dtype)));
    }
    Ok(out)
}

/// Launches [`rows_kernel`] for `x: [m, k]` and `w: [n, k]`, in the shape `kernels` set
/// (`cuda_rows_planes`, `cuda_rows_unroll`); with `gated`, `w` is a fused gate/up projection and
/// the output `[m, n / 2]` is `silu(gate) * up`.
fn launch_rows(
    x: CubeTensor<Runtime>,
    w: CubeTensor<Runtime>,
    gated: bool,
    kernels: &KernelOptions,
) -> LaunchResult {
    let (m, k, n) = operands(&x, &w)?;
    if gated && !n.is_multiple_of(2) {
        return Err(format!("{n} gate/up rows are not two halves"));
    }
    let outputs = if gated { n / 2 } else { n };
    let vector = vector_size(&x, &[k]);
    let out = empty_device_contiguous_dtype(
        x.client.clone(),
        x.device.clone(),
        [m, outputs].into(),
        x.dtype,
    );
    let chunks = m.div_ceil(m.min(ROWS_PER_CHUNK));
    let planes = kernels.cuda_rows_planes;
    let cubes = outputs.div_ceil(planes) * chunks;
    let cube_count = CubeCount::new_1d(
        u32::try_from(cubes).map_err(|_| format!("{cubes} cubes are too many for one launch"))?,
    );
    let cube_dim = CubeDim::new_2d(LANES as u32, planes as u32);
    let client = x.client.clone();
    let (x_arg, w_arg, out_arg) = (array_arg(&x), array_arg(&w), array_arg(&out));
    // SAFETY: every index the kernel forms is below `rows * k_vectors` for `x`, `n * k_vectors`
    // for `w` and `rows * outputs` for `out`, the sizes of the contiguous buffers passed.
    unsafe {
        with_float_type!(x.dtype, T => kernels::rows_kernel::launch_unchecked::<T, Runtime>(
            &client, cube_count, cube_dim, vector, x_arg, w_arg, out_arg, m, k / vector, outputs,
            planes, kernels.cuda_rows_unroll, gated,
        ), else return Err(format!("no `rows` kernel for {:?}", x.dtype)));
    }
    Ok(out)
}

/// The kernels, apart from burn's `Tensor` (cubecl has its own).
mod kernels {
    use cubecl::num_traits::Zero;
    use cubecl::prelude::*;

    use super::{MMA_K, MMA_M, MMA_N, MMA_UNROLL, ROWS_PER_CHUNK};
    use crate::cuda::LANES;
    use crate::cuda::swiglu::kernels::silu_times;

    /// `acc[r] += w · x[row r]` over vector `i` of a row, for the chunk's rows.
    #[cube]
    fn multiply_add<F: Float, N: Size>(
        x: &Array<Vector<F, N>>,
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

    /// [`multiply_add`] over vector `i` of the weight row starting at `weights`, and with `gated`
    /// of its up row starting at `up_weights` into `acc_up`.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn multiply_add_rows<F: Float, N: Size>(
        x: &Array<Vector<F, N>>,
        w: &Array<Vector<F, N>>,
        weights: usize,
        up_weights: usize,
        x_rows: &Array<usize>,
        acc: &mut Array<Vector<f32, N>>,
        acc_up: &mut Array<Vector<f32, N>>,
        i: usize,
        #[comptime] chunk: usize,
        #[comptime] gated: bool,
    ) {
        multiply_add::<F, N>(x, w[weights + i], x_rows, acc, i, chunk);
        if comptime!(gated) {
            multiply_add::<F, N>(x, w[up_weights + i], x_rows, acc_up, i, chunk);
        }
    }

    /// `out[r, j] = Σ_i x[r, i] · w[j, i]` for the `rows` activation rows of `x` (`[rows, k]`) and
    /// the `n` weight rows of `w` (`[n, k]`), both contiguous and read as vectors of `N` elements
    /// (`k_vectors` per row); accumulated in f32.
    ///
    /// With `gated`, `w` is a fused gate/up projection of `2 * n` rows, and `out[r, j]` is
    /// `silu(gate) * up` of its products with rows `j` and `n + j`, each rounded to the storage
    /// type first (as the separate projection and [`crate::cuda::swiglu`] round them).
    ///
    /// Cube `c` handles weight rows `(c / chunks) * planes + plane` for the activation rows of chunk
    /// `c % chunks` (each chunk at most [`ROWS_PER_CHUNK`] rows, accumulated in registers), so the
    /// cubes that read the same weight rows run next to each other.
    #[cube(launch_unchecked)]
    pub(super) fn rows_kernel<F: Float, N: Size>(
        x: &Array<Vector<F, N>>,
        w: &Array<Vector<F, N>>,
        out: &mut Array<F>,
        #[comptime] rows: usize,
        #[comptime] k_vectors: usize,
        #[comptime] n: usize,
        #[comptime] planes: usize,
        #[comptime] unroll: usize,
        #[comptime] gated: bool,
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
            let mut acc_up = Array::<Vector<f32, N>>::new(comptime!(if gated { chunk } else { 1 }));
            #[unroll]
            for r in 0..chunk {
                x_rows[r] = min(first + r, rows - 1) * k_vectors;
                acc[r] = Vector::zero();
                if comptime!(gated) {
                    acc_up[r] = Vector::zero();
                }
            }
            let weights = row * k_vectors;
            let up_weights = (row + n) * k_vectors;
            // Every lane takes the same number of full steps, `unroll` at a time so that their
            // loads are in flight together; a ragged tail is checked.
            let full_steps = comptime!(k_vectors / LANES);
            let groups = comptime!(full_steps / unroll);
            for group in 0..groups {
                #[unroll]
                for u in 0..unroll {
                    let i = (group * unroll + u) * LANES + lane;
                    multiply_add_rows::<F, N>(
                        x,
                        w,
                        weights,
                        up_weights,
                        &x_rows,
                        &mut acc,
                        &mut acc_up,
                        i,
                        chunk,
                        gated,
                    );
                }
            }
            #[unroll]
            for step in groups * unroll..full_steps {
                let i = step * LANES + lane;
                multiply_add_rows::<F, N>(
                    x,
                    w,
                    weights,
                    up_weights,
                    &x_rows,
                    &mut acc,
                    &mut acc_up,
                    i,
                    chunk,
                    gated,
                );
            }
            if comptime!(!k_vectors.is_multiple_of(LANES)) {
                let i = full_steps * LANES + lane;
                if i < k_vectors {
                    multiply_add_rows::<F, N>(
                        x,
                        w,
                        weights,
                        up_weights,
                        &x_rows,
                        &mut acc,
                        &mut acc_up,
                        i,
                        chunk,
                        gated,
                    );
                }
            }
            #[unroll]
            for r in 0..chunk {
                let total = F::cast_from(plane_sum(Vector::vector_sum(acc[r])));
                let value = if comptime!(gated) {
                    let up = F::cast_from(plane_sum(Vector::vector_sum(acc_up[r])));
                    let gated = silu_times::<F, Const<1>>(Vector::new(total), Vector::new(up));
                    gated[0]
                } else {
                    total
                };
                if lane == 0 && first + r < rows {
                    out[(first + r) * n + row] = value;
                }
            }
        }
    }

    /// An accumulator tile of [`mma_kernel`]: `MMA_M` weight rows by `MMA_N` activation rows.
    #[cube]
    fn accumulator() -> cmma::Matrix<f32> {
        cmma::Matrix::<f32>::from_value(
            cmma::MatrixIdent::Accumulator,
            MMA_M,
            MMA_N,
            MMA_K,
            cmma::MatrixLayout::Undefined,
            0.0,
        )
    }

    /// The weight tile of rows `first_row..first_row + MMA_M` and inner elements `at..at + MMA_K`.
    #[cube]
    fn weight_tile<F: Float>(
        w: &Array<F>,
        first_row: usize,
        at: usize,
        #[comptime] k: usize,
    ) -> cmma::Matrix<F> {
        let start = first_row * k + at;
        cmma::Matrix::<F>::from_slice(
            cmma::MatrixIdent::A,
            MMA_M,
            MMA_N,
            MMA_K,
            cmma::MatrixLayout::RowMajor,
            &w.slice(start, start + (MMA_M - 1) * k + MMA_K),
            comptime!(k as u32),
        )
    }

    /// `acc += a · x[tile rows, at..at + MMA_K]ᵀ`: activation row `r` of the tile is column `r`
    /// of the `k × n` operand, so the row-major activations are that operand in column-major.
    #[cube]
    fn multiply_tile<F: Float>(
        a: &cmma::Matrix<F>,
        x: &Array<F>,
        tile: usize,
        at: usize,
        acc: &cmma::Matrix<f32>,
        #[comptime] k: usize,
    ) {
        let start = tile * MMA_N * k + at;
        let b = cmma::Matrix::<F>::from_slice(
            cmma::MatrixIdent::B,
            MMA_M,
            MMA_N,
            MMA_K,
            cmma::MatrixLayout::ColMajor,
            &x.slice(start, start + (MMA_N - 1) * k + MMA_K),
            comptime!(k as u32),
        );
        cmma::execute::<F, F, f32, f32>(a, &b, acc, acc);
    }

    /// `acc_t += a · x_tileᵀ` for each of the `tiles` (1 to 4) activation tiles.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn multiply_tiles<F: Float>(
        a: &cmma::Matrix<F>,
        x: &Array<F>,
        at: usize,
        acc0: &cmma::Matrix<f32>,
        acc1: &cmma::Matrix<f32>,
        acc2: &cmma::Matrix<f32>,
        acc3: &cmma::Matrix<f32>,
        #[comptime] tiles: usize,
        #[comptime] k: usize,
    ) {
        multiply_tile::<F>(a, x, 0, at, acc0, k);
        if comptime!(tiles > 1) {
            multiply_tile::<F>(a, x, 1, at, acc1, k);
        }
        if comptime!(tiles > 2) {
            multiply_tile::<F>(a, x, 2, at, acc2, k);
        }
        if comptime!(tiles > 3) {
            multiply_tile::<F>(a, x, 3, at, acc3, k);
        }
    }

    /// Stores plane `plane`'s accumulator of activation tile `tile` in `partial`.
    #[cube]
    fn store_tile(
        partial: &mut SharedMemory<f32>,
        acc: &cmma::Matrix<f32>,
        plane: usize,
        tile: usize,
        #[comptime] tiles: usize,
    ) {
        let size = comptime!(MMA_M * MMA_N);
        let start = (plane * tiles + tile) * size;
        cmma::store(
            &mut partial.slice_mut(start, start + size),
            acc,
            comptime!(MMA_N as u32),
            cmma::MatrixLayout::RowMajor,
        );
    }

    /// `out[r, j] = Σ_i x[r, i] · w[j, i]` on the tensor cores, for the `rows` (at most 32)
    /// activation rows of `x` (`[tiles * MMA_N, k]`, rows past `rows` zero) and the `n` weight rows
    /// of `w` (`[n, k]`, `n` a multiple of `MMA_M`); accumulated in f32.
    ///
    /// Cube `c` computes weight rows `c * MMA_M..(c + 1) * MMA_M` for every activation row; its
    /// `splits` planes each take one contiguous share of the inner dimension, and add their
    /// partial sums through shared memory at the end, `per_round` planes at a time.
    #[cube(launch_unchecked)]
    pub(super) fn mma_kernel<F: Float>(
        x: &Array<F>,
        w: &Array<F>,
        out: &mut Array<F>,
        #[comptime] rows: usize,
        #[comptime] k: usize,
        #[comptime] n: usize,
        #[comptime] splits: usize,
        #[comptime] per_round: usize,
    ) {
        let tiles = comptime!(rows.div_ceil(MMA_N));
        let share = comptime!(k / splits);
        let groups = comptime!(share / (MMA_K * MMA_UNROLL));
        let plane = UNIT_POS_Y as usize;
        let first_row = CUBE_POS_X as usize * MMA_M;
        let begin = plane * share;

        let acc0 = accumulator();
        let acc1 = accumulator();
        let acc2 = accumulator();
        let acc3 = accumulator();
        for group in 0..groups {
            let at = begin + group * comptime!(MMA_K * MMA_UNROLL);
            // The weight tiles are the only operand read from memory: load them all first.
            let a0 = weight_tile::<F>(w, first_row, at, k);
            let a1 = weight_tile::<F>(w, first_row, at + MMA_K, k);
            let a2 = weight_tile::<F>(w, first_row, at + 2 * MMA_K, k);
            let a3 = weight_tile::<F>(w, first_row, at + 3 * MMA_K, k);
            multiply_tiles::<F>(&a0, x, at, &acc0, &acc1, &acc2, &acc3, tiles, k);
            multiply_tiles::<F>(&a1, x, at + MMA_K, &acc0, &acc1, &acc2, &acc3, tiles, k);
            multiply_tiles::<F>(&a2, x, at + 2 * MMA_K, &acc0, &acc1, &acc2, &acc3, tiles, k);
            multiply_tiles::<F>(&a3, x, at + 3 * MMA_K, &acc0, &acc1, &acc2, &acc3, tiles, k);
        }

        // The planes add their partial sums through shared memory, `per_round` planes at a time
        // (as many as it holds); each thread keeps the totals of some outputs in registers.
        let tile_size = comptime!(MMA_M * MMA_N);
        let rounds = comptime!(splits / per_round);
        let threads = comptime!(LANES * splits);
        let outputs = comptime!(tiles * tile_size);
        let per_thread = comptime!(outputs.div_ceil(threads));
        let tid = UNIT_POS as usize;
        // `wmma` stores need 32-byte aligned addresses.
        let mut partial =
            SharedMemory::<f32>::new_aligned(comptime!(per_round * tiles * tile_size), 32usize);
        let mut totals = Array::<f32>::new(per_thread);
        #[unroll]
        for i in 0..per_thread {
            totals[i] = 0.0;
        }
        #[unroll]
        for round in 0..rounds {
            if comptime!(round > 0) {
                // The last round's sums are read before they are overwritten.
                sync_cube();
            }
            let first_plane = round * per_round;
            if plane >= first_plane && plane < first_plane + per_round {
                let slot = plane - first_plane;
                store_tile(&mut partial, &acc0, slot, 0, tiles);
                if comptime!(tiles > 1) {
                    store_tile(&mut partial, &acc1, slot, 1, tiles);
                }
                if comptime!(tiles > 2) {
                    store_tile(&mut partial, &acc2, slot, 2, tiles);
                }
                if comptime!(tiles > 3) {
                    store_tile(&mut partial, &acc3, slot, 3, tiles);
                }
            }
            sync_cube();
            // Output `index` is `(tile, weight row, tile row)`.
            #[unroll]
            for i in 0..per_thread {
                let index = i * threads + tid;
                if index < outputs {
                    let tile = index / tile_size;
                    let within = index % tile_size;
                    #[unroll]
                    for s in 0..per_round {
                        totals[i] += partial[(s * tiles + tile) * tile_size + within];
                    }
                }
            }
        }
        #[unroll]
        for i in 0..per_thread {
            let index = i * threads + tid;
            if index < outputs {
                let tile = index / tile_size;
                let within = index % tile_size;
                let row = tile * MMA_N + within % MMA_N;
                if row < rows {
                    out[row * n + first_row + within / MMA_N] = F::cast_from(totals[i]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inner_size_splits_into_whole_groups_of_unrolled_tiles() {
        // Mistral-7B's inner sizes, the test models', and one no split takes.
        assert_eq!(mma_splits(4096), Some(16));
        assert_eq!(mma_splits(14336), Some(16));
        assert_eq!(mma_splits(256), Some(4));
        assert_eq!(mma_splits(128), Some(2));
        assert_eq!(mma_splits(64), Some(1));
        assert_eq!(mma_splits(160), None);
    }

    #[test]
    fn each_round_of_partial_sums_fits_in_shared_memory() {
        for tiles in 1..=SMALL_M / MMA_N {
            for splits in [1, 2, 4, 8, 16] {
                let per_round = mma_planes_per_round(splits, tiles);
                let bytes = per_round * tiles * MMA_M * MMA_N * size_of::<f32>();
                assert!(
                    bytes <= MMA_SHARED_BYTES,
                    "{splits} planes, {tiles} tiles: {bytes} B"
                );
                // The rounds take every plane exactly once.
                assert!(
                    splits.is_multiple_of(per_round),
                    "{splits} planes by {per_round}"
                );
            }
        }
        assert_eq!(mma_planes_per_round(16, 4), 8);
        assert_eq!(mma_planes_per_round(16, 2), 16);
    }
}
