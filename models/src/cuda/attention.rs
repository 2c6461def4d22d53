//! Attention of a decode step's queries over the KV cache, in one kernel.
//!
//! Burn's operations took about a dozen launches per layer for this (the scores' matmul, cast,
//! scale, mask, the softmax's four, the cast back, the second matmul and the copy into the
//! output projection's layout), and the mask was built on the host each step. Here one cube
//! handles one query row: its threads score the keys (one key each, the query in shared
//! memory), the visibility of each key is computed from the row's padding, the query's slot and
//! the sliding window (the rule of `Llama::window_mask`), the softmax runs in shared
//! memory, and the planes sum the values, each over its share of the keys with whole cache rows
//! read by neighbouring lanes, adding their shares in shared memory. The result is written in the
//! `[batch * len, heads * head_dim]` layout that the output projection reads.
//!
//! Rounding follows burn's operations: the scores are rounded to the storage type (the matmul's
//! output) before the f32 scale and softmax, and the probabilities before the second product.
//!
//! For a decode step the kernel also does RoPE's work ([`rope_attention`]): it rotates its query
//! and its head's new key from the fused projection and writes the new key and value into the
//! caches, one launch fewer per layer.

use burn::tensor::{DType, Int, Tensor, backend::Backend};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::{CubeCount, CubeDim};

use super::{Runtime, array_arg, as_cuda, as_cuda_int, contiguous, from_cuda, vector_size};
use crate::kernel_options::KernelOptions;

/// Planes per cube; each thread scores one key at a time. A decode step at batch 1 has only one
/// cube per query head (32 for Mistral-7B), so each cube is made wide.
const PLANES: usize = 8;

/// Steps of the value sums whose loads are issued together.
const VALUE_UNROLL: usize = 4;

/// The most keys one cube scores (its shared memory holds one f32 per key). Longer spans go to
/// burn's operations.
pub const MAX_KEYS: usize = 8192;

/// The attention output `[batch * len, heads * head_dim]` of the queries `q: [batch, kv_heads,
/// group * len, head_dim]` (as `rope::rope_into_cache` lays them out) over the cache slots
/// `first..first + keys` of `k_cache`, `v_cache` (`[batch, kv_heads, slots, head_dim]`); the
/// queries sit at slots `start..start + len`, row `b` starts at slot `pads[b]`, and a key
/// `sliding_window` or more slots behind its query is hidden. `None` when the tensors are not
/// CUDA tensors of those layouts, the span is longer than [`MAX_KEYS`], or `kernels` turn the
/// kernel off (`cuda_fused` or `cuda_attention`).
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
    kernels: &KernelOptions,
) -> Option<Tensor<B, 2>> {
    let [batch, kv_heads, rows, head_dim] = q.dims();
    if !rows.is_multiple_of(len.max(1)) {
        return None;
    }
    let span = Span {
        batch,
        len,
        heads: kv_heads * (rows / len.max(1)),
        kv_heads,
        head_dim,
        first,
        keys,
        start,
        sliding_window,
    };
    launch(&span, as_cuda(q)?, None, k_cache, v_cache, pads, kernels)
}

/// [`attention`] for a decode step (`len` 1) straight from the fused projection `qkv: [batch,
/// (heads + 2 * kv_heads) * head_dim]`: the kernel applies RoPE (`cos`, `sin`: `[batch, 1, 1,
/// head_dim]`) to the query and the new key itself and writes the new key and value into the
/// caches, the work of `rope::rope_into_cache`, so the step saves that launch; `None` with
/// `kernels.cuda_rope_attention` off (RoPE in its own launch), for prefill, and where
/// [`attention`] would give `None`.
#[allow(clippy::too_many_arguments)]
pub fn rope_attention<B: Backend>(
    qkv: &Tensor<B, 2>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
    k_cache: &Tensor<B, 4>,
    v_cache: &Tensor<B, 4>,
    pads: &Tensor<B, 1, Int>,
    heads: usize,
    kv_heads: usize,
    first: usize,
    keys: usize,
    start: usize,
    sliding_window: Option<usize>,
    kernels: &KernelOptions,
) -> Option<Tensor<B, 2>> {
    let [batch, len, _, head_dim] = cos.dims();
    if !kernels.cuda_rope_attention
        || len != 1
        || qkv.dims() != [batch, (heads + 2 * kv_heads) * head_dim]
        || sin.dims() != cos.dims()
        || !head_dim.is_multiple_of(2)
    {
        return None;
    }
    let span = Span {
        batch,
        len,
        heads,
        kv_heads,
        head_dim,
        first,
        keys,
        start,
        sliding_window,
    };
    let rope = (as_cuda(cos)?, as_cuda(sin)?);
    launch(
        &span,
        as_cuda(qkv)?,
        Some(rope),
        k_cache,
        v_cache,
        pads,
        kernels,
    )
}

/// The shapes of one attention launch.
struct Span {
    batch: usize,
    len: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    first: usize,
    keys: usize,
    start: usize,
    sliding_window: Option<usize>,
}

/// Checks the caches and padding against `span` and launches the kernel on `queries`: rotated
/// already (`[batch, kv_heads, group * len, head_dim]`) without `rope`, else the fused
/// projection's output with the RoPE tables `(cos, sin)` of the step's slot.
fn launch<B: Backend>(
    span: &Span,
    queries: CubeTensor<Runtime>,
    rope: Option<(CubeTensor<Runtime>, CubeTensor<Runtime>)>,
    k_cache: &Tensor<B, 4>,
    v_cache: &Tensor<B, 4>,
    pads: &Tensor<B, 1, Int>,
    kernels: &KernelOptions,
) -> Option<Tensor<B, 2>> {
    let &Span {
        batch,
        len,
        heads,
        kv_heads,
        head_dim,
        first,
        keys,
        start,
        sliding_window,
    } = span;
    if !kernels.cuda_fused || !kernels.cuda_attention || keys == 0 || keys > MAX_KEYS || len == 0 {
        return None;
    }
    let [cache_batch, cache_heads, slots, cache_dim] = k_cache.dims();
    if [cache_batch, cache_heads, cache_dim] != [batch, kv_heads, head_dim]
        || v_cache.dims() != k_cache.dims()
        || pads.dims() != [batch]
        || kv_heads == 0
        || !heads.is_multiple_of(kv_heads)
        || first + keys > slots
        || start + len > slots
    {
        return None;
    }
    let group = heads / kv_heads;
    let (kc, vc) = (as_cuda(k_cache)?, as_cuda(v_cache)?);
    let pc = contiguous(as_cuda_int(pads)?);
    if !kc.is_contiguous() || !vc.is_contiguous() {
        return None;
    }
    let qc = contiguous(queries);
    let rotate = rope.is_some();
    // Without `rope`, the kernel reads no tables: the queries stand in for them.
    let (cos, sin) = match rope {
        Some((cos, sin)) => (contiguous(cos), contiguous(sin)),
        None => (qc.clone(), qc.clone()),
    };
    let dtype = qc.dtype;
    if [&kc, &vc, &cos, &sin].iter().any(|t| t.dtype != dtype) || pc.dtype != DType::I32 {
        return None;
    }
    let out = empty_device_contiguous_dtype(
        qc.client.clone(),
        qc.device.clone(),
        [batch * len, heads * head_dim].into(),
        dtype,
    );
    let vector = vector_size(&kc, &[head_dim]);
    // The value sums give each key's row to `row_vectors` neighbouring lanes.
    let row_vectors = head_dim / vector;
    if !super::LANES.is_multiple_of(row_vectors) {
        return None;
    }
    let cubes = u32::try_from(batch * heads * len).ok()?;
    let client = qc.client.clone();
    let scale = 1.0 / (head_dim as f32).sqrt();
    // SAFETY: cube `c` reads its query row (of `q`, or of `qkv` with its token's RoPE tables),
    // the cache rows of slots `first..first + keys` (below `slots`) of its batch row and
    // key/value head, `pads[b]`, writes its head's `head_dim` outputs of its token, and with
    // `rotate` the new key and value at slot `start` (below `slots`); the shared scores hold
    // `keys <= MAX_KEYS` values.
    unsafe {
        with_float_type!(dtype, T => kernels::attention_kernel::launch_unchecked::<T, Runtime>(
            &client,
            CubeCount::new_1d(cubes),
            CubeDim::new_2d(super::LANES as u32, PLANES as u32),
            vector,
            array_arg(&qc),
            array_arg(&cos),
            array_arg(&sin),
            array_arg(&kc),
            array_arg(&vc),
            array_arg(&kc),
            array_arg(&vc),
            array_arg(&pc),
            array_arg(&out),
            first,
            keys,
            start,
            slots,
            scale,
            kv_heads,
            group,
            len,
            head_dim,
            row_vectors,
            sliding_window.unwrap_or(0),
            rotate,
        ), else return None);
    }
    Some(from_cuda(out))
}

mod kernels {
    use cubecl::prelude::*;

    use super::{MAX_KEYS, PLANES, VALUE_UNROLL};
    use crate::cuda::LANES;
    use crate::cuda::rope::kernels::rotated;

    /// What a hidden key scores (as `llama.rs`'s additive mask: its probability is exactly 0).
    const HIDDEN: f32 = -1.0e9;

    /// Cube `c` is query row `c` of `q` (`[batch, kv_heads, group * len, head_dim]`): batch row
    /// `b`, key/value head `g`, query head `g * group + r`, token `t` of the step.
    ///
    /// With `rotate` (a decode step, `len` 1), `q` is the fused projection `[batch, (heads + 2 *
    /// kv_heads) * head_dim]` and `cos`, `sin` the RoPE tables of each row's slot: the cube
    /// rotates its query and its head's new key itself, reads the new key and value from shared
    /// memory rather than the cache, and the cube of `r == 0` writes them into the caches through
    /// `k_store` and `v_store`, the caches' buffers again. The caches are read through separate
    /// read-only arguments, so that the reads keep the read-only loads the compiler gives them;
    /// no cube reads the slot it writes. Without `rotate`, nothing is written there.
    #[cube(launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_kernel<F: Float, N: Size>(
        q: &Array<F>,
        cos: &Array<F>,
        sin: &Array<F>,
        k_cache: &Array<Vector<F, N>>,
        v_cache: &Array<Vector<F, N>>,
        k_store: &mut Array<Vector<F, N>>,
        v_store: &mut Array<Vector<F, N>>,
        pads: &Array<i32>,
        out: &mut Array<F>,
        first: usize,
        keys: usize,
        start: usize,
        slots: usize,
        scale: f32,
        #[comptime] kv_heads: usize,
        #[comptime] group: usize,
        #[comptime] len: usize,
        #[comptime] head_dim: usize,
        #[comptime] row_vectors: usize,
        #[comptime] window: usize,
        #[comptime] rotate: bool,
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
        // With `rotate`: the new key and value of the cube's key/value head.
        let fresh = comptime!(if rotate { head_dim } else { 1 });
        let mut new_key = SharedMemory::<f32>::new(fresh);
        let mut new_value = SharedMemory::<f32>::new(fresh);
        if comptime!(rotate) {
            let half = comptime!(head_dim / 2);
            let all = comptime!(kv_heads * group + 2 * kv_heads);
            let g = head_of_batch % kv_heads;
            let query_at = (b * all + g * group + r) * head_dim;
            let key_at = (b * all + kv_heads * group + g) * head_dim;
            let value_at = key_at + kv_heads * head_dim;
            let table = b * head_dim;
            let mut j = tid;
            while j < half {
                let c1 = cos[table + j];
                let s1 = sin[table + j];
                let c2 = cos[table + j + half];
                let s2 = sin[table + j + half];
                let x1 = q[query_at + j];
                let x2 = q[query_at + j + half];
                query[j] = f32::cast_from(rotated::<F>(x1, x2, c1, s1, false));
                query[j + half] = f32::cast_from(rotated::<F>(x2, x1, c2, s2, true));
                let k1 = q[key_at + j];
                let k2 = q[key_at + j + half];
                new_key[j] = f32::cast_from(rotated::<F>(k1, k2, c1, s1, false));
                new_key[j + half] = f32::cast_from(rotated::<F>(k2, k1, c2, s2, true));
                new_value[j] = f32::cast_from(q[value_at + j]);
                new_value[j + half] = f32::cast_from(q[value_at + j + half]);
                j += threads;
            }
        } else {
            let mut d = tid;
            while d < head_dim {
                query[d] = f32::cast_from(q[cube * head_dim + d]);
                d += threads;
            }
        }
        sync_cube();
        if comptime!(rotate) {
            // One cube per key/value head stores the new key and value for the later steps; the
            // others of its group never read that slot (they use their shared copies).
            if r == 0 {
                let at = (cache_row + query_slot) * vectors;
                let mut e = tid;
                while e < vectors {
                    let mut key = Vector::<F, N>::empty();
                    let mut value = Vector::<F, N>::empty();
                    #[unroll]
                    for c in 0..N::value() {
                        key[c] = F::cast_from(new_key[e * N::value() + c]);
                        value[c] = F::cast_from(new_value[e * N::value() + c]);
                    }
                    k_store[at + e] = key;
                    v_store[at + e] = value;
                    e += threads;
                }
            }
        }

        // Scores: one key per thread.
        let mut j = tid;
        let mut local_max = f32::new(HIDDEN);
        while j < keys {
            let slot = first + j;
            let at = (cache_row + slot) * vectors;
            let mut dot = 0.0f32;
            if comptime!(rotate) && slot == query_slot {
                // The new key, summed in the same order as a cached one.
                for d in 0..head_dim {
                    dot += new_key[d] * query[d];
                }
            } else {
                // A runtime loop: `vectors` depends on the vector size, which cubecl does not
                // fold into a constant here (an unrolled loop over it fails to expand).
                for e in 0..vectors {
                    let key = Vector::<f32, N>::cast_from(k_cache[at + e]);
                    #[unroll]
                    for c in 0..N::value() {
                        dot += key[c] * query[e * N::value() + c];
                    }
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

        // Values: lane `l` of a plane reads vector `l % row_vectors` of the plane's key
        // `l / row_vectors` in each step, so neighbouring lanes read whole cache rows; the planes
        // take turns over the keys, and their sums meet in shared memory.
        let keys_per_plane = comptime!(LANES / row_vectors);
        let keys_per_step = comptime!(PLANES * keys_per_plane);
        let slot_of_lane = plane * keys_per_plane + lane / row_vectors;
        let e = lane % row_vectors;
        let mut acc = Vector::<f32, N>::new(0.0);
        let steps = keys.div_ceil(comptime!(keys_per_step * VALUE_UNROLL));
        for step in 0..steps {
            let base = step * comptime!(keys_per_step * VALUE_UNROLL) + slot_of_lane;
            #[unroll]
            for u in 0..VALUE_UNROLL {
                let j = base + u * keys_per_step;
                if j < keys {
                    let slot = first + j;
                    let mut value = Vector::<f32, N>::new(0.0);
                    if comptime!(rotate) && slot == query_slot {
                        #[unroll]
                        for c in 0..N::value() {
                            value[c] = new_value[e * N::value() + c];
                        }
                    } else {
                        value =
                            Vector::<f32, N>::cast_from(v_cache[(cache_row + slot) * vectors + e]);
                    }
                    acc += value * Vector::<f32, N>::new(scores[j]);
                }
            }
        }
        let mut sums = SharedMemory::<f32>::new(comptime!(keys_per_step * head_dim));
        #[unroll]
        for c in 0..N::value() {
            sums[slot_of_lane * head_dim + e * N::value() + c] = acc[c];
        }
        sync_cube();

        let head = (head_of_batch % kv_heads) * group + r;
        let token = b * len + t;
        let heads = comptime!(kv_heads * group);
        let mut d = tid;
        while d < head_dim {
            let mut sum = 0.0f32;
            #[unroll]
            for slot in 0..keys_per_step {
                sum += sums[slot * head_dim + d];
            }
            out[(token * heads + head) * head_dim + d] = F::cast_from(sum);
            d += threads;
        }
    }
}
