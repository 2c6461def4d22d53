//! The packed matmul's kernels: `x · Wᵀ` over a task's weight rows, written once for any CPU
//! ([`generic`]) and again with AVX2 and FMA ([`avx2`]) and with AVX-512 ([`avx512`]), all
//! giving the same result for a row whatever the tile or batch it is in. One is chosen at run
//! time ([`chosen`]).

use super::rows::{ByteRow, DenseRow, NibbleRow, OfKind, Row};

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
/// each of the `n` activation rows `b` of `x`; `buffer` holds [`MAX_TILE_ROWS`] rows' values of
/// scratch space.
pub(super) type Products = fn(&[Row], &[f32], usize, &mut [f32], &mut [f32]);

/// The most weight rows a kernel's tile takes (its scratch space is that many rows).
pub(super) const MAX_TILE_ROWS: usize = 4;

/// The kernels this CPU can run, fastest first, by name.
pub(super) fn available_kernels() -> Vec<(&'static str, Products)> {
    let mut kernels: Vec<(&'static str, Products)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            kernels.push(("avx512", avx512::products));
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            kernels.push(("avx2", avx2::products));
        }
    }
    kernels.push(("generic", generic::products::<Separate>));
    kernels
}

/// The kernel `name` asks for (`avx512`, `avx2` or `generic`) when this CPU can run it (for
/// measuring one against another), else the fastest it can: its name and the kernel.
pub(super) fn chosen(name: Option<&str>) -> (&'static str, Products) {
    let kernels = available_kernels();
    name.and_then(|name| kernels.iter().find(|(n, _)| *n == name))
        .copied()
        .unwrap_or(kernels[0])
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
mod avx2;

/// AVX-512: the AVX2 kernel's arithmetic sixteen lanes at a time (accumulator `k` holds lanes
/// `16k..16k + 16`), so it gives the same bits in half the instructions. Tiles are two rows
/// high and take four buffered activation rows at a time: sixteen accumulators of its 32
/// registers (measured faster than four rows by two).
#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packed::PackedMatrix;
    use crate::packed::tests::{activations, byte_matrix, nibble_matrix, reference};

    #[test]
    fn every_kernel_of_this_cpu_computes_the_product_and_the_vector_ones_agree_bitwise() {
        // Five rows: a whole tile and a lone row for every kernel; up to nine activation rows:
        // the packed path, whole buffered passes and every remainder.
        let (rows, cols) = (5, 96);
        let packed = nibble_matrix(rows, cols);
        let dense = PackedMatrix::from_f32(packed.to_f32(), rows, cols);
        let kernels = available_kernels();
        assert!(kernels.iter().any(|(name, _)| *name == "generic"));
        let bytes = byte_matrix(rows, cols, 0);
        let half_scaled = byte_matrix(rows, cols, 1);
        for matrix in [&packed, &dense, &bytes, &half_scaled] {
            let weights = matrix.to_f32();
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
}
