//! RoPE on a step's new queries and keys, written where attention reads them.
//!
//! From the fused projection `qkv: [batch * len, (heads + 2 * kv_heads) * head_dim]`, one kernel
//! rotates the queries into the attention layout `[batch, kv_heads, group * len, head_dim]`
//! (query head `g * group + r` at rows `r * len ..` of group `g`, as `llama.rs` folds them) and
//! the keys, with the values as they are, into the KV caches at slots `start .. start + len`, in
//! place. Burn's operations took about 16 launches for this, and a copy of each cache.
//!
//! Rounding follows `llama::rope` in the storage type: `x * cos` and `rotate_half(x) * sin`
//! are each rounded, then their sum.

use burn::tensor::{Tensor, backend::Backend};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use cubecl::prelude::{CubeCount, CubeDim};

use super::{Runtime, array_arg, as_cuda, contiguous, from_cuda};
use crate::kernel_options::KernelOptions;

/// Threads per cube.
const THREADS: usize = 256;

/// The rotated queries `[batch, kv_heads, group * len, head_dim]`, after writing the rotated
/// keys and the values of `qkv` into `k_cache` and `v_cache` (`[batch, kv_heads, slots,
/// head_dim]`, contiguous) at slots `start..start + len`; `cos`, `sin`: `[batch, len, 1,
/// head_dim]`. `None` (nothing written) when the tensors are not CUDA tensors of those layouts,
/// or `kernels.cuda_fused` is off.
#[allow(clippy::too_many_arguments)]
pub fn rope_into_cache<B: Backend>(
    qkv: &Tensor<B, 2>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
    k_cache: &Tensor<B, 4>,
    v_cache: &Tensor<B, 4>,
    heads: usize,
    kv_heads: usize,
    start: usize,
    kernels: &KernelOptions,
) -> Option<Tensor<B, 4>> {
    if !kernels.cuda_fused {
        return None;
    }
    let [batch, len, _, head_dim] = cos.dims();
    let [cache_batch, cache_heads, slots, cache_dim] = k_cache.dims();
    let all = heads + 2 * kv_heads;
    if qkv.dims() != [batch * len, all * head_dim]
        || [cache_batch, cache_heads, cache_dim] != [batch, kv_heads, head_dim]
        || v_cache.dims() != k_cache.dims()
        || start + len > slots
        || !head_dim.is_multiple_of(2)
        || !heads.is_multiple_of(kv_heads)
    {
        return None;
    }
    let qkv = contiguous(as_cuda(qkv)?);
    let (cos, sin) = (contiguous(as_cuda(cos)?), contiguous(as_cuda(sin)?));
    let (kc, vc) = (as_cuda(k_cache)?, as_cuda(v_cache)?);
    // The caches are written in place: they must be plain row-major buffers.
    if !kc.is_contiguous() || !vc.is_contiguous() {
        return None;
    }
    let dtype = qkv.dtype;
    if [&cos, &sin, &kc, &vc].iter().any(|t| t.dtype != dtype) {
        return None;
    }
    let group = heads / kv_heads;
    let q = empty_device_contiguous_dtype(
        qkv.client.clone(),
        qkv.device.clone(),
        [batch, kv_heads, group * len, head_dim].into(),
        dtype,
    );
    let total = batch * len * all * (head_dim / 2);
    let cubes = u32::try_from(total.div_ceil(THREADS)).ok()?;
    let client = qkv.client.clone();
    // SAFETY: thread `i < total` reads one pair of `qkv` and of each table, and writes one pair
    // of `q` or of one cache at a slot below `start + len <= slots`.
    unsafe {
        with_float_type!(dtype, T => kernels::rope_kernel::launch_unchecked::<T, Runtime>(
            &client,
            CubeCount::new_1d(cubes),
            CubeDim::new_1d(THREADS as u32),
            array_arg(&qkv),
            array_arg(&cos),
            array_arg(&sin),
            array_arg(&q),
            array_arg(&kc),
            array_arg(&vc),
            total,
            len,
            slots,
            start,
            heads,
            kv_heads,
            head_dim,
        ), else return None);
    }
    Some(from_cuda(q))
}

pub(crate) mod kernels {
    use cubecl::prelude::*;

    /// One output of RoPE's `x * cos + rotate_half(x) * sin` (`rotate_half(x) = [-x2, x1]`) for
    /// an element `x` and its partner half a head away, rounded as burn's operations round it:
    /// each product to the storage type, then their sum. The first half subtracts the partner's
    /// product, the second half adds it.
    #[cube]
    pub(crate) fn rotated<F: Float>(
        x: F,
        partner: F,
        cos: F,
        sin: F,
        #[comptime] second_half: bool,
    ) -> F {
        let a = f32::cast_from(F::cast_from(f32::cast_from(x) * f32::cast_from(cos)));
        let b = f32::cast_from(F::cast_from(f32::cast_from(partner) * f32::cast_from(sin)));
        if comptime!(second_half) {
            F::cast_from(a + b)
        } else {
            F::cast_from(a - b)
        }
    }

    /// Thread `i` handles the pair `(j, j + head_dim / 2)` of one head of one token.
    #[cube(launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rope_kernel<F: Float>(
        qkv: &Array<F>,
        cos: &Array<F>,
        sin: &Array<F>,
        q: &mut Array<F>,
        k_cache: &mut Array<F>,
        v_cache: &mut Array<F>,
        total: usize,
        len: usize,
        slots: usize,
        start: usize,
        #[comptime] heads: usize,
        #[comptime] kv_heads: usize,
        #[comptime] head_dim: usize,
    ) {
        let i = ABSOLUTE_POS;
        if i < total {
            let half = comptime!(head_dim / 2);
            let all = comptime!(heads + 2 * kv_heads);
            let group = comptime!(heads / kv_heads);
            let j = i % half;
            let head = (i / half) % all;
            let token = i / (half * all);
            let b = token / len;
            let t = token % len;
            let at = (token * all + head) * head_dim + j;
            let x1 = qkv[at];
            let x2 = qkv[at + half];
            if head < heads + kv_heads {
                let c = token * head_dim + j;
                let o1 = rotated::<F>(x1, x2, cos[c], sin[c], false);
                let o2 = rotated::<F>(x2, x1, cos[c + half], sin[c + half], true);
                if head < heads {
                    let g = head / group;
                    let r = head % group;
                    let to = ((b * kv_heads + g) * group * len + r * len + t) * head_dim + j;
                    q[to] = o1;
                    q[to + half] = o2;
                } else {
                    let to = ((b * kv_heads + head - heads) * slots + start + t) * head_dim + j;
                    k_cache[to] = o1;
                    k_cache[to + half] = o2;
                }
            } else {
                let to =
                    ((b * kv_heads + head - heads - kv_heads) * slots + start + t) * head_dim + j;
                v_cache[to] = x1;
                v_cache[to + half] = x2;
            }
        }
    }
}
