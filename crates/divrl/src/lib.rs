//! divrl: diffusion models as policies on libtorch (through tch).
//!
//! - [`data`]: IDX, image folders, `.npy`; the embedded Fashion-MNIST default; splits; the
//!   skewed-attribute variant and its oracle.
//! - [`models::unet`]: a class-conditional UNet with LoRA-wrappable attention ([`nn::lora`]).
//! - [`schedule`]: noise schedules and reverse steps (DDPM, DDIM) with log-probabilities.
//! - [`sample`]: trajectories (stored, replayed) and PNG grids.
//! - [`train`]: DDPM base training; [`checkpoint`]: loading.
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod eval;
pub mod features;
pub mod models;
pub mod nn;
pub mod optim;
pub mod rl;
pub mod rng;
pub mod sample;
pub mod schedule;
pub mod train;

pub use tch;
