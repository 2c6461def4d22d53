//! Row access: one weight row of a packed matrix's storage, borrowed as the kernels read it.

/// One weight row of a storage, as the kernels read it.
#[derive(Clone, Copy)]
pub(super) enum Row<'a> {
    Nibbles(NibbleRow<'a>),
    Bytes(ByteRow<'a>),
    Dense(DenseRow<'a>),
}

/// A row of nibble blocks: per block a scale, a minimum and 16 bytes.
#[derive(Clone, Copy)]
pub(super) struct NibbleRow<'a> {
    pub(super) scales: &'a [f32],
    pub(super) mins: &'a [f32],
    pub(super) quants: &'a [u8],
}

/// A row of byte blocks: per block a scale and 32 bytes.
#[derive(Clone, Copy)]
pub(super) struct ByteRow<'a> {
    pub(super) scales: &'a [f32],
    pub(super) quants: &'a [i8],
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
