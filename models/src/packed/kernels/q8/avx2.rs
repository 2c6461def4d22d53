//! The byte-activation products with AVX2 and FMA: a block's 32 byte products in one
//! `vpmaddubsw` (unsigned by signed bytes, pairs added into 16 bits) and one `vpmaddwd` (pairs
//! of those into the eight 32-bit lanes), converted to f32 and scaled into one accumulator a
//! pair of rows. Tiles of four weight rows by up to three activation rows: twelve accumulators,
//! and each activation block loaded once for four rows.

use std::arch::x86_64::*;

use super::super::{ByteRow, NibbleRow, OfKind, Row, generic, leading};
use super::{ByteRows, LANES};

/// Weight rows per tile.
const TILE_ROWS: usize = 4;
/// Activation rows per tile.
const TILE_BATCH: usize = 3;

/// See [`super::ByteProducts`].
pub(in crate::packed) fn products(
    rows: &[Row],
    x: &[f32],
    activations: ByteRows,
    n: usize,
    out: &mut [f32],
) {
    // SAFETY: the kernel list offers this function only once the CPU showed these features.
    unsafe { products_with_features(rows, x, activations, n, out) }
}

#[target_feature(enable = "avx2,fma")]
fn products_with_features(
    rows: &[Row],
    x: &[f32],
    activations: ByteRows,
    n: usize,
    out: &mut [f32],
) {
    let mut done = 0;
    while done < rows.len() {
        let (rest, out) = (&rows[done..], &mut out[done * n..]);
        done += match rest[0] {
            Row::Dense(row) => {
                generic::dots::<super::super::Fused>(row.0, x, &mut out[..n]);
                1
            }
            Row::Nibbles(_) => leading_tile::<NibbleRow>(rest, activations, n, out),
            Row::Bytes(_) => leading_tile::<ByteRow>(rest, activations, n, out),
        };
    }
}

/// Multiplies the first rows of `rows`, whose first is a `W`: a whole tile where enough rows of
/// that kind lead, else that one row. Returns how many it took.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn leading_tile<'a, W: Quants + OfKind<'a>>(
    rows: &[Row<'a>],
    activations: ByteRows,
    n: usize,
    out: &mut [f32],
) -> usize {
    match leading::<W, TILE_ROWS>(rows) {
        Some(tile) => batch(&tile, activations, n, out),
        None => {
            let first = [W::of(&rows[0]).expect("the caller matched the first row's kind")];
            batch(&first, activations, n, out)
        }
    }
}

/// The `R` rows times every activation row, `TILE_BATCH` at a time. Returns `R`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn batch<W: Quants, const R: usize>(
    rows: &[W; R],
    activations: ByteRows,
    n: usize,
    out: &mut [f32],
) -> usize {
    let mut t = 0;
    while t < n {
        let out = &mut out[t..];
        t += match (n - t).min(TILE_BATCH) {
            1 => tile::<W, R, 1>(rows, [activations.row(t)], n, out),
            2 => tile::<W, R, 2>(
                rows,
                std::array::from_fn(|i| activations.row(t + i)),
                n,
                out,
            ),
            _ => tile::<W, R, 3>(
                rows,
                std::array::from_fn(|i| activations.row(t + i)),
                n,
                out,
            ),
        };
    }
    R
}

/// A weight row of quantized blocks, as the byte products read it.
trait Quants {
    fn blocks(&self) -> usize;

    /// Block `b`'s 32 weights as bytes.
    ///
    /// # Safety
    /// Only on a CPU with avx2; `b` below [`blocks`](Self::blocks).
    unsafe fn weights(&self, b: usize) -> __m256i;

    /// The products of `weights` and the activations' bytes `a`, pairs added (`vpmaddubsw`,
    /// which takes unsigned bytes by signed ones).
    ///
    /// # Safety
    /// Only on a CPU with avx2.
    unsafe fn pairs(weights: __m256i, a: __m256i) -> __m256i;

    /// Block `b`'s scales for the eight lanes.
    ///
    /// # Safety
    /// Only on a CPU with avx2; `b` below [`blocks`](Self::blocks).
    unsafe fn scales(&self, b: usize) -> __m256;

    /// The whole product from the sum of the lanes: plus the minimums' term where there is one.
    fn total(&self, lanes: f32, activations: &ByteRows) -> f32;
}

impl Quants for NibbleRow<'_> {
    fn blocks(&self) -> usize {
        self.scales.len()
    }

    #[inline(always)]
    unsafe fn weights(&self, b: usize) -> __m256i {
        // SAFETY: the caller checked the CPU; the row holds 16 bytes per block.
        unsafe {
            let bytes = _mm_loadu_si128(self.quants.as_ptr().add(16 * b).cast());
            let mask = _mm_set1_epi8(0x0F);
            let low = _mm_and_si128(bytes, mask);
            let high = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
            _mm256_set_m128i(high, low)
        }
    }

    #[inline(always)]
    unsafe fn pairs(weights: __m256i, a: __m256i) -> __m256i {
        // SAFETY: the caller checked the CPU.
        unsafe { _mm256_maddubs_epi16(weights, a) }
    }

    #[inline(always)]
    unsafe fn scales(&self, b: usize) -> __m256 {
        // SAFETY: the caller checked the CPU and bounds `b`.
        unsafe { _mm256_set1_ps(*self.scales.get_unchecked(b)) }
    }

    #[inline(always)]
    fn total(&self, lanes: f32, activations: &ByteRows) -> f32 {
        // SAFETY: inlined only into the kernels, which have these instructions.
        lanes + unsafe { minimums(self.mins, activations.sums) }
    }
}

impl Quants for ByteRow<'_> {
    fn blocks(&self) -> usize {
        ByteRow::blocks(self)
    }

    #[inline(always)]
    unsafe fn weights(&self, b: usize) -> __m256i {
        // SAFETY: the caller checked the CPU; the row holds 32 bytes per block.
        unsafe { _mm256_loadu_si256(self.quants.as_ptr().add(32 * b).cast()) }
    }

    #[inline(always)]
    unsafe fn pairs(weights: __m256i, a: __m256i) -> __m256i {
        // |q| by a·sign(q): the activations are within ±127, so no pair overflows 16 bits.
        // SAFETY: the caller checked the CPU.
        unsafe {
            _mm256_maddubs_epi16(
                _mm256_sign_epi8(weights, weights),
                _mm256_sign_epi8(a, weights),
            )
        }
    }

    #[inline(always)]
    unsafe fn scales(&self, b: usize) -> __m256 {
        // SAFETY: the caller checked the CPU and bounds `b`.
        unsafe {
            let (first, last) = self.scales_unchecked(b);
            _mm256_set_m128(_mm_set1_ps(last), _mm_set1_ps(first))
        }
    }

    #[inline(always)]
    fn total(&self, lanes: f32, _: &ByteRows) -> f32 {
        lanes
    }
}

/// `out[r · stride + t] = rows[r] · activations[t]` for `R` weight rows and `T` activation rows.
/// Returns `T`.
#[inline]
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma")]
fn tile<W: Quants, const R: usize, const T: usize>(
    rows: &[W; R],
    activations: [ByteRows; T],
    stride: usize,
    out: &mut [f32],
) -> usize {
    let blocks = rows[0].blocks();
    assert!(activations.iter().all(|a| a.quants.len() == 32 * blocks));
    assert!(activations.iter().all(|a| a.scales.len() == blocks));
    assert!(out.len() > (R - 1) * stride + T - 1);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for b in 0..blocks {
        let mut bytes = [_mm256_setzero_si256(); T];
        let mut scales = [_mm256_setzero_ps(); T];
        for t in 0..T {
            // SAFETY: row `t` holds 32 bytes and one scale per block (asserted above).
            unsafe {
                bytes[t] = _mm256_loadu_si256(activations[t].quants.as_ptr().add(32 * b).cast());
                scales[t] = _mm256_set1_ps(*activations[t].scales.get_unchecked(b));
            }
        }
        for r in 0..R {
            // SAFETY: avx2 and fma are enabled here; `b` is below every row's blocks.
            let (weights, weight_scales) = unsafe { (rows[r].weights(b), rows[r].scales(b)) };
            for t in 0..T {
                // SAFETY: as above.
                let pairs = unsafe { W::pairs(weights, bytes[t]) };
                let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                let scale = _mm256_mul_ps(weight_scales, scales[t]);
                acc[r][t] = _mm256_fmadd_ps(sums, scale, acc[r][t]);
            }
        }
    }
    for r in 0..R {
        for t in 0..T {
            out[r * stride + t] = rows[r].total(lane_sum(acc[r][t]), &activations[t]);
        }
    }
    T
}

/// The sum of eight lanes in [`super::super::tree_sum`]'s order.
#[inline(always)]
fn lane_sum(v: __m256) -> f32 {
    // SAFETY: inlined only into the kernels, which have these instructions.
    unsafe {
        let v = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        sum_halves_128!(v)
    }
}

/// [`super::minimums`] with vectors: blocks `8k + l` into lane `l`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn minimums(mins: &[f32], sums: &[f32]) -> f32 {
    assert_eq!(mins.len(), sums.len());
    let whole = mins.len() / LANES * LANES;
    let mut acc = _mm256_setzero_ps();
    for b in (0..whole).step_by(LANES) {
        // SAFETY: `b + 8 <= whole <= len`.
        unsafe {
            let (m, s) = (mins.as_ptr().add(b), sums.as_ptr().add(b));
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(m), _mm256_loadu_ps(s), acc);
        }
    }
    let mut lanes = [0f32; LANES];
    // SAFETY: `lanes` holds eight values.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
    for b in whole..mins.len() {
        lanes[b % LANES] = mins[b].mul_add(sums[b], lanes[b % LANES]);
    }
    super::super::tree_sum(&mut lanes)
}
