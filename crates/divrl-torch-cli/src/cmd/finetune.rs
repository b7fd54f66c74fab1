//! `divrl finetune`: diversity-oriented RL fine-tuning of a base checkpoint (the paper's
//! Algorithm 1). Settings come from `--config run.toml`; every field is also a flag, and flags win.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;
use divrl::rl::FinetuneConfig;
use divrl::run_lock::RunLock;
use divrl::schedule::{GuidanceInterval, SamplerKind};
use divrl_reward::{MmdKernel, RewardKind};

#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// TOML file with any of the fields below (flags override it)
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run in --out from its newest checkpoint
    #[arg(long)]
    pub resume: bool,
    /// No progress bar (log one line per epoch instead)
    #[arg(long)]
    pub no_progress: bool,

    /// unet (class-conditional base checkpoint) or sd (Stable Diffusion diffusers folder in
    /// --base, prompts as conditions) [default: unet, or the config file's]
    #[arg(long)]
    pub model: Option<String>,
    /// sd: a prompt (repeat the flag for several)
    #[arg(long)]
    pub prompts: Option<Vec<String>>,
    /// sd: reference image folder per prompt (repeat), or one folder with a sub-folder per prompt
    #[arg(long)]
    pub references: Option<Vec<PathBuf>>,
    /// sd: image side in pixels, 0 = the UNet's sample_size [default: 0]
    #[arg(long)]
    pub resolution: Option<i64>,
    /// sd: fp32, bf16 (frozen weights in bfloat16) or fp16 (CUDA autocast) [default: fp32]
    #[arg(long)]
    pub precision: Option<String>,
    /// sd: recompute UNet stages in the backward pass instead of storing them [default: true for sd]
    #[arg(long)]
    pub gradient_checkpointing: Option<bool>,

    /// Base checkpoint folder, or the diffusers folder for sd [default: models/fashion-mnist-base-small]
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Run folder (log.jsonl, samples/, checkpoints/, lora.safetensors, merged/) [default: runs/finetune]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Data set whose reference / evaluation pools are used [default: fashion-mnist]
    #[arg(long)]
    pub data: Option<String>,
    /// N: reference images per condition [default: 50]
    #[arg(long)]
    pub ref_per_class: Option<usize>,
    /// Balance each reference set over the data set's attribute (N/2 each) [default: false]
    #[arg(long)]
    pub balanced_reference: Option<bool>,
    /// Conditions (class indices), comma-separated [default: all]
    #[arg(long, value_delimiter = ',')]
    pub classes: Option<Vec<i64>>,
    /// Conditions per epoch, 0 = all [default: 0]
    #[arg(long)]
    pub classes_per_epoch: Option<usize>,
    /// M: images in each generated set the reward scores [default: 5]
    #[arg(long)]
    pub images_per_class: Option<usize>,
    /// K: generated sets of M per condition and epoch, each scored on its own [default: 1]
    #[arg(long)]
    pub sets_per_class: Option<usize>,
    /// Feature network ϕ: small, inception or pixels [default: small]
    #[arg(long)]
    pub extractor: Option<String>,
    /// Weights of ϕ (classifier folder or TorchScript archive)
    #[arg(long)]
    pub extractor_weights: Option<PathBuf>,

    /// Diversity Reward: mmd, gp-mi or recall [default: mmd]
    #[arg(long)]
    pub reward: Option<RewardKind>,
    /// Polynomial kernel degree (mmd) [default: 3]
    #[arg(long)]
    pub degree: Option<u32>,
    /// Polynomial kernel scale (mmd) [default: 1/D]
    #[arg(long)]
    pub gamma: Option<f64>,
    /// Polynomial kernel offset (mmd) [default: 1]
    #[arg(long)]
    pub coef0: Option<f64>,
    /// RBF bandwidth (gp-mi, mmd with --mmd-kernel rbf) [default: --sigma-scale × median reference distance]
    #[arg(long)]
    pub sigma: Option<f64>,
    /// Multiple of each condition's median reference distance used as σ when --sigma is not given [default: 1]
    #[arg(long)]
    pub sigma_scale: Option<f64>,
    /// Kernel of the mmd reward: polynomial (KID) or rbf [default: polynomial]
    #[arg(long)]
    pub mmd_kernel: Option<MmdKernel>,
    /// Kernel jitter (gp-mi) [default: 1e-6]
    #[arg(long)]
    pub jitter: Option<f64>,
    /// k of the k-NN balls (recall) [default: 3]
    #[arg(long)]
    pub recall_k: Option<usize>,
    /// Reward multiplier [default: 1]
    #[arg(long)]
    pub reward_scale: Option<f64>,

    /// ddim or ddpm [default: ddim]
    #[arg(long)]
    pub sampler: Option<SamplerKind>,
    /// Denoising steps per trajectory [default: 20]
    #[arg(long)]
    pub steps: Option<usize>,
    /// DDIM stochasticity, > 0 [default: 1]
    #[arg(long)]
    pub eta: Option<f64>,
    /// Classifier-free guidance scale [default: 4]
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Trajectories per sampling batch, 0 = all [default: 0]
    #[arg(long)]
    pub sample_batch_size: Option<usize>,
    /// Guidance only at steps whose EDM noise level σ_t = √((1−ᾱ_t)/ᾱ_t) has LO < σ_t ≤ HI,
    /// w = 1 elsewhere (see `divrl sample --help`); "none" = every step [default: none]
    #[arg(long, value_name = "LO,HI", allow_hyphen_values = true)]
    pub guidance_interval: Option<String>,
    /// CADS on the rollouts and evaluations (noise on the class embedding, annealed over the early
    /// steps); any --cads-* flag also turns it on [default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub cads: Option<bool>,
    /// CADS: diffusion time t ∈ [0, 1] (1 = pure noise) up to which the condition is clean [default: 0.6]
    #[arg(long, value_name = "T", allow_negative_numbers = true)]
    pub cads_tau1: Option<f64>,
    /// CADS: diffusion time t ∈ [0, 1] from which the condition is pure noise [default: 0.9]
    #[arg(long, value_name = "T", allow_negative_numbers = true)]
    pub cads_tau2: Option<f64>,
    /// CADS: noise scale s ≥ 0 [default: 0.25]
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub cads_noise: Option<f64>,
    /// CADS: share ψ ∈ [0, 1] of the noisy embedding rescaled to the clean one's mean and std [default: 1]
    #[arg(long, value_name = "PSI", allow_negative_numbers = true)]
    pub cads_psi: Option<f64>,

    /// Epochs (outer iterations of Algorithm 1) [default: 20]
    #[arg(long)]
    pub epochs: Option<usize>,
    /// PPO inner epochs per rollout [default: 1]
    #[arg(long)]
    pub inner_epochs: Option<usize>,
    /// Trajectories per PPO minibatch [default: 10]
    #[arg(long)]
    pub train_batch_size: Option<usize>,
    /// Minibatches per optimizer step [default: 1]
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Share of timesteps trained per trajectory, (0, 1] [default: 1]
    #[arg(long)]
    pub timestep_fraction: Option<f64>,
    /// The last K transitions of each trajectory are not trained (near-deterministic) [default: 0]
    #[arg(long)]
    pub skip_final_steps: Option<usize>,
    /// The adapters act on the first N sampling steps only (highest noise); later steps run the
    /// frozen base; only those steps train; 0 = all (unet) [default: 0]
    #[arg(long)]
    pub policy_steps: Option<usize>,
    /// PPO clip range [default: 1e-4]
    #[arg(long)]
    pub clip_range: Option<f64>,
    /// Advantage clip [default: 5]
    #[arg(long)]
    pub adv_clip: Option<f64>,
    /// Per-condition reward history length [default: 16]
    #[arg(long)]
    pub tracker_buffer: Option<usize>,
    /// Rewards on record before a condition uses its own statistics [default: 16]
    #[arg(long)]
    pub tracker_min_count: Option<usize>,
    /// KL-to-base penalty weight [default: 0]
    #[arg(long)]
    pub kl_coef: Option<f64>,
    /// Learning rate [default: 3e-4]
    #[arg(long)]
    pub lr: Option<f64>,
    /// AdamW weight decay [default: 1e-4]
    #[arg(long)]
    pub weight_decay: Option<f64>,
    #[arg(long)]
    pub adam_beta1: Option<f64>,
    #[arg(long)]
    pub adam_beta2: Option<f64>,
    #[arg(long)]
    pub adam_eps: Option<f64>,
    /// Gradient-norm clip, 0 = off [default: 1]
    #[arg(long)]
    pub max_grad_norm: Option<f64>,

    /// LoRA rank [default: 4]
    #[arg(long)]
    pub lora_rank: Option<i64>,
    /// LoRA alpha [default: 4]
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// LoRA targets, comma-separated (to_q,to_k,to_v,to_out)
    #[arg(long, value_delimiter = ',')]
    pub lora_targets: Option<Vec<String>>,
    /// Train all base weights instead of LoRA adapters
    #[arg(long)]
    pub full_finetune: Option<bool>,

    #[arg(long)]
    pub seed: Option<u64>,
    /// Checkpoint every K epochs [default: 5]
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Checkpoints kept [default: 2]
    #[arg(long)]
    pub keep_checkpoints: Option<usize>,
    /// Sample grid every K epochs, 0 = never [default: 5]
    #[arg(long)]
    pub sample_every: Option<usize>,
    /// Held-out evaluation every K epochs (and before/after), 0 = never [default: 0]
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Generated images per condition for evaluation [default: 50]
    #[arg(long)]
    pub eval_per_class: Option<usize>,
    /// Second evaluation feature network the reward never uses: inception, small or pixels
    /// [default: none]
    #[arg(long)]
    pub eval_independent: Option<String>,
    /// Log per-epoch diagnostics: advantage vs log-prob-change correlation, fixed-noise set
    /// reward before and after each update [default: false]
    #[arg(long)]
    pub diagnostics: Option<bool>,
    #[command(flatten)]
    pub compute: super::ComputeOverrides,
}

macro_rules! apply {
    ($args:ident, $cfg:ident; plain: $($p:ident),*; optional: $($o:ident),*) => {
        $( if let Some(v) = $args.$p.clone() { $cfg.$p = v; } )*
        $( if let Some(v) = $args.$o.clone() { $cfg.$o = Some(v); } )*
    };
}

/// The config file (or defaults) with the flags applied.
pub fn resolve(args: &Args) -> anyhow::Result<FinetuneConfig> {
    // Fields neither the file nor a flag sets take the defaults of the run's model.
    let mut cfg: FinetuneConfig = match &args.config {
        Some(p) => FinetuneConfig::read_toml_for(p, args.model.as_deref())?,
        None => FinetuneConfig::defaults_for(args.model.as_deref().unwrap_or("unet"))?,
    };
    apply!(args, cfg;
        plain: prompts, references, resolution, precision, gradient_checkpointing, base, out, data,
            ref_per_class, balanced_reference, classes, classes_per_epoch, images_per_class, sets_per_class,
            extractor, reward, sigma_scale, mmd_kernel, jitter, recall_k, reward_scale, sampler, steps, eta, guidance,
            sample_batch_size, epochs, inner_epochs, train_batch_size, grad_accum,
            timestep_fraction, skip_final_steps, policy_steps, clip_range, adv_clip, tracker_buffer, tracker_min_count, kl_coef,
            lr, weight_decay, adam_beta1, adam_beta2, adam_eps, max_grad_norm, lora_rank,
            lora_alpha, lora_targets, full_finetune, seed, checkpoint_every, keep_checkpoints,
            sample_every, eval_every, eval_per_class, eval_independent, diagnostics, cads_tau1,
            cads_tau2, cads_noise, cads_psi;
        optional: extractor_weights, degree, gamma, coef0, sigma);
    let any_cads_setting = args.cads_tau1.is_some()
        || args.cads_tau2.is_some()
        || args.cads_noise.is_some()
        || args.cads_psi.is_some();
    match args.cads {
        Some(on) => cfg.cads = on,
        None if any_cads_setting => cfg.cads = true,
        None => {}
    }
    if let Some(iv) = &args.guidance_interval {
        cfg.guidance_interval = if iv.trim().eq_ignore_ascii_case("none") {
            None
        } else {
            let iv: GuidanceInterval = iv.parse()?;
            Some([iv.sigma_lo, iv.sigma_hi])
        };
    }
    args.compute.apply(&mut cfg.device, &mut cfg.threads);
    cfg.validate()?;
    Ok(cfg)
}

/// Errors when `out` holds a run and `--resume` was not given.
fn check_fresh(args: &Args, out: &std::path::Path) -> anyhow::Result<()> {
    if !args.resume && out.join(divrl::rl::run_dir::CHECKPOINTS_DIR).exists() {
        bail!(
            "{} already holds a run: pass --resume to continue it, or choose another --out",
            out.display()
        );
    }
    Ok(())
}

/// Locks `out` for this process (the inputs are valid by now) and checks again, under the
/// lock, that no other run finished there since the first look.
fn claim(args: &Args, out: &std::path::Path) -> anyhow::Result<Arc<RunLock>> {
    let lock = divrl::run_lock::lock_run_folder(out)?;
    check_fresh(args, out)?;
    Ok(lock)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = resolve(&args)?;
    let out = &cfg.out;
    check_fresh(&args, out)?;
    if cfg.model == "sd" {
        let trainer = divrl::rl::build_sd_finetuner(&cfg)?;
        return train(&args, trainer, "LoRA in lora/, log.jsonl");
    }
    let trainer = divrl::rl::build_finetuner(&cfg, false, !args.no_progress)?;
    let what = if cfg.policy_steps > 0 {
        "lora.safetensors, lora.toml, log.jsonl; no merged/: the adapters act on the first policy_steps steps only"
    } else {
        "lora.safetensors, merged/, log.jsonl"
    };
    train(&args, trainer, what)
}

/// Claims the run folder, resumes when asked, runs to `cfg.epochs` and reports each evaluation
/// and where the results are (`what`).
fn train<P: divrl::rl::PolicyModel>(
    args: &Args,
    mut trainer: divrl::rl::Trainer<P>,
    what: &str,
) -> anyhow::Result<()> {
    let out = trainer.cfg.out.clone();
    let _lock = claim(args, &out)?;
    if args.resume {
        if trainer.resume()? {
            eprintln!("resuming {} at epoch {}", out.display(), trainer.epoch);
        } else {
            eprintln!("no checkpoint in {}: starting from epoch 0", out.display());
        }
    }
    let t0 = std::time::Instant::now();
    let evals = trainer.run(!args.no_progress)?;
    for (e, r) in &evals {
        eprintln!("evaluation at epoch {e}:\n{}", r.table());
    }
    eprintln!(
        "fine-tuned to epoch {} in {:.1} s -> {} ({what})",
        trainer.epoch,
        t0.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}
