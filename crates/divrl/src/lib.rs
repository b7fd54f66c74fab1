//! divrl: diffusion models as policies on libtorch (through tch).
//!
//! - [`data`]: IDX, image folders, `.npy`; the embedded Fashion-MNIST default; splits; the
//!   skewed-attribute variant and its oracle.
//! - [`models::unet`]: a class-conditional UNet with LoRA-wrappable attention ([`nn::lora`]).
//! - [`schedule`]: noise schedules and reverse steps (DDPM, DDIM) with log-probabilities, guidance
//!   in a limited noise interval; [`cads`]: condition-annealed sampling.
//! - [`sample`]: trajectories (stored, replayed) and PNG grids; [`export`]: images as PNG files
//!   or one `.npy`.
//! - [`train`]: DDPM base training; [`checkpoint`]: loading.
//! - [`features`]: feature extractors ϕ, image sources, the feature cache; [`imageops`] and
//!   [`paths`]: the image conversions and weight locations the networks share.
//! - [`run_lock`]: one process per run folder, and removal of what killed runs left behind.
//! - [`demo`]: `divrl demo` (baseline, fine-tuning, HTML report); [`experiment`]: the paper's
//!   tables on our data (selection, guidance, debias, ablation).
pub mod audit;
pub mod cads;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod demo;
pub mod device;
pub mod eval;
pub mod experiment;
pub mod export;
pub mod features;
pub mod imageops;
pub mod models;
pub mod nn;
pub mod optim;
pub mod paths;
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
