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
