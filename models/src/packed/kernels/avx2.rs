use std::arch::x86_64::*;

use super::{ByteRow, DenseRow, NibbleRow, PREFETCH_ROWS, Row};

vector_products!("avx2,fma", direct_rows: 1, buffered_rows: 4);

/// The lanes of a vector: the activations come grouped eight lanes at a time
/// ([`super::Kernel::arrange`]), so that one lane group of consecutive blocks is contiguous.
pub(super) const LANE_GROUP: usize = 8;

/// Activation rows per pass over a lane group of the buffered rows.
const TILE_BATCH: usize = 3;

/// One weight row of blocks of 32.
trait BlockRow {
    fn blocks(&self) -> usize;

    /// Block `b` as four vectors of eight weights.
    ///
    /// # Safety
    /// Only on a CPU with avx2 and fma; `b` below [`blocks`](Self::blocks).
    unsafe fn block(&self, b: usize) -> [__m256; 4];

    /// Asks the caches for block `b` of the row `rows_ahead` rows on (packed rows only).
    #[inline(always)]
    fn prefetch_ahead(&self, _b: usize, _rows_ahead: usize) {}
}

impl BlockRow for NibbleRow<'_> {
    #[inline(always)]
    fn prefetch_ahead(&self, b: usize, rows_ahead: usize) {
        NibbleRow::prefetch_ahead(self, b, rows_ahead);
    }

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
    #[inline(always)]
    fn prefetch_ahead(&self, b: usize, rows_ahead: usize) {
        ByteRow::prefetch_ahead(self, b, rows_ahead);
    }

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

/// `out[r · stride + t] = rows[r] · x[t]` for `R` weight rows and `T` activation rows (lane
/// grouped), in the lanes of the generic kernel: accumulator `k` holds lanes `8k..8k + 8`.
/// Returns `T`.
///
/// Index loops over the constant extents rather than iterator chains over the arrays: LLVM
/// unrolls them fully, and the kernel ran faster so (docs/qwen2.md).
#[inline]
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma")]
fn fused<W: BlockRow, const R: usize, const T: usize>(
    rows: &[W; R],
    x: &[f32],
    stride: usize,
    out: &mut [f32],
) -> usize {
    let blocks = rows[0].blocks();
    let (cols, group) = (blocks * 32, blocks * LANE_GROUP);
    assert!(x.len() >= T * cols && out.len() > (R - 1) * stride + T - 1);
    let mut acc = [[[_mm256_setzero_ps(); 4]; T]; R];
    for b in 0..blocks {
        if b % 2 == 0 {
            for row in rows {
                row.prefetch_ahead(b, R.max(PREFETCH_ROWS));
            }
        }
        let mut xs = [[_mm256_setzero_ps(); 4]; T];
        for t in 0..T {
            for k in 0..4 {
                // SAFETY: row `t` of `x` holds `cols` values (asserted above), four lane groups
                // of `group` values, and `b` is below the blocks.
                xs[t][k] = unsafe { _mm256_loadu_ps(x.as_ptr().add(t * cols + k * group + 8 * b)) };
            }
        }
        for r in 0..R {
            // SAFETY: avx2 and fma are enabled here; `b` is below every row's blocks.
            let weights = unsafe { rows[r].block(b) };
            for t in 0..T {
                for k in 0..4 {
                    acc[r][t][k] = _mm256_fmadd_ps(weights[k], xs[t][k], acc[r][t][k]);
                }
            }
        }
    }
    for r in 0..R {
        for t in 0..T {
            out[r * stride + t] = lane_sum(acc[r][t]);
        }
    }
    T
}

/// `out[r · n + b] = rows[r] · x[b]` for the `R` rows and three or more activation rows. The
/// rows are dequantized once into `buffer`, lane grouped as the activations are, and multiplied
/// one lane group at a time: a group's accumulator for a pair of rows is one vector, so a tile
/// of four weight rows by three activation rows keeps its twelve accumulators in registers and
/// loads seven vectors for twelve multiply-adds (`fused`'s whole blocks, four accumulators a
/// pair, leave room for two pairs and load six vectors for eight). Returns `R`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn buffered<W: BlockRow, const R: usize>(
    rows: &[W; R],
    x: &[f32],
    n: usize,
    buffer: &mut [f32],
    out: &mut [f32],
) -> usize {
    let blocks = rows[0].blocks();
    let (cols, group) = (blocks * 32, blocks * LANE_GROUP);
    for (row, buffer) in rows.iter().zip(buffer.chunks_exact_mut(cols)) {
        for b in 0..blocks {
            // SAFETY: the features are enabled here; `b` is below the blocks.
            let weights = unsafe { row.block(b) };
            for (k, weights) in weights.into_iter().enumerate() {
                let at = &mut buffer[k * group + 8 * b..][..8];
                // SAFETY: `at` holds eight values.
                unsafe { _mm256_storeu_ps(at.as_mut_ptr(), weights) };
            }
        }
    }
    let weights = &buffer[..R * cols];
    let mut t = 0;
    while t < n {
        let (x, out) = (&x[t * cols..], &mut out[t..]);
        t += match (n - t).min(TILE_BATCH) {
            1 => grouped::<R, 1>(weights, x, cols, n, out),
            2 => grouped::<R, 2>(weights, x, cols, n, out),
            _ => grouped::<R, 3>(weights, x, cols, n, out),
        };
    }
    R
}

/// `out[r · stride + t] = weights[r] · x[t]` for `R` lane-grouped weight rows of `cols` values and
/// `T` lane-grouped activation rows, one lane group after the other. Returns `T`.
#[inline]
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma")]
fn grouped<const R: usize, const T: usize>(
    weights: &[f32],
    x: &[f32],
    cols: usize,
    stride: usize,
    out: &mut [f32],
) -> usize {
    let (blocks, group) = (cols / 32, cols / 32 * LANE_GROUP);
    assert!(weights.len() >= R * cols && x.len() >= T * cols);
    assert!(out.len() > (R - 1) * stride + T - 1);
    let mut sums = [[[_mm256_setzero_ps(); 4]; T]; R];
    for k in 0..4 {
        let mut acc = [[_mm256_setzero_ps(); T]; R];
        for b in 0..blocks {
            let at = k * group + 8 * b;
            let mut xs = [_mm256_setzero_ps(); T];
            for t in 0..T {
                // SAFETY: row `t` of `x` holds `cols` values (asserted above); `at + 8 <= cols`.
                xs[t] = unsafe { _mm256_loadu_ps(x.as_ptr().add(t * cols + at)) };
            }
            for r in 0..R {
                // SAFETY: as for `x`, row `r` of `weights` holds `cols` values.
                let w = unsafe { _mm256_loadu_ps(weights.as_ptr().add(r * cols + at)) };
                for t in 0..T {
                    acc[r][t] = _mm256_fmadd_ps(w, xs[t], acc[r][t]);
                }
            }
        }
        for r in 0..R {
            for t in 0..T {
                sums[r][t][k] = acc[r][t];
            }
        }
    }
    for r in 0..R {
        for t in 0..T {
            out[r * stride + t] = lane_sum(sums[r][t]);
        }
    }
    T
}

/// The sum of a dot product's 32 lanes, accumulator `k` holding lanes `8k..8k + 8`, in the
/// generic kernel's order.
#[inline(always)]
fn lane_sum([a0, a1, a2, a3]: [__m256; 4]) -> f32 {
    // SAFETY: inlined only into the kernels, which have these instructions.
    unsafe {
        // The tree's first step (lanes l and l + 16) is a0 + a2 and a1 + a3.
        let v = _mm256_add_ps(_mm256_add_ps(a0, a2), _mm256_add_ps(a1, a3));
        let v = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        sum_halves_128!(v)
    }
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
