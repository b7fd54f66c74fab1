//! Diversity-oriented RL fine-tuning (Miao et al., CVPR 2024, Algorithm 1): sample M images per
//! condition with the diffusion policy, score the set with a Diversity Reward against the
//! condition's reference set in ϕ's feature space, give each image its marginal utility, turn
//! rewards into per-condition advantages, and take clipped importance-sampling (PPO) steps on
//! LoRA adapters.
//!
//! - [`config`]: [`FinetuneConfig`] (TOML, every field also a CLI flag).
//! - [`advantage`]: per-condition running normalisation and clipping.
//! - [`ppo`]: the clipped objective and the PPO phase; [`policy`]: replaying trajectory steps
//!   per sample.
//! - [`model`]: [`PolicyModel`], what the loop needs from a diffusion model;
//!   [`unet_policy`] (the class-conditional UNet) and [`sd_model`] (Stable Diffusion) implement it.
//! - [`data_parallel`]: one rank of a data-parallel run (torchrun-style, on libtorch's c10d):
//!   its share of an epoch's samples, the exchange of ϕ-features and gradients.
//! - [`trainer`]: [`Trainer`], the one loop over any [`PolicyModel`] ([`Finetuner`] and
//!   [`SdFinetuner`] name its two instances), evaluation and exports.
//! - [`evaluator`]: held-out evaluation of any policy (fixed noise, ϕ, an independent space,
//!   pixels, the attribute oracle).
//! - [`step_gate`]: adapters on the first `policy_steps` sampling steps only, the base after;
//!   [`adapted`]: a finished run's adapters on its base, for sampling.
//! - [`policy_ema`]: the Polyak average of the weights that evaluations and exports use.
//! - [`run_dir`]: the run folder: log lines, checkpoints with exact resume, pruning;
//!   [`run_log`]: the log's records and their reader.
//! - [`setup`]: a [`Finetuner`] or [`SdFinetuner`] from a config (model, ϕ, references,
//!   evaluation set).
//! - [`presets`]: the demo's and the experiments' fine-tuning settings.
pub mod adapted;
pub mod advantage;
pub mod config;
pub mod data_parallel;
pub mod evaluator;
pub mod model;
pub mod policy;
pub mod policy_ema;
pub mod ppo;
pub mod presets;
pub mod run_dir;
pub mod run_log;
pub mod sd_model;
pub mod setup;
pub mod step_gate;
pub mod trainer;
pub mod unet_policy;

pub use adapted::AdaptedModel;
pub use config::FinetuneConfig;
pub use evaluator::{EvalSet, Evaluator};
pub use model::PolicyModel;
pub use run_dir::RunDir;
pub use sd_model::{SdFinetuner, SdModel};
pub use setup::{build_finetuner, build_sd_finetuner};
pub use trainer::{Finetuner, Trainer};
pub use unet_policy::UnetPolicy;
