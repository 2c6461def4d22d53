//! How a packed matrix's rows are held in memory (nibble blocks, byte blocks or plain f32 rows),
//! and each row's access for the kernels.

use super::rows::{ByteRow, DenseRow, NibbleRow, Row};

/// How a group of rows is stored.
#[derive(Debug, Clone)]
pub(super) enum Storage {
    /// Blocks of 32 weights `scale · q + min` with `q` in `0..16`: 16 bytes per block, the low
    /// nibbles holding elements 0–15 and the high nibbles 16–31 (Q4_0, Q4_1, Q4_K).
    Nibbles {
        scales: Vec<f32>,
        mins: Vec<f32>,
        quants: Vec<u8>,
    },
    /// Blocks of 32 weights `scale · q` with `q` a signed byte: one scale a block (`halves` 0:
    /// Q8_0, Q5_0) or one for each 16 weights (`halves` 1: Q6_K).
    Bytes {
        scales: Vec<f32>,
        quants: Vec<i8>,
        halves: usize,
    },
    /// Plain f32 rows (every other type, dequantized at load).
    Dense(Vec<f32>),
}

/// Whether two storages are of one kind (their rows can share a group).
pub(super) fn same_kind(a: &Storage, b: &Storage) -> bool {
    match (a, b) {
        (Storage::Bytes { halves: a, .. }, Storage::Bytes { halves: b, .. }) => a == b,
        _ => std::mem::discriminant(a) == std::mem::discriminant(b),
    }
}

impl Storage {
    /// An empty storage of this one's kind.
    pub(super) fn empty_like(&self) -> Self {
        match self {
            Self::Nibbles { .. } => Self::Nibbles {
                scales: Vec::new(),
                mins: Vec::new(),
                quants: Vec::new(),
            },
            Self::Bytes { halves, .. } => Self::Bytes {
                scales: Vec::new(),
                quants: Vec::new(),
                halves: *halves,
            },
            Self::Dense(_) => Self::Dense(Vec::new()),
        }
    }

    /// Appends row `index` of `from` (of the same kind) to this storage.
    pub(super) fn append_row(&mut self, from: &Storage, index: usize, cols: usize) {
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
            (Self::Bytes { scales, quants, .. }, Row::Bytes(row)) => {
                scales.extend_from_slice(row.scales);
                quants.extend_from_slice(row.quants);
            }
            (Self::Dense(values), Row::Dense(row)) => values.extend_from_slice(row.0),
            _ => unreachable!("rows are appended to storage of their own kind"),
        }
    }

    /// Row `index` of this storage, whose rows hold `cols` weights.
    pub(super) fn row(&self, index: usize, cols: usize) -> Row<'_> {
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
            Self::Bytes {
                scales,
                quants,
                halves,
            } => Row::Bytes(ByteRow {
                scales: &scales[blocks.start << halves..blocks.end << halves],
                quants: &quants[bytes(32)],
                halves: *halves,
            }),
            Self::Dense(values) => Row::Dense(DenseRow(&values[index * cols..][..cols])),
        }
    }
}
