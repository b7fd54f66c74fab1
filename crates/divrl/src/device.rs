//! Device selection (`--device cpu|cuda|auto`) and thread set-up.
use anyhow::{bail, Result};
use tch::Device;

/// Parses `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available, else CPU).
pub fn parse_device(spec: &str) -> Result<Device> {
    let s = spec.trim().to_ascii_lowercase();
    match s.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available()),
        "cuda" | "gpu" => {
            if !tch::Cuda::is_available() {
                bail!("--device cuda requested but libtorch sees no CUDA device (use --device cpu or auto)");
            }
            Ok(Device::Cuda(0))
        }
        _ => {
            if let Some(idx) = s.strip_prefix("cuda:") {
                let i: usize = idx.parse().map_err(|_| {
                    anyhow::anyhow!("bad device {spec:?}: expected cpu, cuda, cuda:N or auto")
                })?;
                let n = tch::Cuda::device_count() as usize;
                if i >= n {
                    bail!("--device {spec}: only {n} CUDA device(s) visible");
                }
                return Ok(Device::Cuda(i));
            }
            bail!("bad device {spec:?}: expected cpu, cuda, cuda:N or auto")
        }
    }
}

/// A short human name for logs and benchmark tables.
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}

/// Sets libtorch's intra-op thread count; 0 keeps libtorch's default (one per core).
pub fn set_threads(n: usize) {
    if n > 0 {
        tch::set_num_threads(n as i32);
    }
}
