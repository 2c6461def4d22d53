//! Row access: one weight row of a packed matrix's storage, borrowed as the kernels read it.

/// One weight row of a storage, as the kernels read it.
#[derive(Clone, Copy)]
pub(super) enum Row<'a> {
    Nibbles(NibbleRow<'a>),
    Bytes(ByteRow<'a>),
    Dense(DenseRow<'a>),
}

/// A row of nibble blocks: per block a scale, a minimum and 16 bytes; Q4_K rows also their
/// integer scales.
#[derive(Clone, Copy)]
pub(super) struct NibbleRow<'a> {
    pub(super) scales: &'a [f32],
    pub(super) mins: &'a [f32],
    pub(super) quants: &'a [u8],
    pub(super) k: Option<KRow<'a>>,
}

/// A Q4_K row's integer scales (see `storage::KScales`): per super-block of eight blocks `d`
/// and `dmin` (negated), per block `sc` and `m`.
#[derive(Clone, Copy)]
pub(super) struct KRow<'a> {
    pub(super) d: &'a [f32],
    pub(super) dmin: &'a [f32],
    pub(super) sc: &'a [u8],
    pub(super) m: &'a [u8],
}

/// A row of byte blocks: 32 bytes per block, and per block one scale (`halves` 0) or one for
/// each half of 16 weights (`halves` 1).
#[derive(Clone, Copy)]
pub(super) struct ByteRow<'a> {
    pub(super) scales: &'a [f32],
    pub(super) quants: &'a [i8],
    pub(super) halves: usize,
}

impl ByteRow<'_> {
    /// Blocks of 32 weights in the row.
    pub(super) fn blocks(&self) -> usize {
        self.quants.len() / 32
    }

    /// The scales of block `b`'s first and last 16 weights. With one scale a block, both are
    /// that scale: the index arithmetic gives the same place, so the kernels need no branch.
    ///
    /// # Safety
    /// `b` below [`blocks`](Self::blocks).
    #[inline(always)]
    pub(super) unsafe fn scales_unchecked(&self, b: usize) -> (f32, f32) {
        let first = b << self.halves;
        // SAFETY: the storage holds `blocks << halves` scales and the caller bounds `b`.
        unsafe {
            (
                *self.scales.get_unchecked(first),
                *self.scales.get_unchecked(first + self.halves),
            )
        }
    }

    /// The scale of weight `j` of block `b` (the portable kernel's access).
    pub(super) fn scale(&self, b: usize, j: usize) -> f32 {
        self.scales[(b << self.halves) + (j / 16) * self.halves]
    }
}

/// Rows whose blocks a kernel asks the caches for ahead of time, this many rows ahead of the
/// rows it multiplies (at least: a tile of more rows asks for the next tile).
pub(super) const PREFETCH_ROWS: usize = 4;

/// Asks the caches for the line holding `slice[at]` in the row `rows_ahead` rows further on:
/// the rows of a storage lie one after the other, each `slice.len()` elements long. Decoding
/// reads every weight once, from memory, and the hardware's own prefetching does not look far
/// enough ahead along rows this short (docs/qwen2.md measures it).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch<T>(slice: &[T], at: usize, rows_ahead: usize) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    // The address may lie past the storage (the last rows): a prefetch never faults, and the
    // pointer is never dereferenced.
    let line = slice.as_ptr().wrapping_add(rows_ahead * slice.len() + at);
    // SAFETY: a prefetch reads nothing and cannot fault, whatever the address.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(line.cast()) }
}

#[cfg(target_arch = "x86_64")]
impl NibbleRow<'_> {
    /// Asks the caches for blocks `b .. b + 4` (a line of nibbles) of the row `rows_ahead`
    /// rows on, and for the f32 scales and minimums that the f32 products read (see
    /// [`prefetch`]).
    #[inline(always)]
    pub(super) fn prefetch_ahead(&self, b: usize, rows_ahead: usize) {
        prefetch(self.quants, 16 * b, rows_ahead);
        prefetch(self.scales, b, rows_ahead);
        prefetch(self.mins, b, rows_ahead);
    }
}

#[cfg(target_arch = "x86_64")]
impl KRow<'_> {
    /// [`NibbleRow::prefetch_ahead`] for the byte products of a Q4_K row (`quants` its
    /// nibbles): the nibbles and the integer scales they read instead of the f32 ones.
    #[inline(always)]
    pub(super) fn prefetch_ahead(&self, quants: &[u8], b: usize, rows_ahead: usize) {
        prefetch(quants, 16 * b, rows_ahead);
        prefetch(self.sc, b, rows_ahead);
        prefetch(self.m, b, rows_ahead);
        prefetch(self.d, b / 8, rows_ahead);
        prefetch(self.dmin, b / 8, rows_ahead);
    }
}

#[cfg(target_arch = "x86_64")]
impl ByteRow<'_> {
    /// Asks the caches for blocks `b .. b + 2` (a line of bytes) of the row `rows_ahead` rows
    /// on, and for their scales (see [`prefetch`]).
    #[inline(always)]
    pub(super) fn prefetch_ahead(&self, b: usize, rows_ahead: usize) {
        prefetch(self.quants, 32 * b, rows_ahead);
        prefetch(self.scales, b << self.halves, rows_ahead);
    }
}

/// A row of f32 weights.
#[derive(Clone, Copy)]
pub(super) struct DenseRow<'a>(pub(super) &'a [f32]);

/// A [`Row`] of one storage kind, as the vector kernels take it.
pub(super) trait OfKind<'a>: Sized {
    /// The row, if it is of this kind.
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
