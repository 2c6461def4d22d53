//! The decoder's fused operations on the CPU backend (burn's `flex`, f32), as plain loops over
//! the tensors' host memory.
//!
//! Each of these took burn several operations, each with its own allocation, strided copy and
//! dispatch, for tensors of a few thousand values in a decode step; together they were about
//! half of a step's serial time. Burn's `slice_assign` also copies the whole destination on
//! this backend (it clones the tensor's buffer handle before asking for unique access), which
//! made every KV-cache write a copy of the cache; [`rope_into_cache`] writes in place.
//!
//! As in [`crate::cuda`], each entry point takes the generic backend's tensors and returns
//! `None` when they are not CPU tensors (or the problem is not one it takes, or
//! `KernelOptions::cpu_fused` is off, for measuring these against burn's), so `llama.rs`
//! keeps one code path with burn's operations for every backend. The arithmetic is burn's, in
//! f32; only the order of a few sums differs (within f32 rounding of the reference).

use std::any::Any;

use burn::backend::flex::FlexTensor;
use burn::tensor::{Tensor, TensorPrimitive, backend::Backend};

use crate::device::{CpuBackend, upload};
use crate::kernel_options::KernelOptions;

/// The CPU tensor behind `t`, if `B` is the CPU backend and `t` holds f32 values.
fn as_cpu<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Option<FlexTensor> {
    let t = (t as &dyn Any).downcast_ref::<Tensor<CpuBackend, D>>()?;
    let t = t.clone().into_primitive().tensor();
    (t.dtype() == burn::tensor::DType::F32).then_some(t)
}

/// The values of a CPU tensor in row-major order (borrowed when they already are).
fn values(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(values) => values.into(),
        None => t
            .to_contiguous()
            .into_data()
            .into_vec::<f32>()
            .expect("`as_cpu` admits f32 tensors only")
            .into(),
    }
}

/// `(x + branch, rms_norm(x + branch) * weight)` over the last axis (without `branch`, of `x`).
pub fn add_rms_norm<B: Backend>(
    x: &Tensor<B, 3>,
    branch: Option<&Tensor<B, 3>>,
    weight: &Tensor<B, 1>,
    eps: f64,
    kernels: &KernelOptions,
) -> Option<(Tensor<B, 3>, Tensor<B, 3>)> {
    if !kernels.cpu_fused {
        return None;
    }
    let shape = x.dims();
    let d = shape[2];
    if weight.dims() != [d] || branch.is_some_and(|b| b.dims() != shape) || d == 0 {
        return None;
    }
    let device = x.device();
    let (x, weight) = (as_cpu(x)?, as_cpu(weight)?);
    let mut sum = values(&x).into_owned();
    if let Some(branch) = branch {
        let branch = as_cpu(branch)?;
        for (s, b) in sum.iter_mut().zip(values(&branch).iter()) {
            *s += b;
        }
    }
    let weight = values(&weight);
    let mut normed = vec![0f32; sum.len()];
    for (row, out) in sum.chunks_exact(d).zip(normed.chunks_exact_mut(d)) {
        let mean_square = dot(row, row) / d as f32;
        let inv_rms = 1.0 / (mean_square + eps as f32).sqrt();
        for ((o, v), w) in out.iter_mut().zip(row).zip(weight.iter()) {
            *o = v * inv_rms * w;
        }
    }
    Some((upload(sum, shape, &device), upload(normed, shape, &device)))
}

/// `silu(gate) * up` from the fused projection `[rows, 2 * inner]` (gate first).
pub fn swiglu<B: Backend>(gate_up: &Tensor<B, 2>, kernels: &KernelOptions) -> Option<Tensor<B, 2>> {
    if !kernels.cpu_fused {
        return None;
    }
    let [rows, both] = gate_up.dims();
    let inner = both / 2;
    let device = gate_up.device();
    let gate_up = as_cpu(gate_up)?;
    let gate_up = values(&gate_up);
    let mut out = Vec::with_capacity(rows * inner);
    for row in gate_up.chunks_exact(both) {
        let (gate, up) = row.split_at(inner);
        out.extend(gate.iter().zip(up).map(|(g, u)| g / (1.0 + (-g).exp()) * u));
    }
    Some(upload(out, [rows, inner], &device))
}

/// The rotated queries `[batch, kv_heads, group * len, head_dim]` (query head `g * group + r`
/// at rows `r * len ..` of group `g`, as `llama.rs` folds them), after writing the rotated keys
/// and the values of `qkv` (`[batch * len, (heads + 2 * kv_heads) * head_dim]`) into `k_cache`
/// and `v_cache` (`[batch, kv_heads, slots, head_dim]`) at slots `start..start + len`, in
/// place; `cos`, `sin`: `[batch, len, 1, head_dim]`. `None` (nothing written) when the tensors
/// are not CPU tensors of those shapes.
#[allow(clippy::too_many_arguments)]
pub fn rope_into_cache<B: Backend>(
    qkv: &Tensor<B, 2>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
    k_cache: &mut Tensor<B, 4>,
    v_cache: &mut Tensor<B, 4>,
    heads: usize,
    kv_heads: usize,
    start: usize,
    kernels: &KernelOptions,
) -> Option<Tensor<B, 4>> {
    if !kernels.cpu_fused {
        return None;
    }
    let [batch, len, _, hd] = cos.dims();
    let [cache_batch, cache_heads, slots, cache_dim] = k_cache.dims();
    let all = heads + 2 * kv_heads;
    if qkv.dims() != [batch * len, all * hd]
        || [cache_batch, cache_heads, cache_dim] != [batch, kv_heads, hd]
        || v_cache.dims() != k_cache.dims()
        || start + len > slots
        || !hd.is_multiple_of(2)
        || kv_heads == 0
        || !heads.is_multiple_of(kv_heads)
    {
        return None;
    }
    let device = qkv.device();
    let (qkv, cos, sin) = (as_cpu(qkv)?, as_cpu(cos)?, as_cpu(sin)?);
    let (qkv, cos, sin) = (values(&qkv), values(&cos), values(&sin));
    let group = heads / kv_heads;
    let half = hd / 2;
    // `x * cos + rotate_half(x) * sin`, as `llama::rope` computes it.
    let rotate = |x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]| {
        for i in 0..hd {
            let rotated = if i < half { -x[i + half] } else { x[i - half] };
            out[i] = x[i] * cos[i] + rotated * sin[i];
        }
    };
    let mut q = vec![0f32; batch * heads * len * hd];
    let written = with_unique_values(k_cache, |k_cache| {
        with_unique_values(v_cache, |v_cache| {
            for b in 0..batch {
                for t in 0..len {
                    let row = &qkv[(b * len + t) * all * hd..][..all * hd];
                    let table = (b * len + t) * hd..(b * len + t + 1) * hd;
                    let (cos, sin) = (&cos[table.clone()], &sin[table]);
                    for head in 0..heads {
                        let (g, r) = (head / group, head % group);
                        let at = ((b * kv_heads + g) * group * len + r * len + t) * hd;
                        rotate(&row[head * hd..][..hd], cos, sin, &mut q[at..at + hd]);
                    }
                    for g in 0..kv_heads {
                        let at = ((b * kv_heads + g) * slots + start + t) * hd;
                        let key = &row[(heads + g) * hd..][..hd];
                        rotate(key, cos, sin, &mut k_cache[at..at + hd]);
                        let value = &row[(heads + kv_heads + g) * hd..][..hd];
                        v_cache[at..at + hd].copy_from_slice(value);
                    }
                }
            }
        })
    });
    written.flatten()?;
    Some(upload(q, [batch, kv_heads, group * len, hd], &device))
}

/// Runs `write` on the values of `t` in place and returns its result, or `None` (nothing
/// written) when `t` is not a contiguous CPU f32 tensor. The tensor is taken out of `t` for
/// the write, so its buffer has no other handle and is not copied.
fn with_unique_values<B: Backend, const D: usize, R>(
    t: &mut Tensor<B, D>,
    write: impl FnOnce(&mut [f32]) -> R,
) -> Option<R> {
    let t = (t as &mut dyn Any).downcast_mut::<Tensor<CpuBackend, D>>()?;
    let placeholder = Tensor::<CpuBackend, D>::empty([1; D], &Default::default());
    let mut inner = std::mem::replace(t, placeholder).into_primitive().tensor();
    let plain = inner.dtype() == burn::tensor::DType::F32
        && inner.is_contiguous()
        && inner.layout().start_offset() == 0;
    let result = if plain {
        // Unique unless someone else holds a view of the cache (then this copies once).
        Some(write(inner.storage_mut::<f32>()))
    } else {
        None
    };
    *t = Tensor::from_primitive(TensorPrimitive::Float(inner));
    result
}

/// Query rows per step up to which [`attention`] takes a forward pass (decode steps; a long
/// prefill does better with burn's matrix products).
const ATTENTION_MAX_LEN: usize = 16;

/// A step's attention, `[batch * len, heads * head_dim]`, of the queries `q` (`[batch,
/// kv_heads, group * len, head_dim]`, as [`rope_into_cache`] returns them, `len` new slots
/// from `start`) over the cache slots `first..first + keys`. Query slot `s = start + i` of row
/// `b` sees key slot `k` when `k == s` or `pads[b] <= k <= s` within the sliding window:
/// `llama::Llama::window_mask`'s rule.
#[allow(clippy::too_many_arguments)]
pub fn attention<B: Backend>(
    q: &Tensor<B, 4>,
    k_cache: &Tensor<B, 4>,
    v_cache: &Tensor<B, 4>,
    pads: &[usize],
    len: usize,
    first: usize,
    keys: usize,
    start: usize,
    sliding_window: Option<usize>,
    kernels: &KernelOptions,
) -> Option<Tensor<B, 2>> {
    if !kernels.cpu_fused {
        return None;
    }
    let [batch, kv_heads, rows, hd] = q.dims();
    let [cache_batch, cache_heads, slots, cache_dim] = k_cache.dims();
    if [cache_batch, cache_heads, cache_dim] != [batch, kv_heads, hd]
        || v_cache.dims() != k_cache.dims()
        || pads.len() != batch
        || first + keys > slots
        || start + len > first + keys
        || len == 0
        || len > ATTENTION_MAX_LEN
        || !rows.is_multiple_of(len)
    {
        return None;
    }
    let group = rows / len;
    let device = q.device();
    let (q, k_cache, v_cache) = (as_cpu(q)?, as_cpu(k_cache)?, as_cpu(v_cache)?);
    let (q, k_cache, v_cache) = (values(&q), values(&k_cache), values(&v_cache));
    let heads = kv_heads * group;
    let scale = (1.0 / (hd as f64).sqrt()) as f32;
    let mut out = vec![0f32; batch * len * heads * hd];
    let mut probs = vec![0f32; keys];
    for b in 0..batch {
        for g in 0..kv_heads {
            let cache_at = |slot: usize| ((b * kv_heads + g) * slots + slot) * hd;
            for r in 0..group {
                for i in 0..len {
                    let slot = start + i;
                    let visible = |k: usize| {
                        k == slot
                            || (k <= slot
                                && k >= pads[b]
                                && sliding_window.is_none_or(|w| slot - k < w))
                    };
                    let query = &q[((b * kv_heads + g) * rows + r * len + i) * hd..][..hd];
                    let mut max = f32::NEG_INFINITY;
                    for (j, p) in probs.iter_mut().enumerate() {
                        let k = first + j;
                        *p = if visible(k) {
                            let score = dot(query, &k_cache[cache_at(k)..][..hd]) * scale;
                            max = max.max(score);
                            score
                        } else {
                            f32::NEG_INFINITY
                        };
                    }
                    let mut total = 0.0;
                    for p in probs.iter_mut() {
                        *p = (*p - max).exp();
                        total += *p;
                    }
                    let head = g * group + r;
                    let out = &mut out[((b * len + i) * heads + head) * hd..][..hd];
                    for (j, p) in probs.iter().enumerate() {
                        if *p > 0.0 {
                            let p = p / total;
                            let value = &v_cache[cache_at(first + j)..][..hd];
                            for (o, v) in out.iter_mut().zip(value) {
                                *o += p * v;
                            }
                        }
                    }
                }
            }
        }
    }
    Some(upload(out, [batch * len, heads * hd], &device))
}

/// `a · b` in eight interleaved lanes, summed pairwise at the end: vectorizable, unlike a
/// sequential sum of floats.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a_whole, b_whole) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_whole
        .remainder()
        .iter()
        .zip(b_whole.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (a, b) in a_whole.zip(b_whole) {
        for l in 0..8 {
            lanes[l] += a[l] * b[l];
        }
    }
    let [l0, l1, l2, l3, l4, l5, l6, l7] = lanes;
    ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)) + tail
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tensor, TensorData, activation};

    use super::*;

    type Cpu = CpuBackend;

    fn close<const D: usize>(got: Tensor<Cpu, D>, want: Tensor<Cpu, D>) {
        assert_eq!(got.dims(), want.dims());
        let got = got.into_data().into_vec::<f32>().unwrap();
        let want = want.into_data().into_vec::<f32>().unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "at {i}: {g} vs {w}"
            );
        }
    }

    fn random<const D: usize>(shape: [usize; D]) -> Tensor<Cpu, D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    #[test]
    fn add_rms_norm_is_burns_add_then_norm() {
        let (x, branch, weight) = (random([2, 3, 40]), random([2, 3, 40]), random([40]));
        let (sum, normed) =
            add_rms_norm(&x, Some(&branch), &weight, 1e-5, &KernelOptions::default()).unwrap();
        let want_sum = x + branch;
        let rms = want_sum
            .clone()
            .square()
            .mean_dim(2)
            .add_scalar(1e-5)
            .sqrt();
        let want = want_sum.clone() / rms * weight.unsqueeze::<3>();
        close(sum, want_sum);
        close(normed, want);
    }

    #[test]
    fn swiglu_is_silu_of_the_gate_times_up() {
        let gate_up = random([3, 16]);
        let want = activation::silu(gate_up.clone().slice([0..3, 0..8]))
            * gate_up.clone().slice([0..3, 8..16]);
        close(swiglu(&gate_up, &KernelOptions::default()).unwrap(), want);
    }

    #[test]
    fn rope_into_cache_writes_the_cache_in_place_and_returns_the_folded_queries() {
        let (batch, len, heads, kv, hd, slots, start) = (2, 3, 4, 2, 8, 8, 2);
        let qkv = random([batch * len, (heads + 2 * kv) * hd]);
        let (cos, sin) = (random([batch, len, 1, hd]), random([batch, len, 1, hd]));
        let mut k_cache = random([batch, kv, slots, hd]);
        let mut v_cache = random([batch, kv, slots, hd]);
        let (k_before, v_before) = (k_cache.clone(), v_cache.clone());
        let q = rope_into_cache(
            &qkv,
            &cos,
            &sin,
            &mut k_cache,
            &mut v_cache,
            heads,
            kv,
            start,
            &KernelOptions::default(),
        )
        .unwrap();

        let rope = |x: Tensor<Cpu, 4>| {
            let half = hd / 2;
            let [b, t, h, _] = x.dims();
            let x1 = x.clone().slice([0..b, 0..t, 0..h, 0..half]);
            let x2 = x.clone().slice([0..b, 0..t, 0..h, half..hd]);
            x * cos.clone() + Tensor::cat(vec![x2.neg(), x1], 3) * sin.clone()
        };
        let split = |from: usize, n: usize| {
            qkv.clone()
                .slice([0..batch * len, from * hd..(from + n) * hd])
                .reshape([batch, len, n, hd])
        };
        let want_q =
            rope(split(0, heads))
                .swap_dims(1, 2)
                .reshape([batch, kv, heads / kv * len, hd]);
        close(q, want_q);
        let slots_written = [0..batch, 0..kv, start..start + len, 0..hd];
        let want_k = k_before.slice_assign(
            slots_written.clone(),
            rope(split(heads, kv)).swap_dims(1, 2),
        );
        let want_v = v_before.slice_assign(slots_written, split(heads + kv, kv).swap_dims(1, 2));
        close(k_cache, want_k);
        close(v_cache, want_v);
    }

    #[test]
    fn attention_is_the_masked_softmax_of_burns_products() {
        // Row 1 is left-padded by 3 slots; a sliding window of 4; two new queries from slot 5
        // over the keys 1..8 (slot 7 not written yet: no query may see it).
        let (batch, kv, group, len, hd, slots) = (2, 2, 3, 2, 8, 10);
        let (pads, first, keys, start, window) = ([0, 3], 1, 7, 5, 4);
        let q = random([batch, kv, group * len, hd]);
        let (k_cache, v_cache) = (
            random([batch, kv, slots, hd]),
            random([batch, kv, slots, hd]),
        );
        let got = attention(
            &q,
            &k_cache,
            &v_cache,
            &pads,
            len,
            first,
            keys,
            start,
            Some(window),
            &KernelOptions::default(),
        )
        .unwrap();

        let mut mask = Vec::new();
        for pad in pads {
            for slot in start..start + len {
                mask.extend((first..first + keys).map(|k| {
                    let visible = k == slot || (k <= slot && k >= pad && slot - k < window);
                    if visible { 0.0 } else { -1.0e9 }
                }));
            }
        }
        let mask = Tensor::<Cpu, 5>::from_data(
            TensorData::new(mask, [batch, 1, 1, len, keys]),
            &Default::default(),
        );
        let span = [0..batch, 0..kv, first..first + keys, 0..hd];
        let scores = q.matmul(k_cache.slice(span.clone()).swap_dims(2, 3)) / (hd as f32).sqrt();
        let scores = (scores.reshape([batch, kv, group, len, keys]) + mask).reshape([
            batch,
            kv,
            group * len,
            keys,
        ]);
        let want = activation::softmax(scores, 3)
            .matmul(v_cache.slice(span))
            .reshape([batch, kv * group, len, hd])
            .swap_dims(1, 2)
            .reshape([batch * len, kv * group * hd]);
        close(got, want);
    }
}
