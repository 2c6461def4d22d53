//! The packed matmul's kernels: `x · Wᵀ` over a task's weight rows, written once for any CPU
//! ([`generic`]) and again with AVX2 and FMA ([`avx2`]) and with AVX-512 ([`avx512`]), all
//! giving the same result for a row whatever the tile or batch it is in. One is chosen at run
//! time ([`chosen`]).

use super::rows::{ByteRow, DenseRow, KRow, NibbleRow, OfKind, PREFETCH_ROWS, Row};

/// Lanes of the dot-product accumulators: one block, so that each lane takes one product per
/// block and the additions into a lane never wait on each other within a block.
const LANES: usize = 32;
/// Activation rows multiplied per pass over a dequantized weight row (their accumulators fill
/// eight of AVX2's sixteen registers).
const TILE: usize = 2;

/// f32 values starting on a cache line (64 bytes), so that no vector load of a row whose length
/// is a multiple of 16 straddles two lines (such a load costs two).
pub(super) struct LineAligned {
    lines: Vec<Line>,
    len: usize,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

impl LineAligned {
    pub(super) fn zeros(len: usize) -> Self {
        Self {
            lines: vec![Line([0.0; 16]); len.div_ceil(16)],
            len,
        }
    }

    /// A copy of `values`.
    pub(super) fn copy_of(values: &[f32]) -> Self {
        let mut copy = Self::zeros(values.len());
        copy.as_mut_slice().copy_from_slice(values);
        copy
    }

    pub(super) fn as_slice(&self) -> &[f32] {
        // SAFETY: `lines` holds at least `len` initialized f32 values, contiguously.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.len) }
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as in `as_slice`, and the borrow is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.len) }
    }
}

/// `(rows, x, n, buffer, out)`: `out[r · n + b] = rows[r] · x[b]` for every weight row `r` and
/// each of the `n` activation rows `b` of `x`, laid out as the kernel asks ([`Kernel::arrange`]);
/// `buffer` holds [`MAX_TILE_ROWS`] rows' values of scratch space.
pub(super) type Products = fn(&[Row], &[f32], usize, &mut [f32], &mut [f32]);

/// The most weight rows a kernel's tile takes (its scratch space is that many rows).
pub(super) const MAX_TILE_ROWS: usize = 4;

/// One kernel: its products and the layout of the activations it reads.
#[derive(Clone, Copy)]
pub(super) struct Kernel {
    /// `avx512`, `avx2` or `generic`.
    pub(super) name: &'static str,
    /// The products.
    pub(super) products: Products,
    /// The products with the activations rounded to bytes ([`q8`]).
    pub(super) byte_products: q8::ByteProducts,
    /// The lanes of the kernel's vectors: within each row of whole blocks, the activations are
    /// grouped by lane group (see [`Kernel::arrange`]) so that the kernel loads a lane group of
    /// consecutive blocks from consecutive addresses. 32 leaves rows as they are.
    lane_group: usize,
}

impl Kernel {
    /// The `n` rows of `x`, copied onto cache lines, each row laid out for this kernel: where the
    /// rows are whole blocks of 32, lane group `k` (columns `k · g .. k · g + g` of every block,
    /// for a lane group of `g`) comes before group `k + 1`, its blocks in order. A row stays
    /// contiguous, so any run of rows can be multiplied apart from the rest.
    pub(super) fn arrange(&self, x: &[f32], n: usize) -> LineAligned {
        let cols = x.len() / n;
        let g = self.lane_group;
        if g == LANES || !cols.is_multiple_of(LANES) {
            return LineAligned::copy_of(x);
        }
        let mut arranged = LineAligned::zeros(x.len());
        let out = arranged.as_mut_slice();
        let blocks = cols / LANES;
        for (row, out) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
            for (b, block) in row.chunks_exact(LANES).enumerate() {
                for (k, lanes) in block.chunks_exact(g).enumerate() {
                    out[k * g * blocks + b * g..][..g].copy_from_slice(lanes);
                }
            }
        }
        arranged
    }
}

/// The kernels this CPU can run, fastest first.
pub(super) fn available_kernels() -> Vec<Kernel> {
    let mut kernels = Vec::new();
    let generic_bytes: q8::ByteProducts = q8::products::<Separate>;
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        let vector_bytes: q8::ByteProducts = if avx2 {
            q8::avx2::products
        } else {
            generic_bytes
        };
        if std::is_x86_feature_detected!("avx512f") {
            kernels.push(Kernel {
                name: "avx512",
                products: avx512::products,
                byte_products: vector_bytes,
                lane_group: LANES,
            });
        }
        if avx2 {
            kernels.push(Kernel {
                name: "avx2",
                products: avx2::products,
                byte_products: vector_bytes,
                lane_group: avx2::LANE_GROUP,
            });
        }
    }
    kernels.push(Kernel {
        name: "generic",
        products: generic::products::<Separate>,
        byte_products: generic_bytes,
        lane_group: LANES,
    });
    kernels
}

/// The kernel `name` asks for (`avx512`, `avx2` or `generic`) when this CPU can run it (for
/// measuring one against another), else the fastest it can.
pub(super) fn chosen(name: Option<&str>) -> Kernel {
    let kernels = available_kernels();
    name.and_then(|name| kernels.iter().find(|kernel| kernel.name == name))
        .copied()
        .unwrap_or(kernels[0])
}

/// The first `R` rows, if they are all `W`s (a tile of one storage kind).
#[inline(always)]
fn leading<'a, W: OfKind<'a>, const R: usize>(rows: &[Row<'a>]) -> Option<[W; R]> {
    let kind: [Option<W>; R] = std::array::from_fn(|r| rows.get(r).and_then(W::of));
    kind.iter()
        .all(Option::is_some)
        .then(|| kind.map(Option::unwrap))
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
pub(super) trait MulAdd {
    /// `a · b + c`.
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
pub(super) struct Separate;
impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// The kernels, written once for any [`MulAdd`]; the compiler vectorizes the fixed-width loops.
pub(super) mod generic;

/// What the vector kernels share. Weight rows are taken a tile at a time where enough rows of
/// one storage kind follow each other, so that each activation vector loaded serves several rows
/// and the accumulators of a tile form that many independent chains. One or two activation rows
/// are multiplied straight from the packed rows by the kernel's `fused`, `DIRECT_ROWS` weight
/// rows at a time; more, by its `buffered`, `BUFFERED_ROWS` at a time, from the tile's rows
/// dequantized once into a buffer (dequantizing again for every few activation rows would cost
/// as many vector instructions as the products). Rows that are not whole blocks of 32 (never a
/// GGUF block type's) go to the generic code.
///
/// Each output is accumulated in its own 32 lanes in the same order whatever the tile, so the
/// tiling changes no bit of the result.
macro_rules! vector_products {
    ($features:literal, direct_rows: $direct_rows:literal, buffered_rows: $buffered_rows:literal) => {
        /// Weight rows per tile multiplied straight from the packed rows.
        const DIRECT_ROWS: usize = $direct_rows;
        /// Weight rows per tile dequantized into the buffer.
        const BUFFERED_ROWS: usize = $buffered_rows;
        const _: () = assert!(BUFFERED_ROWS <= super::MAX_TILE_ROWS);

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

        /// Multiplies the first rows of `rows`, whose first is a `W`: a whole tile where enough
        /// rows of that kind lead, else that one row. Returns how many it took.
        #[inline]
        #[target_feature(enable = $features)]
        fn leading_tile<'a, W: BlockRow + super::OfKind<'a>>(
            rows: &[Row<'a>],
            x: &[f32],
            n: usize,
            buffer: &mut [f32],
            out: &mut [f32],
        ) -> usize {
            let first = || [W::of(&rows[0]).expect("the caller matched the first row's kind")];
            match n {
                1 | 2 => match super::leading::<W, DIRECT_ROWS>(rows) {
                    Some(tile) => direct(&tile, x, n, out),
                    None => direct(&first(), x, n, out),
                },
                _ => match super::leading::<W, BUFFERED_ROWS>(rows) {
                    Some(tile) => buffered(&tile, x, n, buffer, out),
                    None => buffered(&first(), x, n, buffer, out),
                },
            }
        }

        /// `out[r · n + b] = rows[r] · x[b]` for the `R` rows and one or two activation rows,
        /// straight from the packed rows. Returns `R`.
        #[inline]
        #[target_feature(enable = $features)]
        fn direct<W: BlockRow, const R: usize>(
            rows: &[W; R],
            x: &[f32],
            n: usize,
            out: &mut [f32],
        ) -> usize {
            match n {
                1 => _ = fused::<W, R, 1>(rows, x, n, out),
                _ => _ = fused::<W, R, 2>(rows, x, n, out),
            }
            R
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
/// generic kernel. Straight from the packed rows, sixteen vector registers hold one row's
/// 32-lane accumulators for two activation rows, so those tiles are one row high; buffered rows
/// are multiplied one lane group (eight lanes) at a time, four weight rows by three activation
/// rows.
#[cfg(target_arch = "x86_64")]
mod avx2;

/// AVX-512: the AVX2 kernel's arithmetic sixteen lanes at a time (accumulator `k` holds lanes
/// `16k..16k + 16`), so it gives the same bits in half the instructions. Tiles are two rows
/// high and take four buffered activation rows at a time: sixteen accumulators of its 32
/// registers (measured faster than four rows by two).
#[cfg(target_arch = "x86_64")]
mod avx512;

/// Products with the activations rounded to bytes.
pub(super) mod q8;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packed::PackedMatrix;
    use crate::packed::tests::{activations, byte_matrix, nibble_matrix, reference};

    /// A matrix of each storage kind: nibbles, f32, bytes, bytes with a scale for each half.
    pub(super) fn every_storage(rows: usize, cols: usize) -> [PackedMatrix; 4] {
        let packed = nibble_matrix(rows, cols);
        let dense = PackedMatrix::from_f32(packed.to_f32(), rows, cols);
        let (bytes, half_scaled) = (byte_matrix(rows, cols, 0), byte_matrix(rows, cols, 1));
        [packed, dense, bytes, half_scaled]
    }

    /// The rows of a matrix of one storage kind, as the kernels take them.
    pub(super) fn rows_of(matrix: &PackedMatrix) -> Vec<Row<'_>> {
        let (storage, _) = matrix.locate(0);
        (0..matrix.rows())
            .map(|r| storage.row(r, matrix.cols()))
            .collect()
    }

    #[test]
    fn every_kernel_of_this_cpu_computes_the_product_and_the_vector_ones_agree_bitwise() {
        // Five rows: a whole tile and a lone row for every kernel; up to nine activation rows:
        // the packed path, whole buffered passes and every remainder.
        let (rows, cols) = (5, 96);
        let kernels = available_kernels();
        assert!(kernels.iter().any(|kernel| kernel.name == "generic"));
        for matrix in &every_storage(rows, cols) {
            let weights = matrix.to_f32();
            let matrix_rows = rows_of(matrix);
            for n in 1..=9 {
                let x = activations(n, cols);
                let want = reference(&weights, &x, rows, cols, n);
                let mut vector_results: Vec<(&str, Vec<f32>)> = Vec::new();
                for kernel in &kernels {
                    let name = kernel.name;
                    let mut got = vec![0f32; rows * n];
                    let mut buffer = vec![0f32; MAX_TILE_ROWS * cols];
                    let arranged = kernel.arrange(&x, n);
                    (kernel.products)(&matrix_rows, arranged.as_slice(), n, &mut buffer, &mut got);
                    for (r, out) in got.chunks_exact(n).enumerate() {
                        for (b, g) in out.iter().enumerate() {
                            let w = want[b * rows + r];
                            assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{name} n={n}");
                        }
                    }
                    if name != "generic" {
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
}
