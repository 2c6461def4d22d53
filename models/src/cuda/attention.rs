//! Attention of a decode step's queries over the KV cache, in one kernel.
//!
//! Burn's operations took about a dozen launches per layer for this (the scores' matmul, cast,
//! scale, mask, the softmax's four, the cast back, the second matmul and the copy into the
//! output projection's layout), and the mask was built on the host each step. Here one cube
//! handles one query row: its threads score the keys (one key each, the query in shared
//! memory), the visibility of each key is computed from the row's padding, the query's slot and
//! the sliding window (the rule of `Llama::window_mask`), the softmax runs in shared
//! memory, and each thread sums the values of one dimension. The result is written in the
//! `[batch * len, heads * head_dim]` layout that the output projection reads.
//!
//! Rounding follows burn's operations: the scores are rounded to the storage type (the matmul's
//! output) before the f32 scale and softmax, and the probabilities before the second product.

use burn::tensor::{DType, Int, Tensor, backend::Backend};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use cubecl::prelude::{CubeCount, CubeDim};

use super::{
    Runtime, as_cuda, as_cuda_int, contiguous, contiguous_arg, from_cuda, fused_enabled,
    vector_size,
};

/// Planes per cube; each thread scores one key at a time and sums one output dimension.
const PLANES: usize = 4;

/// The most keys one cube scores (its shared memory holds one f32 per key). Longer spans go to
/// burn's operations.
pub const MAX_KEYS: usize = 8192;

/// Whether this kernel is asked for (`DRPO_CUDA_ATTENTION=1`), read once. Off by default: its
/// first two GPU runs (runs 8 and 9 in `docs/gpu-check-results.md`) failed to expand it and the
/// fixed version has not run on a GPU yet, so burn's operations stay the default until
/// `scripts/gpu-check.sh` has checked it.
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("DRPO_CUDA_ATTENTION").is_ok_and(|v| v == "1"))
}

/// The attention output `[batch * len, heads * head_dim]` of the queries `q: [batch, kv_heads,
/// group * len, head_dim]` (as `rope::rope_into_cache` lays them out) over the cache slots
/// `first..first + keys` of `k_cache`, `v_cache` (`[batch, kv_heads, slots, head_dim]`); the
/// queries sit at slots `start..start + len`, row `b` starts at slot `pads[b]`, and a key
/// `sliding_window` or more slots behind its query is hidden. `None` when the tensors are not
/// CUDA tensors of those layouts or the span is longer than [`MAX_KEYS`].
#[allow(clippy::too_many_arguments)]
pub fn attention<B: Backend>(
    q: &Tensor<B, 4>,
    k_cache: &Tensor<B, 4>,
    v_cache: &Tensor<B, 4>,
    pads: &Tensor<B, 1, Int>,
    len: usize,
    first: usize,
    keys: usize,
    start: usize,
    sliding_window: Option<usize>,
) -> Option<Tensor<B, 2>> {
    if !fused_enabled() || !enabled() || keys == 0 || keys > MAX_KEYS || len == 0 {
        return None;
    }
    let [batch, kv_heads, rows, head_dim] = q.dims();
    let [cache_batch, cache_heads, slots, cache_dim] = k_cache.dims();
    if [cache_batch, cache_heads, cache_dim] != [batch, kv_heads, head_dim]
        || v_cache.dims() != k_cache.dims()
        || pads.dims() != [batch]
        || !rows.is_multiple_of(len)
        || first + keys > slots
        || start + len > slots
    {
        return None;
    }
    let group = rows / len;
    let qc = contiguous(as_cuda(q)?);
    let (kc, vc) = (as_cuda(k_cache)?, as_cuda(v_cache)?);
    let pc = contiguous(as_cuda_int(pads)?);
    if !kc.is_contiguous() || !vc.is_contiguous() {
        return None;
    }
    let dtype = qc.dtype;
    if kc.dtype != dtype || vc.dtype != dtype || pc.dtype != DType::I32 {
        return None;
    }
    let heads = kv_heads * group;
    let out = empty_device_contiguous_dtype(
        qc.client.clone(),
        qc.device.clone(),
        [batch * len, heads * head_dim].into(),
        dtype,
    );
    let vector = vector_size(&kc, &[head_dim]);
    let cubes = u32::try_from(batch * kv_heads * rows).ok()?;
    let client = qc.client.clone();
    let scale = 1.0 / (head_dim as f32).sqrt();
    // SAFETY: cube `c` reads query row `c`, the cache rows of slots `first..first + keys` (below
    // `slots`) of its batch row and key/value head, `pads[b]`, and writes its head's `head_dim`
    // outputs of its token; the shared scores hold `keys <= MAX_KEYS` values.
    unsafe {
        with_float_type!(dtype, T => kernels::attention_kernel::launch_unchecked::<T, Runtime>(
            &client,
            CubeCount::new_1d(cubes),
            CubeDim::new_2d(super::LANES as u32, PLANES as u32),
            vector,
            contiguous_arg(&qc),
            contiguous_arg(&kc),
            contiguous_arg(&vc),
            contiguous_arg(&pc),
            contiguous_arg(&out),
            first,
            keys,
            start,
            slots,
            scale,
            kv_heads,
            group,
            len,
            head_dim,
            sliding_window.unwrap_or(0),
        ), else return None);
    }
    Some(from_cuda(out))
}

mod kernels {
    use cubecl::prelude::*;

    use super::{MAX_KEYS, PLANES};
    use crate::cuda::LANES;

    /// What a hidden key scores (as `llama.rs`'s additive mask: its probability is exactly 0).
    const HIDDEN: f32 = -1.0e9;

    /// Cube `c` is query row `c` of `q` (`[batch, kv_heads, group * len, head_dim]`): batch row
    /// `b`, key/value head `g`, query head `g * group + r`, token `t` of the step.
    #[cube(launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_kernel<F: Float, N: Size>(
        q: &Tensor<F>,
        k_cache: &Tensor<Vector<F, N>>,
        v_cache: &Tensor<F>,
        pads: &Tensor<i32>,
        out: &mut Tensor<F>,
        first: usize,
        keys: usize,
        start: usize,
        slots: usize,
        scale: f32,
        #[comptime] kv_heads: usize,
        #[comptime] group: usize,
        #[comptime] len: usize,
        #[comptime] head_dim: usize,
        #[comptime] window: usize,
    ) {
        let threads = comptime!(LANES * PLANES);
        let vectors = head_dim / N::value();
        let tid = UNIT_POS as usize;
        let lane = UNIT_POS_X as usize;
        let plane = UNIT_POS_Y as usize;
        let cube = CUBE_POS_X as usize;
        let row = cube % comptime!(group * len);
        let head_of_batch = cube / comptime!(group * len);
        let b = head_of_batch / kv_heads;
        let r = row / len;
        let t = row % len;
        let query_slot = start + t;
        let pad = usize::cast_from(pads[b]);
        let cache_row = head_of_batch * slots;

        let mut query = SharedMemory::<f32>::new(head_dim);
        let mut scores = SharedMemory::<f32>::new(MAX_KEYS);
        let mut partial = SharedMemory::<f32>::new(PLANES);
        let mut d = tid;
        while d < head_dim {
            query[d] = f32::cast_from(q[cube * head_dim + d]);
            d += threads;
        }
        sync_cube();

        // Scores: one key per thread.
        let mut j = tid;
        let mut local_max = f32::new(HIDDEN);
        while j < keys {
            let slot = first + j;
            let at = (cache_row + slot) * vectors;
            let mut dot = 0.0f32;
            // A runtime loop: `vectors` depends on the vector size, which cubecl does not fold
            // into a constant here (an unrolled loop over it failed to expand: run 9).
            for e in 0..vectors {
                let key = Vector::<f32, N>::cast_from(k_cache[at + e]);
                #[unroll]
                for c in 0..N::value() {
                    dot += key[c] * query[e * N::value() + c];
                }
            }
            let behind = query_slot - min(slot, query_slot);
            let in_window = comptime!(window == 0) || behind < window;
            let visible = slot == query_slot || (slot <= query_slot && slot >= pad && in_window);
            let score = select(
                visible,
                f32::cast_from(F::cast_from(dot)) * scale,
                f32::new(HIDDEN),
            );
            scores[j] = score;
            local_max = max(local_max, score);
            j += threads;
        }
        let plane_top = plane_max(local_max);
        if lane == 0 {
            partial[plane] = plane_top;
        }
        sync_cube();
        let mut top = partial[0];
        #[unroll]
        for p in 1..PLANES {
            top = max(top, partial[p]);
        }
        sync_cube();

        // Softmax in f32, the probabilities rounded to the storage type.
        let mut j = tid;
        let mut local_sum = 0.0f32;
        while j < keys {
            let e = f32::exp(scores[j] - top);
            scores[j] = e;
            local_sum += e;
            j += threads;
        }
        let plane_total = plane_sum(local_sum);
        if lane == 0 {
            partial[plane] = plane_total;
        }
        sync_cube();
        let mut total = 0.0f32;
        #[unroll]
        for p in 0..PLANES {
            total += partial[p];
        }
        let mut j = tid;
        while j < keys {
            scores[j] = f32::cast_from(F::cast_from(scores[j] / total));
            j += threads;
        }
        sync_cube();

        // Values: one output dimension per thread.
        let head = (head_of_batch % kv_heads) * group + r;
        let token = b * len + t;
        let heads = comptime!(kv_heads * group);
        let mut d = tid;
        while d < head_dim {
            let mut sum = 0.0f32;
            for j in 0..keys {
                sum += scores[j] * f32::cast_from(v_cache[(cache_row + first + j) * head_dim + d]);
            }
            out[(token * heads + head) * head_dim + d] = F::cast_from(sum);
            d += threads;
        }
    }
}
