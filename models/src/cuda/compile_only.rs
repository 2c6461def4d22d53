//! A CUDA device that compiles every kernel it is given and runs none, for checking the CUDA
//! decoder on machines without a GPU (feature `cuda-compile-only`).
//!
//! With that feature, [`super::Runtime`] is [`CompileOnlyCuda`] instead of cubecl's CUDA runtime,
//! and everything else is the CUDA build unchanged: burn's CUDA backend over this runtime, our
//! kernels, their launch code, the decoding loop. Each kernel a launch brings is expanded by
//! cubecl, written out as CUDA C++ by cubecl's CUDA compiler with an H100's (sm_90a) features,
//! and compiled to PTX by NVRTC, the steps the real runtime takes before it loads a kernel; its
//! cube shape is checked against the H100's limits. Nothing executes: buffers live in host
//! memory, a new buffer reads as zeros, and a kernel's outputs stay as they were.
//!
//! What this catches before a GPU session: a kernel that cubecl cannot expand (otherwise found
//! only on the GPU, at the cost of a session's figures), CUDA source that NVRTC rejects, a launch shape the device refuses, and panics in the host code of
//! the CUDA path. What it cannot catch: wrong results, and speed.
//!
//! NVRTC and the CUDA headers come from NVIDIA's PyPI wheels (`scripts/fetch-nvrtc.sh`):
//! `LD_LIBRARY_PATH` must reach `libnvrtc.so.13` and `$CUDA_PATH/include` hold `cuda_bf16.h`.
//! [`compiled`] reports every kernel compiled so far, and every failure.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use cubecl::backtrace::BackTrace;
use cubecl::bytes::Bytes;
use cubecl::client::ComputeClient;
use cubecl::cuda::{CudaCompiler, CudaRuntime};
use cubecl::device::{Device, DeviceId, DeviceService, ServerUtilitiesHandle};
use cubecl::future::DynFut;
use cubecl::ir::features::{AtomicUsage, Plane, Tma, TypeUsage};
use cubecl::ir::{
    BarrierLevel, DeviceProperties, ElemType, FloatKind, HardwareProperties,
    MemoryDeviceProperties, OpaqueType, SemanticType, StorageType, TargetProperties, Type,
    VectorSize,
};
use cubecl::profile::{ProfileDuration, TimingMethod};
use cubecl::server::{
    Binding, ComputeServer, CopyDescriptor, CubeCount, ExecutionMode, IoError, KernelArguments,
    ProfileError, ProfilingToken, ServerCommunication, ServerError, ServerUtilities,
};
use cubecl::stream_id::StreamId;
use cubecl::zspace::striding::has_pitched_row_major_strides;
use cubecl::zspace::{Shape, Strides};
use cubecl::{CubeTask, Runtime as CubeclRuntime};
use cubecl_cpp::DialectWmmaCompiler;
use cubecl_cpp::cuda::CudaDialect;
use cubecl_cpp::cuda::arch::CudaArchitecture;
// The tensor-core compiler of cubecl's CUDA runtime (without its `ptx-wmma` feature).
use cubecl_cpp::cuda::mma::CudaWmmaCompiler;
use cubecl_cpp::shared::{
    CompilationOptions, CppSupportedFeatures, register_mma_features, register_scaled_mma_features,
    register_wmma_features,
};
use cubecl_runtime::allocator::PitchedMemoryLayoutPolicy;
use cubecl_runtime::id::KernelId;
use cubecl_runtime::logging::ServerLogger;
use cubecl_runtime::memory_management::{
    ManagedMemoryHandle, MemoryAllocationMode, MemoryConfiguration, MemoryManagement,
    MemoryManagementOptions, MemoryUsage,
};
use cubecl_runtime::storage::{BytesResource, BytesStorage, ComputeStorage, ManagedResource};
use cubecl_runtime::timestamp_profiler::TimestampProfiler;
use cubecl_runtime::validation::{validate_cube_dim, validate_units};

use super::panic_message;

/// The architecture kernels are compiled for: the H100's, as `scripts/gpu-check.sh` runs them.
const ARCH: u32 = 90;

/// Row alignment of the CUDA runtime's pitched allocations (as `cuMemAllocPitch` returns), so
/// that burn lays out tensors here as it does on the GPU.
const MEMORY_ALIGNMENT: u64 = 512;

/// The H100's limits that a launch is checked against.
const MAX_SHARED_MEMORY: usize = 227 * 1024;
const MAX_UNITS_PER_CUBE: u32 = 1024;
const MAX_CUBE_DIM: (u32, u32, u32) = (1024, 1024, 64);
const STREAMING_MULTIPROCESSORS: u32 = 132;

/// The compile-only device: a CUDA device index, as cubecl's CUDA device has.
#[derive(Clone, PartialEq, Eq, Default, Hash, Debug)]
pub struct CompileOnlyDevice {
    /// The index `cuda:N` named.
    pub index: usize,
}

impl CompileOnlyDevice {
    /// The device `cuda:index` names.
    pub fn new(index: usize) -> Self {
        Self { index }
    }
}

impl Device for CompileOnlyDevice {
    fn from_id(device_id: DeviceId) -> Self {
        Self::new(device_id.index_id as usize)
    }

    fn to_id(&self) -> DeviceId {
        DeviceId {
            type_id: 0,
            index_id: self.index as u16,
        }
    }
}

impl burn::tensor::backend::DeviceOps for CompileOnlyDevice {}

/// cubecl's CUDA runtime with the compile-only server: the CUDA compiler, and CUDA's target
/// properties and limits.
#[derive(Debug, Clone)]
pub struct CompileOnlyCuda;

impl CubeclRuntime for CompileOnlyCuda {
    type Compiler = CudaCompiler;
    type Server = CompileOnlyServer;
    type Device = CompileOnlyDevice;

    fn client(device: &Self::Device) -> ComputeClient<Self> {
        ComputeClient::load(device)
    }

    fn name(_client: &ComputeClient<Self>) -> &'static str {
        "cuda (compile only)"
    }

    fn require_array_lengths() -> bool {
        CudaRuntime::require_array_lengths()
    }

    fn max_cube_count() -> (u32, u32, u32) {
        CudaRuntime::max_cube_count()
    }

    fn can_read_tensor(shape: &Shape, strides: &Strides) -> bool {
        CudaRuntime::can_read_tensor(shape, strides)
    }

    fn target_properties() -> TargetProperties {
        CudaRuntime::target_properties()
    }

    fn enumerate_devices(_type_id: u16, _info: &()) -> Vec<DeviceId> {
        vec![CompileOnlyDevice::new(0).to_id()]
    }
}

/// What the compile-only devices have compiled so far in this process.
#[derive(Debug, Clone, Default)]
pub struct CompileReport {
    /// The entry point of every kernel compiled, in the order of first launch (a name recurs
    /// for each set of compile-time arguments).
    pub kernels: Vec<String>,
    /// Launches per entry point (per kernel name where a kernel did not compile).
    pub launches: BTreeMap<String, Launches>,
    /// Every kernel or launch that failed, with why (cubecl's expansion, NVRTC's log with the
    /// CUDA source, a launch limit, a buffer that is not there).
    pub failures: Vec<String>,
}

/// How often a kernel was launched, and over how many units (threads) in all: a switch that
/// changes how a kernel divides its work shows in its units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Launches {
    pub count: usize,
    /// The units of its launches of a static cube count (ours, burn's and cubek's all are).
    pub units: u64,
}

/// Kernels compiled and failed, for every compile-only device of the process.
static REPORT: Mutex<CompileReport> = Mutex::new(CompileReport {
    kernels: Vec::new(),
    launches: BTreeMap::new(),
    failures: Vec::new(),
});

/// The indices of the compile-only devices started in this process.
static DEVICES: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn report() -> std::sync::MutexGuard<'static, CompileReport> {
    REPORT.lock().unwrap_or_else(|e| e.into_inner())
}

/// What has been compiled so far, every launch issued before this call included: each device
/// takes its launches in order, on a thread of its own, and is flushed first.
pub fn compiled() -> CompileReport {
    let devices = DEVICES.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for index in devices {
        let client = CompileOnlyCuda::client(&CompileOnlyDevice::new(index));
        if let Err(e) = client.flush() {
            report()
                .failures
                .push(format!("cuda:{index} could not be flushed: {e}"));
        }
    }
    report().clone()
}

/// NVRTC's version, or why it cannot be loaded (with where to get it).
pub fn nvrtc_version() -> Result<(i32, i32), String> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: nvrtcVersion writes two integers through the pointers, which outlive the call.
    // cudarc panics when it cannot load the library.
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
        cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor)
    }));
    match loaded {
        Ok(cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS) => Ok((major, minor)),
        Ok(status) => Err(format!("NVRTC did not report its version: {status:?}")),
        Err(_) => Err(
            "NVRTC could not be loaded: run `scripts/fetch-nvrtc.sh DIR`, then set \
             LD_LIBRARY_PATH=DIR/lib and CUDA_PATH=DIR"
                .into(),
        ),
    }
}

/// Where the compile-only devices started from now on write their compiled kernels.
static KERNEL_DIR: Mutex<Option<std::path::PathBuf>> = Mutex::new(None);

/// Makes the compile-only devices started from now on write each kernel they compile to `dir`
/// (`KernelOptions::cuda_kernel_dir`), or nowhere. cubecl starts a device's server from its id
/// alone, so the folder reaches it here, before the device's first use.
pub fn keep_kernels_in(dir: Option<std::path::PathBuf>) {
    *KERNEL_DIR.lock().unwrap_or_else(|e| e.into_inner()) = dir;
}

/// The server of a compile-only device: host memory for buffers, and a compiler for kernels.
#[derive(Debug)]
pub struct CompileOnlyServer {
    memory: MemoryManagement<BytesStorage>,
    utilities: Arc<ServerUtilities<Self>>,
    options: CompilationOptions,
    /// NVRTC's include paths (the CUDA headers, and CCCL's where present), or why there are
    /// none (reported once, when the device starts).
    include: Result<Vec<String>, String>,
    /// Where compiled kernels are written (see [`keep_kernels_in`]), if anywhere.
    kernel_dir: Option<std::path::PathBuf>,
    /// The name under which each kernel seen so far is counted: its entry point once compiled.
    seen: HashMap<KernelId, String>,
    timestamps: TimestampProfiler,
}

impl ServerCommunication for CompileOnlyServer {
    const SERVER_COMM_ENABLED: bool = false;
}

impl DeviceService for CompileOnlyServer {
    fn init(device_id: DeviceId) -> Self {
        DEVICES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(device_id.index_id as usize);
        let include = include_paths();
        if let Err(why) = &include {
            report().failures.push(why.clone());
        }
        // The CUDA runtime's pages are a quarter of the device's memory; host memory is
        // smaller, and only the small models of the checks live here.
        let memory_properties = MemoryDeviceProperties {
            max_page_size: 1 << 30,
            alignment: MEMORY_ALIGNMENT,
        };
        let logger = Arc::new(ServerLogger::default());
        let memory = MemoryManagement::from_configuration(
            BytesStorage::default(),
            &memory_properties,
            MemoryConfiguration::default(),
            logger.clone(),
            MemoryManagementOptions::new("compile-only CUDA device"),
        );
        let utilities = ServerUtilities::new(
            h100_properties(memory_properties),
            logger,
            (),
            PitchedMemoryLayoutPolicy::new(MEMORY_ALIGNMENT as usize),
        );
        Self {
            memory,
            utilities: Arc::new(utilities),
            options: CompilationOptions {
                warp_size: super::LANES as u32,
                supports_features: CppSupportedFeatures {
                    fast_math: true,
                    grid_constants: true,
                    clusters: true,
                    elect_sync: true,
                    // cubecl's runtime sets it from CUDA 12.8; NVRTC here is 13.0.
                    fast_tanh: true,
                },
            },
            include,
            kernel_dir: KERNEL_DIR.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            seen: HashMap::new(),
            timestamps: TimestampProfiler::default(),
        }
    }

    fn utilities(&self) -> ServerUtilitiesHandle {
        ComputeServer::utilities(self) as ServerUtilitiesHandle
    }
}

/// The device properties kernels see when they are expanded: those cubecl's CUDA runtime sets
/// for an H100 (compute capability 9.0, CUDA 13), feature by feature, so that cubecl and cubek
/// choose the same code paths here as on the GPU (cubek's matmul, for one, loads its tiles with
/// `ldmatrix` where the device has it). Kept in step with `cubecl-cuda`'s `runtime.rs`.
fn h100_properties(memory: MemoryDeviceProperties) -> DeviceProperties {
    let arch = CudaArchitecture { version: ARCH };
    // cubecl's CUDA runtime asks its tensor-core compiler (`CudaWmmaCompiler` without its
    // `ptx-wmma` feature) for the shapes it takes.
    let wmma = <CudaWmmaCompiler as DialectWmmaCompiler<CudaDialect<CudaWmmaCompiler>>>::
        supported_wmma_combinations(&arch);
    let mma = <CudaWmmaCompiler as DialectWmmaCompiler<CudaDialect<CudaWmmaCompiler>>>::
        supported_mma_combinations(&arch);
    let scaled_mma = <CudaWmmaCompiler as DialectWmmaCompiler<CudaDialect<CudaWmmaCompiler>>>::
        supported_scaled_mma_combinations(&arch);
    let hardware = HardwareProperties {
        load_width: 128,
        plane_size_min: super::LANES as u32,
        plane_size_max: super::LANES as u32,
        max_bindings: 1024,
        max_shared_memory_size: MAX_SHARED_MEMORY,
        max_cube_count: CudaRuntime::max_cube_count(),
        max_units_per_cube: MAX_UNITS_PER_CUBE,
        max_cube_dim: MAX_CUBE_DIM,
        num_streaming_multiprocessors: Some(STREAMING_MULTIPROCESSORS),
        num_tensor_cores: Some(4),
        min_tensor_cores_dim: Some(8),
        num_cpu_cores: None,
        max_vector_size: VectorSize::MAX,
    };
    let mut p = DeviceProperties::new(Default::default(), memory, hardware, TimingMethod::System);
    cubecl_cpp::register_supported_types(&mut p);
    p.register_type_usage(ElemType::Float(FloatKind::TF32), TypeUsage::Conversion);
    let atomic = |elem: FloatKind, vector: usize| {
        Type::new(StorageType::Atomic(ElemType::Float(elem))).with_vector_size(vector)
    };
    // Compute capability 6.0 and up.
    p.register_atomic_type_usage(
        atomic(FloatKind::F64, 1),
        AtomicUsage::Add | AtomicUsage::LoadStore,
    );
    // 7.0 and up.
    for vector in [1, 2] {
        p.register_atomic_type_usage(
            atomic(FloatKind::F16, vector),
            AtomicUsage::Add | AtomicUsage::LoadStore,
        );
    }
    p.register_semantic_type(SemanticType::Pipeline);
    p.register_type_usage(OpaqueType::Barrier(BarrierLevel::Unit), TypeUsage::Buffer);
    p.register_type_usage(OpaqueType::Barrier(BarrierLevel::Cube), TypeUsage::Buffer);
    p.features.plane.insert(Plane::Sync);
    // 7.5 and up.
    for half in [FloatKind::F16, FloatKind::BF16] {
        p.features
            .matmul
            .ldmatrix
            .insert(ElemType::Float(half).into());
    }
    // 8.0 and up.
    p.features.copy_async = true;
    // 8.9 and up.
    for float in [FloatKind::E4M3, FloatKind::E5M2] {
        p.register_type_usage(
            ElemType::Float(float),
            TypeUsage::Conversion | TypeUsage::Buffer,
        );
    }
    // 9.0 and up.
    p.features.tma.insert(Tma::Base);
    p.register_semantic_type(SemanticType::TensorMap);
    p.features.cube_cluster = true;
    for half in [FloatKind::F16, FloatKind::BF16] {
        p.features
            .matmul
            .stmatrix
            .insert(ElemType::Float(half).into());
    }
    for vector in [2, 4] {
        p.register_atomic_type_usage(
            atomic(FloatKind::F32, vector),
            AtomicUsage::LoadStore | AtomicUsage::Add,
        );
    }
    // Every architecture.
    p.features.memory_reinterpret = true;
    p.features.alignment = true;
    p.features.plane.insert(Plane::Ops);
    p.features.plane.insert(Plane::NonUniformControlFlow);
    register_wmma_features(wmma, &mut p);
    register_mma_features(mma, &mut p);
    register_scaled_mma_features(scaled_mma, &mut p);
    p
}

impl CompileOnlyServer {
    /// Expands `kernel`, writes it as CUDA C++ and compiles that with NVRTC, once per kernel
    /// and execution mode (as the CUDA runtime keys its kernels); records the kernel or why it
    /// failed, and counts the launch.
    fn compile(&mut self, kernel: &dyn CubeTask<CudaCompiler>, mode: ExecutionMode, cubes: u64) {
        let mut id = kernel.id();
        let units = cubes * u64::from(id.cube_dim.num_elems());
        id.mode(mode);
        let name = match self.seen.get(&id) {
            Some(name) => name.clone(),
            None => {
                let name = match self.compile_new(kernel, &id, mode) {
                    Ok(entrypoint) => {
                        report().kernels.push(entrypoint.clone());
                        entrypoint
                    }
                    Err(why) => {
                        report().failures.push(format!("{}: {why}", kernel.name()));
                        kernel.name().to_string()
                    }
                };
                self.seen.insert(id, name.clone());
                name
            }
        };
        let mut report = report();
        let launches = report.launches.entry(name).or_default();
        launches.count += 1;
        launches.units += units;
    }

    fn compile_new(
        &self,
        kernel: &dyn CubeTask<CudaCompiler>,
        id: &KernelId,
        mode: ExecutionMode,
    ) -> Result<String, String> {
        let properties = &self.utilities.properties;
        validate_cube_dim(properties, id).map_err(|e| e.to_string())?;
        validate_units(properties, id).map_err(|e| e.to_string())?;
        // cubecl reports a kernel it cannot expand by panicking.
        let compiled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            kernel.compile(
                &mut CudaCompiler::default(),
                &self.options,
                mode,
                kernel.address_type(),
            )
        }))
        .map_err(|panic| format!("cubecl could not expand it: {}", panic_message(&*panic)))?
        .map_err(|e| format!("cubecl could not compile it: {e}"))?;
        if let Some(shared) = compiled.repr.as_ref().map(|r| r.shared_memory_size())
            && shared > MAX_SHARED_MEMORY
        {
            return Err(format!(
                "it asks for {shared} bytes of shared memory, the H100 has {MAX_SHARED_MEMORY}"
            ));
        }
        let include = self
            .include
            .as_ref()
            .map_err(|_| "not compiled: no CUDA headers (above)".to_string())?;
        let options = cudarc::nvrtc::CompileOptions {
            arch: Some("sm_90a"),
            include_paths: include.clone(),
            options: vec!["-lineinfo".into()],
            ..Default::default()
        };
        let source = compiled.source;
        let ptx =
            std::panic::catch_unwind(|| cudarc::nvrtc::compile_ptx_with_opts(&source, options))
                .map_err(|panic| {
                    format!(
                        "NVRTC panicked (is libnvrtc.so.13 on LD_LIBRARY_PATH?): {}",
                        panic_message(&*panic)
                    )
                })?;
        match ptx {
            Ok(ptx) => self.keep(&compiled.entrypoint_name, &source, &ptx.to_src())?,
            Err(cudarc::nvrtc::CompileError::CompileError { log, .. }) => {
                return Err(format!(
                    "NVRTC rejected it:\n{}\n--- its CUDA source ---\n{source}",
                    log.to_string_lossy().trim_end()
                ));
            }
            Err(e) => return Err(format!("NVRTC failed: {e:?}")),
        }
        Ok(compiled.entrypoint_name)
    }

    /// With a folder to keep kernels in, writes a compiled kernel's CUDA source and PTX there, as
    /// `NNN-ENTRYPOINT.cu` and `.ptx` (`NNN` counts this device's kernels), for reading them
    /// and for `ptxas` (registers, spills: `scripts/kernel-resources.sh`).
    fn keep(&self, entrypoint: &str, source: &str, ptx: &str) -> Result<(), String> {
        let Some(dir) = &self.kernel_dir else {
            return Ok(());
        };
        let stem = dir.join(format!("{:03}-{entrypoint}", self.seen.len()));
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(stem.with_extension("cu"), source))
            .and_then(|()| std::fs::write(stem.with_extension("ptx"), ptx))
            .map_err(|e| format!("could not write {}.cu/.ptx: {e}", stem.display()))
    }
}

/// `$CUDA_PATH/include`, and `$CUDA_PATH/include/cccl` where it exists, as cubecl's CUDA
/// runtime includes them.
fn include_paths() -> Result<Vec<String>, String> {
    let root = std::env::var("CUDA_PATH").map_err(|_| {
        "CUDA_PATH is not set: it must name a folder whose include/ holds the CUDA headers \
         (scripts/fetch-nvrtc.sh DIR makes one)"
            .to_string()
    })?;
    let include = std::path::Path::new(&root).join("include");
    if !include.join("cuda_bf16.h").is_file() {
        return Err(format!(
            "{} has no cuda_bf16.h: CUDA_PATH must name a folder whose include/ holds the CUDA \
             headers (scripts/fetch-nvrtc.sh DIR makes one)",
            include.display()
        ));
    }
    let cccl = include.join("cccl");
    Ok(std::iter::once(include)
        .chain(cccl.is_dir().then_some(cccl))
        .map(|p| p.display().to_string())
        .collect())
}

/// The rows a copy between host and device moves, as the CUDA runtime copies them: `count` rows
/// of `width` bytes, `pitch` bytes apart in device memory (burn pads short rows, see
/// `PitchedMemoryLayoutPolicy`); a tensor of rank 0 or 1 is one row.
struct Rows {
    count: usize,
    width: usize,
    pitch: usize,
}

impl Rows {
    fn of(d: &CopyDescriptor) -> Result<Self, IoError> {
        if !has_pitched_row_major_strides(&d.shape, &d.strides) {
            return Err(IoError::UnsupportedStrides {
                backtrace: BackTrace::capture(),
            });
        }
        let rank = d.shape.len();
        let width = d.shape.last().copied().unwrap_or(1) * d.elem_size;
        if rank <= 1 {
            return Ok(Self {
                count: 1,
                width,
                pitch: width,
            });
        }
        Ok(Self {
            count: d.shape[..rank - 1].iter().product(),
            width,
            pitch: d.strides[rank - 2] * d.elem_size,
        })
    }
}

impl ComputeServer for CompileOnlyServer {
    type Kernel = Box<dyn CubeTask<CudaCompiler>>;
    type Info = ();
    type MemoryLayoutPolicy = PitchedMemoryLayoutPolicy;
    type Storage = BytesStorage;

    fn initialize_memory(&mut self, memory: ManagedMemoryHandle, size: u64, _stream: StreamId) {
        let reserved = self
            .memory
            .reserve(size)
            .expect("host memory for a compile-only buffer");
        self.memory
            .bind(reserved, memory.clone(), 0)
            .expect("a reserved compile-only buffer binds");
        // Pools hand out memory again: a new buffer reads as zeros, whatever it held before.
        let storage = self
            .memory
            .get_storage(memory.binding())
            .expect("a bound buffer has storage");
        let mut bytes = self.memory.storage().get(&storage);
        bytes.write().fill(0);
    }

    fn logger(&self) -> Arc<ServerLogger> {
        self.utilities.logger.clone()
    }

    fn utilities(&self) -> Arc<ServerUtilities<Self>> {
        self.utilities.clone()
    }

    fn read(
        &mut self,
        descriptors: Vec<CopyDescriptor>,
        _stream: StreamId,
    ) -> DynFut<Result<Vec<Bytes>, ServerError>> {
        let read: Result<Vec<Bytes>, ServerError> = descriptors
            .into_iter()
            .map(|d| {
                let rows = Rows::of(&d)?;
                let resource = self.memory.get_resource(
                    d.handle.memory,
                    d.handle.offset_start,
                    d.handle.offset_end,
                )?;
                let buffer = resource.read();
                let mut bytes = Vec::with_capacity(rows.count * rows.width);
                for row in 0..rows.count {
                    bytes.extend_from_slice(&buffer[row * rows.pitch..][..rows.width]);
                }
                Ok(Bytes::from_bytes_vec(bytes))
            })
            .collect();
        Box::pin(async move { read })
    }

    fn write(&mut self, descriptors: Vec<(CopyDescriptor, Bytes)>, _stream: StreamId) {
        for (descriptor, data) in descriptors {
            let written = Rows::of(&descriptor).and_then(|rows| {
                let handle = &descriptor.handle;
                let mut resource = self.memory.get_resource(
                    handle.memory.clone(),
                    handle.offset_start,
                    handle.offset_end,
                )?;
                let buffer = resource.write();
                for (row, bytes) in data.chunks(rows.width).take(rows.count).enumerate() {
                    buffer[row * rows.pitch..][..bytes.len()].copy_from_slice(bytes);
                }
                Ok(())
            });
            if let Err(e) = written {
                report()
                    .failures
                    .push(format!("a write to the device failed: {e}"));
            }
        }
    }

    fn sync(&mut self, _stream: StreamId) -> DynFut<Result<(), ServerError>> {
        Box::pin(async { Ok(()) })
    }

    fn get_resource(
        &mut self,
        binding: Binding,
        _stream: StreamId,
    ) -> Result<ManagedResource<BytesResource>, ServerError> {
        let resource = self.memory.get_resource(
            binding.memory.clone(),
            binding.offset_start,
            binding.offset_end,
        )?;
        Ok(ManagedResource::new(binding.memory, resource))
    }

    unsafe fn launch(
        &mut self,
        kernel: Self::Kernel,
        count: CubeCount,
        bindings: KernelArguments,
        mode: ExecutionMode,
        _stream: StreamId,
    ) {
        let mut cubes = 0;
        if let CubeCount::Static(x, y, z) = count {
            cubes = u64::from(x) * u64::from(y) * u64::from(z);
            let (mx, my, mz) = CudaRuntime::max_cube_count();
            if x > mx || y > my || z > mz || x == 0 || y == 0 || z == 0 {
                report().failures.push(format!(
                    "{}: launched as ({x}, {y}, {z}) cubes; CUDA takes 1 to ({mx}, {my}, {mz})",
                    kernel.name()
                ));
            }
        }
        // The CUDA runtime resolves every buffer of a launch to device memory.
        for (i, buffer) in bindings.buffers.into_iter().enumerate() {
            let found =
                self.memory
                    .get_resource(buffer.memory, buffer.offset_start, buffer.offset_end);
            if let Err(e) = found {
                report().failures.push(format!(
                    "{}: buffer {i} of a launch is not on the device: {e}",
                    kernel.name()
                ));
            }
        }
        self.compile(&*kernel, mode, cubes);
    }

    fn flush(&mut self, _stream: StreamId) -> Result<(), ServerError> {
        Ok(())
    }

    fn memory_usage(&mut self, _stream: StreamId) -> Result<MemoryUsage, ServerError> {
        Ok(self.memory.memory_usage())
    }

    fn memory_cleanup(&mut self, _stream: StreamId) {
        self.memory.cleanup(true);
    }

    fn start_profile(&mut self, _stream: StreamId) -> Result<ProfilingToken, ServerError> {
        Ok(self.timestamps.start())
    }

    fn end_profile(
        &mut self,
        _stream: StreamId,
        token: ProfilingToken,
    ) -> Result<ProfileDuration, ProfileError> {
        self.timestamps.stop(token)
    }

    fn allocation_mode(&mut self, mode: MemoryAllocationMode, _stream: StreamId) {
        self.memory.mode(mode)
    }
}

/// Launches a one-line kernel over one cube of `units` units (each writes `value`) and waits
/// for the device to take it. cubecl cannot expand it for a `value` above 4, as when a comptime
/// assertion of a real kernel fails: the checks of this device check themselves with it.
pub fn launch_probe(value: u32, units: u32) {
    let client = CompileOnlyCuda::client(&CompileOnlyDevice::new(0));
    let out = client.empty(units as usize * size_of::<f32>());
    // SAFETY: the kernel writes `units` elements, the size of the buffer.
    let arg = unsafe { cubecl::prelude::ArrayArg::from_raw_parts(out, units as usize) };
    probe::probe_kernel::launch::<CompileOnlyCuda>(
        &client,
        CubeCount::Static(1, 1, 1),
        cubecl::prelude::CubeDim::new_1d(units),
        arg,
        value,
    );
    // Launches reach the device's thread in order: once this returns, the launch is done.
    client.flush().expect("the compile-only device flushes");
}

mod probe {
    use cubecl::prelude::*;

    /// Writes `value` to every unit's element, for `value` up to 4.
    #[cube(launch)]
    pub(super) fn probe_kernel(out: &mut Array<f32>, #[comptime] value: u32) {
        let checked = comptime!(if value > 4 {
            panic!("probe_kernel takes values up to 4, not {value}")
        } else {
            value
        });
        out[UNIT_POS as usize] = f32::cast_from(checked);
    }
}
