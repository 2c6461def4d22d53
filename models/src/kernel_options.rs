//! The kernel switches: which of the decoder's own kernels run, and the shape settings of some
//! of them. Every switch is a field of [`KernelOptions`], which a model carries from its loading
//! on; the process environment is read once, by [`KernelOptions::from_env`], at the edges (the
//! host's local-model loading, `drpo-model-tool`, the examples), and tests set the fields
//! directly. The defaults are what a model runs with when nothing is switched; the other values
//! are for measuring one kernel against another (`scripts/gpu-check.sh`) and for checking a
//! kernel's fallback.
//!
//! A new switch is a field and its line in [`KernelOptions::from_vars`], nothing else.
//! Switches are on by default, except the one that trades exactness for speed
//! (`cpu_int8_activations`).

use std::path::PathBuf;

/// Everything that picks a kernel, or sets a kernel's shape, in the decoder. Each field names
/// the environment variable [`KernelOptions::from_env`] reads it from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelOptions {
    /// `DRPO_CPU_FUSED` (on unless `0`): the CPU backend's fused operations (`cpu.rs`); off,
    /// burn's operations run instead.
    pub cpu_fused: bool,
    /// `DRPO_CPU_KERNEL` (`avx512`, `avx2` or `generic`): the packed matmul's kernel; when unset,
    /// or naming one this CPU cannot run, the fastest it can.
    pub cpu_matmul_kernel: Option<String>,
    /// `DRPO_CPU_INT8` (off unless `1`): the packed matmuls round each block of 32 activations
    /// (of 256, for Q4_K weights) to signed bytes and multiply them by the quantized weights in
    /// integers, as llama.cpp does: faster at batch 1, no longer exact (docs/qwen2.md).
    pub cpu_int8_activations: bool,
    /// `DRPO_CUDA_FUSED` (on unless `0`): the decoder's own CUDA kernels; off, burn's operations
    /// run instead, whatever the other CUDA switches say.
    pub cuda_fused: bool,
    /// `DRPO_CUDA_ATTENTION` (on unless `0`): the one-launch attention kernel.
    pub cuda_attention: bool,
    /// `DRPO_CUDA_GATED` (on unless `0`): SwiGLU inside the `rows` kernel's gate/up projection
    /// rather than in its own launch.
    pub cuda_gated: bool,
    /// `DRPO_CUDA_ROPE_ATTENTION` (on unless `0`): a decode step's RoPE inside the attention
    /// kernel rather than in its own launch.
    pub cuda_rope_attention: bool,
    /// `DRPO_CUDA_ARGMAX` (on unless `0`): the greedy choice with one cube a row rather than
    /// burn's argmax.
    pub cuda_argmax: bool,
    /// `DRPO_CUDA_QUEUED_READS` (on unless `0`): greedy token ids read back while the next
    /// decode step runs; off, each step's ids are read before the next step is issued.
    pub cuda_queued_reads: bool,
    /// `DRPO_CUDA_SMALL_MATMUL` (`mma`, `rows` or `cmma`): the kernel of projections of few rows.
    pub cuda_small_matmul: SmallRowKernel,
    /// `DRPO_CUDA_ROWS_MAX` (a number `M`): the `rows` kernel takes `m` rows when `m <= M`,
    /// instead of its rule by rows and width.
    pub cuda_rows_max: Option<usize>,
    /// `DRPO_CUDA_ROWS_UNROLL` (1 to 16, default 4): steps of the `rows` kernel's inner loop
    /// whose loads are issued together.
    pub cuda_rows_unroll: usize,
    /// `DRPO_CUDA_ROWS_PLANES` (1 to 16, default 4): planes (warps) per cube of the `rows`
    /// kernel, one weight row each.
    pub cuda_rows_planes: usize,
    /// `DRPO_CUDA_KERNEL_DIR` (a folder): where the compile-only CUDA device (feature
    /// `cuda-compile-only`) writes each kernel's CUDA source and PTX; nowhere when unset.
    pub cuda_kernel_dir: Option<PathBuf>,
}

/// The kernel for projections of few rows on CUDA (see `cuda::matmul`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmallRowKernel {
    /// The tensor-core kernel from 8 to 32 rows; [`Self::Rows`]'s choice for fewer rows and for
    /// the shapes and types the tensor cores do not take.
    Mma,
    /// One plane per weight row, 16-byte loads, a plane sum; f32 arithmetic on the CUDA cores.
    Rows,
    /// Burn's (cubek's) tensor-core kernel, as for many rows.
    Cmma,
}

impl SmallRowKernel {
    /// Every kernel with its `DRPO_CUDA_SMALL_MATMUL` name.
    pub const ALL: [(&'static str, Self); 3] = [
        ("mma", Self::Mma),
        ("rows", Self::Rows),
        ("cmma", Self::Cmma),
    ];

    /// The kernel a name means, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
    }

    /// The kernel `name` means; a warning and [`Self::Mma`] when it means none.
    fn named_or_default(name: Option<String>) -> Self {
        let Some(name) = name else {
            return Self::Mma;
        };
        Self::from_name(&name).unwrap_or_else(|| {
            eprintln!(
                "warning: DRPO_CUDA_SMALL_MATMUL={name:?} is not `mma`, `rows` or `cmma`; using \
                 `mma`"
            );
            Self::Mma
        })
    }
}

impl Default for KernelOptions {
    /// Every kernel on, with its default shape: what an empty environment gives.
    fn default() -> Self {
        Self::from_vars(|_| None)
    }
}

impl KernelOptions {
    /// The switches of this process's environment (see each field for its variable). Called
    /// where a model is loaded for a user (the host, `drpo-model-tool`, the examples), never
    /// inside this crate.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The switches from variables looked up by name with `var`: one line per switch.
    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        // A switch on by default is off only when set to `0`.
        let on = |name: &str| var(name).is_none_or(|v| v != "0");
        // A shape setting of the `rows` kernel: a number in `1..=16`, else `default`.
        let shape = |name: &str, default: usize| {
            var(name)
                .and_then(|v| v.parse().ok())
                .filter(|u| (1..=16).contains(u))
                .unwrap_or(default)
        };
        Self {
            cpu_fused: on("DRPO_CPU_FUSED"),
            cpu_matmul_kernel: var("DRPO_CPU_KERNEL"),
            cpu_int8_activations: var("DRPO_CPU_INT8").is_some_and(|v| v == "1"),
            cuda_fused: on("DRPO_CUDA_FUSED"),
            cuda_attention: on("DRPO_CUDA_ATTENTION"),
            cuda_gated: on("DRPO_CUDA_GATED"),
            cuda_rope_attention: on("DRPO_CUDA_ROPE_ATTENTION"),
            cuda_argmax: on("DRPO_CUDA_ARGMAX"),
            cuda_queued_reads: on("DRPO_CUDA_QUEUED_READS"),
            cuda_small_matmul: SmallRowKernel::named_or_default(var("DRPO_CUDA_SMALL_MATMUL")),
            cuda_rows_max: var("DRPO_CUDA_ROWS_MAX").and_then(|v| v.parse().ok()),
            cuda_rows_unroll: shape("DRPO_CUDA_ROWS_UNROLL", 4),
            cuda_rows_planes: shape("DRPO_CUDA_ROWS_PLANES", 4),
            cuda_kernel_dir: var("DRPO_CUDA_KERNEL_DIR").map(PathBuf::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options from a table of variables, as the environment would give them.
    fn from_table(table: &[(&str, &str)]) -> KernelOptions {
        KernelOptions::from_vars(|name| {
            table
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn every_switch_is_on_by_default_and_off_only_at_zero() {
        let default = KernelOptions::default();
        assert!(default.cpu_fused && default.cuda_fused && default.cuda_queued_reads);
        assert_eq!(default.cuda_small_matmul, SmallRowKernel::Mma);
        assert_eq!((default.cuda_rows_unroll, default.cuda_rows_planes), (4, 4));
        assert_eq!(default.cuda_rows_max, None);
        let set = from_table(&[
            ("DRPO_CUDA_ARGMAX", "0"),
            ("DRPO_CUDA_FUSED", "1"),
            ("DRPO_CPU_FUSED", "no"),
        ]);
        assert!(!set.cuda_argmax && set.cuda_fused && set.cpu_fused);
    }

    #[test]
    fn byte_activations_are_off_unless_set_to_one() {
        assert!(!KernelOptions::default().cpu_int8_activations);
        assert!(from_table(&[("DRPO_CPU_INT8", "1")]).cpu_int8_activations);
        for value in ["0", "yes", ""] {
            assert!(!from_table(&[("DRPO_CPU_INT8", value)]).cpu_int8_activations);
        }
    }

    #[test]
    fn settings_outside_their_range_keep_the_default() {
        let set = from_table(&[
            ("DRPO_CUDA_ROWS_PLANES", "8"),
            ("DRPO_CUDA_ROWS_UNROLL", "17"),
            ("DRPO_CUDA_ROWS_MAX", "32"),
            ("DRPO_CUDA_SMALL_MATMUL", "rows"),
        ]);
        assert_eq!((set.cuda_rows_planes, set.cuda_rows_unroll), (8, 4));
        assert_eq!(set.cuda_rows_max, Some(32));
        assert_eq!(set.cuda_small_matmul, SmallRowKernel::Rows);
        let unknown = from_table(&[("DRPO_CUDA_SMALL_MATMUL", "fast")]);
        assert_eq!(unknown.cuda_small_matmul, SmallRowKernel::Mma);
    }
}
