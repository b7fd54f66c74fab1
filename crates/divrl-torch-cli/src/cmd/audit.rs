//! `divrl audit`: can ϕ and the reward see the attribute to balance? Marginal rewards,
//! advantages, the minority test and nearest-neighbour distances of a base model's samples and
//! of real images ([`divrl::audit`]).

use std::path::PathBuf;

use anyhow::{bail, Context};
use divrl::audit::{run_audit, AuditConfig, RewardArm};
use divrl_reward::{MmdKernel, RewardKind, RewardSpec};

use super::ComputeOpts;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditReward {
    Mmd,
    GpMi,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Base checkpoint folder
    #[arg(long, default_value = divrl::rl::presets::SKEWED_BASE)]
    pub base: PathBuf,
    /// Data set with a binary attribute (reference and evaluation pools)
    #[arg(long, default_value = "fashion-mnist-skewed")]
    pub data: String,
    /// Generated images per class (also the real images per class, from the evaluation pool)
    #[arg(long, default_value_t = 50)]
    pub per_class: usize,
    /// Classifier-free guidance scale of the samples
    #[arg(long, default_value_t = 1.0)]
    pub guidance: f64,
    /// DDIM steps (the RL presets' 10)
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// DDIM eta
    #[arg(long, default_value_t = 1.0)]
    pub eta: f64,
    /// Feature networks ϕ, comma-separated: small, inception, inception-native, pixels (8 × 8),
    /// pixels-<side>, pixels[-<side>]-norm (standardised per image)
    #[arg(long, value_delimiter = ',', default_value = "small")]
    pub extractor: Vec<String>,
    /// Weights of ϕ (with one --extractor) [default: the extractor's default location]
    #[arg(long)]
    pub extractor_weights: Option<PathBuf>,
    /// Rewards, comma-separated: mmd, gp-mi
    #[arg(long, value_enum, value_delimiter = ',', default_value = "mmd")]
    pub reward: Vec<AuditReward>,
    /// Polynomial kernel degree d (mmd) [default: 3]
    #[arg(long)]
    pub degree: Option<u32>,
    /// Polynomial kernel scale γ (mmd) [default: 1/D]
    #[arg(long)]
    pub gamma: Option<f64>,
    /// Polynomial kernel offset c0 (mmd) [default: 1]
    #[arg(long)]
    pub coef0: Option<f64>,
    /// Kernel of the mmd reward: polynomial (KID) or rbf
    #[arg(long, default_value = "polynomial")]
    pub mmd_kernel: MmdKernel,
    /// RBF bandwidth σ (gp-mi, mmd with --mmd-kernel rbf) [default: --sigma-scale × median pairwise reference distance]
    #[arg(long)]
    pub sigma: Option<f64>,
    /// Multiple of each class's median reference distance used as σ when --sigma is not given
    #[arg(long, default_value_t = 1.0)]
    pub sigma_scale: f64,
    /// Jitter λ added to kernel diagonals (gp-mi)
    #[arg(long, default_value_t = 1e-6)]
    pub jitter: f64,
    /// Balanced reference images per class (half of each attribute value)
    #[arg(long, default_value_t = 50)]
    pub ref_per_class: usize,
    /// Set size M
    #[arg(long, default_value_t = 5)]
    pub m: usize,
    /// Random sets per class, and minority-test sets per class
    #[arg(long, default_value_t = 100)]
    pub draws: usize,
    /// Seed of the sampling noise and of the set draws
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Attribute value tested as the minority [default: the rarer one among the samples]
    #[arg(long)]
    pub minority: Option<u8>,
    /// Also write the full report as JSON here
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub compute: ComputeOpts,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(p) = &args.json {
        let parent = p.parent().filter(|d| !d.as_os_str().is_empty());
        if parent.is_some_and(|d| !d.is_dir()) {
            bail!("the folder of --json {} does not exist", p.display());
        }
    }
    for e in &args.extractor {
        if !divrl::features::is_image_extractor_name(e) {
            bail!(
                "unknown --extractor {e:?} ({})",
                divrl::features::IMAGE_EXTRACTORS_HELP
            );
        }
    }
    let rewards = args
        .reward
        .iter()
        .map(|r| RewardArm {
            spec: RewardSpec {
                kind: match r {
                    AuditReward::Mmd => RewardKind::Mmd,
                    AuditReward::GpMi => RewardKind::GpMi,
                },
                degree: args.degree,
                gamma: args.gamma,
                coef0: args.coef0,
                sigma: args.sigma,
                sigma_scale: args.sigma_scale,
                mmd_kernel: args.mmd_kernel,
                jitter: args.jitter,
                k: 3,
            },
        })
        .collect();
    let cfg = AuditConfig {
        base: args.base.clone(),
        data: args.data.clone(),
        per_class: args.per_class,
        guidance: args.guidance,
        steps: args.steps,
        eta: args.eta,
        extractors: args.extractor.clone(),
        extractor_weights: args.extractor_weights.clone(),
        rewards,
        ref_per_class: args.ref_per_class,
        m: args.m,
        draws: args.draws,
        seed: args.seed,
        minority: args.minority,
        device: divrl::device::parse_device(&args.compute.device)?,
    };
    cfg.validate()?;
    let device = args.compute.device()?;
    let report = run_audit(&AuditConfig { device, ..cfg })?;
    if let Some(p) = &args.json {
        divrl_reward::io::write_atomic(p, serde_json::to_string_pretty(&report)?.as_bytes())
            .with_context(|| format!("writing {}", p.display()))?;
    }
    print!("{}", report.to_markdown());
    Ok(())
}
