//! Quantized weight matrices kept packed in memory and multiplied on the CPU without
//! dequantizing the whole matrix.
//!
//! Batch-1 decoding reads every weight once per token, so its speed is bounded by how many bytes
//! the weights take: a Q4_1 matrix is about 0.6 bytes a weight, its f32 copy 4. A
//! [`PackedMatrix`] keeps GGUF blocks (with their f16 scales widened to f32 at load time) and
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
//! target, and chosen once at run time.
//!
//! Exactness: a dequantized weight is `scale · q + min` computed with one rounding, which is
//! the exact value of ggml's dequantization for Q4_0, Q4_1, Q4_K and Q8_0 (the products fit in
//! f32's mantissa). Other types are stored as f32 rows.

use std::sync::OnceLock;

use half::f16;

use crate::gguf::{GgmlType, dequantize};

/// Lanes of the dot-product accumulators: one block, so that each lane takes one product per
/// block and the additions into a lane never wait on each other within a block.
const LANES: usize = 32;
/// Activation rows multiplied per pass over a dequantized weight row (their accumulators fill
/// eight of AVX2's sixteen registers).
const TILE: usize = 2;
/// Weight rows per task (a task's rows go to one thread).
const ROWS_PER_TASK: usize = 32;

/// f32 values starting on a cache line (64 bytes), so that no vector load of a row whose length
/// is a multiple of 16 straddles two lines (such a load costs two).
struct LineAligned {
    lines: Vec<Line>,
    len: usize,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

impl LineAligned {
    fn zeros(len: usize) -> Self {
        Self {
            lines: vec![Line([0.0; 16]); len.div_ceil(16)],
            len,
        }
    }

    fn as_slice(&self) -> &[f32] {
        // SAFETY: `lines` holds at least `len` initialized f32 values, contiguously.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as in `as_slice`, and the borrow is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.len) }
    }
}

/// How a group of rows is stored.
#[derive(Debug, Clone)]
enum Storage {
    /// Blocks of 32 weights `scale · q + min` with `q` in `0..16`: 16 bytes per block, the low
    /// nibbles holding elements 0–15 and the high nibbles 16–31 (Q4_0, Q4_1, Q4_K).
    Nibbles {
        scales: Vec<f32>,
        mins: Vec<f32>,
        quants: Vec<u8>,
    },
    /// Blocks of 32 weights `scale · q` with `q` a signed byte (Q8_0).
    Bytes { scales: Vec<f32>, quants: Vec<i8> },
    /// Plain f32 rows (every other type, dequantized at load).
    Dense(Vec<f32>),
}

/// A weight matrix `[rows, cols]` (one row per output, as checkpoints store projections).
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    rows: usize,
    cols: usize,
    /// Consecutive row ranges, each in one storage (a fused projection can mix types).
    groups: Vec<(usize, Storage)>,
}

impl PackedMatrix {
    /// Packs a GGUF tensor of `rows × cols` elements (row-major, `cols` a multiple of the type's
    /// block) from its raw bytes.
    ///
    /// # Panics
    /// If `bytes` does not hold exactly `rows × cols` elements of `dtype`: the loader checks the
    /// shape against the tensor table first.
    pub fn from_gguf(dtype: GgmlType, bytes: &[u8], rows: usize, cols: usize) -> Self {
        assert_eq!(
            bytes.len(),
            rows * cols / dtype.block_elements() * dtype.block_bytes(),
            "{dtype} tensor of {rows}×{cols} elements"
        );
        let packable = cols.is_multiple_of(dtype.block_elements());
        let f16_at = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
        let storage = match dtype {
            GgmlType::Q4_0 | GgmlType::Q4_1 if packable => {
                let blocks = bytes.chunks_exact(dtype.block_bytes());
                let mut nibbles = NibbleBuilder::with_blocks(blocks.len());
                for b in blocks {
                    let d = f16_at(b, 0);
                    if dtype == GgmlType::Q4_0 {
                        nibbles.push(d, -8.0 * d, b[2..18].try_into().unwrap());
                    } else {
                        nibbles.push(d, f16_at(b, 2), b[4..20].try_into().unwrap());
                    }
                }
                nibbles.finish()
            }
            GgmlType::Q4K if packable => {
                let blocks = bytes.chunks_exact(dtype.block_bytes());
                let mut nibbles = NibbleBuilder::with_blocks(blocks.len() * 8);
                for b in blocks {
                    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                    let scales = &b[4..16];
                    // Each 32 bytes hold two sub-blocks: one in the low nibbles, one in the high.
                    for (chunk, q) in b[16..144].chunks_exact(32).enumerate() {
                        for (sub, shift) in [(2 * chunk, 0), (2 * chunk + 1, 4)] {
                            let (sc, m) = crate::gguf::scale_min_k4(sub, scales);
                            let packed: [u8; 16] = std::array::from_fn(|j| {
                                ((q[j] >> shift) & 0xF) | (((q[j + 16] >> shift) & 0xF) << 4)
                            });
                            nibbles.push(d * f32::from(sc), -(dmin * f32::from(m)), packed);
                        }
                    }
                }
                nibbles.finish()
            }
            GgmlType::Q8_0 if packable => {
                let blocks = bytes.chunks_exact(dtype.block_bytes());
                let mut scales = Vec::with_capacity(blocks.len());
                let mut quants = Vec::with_capacity(blocks.len() * 32);
                for b in blocks {
                    scales.push(f16_at(b, 0));
                    quants.extend(b[2..34].iter().map(|&q| q as i8));
                }
                Storage::Bytes { scales, quants }
            }
            _ => Storage::Dense(dequantize(dtype, bytes)),
        };
        Self {
            rows,
            cols,
            groups: vec![(rows, storage)],
        }
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
                } => 4 * (scales.len() + mins.len()) + quants.len(),
                Storage::Bytes { scales, quants } => 4 * scales.len() + quants.len(),
                Storage::Dense(values) => 4 * values.len(),
            })
            .sum()
    }

    /// Row `row` in f32 (an embedding lookup).
    pub fn row(&self, row: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.cols];
        let (storage, index) = self.locate(row);
        // `scale · q` is exact in f32, so both roundings give the same weights.
        generic::dequantize::<Separate>(storage.row(index, self.cols), &mut out);
        out
    }

    /// Every row in f32, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        (0..self.rows).flat_map(|r| self.row(r)).collect()
    }

    /// `x · Wᵀ`: `x` holds `n` rows of [`cols`](Self::cols) values; the result holds `n` rows of
    /// [`rows`](Self::rows) values.
    ///
    /// # Panics
    /// If `x` does not hold `n` rows.
    pub fn matmul(&self, x: &[f32], n: usize) -> Vec<f32> {
        assert_eq!(x.len(), n * self.cols, "{n} rows of {} values", self.cols);
        if n == 0 {
            return Vec::new();
        }
        let products = kernel();
        let mut aligned_x = LineAligned::zeros(x.len());
        aligned_x.as_mut_slice().copy_from_slice(x);
        let x = aligned_x.as_slice();
        // Computed transposed, `[rows, n]`, so that each task owns a contiguous block.
        let mut transposed = vec![0f32; self.rows * n];
        let mut tasks: Vec<&mut [f32]> = transposed.chunks_mut(ROWS_PER_TASK * n).collect();
        crate::workers::for_each_mut(
            &mut tasks,
            || {
                let buffer = LineAligned::zeros(MAX_TILE_ROWS * self.cols);
                (buffer, Vec::with_capacity(ROWS_PER_TASK))
            },
            |(buffer, rows), task, out| {
                let first = task * ROWS_PER_TASK;
                rows.clear();
                rows.extend(self.rows_in(first..first + out.len() / n));
                products(rows, x, n, buffer.as_mut_slice(), out);
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

/// Collects nibble blocks into [`Storage::Nibbles`].
struct NibbleBuilder {
    scales: Vec<f32>,
    mins: Vec<f32>,
    quants: Vec<u8>,
}

impl NibbleBuilder {
    fn with_blocks(blocks: usize) -> Self {
        Self {
            scales: Vec::with_capacity(blocks),
            mins: Vec::with_capacity(blocks),
            quants: Vec::with_capacity(16 * blocks),
        }
    }

    fn push(&mut self, scale: f32, min: f32, quants: [u8; 16]) {
        self.scales.push(scale);
        self.mins.push(min);
        self.quants.extend(quants);
    }

    fn finish(self) -> Storage {
        Storage::Nibbles {
            scales: self.scales,
            mins: self.mins,
            quants: self.quants,
        }
    }
}

fn same_kind(a: &Storage, b: &Storage) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

impl Storage {
    fn empty_like(&self) -> Self {
        match self {
            Self::Nibbles { .. } => NibbleBuilder::with_blocks(0).finish(),
            Self::Bytes { .. } => Self::Bytes {
                scales: Vec::new(),
                quants: Vec::new(),
            },
            Self::Dense(_) => Self::Dense(Vec::new()),
        }
    }

    /// Appends row `index` of `from` (of the same kind) to this storage.
    fn append_row(&mut self, from: &Storage, index: usize, cols: usize) {
        match (self, from.row(index, cols)) {
            (
                Self::Nibbles {
                    scales,
                    mins,
                    quants,
                },
                Row::Nibbles(row),
            ) => {
                scales.extend_from_slice(row.scales);
                mins.extend_from_slice(row.mins);
                quants.extend_from_slice(row.quants);
            }
            (Self::Bytes { scales, quants }, Row::Bytes(row)) => {
                scales.extend_from_slice(row.scales);
                quants.extend_from_slice(row.quants);
            }
            (Self::Dense(values), Row::Dense(row)) => values.extend_from_slice(row.0),
            _ => unreachable!("rows are appended to storage of their own kind"),
        }
    }
}

/// One weight row of a [`Storage`], as the kernels read it.
#[derive(Clone, Copy)]
enum Row<'a> {
    Nibbles(NibbleRow<'a>),
    Bytes(ByteRow<'a>),
    Dense(DenseRow<'a>),
}

/// A row of nibble blocks: per block a scale, a minimum and 16 bytes.
#[derive(Clone, Copy)]
struct NibbleRow<'a> {
    scales: &'a [f32],
    mins: &'a [f32],
    quants: &'a [u8],
}

/// A row of byte blocks: per block a scale and 32 bytes.
#[derive(Clone, Copy)]
struct ByteRow<'a> {
    scales: &'a [f32],
    quants: &'a [i8],
}

/// A row of f32 weights.
#[derive(Clone, Copy)]
struct DenseRow<'a>(&'a [f32]);

impl Storage {
    /// Row `index` of this storage, whose rows hold `cols` weights.
    fn row(&self, index: usize, cols: usize) -> Row<'_> {
        let blocks = index * (cols / 32)..(index + 1) * (cols / 32);
        let bytes = |per_block: usize| blocks.start * per_block..blocks.end * per_block;
        match self {
            Self::Nibbles {
                scales,
                mins,
                quants,
            } => Row::Nibbles(NibbleRow {
                scales: &scales[blocks.clone()],
                mins: &mins[blocks.clone()],
                quants: &quants[bytes(16)],
            }),
            Self::Bytes { scales, quants } => Row::Bytes(ByteRow {
                scales: &scales[blocks.clone()],
                quants: &quants[bytes(32)],
            }),
            Self::Dense(values) => Row::Dense(DenseRow(&values[index * cols..][..cols])),
        }
    }
}

/// `(rows, x, n, buffer, out)`: `out[r · n + b] = rows[r] · x[b]` for every weight row `r` and
/// each of the `n` activation rows `b` of `x`; `buffer` holds [`MAX_TILE_ROWS`] rows' values of
/// scratch space.
type Products = fn(&[Row], &[f32], usize, &mut [f32], &mut [f32]);

/// The most weight rows a kernel's tile takes (its scratch space is that many rows).
const MAX_TILE_ROWS: usize = 4;

/// A [`Row`] of one storage kind, as the vector kernels take it.
trait OfKind<'a>: Sized {
    fn of(row: &Row<'a>) -> Option<Self>;
}

impl<'a> OfKind<'a> for NibbleRow<'a> {
    fn of(row: &Row<'a>) -> Option<Self> {
        match row {
            Row::Nibbles(row) => Some(*row),
            _ => None,
        }
    }
}

impl<'a> OfKind<'a> for ByteRow<'a> {
    fn of(row: &Row<'a>) -> Option<Self> {
        match row {
            Row::Bytes(row) => Some(*row),
            _ => None,
        }
    }
}

impl<'a> OfKind<'a> for DenseRow<'a> {
    fn of(row: &Row<'a>) -> Option<Self> {
        match row {
            Row::Dense(row) => Some(*row),
            _ => None,
        }
    }
}

/// The kernels this CPU can run, fastest first, by name.
fn available_kernels() -> Vec<(&'static str, Products)> {
    let mut kernels: Vec<(&'static str, Products)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            kernels.push(("avx512", x86_512::products));
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            kernels.push(("avx2", x86::products));
        }
    }
    kernels.push(("generic", generic::products::<Separate>));
    kernels
}

/// The kernel in use: `DRPO_CPU_KERNEL` (`avx512`, `avx2` or `generic`) when set and available
/// (for measuring one against another), else the fastest; chosen once.
fn kernel() -> Products {
    static KERNEL: OnceLock<Products> = OnceLock::new();
    *KERNEL.get_or_init(|| {
        let kernels = available_kernels();
        let wanted = std::env::var("DRPO_CPU_KERNEL").ok();
        match wanted.and_then(|name| kernels.iter().find(|(n, _)| *n == name)) {
            Some((_, products)) => *products,
            None => kernels[0].1,
        }
    })
}

/// The name of the kernel in use (for benchmark reports).
pub fn kernel_name() -> &'static str {
    let products = kernel();
    available_kernels()
        .into_iter()
        .find(|(_, p)| std::ptr::fn_addr_eq(*p, products))
        .map_or("unknown", |(name, _)| name)
}

/// The last steps of every kernel's reduction: lane `l` plus lane `l + len/2`, then plus
/// `l + len/4`, and so on down to one lane.
#[inline(always)]
fn tree_sum(lanes: &mut [f32]) -> f32 {
    let mut width = lanes.len() / 2;
    while width > 0 {
        for l in 0..width {
            lanes[l] += lanes[l + width];
        }
        width /= 2;
    }
    lanes[0]
}

/// `a · b + c`, fused into one rounding or not.
trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// One rounding (an FMA instruction where the kernel is compiled with `fma`).
struct Fused;
impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// Two roundings: without hardware FMA, `f32::mul_add` would be a slow library call.
struct Separate;
impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// The kernels, written once for any [`MulAdd`]; the compiler vectorizes the fixed-width loops.
mod generic {
    use super::{LANES, MulAdd, Row, TILE, tree_sum};

    /// Writes the row's weights into `out`.
    #[inline(always)]
    pub fn dequantize<F: MulAdd>(row: Row, out: &mut [f32]) {
        match row {
            Row::Nibbles(row) => {
                for (((out, q), &d), &m) in out
                    .chunks_exact_mut(32)
                    .zip(row.quants.chunks_exact(16))
                    .zip(row.scales)
                    .zip(row.mins)
                {
                    let (low, high) = out.split_at_mut(16);
                    for j in 0..16 {
                        low[j] = F::mul_add(d, f32::from(q[j] & 0xF), m);
                        high[j] = F::mul_add(d, f32::from(q[j] >> 4), m);
                    }
                }
            }
            Row::Bytes(row) => {
                for ((out, q), &d) in out
                    .chunks_exact_mut(32)
                    .zip(row.quants.chunks_exact(32))
                    .zip(row.scales)
                {
                    for j in 0..32 {
                        out[j] = d * f32::from(q[j]);
                    }
                }
            }
            Row::Dense(row) => out.copy_from_slice(row.0),
        }
    }

    /// One weight row at a time (see [`super::Products`]).
    #[inline(always)]
    pub fn products<F: MulAdd>(
        rows: &[Row],
        x: &[f32],
        n: usize,
        buffer: &mut [f32],
        out: &mut [f32],
    ) {
        for (row, out) in rows.iter().zip(out.chunks_exact_mut(n)) {
            match row {
                Row::Dense(row) => dots::<F>(row.0, x, out),
                _ => {
                    let buffer = &mut buffer[..x.len() / n];
                    dequantize::<F>(*row, buffer);
                    dots::<F>(buffer, x, out)
                }
            }
        }
    }

    #[inline(always)]
    pub fn dots<F: MulAdd>(weights: &[f32], x: &[f32], out: &mut [f32]) {
        let cols = weights.len();
        let row = |b: usize| &x[b * cols..(b + 1) * cols];
        let done = out.len() / TILE * TILE;
        let mut tiles = out.chunks_exact_mut(TILE);
        for (t, out) in tiles.by_ref().enumerate() {
            let rows: [&[f32]; TILE] = std::array::from_fn(|i| row(t * TILE + i));
            out.copy_from_slice(&dot_tile::<F, TILE>(weights, rows));
        }
        for (b, out) in tiles.into_remainder().iter_mut().enumerate() {
            *out = dot_tile::<F, 1>(weights, [row(done + b)])[0];
        }
    }

    /// Dot products of one weight row with `T` activation rows: element `e` goes to lane
    /// `e % LANES` in order, then the lanes are summed by [`tree_sum`].
    #[inline(always)]
    fn dot_tile<F: MulAdd, const T: usize>(weights: &[f32], xs: [&[f32]; T]) -> [f32; T] {
        let mut acc = [[0f32; LANES]; T];
        let whole = weights.len() / LANES * LANES;
        for (i, w) in weights[..whole].chunks_exact(LANES).enumerate() {
            for t in 0..T {
                let x = &xs[t][i * LANES..(i + 1) * LANES];
                for l in 0..LANES {
                    acc[t][l] = F::mul_add(w[l], x[l], acc[t][l]);
                }
            }
        }
        for (l, &w) in weights[whole..].iter().enumerate() {
            for t in 0..T {
                acc[t][l] = F::mul_add(w, xs[t][whole + l], acc[t][l]);
            }
        }
        acc.map(|mut lanes| tree_sum(&mut lanes))
    }
}

/// What the vector kernels share. Weight rows are taken `TILE_ROWS` at a time where that many
/// of one storage kind follow each other, so that each activation vector loaded serves several
/// rows and the accumulators of a tile form that many independent chains. One or two
/// activation rows are multiplied straight from the packed rows; more, `TILE_BATCH` at a time
/// from the tile's rows dequantized once into a buffer (dequantizing again for every few
/// activation rows would cost as many vector instructions as the products). Rows that are not
/// whole blocks of 32 (never a GGUF block type's) go to the generic code.
///
/// Each output is accumulated in its own 32 lanes in the same order whatever the tile, so the
/// tiling changes no bit of the result.
macro_rules! vector_products {
    ($features:literal, $store:ident, tile_rows: $tile_rows:literal, tile_batch: $tile_batch:literal) => {
        /// Weight rows per tile.
        const TILE_ROWS: usize = $tile_rows;
        const _: () = assert!(TILE_ROWS <= super::MAX_TILE_ROWS);
        /// Activation rows per pass over a tile's buffered rows.
        const TILE_BATCH: usize = $tile_batch;

        pub fn products(rows: &[Row], x: &[f32], n: usize, buffer: &mut [f32], out: &mut [f32]) {
            // SAFETY: `kernel` chooses this function only once the CPU showed these features.
            unsafe { products_with_features(rows, x, n, buffer, out) }
        }

        #[target_feature(enable = $features)]
        fn products_with_features(
            rows: &[Row],
            x: &[f32],
            n: usize,
            buffer: &mut [f32],
            out: &mut [f32],
        ) {
            let mut done = 0;
            while done < rows.len() {
                let (rest, out) = (&rows[done..], &mut out[done * n..]);
                done += match rest[0] {
                    Row::Dense(row) if !row.0.len().is_multiple_of(32) => {
                        super::generic::dots::<super::Fused>(row.0, x, &mut out[..n]);
                        1
                    }
                    Row::Dense(_) => leading_tile::<DenseRow>(rest, x, n, buffer, out),
                    Row::Nibbles(_) => leading_tile::<NibbleRow>(rest, x, n, buffer, out),
                    Row::Bytes(_) => leading_tile::<ByteRow>(rest, x, n, buffer, out),
                };
            }
        }

        /// Multiplies the first rows of `rows`, whose first is a `W`: a whole tile where
        /// `TILE_ROWS` rows of that kind lead, else that one row. Returns how many it took.
        #[inline]
        #[target_feature(enable = $features)]
        fn leading_tile<'a, W: BlockRow + super::OfKind<'a>>(
            rows: &[Row<'a>],
            x: &[f32],
            n: usize,
            buffer: &mut [f32],
            out: &mut [f32],
        ) -> usize {
            let kind: [Option<W>; TILE_ROWS] = std::array::from_fn(|r| rows.get(r).and_then(W::of));
            if kind.iter().all(Option::is_some) {
                tile::<W, TILE_ROWS>(kind.map(Option::unwrap), x, n, buffer, out);
                TILE_ROWS
            } else {
                let first = W::of(&rows[0]).expect("the caller matched the first row's kind");
                tile::<W, 1>([first], x, n, buffer, out);
                1
            }
        }

        /// `out[r · n + b] = rows[r] · x[b]` for the `R` rows and every activation row.
        #[inline]
        #[target_feature(enable = $features)]
        fn tile<W: BlockRow, const R: usize>(
            rows: [W; R],
            x: &[f32],
            n: usize,
            buffer: &mut [f32],
            out: &mut [f32],
        ) {
            let cols = rows[0].blocks() * 32;
            match n {
                1 => _ = fused::<W, R, 1>(&rows, x, n, out),
                2 => _ = fused::<W, R, 2>(&rows, x, n, out),
                _ => {
                    for (row, buffer) in rows.iter().zip(buffer.chunks_exact_mut(cols)) {
                        for (b, chunk) in buffer.chunks_exact_mut(32).enumerate() {
                            // SAFETY: the features are enabled here; `b` is below the blocks.
                            $store(chunk, unsafe { row.block(b) });
                        }
                    }
                    let dense: [DenseRow; R] =
                        std::array::from_fn(|r| DenseRow(&buffer[r * cols..(r + 1) * cols]));
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
                }
            }
        }
    };
}

/// The reduction of a dot product's 32 lanes in [`tree_sum`]'s order, with vector additions:
/// `lanes[l] + lanes[l + width]` is one vector addition of the two halves.
macro_rules! sum_halves_128 {
    ($v:expr) => {{
        let v = $v;
        // Lanes 2 and 3 onto 0 and 1, then lane 1 onto lane 0.
        let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
        _mm_cvtss_f32(_mm_add_ss(v, _mm_shuffle_ps::<1>(v, v)))
    }};
}

/// AVX2 and FMA: blocks are dequantized eight lanes at a time with the same arithmetic as the
/// generic kernel. Sixteen vector registers hold one row's 32-lane accumulators for two
/// activation rows, so tiles are one row high.
#[cfg(target_arch = "x86_64")]
mod x86 {
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
            self.scales.len()
        }

        #[inline(always)]
        unsafe fn block(&self, b: usize) -> [__m256; 4] {
            // SAFETY: the caller checked the CPU; the row holds 32 bytes per block.
            unsafe {
                byte_block(
                    self.quants.as_ptr().add(32 * b),
                    *self.scales.get_unchecked(b),
                )
            }
        }
    }

    impl BlockRow for DenseRow<'_> {
        fn blocks(&self) -> usize {
            self.0.len() / 32
        }

        #[inline(always)]
        unsafe fn block(&self, b: usize) -> [__m256; 4] {
            // SAFETY: the caller checked the CPU; the row holds 32 values per block.
            [0, 8, 16, 24].map(|k| unsafe { _mm256_loadu_ps(self.0.as_ptr().add(32 * b + k)) })
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
            let weights: [[__m256; 4]; R] = std::array::from_fn(|r| unsafe { rows[r].block(b) });
            for t in 0..T {
                // SAFETY: row `t` of `x` holds `cols` values (asserted above).
                let xs = [0, 8, 16, 24]
                    .map(|k| unsafe { _mm256_loadu_ps(x.as_ptr().add(t * cols + b * 32 + k)) });
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
        let widen =
            |v: __m128i| _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)), scale, min);
        [
            widen(low),
            widen(_mm_unpackhi_epi64(low, low)),
            widen(high),
            widen(_mm_unpackhi_epi64(high, high)),
        ]
    }

    /// `scale · q` for the 32 signed bytes of a block.
    ///
    /// # Safety
    /// `quants` points to 32 readable bytes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn byte_block(quants: *const i8, scale: f32) -> [__m256; 4] {
        // SAFETY: the caller passes 32 readable bytes.
        let (first, second) = unsafe {
            (
                _mm_loadu_si128(quants.cast()),
                _mm_loadu_si128(quants.add(16).cast()),
            )
        };
        let scale = _mm256_set1_ps(scale);
        let widen = |v: __m128i| _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)), scale);
        [
            widen(first),
            widen(_mm_unpackhi_epi64(first, first)),
            widen(second),
            widen(_mm_unpackhi_epi64(second, second)),
        ]
    }
}

/// AVX-512: the AVX2 kernel's arithmetic sixteen lanes at a time (accumulator `k` holds lanes
/// `16k..16k + 16`), so it gives the same bits in half the instructions. Tiles are two rows
/// high and take four buffered activation rows at a time: sixteen accumulators of its 32
/// registers (measured faster than four rows by two).
#[cfg(target_arch = "x86_64")]
mod x86_512 {
    use std::arch::x86_64::*;

    use super::{ByteRow, DenseRow, NibbleRow, Row};

    vector_products!("avx512f,avx2,fma", store, tile_rows: 2, tile_batch: 4);

    /// One weight row of blocks of 32.
    trait BlockRow {
        fn blocks(&self) -> usize;

        /// Block `b` as two vectors of sixteen weights.
        ///
        /// # Safety
        /// Only on a CPU with avx512f; `b` below [`blocks`](Self::blocks).
        unsafe fn block(&self, b: usize) -> [__m512; 2];
    }

    impl BlockRow for NibbleRow<'_> {
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
                let widen = |v: __m128i| {
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v)), scale, min)
                };
                [
                    widen(_mm_and_si128(bytes, mask)),
                    widen(_mm_and_si128(_mm_srli_epi16(bytes, 4), mask)),
                ]
            }
        }
    }

    impl BlockRow for ByteRow<'_> {
        fn blocks(&self) -> usize {
            self.scales.len()
        }

        #[inline(always)]
        unsafe fn block(&self, b: usize) -> [__m512; 2] {
            // SAFETY: the caller checked the CPU; the row holds 32 bytes per block.
            unsafe {
                let at = self.quants.as_ptr().add(32 * b);
                let scale = _mm512_set1_ps(*self.scales.get_unchecked(b));
                let widen = |p: *const i8| {
                    let v = _mm_loadu_si128(p.cast());
                    _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v)), scale)
                };
                [widen(at), widen(at.add(16))]
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
            [0, 16].map(|k| unsafe { _mm512_loadu_ps(self.0.as_ptr().add(32 * b + k)) })
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

    /// `out[r · stride + t] = rows[r] · x[t]` for `R` weight rows and `T` activation rows, in
    /// the lanes of the generic kernel. Returns `T`.
    #[inline]
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
            // SAFETY: avx512f is enabled here; `b` is below every row's blocks.
            let weights: [[__m512; 2]; R] = std::array::from_fn(|r| unsafe { rows[r].block(b) });
            for t in 0..T {
                // SAFETY: row `t` of `x` holds `cols` values (asserted above).
                let [x0, x1] = [0, 16]
                    .map(|k| unsafe { _mm512_loadu_ps(x.as_ptr().add(t * cols + b * 32 + k)) });
                for (acc, [w0, w1]) in acc.iter_mut().zip(&weights) {
                    acc[t][0] = _mm512_fmadd_ps(*w0, x0, acc[t][0]);
                    acc[t][1] = _mm512_fmadd_ps(*w1, x1, acc[t][1]);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Q4_1 blocks with varied scales, minimums and nibbles.
    fn q4_1_bytes(rows: usize, cols: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for block in 0..rows * cols / 32 {
            bytes.extend(f16::from_f32(0.01 + 0.003 * (block % 7) as f32).to_le_bytes());
            bytes.extend(f16::from_f32(-0.05 + 0.01 * (block % 5) as f32).to_le_bytes());
            bytes.extend((0..16).map(|j| ((block * 7 + j * 13) % 256) as u8));
        }
        bytes
    }

    fn reference(weights: &[f32], x: &[f32], rows: usize, cols: usize, n: usize) -> Vec<f32> {
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

    fn activations(n: usize, cols: usize) -> Vec<f32> {
        (0..n * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect()
    }

    #[test]
    fn matmul_matches_the_dequantized_product_for_every_packed_type() {
        let (rows, cols) = (70, 96);
        let q8: Vec<u8> = (0..rows * cols / 32)
            .flat_map(|b| {
                let mut block = f16::from_f32(0.02 * (1 + b % 3) as f32)
                    .to_le_bytes()
                    .to_vec();
                block.extend((0..32).map(|j| ((b * 11 + j * 29) % 256) as u8));
                block
            })
            .collect();
        let q4_0: Vec<u8> = (0..rows * cols / 32)
            .flat_map(|b| {
                let mut block = f16::from_f32(0.03).to_le_bytes().to_vec();
                block.extend((0..16).map(|j| ((b * 5 + j * 17) % 256) as u8));
                block
            })
            .collect();
        let cases = [
            (GgmlType::Q4_1, q4_1_bytes(rows, cols)),
            (GgmlType::Q8_0, q8),
            (GgmlType::Q4_0, q4_0),
        ];
        for (dtype, bytes) in cases {
            let weights = dequantize(dtype, &bytes);
            let packed = PackedMatrix::from_gguf(dtype, &bytes, rows, cols);
            for n in [1, 2, 3, 4, 8, 9] {
                let x = activations(n, cols);
                let got = packed.matmul(&x, n);
                let want = reference(&weights, &x, rows, cols, n);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{dtype} n={n}: {g} vs {w}"
                    );
                }
            }
            for r in [0, 33, rows - 1] {
                assert_eq!(packed.row(r), weights[r * cols..(r + 1) * cols], "{dtype}");
            }
        }
    }

    #[test]
    fn every_kernel_of_this_cpu_computes_the_product_and_the_vector_ones_agree_bitwise() {
        // Five rows: a whole tile and a lone row for every kernel; up to nine activation rows:
        // the packed path, whole buffered passes and every remainder.
        let (rows, cols) = (5, 96);
        let packed = PackedMatrix::from_gguf(GgmlType::Q4_1, &q4_1_bytes(rows, cols), rows, cols);
        let dense = PackedMatrix::from_f32(packed.to_f32(), rows, cols);
        let weights = packed.to_f32();
        let kernels = available_kernels();
        assert!(kernels.iter().any(|(name, _)| *name == "generic"));
        for matrix in [&packed, &dense] {
            let (storage, _) = matrix.locate(0);
            let matrix_rows: Vec<Row> = (0..rows).map(|r| storage.row(r, cols)).collect();
            for n in 1..=9 {
                let x = activations(n, cols);
                let want = reference(&weights, &x, rows, cols, n);
                let mut vector_results: Vec<(&str, Vec<f32>)> = Vec::new();
                for (name, products) in &kernels {
                    let mut got = vec![0f32; rows * n];
                    let mut buffer = vec![0f32; MAX_TILE_ROWS * cols];
                    products(&matrix_rows, &x, n, &mut buffer, &mut got);
                    for (r, out) in got.chunks_exact(n).enumerate() {
                        for (b, g) in out.iter().enumerate() {
                            let w = want[b * rows + r];
                            assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{name} n={n}");
                        }
                    }
                    if *name != "generic" {
                        vector_results.push((name, got));
                    }
                }
                for pair in vector_results.windows(2) {
                    assert_eq!(
                        pair[0].1, pair[1].1,
                        "{} and {} differ at n={n}",
                        pair[0].0, pair[1].0
                    );
                }
            }
        }
    }

    #[test]
    fn tiles_never_mix_storage_kinds() {
        // Q4_1, f32 and Q8_0 rows in runs of 3, 1 and 2: no run fills a tile of four, and every
        // tile boundary falls inside a run of one kind or between kinds.
        let cols = 64;
        let q8: Vec<u8> = (0..2 * cols / 32)
            .flat_map(|b| {
                let mut block = f16::from_f32(0.05).to_le_bytes().to_vec();
                block.extend((0..32).map(|j| ((b * 19 + j * 23) % 256) as u8));
                block
            })
            .collect();
        let dense: Vec<f32> = (0..cols).map(|i| (i as f32 - 30.0) / 40.0).collect();
        let parts = vec![
            PackedMatrix::from_gguf(GgmlType::Q4_1, &q4_1_bytes(3, cols), 3, cols),
            PackedMatrix::from_f32(dense, 1, cols),
            PackedMatrix::from_gguf(GgmlType::Q8_0, &q8, 2, cols),
        ];
        let stacked = PackedMatrix::stack(parts);
        let weights = stacked.to_f32();
        for n in [1, 2, 5, 8] {
            let x = activations(n, cols);
            let got = stacked.matmul(&x, n);
            let want = reference(&weights, &x, stacked.rows(), cols, n);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "n={n}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn q4_k_rows_are_exactly_ggml_dequantization() {
        let (rows, cols) = (3, 512);
        let mut bytes = Vec::new();
        for block in 0..rows * cols / 256 {
            bytes.extend(f16::from_f32(0.01 * (1 + block) as f32).to_le_bytes());
            bytes.extend(f16::from_f32(0.002).to_le_bytes());
            bytes.extend((0..12).map(|j| ((block * 31 + j * 53) % 256) as u8));
            bytes.extend((0..128).map(|j| ((block * 3 + j * 7) % 256) as u8));
        }
        let weights = dequantize(GgmlType::Q4K, &bytes);
        let packed = PackedMatrix::from_gguf(GgmlType::Q4K, &bytes, rows, cols);
        for r in 0..rows {
            assert_eq!(packed.row(r), weights[r * cols..(r + 1) * cols]);
        }
    }

    #[test]
    fn a_row_does_not_depend_on_the_rest_of_the_batch() {
        let (rows, cols) = (40, 64);
        let packed = PackedMatrix::from_gguf(GgmlType::Q4_1, &q4_1_bytes(rows, cols), rows, cols);
        let x = activations(7, cols);
        let batch = packed.matmul(&x, 7);
        for b in 0..7 {
            let alone = packed.matmul(&x[b * cols..(b + 1) * cols], 1);
            assert_eq!(alone, batch[b * rows..(b + 1) * rows], "row {b}");
        }
    }

    #[test]
    fn stacking_and_permuting_rows_moves_whole_rows() {
        let cols = 64;
        let a = PackedMatrix::from_gguf(GgmlType::Q4_1, &q4_1_bytes(4, cols), 4, cols);
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
