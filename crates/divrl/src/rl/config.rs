//! The fine-tuning run's configuration: one flat TOML table (`divrl finetune --config run.toml`),
//! every field also a command-line flag. Unset fields take the defaults below (DDPO's where DDPO
//! has one, the paper's M = 5 and N = 50).
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use crate::nn::lora::LoraConfig;
use crate::schedule::{CadsConfig, GuidanceInterval, LogProbReduction, SamplerConfig, SamplerKind};
use divrl_reward::{MmdKernel, RewardKind, RewardSpec};

/// The base checkpoint of the RL presets (demo, experiments, `divrl finetune` without `--base`).
pub const RL_BASE: &str = "models/fashion-mnist-base-small";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FinetuneConfig {
    // ---- model, data, feature space ------------------------------------------------------
    /// `unet` (a class-conditional base checkpoint) or `sd` (a Stable Diffusion diffusers folder
    /// in `base`, prompts as conditions; see [`crate::rl::sd_model`]).
    pub model: String,
    /// sd: the prompts (condition `i` is prompt `i`).
    pub prompts: Vec<String>,
    /// sd: reference images per prompt: one folder per prompt, or a single folder holding one
    /// sub-folder per prompt (sorted by name). At most `ref_per_class` images of each are used.
    pub references: Vec<PathBuf>,
    /// sd: image side in pixels (0 = the UNet's `sample_size` latents).
    pub resolution: i64,
    /// sd: `fp32`, `bf16` (frozen weights in bfloat16, adapters f32) or `fp16` (CUDA autocast).
    pub precision: String,
    /// sd: gradient checkpointing of the UNet in the PPO update (recompute each stage in the
    /// backward pass instead of keeping the whole graph).
    pub gradient_checkpointing: bool,
    /// Base checkpoint folder (`config.toml` + `ema.safetensors`); default [`RL_BASE`].
    pub base: PathBuf,
    /// Run folder: log, sample grids, checkpoints, exports.
    pub out: PathBuf,
    /// Data set spec (as `train-base --data`): its reference pool gives the per-condition
    /// reference sets, its evaluation pool the held-out metrics.
    pub data: String,
    /// N: reference images per condition (the first N of the reference pool's class).
    pub ref_per_class: usize,
    /// Balance each reference set over the data set's binary attribute (N/2 of each value, the
    /// first ones of the pool; the skewed variant's debiasing setting). Needs an even N.
    pub balanced_reference: bool,
    /// Conditions (class indices) to fine-tune on; empty = every class of the model.
    pub classes: Vec<i64>,
    /// Conditions sampled per epoch (a seeded draw without replacement); 0 = all of them.
    pub classes_per_epoch: usize,
    /// M: images in each generated set X_g (the set the Diversity Reward scores).
    pub images_per_class: usize,
    /// K: generated sets of M images per condition and epoch, each scored on its own, so an
    /// epoch has K·M trajectories per condition while the reward keeps the paper's M.
    pub sets_per_class: usize,
    /// Feature network ϕ: `small` (Fashion-MNIST classifier), `inception`, or `pixels`.
    pub extractor: String,
    /// Weights of ϕ (classifier folder / TorchScript archive); default the shipped ones.
    pub extractor_weights: Option<PathBuf>,

    // ---- reward ------------------------------------------------------------------------------
    /// Diversity Reward: `mmd`, `gp-mi` or `recall`.
    pub reward: RewardKind,
    /// Polynomial kernel degree (mmd); default 3.
    pub degree: Option<u32>,
    /// Polynomial kernel scale (mmd); default 1/D.
    pub gamma: Option<f64>,
    /// Polynomial kernel offset (mmd); default 1.
    pub coef0: Option<f64>,
    /// RBF bandwidth (gp-mi, mmd with the RBF kernel); default `sigma_scale` × the median
    /// pairwise distance of each condition's references.
    pub sigma: Option<f64>,
    /// Multiple of the median reference distance used as the RBF bandwidth when `sigma` is unset.
    pub sigma_scale: f64,
    /// Kernel of the MMD reward: `polynomial` (KID) or `rbf`.
    pub mmd_kernel: MmdKernel,
    /// Kernel-diagonal jitter (gp-mi).
    pub jitter: f64,
    /// k of the k-NN balls (recall).
    pub recall_k: usize,
    /// Rewards are multiplied by this before the advantage normalisation.
    pub reward_scale: f64,

    // ---- sampler (the policy) ------------------------------------------------------------------
    /// `ddim` (needs eta > 0) or `ddpm`.
    pub sampler: SamplerKind,
    /// Denoising steps T of each trajectory.
    pub steps: usize,
    pub eta: f64,
    /// Classifier-free guidance scale.
    pub guidance: f64,
    /// Trajectories sampled per forward batch; 0 = all of an epoch's at once.
    pub sample_batch_size: usize,
    /// Guidance only at steps whose EDM noise level σ_t = √((1−ᾱ_t)/ᾱ_t) lies in
    /// `(lo, hi]` (Kynkäänniemi et al. 2024); w = 1 elsewhere. Unset: guidance at every step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guidance_interval: Option<[f64; 2]>,
    /// CADS: annealed noise on the class embedding ([`crate::cads`]) with the `cads_*` settings.
    pub cads: bool,
    /// CADS: the condition is clean up to diffusion time τ1 ∈ [0, 1] (1 = pure noise).
    pub cads_tau1: f64,
    /// CADS: the condition is pure noise from diffusion time τ2 ∈ [τ1, 1].
    pub cads_tau2: f64,
    /// CADS: noise scale s ≥ 0.
    pub cads_noise: f64,
    /// CADS: rescaling share ψ ∈ [0, 1].
    pub cads_psi: f64,

    // ---- policy optimisation -------------------------------------------------------------------
    pub epochs: usize,
    /// Inner epochs E_in of PPO over each epoch's samples.
    pub inner_epochs: usize,
    /// Trajectories per PPO minibatch.
    pub train_batch_size: usize,
    /// Minibatches whose gradients are accumulated into one optimizer step.
    pub grad_accum: usize,
    /// Share of each trajectory's timesteps trained on (shuffled per trajectory), in (0, 1].
    pub timestep_fraction: f64,
    /// The last this-many transitions of each trajectory are never trained on. They are nearly
    /// deterministic (DDIM's σ ≈ 0.01 at the final step against ≈ 0.3–1 early on), so their
    /// log-probability gradients, ∝ 1/σ, would dominate the clipped gradient norm while only
    /// refining pixel detail; the early steps decide the sample's mode.
    pub skip_final_steps: usize,
    /// The adapters act on the first this-many sampling steps only (the highest noise levels,
    /// where a sample's mode is decided); the later steps run the frozen base, which draws the
    /// details as it always did. Only those steps train. 0 = every step (unet only).
    pub policy_steps: usize,
    /// PPO clip range of the importance ratio.
    pub clip_range: f64,
    /// Advantages are clipped to ±this.
    pub adv_clip: f64,
    /// Per-condition reward history kept by the advantage tracker.
    pub tracker_buffer: usize,
    /// Below this many stored rewards a condition is normalised with batch statistics.
    pub tracker_min_count: usize,
    /// Weight of the per-step KL divergence to the frozen base policy (0 = off).
    pub kl_coef: f64,
    pub lr: f64,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    /// Global gradient-norm clip (0 = off).
    pub max_grad_norm: f64,

    // ---- what is trained -------------------------------------------------------------------------
    pub lora_rank: i64,
    pub lora_alpha: f64,
    /// Attention projections that get adapters (`to_q`, `to_k`, `to_v`, `to_out`).
    pub lora_targets: Vec<String>,
    /// Train every base weight instead of LoRA adapters.
    pub full_finetune: bool,

    // ---- bookkeeping -----------------------------------------------------------------------------
    pub seed: u64,
    /// Checkpoint every this many epochs (the last epoch always).
    pub checkpoint_every: usize,
    /// Checkpoints kept on disk (the newest).
    pub keep_checkpoints: usize,
    /// PNG grid of the epoch's samples every this many epochs (0 = never).
    pub sample_every: usize,
    /// Held-out evaluation every this many epochs, plus before the first and after the last (0 = never).
    pub eval_every: usize,
    /// Images generated per condition for evaluation.
    pub eval_per_class: usize,
    /// A second feature network for the held-out evaluation that the reward never uses
    /// (`inception`, `small`, `pixels`; empty = none). Its metrics appear as `independent`.
    pub eval_independent: String,
    /// Log per-epoch diagnostics of the policy-gradient signal (costs one replay of the
    /// rollout and one fixed-noise sample per epoch): see [`crate::rl::run_log::Diagnostics`].
    pub diagnostics: bool,
    /// cpu, cuda, cuda:N or auto.
    pub device: String,
    /// libtorch CPU threads (0 = one per core).
    pub threads: usize,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        let lora = LoraConfig::default();
        let cads = CadsConfig::default();
        Self {
            model: "unet".into(),
            prompts: Vec::new(),
            references: Vec::new(),
            resolution: 0,
            precision: "fp32".into(),
            gradient_checkpointing: false,
            base: PathBuf::from(RL_BASE),
            out: PathBuf::from("runs/finetune"),
            data: "fashion-mnist".into(),
            ref_per_class: 50,
            balanced_reference: false,
            classes: Vec::new(),
            classes_per_epoch: 0,
            images_per_class: 5,
            sets_per_class: 1,
            extractor: "small".into(),
            extractor_weights: None,
            reward: RewardKind::Mmd,
            degree: None,
            gamma: None,
            coef0: None,
            sigma: None,
            sigma_scale: 1.0,
            mmd_kernel: MmdKernel::Polynomial,
            jitter: 1e-6,
            recall_k: 3,
            reward_scale: 1.0,
            sampler: SamplerKind::Ddim,
            steps: 20,
            eta: 1.0,
            guidance: 4.0,
            sample_batch_size: 0,
            guidance_interval: None,
            cads: false,
            cads_tau1: cads.tau1,
            cads_tau2: cads.tau2,
            cads_noise: cads.noise_scale,
            cads_psi: cads.psi,
            epochs: 20,
            inner_epochs: 1,
            train_batch_size: 10,
            grad_accum: 1,
            timestep_fraction: 1.0,
            skip_final_steps: 0,
            policy_steps: 0,
            clip_range: 1e-4,
            adv_clip: 5.0,
            tracker_buffer: 16,
            tracker_min_count: 16,
            kl_coef: 0.0,
            lr: 3e-4,
            weight_decay: 1e-4,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            max_grad_norm: 1.0,
            lora_rank: lora.rank,
            lora_alpha: lora.alpha,
            lora_targets: lora.targets,
            full_finetune: false,
            seed: 0,
            checkpoint_every: 5,
            keep_checkpoints: 2,
            sample_every: 5,
            eval_every: 0,
            eval_per_class: 50,
            eval_independent: String::new(),
            diagnostics: false,
            device: "auto".into(),
            threads: 0,
        }
    }
}

impl FinetuneConfig {
    /// Defaults of a Stable Diffusion run: CLIP ϕ, 50 DDIM steps, guidance 5 (DDPO's), and the
    /// memory-conscious settings: one trajectory per sampling batch, one per PPO minibatch, the
    /// gradients of `images_per_class` minibatches accumulated per optimizer step, gradient
    /// checkpointing of the UNet.
    pub fn sd_default() -> Self {
        Self {
            model: "sd".into(),
            base: PathBuf::new(),
            out: PathBuf::from("runs/finetune-sd"),
            data: String::new(),
            extractor: "clip".into(),
            steps: 50,
            guidance: 5.0,
            sample_batch_size: 1,
            train_batch_size: 1,
            grad_accum: 5,
            sample_every: 1,
            gradient_checkpointing: true,
            ..Self::default()
        }
    }

    /// The defaults of `model` (`unet` or `sd`).
    pub fn defaults_for(model: &str) -> Result<Self> {
        match model {
            "unet" => Ok(Self::default()),
            "sd" => Ok(Self::sd_default()),
            other => bail!("unknown model {other:?}: expected unet or sd"),
        }
    }

    /// Reads a run's TOML; fields it does not set take the defaults of its `model` (or of
    /// `model_override`, which also replaces the file's `model`).
    pub fn read_toml_for(path: &std::path::Path, model_override: Option<&str>) -> Result<Self> {
        use anyhow::Context;
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut table: toml::Table =
            toml::from_str(&text).with_context(|| format!("{}: bad TOML", path.display()))?;
        let model = match model_override {
            Some(m) => m.to_string(),
            None => table
                .get("model")
                .and_then(|v| v.as_str())
                .unwrap_or("unet")
                .to_string(),
        };
        table.insert("model".into(), toml::Value::String(model.clone()));
        let base = Self::defaults_for(&model)?;
        let mut merged: toml::Table = toml::Table::try_from(&base)?;
        for (k, v) in table {
            merged.insert(k, v);
        }
        merged
            .try_into()
            .with_context(|| format!("{}: bad run configuration", path.display()))
    }

    pub fn reward_spec(&self) -> RewardSpec {
        RewardSpec {
            kind: self.reward,
            degree: self.degree,
            gamma: self.gamma,
            coef0: self.coef0,
            sigma: self.sigma,
            sigma_scale: self.sigma_scale,
            mmd_kernel: self.mmd_kernel,
            jitter: self.jitter,
            k: self.recall_k,
        }
    }

    pub fn sampler_config(&self) -> SamplerConfig {
        SamplerConfig {
            kind: self.sampler,
            steps: self.steps,
            eta: self.eta,
            guidance: self.guidance,
            clip_x0: true,
            // DDPO's convention: the clip range 1e-4 is calibrated for per-dimension means.
            reduction: LogProbReduction::Mean,
            guidance_interval: self.guidance_interval.map(|[lo, hi]| GuidanceInterval {
                sigma_lo: lo,
                sigma_hi: hi,
            }),
            cads: self.cads.then(|| self.cads_config()),
        }
    }

    /// The CADS settings of the `cads_*` fields (used when `cads` is on).
    pub fn cads_config(&self) -> CadsConfig {
        CadsConfig {
            tau1: self.cads_tau1,
            tau2: self.cads_tau2,
            noise_scale: self.cads_noise,
            psi: self.cads_psi,
        }
    }

    pub fn lora_config(&self) -> LoraConfig {
        LoraConfig {
            rank: self.lora_rank,
            alpha: self.lora_alpha,
            targets: self.lora_targets.clone(),
        }
    }

    /// The config with every field that cannot change the trained weights reset, so a resumed
    /// run can check it continues the same run.
    /// How many transitions of a `num_steps` trajectory train: all but the final
    /// `skip_final_steps`, and at most the first `policy_steps` (when set); at least one.
    pub fn trained_steps(&self, num_steps: usize) -> usize {
        let k = num_steps.saturating_sub(self.skip_final_steps);
        let k = match self.policy_steps {
            0 => k,
            p => k.min(p),
        };
        k.max(1)
    }

    pub fn training_identity(&self) -> Self {
        let d = Self::default();
        Self {
            out: d.out,
            epochs: d.epochs,
            checkpoint_every: d.checkpoint_every,
            keep_checkpoints: d.keep_checkpoints,
            sample_every: d.sample_every,
            eval_every: d.eval_every,
            eval_per_class: d.eval_per_class,
            eval_independent: d.eval_independent,
            diagnostics: d.diagnostics,
            device: d.device,
            threads: d.threads,
            ..self.clone()
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.sampler_config().validate()?;
        // Checked even while off, so a bad value is reported where it is written.
        self.cads_config().validate()?;
        if !self.full_finetune {
            self.lora_config().validate()?;
        }
        let pos = |v: f64| v.is_finite() && v > 0.0;
        if self.epochs == 0 {
            bail!("epochs must be >= 1");
        }
        if self.inner_epochs == 0 || self.train_batch_size == 0 || self.grad_accum == 0 {
            bail!("inner_epochs, train_batch_size and grad_accum must be >= 1");
        }
        if self.images_per_class == 0 {
            bail!("images_per_class must be >= 1");
        }
        if self.sets_per_class == 0 {
            bail!("sets_per_class must be >= 1");
        }
        if !["", "inception", "inception-native", "small", "pixels"]
            .contains(&self.eval_independent.as_str())
        {
            bail!(
                "eval_independent must be inception, inception-native, small, pixels or empty, got {:?}",
                self.eval_independent
            );
        }
        if self.ref_per_class == 0 {
            bail!("ref_per_class must be >= 1");
        }
        if self.balanced_reference && self.ref_per_class % 2 != 0 {
            bail!(
                "balanced_reference needs an even ref_per_class, got {}",
                self.ref_per_class
            );
        }
        if !(self.timestep_fraction > 0.0 && self.timestep_fraction <= 1.0) {
            bail!(
                "timestep_fraction must be in (0, 1], got {}",
                self.timestep_fraction
            );
        }
        if self.policy_steps > 0 && self.full_finetune {
            bail!("policy_steps needs LoRA adapters (the base must stay as it is for the later steps), not full_finetune");
        }
        if self.policy_steps > self.steps {
            bail!(
                "policy_steps ({}) must be at most steps ({})",
                self.policy_steps,
                self.steps
            );
        }
        if self.skip_final_steps >= self.steps {
            bail!(
                "skip_final_steps ({}) must be below steps ({})",
                self.skip_final_steps,
                self.steps
            );
        }
        if !pos(self.clip_range) || !pos(self.adv_clip) {
            bail!("clip_range and adv_clip must be positive");
        }
        if !pos(self.lr) {
            bail!("lr must be positive, got {}", self.lr);
        }
        let non_negative = |v: f64| v.is_finite() && v >= 0.0;
        if !non_negative(self.weight_decay)
            || !non_negative(self.max_grad_norm)
            || !non_negative(self.kl_coef)
        {
            bail!("weight_decay, max_grad_norm and kl_coef must be finite and >= 0");
        }
        if !(0.0..1.0).contains(&self.adam_beta1)
            || !(0.0..1.0).contains(&self.adam_beta2)
            || !pos(self.adam_eps)
        {
            bail!("AdamW betas must be in [0, 1) and eps > 0");
        }
        if !self.reward_scale.is_finite() {
            bail!("reward_scale must be finite");
        }
        if self.tracker_buffer == 0 {
            bail!("tracker_buffer must be >= 1");
        }
        if self.keep_checkpoints == 0 {
            bail!("keep_checkpoints must be >= 1");
        }
        if self.eval_every > 0 && self.eval_per_class < 2 {
            bail!("eval_per_class must be >= 2 for the k-NN metrics");
        }
        if self.classes.iter().any(|&c| c < 0) {
            bail!("class indices must be >= 0");
        }
        match self.model.as_str() {
            "unet" if self.gradient_checkpointing => {
                bail!("gradient_checkpointing is implemented for model sd only")
            }
            "unet" => {}
            "sd" => self.validate_sd()?,
            other => bail!("unknown model {other:?}: expected unet or sd"),
        }
        Ok(())
    }

    fn validate_sd(&self) -> Result<()> {
        if self.prompts.is_empty() {
            bail!("model sd needs at least one prompt");
        }
        if self.prompts.iter().any(|p| p.trim().is_empty()) {
            bail!(
                "prompts must not be empty (the empty prompt is guidance's unconditional branch)"
            );
        }
        if !(self.references.len() == 1 || self.references.len() == self.prompts.len()) {
            bail!(
                "model sd needs one reference folder per prompt ({}), or one folder with a sub-folder per prompt; got {}",
                self.prompts.len(),
                self.references.len()
            );
        }
        self.precision
            .parse::<crate::models::sd::Precision>()
            .map(|_| ())?;
        if self.resolution < 0 {
            bail!("resolution must be >= 0");
        }
        if self.sampler != SamplerKind::Ddim {
            bail!("model sd samples with DDIM");
        }
        if self.guidance_interval.is_some() || self.cads {
            bail!("guidance_interval and cads are implemented for model unet only");
        }
        if self.full_finetune {
            bail!("model sd trains LoRA adapters only (full_finetune is for the unet model)");
        }
        if self.policy_steps > 0 {
            bail!("policy_steps is implemented for model unet only");
        }
        if self.kl_coef > 0.0 {
            bail!("kl_coef is not implemented for model sd");
        }
        if self.eval_every > 0 {
            bail!("held-out evaluation (eval_every) is not implemented for model sd");
        }
        if !self.classes.is_empty() {
            bail!("model sd takes prompts, not classes");
        }
        if self.sets_per_class != 1 || self.diagnostics {
            bail!("sets_per_class > 1 and diagnostics are implemented for model unet only");
        }
        Ok(())
    }
}
