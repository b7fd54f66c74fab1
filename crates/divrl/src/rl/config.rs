//! The fine-tuning run's configuration: one flat TOML table (`divrl finetune --config run.toml`),
//! every field also a command-line flag. Unset fields take the defaults below (DDPO's where DDPO
//! has one, the paper's M = 5 and N = 50).
//!
//! Every field is declared once, in [`finetune_fields!`](crate::finetune_fields): its type, default,
//! documentation, command-line flag and whether it can change the trained weights. This module
//! expands that list into [`FinetuneConfig`], its `Default` and
//! [`FinetuneConfig::training_identity`]; the CLI expands the same list into its flags.
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use crate::nn::lora::LoraConfig;
use crate::schedule::{CadsConfig, GuidanceInterval, LogProbReduction, SamplerConfig, SamplerKind};
use divrl_reward::{MmdKernel, RewardKind, RewardSpec};

/// The base checkpoint of the RL presets (demo, experiments, `divrl finetune` without `--base`).
pub const RL_BASE: &str = "models/fashion-mnist-base-small";

/// The fine-tuning configuration's fields, declared once. Each entry reads
///
/// ```text
/// /// docs and attributes of the config field
/// name: Type = default,
///     apply FlagType { /// the flag's help  #[arg(...)] } kind;
/// ```
///
/// `apply` says how a given flag lands in the config (`set`: `cfg.name = v`; `some`:
/// `cfg.name = Some(v)`; `none`: handled by hand, or no flag at all with `#[arg(skip)]`), and
/// `kind` whether the field can change the trained weights (`trains`) or only the run's
/// bookkeeping (`run`: reset by [`FinetuneConfig::training_identity`], so a resumed run may change
/// it). The list is handed to `$callback`, a macro that matches the entries; the library builds the
/// config from it and `divrl finetune` its flags.
#[macro_export]
macro_rules! finetune_fields {
    ($callback:ident) => {
        $callback! {
        // ---- model, data, feature space ------------------------------------------------------
        /// `unet` (a class-conditional base checkpoint) or `sd` (a Stable Diffusion diffusers folder
        /// in `base`, prompts as conditions; see [`crate::rl::sd_model`]).
        model: String = "unet".into(),
            none String {
                /// unet (class-conditional base checkpoint) or sd (Stable Diffusion diffusers folder in
                /// --base, prompts as conditions) [default: unet, or the config file's]
                #[arg(long)]
            } trains;
        /// sd: the prompts (condition `i` is prompt `i`).
        prompts: Vec<String> = Vec::new(),
            set Vec<String> {
                /// sd: a prompt (repeat the flag for several)
                #[arg(long)]
            } trains;
        /// sd: reference images per prompt: one folder per prompt, or a single folder holding one
        /// sub-folder per prompt (sorted by name). At most `ref_per_class` images of each are used.
        references: Vec<PathBuf> = Vec::new(),
            set Vec<PathBuf> {
                /// sd: reference image folder per prompt (repeat), or one folder with a sub-folder per prompt
                #[arg(long)]
            } trains;
        /// sd: image side in pixels (0 = the UNet's `sample_size` latents).
        resolution: i64 = 0,
            set i64 {
                /// sd: image side in pixels, 0 = the UNet's sample_size [default: 0]
                #[arg(long)]
            } trains;
        /// sd: `fp32`, `bf16` (frozen weights in bfloat16, adapters f32) or `fp16` (CUDA autocast).
        precision: String = "fp32".into(),
            set String {
                /// sd: fp32, bf16 (frozen weights in bfloat16) or fp16 (CUDA autocast) [default: fp32]
                #[arg(long)]
            } trains;
        /// sd: gradient checkpointing of the UNet in the PPO update (recompute each stage in the
        /// backward pass instead of keeping the whole graph).
        gradient_checkpointing: bool = false,
            set bool {
                /// sd: recompute UNet stages in the backward pass instead of storing them [default: true for sd]
                #[arg(long)]
            } trains;
        /// Base checkpoint folder (`config.toml` + `ema.safetensors`); default [`RL_BASE`].
        base: PathBuf = PathBuf::from(RL_BASE),
            set PathBuf {
                /// Base checkpoint folder, or the diffusers folder for sd [default: models/fashion-mnist-base-small]
                #[arg(long)]
            } trains;
        /// Run folder: log, sample grids, checkpoints, exports.
        out: PathBuf = PathBuf::from("runs/finetune"),
            set PathBuf {
                /// Run folder (log.jsonl, samples/, checkpoints/, lora.safetensors, merged/) [default: runs/finetune]
                #[arg(long)]
            } run;
        /// Data set spec (as `train-base --data`): its reference pool gives the per-condition
        /// reference sets, its evaluation pool the held-out metrics.
        data: String = "fashion-mnist".into(),
            set String {
                /// Data set whose reference / evaluation pools are used [default: fashion-mnist]
                #[arg(long)]
            } trains;
        /// N: reference images per condition (the first N of the reference pool's class).
        ref_per_class: usize = 50,
            set usize {
                /// N: reference images per condition [default: 50]
                #[arg(long)]
            } trains;
        /// Balance each reference set over the data set's binary attribute (N/2 of each value, the
        /// first ones of the pool; the skewed variant's debiasing setting). Needs an even N.
        balanced_reference: bool = false,
            set bool {
                /// Balance each reference set over the data set's attribute (N/2 each) [default: false]
                #[arg(long)]
            } trains;
        /// Conditions (class indices) to fine-tune on; empty = every class of the model.
        classes: Vec<i64> = Vec::new(),
            set Vec<i64> {
                /// Conditions (class indices), comma-separated [default: all]
                #[arg(long, value_delimiter = ',')]
            } trains;
        /// Conditions sampled per epoch (a seeded draw without replacement); 0 = all of them.
        classes_per_epoch: usize = 0,
            set usize {
                /// Conditions per epoch, 0 = all [default: 0]
                #[arg(long)]
            } trains;
        /// M: images in each generated set X_g (the set the Diversity Reward scores).
        images_per_class: usize = 5,
            set usize {
                /// M: images in each generated set the reward scores [default: 5]
                #[arg(long)]
            } trains;
        /// K: generated sets of M images per condition and epoch, each scored on its own, so an
        /// epoch has K·M trajectories per condition while the reward keeps the paper's M.
        sets_per_class: usize = 1,
            set usize {
                /// K: generated sets of M per condition and epoch, each scored on its own [default: 1]
                #[arg(long)]
            } trains;
        /// Feature network ϕ: `small` (Fashion-MNIST classifier), `inception`, `pixels` (8 × 8
        /// average-pooled grey), `pixels-<side>` (pooled to side × side, e.g. `pixels-28`), or
        /// either with `-norm` (each image's pooled vector standardised: layout without global
        /// brightness or contrast, e.g. `pixels-norm`).
        extractor: String = "small".into(),
            set String {
                /// Feature network ϕ: small, inception, pixels, pixels-<side> or pixels[-<side>]-norm (standardised per image) [default: small]
                #[arg(long)]
            } trains;
        /// Weights of ϕ (classifier folder / TorchScript archive); default the shipped ones.
        extractor_weights: Option<PathBuf> = None,
            some PathBuf {
                /// Weights of ϕ (classifier folder or TorchScript archive)
                #[arg(long)]
            } trains;
        // ---- reward ------------------------------------------------------------------------------
        /// Diversity Reward: `mmd`, `gp-mi` or `recall`.
        reward: RewardKind = RewardKind::Mmd,
            set RewardKind {
                /// Diversity Reward: mmd, gp-mi or recall [default: mmd]
                #[arg(long)]
            } trains;
        /// Polynomial kernel degree (mmd); default 3.
        degree: Option<u32> = None,
            some u32 {
                /// Polynomial kernel degree (mmd) [default: 3]
                #[arg(long)]
            } trains;
        /// Polynomial kernel scale (mmd); default 1/D.
        gamma: Option<f64> = None,
            some f64 {
                /// Polynomial kernel scale (mmd) [default: 1/D]
                #[arg(long)]
            } trains;
        /// Polynomial kernel offset (mmd); default 1.
        coef0: Option<f64> = None,
            some f64 {
                /// Polynomial kernel offset (mmd) [default: 1]
                #[arg(long)]
            } trains;
        /// RBF bandwidth (gp-mi, mmd with the RBF kernel); default `sigma_scale` × the median
        /// pairwise distance of each condition's references.
        sigma: Option<f64> = None,
            some f64 {
                /// RBF bandwidth (gp-mi, mmd with --mmd-kernel rbf) [default: --sigma-scale × median reference distance]
                #[arg(long)]
            } trains;
        /// Multiple of the median reference distance used as the RBF bandwidth when `sigma` is unset.
        sigma_scale: f64 = 1.0,
            set f64 {
                /// Multiple of each condition's median reference distance used as σ when --sigma is not given [default: 1]
                #[arg(long)]
            } trains;
        /// Kernel of the MMD reward: `polynomial` (KID) or `rbf`.
        mmd_kernel: MmdKernel = MmdKernel::Polynomial,
            set MmdKernel {
                /// Kernel of the mmd reward: polynomial (KID) or rbf [default: polynomial]
                #[arg(long)]
            } trains;
        /// Kernel-diagonal jitter (gp-mi).
        jitter: f64 = 1e-6,
            set f64 {
                /// Kernel jitter (gp-mi) [default: 1e-6]
                #[arg(long)]
            } trains;
        /// k of the k-NN balls (recall).
        recall_k: usize = 3,
            set usize {
                /// k of the k-NN balls (recall) [default: 3]
                #[arg(long)]
            } trains;
        /// Rewards are multiplied by this before the advantage normalisation.
        reward_scale: f64 = 1.0,
            set f64 {
                /// Reward multiplier [default: 1]
                #[arg(long)]
            } trains;
        // ---- sampler (the policy) ------------------------------------------------------------------
        /// `ddim` (needs eta > 0) or `ddpm`.
        sampler: SamplerKind = SamplerKind::Ddim,
            set SamplerKind {
                /// ddim or ddpm [default: ddim]
                #[arg(long)]
            } trains;
        /// Denoising steps T of each trajectory.
        steps: usize = 20,
            set usize {
                /// Denoising steps per trajectory [default: 20]
                #[arg(long)]
            } trains;
        eta: f64 = 1.0,
            set f64 {
                /// DDIM stochasticity, > 0 [default: 1]
                #[arg(long)]
            } trains;
        /// Classifier-free guidance scale.
        guidance: f64 = 4.0,
            set f64 {
                /// Classifier-free guidance scale [default: 4]
                #[arg(long)]
            } trains;
        /// Trajectories sampled per forward batch; 0 = all of an epoch's at once.
        sample_batch_size: usize = 0,
            set usize {
                /// Trajectories per sampling batch, 0 = all [default: 0]
                #[arg(long)]
            } trains;
        /// Guidance only at steps whose EDM noise level σ_t = √((1−ᾱ_t)/ᾱ_t) lies in
        /// `(lo, hi]` (Kynkäänniemi et al. 2024); w = 1 elsewhere. Unset: guidance at every step.
        #[serde(skip_serializing_if = "Option::is_none")]
        guidance_interval: Option<[f64; 2]> = None,
            none String {
                /// Guidance only at steps whose EDM noise level σ_t = √((1−ᾱ_t)/ᾱ_t) has LO < σ_t ≤ HI,
                /// w = 1 elsewhere (see `divrl sample --help`); "none" = every step [default: none]
                #[arg(long, value_name = "LO,HI", allow_hyphen_values = true)]
            } trains;
        /// CADS: annealed noise on the class embedding ([`crate::cads`]) with the `cads_*` settings.
        cads: bool = false,
            none bool {
                /// CADS on the rollouts and evaluations (noise on the class embedding, annealed over the early
                /// steps); any --cads-* flag also turns it on [default: false]
                #[arg(long, num_args = 0..=1, default_missing_value = "true")]
            } trains;
        /// CADS: the condition is clean up to diffusion time τ1 ∈ [0, 1] (1 = pure noise).
        cads_tau1: f64 = CadsConfig::default().tau1,
            set f64 {
                /// CADS: diffusion time t ∈ [0, 1] (1 = pure noise) up to which the condition is clean [default: 0.6]
                #[arg(long, value_name = "T", allow_negative_numbers = true)]
            } trains;
        /// CADS: the condition is pure noise from diffusion time τ2 ∈ [τ1, 1].
        cads_tau2: f64 = CadsConfig::default().tau2,
            set f64 {
                /// CADS: diffusion time t ∈ [0, 1] from which the condition is pure noise [default: 0.9]
                #[arg(long, value_name = "T", allow_negative_numbers = true)]
            } trains;
        /// CADS: noise scale s ≥ 0.
        cads_noise: f64 = CadsConfig::default().noise_scale,
            set f64 {
                /// CADS: noise scale s ≥ 0 [default: 0.25]
                #[arg(long, value_name = "S", allow_negative_numbers = true)]
            } trains;
        /// CADS: rescaling share ψ ∈ [0, 1].
        cads_psi: f64 = CadsConfig::default().psi,
            set f64 {
                /// CADS: share ψ ∈ [0, 1] of the noisy embedding rescaled to the clean one's mean and std [default: 1]
                #[arg(long, value_name = "PSI", allow_negative_numbers = true)]
            } trains;
        // ---- policy optimisation -------------------------------------------------------------------
        epochs: usize = 20,
            set usize {
                /// Epochs (outer iterations of Algorithm 1) [default: 20]
                #[arg(long)]
            } run;
        /// Inner epochs E_in of PPO over each epoch's samples.
        inner_epochs: usize = 1,
            set usize {
                /// PPO inner epochs per rollout [default: 1]
                #[arg(long)]
            } trains;
        /// Trajectories per PPO minibatch.
        train_batch_size: usize = 10,
            set usize {
                /// Trajectories per PPO minibatch [default: 10]
                #[arg(long)]
            } trains;
        /// Minibatches whose gradients are accumulated into one optimizer step.
        grad_accum: usize = 1,
            set usize {
                /// Minibatches per optimizer step [default: 1]
                #[arg(long)]
            } trains;
        /// Share of each trajectory's timesteps trained on (shuffled per trajectory), in (0, 1].
        timestep_fraction: f64 = 1.0,
            set f64 {
                /// Share of timesteps trained per trajectory, (0, 1] [default: 1]
                #[arg(long)]
            } trains;
        /// The last this-many transitions of each trajectory are never trained on. They are nearly
        /// deterministic (DDIM's σ ≈ 0.01 at the final step against ≈ 0.3–1 early on), so their
        /// log-probability gradients, ∝ 1/σ, would dominate the clipped gradient norm while only
        /// refining pixel detail; the early steps decide the sample's mode.
        skip_final_steps: usize = 0,
            set usize {
                /// The last K transitions of each trajectory are not trained (near-deterministic) [default: 0]
                #[arg(long)]
            } trains;
        /// The adapters act on the first this-many sampling steps only (the highest noise levels,
        /// where a sample's mode is decided); the later steps run the frozen base, which draws the
        /// details as it always did. Only those steps train. 0 = every step (unet only).
        policy_steps: usize = 0,
            set usize {
                /// The adapters act on the first N sampling steps only (highest noise); later steps run the
                /// frozen base; only those steps train; 0 = all (unet) [default: 0]
                #[arg(long)]
            } trains;
        /// PPO clip range of the importance ratio.
        clip_range: f64 = 1e-4,
            set f64 {
                /// PPO clip range [default: 1e-4]
                #[arg(long)]
            } trains;
        /// Advantages are clipped to ±this.
        adv_clip: f64 = 5.0,
            set f64 {
                /// Advantage clip [default: 5]
                #[arg(long)]
            } trains;
        /// Per-condition reward history kept by the advantage tracker.
        tracker_buffer: usize = 16,
            set usize {
                /// Per-condition reward history length [default: 16]
                #[arg(long)]
            } trains;
        /// Below this many stored rewards a condition is normalised with batch statistics.
        tracker_min_count: usize = 16,
            set usize {
                /// Rewards on record before a condition uses its own statistics [default: 16]
                #[arg(long)]
            } trains;
        /// Weight of the per-step KL divergence to the frozen base policy (0 = off).
        kl_coef: f64 = 0.0,
            set f64 {
                /// KL-to-base penalty weight [default: 0]
                #[arg(long)]
            } trains;
        lr: f64 = 3e-4,
            set f64 {
                /// Learning rate [default: 3e-4]
                #[arg(long)]
            } trains;
        weight_decay: f64 = 1e-4,
            set f64 {
                /// AdamW weight decay [default: 1e-4]
                #[arg(long)]
            } trains;
        adam_beta1: f64 = 0.9,
            set f64 {
                #[arg(long)]
            } trains;
        adam_beta2: f64 = 0.999,
            set f64 {
                #[arg(long)]
            } trains;
        adam_eps: f64 = 1e-8,
            set f64 {
                #[arg(long)]
            } trains;
        /// Global gradient-norm clip (0 = off).
        max_grad_norm: f64 = 1.0,
            set f64 {
                /// Gradient-norm clip, 0 = off [default: 1]
                #[arg(long)]
            } trains;
        /// Polyak average of the trained weights across epochs, 0 = off: after each epoch's update
        /// θ̄ ← d·θ̄ + (1 − d)·θ, from the starting weights. Evaluations and the export use θ̄
        /// (PPO's last iterate wanders between epochs); training samples with the current weights.
        /// See [`crate::rl::policy_ema`].
        policy_ema: f64 = 0.0,
            set f64 {
                /// Evaluate and export a moving average of the weights over epochs with this decay, in
                /// [0, 1); 0 = the last weights [default: 0]
                #[arg(long)]
            } trains;
        /// What `policy_ema` averages: `weights` (every variable on its own, LoRA's A and B apart)
        /// or `lora-product` (each adapter's update B·A; evaluations and the export use the
        /// average's best rank-r factors). See [`crate::rl::policy_ema`].
        policy_ema_of: String = "weights".into(),
            set String {
                /// What the moving average averages: weights, or lora-product (each adapter's B·A)
                /// [default: weights]
                #[arg(long)]
            } trains;
        // ---- what is trained -------------------------------------------------------------------------
        lora_rank: i64 = LoraConfig::default().rank,
            set i64 {
                /// LoRA rank [default: 4]
                #[arg(long)]
            } trains;
        lora_alpha: f64 = LoraConfig::default().alpha,
            set f64 {
                /// LoRA alpha [default: 4]
                #[arg(long)]
            } trains;
        /// Attention projections that get adapters (`to_q`, `to_k`, `to_v`, `to_out`).
        lora_targets: Vec<String> = LoraConfig::default().targets,
            set Vec<String> {
                /// LoRA targets, comma-separated (to_q,to_k,to_v,to_out)
                #[arg(long, value_delimiter = ',')]
            } trains;
        /// Train every base weight instead of LoRA adapters.
        full_finetune: bool = false,
            set bool {
                /// Train all base weights instead of LoRA adapters
                #[arg(long)]
            } trains;
        // ---- bookkeeping -----------------------------------------------------------------------------
        seed: u64 = 0,
            set u64 {
                #[arg(long)]
            } trains;
        /// Checkpoint every this many epochs (the last epoch always).
        checkpoint_every: usize = 5,
            set usize {
                /// Checkpoint every K epochs [default: 5]
                #[arg(long)]
            } run;
        /// Checkpoints kept on disk (the newest).
        keep_checkpoints: usize = 2,
            set usize {
                /// Checkpoints kept [default: 2]
                #[arg(long)]
            } run;
        /// PNG grid of the epoch's samples every this many epochs (0 = never).
        sample_every: usize = 5,
            set usize {
                /// Sample grid every K epochs, 0 = never [default: 5]
                #[arg(long)]
            } run;
        /// Held-out evaluation every this many epochs, plus before the first and after the last (0 = never).
        eval_every: usize = 0,
            set usize {
                /// Held-out evaluation every K epochs (and before/after), 0 = never [default: 0]
                #[arg(long)]
            } run;
        /// Images generated per condition for evaluation.
        eval_per_class: usize = 50,
            set usize {
                /// Generated images per condition for evaluation [default: 50]
                #[arg(long)]
            } run;
        /// DDIM steps of the held-out evaluation's sampler (0 = `steps`, the rollouts' count).
        /// The adapters act at the same noise levels whatever the count (`policy_steps` gates
        /// them by timestep), so a policy trained on short rollouts can be scored, and used, with
        /// a longer sampler.
        eval_steps: usize = 0,
            set usize {
                /// DDIM steps of the evaluation sampler, 0 = the training steps [default: 0]
                #[arg(long)]
            } run;
        /// A second feature network for the held-out evaluation that the reward never uses
        /// (`inception`, `small`, `pixels`; empty = none). Its metrics appear as `independent`.
        eval_independent: String = String::new(),
            set String {
                /// Second evaluation feature network the reward never uses: inception, small or pixels
                /// [default: none]
                #[arg(long)]
            } run;
        /// Log per-epoch diagnostics of the policy-gradient signal (costs one replay of the
        /// rollout and one fixed-noise sample per epoch): see [`crate::rl::run_log::Diagnostics`].
        diagnostics: bool = false,
            set bool {
                /// Log per-epoch diagnostics: advantage vs log-prob-change correlation, fixed-noise set
                /// reward before and after each update [default: false]
                #[arg(long)]
            } run;
        /// cpu, cuda, cuda:N or auto.
        device: String = "auto".into(),
            none String {
                #[arg(skip)]
            } run;
        /// libtorch CPU threads (0 = one per core).
        threads: usize = 0,
            none usize {
                #[arg(skip)]
            } run;

        }
    };
}

/// Builds [`FinetuneConfig`], its `Default` and `training_identity` from [`finetune_fields!`].
macro_rules! define_finetune_config {
    ($(
        $(#[$attr:meta])*
        $name:ident : $ty:ty = $default:expr,
            $apply:ident $flag:ty { $($flag_attr:tt)* } $kind:ident;
    )*) => {
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct FinetuneConfig {
            $( $(#[$attr])* pub $name: $ty, )*
        }

        impl Default for FinetuneConfig {
            fn default() -> Self {
                Self { $( $name: $default, )* }
            }
        }

        impl FinetuneConfig {
            /// The config with every field that cannot change the trained weights (the `run`
            /// fields of [`finetune_fields!`](crate::finetune_fields)) reset, so a resumed run can
            /// check it continues the same run.
            pub fn training_identity(&self) -> Self {
                let defaults = Self::default();
                let mut identity = self.clone();
                $( reset_run_field!($kind, identity.$name, defaults.$name); )*
                identity
            }

            /// The names of the fields that make `self` and `other` different runs (the ones
            /// [`FinetuneConfig::training_identity`] keeps), in declaration order.
            pub fn training_differences(&self, other: &Self) -> Vec<&'static str> {
                let (a, b) = (self.training_identity(), other.training_identity());
                let mut differ = Vec::new();
                $( if a.$name != b.$name { differ.push(stringify!($name)); } )*
                differ
            }
        }
    };
}

macro_rules! reset_run_field {
    (run, $field:expr, $default:expr) => {
        $field = $default
    };
    (trains, $field:expr, $default:expr) => {};
}

crate::finetune_fields!(define_finetune_config);

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
        Self::defaults_for(&model)?
            .overlaid(&table)
            .with_context(|| format!("{}: bad run configuration", path.display()))
    }

    /// This config with the entries of `overlay` (a TOML table of fields) laid over it; an
    /// unknown key or a value of the wrong type is an error. Not validated.
    pub fn overlaid(&self, overlay: &toml::Table) -> Result<Self> {
        let mut merged = toml::Table::try_from(self)?;
        for (k, v) in overlay {
            merged.insert(k.clone(), v.clone());
        }
        Ok(merged.try_into()?)
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

    /// DDIM steps of the held-out evaluation's sampler: `eval_steps`, or `steps` when it is 0.
    pub fn eval_sampler_steps(&self) -> usize {
        match self.eval_steps {
            0 => self.steps,
            n => n,
        }
    }

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
        let ind = self.eval_independent.as_str();
        if !(ind.is_empty() || crate::features::is_image_extractor_name(ind)) {
            bail!(
                "eval_independent must be {} or empty, got {:?}",
                crate::features::IMAGE_EXTRACTORS_HELP,
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
        if !(0.0..1.0).contains(&self.policy_ema) {
            bail!("policy_ema must be in [0, 1), got {}", self.policy_ema);
        }
        crate::rl::policy_ema::Averaged::parse(&self.policy_ema_of)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A resumed run may change its bookkeeping (the `run` fields), never what it trains.
    #[test]
    fn training_differences_name_the_fields_that_make_another_run() {
        let a = FinetuneConfig::default();
        let b = FinetuneConfig {
            base: "elsewhere".into(),
            lr: a.lr * 2.0,
            epochs: a.epochs + 5,
            ..a.clone()
        };
        assert_eq!(a.training_differences(&b), vec!["base", "lr"]);
        assert!(a.training_differences(&a.clone()).is_empty());
    }

    #[test]
    fn training_identity_forgets_the_run_fields_only() {
        let base = FinetuneConfig::default();
        let bookkeeping = FinetuneConfig {
            out: "elsewhere".into(),
            epochs: 99,
            checkpoint_every: 7,
            keep_checkpoints: 9,
            sample_every: 0,
            eval_every: 3,
            eval_per_class: 11,
            eval_independent: "inception".into(),
            diagnostics: true,
            device: "cpu".into(),
            threads: 1,
            ..base.clone()
        };
        assert_ne!(bookkeeping, base);
        assert_eq!(bookkeeping.training_identity(), base.training_identity());
        for changed in [
            FinetuneConfig {
                lr: 1e-3,
                ..base.clone()
            },
            FinetuneConfig {
                seed: 5,
                ..base.clone()
            },
            FinetuneConfig {
                policy_steps: 2,
                ..base.clone()
            },
            FinetuneConfig {
                sigma: Some(1.0),
                ..base.clone()
            },
            FinetuneConfig {
                base: "other".into(),
                ..base.clone()
            },
        ] {
            assert_ne!(changed.training_identity(), base.training_identity());
        }
    }

    /// The independent evaluation space: any extractor but CLIP (no Fashion-MNIST use), a
    /// well-formed `pixels-<side>[-norm]` included, or none.
    #[test]
    fn eval_independent_names() {
        for (name, ok) in [
            ("", true),
            ("inception", true),
            ("small", true),
            ("pixels", true),
            ("pixels-28", true),
            ("pixels-14-norm", true),
            ("pixels-0", false),
            ("clip", false),
            ("resnet", false),
        ] {
            let cfg = FinetuneConfig {
                eval_independent: name.into(),
                ..FinetuneConfig::default()
            };
            assert_eq!(cfg.validate().is_ok(), ok, "{name:?}");
        }
    }

    /// The declared defaults survive a TOML round trip (the written `config.toml` of a run).
    #[test]
    fn defaults_round_trip_through_toml() {
        for cfg in [FinetuneConfig::default(), FinetuneConfig::sd_default()] {
            let text = toml::to_string(&cfg).unwrap();
            assert_eq!(toml::from_str::<FinetuneConfig>(&text).unwrap(), cfg);
        }
    }
}
