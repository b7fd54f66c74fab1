//! Stable Diffusion as a policy: prompts are the conditions, the policy is DDIM in latent space
//! with classifier-free guidance ([`crate::models::sd::pipeline::SdPolicy`]), the rollout's final
//! latents are decoded by the VAE for ϕ (CLIP image features), and only LoRA adapters on the
//! UNet's attention projections train. Condition `i` is prompt `i`.
//!
//! Memory: rollouts run without autograd, `sample_batch_size` trajectories at a time (default 1);
//! the PPO update back-propagates each timestep of each minibatch (`train_batch_size`, default 1)
//! separately and accumulates gradients over `grad_accum` minibatches, so one UNet graph is alive
//! at a time, and with `gradient_checkpointing` (the sd default) only one UNet *stage*'s graph
//! (see [`crate::models::sd::unet2d`]).
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tch::{nn::VarStore, Device, Tensor};

use divrl_reward::Features;

use crate::features::Extractor;
use crate::models::sd::lora_diffusers::export_peft;
use crate::models::sd::pipeline::SdPolicy;
use crate::models::sd::StableDiffusion;
use crate::sample::Trajectory;
use crate::schedule::{SamplerConfig, StepGaussian};

use super::config::FinetuneConfig;
use super::model::PolicyModel;
use super::policy::StepBatch;
use super::ppo::{Replay, StepPolicy};
use super::trainer::Trainer;

/// Folder of the exported LoRA (peft/diffusers layout) inside the run folder.
pub const SD_LORA_DIR: &str = "lora";

/// The frozen pipeline with LoRA adapters on its UNet and the run's encoded prompts.
pub struct SdModel {
    /// The frozen pipeline; its UNet carries the adapters.
    pub sd: StableDiffusion,
    /// The adapters (the only trained variables).
    pub lora_vs: VarStore,
    /// `[P + 1, L, D]` text states of the prompts and the empty prompt.
    cond: Tensor,
    prompts: Vec<String>,
    resolution: i64,
}

/// Fine-tuning of Stable Diffusion (Algorithm 1 with [`SdModel`]).
pub type SdFinetuner = Trainer<SdModel>;

impl SdModel {
    /// Adds LoRA adapters (initialised from `cfg.seed`) to a loaded pipeline and encodes the
    /// run's prompts once.
    pub fn new(cfg: &FinetuneConfig, mut sd: StableDiffusion) -> Result<Self> {
        if cfg.model != "sd" {
            bail!("SdModel needs model = \"sd\", got {:?}", cfg.model);
        }
        let lora_vs = VarStore::new(sd.device);
        let n = crate::rng::with_torch_seed(cfg.seed as i64, || {
            sd.unet.add_lora(&lora_vs.root(), &cfg.lora_config())
        })?;
        if n == 0 {
            bail!("no layer matched the LoRA targets {:?}", cfg.lora_targets);
        }
        let cond = {
            let mut all = cfg.prompts.clone();
            all.push(String::new());
            sd.encode_prompts(&all)?
        };
        Ok(Self {
            sd,
            lora_vs,
            cond,
            prompts: cfg.prompts.clone(),
            resolution: cfg.resolution,
        })
    }

    /// The current policy (the UNet with its adapters, conditioned on the run's prompts; borrows
    /// only the pipeline, so the optimizer and RNG stay free to update while it is alive).
    pub fn policy(&self) -> SdPolicy<'_> {
        SdPolicy {
            sd: &self.sd,
            cond: self.cond.shallow_clone(),
            prompts: self.prompts.clone(),
            checkpoints: None,
        }
    }
}

impl Trainer<SdModel> {
    /// Binds a loaded pipeline, ϕ and the per-prompt reference features (`[N, D]`, keyed by
    /// prompt index). LoRA adapters are created from `cfg.seed`.
    pub fn new(
        cfg: FinetuneConfig,
        sd: StableDiffusion,
        phi: Box<dyn Extractor>,
        references: BTreeMap<i64, Features>,
    ) -> Result<Self> {
        cfg.validate()?;
        let model = SdModel::new(&cfg, sd)?;
        Trainer::with_model(cfg, model, phi, references, None)
    }
}

impl PolicyModel for SdModel {
    fn condition_noun(&self) -> &'static str {
        "prompt"
    }

    fn device(&self) -> Device {
        self.sd.device
    }

    fn conditions(&self, _cfg: &FinetuneConfig) -> Result<Vec<i64>> {
        Ok((0..self.prompts.len() as i64).collect())
    }

    fn sampler(&self, cfg: &FinetuneConfig) -> SamplerConfig {
        SdPolicy::sampler(cfg.steps, cfg.eta, cfg.guidance)
    }

    fn sample(&self, sampler: &SamplerConfig, y: &Tensor, seed: u64) -> Result<Trajectory> {
        self.policy().sample(sampler, y, self.resolution, seed)
    }

    /// VAE-decoded images of the final latents, `chunk` at a time, on the CPU.
    fn images(&self, traj: &Trajectory, chunk: usize) -> Tensor {
        let lat = traj.images();
        let n = lat.size()[0];
        let chunk = match chunk {
            0 => n,
            c => c as i64,
        };
        let mut out = Vec::new();
        let mut i = 0;
        while i < n {
            let len = chunk.min(n - i);
            out.push(
                self.sd
                    .decode(&lat.narrow(0, i, len))
                    .to_device(Device::Cpu),
            );
            i += len;
        }
        Tensor::cat(&out, 0)
    }

    /// One backward per timestep and minibatch, through the checkpointed UNet stages with
    /// `gradient_checkpointing`; no KL base (`kl_coef > 0` is rejected for model sd).
    fn with_replay<R>(
        &self,
        cfg: &FinetuneConfig,
        training: bool,
        f: impl FnOnce(&Replay<'_>) -> R,
    ) -> R {
        let policy = self.policy();
        let policy = if training && cfg.gradient_checkpointing {
            policy.with_checkpointing()
        } else {
            policy
        };
        f(&Replay {
            policy: &policy,
            base: None,
            sched: &self.sd.scheduler.sched,
        })
    }

    fn trainable(&self) -> &VarStore {
        &self.lora_vs
    }

    fn trainable_mut(&mut self) -> &mut VarStore {
        &mut self.lora_vs
    }

    /// Writes `out/lora/` (peft/diffusers layout, [`crate::models::sd::lora_diffusers`]).
    fn export(&self, cfg: &FinetuneConfig) -> Result<PathBuf> {
        export_peft(&self.sd.unet, &cfg.out.join(SD_LORA_DIR))
    }
}

/// The Stable Diffusion policy replays a transition like the sampler, and with gradient
/// checkpointing finishes each backward pass through the recorded UNet stages.
impl StepPolicy for SdPolicy<'_> {
    fn gaussian(&self, sb: &StepBatch, sampler: &SamplerConfig) -> StepGaussian {
        sb.gaussian(self, sampler)
    }

    fn finish_backward(&self) -> Result<()> {
        self.backward_checkpoints().map(|_| ())
    }
}
