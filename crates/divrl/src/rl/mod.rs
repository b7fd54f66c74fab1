//! Diversity-oriented RL fine-tuning (Miao et al., CVPR 2024, Algorithm 1): sample M images per
//! condition with the diffusion policy, score the set with a Diversity Reward against the
//! condition's reference set in ϕ's feature space, give each image its marginal utility, turn
//! rewards into per-condition advantages, and take clipped importance-sampling (PPO) steps on
//! LoRA adapters.
//!
//! - [`config`]: [`FinetuneConfig`] (TOML, every field also a CLI flag).
//! - [`advantage`]: per-condition running normalisation and clipping.
//! - [`ppo`]: the clipped objective and the PPO phase both trainers share; [`policy`]: replaying
//!   trajectory steps per sample.
//! - [`trainer`]: [`Finetuner`], the loop, checkpoints with exact resume, exports.
//! - [`phi`]: ϕ by name (adds the parameter-free `pixels`).
//! - [`setup`]: a [`Finetuner`] from a config (model, ϕ, references, evaluation set).
//! - [`presets`]: the demo's and the experiments' fine-tuning settings.
pub mod advantage;
pub mod config;
pub mod phi;
pub mod policy;
pub mod ppo;
pub mod presets;
pub mod sd_trainer;
pub mod setup;
pub mod trainer;

pub use config::FinetuneConfig;
pub use sd_trainer::SdFinetuner;
pub use setup::build_finetuner;
pub use trainer::{EvalSet, Finetuner};
