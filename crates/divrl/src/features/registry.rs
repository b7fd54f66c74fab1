//! Extractors by name (`--extractor`): [`EXTRACTORS`], [`load_extractor`] and the default weight
//! locations.
use crate::paths::models_dir;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use tch::Device;

use super::extractor::Extractor;
use super::networks::{
    ClipExtractor, InceptionExtractor, NativeInceptionExtractor, SmallExtractor,
};
use super::pixels::PixelExtractor;

/// The shipped Fashion-MNIST classifier checkpoint (the default `small` extractor).
pub fn default_classifier_dir() -> PathBuf {
    models_dir().join("fashion-mnist-classifier")
}

/// The default CLIP folder: `$DIVRL_CLIP`, else `<models dir>/clip`.
pub fn default_clip_dir() -> PathBuf {
    std::env::var_os("DIVRL_CLIP")
        .map(PathBuf::from)
        .unwrap_or_else(|| models_dir().join("clip"))
}

/// Names accepted by [`load_extractor`].
pub const EXTRACTORS: [&str; 5] = ["pixels", "small", "inception", "inception-native", "clip"];

/// Builds an extractor by name. `weights` overrides the default weights (a classifier checkpoint
/// folder for `small`, a TorchScript archive for `inception`, a CLIP folder for `clip`; `pixels`,
/// 8 × 8 grey average-pooled pixels, has none).
pub fn load_extractor(
    name: &str,
    weights: Option<&Path>,
    device: Device,
) -> Result<Box<dyn Extractor>> {
    match name {
        "pixels" => {
            if let Some(w) = weights {
                bail!("the pixels extractor has no weights (got {})", w.display());
            }
            Ok(Box::new(PixelExtractor::new(8, 1)?))
        }
        "small" => {
            let dir = weights
                .map(Path::to_path_buf)
                .unwrap_or_else(default_classifier_dir);
            Ok(Box::new(SmallExtractor::load(&dir, device)?))
        }
        "inception" => {
            let p = weights
                .map(Path::to_path_buf)
                .unwrap_or_else(crate::models::inception::default_archive_path);
            Ok(Box::new(InceptionExtractor::load(&p, device)?))
        }
        "inception-native" => {
            let p = weights
                .map(Path::to_path_buf)
                .unwrap_or_else(crate::models::inception::default_archive_path);
            Ok(Box::new(NativeInceptionExtractor::load(&p, device)?))
        }
        "clip" => {
            let d = weights
                .map(Path::to_path_buf)
                .unwrap_or_else(default_clip_dir);
            if !d.is_dir() {
                bail!(
                    "CLIP folder {} not found: pass --weights DIR with config.json, model.safetensors and tokenizer.json (e.g. a download of openai/clip-vit-base-patch32)",
                    d.display()
                );
            }
            Ok(Box::new(ClipExtractor::load(&d, device)?))
        }
        other => bail!(
            "unknown extractor {other:?}: expected one of {}",
            EXTRACTORS.join(", ")
        ),
    }
}
