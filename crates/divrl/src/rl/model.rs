//! What the fine-tuning loop needs from a diffusion model: a sampler that records trajectories,
//! the images of their final states, a replay of stored transitions under the current weights
//! (and under the frozen base, for the KL penalty), the trained variables and an export.
//! [`super::UnetPolicy`] (class-conditional, pixel space) and [`super::SdModel`] (Stable
//! Diffusion, latent space, prompts as conditions) implement it; [`super::Trainer`] is the one
//! loop over either.
use anyhow::Result;
use std::path::PathBuf;
use tch::{nn::VarStore, Device, Tensor};

use crate::sample::Trajectory;
use crate::schedule::SamplerConfig;

use super::config::FinetuneConfig;
use super::ppo::Replay;

pub trait PolicyModel {
    /// What a condition is called in messages ("class", "prompt").
    fn condition_noun(&self) -> &'static str;

    /// Where the policy computes.
    fn device(&self) -> Device;

    /// The conditions a run trains on (class indices, or prompt indices).
    fn conditions(&self, cfg: &FinetuneConfig) -> Result<Vec<i64>>;

    /// The sampler of rollouts and evaluations.
    fn sampler(&self, cfg: &FinetuneConfig) -> SamplerConfig;

    /// One batch of trajectories for the conditions `y` (`[B]` int64 on the device) from `seed`.
    fn sample(&self, sampler: &SamplerConfig, y: &Tensor, seed: u64) -> Result<Trajectory>;

    /// The `[-1, 1]` images of a trajectory's final states, computed `chunk` at a time (0: all).
    fn images(&self, traj: &Trajectory, chunk: usize) -> Tensor;

    /// Runs `f` with the replay of stored transitions under the current weights (and the frozen
    /// base of the KL penalty, when the run has one). `training`: the replay is followed by
    /// `backward()` (a policy with gradient checkpointing records its stages only then).
    fn with_replay<R>(
        &self,
        cfg: &FinetuneConfig,
        training: bool,
        f: impl FnOnce(&Replay<'_>) -> R,
    ) -> R;

    /// The variables that train.
    fn trainable(&self) -> &VarStore;
    fn trainable_mut(&mut self) -> &mut VarStore;

    /// Writes the trained result into the run folder `cfg.out`; returns what a user loads next.
    fn export(&self, cfg: &FinetuneConfig) -> Result<PathBuf>;
}
