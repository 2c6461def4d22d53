//! How a packed matrix's rows are held in memory (nibble blocks, byte blocks or plain f32 rows),
//! and each row's access for the kernels.

use super::rows::{ByteRow, DenseRow, KRow, NibbleRow, Row};

/// How a group of rows is stored.
#[derive(Debug, Clone)]
pub(super) enum Storage {
    /// Blocks of 32 weights `scale · q + min` with `q` in `0..16`: 16 bytes per block, the low
    /// nibbles holding elements 0–15 and the high nibbles 16–31 (Q4_0, Q4_1, Q4_K). Q4_K rows
    /// also keep their integer scales (`k`), which the byte products use.
    Nibbles {
        scales: Vec<f32>,
        mins: Vec<f32>,
        quants: Vec<u8>,
        k: Option<KScales>,
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

/// Q4_K's scales as the file holds them: a weight of block `b` in super-block `s` (eight blocks
/// of 32) is `d[s] · sc[b] · q + dmin[s] · m[b]`, `dmin` negated here. The nibble storage's f32
/// scale and minimum of the block are these products; the byte products multiply by the
/// integers and convert once per super-block (`kernels::q8`).
#[derive(Debug, Clone, Default)]
pub(super) struct KScales {
    /// Per super-block: the scale of its blocks' scales.
    pub(super) d: Vec<f32>,
    /// Per super-block: the scale of its blocks' minimums, negated.
    pub(super) dmin: Vec<f32>,
    /// Per block: its 6-bit scale.
    pub(super) sc: Vec<u8>,
    /// Per block: its 6-bit minimum.
    pub(super) m: Vec<u8>,
}

/// Whether two storages are of one kind (their rows can share a group).
pub(super) fn same_kind(a: &Storage, b: &Storage) -> bool {
    match (a, b) {
        (Storage::Bytes { halves: a, .. }, Storage::Bytes { halves: b, .. }) => a == b,
        (Storage::Nibbles { k: a, .. }, Storage::Nibbles { k: b, .. }) => {
            a.is_some() == b.is_some()
        }
        _ => std::mem::discriminant(a) == std::mem::discriminant(b),
    }
}

impl Storage {
    /// An empty storage of this one's kind.
    pub(super) fn empty_like(&self) -> Self {
        match self {
            Self::Nibbles { k, .. } => Self::Nibbles {
                scales: Vec::new(),
                mins: Vec::new(),
                quants: Vec::new(),
                k: k.as_ref().map(|_| KScales::default()),
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
                    k,
                },
                Row::Nibbles(row),
            ) => {
                scales.extend_from_slice(row.scales);
                mins.extend_from_slice(row.mins);
                quants.extend_from_slice(row.quants);
                if let (Some(k), Some(from)) = (k, row.k) {
                    k.d.extend_from_slice(from.d);
                    k.dmin.extend_from_slice(from.dmin);
                    k.sc.extend_from_slice(from.sc);
                    k.m.extend_from_slice(from.m);
                }
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
                k,
            } => Row::Nibbles(NibbleRow {
                scales: &scales[blocks.clone()],
                mins: &mins[blocks.clone()],
                quants: &quants[bytes(16)],
                k: k.as_ref().map(|k| {
                    let supers = blocks.start / 8..blocks.end / 8;
                    KRow {
                        d: &k.d[supers.clone()],
                        dmin: &k.dmin[supers],
                        sc: &k.sc[blocks.clone()],
                        m: &k.m[blocks.clone()],
                    }
                }),
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
