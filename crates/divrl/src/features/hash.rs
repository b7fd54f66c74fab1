//! Content hashes (SHA-256) of files and of tensors held in memory: the keys of the feature cache
//! and the extractors' weight fingerprints.
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// SHA-256 of a tensor's shape and f32 values (a cache key for images held in memory).
pub fn tensor_content_hash(t: &Tensor) -> Result<String> {
    let v: Vec<f32> = Vec::<f32>::try_from(
        &t.to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous()
            .view([-1]),
    )?;
    let mut h = Sha256::new();
    h.update(format!("{:?}", t.size()).as_bytes());
    for x in v {
        h.update(x.to_le_bytes());
    }
    Ok(hex(&h.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file's content, streamed.
pub fn file_hash(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex(&h.finalize()))
}
