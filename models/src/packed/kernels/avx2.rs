use std::arch::x86_64::*;

use super::{ByteRow, DenseRow, NibbleRow, Row};

vector_products!("avx2,fma", store, tile_rows: 1, tile_batch: 2);

/// One weight row of blocks of 32.
trait BlockRow {
    fn blocks(&self) -> usize;

    /// Block `b` as four vectors of eight weights.
    ///
    /// # Safety
    /// Only on a CPU with avx2 and fma; `b` below [`blocks`](Self::blocks).
    unsafe fn block(&self, b: usize) -> [__m256; 4];
}

impl BlockRow for NibbleRow<'_> {
    fn blocks(&self) -> usize {
        self.scales.len()
    }

    #[inline(always)]
    unsafe fn block(&self, b: usize) -> [__m256; 4] {
        // SAFETY: the caller checked the CPU; the row holds 16 bytes per block.
        unsafe {
            nibble_block(
                self.quants.as_ptr().add(16 * b),
                *self.scales.get_unchecked(b),
                *self.mins.get_unchecked(b),
            )
        }
    }
}

impl BlockRow for ByteRow<'_> {
    fn blocks(&self) -> usize {
        ByteRow::blocks(self)
    }

    #[inline(always)]
    unsafe fn block(&self, b: usize) -> [__m256; 4] {
        // SAFETY: the caller checked the CPU and bounds `b`; the row holds 32 bytes per block.
        unsafe { byte_block(self.quants.as_ptr().add(32 * b), self.scales_unchecked(b)) }
    }
}

impl BlockRow for DenseRow<'_> {
    fn blocks(&self) -> usize {
        self.0.len() / 32
    }

    #[inline(always)]
    unsafe fn block(&self, b: usize) -> [__m256; 4] {
        // SAFETY: the caller checked the CPU; the row holds 32 values per block.
        unsafe { load_block(self.0.as_ptr().add(32 * b)) }
    }
}

/// Writes a block's four vectors into `chunk` (32 values).
#[inline(always)]
fn store(chunk: &mut [f32], weights: [__m256; 4]) {
    assert_eq!(chunk.len(), 32);
    for (k, weights) in weights.into_iter().enumerate() {
        // SAFETY: `chunk` holds 32 values, so 8k..8k+8 is in bounds.
        unsafe { _mm256_storeu_ps(chunk.as_mut_ptr().add(8 * k), weights) };
    }
}

/// `out[r · stride + t] = rows[r] · x[t]` for `R` weight rows and `T` activation rows, in
/// the lanes of the generic kernel: accumulator `k` holds lanes `8k..8k + 8`. Returns `T`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn fused<W: BlockRow, const R: usize, const T: usize>(
    rows: &[W; R],
    x: &[f32],
    stride: usize,
    out: &mut [f32],
) -> usize {
    let blocks = rows[0].blocks();
    let cols = blocks * 32;
    assert!(x.len() >= T * cols && out.len() > (R - 1) * stride + T - 1);
    let mut acc = [[[_mm256_setzero_ps(); 4]; T]; R];
    for b in 0..blocks {
        // SAFETY: avx2 and fma are enabled here; `b` is below every row's blocks.
        let mut weights = [[_mm256_setzero_ps(); 4]; R];
        for (weights, row) in weights.iter_mut().zip(rows) {
            // SAFETY: avx2 and fma are enabled here; `b` is below every row's blocks.
            *weights = unsafe { row.block(b) };
        }
        for t in 0..T {
            // SAFETY: row `t` of `x` holds `cols` values (asserted above).
            let xs = unsafe { load_block(x.as_ptr().add(t * cols + b * 32)) };
            for (acc, weights) in acc.iter_mut().zip(&weights) {
                for k in 0..4 {
                    acc[t][k] = _mm256_fmadd_ps(weights[k], xs[k], acc[t][k]);
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (t, [a0, a1, a2, a3]) in acc.iter().enumerate() {
            // The tree's first step (lanes l and l + 16) is a0 + a2 and a1 + a3.
            let v = _mm256_add_ps(_mm256_add_ps(*a0, *a2), _mm256_add_ps(*a1, *a3));
            let v = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            out[r * stride + t] = sum_halves_128!(v);
        }
    }
    T
}

/// `scale · q + min` for the 32 nibbles of a block (low nibbles first).
///
/// # Safety
/// `quants` points to 16 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn nibble_block(quants: *const u8, scale: f32, min: f32) -> [__m256; 4] {
    // SAFETY: the caller passes 16 readable bytes.
    let bytes = unsafe { _mm_loadu_si128(quants.cast()) };
    let mask = _mm_set1_epi8(0x0F);
    let low = _mm_and_si128(bytes, mask);
    let high = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
    let (scale, min) = (_mm256_set1_ps(scale), _mm256_set1_ps(min));
    [
        _mm256_fmadd_ps(unsigned_to_f32(low), scale, min),
        _mm256_fmadd_ps(unsigned_to_f32(_mm_unpackhi_epi64(low, low)), scale, min),
        _mm256_fmadd_ps(unsigned_to_f32(high), scale, min),
        _mm256_fmadd_ps(unsigned_to_f32(_mm_unpackhi_epi64(high, high)), scale, min),
    ]
}

/// `scale · q` for the 32 signed bytes of a block, the first 16 with the first scale and the
/// last 16 with the second.
///
/// # Safety
/// `quants` points to 32 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn byte_block(quants: *const i8, (first_scale, last_scale): (f32, f32)) -> [__m256; 4] {
    // SAFETY: the caller passes 32 readable bytes.
    let (first, second) = unsafe {
        (
            _mm_loadu_si128(quants.cast()),
            _mm_loadu_si128(quants.add(16).cast()),
        )
    };
    let (first_scale, last_scale) = (_mm256_set1_ps(first_scale), _mm256_set1_ps(last_scale));
    [
        _mm256_mul_ps(signed_to_f32(first), first_scale),
        _mm256_mul_ps(signed_to_f32(_mm_unpackhi_epi64(first, first)), first_scale),
        _mm256_mul_ps(signed_to_f32(second), last_scale),
        _mm256_mul_ps(
            signed_to_f32(_mm_unpackhi_epi64(second, second)),
            last_scale,
        ),
    ]
}

// The helpers below are always inlined, and are functions rather than closures: a closure is
// compiled apart, without its function's target features, so the intrinsics in it became calls
// (as did helpers merely marked `#[inline]`), which made the kernels several times slower.

/// The low eight bytes of `v`, unsigned, as f32 values.
#[inline(always)]
fn unsigned_to_f32(v: __m128i) -> __m256 {
    // SAFETY: inlined only into the kernels, which have these instructions.
    unsafe { _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)) }
}

/// The low eight bytes of `v`, signed, as f32 values.
#[inline(always)]
fn signed_to_f32(v: __m128i) -> __m256 {
    // SAFETY: inlined only into the kernels, which have these instructions.
    unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)) }
}

/// The 32 f32 values at `values` as four vectors.
///
/// # Safety
/// `values` points to 32 readable f32 values.
#[inline(always)]
unsafe fn load_block(values: *const f32) -> [__m256; 4] {
    // SAFETY: the caller passes 32 readable values.
    unsafe {
        [
            _mm256_loadu_ps(values),
            _mm256_loadu_ps(values.add(8)),
            _mm256_loadu_ps(values.add(16)),
            _mm256_loadu_ps(values.add(24)),
        ]
    }
}
