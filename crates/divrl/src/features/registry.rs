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

/// Names accepted by [`load_extractor`]; `pixels-<side>` (e.g. `pixels-14`, `pixels-28`) is the
/// `pixels` extractor pooled to `side × side` instead of 8 × 8, and a `-norm` suffix
/// (`pixels-norm`, `pixels-14-norm`) standardises each image's pooled vector (layout without
/// global brightness or contrast).
pub const EXTRACTORS: [&str; 5] = ["pixels", "small", "inception", "inception-native", "clip"];

/// The pooled side of a `pixels` / `pixels-<side>` name and whether it ends in `-norm`, `None`
/// for any other name.
fn pixel_side(name: &str) -> Option<Result<(i64, bool)>> {
    let (plain, norm) = match name.strip_suffix("-norm") {
        Some(p) => (p, true),
        None => (name, false),
    };
    if plain == "pixels" {
        return Some(Ok((super::pixels::DEFAULT_SIDE, norm)));
    }
    let side = plain.strip_prefix("pixels-")?;
    Some(match side.parse::<i64>() {
        Ok(s) if (2..=1024).contains(&s) || (s == 1 && !norm) => Ok((s, norm)),
        _ => Err(anyhow::anyhow!(
            "extractor {name:?}: the side after \"pixels-\" must be a whole number from 1 to 1024 (from 2 with -norm)"
        )),
    })
}

/// Whether `name` is an extractor [`load_extractor`] knows (a well-formed `pixels-<side>[-norm]`
/// included).
pub fn is_extractor_name(name: &str) -> bool {
    match pixel_side(name) {
        Some(side) => side.is_ok(),
        None => EXTRACTORS.contains(&name),
    }
}

/// Whether `name` can score the class-conditional models' grey images with what divrl ships:
/// every [`is_extractor_name`] but `clip`, whose weights are fetched separately and which embeds
/// the colour images of text-conditioned runs. `eval_independent` and `divrl audit --extractor`
/// both ask this, so they accept the same names ([`IMAGE_EXTRACTORS_HELP`] lists them).
pub fn is_image_extractor_name(name: &str) -> bool {
    name != "clip" && is_extractor_name(name)
}

/// The names [`is_image_extractor_name`] accepts, for error messages.
pub const IMAGE_EXTRACTORS_HELP: &str =
    "pixels, pixels-<side>, pixels[-<side>]-norm, small, inception or inception-native";

/// Builds an extractor by name. `weights` overrides the default weights (a classifier checkpoint
/// folder for `small`, a TorchScript archive for `inception`, a CLIP folder for `clip`; `pixels`,
/// 8 × 8 grey average-pooled pixels, `pixels-<side>` and the `-norm` variants have none).
pub fn load_extractor(
    name: &str,
    weights: Option<&Path>,
    device: Device,
) -> Result<Box<dyn Extractor>> {
    if let Some(parsed) = pixel_side(name) {
        let (side, norm) = parsed?;
        if let Some(w) = weights {
            bail!("the {name} extractor has no weights (got {})", w.display());
        }
        return Ok(Box::new(if norm {
            PixelExtractor::standardized(side, 1)?
        } else {
            PixelExtractor::new(side, 1)?
        }));
    }
    match name {
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
            "unknown extractor {other:?}: expected one of {} (or pixels-<side>, pixels[-<side>]-norm)",
            EXTRACTORS.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn pixels_side_from_the_name() {
        let img = Tensor::rand([2, 1, 28, 28], (Kind::Float, Device::Cpu));
        for (name, side) in [
            ("pixels", 8),
            ("pixels-14", 14),
            ("pixels-28", 28),
            ("pixels-norm", 8),
            ("pixels-14-norm", 14),
        ] {
            let e = load_extractor(name, None, Device::Cpu).unwrap();
            assert_eq!(e.dim(), side * side, "{name}");
            assert_eq!(e.name(), name);
            let f = e.forward(&img).unwrap().features;
            assert_eq!(f.size(), vec![2, side * side], "{name}");
        }
        // At the full side the features are the pixels themselves.
        let e = load_extractor("pixels-28", None, Device::Cpu).unwrap();
        let f = e.forward(&img).unwrap().features;
        let d = (f - img.flatten(1, -1)).abs().max().double_value(&[]);
        assert!(d < 1e-6, "{d}");
        // Distinct sides cache apart.
        let a = load_extractor("pixels", None, Device::Cpu).unwrap();
        let b = load_extractor("pixels-14", None, Device::Cpu).unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
        for bad in [
            "pixels-0",
            "pixels-x",
            "pixels-",
            "pixels-99999",
            "pixels-1-norm",
            "pixels--norm",
        ] {
            let err = load_extractor(bad, None, Device::Cpu)
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains("whole number"), "{bad}: {err}");
        }
        assert!(is_extractor_name("pixels-14") && is_extractor_name("inception"));
        assert!(!is_extractor_name("pixels-0") && !is_extractor_name("resnet"));
        assert!(is_image_extractor_name("pixels-28") && is_image_extractor_name("pixels-norm"));
        assert!(!is_extractor_name("pixels-norm-norm") && !is_extractor_name("small-norm"));
        for name in ["pixels", "small", "inception", "inception-native"] {
            assert!(is_image_extractor_name(name), "{name}");
            assert!(IMAGE_EXTRACTORS_HELP.contains(name), "{name}");
        }
        for name in ["clip", "pixels-0", "resnet", ""] {
            assert!(!is_image_extractor_name(name), "{name:?}");
        }
        let p = std::path::Path::new("w.pt");
        assert!(load_extractor("pixels-14", Some(p), Device::Cpu).is_err());
    }
}
