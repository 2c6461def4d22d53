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
            for (b, (out, q)) in out
                .chunks_exact_mut(32)
                .zip(row.quants.chunks_exact(32))
                .enumerate()
            {
                for j in 0..32 {
                    out[j] = row.scale(b, j) * f32::from(q[j]);
                }
            }
        }
        Row::Dense(row) => out.copy_from_slice(row.0),
    }
}

/// One weight row at a time (see [`super::Products`]).
#[inline(always)]
pub fn products<F: MulAdd>(rows: &[Row], x: &[f32], n: usize, buffer: &mut [f32], out: &mut [f32]) {
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
