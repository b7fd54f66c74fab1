//! The learned feature networks: `small` (a divrl classifier's penultimate layer), `inception`
//! (the FID-Inception TorchScript archive and its native port) and `clip`.
use crate::imageops::{resize_bilinear, to_channels};
use crate::models::classifier::{load_classifier, LoadedClassifier};
use crate::models::inception::TorchScriptInception;
use anyhow::Result;
use std::path::Path;
use tch::{Device, Kind, Tensor};

use super::extractor::{Extracted, Extractor};
use super::hash::{file_hash, sha256_hex};

/// `small`: the penultimate layer of a divrl classifier checkpoint (default: the shipped
/// Fashion-MNIST classifier), with its class logits.
pub struct SmallExtractor {
    pub model: LoadedClassifier,
    fingerprint: String,
    device: Device,
}

impl SmallExtractor {
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let model = load_classifier(dir, device)?;
        let w = file_hash(&dir.join(crate::models::classifier::CLASSIFIER_WEIGHTS_FILE))?;
        let c = file_hash(&dir.join(crate::models::classifier::CLASSIFIER_CONFIG_FILE))?;
        Ok(Self {
            model,
            fingerprint: format!(
                "small-v1-{}",
                &sha256_hex(format!("{w}{c}").as_bytes())[..16]
            ),
            device,
        })
    }
}

impl Extractor for SmallExtractor {
    fn name(&self) -> &str {
        "small"
    }
    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    fn dim(&self) -> i64 {
        self.model.config.model.feature_dim
    }
    fn default_batch(&self) -> usize {
        500
    }
    fn device(&self) -> Device {
        self.device
    }
    fn forward(&self, images: &Tensor) -> Result<Extracted> {
        let cfg = &self.model.config.model;
        let x = to_channels(
            &images.to_device(self.device).to_kind(Kind::Float),
            cfg.in_channels,
        )?;
        let x = resize_bilinear(&x, cfg.image_size, cfg.image_size).clamp(0.0, 1.0) * 2.0 - 1.0;
        let (f, l) = tch::no_grad(|| self.model.net.forward_t(&x, false))?;
        Ok(Extracted {
            features: f,
            logits: Some(l),
        })
    }
    fn class_names(&self) -> Option<Vec<String>> {
        let c = &self.model.config.model;
        Some(if c.class_names.is_empty() {
            (0..c.num_classes).map(|i| i.to_string()).collect()
        } else {
            c.class_names.clone()
        })
    }
}

/// `inception`: FID InceptionV3 pool3 (TorchScript archive).
pub struct InceptionExtractor {
    pub net: TorchScriptInception,
    fingerprint: String,
}

impl InceptionExtractor {
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let net = TorchScriptInception::load(path, device)?;
        let h = file_hash(path)?;
        Ok(Self {
            net,
            fingerprint: format!("inception-v1-{}", &h[..16]),
        })
    }
}

impl Extractor for InceptionExtractor {
    fn name(&self) -> &str {
        "inception"
    }
    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    fn dim(&self) -> i64 {
        crate::models::inception::POOL3_DIM
    }
    fn default_batch(&self) -> usize {
        32
    }
    fn device(&self) -> Device {
        self.net.device()
    }
    fn forward(&self, images: &Tensor) -> Result<Extracted> {
        Ok(Extracted {
            features: self.net.forward(&images.clamp(0.0, 1.0))?,
            logits: None,
        })
    }
}

/// `inception-native`: FID InceptionV3 pool3 from divrl's own port
/// ([`crate::models::inception::NativeInception`]), with
/// logits (1008 classes) when the weights have pytorch-fid's `fc` layer.
pub struct NativeInceptionExtractor {
    pub net: crate::models::inception::NativeInception,
    fingerprint: String,
}

impl NativeInceptionExtractor {
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let net = crate::models::inception::NativeInception::load(path, device)?;
        let h = file_hash(path)?;
        Ok(Self {
            net,
            fingerprint: format!("inception-native-v1-{}", &h[..16]),
        })
    }
}

impl Extractor for NativeInceptionExtractor {
    fn name(&self) -> &str {
        "inception-native"
    }
    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    fn dim(&self) -> i64 {
        crate::models::inception::POOL3_DIM
    }
    fn default_batch(&self) -> usize {
        32
    }
    fn device(&self) -> Device {
        self.net.device()
    }
    fn forward(&self, images: &Tensor) -> Result<Extracted> {
        let (features, logits) = self.net.forward(&images.clamp(0.0, 1.0))?;
        Ok(Extracted { features, logits })
    }
}

/// `clip`: projected CLIP image embeddings (HF `CLIPModel` folder).
pub struct ClipExtractor {
    pub clip: crate::models::clip::LoadedClip,
    fingerprint: String,
}

impl ClipExtractor {
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let clip = crate::models::clip::load_clip(dir, None, device)?;
        let h = file_hash(&clip.weights)?;
        Ok(Self {
            clip,
            fingerprint: format!("clip-v1-{}", &h[..16]),
        })
    }
}

impl Extractor for ClipExtractor {
    fn name(&self) -> &str {
        "clip"
    }
    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    fn dim(&self) -> i64 {
        self.clip.model.cfg.projection_dim
    }
    fn default_batch(&self) -> usize {
        32
    }
    fn device(&self) -> Device {
        self.clip.device
    }
    fn forward(&self, images: &Tensor) -> Result<Extracted> {
        Ok(Extracted {
            features: self.clip.encode_images(images)?,
            logits: None,
        })
    }
}
