//! Speed of the packed CPU matmul alone, on SmolLM2-135M's projection shapes with Q4_1 weights,
//! or on Qwen2.5-1.5B's with Q4_K weights (`qwen1.5b`: 1.1 GB of nibble blocks, beyond the
//! caches, as a decode step of that model reads them).
//!
//! `cargo run --release -p drpo-models --example matmul_bench [-- REPEATS [smollm2|qwen1.5b]]`
//!
//! For 1 and 8 activation rows, prints each shape's time (best of REPEATS, default 50; each use
//! a copy of its own) with the weight bytes read per second and the multiply-adds per second,
//! then the total over one decoder token's projections (30 blocks and the output head).
//! `DRPO_CPU_KERNEL` picks the kernel; `RAYON_NUM_THREADS=1` measures one core.

use std::time::Instant;

use drpo_models::KernelOptions;
use drpo_models::gguf::GgmlType;
use drpo_models::packed::PackedMatrix;
use half::f16;

/// `rows × cols` weights of `dtype` (Q4_1 or Q4_K: blocks of two f16 scales, then bytes) with
/// varied scales and bytes.
fn weights(dtype: GgmlType, rows: usize, cols: usize) -> PackedMatrix {
    let (elements, size) = (dtype.block_elements(), dtype.block_bytes());
    let mut bytes = Vec::with_capacity(rows * cols / elements * size);
    for block in 0..rows * cols / elements {
        bytes.extend(f16::from_f32(0.01 + 0.001 * (block % 13) as f32).to_le_bytes());
        bytes.extend(f16::from_f32(-0.04 + 0.005 * (block % 7) as f32).to_le_bytes());
        bytes.extend((0..size - 4).map(|j| ((block * 7 + j * 13) % 256) as u8));
    }
    drpo_models::load::gguf::pack(dtype, &bytes, rows, cols)
}

fn main() {
    let repeats: usize = std::env::args()
        .nth(1)
        .map_or(50, |s| s.parse().expect("REPEATS is a number"));
    // (name, outputs, inputs, uses per token)
    let (dtype, shapes) = match std::env::args().nth(2).as_deref() {
        None | Some("smollm2") => (
            GgmlType::Q4_1,
            [
                ("qkv", 960, 576, 30),
                ("o", 576, 576, 30),
                ("gate_up", 3072, 576, 30),
                ("down", 576, 1536, 30),
                ("lm_head", 49152, 576, 1),
            ],
        ),
        Some("qwen1.5b") => (
            GgmlType::Q4K,
            [
                ("qkv", 2048, 1536, 28),
                ("o", 1536, 1536, 28),
                ("gate_up", 17920, 1536, 28),
                ("down", 1536, 8960, 28),
                ("lm_head", 151936, 1536, 1),
            ],
        ),
        Some(other) => panic!("no shapes named {other}: smollm2 or qwen1.5b"),
    };
    let kernels = KernelOptions::from_env();
    println!(
        "kernel {}, {} threads",
        drpo_models::packed::kernel_name(&kernels),
        rayon::current_num_threads()
    );
    for n in [1usize, 8] {
        let mut token_seconds = 0.0;
        for (name, rows, cols, uses) in shapes {
            // One copy per use, multiplied in turn as a decode step does, so the weights come
            // from memory rather than from a cache that one matrix would fit in.
            let matrices: Vec<PackedMatrix> =
                (0..uses).map(|_| weights(dtype, rows, cols)).collect();
            let matrix = &matrices[0];
            let x: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let mut best = f64::MAX;
            for _ in 0..repeats.max(1) {
                let start = Instant::now();
                for matrix in &matrices {
                    std::hint::black_box(matrix.matmul(std::hint::black_box(&x), n, &kernels));
                }
                best = best.min(start.elapsed().as_secs_f64() / uses as f64);
            }
            token_seconds += best * uses as f64;
            println!(
                "n={n} {name:>8} {rows:>5}x{cols:<5} {:>8.1} µs  {:>5.1} GB/s  {:>6.1} G mul-adds/s",
                best * 1e6,
                matrix.bytes() as f64 / best / 1e9,
                (rows * cols * n) as f64 / best / 1e9
            );
        }
        println!(
            "n={n} one token's projections: {:.2} ms ({:.0} rows/s if nothing else ran)",
            token_seconds * 1e3,
            n as f64 / token_seconds
        );
    }
}
