//! A small CNN classifier whose penultimate layer is divrl's default feature space ϕ on small
//! images (the way small-scale papers use a LeNet for FID on MNIST), and whose logits feed
//! Inception-Score-style metrics.
//!
//! Per level: 3×3 convolution(s) → GroupNorm → ReLU, then 2×2 max-pooling. After the last level:
//! flatten → linear → ReLU (the `feature_dim` features) → dropout → linear (class logits).
//! Input: `[N, C, H, W]` in `[-1, 1]` (the diffusion models' image format), `H = W = image_size`.
//!
//! A checkpoint is a folder with `config.toml` (`[model]`, `[train]`), `weights.safetensors` and
//! `metrics.json` (held-out accuracy).
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;
use tch::{nn, nn::Module, Device, Kind, Tensor};

use crate::config::load_vars;
use crate::config::{read_toml, write_atomic, write_safetensors_atomic, write_toml};
use crate::data::{Dataset, SplitMix64};
use crate::optim::{AdamW, AdamWConfig};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierConfig {
    /// Image channels (1 for Fashion-MNIST).
    pub in_channels: i64,
    /// Side of the square input; other sizes are resized to it by the feature extractor.
    pub image_size: i64,
    /// Output channels per level (each level halves the resolution).
    pub channels: Vec<i64>,
    /// Convolutions per level.
    pub convs_per_level: usize,
    /// Width of the penultimate (feature) layer.
    pub feature_dim: i64,
    pub num_classes: i64,
    /// GroupNorm groups (must divide every channel count).
    pub groups: i64,
    pub dropout: f64,
    /// Class names (length `num_classes`), for reports.
    #[serde(default)]
    pub class_names: Vec<String>,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        Self {
            in_channels: 1,
            image_size: 28,
            channels: vec![32, 64, 128],
            convs_per_level: 1,
            feature_dim: 128,
            num_classes: 10,
            groups: 8,
            dropout: 0.2,
            class_names: crate::data::FASHION_MNIST_CLASSES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

impl ClassifierConfig {
    pub fn validate(&self) -> Result<()> {
        if self.in_channels < 1 || self.num_classes < 2 || self.feature_dim < 1 {
            bail!("classifier config: in_channels >= 1, num_classes >= 2 and feature_dim >= 1 are required");
        }
        if self.channels.is_empty() || self.channels.iter().any(|&c| c < 1) {
            bail!("classifier config: channels must be a non-empty list of positive integers");
        }
        if self.convs_per_level < 1 {
            bail!("classifier config: convs_per_level must be >= 1");
        }
        if self.groups < 1 || self.channels.iter().any(|&c| c % self.groups != 0) {
            bail!(
                "classifier config: groups {} must divide every channel count {:?}",
                self.groups,
                self.channels
            );
        }
        if self.final_side() < 1 {
            bail!(
                "classifier config: image_size {} is too small for {} pooling levels",
                self.image_size,
                self.channels.len()
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("classifier config: dropout must be in [0, 1)");
        }
        if !self.class_names.is_empty() && self.class_names.len() as i64 != self.num_classes {
            bail!(
                "classifier config: {} class names for {} classes",
                self.class_names.len(),
                self.num_classes
            );
        }
        Ok(())
    }

    /// Spatial side after all pooling levels.
    pub fn final_side(&self) -> i64 {
        let mut s = self.image_size;
        for _ in &self.channels {
            s /= 2;
        }
        s
    }
}

#[derive(Debug)]
struct ConvBlock {
    conv: nn::Conv2D,
    norm: nn::GroupNorm,
}

/// The classifier network.
#[derive(Debug)]
pub struct Classifier {
    pub cfg: ClassifierConfig,
    levels: Vec<Vec<ConvBlock>>,
    fc: nn::Linear,
    head: nn::Linear,
}

impl Classifier {
    pub fn new(p: &nn::Path, cfg: &ClassifierConfig) -> Result<Self> {
        cfg.validate()?;
        let conv_cfg = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let mut levels = Vec::new();
        let mut c_in = cfg.in_channels;
        for (l, &c) in cfg.channels.iter().enumerate() {
            let lp = p / format!("level{l}");
            let mut blocks = Vec::new();
            for j in 0..cfg.convs_per_level {
                blocks.push(ConvBlock {
                    conv: nn::conv2d(&lp / format!("conv{j}"), c_in, c, 3, conv_cfg),
                    norm: nn::group_norm(
                        &lp / format!("norm{j}"),
                        cfg.groups,
                        c,
                        Default::default(),
                    ),
                });
                c_in = c;
            }
            levels.push(blocks);
        }
        let side = cfg.final_side();
        let flat = c_in * side * side;
        Ok(Self {
            cfg: cfg.clone(),
            levels,
            fc: nn::linear(p / "fc", flat, cfg.feature_dim, Default::default()),
            head: nn::linear(
                p / "head",
                cfg.feature_dim,
                cfg.num_classes,
                Default::default(),
            ),
        })
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let s = x.size();
        let c = &self.cfg;
        if s.len() != 4 || s[1] != c.in_channels || s[2] != c.image_size || s[3] != c.image_size {
            bail!(
                "classifier expects [N, {}, {}, {}] images, got {s:?}",
                c.in_channels,
                c.image_size,
                c.image_size
            );
        }
        Ok(())
    }

    /// Penultimate features `[N, feature_dim]` (after ReLU) and class logits `[N, num_classes]`.
    /// `train` switches dropout on.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        self.check_input(x)?;
        let mut h = x.shallow_clone();
        for blocks in &self.levels {
            for b in blocks {
                h = b.norm.forward(&b.conv.forward(&h)).relu();
            }
            h = h.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
        }
        let feats = self.fc.forward(&h.flatten(1, -1)).relu();
        let logits = self.head.forward(&feats.dropout(self.cfg.dropout, train));
        Ok((feats, logits))
    }
}

/// Training settings (`[train]` in `config.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierTrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate (AdamW; linear warm-up over the first 200 steps, then cosine decay).
    pub lr: f64,
    pub weight_decay: f64,
    /// Random horizontal flips (Fashion-MNIST classes are mirror-symmetric).
    pub hflip: bool,
    /// Random shifts of up to this many pixels (zero padding).
    pub max_shift: i64,
    pub seed: u64,
}

impl Default for ClassifierTrainConfig {
    fn default() -> Self {
        Self {
            epochs: 6,
            batch_size: 128,
            lr: 2e-3,
            weight_decay: 0.05,
            hflip: true,
            max_shift: 0,
            seed: 0,
        }
    }
}

impl ClassifierTrainConfig {
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 {
            bail!("classifier training: epochs and batch_size must be >= 1");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) || self.weight_decay < 0.0 {
            bail!("classifier training: lr must be > 0 and weight_decay >= 0");
        }
        if self.max_shift < 0 {
            bail!("classifier training: max_shift must be >= 0");
        }
        Ok(())
    }
}

/// Everything `config.toml` of a classifier checkpoint holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClassifierCheckpointConfig {
    #[serde(default)]
    pub model: ClassifierConfig,
    #[serde(default)]
    pub train: ClassifierTrainConfig,
}

/// `metrics.json` of a classifier checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierMetrics {
    pub train_images: usize,
    pub heldout_images: usize,
    pub heldout_accuracy: f64,
    pub epochs: usize,
    pub steps: usize,
    pub seconds: f64,
    pub device: String,
}

pub const CLASSIFIER_CONFIG_FILE: &str = "config.toml";
pub const CLASSIFIER_WEIGHTS_FILE: &str = "weights.safetensors";
pub const CLASSIFIER_METRICS_FILE: &str = "metrics.json";

/// A classifier loaded for inference (frozen weights).
pub struct LoadedClassifier {
    pub vs: nn::VarStore,
    pub net: Classifier,
    pub config: ClassifierCheckpointConfig,
}

/// Loads a classifier checkpoint folder.
pub fn load_classifier(dir: &Path, device: Device) -> Result<LoadedClassifier> {
    if !dir.is_dir() {
        bail!(
            "classifier checkpoint folder {} does not exist",
            dir.display()
        );
    }
    let config: ClassifierCheckpointConfig =
        read_toml(&dir.join(CLASSIFIER_CONFIG_FILE)).context("loading classifier config")?;
    config.model.validate()?;
    let mut vs = nn::VarStore::new(device);
    let net = crate::rng::with_torch_rng(|| Classifier::new(&vs.root(), &config.model))?;
    load_vars(&mut vs, &dir.join(CLASSIFIER_WEIGHTS_FILE))?;
    vs.freeze();
    Ok(LoadedClassifier { vs, net, config })
}

/// Random horizontal flips and shifts of a batch (`[B, C, H, W]`), drawn from `rng`.
fn augment(x: &Tensor, cfg: &ClassifierTrainConfig, rng: &mut SplitMix64) -> Tensor {
    let b = x.size()[0];
    let s = x.size()[3];
    let mut out = Vec::with_capacity(b as usize);
    for i in 0..b {
        let mut img = x.get(i);
        if cfg.hflip && rng.below(2) == 1 {
            img = img.flip([2]);
        }
        if cfg.max_shift > 0 {
            let m = cfg.max_shift;
            let dy = rng.below((2 * m + 1) as usize) as i64 - m;
            let dx = rng.below((2 * m + 1) as usize) as i64 - m;
            if dx != 0 || dy != 0 {
                // Pad with the background value (-1) and crop back to size.
                let padded = (img + 1.0).constant_pad_nd([m, m, m, m]) - 1.0;
                img = padded.narrow(1, m + dy, s).narrow(2, m + dx, s);
            }
        }
        out.push(img);
    }
    Tensor::stack(&out, 0)
}

/// Accuracy of `net` on `data` (images in `[0, 1]`), in batches.
pub fn accuracy(net: &Classifier, data: &Dataset, device: Device, batch: usize) -> Result<f64> {
    if data.is_empty() {
        bail!("accuracy of an empty data set");
    }
    let n = data.len();
    let mut correct = 0i64;
    tch::no_grad(|| -> Result<()> {
        for start in (0..n).step_by(batch.max(1)) {
            let idx: Vec<usize> = (start..(start + batch).min(n)).collect();
            let (x, y) = data.batch(&idx);
            let (_, logits) = net.forward_t(&x.to_device(device), false)?;
            correct += logits
                .argmax(-1, false)
                .eq_tensor(&y.to_device(device))
                .sum(Kind::Int64)
                .int64_value(&[]);
        }
        Ok(())
    })?;
    Ok(correct as f64 / n as f64)
}

/// Progress reporting of [`train_classifier`].
pub struct TrainProgress {
    pub show_bar: bool,
}

/// Trains a classifier from scratch on `train`, reports accuracy on `heldout`, and writes the
/// checkpoint folder `out` (config, weights, metrics).
pub fn train_classifier(
    cfg: &ClassifierCheckpointConfig,
    train: &Dataset,
    heldout: &Dataset,
    device: Device,
    out: &Path,
    progress: TrainProgress,
) -> Result<ClassifierMetrics> {
    cfg.model.validate()?;
    cfg.train.validate()?;
    let m = &cfg.model;
    let t = &cfg.train;
    for (what, ds) in [("training", train), ("held-out", heldout)] {
        if ds.is_empty() {
            bail!("the {what} set is empty");
        }
        let [c, h, w] = ds.image_shape();
        if c != m.in_channels || h != m.image_size || w != m.image_size {
            bail!(
                "{what} images are {c}×{h}×{w}, the classifier config expects {}×{}×{}",
                m.in_channels,
                m.image_size,
                m.image_size
            );
        }
        if ds.num_classes() > m.num_classes {
            bail!(
                "{what} set has {} classes, the classifier config {}",
                ds.num_classes(),
                m.num_classes
            );
        }
    }
    let (vs, net) = crate::rng::with_torch_seed(t.seed as i64, || -> Result<_> {
        let vs = nn::VarStore::new(device);
        let net = Classifier::new(&vs.root(), m)?;
        Ok((vs, net))
    })?;
    let mut opt = AdamW::new(
        &vs,
        AdamWConfig {
            weight_decay: t.weight_decay,
            ..Default::default()
        },
    );
    let n = train.len();
    let steps_per_epoch = n.div_ceil(t.batch_size);
    let total = steps_per_epoch * t.epochs;
    let warmup = 200.min(total / 10).max(1);
    let lr_at = |step: usize| {
        if step < warmup {
            t.lr * (step + 1) as f64 / warmup as f64
        } else {
            let p = (step - warmup) as f64 / (total - warmup).max(1) as f64;
            t.lr * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
        }
    };
    let pb = crate::progress::bar(
        total as u64,
        progress.show_bar,
        "{spinner} epoch {msg} [{bar:30}] {pos}/{len} steps ({eta})",
    );
    let start = Instant::now();
    let mut rng = SplitMix64(t.seed ^ 0xC1A5_51F1);
    let mut step = 0usize;
    for epoch in 0..t.epochs {
        let mut order: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut order);
        let (mut loss_sum, mut count) = (0.0, 0usize);
        for idx in order.chunks(t.batch_size) {
            let (x, y) = train.batch(idx);
            let x = augment(&x, t, &mut rng).to_device(device);
            let (_, logits) = net.forward_t(&x, true)?;
            let loss = logits.cross_entropy_for_logits(&y.to_device(device));
            opt.zero_grad();
            loss.backward();
            opt.step(lr_at(step));
            let l = loss.double_value(&[]);
            if !l.is_finite() {
                bail!("classifier training diverged at step {step} (loss {l})");
            }
            loss_sum += l * idx.len() as f64;
            count += idx.len();
            step += 1;
            pb.set_message(format!(
                "{}/{} loss {:.4}",
                epoch + 1,
                t.epochs,
                loss_sum / count as f64
            ));
            pb.inc(1);
        }
        let acc = accuracy(&net, heldout, device, 512)?;
        tracing::info!(
            "epoch {}/{}: train loss {:.4}, held-out accuracy {:.4} ({:.0} s)",
            epoch + 1,
            t.epochs,
            loss_sum / count as f64,
            acc,
            start.elapsed().as_secs_f64()
        );
    }
    pb.finish_and_clear();
    let acc = accuracy(&net, heldout, device, 512)?;
    let metrics = ClassifierMetrics {
        train_images: n,
        heldout_images: heldout.len(),
        heldout_accuracy: acc,
        epochs: t.epochs,
        steps: step,
        seconds: start.elapsed().as_secs_f64(),
        device: crate::device::device_name(device),
    };
    save_classifier(out, cfg, &vs, &metrics)?;
    Ok(metrics)
}

/// Writes a classifier checkpoint folder.
pub fn save_classifier(
    dir: &Path,
    cfg: &ClassifierCheckpointConfig,
    vs: &nn::VarStore,
    metrics: &ClassifierMetrics,
) -> Result<()> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    write_safetensors_atomic(&dir.join(CLASSIFIER_WEIGHTS_FILE), &vars)?;
    write_toml(&dir.join(CLASSIFIER_CONFIG_FILE), cfg)?;
    let json = serde_json::to_vec_pretty(metrics)?;
    write_atomic(&dir.join(CLASSIFIER_METRICS_FILE), &json)
}
