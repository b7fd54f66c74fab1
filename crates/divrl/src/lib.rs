//! divrl: diffusion models as policies on libtorch (through tch).
//!
//! - [`data`]: IDX, image folders, `.npy`; the embedded Fashion-MNIST default; splits; the
//!   skewed-attribute variant and its oracle.
//! - [`models::unet`]: a class-conditional UNet with LoRA-wrappable attention ([`nn::lora`]).
//! - [`schedule`]: noise schedules and reverse steps (DDPM, DDIM) with log-probabilities, guidance
//!   in a limited noise interval, one batched transition for sampling and PPO replay
//!   ([`schedule::Transitions`]); [`cads`]: condition-annealed sampling.
//! - [`sample`]: trajectories (stored, replayed) and PNG grids; [`export`]: images as PNG files
//!   or one `.npy`.
//! - [`train`]: DDPM base training; [`checkpoint`]: loading.
//! - [`features`]: feature extractors ϕ, image sources, the feature cache; [`imageops`] and
//!   [`paths`]: the image conversions and weight locations the networks share.
//! - [`run_lock`]: one process per run folder, and removal of what killed runs left behind;
//!   [`progress`]: the progress bars.
//! - [`rl`]: diversity-oriented RL fine-tuning (Algorithm 1) over any diffusion policy;
//!   [`eval`]: held-out metrics; [`audit`]: can ϕ and the reward see an attribute?
//!
//! The demo and the experiments, which drive all of this into reports, live above the library
//! in the `divrl-experiments` crate.
pub mod audit;
pub mod cads;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod eval;
pub mod export;
pub mod features;
pub mod imageops;
pub mod models;
pub mod nn;
pub mod optim;
pub mod paths;
pub mod progress;
pub mod rl;
pub mod rng;
pub mod run_lock;
pub mod sample;
pub mod schedule;
pub mod train;

pub use tch;
/// The TOML table type of config overlays (re-exported so callers need no `toml` dependency).
pub mod toml_table {
    pub use toml::Table;
}
