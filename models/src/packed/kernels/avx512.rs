use std::arch::x86_64::*;

use super::{ByteRow, DenseRow, NibbleRow, PREFETCH_ROWS, Row};

vector_products!("avx512f,avx2,fma", direct_rows: 2, buffered_rows: 2);

/// Activation rows per pass over a tile's buffered rows.
const TILE_BATCH: usize = 4;

/// One weight row of blocks of 32.
trait BlockRow {
    fn blocks(&self) -> usize;

    /// Block `b` as two vectors of sixteen weights.
    ///
    /// # Safety
    /// Only on a CPU with avx512f; `b` below [`blocks`](Self::blocks).
    unsafe fn block(&self, b: usize) -> [__m512; 2];

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
    unsafe fn block(&self, b: usize) -> [__m512; 2] {
        // SAFETY: the caller checked the CPU; the row holds 16 bytes per block.
        unsafe {
            let bytes = _mm_loadu_si128(self.quants.as_ptr().add(16 * b).cast());
            let mask = _mm_set1_epi8(0x0F);
            let scale = _mm512_set1_ps(*self.scales.get_unchecked(b));
            let min = _mm512_set1_ps(*self.mins.get_unchecked(b));
            [
                _mm512_fmadd_ps(unsigned_to_f32(_mm_and_si128(bytes, mask)), scale, min),
                _mm512_fmadd_ps(
                    unsigned_to_f32(_mm_and_si128(_mm_srli_epi16(bytes, 4), mask)),
                    scale,
                    min,
                ),
            ]
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
    unsafe fn block(&self, b: usize) -> [__m512; 2] {
        // SAFETY: the caller checked the CPU and bounds `b`; the row holds 32 bytes per block.
        unsafe {
            let at = self.quants.as_ptr().add(32 * b);
            let (first_scale, last_scale) = self.scales_unchecked(b);
            [
                _mm512_mul_ps(
                    signed_to_f32(_mm_loadu_si128(at.cast())),
                    _mm512_set1_ps(first_scale),
                ),
                _mm512_mul_ps(
                    signed_to_f32(_mm_loadu_si128(at.add(16).cast())),
                    _mm512_set1_ps(last_scale),
                ),
            ]
        }
    }
}

impl BlockRow for DenseRow<'_> {
    fn blocks(&self) -> usize {
        self.0.len() / 32
    }

    #[inline(always)]
    unsafe fn block(&self, b: usize) -> [__m512; 2] {
        // SAFETY: the caller checked the CPU; the row holds 32 values per block.
        unsafe { load_block(self.0.as_ptr().add(32 * b)) }
    }
}

/// Writes a block's two vectors into `chunk` (32 values).
#[inline(always)]
fn store(chunk: &mut [f32], [low, high]: [__m512; 2]) {
    assert_eq!(chunk.len(), 32);
    // SAFETY: `chunk` holds 32 values.
    unsafe {
        _mm512_storeu_ps(chunk.as_mut_ptr(), low);
        _mm512_storeu_ps(chunk.as_mut_ptr().add(16), high);
    }
}

/// `out[r · n + b] = rows[r] · x[b]` for the `R` rows and three or more activation rows: the
/// rows are dequantized once into `buffer`, then multiplied `TILE_BATCH` activation rows at a
/// time. Returns `R`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
fn buffered<W: BlockRow, const R: usize>(
    rows: &[W; R],
    x: &[f32],
    n: usize,
    buffer: &mut [f32],
    out: &mut [f32],
) -> usize {
    let cols = rows[0].blocks() * 32;
    for (row, buffer) in rows.iter().zip(buffer.chunks_exact_mut(cols)) {
        for (b, chunk) in buffer.chunks_exact_mut(32).enumerate() {
            // SAFETY: the features are enabled here; `b` is below the blocks.
            store(chunk, unsafe { row.block(b) });
        }
    }
    let dense: [DenseRow; R] = std::array::from_fn(|r| DenseRow(&buffer[r * cols..(r + 1) * cols]));
    let mut b = 0;
    while b < n {
        let (x, out) = (&x[b * cols..], &mut out[b..]);
        b += match (n - b).min(TILE_BATCH) {
            1 => fused::<DenseRow, R, 1>(&dense, x, n, out),
            2 => fused::<DenseRow, R, 2>(&dense, x, n, out),
            3 => fused::<DenseRow, R, 3>(&dense, x, n, out),
            _ => fused::<DenseRow, R, 4>(&dense, x, n, out),
        };
    }
    R
}

/// `out[r · stride + t] = rows[r] · x[t]` for `R` weight rows and `T` activation rows, in
/// the lanes of the generic kernel. Returns `T`. Index loops, as in the AVX2 kernel's `fused`.
#[inline]
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx2,fma")]
fn fused<W: BlockRow, const R: usize, const T: usize>(
    rows: &[W; R],
    x: &[f32],
    stride: usize,
    out: &mut [f32],
) -> usize {
    let blocks = rows[0].blocks();
    let cols = blocks * 32;
    assert!(x.len() >= T * cols && out.len() > (R - 1) * stride + T - 1);
    let mut acc = [[[_mm512_setzero_ps(); 2]; T]; R];
    for b in 0..blocks {
        if b % 2 == 0 {
            for row in rows {
                row.prefetch_ahead(b, R.max(PREFETCH_ROWS));
            }
        }
        let mut xs = [[_mm512_setzero_ps(); 2]; T];
        for t in 0..T {
            // SAFETY: row `t` of `x` holds `cols` values (asserted above).
            xs[t] = unsafe { load_block(x.as_ptr().add(t * cols + b * 32)) };
        }
        for r in 0..R {
            // SAFETY: avx512f is enabled here; `b` is below every row's blocks.
            let weights = unsafe { rows[r].block(b) };
            for t in 0..T {
                for k in 0..2 {
                    acc[r][t][k] = _mm512_fmadd_ps(weights[k], xs[t][k], acc[r][t][k]);
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (t, [low, high]) in acc.iter().enumerate() {
            // Lanes l and l + 16, then l and l + 8 (the upper 256 bits onto the lower).
            let v = _mm512_add_ps(*low, *high);
            let upper = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
            let v = _mm256_add_ps(_mm512_castps512_ps256(v), upper);
            let v = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            out[r * stride + t] = sum_halves_128!(v);
        }
    }
    T
}

// Always inlined, and functions rather than closures (see the AVX2 kernel's helpers).

/// Sixteen unsigned bytes as f32 values.
#[inline(always)]
fn unsigned_to_f32(v: __m128i) -> __m512 {
    // SAFETY: inlined only into the kernels, which have these instructions.
    unsafe { _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v)) }
}

/// Sixteen signed bytes as f32 values.
#[inline(always)]
fn signed_to_f32(v: __m128i) -> __m512 {
    // SAFETY: inlined only into the kernels, which have these instructions.
    unsafe { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v)) }
}

/// The 32 f32 values at `values` as two vectors.
///
/// # Safety
/// `values` points to 32 readable f32 values.
#[inline(always)]
unsafe fn load_block(values: *const f32) -> [__m512; 2] {
    // SAFETY: the caller passes 32 readable values.
    unsafe { [_mm512_loadu_ps(values), _mm512_loadu_ps(values.add(16))] }
}
