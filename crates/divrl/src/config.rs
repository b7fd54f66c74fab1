//! Small helpers for TOML/JSON configs, atomic file writes and safetensors weights.
use anyhow::{bail, Context, Result};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::path::Path;
use tch::nn::VarStore;

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a reader
/// never sees a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Writes a tch safetensors file atomically.
pub fn write_safetensors_atomic(path: &Path, tensors: &[(String, tch::Tensor)]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}.safetensors", std::process::id()));
    let cpu: Vec<(String, tch::Tensor)> = tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                t.detach().to_device(tch::Device::Cpu).contiguous(),
            )
        })
        .collect();
    tch::Tensor::write_safetensors(&cpu, &tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Reads all tensors of a safetensors file, with the file name in any error.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, tch::Tensor)>> {
    if !path.exists() {
        anyhow::bail!("{} does not exist", path.display());
    }
    tch::Tensor::read_safetensors(path)
        .with_context(|| format!("reading {} (not a valid safetensors file?)", path.display()))
}

pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

pub fn write_toml<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = toml::to_string_pretty(value).context("serialising TOML")?;
    write_atomic(path, text.as_bytes())
}

/// Copies a safetensors file into a VarStore, checking names and shapes (no panics on a
/// mismatched or corrupt file).
pub fn load_vars(vs: &mut VarStore, path: &Path) -> Result<()> {
    let tensors: HashMap<String, tch::Tensor> = read_safetensors(path)?.into_iter().collect();
    let vars = vs.variables();
    let mut missing = Vec::new();
    for (name, var) in &vars {
        match tensors.get(name) {
            None => missing.push(name.clone()),
            Some(t) if t.size() != var.size() => bail!(
                "{}: tensor {name} has shape {:?}, the model expects {:?} (checkpoint made for another config?)",
                path.display(),
                t.size(),
                var.size()
            ),
            Some(_) => {}
        }
    }
    if !missing.is_empty() {
        missing.sort();
        bail!(
            "{}: {} model tensors missing (first: {})",
            path.display(),
            missing.len(),
            missing[0]
        );
    }
    tch::no_grad(|| {
        for (name, mut var) in vars {
            let t = &tensors[&name];
            var.copy_(&t.to_device(var.device()).to_kind(var.kind()));
        }
    });
    Ok(())
}
