//! Base-model checkpoints: a folder with `config.toml`, `ema.safetensors` (the weights used for
//! sampling), and, for resuming, `weights.safetensors`, `optim.safetensors` and `state.json`.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{nn::VarStore, Device};

use crate::config::read_toml;
use crate::models::unet::{UNet, UNetConfig};
use crate::schedule::{NoiseSchedule, ScheduleConfig};

/// Everything `config.toml` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BaseConfig {
    #[serde(default)]
    pub model: UNetConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub train: TrainConfig,
}

impl BaseConfig {
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        NoiseSchedule::new(&self.schedule)?;
        self.train.validate()
    }
}

/// The `[train]` table: how the base model was (or is being) trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Data set spec (see `data::load_splits`).
    pub data: String,
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// Linear warm-up of the learning rate over this many steps.
    pub warmup_steps: usize,
    /// Cosine decay of the learning rate to `lr * min_lr_ratio` at the last step.
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub ema_decay: f64,
    /// Probability of replacing the class by the null class (classifier-free guidance).
    pub p_uncond: f64,
    pub seed: u64,
    /// Write a sample grid every this many steps (0 = never).
    pub sample_every: usize,
    /// Write a checkpoint every this many steps (0 = only at the end).
    pub checkpoint_every: usize,
    pub log_every: usize,
    /// Start from this checkpoint folder's weights (its EMA weights, as sampling uses) instead of
    /// a random initialisation: fine-tuning a base on new data. The model and schedule must match.
    pub init: Option<std::path::PathBuf>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            data: "fashion-mnist".into(),
            steps: 2400,
            batch_size: 64,
            lr: 1e-3,
            warmup_steps: 100,
            min_lr_ratio: 0.05,
            weight_decay: 0.01,
            grad_clip: 1.0,
            ema_decay: 0.998,
            p_uncond: 0.1,
            seed: 0,
            sample_every: 600,
            checkpoint_every: 300,
            log_every: 100,
            init: None,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.batch_size == 0 {
            bail!("steps and batch_size must be >= 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("lr must be positive");
        }
        if !(0.0..1.0).contains(&self.ema_decay) || !(0.0..1.0).contains(&self.p_uncond) {
            bail!("ema_decay and p_uncond must be in [0, 1)");
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio)
            || self.weight_decay < 0.0
            || self.grad_clip < 0.0
        {
            bail!("min_lr_ratio must be in [0, 1]; weight_decay and grad_clip >= 0");
        }
        Ok(())
    }

    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = (self.steps.saturating_sub(self.warmup_steps)).max(1) as f64;
        let p = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let r = self.min_lr_ratio
            + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos());
        self.lr * r
    }
}

pub const CONFIG_FILE: &str = "config.toml";
pub const EMA_FILE: &str = "ema.safetensors";
pub const WEIGHTS_FILE: &str = "weights.safetensors";
pub const OPTIM_FILE: &str = "optim.safetensors";
pub const STATE_FILE: &str = "state.json";

pub use crate::config::load_vars;

/// A UNet ready for sampling, loaded from a checkpoint folder.
pub struct LoadedModel {
    pub vs: VarStore,
    pub unet: UNet,
    pub sched: NoiseSchedule,
    pub config: BaseConfig,
}

impl LoadedModel {
    /// A frozen copy of the weights as they are now (before adapters are added or the weights
    /// trained): the KL anchor's reference model and the ungated base of `policy_steps`.
    pub fn frozen_copy(&self) -> Result<(VarStore, UNet)> {
        let mut vs = VarStore::new(self.vs.device());
        let unet = crate::rng::with_torch_rng(|| UNet::new(&vs.root(), &self.config.model))?;
        crate::optim::copy_vars(&vs, &self.vs)?;
        vs.freeze();
        Ok((vs, unet))
    }
}

/// Loads `config.toml` and the EMA weights (or the raw weights with `ema = false`, or when there
/// is no EMA file).
pub fn load_model(dir: &Path, device: Device, ema: bool) -> Result<LoadedModel> {
    if !dir.is_dir() {
        bail!("checkpoint folder {} does not exist", dir.display());
    }
    let config: BaseConfig =
        read_toml(&dir.join(CONFIG_FILE)).context("loading checkpoint config")?;
    config
        .validate()
        .with_context(|| format!("{}", dir.join(CONFIG_FILE).display()))?;
    let mut vs = VarStore::new(device);
    let unet = crate::rng::with_torch_rng(|| UNet::new(&vs.root(), &config.model))?;
    let file = if ema && dir.join(EMA_FILE).exists() {
        EMA_FILE
    } else {
        WEIGHTS_FILE
    };
    load_vars(&mut vs, &dir.join(file))?;
    vs.freeze();
    let sched = NoiseSchedule::new(&config.schedule)?;
    Ok(LoadedModel {
        vs,
        unet,
        sched,
        config,
    })
}
