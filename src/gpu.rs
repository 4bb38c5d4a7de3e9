//! The GPU context: adapter and feature choice, the pipeline cache, tracked buffers, readback,
//! and the counters users see (dispatches, submits, bytes read back, peak buffer bytes).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::shaders;

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no GPU adapter found (backends {0}); on Linux without a GPU install Mesa's lavapipe (mesa-vulkan-drivers)")]
    NoAdapter(String),
    #[error("cannot open device on '{adapter}': {detail}")]
    Device { adapter: String, detail: String },
    #[error("shader '{kernel}' failed: {detail}")]
    Shader { kernel: String, detail: String },
    #[error("GPU out of memory allocating {bytes} bytes for {label}: {detail}")]
    OutOfMemory {
        label: String,
        bytes: u64,
        detail: String,
    },
    #[error("GPU operation failed: {0}")]
    Operation(String),
}

/// Gives Mesa's software Vulkan device (llvmpipe, "lavapipe") two worker threads per core
/// instead of one, unless `LP_NUM_THREADS` already says how many. Other drivers ignore it.
///
/// llvmpipe hands each worker one contiguous block of a dispatch's workgroups (Mesa's
/// `lp_cs_tpool`), and a decoded token is ~150 dispatches. With one worker per core the
/// submitting thread still holds a core while the workers wake, so one worker starts late
/// and its half of every dispatch finishes last; with blocks half as large, whichever worker
/// is free takes the next block. Measured on 2 cores (`lamina bench`, alternating): decode
/// +2-6% on Mesa 25.0 (and faster on 22.3), prefill within 3% either way, training unchanged.
///
/// It sets a process environment variable, so binaries call it first thing in `main`,
/// before any other thread exists (and before the first [`Gpu::new`]).
pub fn two_software_threads_per_core() {
    const VAR: &str = "LP_NUM_THREADS";
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let Some(n) = software_threads(std::env::var_os(VAR).is_some(), cores) {
        std::env::set_var(VAR, n.to_string());
    }
}

/// The worker count [`two_software_threads_per_core`] sets: none where the user set one.
fn software_threads(user_set: bool, cores: usize) -> Option<usize> {
    // llvmpipe's own limit is 32 workers.
    (!user_set).then_some((2 * cores).min(32))
}

/// Which optional device features the kernels may use. Tests turn them off to cover the
/// fallback paths that adapters without them (many Android and desktop GPUs) take.
#[derive(Debug, Clone, Copy)]
pub struct GpuOptions {
    pub allow_f16: bool,
    pub allow_subgroups: bool,
    /// Use the kernel variants shaped for CPU devices (llvmpipe) where the device is one.
    /// Off runs the GPU-class variants there too (tests do, so both stay checked).
    pub allow_cpu_kernels: bool,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            allow_f16: std::env::var("LAMINA_NO_F16").is_err(),
            allow_subgroups: std::env::var("LAMINA_NO_SUBGROUPS").is_err(),
            allow_cpu_kernels: std::env::var("LAMINA_GPU_KERNELS").is_err(),
        }
    }
}

/// Counters that do not depend on the device's speed.
#[derive(Debug, Default)]
pub struct Counters {
    pub dispatches: AtomicU64,
    pub submits: AtomicU64,
    pub bytes_read_back: AtomicU64,
    pub bytes_in_use: AtomicU64,
    pub peak_bytes: AtomicU64,
    /// Seconds and launches per kernel, filled where `LAMINA_PROFILE` is set (each dispatch
    /// then runs alone and is waited for, so the sum is slower than a real run).
    pub profile: Mutex<std::collections::BTreeMap<&'static str, (f64, u64)>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CounterSnapshot {
    pub dispatches: u64,
    pub submits: u64,
    pub bytes_read_back: u64,
    pub bytes_in_use: u64,
    pub peak_bytes: u64,
}

impl Counters {
    /// Whether kernels are timed one by one (`LAMINA_PROFILE=1`).
    pub fn profiling() -> bool {
        std::env::var_os("LAMINA_PROFILE").is_some()
    }

    pub fn record_kernel(&self, kernel: &'static str, secs: f64) {
        let mut p = lock(&self.profile);
        let e = p.entry(kernel).or_default();
        e.0 += secs;
        e.1 += 1;
    }

    /// The profile so far, slowest kernel first, as printable lines; and clears it.
    pub fn take_profile(&self) -> Vec<String> {
        let p = std::mem::take(&mut *lock(&self.profile));
        let total: f64 = p.values().map(|v| v.0).sum();
        let mut rows: Vec<_> = p.into_iter().collect();
        rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
        rows.into_iter()
            .map(|(name, (secs, n))| {
                format!(
                    "{name:>20}: {secs:8.3} s in {n:6} launches ({:5.1}%, {:.3} ms each)",
                    100.0 * secs / total.max(1e-12),
                    1e3 * secs / n.max(1) as f64
                )
            })
            .collect()
    }

    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            dispatches: self.dispatches.load(Ordering::Relaxed),
            submits: self.submits.load(Ordering::Relaxed),
            bytes_read_back: self.bytes_read_back.load(Ordering::Relaxed),
            bytes_in_use: self.bytes_in_use.load(Ordering::Relaxed),
            peak_bytes: self.peak_bytes.load(Ordering::Relaxed),
        }
    }

    /// Starts a new peak-memory measurement from the bytes in use now.
    pub fn reset_peak(&self) {
        self.peak_bytes
            .store(self.bytes_in_use.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// A buffer whose bytes count towards the context's memory figure while it lives.
#[derive(Debug)]
pub struct Buffer {
    pub raw: wgpu::Buffer,
    pub size: u64,
    counters: Arc<Counters>,
}

impl std::ops::Deref for Buffer {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        &self.raw
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.counters
            .bytes_in_use
            .fetch_sub(self.size, Ordering::Relaxed);
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PipelineKey {
    kernel: &'static str,
    flags: shaders::Flags,
    constants: Vec<(&'static str, u64)>,
}

pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    /// `shader-f16` is on and allowed.
    pub f16: bool,
    /// Subgroup operations are on and allowed.
    pub subgroups: bool,
    /// The device is a CPU (llvmpipe) with subgroups of at least 8 lanes, and CPU-class
    /// kernels are allowed: matmuls spread each X chunk over the subgroup (matmul.wgsl).
    pub cpu_kernels: bool,
    pub timestamps: bool,
    pub counters: Arc<Counters>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
    /// Bound where a kernel's optional input (e.g. a bias) is absent.
    pub dummy: wgpu::Buffer,
    /// Bound where a kernel's optional output is absent (a buffer may not be bound both
    /// read-only and writable in one dispatch, so not `dummy`).
    pub dummy_out: wgpu::Buffer,
    uncaptured: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({})", self.describe())
    }
}

impl Gpu {
    pub fn new(opts: GpuOptions) -> Result<Arc<Gpu>, GpuError> {
        pollster::block_on(Self::new_async(opts))
    }

    async fn new_async(opts: GpuOptions) -> Result<Arc<Gpu>, GpuError> {
        // Vulkan, Metal or DX12: the GL backend lacks f16 and subgroups. WGPU_BACKEND overrides.
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12;
        let desc = desc.with_env();
        let backends = format!("{:?}", desc.backends);
        let instance = wgpu::Instance::new(desc);
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .map_err(|_| GpuError::NoAdapter(backends))?;
        let info = adapter.get_info();
        let available = adapter.features();
        let mut features = wgpu::Features::empty();
        let f16 = opts.allow_f16 && available.contains(wgpu::Features::SHADER_F16);
        let subgroups = opts.allow_subgroups && available.contains(wgpu::Features::SUBGROUP);
        let timestamps = available.contains(wgpu::Features::TIMESTAMP_QUERY);
        if f16 {
            features |= wgpu::Features::SHADER_F16;
        }
        if subgroups {
            features |= wgpu::Features::SUBGROUP;
        }
        if timestamps {
            features |= wgpu::Features::TIMESTAMP_QUERY;
        }
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("lamina"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| GpuError::Device {
                adapter: info.name.clone(),
                detail: e.to_string(),
            })?;
        // The default handler panics; keep the first error for the next checked operation.
        let uncaptured = Arc::new(Mutex::new(None::<String>));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = lock(&sink);
            if slot.is_none() {
                *slot = Some(e.to_string());
            }
        }));
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dummy"),
            size: 256,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::UNIFORM,
            mapped_at_creation: false,
        });
        let dummy_out = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dummy_out"),
            size: 256,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let cpu_kernels = opts.allow_cpu_kernels
            && subgroups
            && info.subgroup_min_size >= 8
            && info.device_type == wgpu::DeviceType::Cpu;
        Ok(Arc::new(Gpu {
            dummy,
            dummy_out,
            device,
            queue,
            info,
            limits,
            f16,
            subgroups,
            cpu_kernels,
            timestamps,
            counters: Arc::new(Counters::default()),
            pipelines: Mutex::new(HashMap::new()),
            uncaptured,
        }))
    }

    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?}, driver {}), f16 {}, subgroups {} (size {}..{})",
            self.info.name,
            self.info.backend,
            self.info.device_type,
            self.info.driver_info,
            if self.f16 { "on" } else { "off" },
            if self.subgroups { "on" } else { "off" },
            self.info.subgroup_min_size,
            self.info.subgroup_max_size,
        )
    }

    /// Returns (and clears) an error the device reported outside any scope.
    pub fn take_uncaptured_error(&self) -> Result<(), GpuError> {
        match lock(&self.uncaptured).take() {
            Some(e) => Err(GpuError::Operation(e)),
            None => Ok(()),
        }
    }

    pub fn buffer(
        &self,
        label: &str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<Buffer, GpuError> {
        let size = size.max(16).div_ceil(16) * 16;
        if size > self.limits.max_buffer_size {
            return Err(GpuError::OutOfMemory {
                label: label.into(),
                bytes: size,
                detail: format!(
                    "larger than the device's max buffer size {}",
                    self.limits.max_buffer_size
                ),
            });
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let raw = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(GpuError::OutOfMemory {
                label: label.into(),
                bytes: size,
                detail: e.to_string(),
            });
        }
        let now = self
            .counters
            .bytes_in_use
            .fetch_add(size, Ordering::Relaxed)
            + size;
        self.counters.peak_bytes.fetch_max(now, Ordering::Relaxed);
        Ok(Buffer {
            raw,
            size,
            counters: self.counters.clone(),
        })
    }

    /// A storage buffer (read/write by kernels, copy in and out).
    pub fn storage(&self, label: &str, size: u64) -> Result<Buffer, GpuError> {
        self.buffer(
            label,
            size,
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
        )
    }

    pub fn storage_init(&self, label: &str, data: &[u8]) -> Result<Buffer, GpuError> {
        let b = self.storage(label, data.len() as u64)?;
        self.queue.write_buffer(&b, 0, data);
        Ok(b)
    }

    pub fn uniform_init(&self, label: &str, data: &[u8]) -> Result<Buffer, GpuError> {
        let b = self.buffer(
            label,
            data.len() as u64,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        )?;
        self.queue.write_buffer(&b, 0, data);
        Ok(b)
    }

    /// A compiled kernel variant, built once per set of flags and override constants.
    /// `flags` may only ask for features the device has on ([`Gpu::shader_flags`]).
    pub fn pipeline(
        &self,
        kernel: &'static str,
        flags: shaders::Flags,
        constants: &[(&'static str, u64)],
    ) -> Result<Arc<wgpu::ComputePipeline>, GpuError> {
        if (flags.f16 && !self.f16) || (flags.subgroups && !self.subgroups) {
            return Err(GpuError::Shader {
                kernel: kernel.into(),
                detail: format!(
                    "{flags:?} asks for features the device has off: {}",
                    self.describe()
                ),
            });
        }
        let key = PipelineKey {
            kernel,
            flags,
            constants: constants.to_vec(),
        };
        if let Some(p) = lock(&self.pipelines).get(&key) {
            return Ok(p.clone());
        }
        let source = shaders::variant_source(kernel, &flags, constants).map_err(|detail| {
            GpuError::Shader {
                kernel: kernel.into(),
                detail,
            }
        })?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(kernel),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &[],
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Shader {
                kernel: kernel.into(),
                detail: e.to_string(),
            });
        }
        let p = Arc::new(pipeline);
        lock(&self.pipelines).insert(key, p.clone());
        Ok(p)
    }

    /// Every kernel variant compiled on this device so far, as (kernel, flags, override
    /// constants): [`shaders::variant_source`] gives each one's WGSL exactly as compiled.
    /// Tests translate them for the other platforms' shading languages.
    pub fn compiled_variants(&self) -> Vec<shaders::Variant> {
        lock(&self.pipelines)
            .keys()
            .map(|k| shaders::Variant {
                kernel: k.kernel,
                flags: k.flags,
                constants: k.constants.clone(),
            })
            .collect()
    }

    pub fn shader_flags(&self) -> shaders::Flags {
        shaders::Flags {
            subgroups: self.subgroups,
            f16: self.f16,
        }
    }

    pub fn bind_group(
        &self,
        pipeline: &wgpu::ComputePipeline,
        buffers: &[&wgpu::Buffer],
    ) -> wgpu::BindGroup {
        let layout = pipeline.get_bind_group_layout(0);
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &layout,
            entries: &entries,
        })
    }

    pub fn submit(&self, encoder: wgpu::CommandEncoder) -> wgpu::SubmissionIndex {
        self.counters.submits.fetch_add(1, Ordering::Relaxed);
        self.queue.submit([encoder.finish()])
    }

    pub fn wait(&self) -> Result<(), GpuError> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Operation(e.to_string()))?;
        self.take_uncaptured_error()
    }

    /// Copies `size` bytes at `offset` of `src` back to the CPU (submits and waits).
    pub fn read_back(
        &self,
        src: &wgpu::Buffer,
        offset: u64,
        size: u64,
    ) -> Result<Vec<u8>, GpuError> {
        let mut enc = self.device.create_command_encoder(&Default::default());
        let staging = self.read_back_encode(&mut enc, src, offset, size)?;
        self.submit(enc);
        self.finish_read_back(&staging, size)
    }

    /// Records a copy into a fresh staging buffer; finish with [`Gpu::finish_read_back`].
    pub fn read_back_encode(
        &self,
        enc: &mut wgpu::CommandEncoder,
        src: &wgpu::Buffer,
        offset: u64,
        size: u64,
    ) -> Result<Buffer, GpuError> {
        let padded = size.div_ceil(4) * 4;
        let staging = self.buffer(
            "staging",
            padded,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        enc.copy_buffer_to_buffer(src, offset, &staging, 0, padded);
        Ok(staging)
    }

    pub fn finish_read_back(&self, staging: &Buffer, size: u64) -> Result<Vec<u8>, GpuError> {
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        let mapped = self.wait().and_then(|()| {
            rx.recv()
                .map_err(|e| GpuError::Operation(e.to_string()))?
                .map_err(|e| GpuError::Operation(e.to_string()))?;
            let range = staging
                .get_mapped_range(..)
                .map_err(|e| GpuError::Operation(e.to_string()))?;
            range
                .get(..size as usize)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| {
                    GpuError::Operation(format!("read back of {size} bytes from a smaller buffer"))
                })
        });
        // Mapped or still pending, the staging buffer is released either way: a buffer left
        // mapped after an error would make every later read back through it fail.
        staging.unmap();
        let data = mapped?;
        self.counters
            .bytes_read_back
            .fetch_add(size, Ordering::Relaxed);
        Ok(data)
    }

    pub fn read_f32(
        &self,
        src: &wgpu::Buffer,
        offset_elems: u64,
        n: u64,
    ) -> Result<Vec<f32>, GpuError> {
        let bytes = self.read_back(src, offset_elems * 4, n * 4)?;
        Ok(f32s_from_bytes(&bytes))
    }

    /// [`Gpu::read_f32`] of many buffers (each from its start, `n` values) in one submit.
    pub fn read_f32_many(&self, srcs: &[(&wgpu::Buffer, u64)]) -> Result<Vec<Vec<f32>>, GpuError> {
        let mut enc = self.device.create_command_encoder(&Default::default());
        let staging = srcs
            .iter()
            .map(|&(src, n)| self.read_back_encode(&mut enc, src, 0, n * 4))
            .collect::<Result<Vec<_>, _>>()?;
        self.submit(enc);
        staging
            .iter()
            .zip(srcs)
            .map(|(st, &(_, n))| Ok(f32s_from_bytes(&self.finish_read_back(st, n * 4)?)))
            .collect()
    }

    /// Records one dispatch in `pass` and counts it.
    pub fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        pipeline: &wgpu::ComputePipeline,
        bind_group: &wgpu::BindGroup,
        groups: [u32; 3],
    ) {
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        self.counters.dispatches.fetch_add(1, Ordering::Relaxed);
    }
}

/// Locks a mutex, also after a thread panicked holding it: the data guarded here (the first
/// device error, the pipeline cache) stays valid whatever that thread was doing.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Little-endian f32s from bytes of any alignment (a `Vec<u8>` need not be 4-aligned, so
/// `bytemuck::cast_slice` on it could panic).
pub fn f32s_from_bytes(bytes: &[u8]) -> Vec<f32> {
    bytemuck::pod_collect_to_vec(&bytes[..bytes.len() / 4 * 4])
}

/// Little-endian u32s from bytes of any alignment.
pub fn u32s_from_bytes(bytes: &[u8]) -> Vec<u32> {
    bytemuck::pod_collect_to_vec(&bytes[..bytes.len() / 4 * 4])
}

/// Workgroups per grid dimension that every device takes (WebGPU's default limit).
pub const MAX_GROUPS_PER_DIM: u32 = 65535;

/// Splits a 1-D count of workgroups into a grid within the per-dimension limit.
pub fn grid(groups: u32) -> [u32; 3] {
    if groups <= MAX_GROUPS_PER_DIM {
        [groups.max(1), 1, 1]
    } else {
        let y = groups.div_ceil(MAX_GROUPS_PER_DIM);
        [groups.div_ceil(y), y, 1]
    }
}

#[cfg(test)]
mod tests {
    use super::software_threads;

    #[test]
    fn software_threads_double_the_cores_unless_the_user_chose() {
        assert_eq!(software_threads(false, 2), Some(4));
        assert_eq!(software_threads(false, 1), Some(2));
        assert_eq!(software_threads(false, 64), Some(32));
        assert_eq!(software_threads(true, 2), None);
    }
}
