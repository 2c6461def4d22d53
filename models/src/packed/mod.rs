//! Quantized weight matrices kept packed in memory and multiplied on the CPU without
//! dequantizing the whole matrix.
//!
//! Batch-1 decoding reads every weight once per token, so its speed is bounded by how many bytes
//! the weights take: a Q4_1 matrix is about 0.6 bytes a weight, its f32 copy 4. A
//! [`PackedMatrix`] keeps quantized blocks (with their scales widened to f32 at load time) and
//! computes `x · Wᵀ` a tile of weight rows at a time. One or two activation rows are multiplied
//! straight from the packed blocks; more, from the tile's rows dequantized once into a buffer
//! that stays in L1. Either way a weight is read from memory once per matmul whatever the number
//! of rows. Tasks of weight rows are shared between the calling thread and the helper threads
//! of `crate::workers`, which stay awake between the matmuls of a decode step.
//!
//! Results are deterministic and independent of the batch: each output is one weight row's dot
//! product with one activation row, accumulated in 32 lanes in a fixed order and summed by a
//! fixed tree, whichever thread computes it, whatever else is in the batch and whichever tile
//! it falls in. The kernel is compiled for AVX-512, for AVX2 with FMA and for the baseline
//! target, and chosen at run time.
//!
//! - `storage`: how rows are held (nibble blocks, byte blocks, f32 rows);
//! - `rows`: one row of a storage, borrowed as the kernels read it;
//! - `kernels`: the products, one module per instruction set, and the choice among them.
//!
//! Exactness: a dequantized weight is `scale · q + min` computed with one rounding, which is
//! the exact value of ggml's dequantization for Q4_0, Q4_1, Q4_K, Q5_0, Q8_0 and Q6_K (the
//! products fit in f32's mantissa; Q6_K's scale is its block scale times its sub-block's, which
//! ggml also rounds once before the multiplication by `q`). Other types are stored as f32 rows.

mod kernels;
mod rows;
mod storage;

use crate::kernel_options::KernelOptions;
use kernels::q8::ByteActivations;
use kernels::{LineAligned, MAX_TILE_ROWS};
use rows::Row;
use storage::{KScales, Storage, same_kind};

/// Weight rows per task (a task's rows go to one thread).
const ROWS_PER_TASK: usize = 32;

/// The most bytes of activations a task multiplies its weight rows by in one pass. A prefill's
/// activations (hundreds of rows) outgrow the caches, and each weight row would stream all of
/// them from memory again; a pass's share stays in the caches (L2 and the shared L3) while the
/// task's rows go over it. Each pass dequantizes the task's rows again, so passes are as long
/// as the caches allow (docs/qwen2.md has the measurement that chose the size).
const ACTIVATION_PASS_BYTES: usize = 1024 * 1024;

/// A weight matrix `[rows, cols]` (one row per output, as checkpoints store projections).
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    rows: usize,
    cols: usize,
    /// Consecutive row ranges, each in one storage (a fused projection can mix types).
    groups: Vec<(usize, Storage)>,
}

impl PackedMatrix {
    /// A matrix of nibble blocks: each block of 32 weights is `scale · q + min` with `q` in
    /// `0..16`, its 16 bytes holding elements 0–15 in their low nibbles and 16–31 in their high
    /// ones; blocks in row-major order, `cols / 32` a row.
    ///
    /// # Panics
    /// If `cols` is not a multiple of 32, or the blocks are not `rows × cols / 32`.
    pub fn from_nibbles(
        scales: Vec<f32>,
        mins: Vec<f32>,
        quants: Vec<u8>,
        rows: usize,
        cols: usize,
    ) -> Self {
        let blocks = Self::blocks(rows, cols);
        assert!(
            scales.len() == blocks && mins.len() == blocks && quants.len() == 16 * blocks,
            "{blocks} nibble blocks for {rows}×{cols} weights"
        );
        let storage = Storage::Nibbles {
            scales,
            mins,
            quants,
            k: None,
        };
        Self {
            rows,
            cols,
            groups: vec![(rows, storage)],
        }
    }

    /// A matrix of Q4_K super-blocks: nibble blocks (as [`from_nibbles`](Self::from_nibbles)
    /// takes them) whose weight `j` of block `b` in super-block `s` (eight blocks) is
    /// `d[s] · sc[b] · q − dmin[s] · m[b]`, with `sc` and `m` the 6-bit scales and minimums.
    /// The f32 products use each block's scale and minimum rounded once, as ggml dequantizes;
    /// the byte products keep the integers (see `kernels::q8`).
    ///
    /// # Panics
    /// If `cols` is not a multiple of 256, or the parts do not hold `rows × cols` weights.
    #[allow(clippy::too_many_arguments)]
    pub fn from_q4_k(
        d: Vec<f32>,
        dmin: Vec<f32>,
        sc: Vec<u8>,
        m: Vec<u8>,
        quants: Vec<u8>,
        rows: usize,
        cols: usize,
    ) -> Self {
        assert!(
            cols.is_multiple_of(256),
            "rows of {cols} weights are not super-blocks of 256"
        );
        let blocks = Self::blocks(rows, cols);
        assert!(
            d.len() == blocks / 8
                && dmin.len() == blocks / 8
                && sc.len() == blocks
                && m.len() == blocks,
            "{} super-blocks for {rows}×{cols} weights",
            blocks / 8
        );
        let scales = (0..blocks).map(|b| d[b / 8] * f32::from(sc[b])).collect();
        let mins = (0..blocks)
            .map(|b| -(dmin[b / 8] * f32::from(m[b])))
            .collect();
        let mut matrix = Self::from_nibbles(scales, mins, quants, rows, cols);
        if let Storage::Nibbles { k, .. } = &mut matrix.groups[0].1 {
            *k = Some(KScales {
                d,
                dmin: dmin.into_iter().map(|v| -v).collect(),
                sc,
                m,
            });
        }
        matrix
    }

    /// A matrix of byte blocks: each block of 32 weights is `scale · q` with `q` a signed byte;
    /// blocks in row-major order, `cols / 32` a row.
    ///
    /// # Panics
    /// If `cols` is not a multiple of 32, or the blocks are not `rows × cols / 32`.
    pub fn from_bytes(scales: Vec<f32>, quants: Vec<i8>, rows: usize, cols: usize) -> Self {
        Self::byte_blocks(scales, quants, 0, rows, cols)
    }

    /// A matrix of byte blocks with a scale for each half: weights `16h .. 16h + 16` of block
    /// `b` are `scales[2b + h] · q` (Q6_K's sub-blocks of 16); blocks in row-major order.
    ///
    /// # Panics
    /// If `cols` is not a multiple of 32, or the blocks are not `rows × cols / 32`.
    pub fn from_half_scaled_bytes(
        scales: Vec<f32>,
        quants: Vec<i8>,
        rows: usize,
        cols: usize,
    ) -> Self {
        Self::byte_blocks(scales, quants, 1, rows, cols)
    }

    /// Byte blocks with `1 << halves` scales a block.
    fn byte_blocks(
        scales: Vec<f32>,
        quants: Vec<i8>,
        halves: usize,
        rows: usize,
        cols: usize,
    ) -> Self {
        let blocks = Self::blocks(rows, cols);
        assert!(
            scales.len() == blocks << halves && quants.len() == 32 * blocks,
            "{blocks} byte blocks with {} scales each for {rows}×{cols} weights",
            1 << halves
        );
        let storage = Storage::Bytes {
            scales,
            quants,
            halves,
        };
        Self {
            rows,
            cols,
            groups: vec![(rows, storage)],
        }
    }

    /// The blocks of 32 of a `rows × cols` matrix.
    fn blocks(rows: usize, cols: usize) -> usize {
        assert!(
            cols.is_multiple_of(32),
            "rows of {cols} weights are not blocks of 32"
        );
        rows * cols / 32
    }

    /// A matrix of f32 rows.
    ///
    /// # Panics
    /// If `values` does not hold `rows × cols` elements.
    pub fn from_f32(values: Vec<f32>, rows: usize, cols: usize) -> Self {
        assert_eq!(values.len(), rows * cols, "{rows}×{cols} f32 values");
        Self {
            rows,
            cols,
            groups: vec![(rows, Storage::Dense(values))],
        }
    }

    /// The matrices' rows one after the other (a fused projection).
    ///
    /// # Panics
    /// If the parts differ in their number of columns.
    pub fn stack(parts: Vec<PackedMatrix>) -> Self {
        let cols = parts.first().map_or(0, |p| p.cols);
        assert!(
            parts.iter().all(|p| p.cols == cols),
            "stacked matrices differ in columns"
        );
        Self {
            rows: parts.iter().map(|p| p.rows).sum(),
            cols,
            groups: parts.into_iter().flat_map(|p| p.groups).collect(),
        }
    }

    /// The same matrix with its rows reordered: row `i` of the result is row `order[i]` of this.
    ///
    /// # Panics
    /// If `order` is not a permutation of this matrix's rows.
    pub fn permute_rows(&self, order: &[usize]) -> Self {
        assert_eq!(order.len(), self.rows, "a row order for {} rows", self.rows);
        let mut groups: Vec<(usize, Storage)> = Vec::new();
        for &row in order {
            let (storage, index) = self.locate(row);
            match groups.last_mut() {
                Some((count, last)) if same_kind(last, storage) => {
                    last.append_row(storage, index, self.cols);
                    *count += 1;
                }
                _ => {
                    let mut fresh = storage.empty_like();
                    fresh.append_row(storage, index, self.cols);
                    groups.push((1, fresh));
                }
            }
        }
        Self {
            rows: self.rows,
            cols: self.cols,
            groups,
        }
    }

    /// Number of rows (outputs).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (inputs).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes the matrix takes in memory (what a matrix-vector product reads).
    pub fn bytes(&self) -> usize {
        self.groups
            .iter()
            .map(|(_, s)| match s {
                Storage::Nibbles {
                    scales,
                    mins,
                    quants,
                    k,
                } => {
                    let k = k.as_ref().map_or(0, |k| {
                        4 * (k.d.len() + k.dmin.len()) + k.sc.len() + k.m.len()
                    });
                    4 * (scales.len() + mins.len()) + quants.len() + k
                }
                Storage::Bytes { scales, quants, .. } => 4 * scales.len() + quants.len(),
                Storage::Dense(values) => 4 * values.len(),
            })
            .sum()
    }

    /// Row `row` in f32 (an embedding lookup).
    pub fn row(&self, row: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.cols];
        let (storage, index) = self.locate(row);
        // `scale · q` is exact in f32, so both roundings give the same weights.
        kernels::generic::dequantize::<kernels::Separate>(storage.row(index, self.cols), &mut out);
        out
    }

    /// Every row in f32, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        (0..self.rows).flat_map(|r| self.row(r)).collect()
    }

    /// `x · Wᵀ`: `x` holds `n` rows of [`cols`](Self::cols) values; the result holds `n` rows of
    /// [`rows`](Self::rows) values. `options.cpu_matmul_kernel` picks the kernel;
    /// `options.cpu_int8_activations` rounds the activations to bytes first (`kernels::q8`).
    ///
    /// # Panics
    /// If `x` does not hold `n` rows.
    pub fn matmul(&self, x: &[f32], n: usize, options: &KernelOptions) -> Vec<f32> {
        assert_eq!(x.len(), n * self.cols, "{n} rows of {} values", self.cols);
        if n == 0 {
            return Vec::new();
        }
        let kernel = kernels::chosen(options.cpu_matmul_kernel.as_deref());
        let super_blocks = self
            .groups
            .iter()
            .any(|(_, s)| matches!(s, Storage::Nibbles { k: Some(_), .. }));
        let bytes = options
            .cpu_int8_activations
            .then(|| ByteActivations::quantize(x, n, super_blocks))
            .flatten();
        // The byte products read f32 activations (for f32 weight rows) as they are.
        let arranged = match bytes {
            Some(_) => LineAligned::copy_of(x),
            None => kernel.arrange(x, n),
        };
        let x = arranged.as_slice();
        let multiply =
            |rows: &[Row], start: usize, m: usize, buffer: &mut [f32], out: &mut [f32]| {
                let x = &x[start * self.cols..(start + m) * self.cols];
                match &bytes {
                    Some(bytes) => (kernel.byte_products)(rows, x, bytes.rows(start, m), m, out),
                    None => (kernel.products)(rows, x, m, buffer, out),
                }
            };
        let pass_rows = (ACTIVATION_PASS_BYTES / (4 * self.cols)).max(1);
        // Computed transposed, `[rows, n]`, so that each task owns a contiguous block.
        let mut transposed = vec![0f32; self.rows * n];
        let mut tasks: Vec<&mut [f32]> = transposed.chunks_mut(ROWS_PER_TASK * n).collect();
        crate::workers::for_each_mut(
            &mut tasks,
            || {
                let buffer = LineAligned::zeros(MAX_TILE_ROWS * self.cols);
                (buffer, Vec::with_capacity(ROWS_PER_TASK), Vec::new())
            },
            |(buffer, rows, pass_out), task, out| {
                let first = task * ROWS_PER_TASK;
                let task_rows = out.len() / n;
                rows.clear();
                rows.extend(self.rows_in(first..first + task_rows));
                if n <= pass_rows {
                    multiply(rows, 0, n, buffer.as_mut_slice(), out);
                    return;
                }
                // A row's products do not depend on the other rows of its pass (see the module
                // documentation), so passes give the bits of one pass over all rows.
                for start in (0..n).step_by(pass_rows) {
                    let m = pass_rows.min(n - start);
                    pass_out.resize(task_rows * m, 0.0);
                    multiply(rows, start, m, buffer.as_mut_slice(), pass_out);
                    for (out, pass_out) in out.chunks_exact_mut(n).zip(pass_out.chunks_exact(m)) {
                        out[start..start + m].copy_from_slice(pass_out);
                    }
                }
            },
        );
        let mut result = vec![0f32; n * self.rows];
        for (r, column) in transposed.chunks_exact(n).enumerate() {
            for (b, &value) in column.iter().enumerate() {
                result[b * self.rows + r] = value;
            }
        }
        result
    }

    /// Rows `range` in order, as the kernels read them.
    fn rows_in(&self, range: std::ops::Range<usize>) -> impl Iterator<Item = Row<'_>> {
        let mut group_start = 0;
        self.groups.iter().flat_map(move |(count, storage)| {
            let group = group_start..group_start + count;
            group_start += count;
            let rows = range.start.max(group.start)..range.end.min(group.end);
            rows.map(move |row| storage.row(row - group.start, self.cols))
        })
    }

    /// The storage holding `row` and the row's index within it.
    fn locate(&self, mut row: usize) -> (&Storage, usize) {
        for (count, storage) in &self.groups {
            if row < *count {
                return (storage, row);
            }
            row -= count;
        }
        panic!("row beyond a {}-row matrix", self.rows)
    }
}

/// The name of the packed-matmul kernel `options` choose on this CPU (for benchmark reports).
pub fn kernel_name(options: &KernelOptions) -> &'static str {
    kernels::chosen(options.cpu_matmul_kernel.as_deref()).name
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A matrix of nibble blocks with varied scales, minimums and nibbles.
    pub(crate) fn nibble_matrix(rows: usize, cols: usize) -> PackedMatrix {
        let blocks = rows * cols / 32;
        let scales = (0..blocks).map(|b| 0.01 + 0.003 * (b % 7) as f32).collect();
        let mins = (0..blocks).map(|b| -0.05 + 0.01 * (b % 5) as f32).collect();
        let quants = (0..blocks)
            .flat_map(|b| (0..16).map(move |j| ((b * 7 + j * 13) % 256) as u8))
            .collect();
        PackedMatrix::from_nibbles(scales, mins, quants, rows, cols)
    }

    /// A matrix of Q4_K super-blocks with varied scales, minimums and nibbles.
    pub(crate) fn q4_k_matrix(rows: usize, cols: usize) -> PackedMatrix {
        let blocks = rows * cols / 32;
        let d = (0..blocks / 8)
            .map(|s| 0.001 + 0.0003 * (s % 5) as f32)
            .collect();
        let dmin = (0..blocks / 8)
            .map(|s| 0.002 + 0.0001 * (s % 3) as f32)
            .collect();
        let sc = (0..blocks).map(|b| ((b * 11 + 5) % 64) as u8).collect();
        let m = (0..blocks).map(|b| ((b * 7 + 3) % 64) as u8).collect();
        let quants = (0..blocks * 16)
            .map(|i| ((i * 29 + i / 5) % 256) as u8)
            .collect();
        PackedMatrix::from_q4_k(d, dmin, sc, m, quants, rows, cols)
    }

    /// A matrix of byte blocks with varied bytes and, with `halves`, a scale for each half.
    pub(crate) fn byte_matrix(rows: usize, cols: usize, halves: usize) -> PackedMatrix {
        let blocks = rows * cols / 32;
        let scales = (0..blocks << halves)
            .map(|s| 0.02 + 0.005 * (s % 9) as f32)
            .collect();
        let quants = (0..blocks * 32)
            .map(|i| ((i * 19 + i / 7) % 256) as u8 as i8)
            .collect();
        if halves == 0 {
            PackedMatrix::from_bytes(scales, quants, rows, cols)
        } else {
            PackedMatrix::from_half_scaled_bytes(scales, quants, rows, cols)
        }
    }

    /// `x · Wᵀ` in f64, rounded once.
    pub(crate) fn reference(
        weights: &[f32],
        x: &[f32],
        rows: usize,
        cols: usize,
        n: usize,
    ) -> Vec<f32> {
        (0..n)
            .flat_map(|b| {
                (0..rows).map(move |r| {
                    (0..cols)
                        .map(|c| f64::from(weights[r * cols + c]) * f64::from(x[b * cols + c]))
                        .sum::<f64>() as f32
                })
            })
            .collect()
    }

    /// The default kernels with the activations rounded to bytes.
    fn byte_options() -> KernelOptions {
        KernelOptions {
            cpu_int8_activations: true,
            ..KernelOptions::default()
        }
    }

    /// `n` rows of `cols` varied activations.
    pub(crate) fn activations(n: usize, cols: usize) -> Vec<f32> {
        (0..n * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect()
    }

    #[test]
    fn tiles_never_mix_storage_kinds() {
        // Q4_1, f32 and Q8_0 rows in runs of 3, 1 and 2: no run fills a tile of four, and every
        // tile boundary falls inside a run of one kind or between kinds.
        let cols = 64;
        let q8: Vec<i8> = (0..2 * cols / 32)
            .flat_map(|b| (0..32).map(move |j| ((b * 19 + j * 23) % 256) as u8 as i8))
            .collect();
        let dense: Vec<f32> = (0..cols).map(|i| (i as f32 - 30.0) / 40.0).collect();
        let parts = vec![
            nibble_matrix(3, cols),
            PackedMatrix::from_f32(dense, 1, cols),
            PackedMatrix::from_bytes(vec![0.05; 2 * cols / 32], q8, 2, cols),
        ];
        let stacked = PackedMatrix::stack(parts);
        let weights = stacked.to_f32();
        for n in [1, 2, 5, 8] {
            let x = activations(n, cols);
            let got = stacked.matmul(&x, n, &KernelOptions::default());
            let want = reference(&weights, &x, stacked.rows(), cols, n);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "n={n}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn half_scaled_byte_rows_take_one_scale_for_each_half() {
        let cols = 64;
        let matrix = byte_matrix(2, cols, 1);
        let Storage::Bytes { scales, quants, .. } = &matrix.groups[0].1 else {
            unreachable!("byte_matrix holds byte blocks")
        };
        for r in 0..2 {
            let want: Vec<f32> = (0..cols)
                .map(|c| scales[(r * cols + c) / 16] * f32::from(quants[r * cols + c]))
                .collect();
            assert_eq!(matrix.row(r), want, "row {r}");
        }
    }

    #[test]
    fn permuting_keeps_one_scale_and_half_scaled_byte_rows_apart() {
        let cols = 64;
        let stacked = PackedMatrix::stack(vec![byte_matrix(2, cols, 0), byte_matrix(2, cols, 1)]);
        let order = [0, 2, 1, 3];
        let permuted = stacked.permute_rows(&order);
        assert_eq!(
            permuted.groups.len(),
            4,
            "each row's scales stay its own kind"
        );
        for (i, &from) in order.iter().enumerate() {
            assert_eq!(permuted.row(i), stacked.row(from));
        }
        let x = activations(3, cols);
        let weights = permuted.to_f32();
        let got = permuted.matmul(&x, 3, &KernelOptions::default());
        let want = reference(&weights, &x, 4, cols, 3);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{g} vs {w}");
        }
    }

    #[test]
    fn a_row_does_not_depend_on_the_rest_of_the_batch() {
        let rows = 40;
        for packed in [nibble_matrix(rows, 64), q4_k_matrix(rows, 512)] {
            let cols = packed.cols();
            let x = activations(7, cols);
            for options in [KernelOptions::default(), byte_options()] {
                let batch = packed.matmul(&x, 7, &options);
                for b in 0..7 {
                    let alone = packed.matmul(&x[b * cols..(b + 1) * cols], 1, &options);
                    assert_eq!(alone, batch[b * rows..(b + 1) * rows], "row {b}");
                }
            }
        }
    }

    #[test]
    fn q4_k_rows_keep_their_integer_scales_through_stacking_and_permuting() {
        // Q4_K rows after Q4_1 rows (a fused projection of mixed types), permuted so that the
        // kinds interleave: every row's byte product is the one it has in its own matrix.
        let cols = 512;
        let (plain, k) = (nibble_matrix(3, cols), q4_k_matrix(5, cols));
        let stacked = PackedMatrix::stack(vec![plain.clone(), k.clone()]);
        let order = [3, 0, 4, 5, 1, 6, 7, 2];
        let permuted = stacked.permute_rows(&order);
        for n in [1, 2, 3] {
            let x = activations(n, cols);
            let own: Vec<Vec<f32>> = [&plain, &k]
                .iter()
                .map(|m| m.matmul(&x, n, &byte_options()))
                .collect();
            let got = permuted.matmul(&x, n, &byte_options());
            for (i, &from) in order.iter().enumerate() {
                let (matrix, row) = if from < 3 { (0, from) } else { (1, from - 3) };
                let rows = [3, 5][matrix];
                for b in 0..n {
                    assert_eq!(
                        got[b * order.len() + i],
                        own[matrix][b * rows + row],
                        "n={n} row {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn byte_activations_move_the_products_by_their_rounding_only() {
        let (rows, cols) = (40, 64);
        let packed = nibble_matrix(rows, cols);
        let x = activations(7, cols);
        let exact = packed.matmul(&x, 7, &KernelOptions::default());
        let rounded = packed.matmul(&x, 7, &byte_options());
        assert_ne!(rounded, exact, "the option changes the kernel");
        for (r, e) in rounded.iter().zip(&exact) {
            assert!((r - e).abs() <= 0.02 * (1.0 + e.abs()), "{r} vs {e}");
        }
    }

    #[test]
    fn activations_beyond_one_pass_give_the_bits_of_each_row_alone() {
        // Eight rows fill a pass: 19 rows take passes of 8, 8 and 3.
        let (rows, cols, n) = (40, ACTIVATION_PASS_BYTES / (4 * 8), 19);
        assert!(cols.is_multiple_of(32));
        let packed = nibble_matrix(rows, cols);
        let x = activations(n, cols);
        let want = reference(&packed.to_f32(), &x, rows, cols, n);
        // How near the byte products come is `kernels::q8`'s test; here, only their bits.
        for (options, exact) in [(KernelOptions::default(), true), (byte_options(), false)] {
            let batch = packed.matmul(&x, n, &options);
            for b in 0..n {
                let alone = packed.matmul(&x[b * cols..(b + 1) * cols], 1, &options);
                assert_eq!(alone, batch[b * rows..(b + 1) * rows], "row {b}");
            }
            if exact {
                for (g, w) in batch.iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-3 * (1.0 + w.abs()), "{g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn stacking_and_permuting_rows_moves_whole_rows() {
        let cols = 64;
        let a = nibble_matrix(4, cols);
        let dense: Vec<f32> = (0..2 * cols).map(|i| i as f32).collect();
        let b = PackedMatrix::from_f32(dense.clone(), 2, cols);
        let stacked = PackedMatrix::stack(vec![a.clone(), b]);
        assert_eq!((stacked.rows(), stacked.cols()), (6, cols));
        let order = [5, 0, 3, 4, 1, 2];
        let permuted = stacked.permute_rows(&order);
        for (i, &from) in order.iter().enumerate() {
            assert_eq!(permuted.row(i), stacked.row(from));
        }
        assert_eq!(permuted.row(0), dense[cols..]);
        assert_eq!(permuted.row(1), a.row(0));
    }
}
