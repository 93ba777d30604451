//! Choosing the compute device: `cpu`, `cuda` or `cuda:N`.
//!
//! CUDA needs a build with the `cuda` feature (candle's CUDA backend; `cudnn` adds cuDNN
//! convolutions). Our CPU kernels only serve CPU tensors; on a GPU every layer uses candle's own ops
//! with the same parameter names and semantics.

use anyhow::{bail, Result};
use candle_core::Device;

/// Parses `cpu`, `cuda` (device 0) or `cuda:N` and opens the device.
pub fn parse_device(spec: &str) -> Result<Device> {
    let s = spec.trim().to_ascii_lowercase();
    let ordinal = match s.as_str() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" | "gpu" => 0,
        _ => match s.strip_prefix("cuda:") {
            Some(n) => n.parse::<usize>().map_err(|_| {
                anyhow::anyhow!(
                    "`{spec}`: the device number after `cuda:` must be a non-negative integer"
                )
            })?,
            None => bail!("unknown device `{spec}`; use `cpu`, `cuda` or `cuda:N`"),
        },
    };
    open_cuda(spec, ordinal)
}

#[cfg(feature = "cuda")]
fn open_cuda(spec: &str, ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| {
        anyhow::anyhow!(
            "cannot open `{spec}` (CUDA device {ordinal}): {e}; check the driver, `nvidia-smi`, \
             and that LD_LIBRARY_PATH has the CUDA libraries (see scripts/gpu-check.sh)"
        )
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(spec: &str, _ordinal: usize) -> Result<Device> {
    bail!(
        "`{spec}`: this octconv was built without CUDA; rebuild with `--features cuda` \
         (scripts/cuda-build.sh does it with NVIDIA's toolkit from PyPI)"
    )
}

/// A short description: `cpu (2 threads)` or `cuda:0`.
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
        Device::Cuda(_) => match device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            other => format!("{other:?}"),
        },
        other => format!("{:?}", other.location()),
    }
}
