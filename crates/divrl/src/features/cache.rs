//! The feature cache: features of an image source keyed by the content hash of the input and the
//! extractor's fingerprint, written atomically as `.npy`.
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

use super::extractor::{extract, Extracted, Extractor};
use super::hash::sha256_hex;
use super::sources::ImageSource;

/// A folder of cached feature arrays: `<key>.features.npy` and `<key>.logits.npy`, where the key
/// hashes the input's content hash and the extractor's fingerprint.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    pub dir: PathBuf,
}

impl FeatureCache {
    /// `$DIVRL_CACHE_DIR/features`, else `$XDG_CACHE_HOME/divrl/features`, else
    /// `~/.cache/divrl/features`.
    pub fn default_dir() -> PathBuf {
        if let Some(p) = std::env::var_os("DIVRL_CACHE_DIR") {
            return PathBuf::from(p).join("features");
        }
        if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
            return PathBuf::from(p).join("divrl/features");
        }
        if let Some(p) = std::env::var_os("HOME") {
            return PathBuf::from(p).join(".cache/divrl/features");
        }
        PathBuf::from(".divrl-cache/features")
    }

    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn key(content_hash: &str, fingerprint: &str) -> String {
        sha256_hex(format!("{content_hash}|{fingerprint}").as_bytes())[..32].to_string()
    }

    fn paths(&self, key: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{key}.features.npy")),
            self.dir.join(format!("{key}.logits.npy")),
        )
    }

    /// The cached result, if present and readable (an unreadable entry counts as a miss).
    pub fn get(&self, key: &str) -> Option<Extracted> {
        let (fp, lp) = self.paths(key);
        let read = |p: &Path| -> Option<Tensor> {
            let a = divrl_reward::io::read_array(p).ok()?;
            if a.shape.len() != 2 {
                return None;
            }
            let v: Vec<f32> = a.data.iter().map(|&x| x as f32).collect();
            Some(Tensor::from_slice(&v).view([a.shape[0] as i64, a.shape[1] as i64]))
        };
        let features = read(&fp)?;
        let logits = if lp.exists() { Some(read(&lp)?) } else { None };
        Some(Extracted { features, logits })
    }

    pub fn put(&self, key: &str, value: &Extracted) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating cache folder {}", self.dir.display()))?;
        let (fp, lp) = self.paths(key);
        if let Some(l) = &value.logits {
            write_npy_f32(&lp, l)?;
        }
        write_npy_f32(&fp, &value.features)
    }
}

/// Writes a 2-d float tensor as a float32 `.npy`, atomically.
pub fn write_npy_f32(path: &Path, t: &Tensor) -> Result<()> {
    let s = t.size();
    if s.len() != 2 {
        bail!("expected a 2-d tensor, got shape {s:?}");
    }
    let v: Vec<f64> = Vec::<f64>::try_from(
        &t.to_device(Device::Cpu)
            .to_kind(Kind::Double)
            .contiguous()
            .view([-1]),
    )?;
    divrl_reward::io::write_npy(path, &[s[0] as usize, s[1] as usize], &v, true)
        .with_context(|| format!("writing {}", path.display()))
}

/// Features of an image source, through the cache when one is given. Returns the result and
/// whether it came from the cache.
pub fn features_of_source(
    ext: &dyn Extractor,
    src: &ImageSource,
    cache: Option<&FeatureCache>,
    batch: usize,
    show_progress: bool,
) -> Result<(Extracted, bool)> {
    let key = match cache {
        Some(_) => Some(FeatureCache::key(&src.content_hash()?, ext.fingerprint())),
        None => None,
    };
    if let (Some(c), Some(k)) = (cache, &key) {
        if let Some(hit) = c.get(k) {
            if hit.features.size()[1] == ext.dim() {
                return Ok((hit, true));
            }
        }
    }
    let images = src.load()?;
    let out = extract(ext, &images, batch, show_progress)?;
    if let (Some(c), Some(k)) = (cache, &key) {
        c.put(k, &out)?;
    }
    Ok((out, false))
}
