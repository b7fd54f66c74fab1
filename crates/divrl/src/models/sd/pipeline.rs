//! The Stable Diffusion sampler as a policy: DDIM (eta > 0) in latent space with classifier-free
//! guidance, log-probabilities of the latent transitions, and the VAE decode for the reward.
//!
//! Prompts are conditions: the policy holds the text states of `P` prompts plus the empty prompt
//! and maps condition id `c ∈ 0..P` to prompt `c`, id `P` to the empty prompt (the
//! "unconditional" branch of guidance). So [`crate::sample::Trajectory`],
//! [`crate::sample::recompute_log_prob`] and the PPO replay of [`crate::rl::policy::StepBatch`]
//! work unchanged, with prompt indices as their `classes`.
use anyhow::{bail, Result};
use std::cell::RefCell;
use tch::{Kind, Tensor};

use super::scheduler::Prediction;
use super::unet2d::UNetCheckpoints;
use super::StableDiffusion;
use crate::sample::{sample_trajectory_at, Trajectory};
use crate::schedule::{EpsModel, LogProbReduction, SamplerConfig, SamplerKind};

/// The noise predictor of one set of prompts (an [`EpsModel`] whose classes are prompt indices).
pub struct SdPolicy<'a> {
    pub sd: &'a StableDiffusion,
    /// `[P + 1, L, D]`: the prompts' text states, then the empty prompt's.
    pub cond: Tensor,
    pub prompts: Vec<String>,
    /// Gradient checkpointing: when set, [`EpsModel::eps`] runs the UNet without autograd,
    /// returns its output as a leaf that requires grad and records it here with the
    /// checkpoints; after `loss.backward()`, [`SdPolicy::backward_checkpoints`] carries the
    /// leaf's gradient through the UNet stage by stage.
    pub checkpoints: Option<RefCell<Vec<(Tensor, UNetCheckpoints)>>>,
}

impl<'a> SdPolicy<'a> {
    /// Encodes `prompts` (and the empty prompt) once.
    pub fn new(sd: &'a StableDiffusion, prompts: &[String]) -> Result<Self> {
        if prompts.is_empty() {
            bail!("no prompts");
        }
        let mut all = prompts.to_vec();
        all.push(String::new());
        let cond = sd.encode_prompts(&all)?;
        Ok(Self {
            sd,
            cond,
            prompts: prompts.to_vec(),
            checkpoints: None,
        })
    }

    /// The same policy with gradient checkpointing (see [`SdPolicy::checkpoints`]).
    pub fn with_checkpointing(mut self) -> Self {
        self.checkpoints = Some(RefCell::new(Vec::new()));
        self
    }

    /// Back-propagates the gradients that `loss.backward()` left on the recorded UNet outputs
    /// into the adapters (gradient checkpointing); clears the record. Returns the number of UNet
    /// calls replayed.
    pub fn backward_checkpoints(&self) -> Result<usize> {
        let Some(cell) = &self.checkpoints else {
            return Ok(0);
        };
        let pending: Vec<(Tensor, UNetCheckpoints)> = cell.borrow_mut().drain(..).collect();
        for (leaf, ck) in &pending {
            let g = leaf.grad();
            if !g.defined() {
                bail!(
                    "a checkpointed UNet output received no gradient (was loss.backward() called?)"
                );
            }
            self.sd
                .precision
                .run(|| self.sd.unet.backward_checkpointed(ck, &g));
        }
        Ok(pending.len())
    }

    /// The DDIM sampler configuration of Stable Diffusion (no x̂_0 clipping in latent space).
    pub fn sampler(steps: usize, eta: f64, guidance: f64) -> SamplerConfig {
        SamplerConfig {
            kind: SamplerKind::Ddim,
            steps,
            eta,
            guidance,
            clip_x0: false,
            reduction: LogProbReduction::Mean,
            ..SamplerConfig::default()
        }
    }

    /// Samples latent trajectories for prompt indices `prompts` (`[B]` int64 on the device).
    pub fn sample(
        &self,
        cfg: &SamplerConfig,
        prompts: &Tensor,
        resolution: i64,
        seed: u64,
    ) -> Result<Trajectory> {
        if cfg.kind != SamplerKind::Ddim || cfg.clip_x0 {
            bail!("the Stable Diffusion policy samples with DDIM and no x̂_0 clipping");
        }
        let ts = self.sd.scheduler.timesteps(cfg.steps)?;
        let shape = self.sd.latent_shape(resolution)?;
        sample_trajectory_at(
            self,
            &self.sd.scheduler.sched,
            cfg,
            prompts,
            shape,
            seed,
            ts,
        )
    }

    /// Images in `[-1, 1]` of a trajectory's final latents.
    pub fn images(&self, traj: &Trajectory) -> Tensor {
        self.sd.decode(&traj.images())
    }
}

impl EpsModel for SdPolicy<'_> {
    fn eps(&self, x: &Tensor, t: &Tensor, class: &Tensor) -> Tensor {
        let ctx = self.cond.index_select(0, class);
        let out = match &self.checkpoints {
            None => self
                .sd
                .precision
                .run(|| self.sd.unet.forward(x, t, &ctx))
                .to_kind(Kind::Float),
            Some(cell) => {
                let (out, ck) = self
                    .sd
                    .precision
                    .run(|| self.sd.unet.forward_checkpointed(x, t, &ctx));
                let leaf = out.to_kind(Kind::Float).detach().set_requires_grad(true);
                cell.borrow_mut().push((leaf.shallow_clone(), ck));
                leaf
            }
        };
        match self.sd.scheduler.prediction {
            Prediction::Epsilon => out,
            Prediction::VPrediction => {
                // ε = √ᾱ_t·v + √(1−ᾱ_t)·x_t.
                let ab = Tensor::from_slice(&self.sd.scheduler.sched.alphas_cumprod)
                    .to_kind(Kind::Float)
                    .to_device(x.device())
                    .index_select(0, &t.to_kind(Kind::Int64))
                    .view([-1, 1, 1, 1]);
                out * ab.sqrt() + x * (ab.neg() + 1.0).sqrt()
            }
        }
    }
    fn null_class(&self) -> i64 {
        self.prompts.len() as i64
    }
}
