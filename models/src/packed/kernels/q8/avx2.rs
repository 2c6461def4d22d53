//! The byte-activation products with AVX2 and FMA: a block's 32 byte products in one
//! `vpmaddubsw` (unsigned by signed bytes, pairs added into 16 bits) and one `vpmaddwd` (pairs
//! of those into the eight 32-bit lanes), converted to f32 and scaled into one accumulator a
//! pair of rows. Tiles of four weight rows by up to three activation rows: twelve accumulators,
//! and each activation block loaded once for four rows.

use std::arch::x86_64::*;

use super::super::{ByteRow, KRow, NibbleRow, OfKind, PREFETCH_ROWS, Row, generic, leading};
use super::{ByteRows, LANES, SuperRows};

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
            Row::Nibbles(NibbleRow { k: Some(_), .. }) => {
                leading_super_tile(rest, activations, n, out)
            }
            Row::Nibbles(_) => leading_tile::<NibbleRow>(rest, activations, n, out),
            Row::Bytes(_) => leading_tile::<ByteRow>(rest, activations, n, out),
        };
    }
}

/// A Q4_K row: nibble blocks and their integer scales.
#[derive(Clone, Copy)]
struct SuperRow<'a> {
    quants: &'a [u8],
    k: KRow<'a>,
}

impl<'a> OfKind<'a> for SuperRow<'a> {
    fn of(row: &Row<'a>) -> Option<Self> {
        match row {
            Row::Nibbles(NibbleRow {
                quants, k: Some(k), ..
            }) => Some(SuperRow { quants, k: *k }),
            _ => None,
        }
    }
}

/// [`leading_tile`] for Q4_K rows.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn leading_super_tile(rows: &[Row], activations: ByteRows, n: usize, out: &mut [f32]) -> usize {
    let row = |t: usize| activations.row(t).super_blocks();
    let tile = |rows: &[SuperRow], out: &mut [f32]| {
        let mut t = 0;
        while t < n {
            let out = &mut out[t..];
            t += match (rows, n - t) {
                (&[a, b, c, d], 1) => super_tile::<4, 1>([a, b, c, d], [row(t)], n, out),
                (&[a, b, c, d], _) => {
                    super_tile::<4, 2>([a, b, c, d], [row(t), row(t + 1)], n, out)
                }
                (&[a], 1) => super_tile::<1, 1>([a], [row(t)], n, out),
                (&[a], _) => super_tile::<1, 2>([a], [row(t), row(t + 1)], n, out),
                _ => unreachable!("tiles of four rows or one"),
            };
        }
    };
    match leading::<SuperRow, TILE_ROWS>(rows) {
        Some(rows) => {
            tile(&rows, out);
            TILE_ROWS
        }
        None => {
            let first = SuperRow::of(&rows[0]).expect("the caller matched a Q4_K row");
            tile(&[first], out);
            1
        }
    }
}

/// `out[r · stride + t] = rows[r] · activations[t]` for `R` Q4_K rows and `T` activation rows
/// rounded per super-block, in the lanes and order of [`super`]'s documentation: per pair of
/// blocks, one 32-byte load holds both blocks' nibbles; the low nibbles meet the pair's first
/// 32 activation bytes and the high ones the next 32 in `vpmaddubsw`, and `vpmaddwd` by the
/// blocks' scales (first block in lanes 0–3, second in 4–7) adds them into 32-bit lanes. Returns
/// `T`.
#[inline]
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma")]
fn super_tile<const R: usize, const T: usize>(
    rows: [SuperRow; R],
    activations: [SuperRows; T],
    stride: usize,
    out: &mut [f32],
) -> usize {
    let supers = rows[0].k.d.len();
    assert!(rows.iter().all(|r| r.quants.len() == 128 * supers
        && r.k.sc.len() == 8 * supers
        && r.k.m.len() == 8 * supers
        && r.k.dmin.len() == supers));
    assert!(activations.iter().all(|a| a.quants.len() == 256 * supers
        && a.scales.len() == supers
        && a.sums.len() == 8 * supers));
    assert!(out.len() > (R - 1) * stride + T - 1);
    let mask = _mm256_set1_epi8(0x0F);
    // SAFETY: `PAIR_SCALES` holds four vectors.
    let pair_scales: [__m256i; 4] =
        std::array::from_fn(|p| unsafe { _mm256_loadu_si256(PAIR_SCALES[p].as_ptr().cast()) });
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let mut mins = [[0f32; T]; R];
    for s in 0..supers {
        for row in &rows {
            for b in [8 * s, 8 * s + 4] {
                row.k.prefetch_ahead(row.quants, b, R.max(PREFETCH_ROWS));
            }
        }
        let mut lanes = [[_mm256_setzero_si256(); T]; R];
        let mut scales = [_mm256_setzero_si256(); R];
        for r in 0..R {
            // SAFETY: the row holds eight scales per super-block (asserted above).
            let sc = unsafe { _mm_loadl_epi64(rows[r].k.sc.as_ptr().add(8 * s).cast()) };
            let sc = _mm_cvtepu8_epi16(sc);
            scales[r] = _mm256_set_m128i(sc, sc);
        }
        for p in 0..4 {
            let mut bytes = [[_mm256_setzero_si256(); 2]; T];
            for t in 0..T {
                // SAFETY: 256 bytes per super-block (asserted above).
                unsafe {
                    let at = activations[t].quants.as_ptr().add(256 * s + 64 * p);
                    bytes[t] = [
                        _mm256_loadu_si256(at.cast()),
                        _mm256_loadu_si256(at.add(32).cast()),
                    ];
                }
            }
            for r in 0..R {
                // SAFETY: 16 bytes a block, eight blocks a super-block (asserted above).
                let pair = unsafe {
                    _mm256_loadu_si256(rows[r].quants.as_ptr().add(128 * s + 32 * p).cast())
                };
                let low = _mm256_and_si256(pair, mask);
                let high = _mm256_and_si256(_mm256_srli_epi16(pair, 4), mask);
                let block_scales = _mm256_shuffle_epi8(scales[r], pair_scales[p]);
                for t in 0..T {
                    let first =
                        _mm256_madd_epi16(_mm256_maddubs_epi16(low, bytes[t][0]), block_scales);
                    let second =
                        _mm256_madd_epi16(_mm256_maddubs_epi16(high, bytes[t][1]), block_scales);
                    lanes[r][t] = _mm256_add_epi32(lanes[r][t], _mm256_add_epi32(first, second));
                }
            }
        }
        for r in 0..R {
            // SAFETY: eight minimums per super-block (asserted above).
            let m = unsafe { _mm_loadl_epi64(rows[r].k.m.as_ptr().add(8 * s).cast()) };
            let m = _mm_cvtepu8_epi16(m);
            for t in 0..T {
                // SAFETY: eight sums per super-block (asserted above).
                let sums =
                    unsafe { _mm_loadu_si128(activations[t].sums.as_ptr().add(8 * s).cast()) };
                let minimums = integer_sum(_mm_madd_epi16(m, sums));
                let e = activations[t].scales[s];
                let scale = _mm256_set1_ps(rows[r].k.d[s] * e);
                acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes[r][t]), scale, acc[r][t]);
                mins[r][t] = (minimums as f32).mul_add(rows[r].k.dmin[s] * e, mins[r][t]);
            }
        }
    }
    for r in 0..R {
        for t in 0..T {
            out[r * stride + t] = lane_sum(acc[r][t]) + mins[r][t];
        }
    }
    T
}

/// For pair `p` of a super-block's blocks, the `vpshufb` that spreads block `2p`'s 16-bit
/// scale over the low half of a vector and block `2p + 1`'s over the high half, from the eight
/// scales repeated in both halves.
const PAIR_SCALES: [[u8; 32]; 4] = {
    let mut table = [[0u8; 32]; 4];
    let mut p = 0;
    while p < 4 {
        let mut i = 0;
        while i < 32 {
            let block = 2 * p + i / 16;
            table[p][i] = (2 * block + i % 2) as u8;
            i += 1;
        }
        p += 1;
    }
    table
};

/// The sum of four 32-bit integers.
#[inline(always)]
fn integer_sum(v: __m128i) -> i32 {
    // SAFETY: inlined only into the kernels, which have these instructions.
    unsafe {
        let v = _mm_add_epi32(v, _mm_unpackhi_epi64(v, v));
        _mm_cvtsi128_si32(_mm_add_epi32(v, _mm_shuffle_epi32::<1>(v)))
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
    // Q4_K rows are nibble rows too, but take the super-block tiles.
    match leading::<W, TILE_ROWS>(rows).filter(|tile| !tile.iter().any(W::super_blocks)) {
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

    /// Asks the caches for block `b` of the row `rows_ahead` rows on.
    fn prefetch_ahead(&self, b: usize, rows_ahead: usize);

    /// Whether this is a Q4_K row, multiplied by [`super_tile`] instead.
    fn super_blocks(&self) -> bool {
        false
    }

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
    #[inline(always)]
    fn prefetch_ahead(&self, b: usize, rows_ahead: usize) {
        NibbleRow::prefetch_ahead(self, b, rows_ahead);
    }

    fn blocks(&self) -> usize {
        self.scales.len()
    }

    fn super_blocks(&self) -> bool {
        self.k.is_some()
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
    #[inline(always)]
    fn prefetch_ahead(&self, b: usize, rows_ahead: usize) {
        ByteRow::prefetch_ahead(self, b, rows_ahead);
    }

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
        if b % 2 == 0 {
            for row in rows {
                row.prefetch_ahead(b, R.max(PREFETCH_ROWS));
            }
        }
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
