//! The matmul kernel of the decoder's weight projections on CUDA, chosen by the number of rows.
//!
//! Built without autotuning (see `models/Cargo.toml`), burn runs every matmul with cubek's
//! tensor-core kernel. For decode steps, where the activations have one row per sequence, that
//! kernel splits the work only along the output columns and walks the whole inner dimension in
//! each cube, so a 4096×4096 projection takes far longer than reading its weights. cubek also
//! has matrix-vector and per-unit kernels for few rows; this module launches one of them for
//! projections with at most [`SMALL_M`] rows, and the tensor-core kernel for the rest.
//!
//! `DRPO_CUDA_SMALL_MATMUL` names the small-row kernel (see [`KERNELS`]; `cmma` keeps the
//! tensor-core kernel, the default), so `scripts/gpu-check.sh` can measure each on the same
//! build. A kernel that cannot take a problem's layout falls back to the tensor-core kernel,
//! with one warning.

use std::any::Any;
use std::sync::{Mutex, OnceLock};

use burn::tensor::{Tensor, TensorPrimitive, backend::Backend};
use burn_cubecl::kernel::matmul::init_matmul_output;
use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems};
use cubek::matmul::launch::{Strategy, launch_ref};
use cubek::matmul::routines::{
    BlueprintStrategy, TileSizeSelection, double_unit::DoubleUnitSelectionArgs,
    simple_unit::SimpleUnitSelectionArgs,
};
use cubek::std::InputBinding;

use crate::device::CudaBackend;

/// Projections with at most this many rows use the small-row kernel.
pub const SMALL_M: usize = 64;

/// The small-row kernels `DRPO_CUDA_SMALL_MATMUL` may name.
pub const KERNELS: [&str; 9] = [
    "cmma",
    "unit",
    "unit-min",
    "unit-double",
    "vecmat",
    "vecmat-double",
    "gemv-plane",
    "gemv-unit",
    "naive",
];

/// The kernel used when `DRPO_CUDA_SMALL_MATMUL` is unset: on an H100 (run 4 in
/// `docs/gpu-check-results.md`) none of the others beat the tensor-core kernel on the decoder's
/// row-major `[in, out]` weights, and the matrix-vector ones refuse that layout.
const DEFAULT_KERNEL: &str = "cmma";

fn strategy(name: &str) -> Option<Strategy> {
    let unit = |tile_size| {
        Strategy::SimpleUnit(BlueprintStrategy::Inferred(SimpleUnitSelectionArgs {
            tile_size,
        }))
    };
    Some(match name {
        "unit" => unit(TileSizeSelection::MaxTileSize),
        "unit-min" => unit(TileSizeSelection::MinTileSize),
        "unit-double" => {
            Strategy::DoubleUnit(BlueprintStrategy::Inferred(DoubleUnitSelectionArgs {
                tile_size: TileSizeSelection::MaxTileSize,
            }))
        }
        "vecmat" => Strategy::SimpleVecMat(BlueprintStrategy::Inferred(().into())),
        "vecmat-double" => Strategy::DoubleVecMat(BlueprintStrategy::Inferred(().into())),
        "gemv-plane" => {
            Strategy::GemvPlaneParallel(BlueprintStrategy::Inferred(Default::default()))
        }
        "gemv-unit" => {
            Strategy::GemvUnitPerpendicular(BlueprintStrategy::Inferred(Default::default()))
        }
        "naive" => Strategy::Naive,
        _ => return None,
    })
}

/// The small-row kernel, read once from the environment; `None` keeps the tensor-core kernel.
fn small_m_strategy() -> Option<&'static Strategy> {
    static CHOICE: OnceLock<Option<Strategy>> = OnceLock::new();
    CHOICE
        .get_or_init(|| {
            let name = std::env::var("DRPO_CUDA_SMALL_MATMUL")
                .unwrap_or_else(|_| DEFAULT_KERNEL.to_string());
            if name == "cmma" {
                return None;
            }
            let chosen = strategy(&name);
            if chosen.is_none() {
                eprintln!(
                    "warning: DRPO_CUDA_SMALL_MATMUL={name:?} is not one of {KERNELS:?}; using \
                     the tensor-core kernel"
                );
            }
            chosen
        })
        .as_ref()
}

/// `x · w` for `x: [m, k]` and `w: [k, n]`, with the small-row kernel when `x` is a CUDA tensor
/// of at most [`SMALL_M`] rows.
pub fn project<B: Backend>(x: Tensor<B, 2>, w: &Tensor<B, 2>) -> Tensor<B, 2> {
    if x.dims()[0] <= SMALL_M
        && let Some(strategy) = small_m_strategy()
        && let (Some(xc), Some(wc)) = (
            (&x as &dyn Any).downcast_ref::<Tensor<CudaBackend, 2>>(),
            (w as &dyn Any).downcast_ref::<Tensor<CudaBackend, 2>>(),
        )
    {
        match launch(strategy, xc.clone(), wc.clone()) {
            Ok(out) => {
                return *(Box::new(out) as Box<dyn Any>)
                    .downcast::<Tensor<B, 2>>()
                    .expect("B is CudaBackend: the downcast of its inputs succeeded");
            }
            Err(e) => warn_once(format!(
                "the small-row matmul kernel failed on {:?} x {:?} ({e}); using the tensor-core \
                 kernel",
                x.dims(),
                w.dims()
            )),
        }
    }
    x.matmul(w.clone())
}

fn launch(
    strategy: &Strategy,
    x: Tensor<CudaBackend, 2>,
    w: Tensor<CudaBackend, 2>,
) -> Result<Tensor<CudaBackend, 2>, String> {
    let lhs = x.into_primitive().tensor();
    let rhs = w.into_primitive().tensor();
    let out = init_matmul_output(&lhs, &rhs, lhs.dtype);
    let mut dtypes = MatmulElems::from_globals(&MatmulGlobalElems {
        lhs: lhs.dtype.into(),
        rhs: rhs.dtype.into(),
        out: out.dtype.into(),
    });
    let client = out.client.clone();
    let (lhs_dtype, rhs_dtype) = (lhs.dtype, rhs.dtype);
    launch_ref(
        strategy,
        &client,
        InputBinding::new(lhs.binding(), lhs_dtype.into()),
        InputBinding::new(rhs.binding(), rhs_dtype.into()),
        out.clone().binding(),
        &mut dtypes,
    )
    .map_err(|e| format!("{e:?}"))?;
    Ok(Tensor::from_primitive(TensorPrimitive::Float(out)))
}

fn warn_once(message: String) {
    static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let key: String = message.chars().take(60).collect();
    if !seen.contains(&key) {
        eprintln!("warning: {message}");
        seen.push(key);
    }
}
