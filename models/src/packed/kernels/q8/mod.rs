//! Byte activations (`DRPO_CPU_INT8`): each block of 32 activations rounded to signed bytes
//! with one scale, as llama.cpp's Q8_0 does, so that a quantized weight block meets its
//! activations in integer multiply-adds and is never widened to f32. It trades exactness for
//! speed: the products are those of the rounded activations (docs/qwen2.md says how far the
//! logits move), so it is off unless asked for.
//!
//! A weight block `b` of scale `d`, minimum `m` and quants `q` times an activation block of
//! scale `e` and bytes `a` is `d·e · Σ q·a + m · e·Σ a`. The integer sums are exact; every
//! kernel adds the rest in the same order, so every kernel gives the same bits:
//!
//! - the products of lanes `4l .. 4l + 4` of a block are lane `l`'s integer (eight lanes, the
//!   width of AVX2's `vpmaddubsw` + `vpmaddwd`), then `acc[l] = fma(integer, d·e, acc[l])` over
//!   the blocks, then a tree sum of the eight lanes ([`super::tree_sum`]);
//! - the minimums' term (nibble rows only) in eight lanes by block (`b mod 8`), fused
//!   multiply-adds of `m` and `e·Σ a`, then a tree sum; added last.
//!
//! f32 rows (rare: no GGUF block type makes them) take the f32 activations as before.
//!
//! Q4_K rows (nibble rows that keep their integer scales) are multiplied as llama.cpp does: by
//! activations rounded per super-block of 256 with one scale `e` (its Q8_K), so that a
//! super-block's eight blocks add up in integers, each weighted by its 6-bit scale `sc`, before
//! one conversion to f32; the minimums' term likewise (`m` times the integer sum of each block's
//! bytes). The integers are exact; the lanes and order every kernel follows:
//!
//! - blocks go in pairs (`2p`, `2p + 1`); lanes 0–3 hold the first block of a pair, 4–7 the
//!   second, lane `l` (of the block's four) the products of its weights `4l .. 4l + 4` and
//!   `16 + 4l .. 16 + 4l + 4`, times the block's `sc`; a super-block's four pairs add into the
//!   same eight integers;
//! - per super-block `s`, `acc[l] = fma(integer, d[s]·e[s], acc[l])`, then a tree sum;
//! - the minimums: per super-block the integer `Σ m·Σa` over its blocks, then
//!   `mins = fma(integer, −dmin[s]·e[s], mins)` in super-block order; added last.
//!
//! The super-block activations are kept in the order the vector kernels read them: for each
//! pair of blocks, the first 16 bytes of each block, then the last 16 of each.

use super::{KRow, MulAdd, NibbleRow, Row, generic, tree_sum};

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2;

/// Lanes of the integer sums of a block.
const LANES: usize = 8;

/// Activation rows rounded to bytes, block by block, and per super-block where the weights
/// have Q4_K rows.
pub(in crate::packed) struct ByteActivations {
    cols: usize,
    quants: Vec<i8>,
    /// Per block: `e`, the scale of its bytes.
    scales: Vec<f32>,
    /// Per block: `e · Σ a`, what a weight block's minimum is multiplied by.
    sums: Vec<f32>,
    /// The rows rounded per super-block of 256, for Q4_K rows.
    coarse: Option<SuperBytes>,
}

/// Activation rows rounded per super-block of 256, in the vector kernels' order (module
/// documentation).
struct SuperBytes {
    quants: Vec<i8>,
    /// Per super-block: `e`.
    scales: Vec<f32>,
    /// Per block of 32: the sum of its bytes.
    sums: Vec<i16>,
}

/// Rounds `values` to bytes with one scale `e = max |x| / 127`, `a = round(x / e)`: returns `e`.
fn round_to_bytes(values: &[f32], quants: &mut [i8]) -> f32 {
    let max = values.iter().fold(0f32, |max, v| max.max(v.abs()));
    let scale = max / 127.0;
    let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    for (q, v) in quants.iter_mut().zip(values) {
        // Within ±127 by construction; the clamp keeps a non-finite input in range.
        *q = (v * inverse).round().clamp(-127.0, 127.0) as i8;
    }
    scale
}

/// The sum of a block's bytes.
fn byte_sum(quants: &[i8]) -> i32 {
    quants.iter().map(|&q| i32::from(q)).sum()
}

/// Where element `j` of a super-block's block `b` lies in its [`SuperBytes`] order.
fn super_position(b: usize, j: usize) -> usize {
    64 * (b / 2) + 32 * (j / 16) + 16 * (b % 2) + j % 16
}

impl ByteActivations {
    /// The `n` rows of `x` rounded: per block `e = max |x| / 127` and `a = round(x / e)`, and
    /// with `super_blocks` per super-block of 256 too (where the rows are whole super-blocks).
    /// `None` unless the rows are whole blocks of 32.
    pub(in crate::packed) fn quantize(x: &[f32], n: usize, super_blocks: bool) -> Option<Self> {
        let cols = x.len() / n;
        if !cols.is_multiple_of(32) {
            return None;
        }
        let blocks = x.len() / 32;
        let mut quants = vec![0i8; x.len()];
        let (mut scales, mut sums) = (Vec::with_capacity(blocks), Vec::with_capacity(blocks));
        for (block, quants) in x.chunks_exact(32).zip(quants.chunks_exact_mut(32)) {
            let scale = round_to_bytes(block, quants);
            scales.push(scale);
            sums.push(scale * byte_sum(quants) as f32);
        }
        let coarse = (super_blocks && cols.is_multiple_of(256)).then(|| {
            let mut coarse = SuperBytes {
                quants: vec![0i8; x.len()],
                scales: Vec::with_capacity(blocks / 8),
                sums: Vec::with_capacity(blocks),
            };
            let mut rounded = [0i8; 256];
            for (values, out) in x.chunks_exact(256).zip(coarse.quants.chunks_exact_mut(256)) {
                coarse.scales.push(round_to_bytes(values, &mut rounded));
                for (b, block) in rounded.chunks_exact(32).enumerate() {
                    // Within ±32·127, so an i16.
                    coarse.sums.push(byte_sum(block) as i16);
                    for (j, &q) in block.iter().enumerate() {
                        out[super_position(b, j)] = q;
                    }
                }
            }
            coarse
        });
        Some(Self {
            cols,
            quants,
            scales,
            sums,
            coarse,
        })
    }

    /// Rows `start .. start + m`.
    pub(in crate::packed) fn rows(&self, start: usize, m: usize) -> ByteRows<'_> {
        let all = ByteRows {
            cols: self.cols,
            quants: &self.quants,
            scales: &self.scales,
            sums: &self.sums,
            coarse: self.coarse.as_ref().map(|c| SuperRows {
                quants: &c.quants,
                scales: &c.scales,
                sums: &c.sums,
            }),
        };
        all.rows(start, m)
    }
}

/// A run of rows of [`ByteActivations`].
#[derive(Clone, Copy)]
pub(in crate::packed) struct ByteRows<'a> {
    cols: usize,
    quants: &'a [i8],
    scales: &'a [f32],
    sums: &'a [f32],
    coarse: Option<SuperRows<'a>>,
}

/// A run of rows of [`SuperBytes`].
#[derive(Clone, Copy)]
struct SuperRows<'a> {
    quants: &'a [i8],
    scales: &'a [f32],
    sums: &'a [i16],
}

impl<'a> ByteRows<'a> {
    /// Rows `start .. start + m` of these.
    fn rows(&self, start: usize, m: usize) -> ByteRows<'a> {
        let blocks = self.cols / 32;
        ByteRows {
            cols: self.cols,
            quants: &self.quants[start * self.cols..][..m * self.cols],
            scales: &self.scales[start * blocks..][..m * blocks],
            sums: &self.sums[start * blocks..][..m * blocks],
            coarse: self.coarse.map(|c| SuperRows {
                quants: &c.quants[start * self.cols..][..m * self.cols],
                scales: &c.scales[start * blocks / 8..][..m * blocks / 8],
                sums: &c.sums[start * blocks..][..m * blocks],
            }),
        }
    }

    /// Row `t`.
    fn row(&self, t: usize) -> ByteRows<'a> {
        self.rows(t, 1)
    }

    /// The rows rounded per super-block, which Q4_K rows take.
    fn super_blocks(&self) -> SuperRows<'a> {
        self.coarse
            .expect("a matrix with Q4_K rows rounds its activations per super-block too")
    }
}

/// `(rows, x, activations, n, out)`: `out[r · n + b] = rows[r] · x[b]` with the activations
/// rounded to bytes (`activations`, the same `n` rows); f32 weight rows take `x` as it is.
pub(in crate::packed) type ByteProducts = fn(&[Row], &[f32], ByteRows, usize, &mut [f32]);

/// One weight row and one activation row at a time, in the lanes and order of the module
/// documentation.
pub(super) fn products<F: MulAdd>(
    rows: &[Row],
    x: &[f32],
    activations: ByteRows,
    n: usize,
    out: &mut [f32],
) {
    for (row, out) in rows.iter().zip(out.chunks_exact_mut(n)) {
        if let Row::Dense(row) = row {
            generic::dots::<F>(row.0, x, out);
            continue;
        }
        for (t, out) in out.iter_mut().enumerate() {
            let a = activations.row(t);
            *out = match row {
                Row::Nibbles(NibbleRow {
                    quants, k: Some(k), ..
                }) => super_products::<F>(quants, k, a.super_blocks()),
                Row::Nibbles(row) => {
                    let mut acc = [0f32; LANES];
                    for b in 0..row.scales.len() {
                        let q = &row.quants[16 * b..][..16];
                        let bytes = &a.quants[32 * b..][..32];
                        let weight = |j: usize| if j < 16 { q[j] & 0xF } else { q[j - 16] >> 4 };
                        let scale = row.scales[b] * a.scales[b];
                        for (l, acc) in acc.iter_mut().enumerate() {
                            let sum: i32 = (4 * l..4 * l + 4)
                                .map(|j| i32::from(weight(j)) * i32::from(bytes[j]))
                                .sum();
                            *acc = F::mul_add(sum as f32, scale, *acc);
                        }
                    }
                    tree_sum(&mut acc) + minimums::<F>(row.mins, a.sums)
                }
                Row::Bytes(row) => {
                    let mut acc = [0f32; LANES];
                    for b in 0..row.blocks() {
                        let q = &row.quants[32 * b..][..32];
                        let bytes = &a.quants[32 * b..][..32];
                        for (l, acc) in acc.iter_mut().enumerate() {
                            let sum: i32 = (4 * l..4 * l + 4)
                                .map(|j| i32::from(q[j]) * i32::from(bytes[j]))
                                .sum();
                            let scale = row.scale(b, 4 * l) * a.scales[b];
                            *acc = F::mul_add(sum as f32, scale, *acc);
                        }
                    }
                    tree_sum(&mut acc)
                }
                Row::Dense(_) => unreachable!("f32 rows were multiplied above"),
            };
        }
    }
}

/// A Q4_K row (its nibbles `quants` and integer scales `k`) times one activation row rounded per
/// super-block, in the lanes and order of the module documentation.
fn super_products<F: MulAdd>(quants: &[u8], k: &KRow, a: SuperRows) -> f32 {
    let mut acc = [0f32; LANES];
    let mut mins = 0f32;
    for s in 0..k.d.len() {
        let mut lanes = [0i32; LANES];
        let mut minimums = 0i32;
        let bytes = &a.quants[256 * s..][..256];
        for b in 8 * s..8 * s + 8 {
            let q = &quants[16 * b..][..16];
            let sc = i32::from(k.sc[b]);
            for l in 0..4 {
                let sum: i32 = (4 * l..4 * l + 4)
                    .map(|j| {
                        i32::from(q[j] & 0xF) * i32::from(bytes[super_position(b % 8, j)])
                            + i32::from(q[j] >> 4) * i32::from(bytes[super_position(b % 8, 16 + j)])
                    })
                    .sum();
                lanes[4 * (b % 2) + l] += sc * sum;
            }
            minimums += i32::from(k.m[b]) * i32::from(a.sums[b]);
        }
        let scale = k.d[s] * a.scales[s];
        for (acc, &lane) in acc.iter_mut().zip(&lanes) {
            *acc = F::mul_add(lane as f32, scale, *acc);
        }
        mins = F::mul_add(minimums as f32, k.dmin[s] * a.scales[s], mins);
    }
    tree_sum(&mut acc) + mins
}

/// `Σ_b mins[b] · sums[b]`, in eight lanes by block, then a tree sum.
#[inline(always)]
fn minimums<F: MulAdd>(mins: &[f32], sums: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    for (b, (&m, &s)) in mins.iter().zip(sums).enumerate() {
        lanes[b % LANES] = F::mul_add(m, s, lanes[b % LANES]);
    }
    tree_sum(&mut lanes)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{every_storage, rows_of};
    use super::super::{Fused, available_kernels};
    use super::*;
    use crate::packed::PackedMatrix;
    use crate::packed::tests::{activations, q4_k_matrix, reference};

    /// `matrix` times `n` rows of activations rounded to bytes (per super-block too with
    /// `super_blocks`), by the portable products and by every kernel of this CPU: the portable
    /// products lie within the rounding's bound of the exact ones (each activation moves by at
    /// most half its step, `step(rounded, t, c)` for row `t`, column `c`), the vector kernels give
    /// their bits, and the generic kernel (two roundings where the others fuse) comes close.
    fn check_every_kernel(
        matrix: &PackedMatrix,
        n: usize,
        super_blocks: bool,
        step: fn(&ByteActivations, usize, usize) -> f32,
    ) {
        let (rows, cols) = (matrix.rows(), matrix.cols());
        let weights = matrix.to_f32();
        let matrix_rows = rows_of(matrix);
        let x = activations(n, cols);
        let rounded = ByteActivations::quantize(&x, n, super_blocks).expect("whole blocks");
        let mut portable = vec![0f32; rows * n];
        products::<Fused>(&matrix_rows, &x, rounded.rows(0, n), n, &mut portable);
        let want = reference(&weights, &x, rows, cols, n);
        for (r, out) in portable.chunks_exact(n).enumerate() {
            for (t, &got) in out.iter().enumerate() {
                let bound: f32 = (0..cols)
                    .map(|c| weights[r * cols + c].abs() * step(&rounded, t, c))
                    .sum::<f32>()
                    / 2.0;
                let want = want[t * rows + r];
                assert!((got - want).abs() <= bound * 1.01 + 1e-4, "n={n} r={r}");
            }
        }
        for kernel in available_kernels() {
            let mut got = vec![0f32; rows * n];
            (kernel.byte_products)(&matrix_rows, &x, rounded.rows(0, n), n, &mut got);
            let name = kernel.name;
            if name == "generic" {
                for (g, p) in got.iter().zip(&portable) {
                    assert!((g - p).abs() <= 1e-4 * (1.0 + p.abs()), "{name} n={n}");
                }
            } else {
                assert_eq!(got, portable, "{name} n={n}");
            }
        }
    }

    #[test]
    fn q4_k_rows_take_super_blocks_in_every_kernel_bit_for_bit_near_the_exact_products() {
        // Five rows: a tile of four and a lone row; up to five activation rows: tiles of one
        // and two; two super-blocks a row.
        let matrix = q4_k_matrix(5, 512);
        for n in 1..=5 {
            check_every_kernel(&matrix, n, true, |rounded, t, c| {
                rounded.coarse.as_ref().expect("super-blocks").scales[t * 2 + c / 256]
            });
        }
    }

    #[test]
    fn super_block_rounding_keeps_each_value_within_half_a_step_in_the_kernels_order() {
        let x = activations(2, 512);
        let rounded = ByteActivations::quantize(&x, 2, true).expect("whole blocks");
        let coarse = rounded.coarse.expect("super-blocks");
        for (s, values) in x.chunks_exact(256).enumerate() {
            let scale = coarse.scales[s];
            let quants = &coarse.quants[256 * s..][..256];
            for (j, &v) in values.iter().enumerate() {
                let q = quants[super_position(j / 32, j % 32)];
                assert!((v - scale * f32::from(q)).abs() <= scale / 2.0 * 1.0001);
            }
            for b in 0..8 {
                let sum: i32 = (0..32)
                    .map(|j| i32::from(quants[super_position(b, j)]))
                    .sum();
                assert_eq!(i32::from(coarse.sums[8 * s + b]), sum);
            }
        }
        let without = ByteActivations::quantize(&x, 2, false).expect("whole blocks");
        assert!(
            without.coarse.is_none(),
            "only matrices with Q4_K rows ask for them"
        );
    }

    #[test]
    fn rounding_keeps_each_block_within_half_a_step() {
        let x = activations(3, 96);
        let bytes = ByteActivations::quantize(&x, 3, false).expect("whole blocks");
        for (b, block) in x.chunks_exact(32).enumerate() {
            let scale = bytes.scales[b];
            let quants = &bytes.quants[32 * b..][..32];
            assert!(
                quants.iter().any(|q| q.abs() == 127),
                "block {b} uses the full range"
            );
            for (v, &q) in block.iter().zip(quants) {
                assert!((v - scale * f32::from(q)).abs() <= scale / 2.0 * 1.0001);
            }
            let sum: i32 = quants.iter().map(|&q| i32::from(q)).sum();
            assert_eq!(bytes.sums[b], scale * sum as f32);
        }
        assert!(
            ByteActivations::quantize(&[0.5; 48], 1, false).is_none(),
            "48 is no whole block"
        );
        let zeros = ByteActivations::quantize(&[0.0; 32], 1, false).expect("one block");
        assert!(zeros.quants.iter().all(|&q| q == 0) && zeros.scales == [0.0]);
    }

    #[test]
    fn every_kernel_gives_the_bits_of_the_portable_products_near_the_exact_ones() {
        // Five rows: a tile of four and a lone row; up to seven activation rows: every tile
        // of activation rows and its remainders.
        let (rows, cols) = (5, 96);
        for matrix in &every_storage(rows, cols) {
            for n in 1..=7 {
                check_every_kernel(matrix, n, false, |rounded, t, c| {
                    rounded.scales[t * 3 + c / 32]
                });
            }
        }
    }
}
