//! The class-conditional UNet as a policy: pixel-space sampling with classifier-free guidance
//! (and the sampler's training-free options, guidance interval and CADS), LoRA adapters on its
//! attention projections (or all weights with `full_finetune`), a frozen copy of the base for
//! the KL penalty and for the steps after `policy_steps` ([`super::step_gate`]), and an export
//! as adapters plus a merged checkpoint `divrl sample` loads.
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tch::{nn::VarStore, Device, Tensor};

use crate::checkpoint::{BaseConfig, LoadedModel, CONFIG_FILE, EMA_FILE};
use crate::config::{write_safetensors_atomic, write_toml};
use crate::models::unet::UNet;
use crate::nn::lora::merged_weight;
use crate::sample::{sample_trajectory, Trajectory};
use crate::schedule::{EpsModel, NoiseSchedule, SamplerConfig, StepGaussian};

use super::config::FinetuneConfig;
use super::model::PolicyModel;
use super::policy::StepBatch;
use super::ppo::{Replay, StepPolicy};
use super::step_gate::{gate_t_min, StepGated};

/// A policy's ε for the sampler ([`EpsModel`]) and for the PPO replay ([`StepPolicy`]).
trait StepPolicyEps: EpsModel + StepPolicy {}

impl<T: EpsModel + StepPolicy> StepPolicyEps for T {}

pub const LORA_FILE: &str = "lora.safetensors";
pub const LORA_CONFIG_FILE: &str = "lora.toml";
pub const MERGED_DIR: &str = "merged";

/// The UNet with its adapters and the frozen base of the KL penalty.
pub struct UnetPolicy {
    pub base_config: BaseConfig,
    /// The base weights (frozen unless `full_finetune`).
    pub vs: VarStore,
    pub unet: UNet,
    pub sched: NoiseSchedule,
    /// The adapters (LoRA runs).
    pub lora_vs: Option<VarStore>,
    /// A frozen copy of the base policy, for the KL penalty (`kl_coef > 0`) and the steps the
    /// adapters skip (`policy_steps > 0`).
    ref_model: Option<(VarStore, UNet)>,
    /// `policy_steps > 0`: the lowest timestep at which the adapters act.
    gate_t_min: Option<i64>,
    /// Whether the replay carries the KL penalty's base.
    kl: bool,
}

/// The class-conditional UNet replays a transition with the batched guided ε of
/// [`StepBatch::gaussian`].
impl StepPolicy for UNet {
    fn gaussian(&self, sb: &StepBatch, sampler: &SamplerConfig) -> StepGaussian {
        sb.gaussian(self, sampler)
    }
}

impl UnetPolicy {
    /// Adds LoRA adapters (initialised from `cfg.seed`) to a loaded base, or unfreezes it for
    /// `full_finetune`, and keeps a frozen copy of the base when `kl_coef > 0`.
    pub fn new(cfg: &FinetuneConfig, model: LoadedModel) -> Result<Self> {
        let gate_t_min = gate_t_min(&model.sched, cfg.steps, cfg.policy_steps)?;
        let ref_model = if cfg.kl_coef > 0.0 || gate_t_min.is_some() {
            Some(model.frozen_copy()?)
        } else {
            None
        };
        let LoadedModel {
            mut vs,
            mut unet,
            sched,
            config: base_config,
        } = model;
        let device = vs.device();
        let lora_vs = if cfg.full_finetune {
            vs.unfreeze();
            None
        } else {
            vs.freeze();
            let lvs = VarStore::new(device);
            let n = crate::rng::with_torch_seed(cfg.seed as i64, || {
                unet.add_lora(&lvs.root(), &cfg.lora_config())
            })?;
            if n == 0 {
                bail!("no layer matched the LoRA targets {:?}", cfg.lora_targets);
            }
            Some(lvs)
        };
        Ok(Self {
            base_config,
            vs,
            unet,
            sched,
            lora_vs,
            ref_model,
            gate_t_min,
            kl: cfg.kl_coef > 0.0,
        })
    }

    /// The ε of the run's policy: the adapted UNet, or with `policy_steps` the adapted UNet on
    /// the first steps and the frozen base after them.
    fn with_eps<R>(&self, f: impl FnOnce(&dyn StepPolicyEps) -> R) -> R {
        match (self.gate_t_min, &self.ref_model) {
            (Some(t_min), Some((_, base))) => f(&StepGated {
                policy: &self.unet,
                base,
                t_min,
            }),
            _ => f(&self.unet),
        }
    }

    fn image_shape(&self) -> [i64; 3] {
        let m = &self.base_config.model;
        [m.in_channels, m.image_size, m.image_size]
    }
}

/// The classes a run trains on: `cfg.classes` (sorted, without repeats), or all `k` classes of
/// the base model; a class `>= k` is an error.
pub fn run_classes(cfg: &FinetuneConfig, k: i64) -> Result<Vec<i64>> {
    let classes: Vec<i64> = if cfg.classes.is_empty() {
        (0..k).collect()
    } else {
        let mut c = cfg.classes.clone();
        c.sort_unstable();
        c.dedup();
        c
    };
    if let Some(c) = classes.iter().find(|&&c| c >= k) {
        bail!(
            "class {c} out of range: the base model has classes 0..={}",
            k - 1
        );
    }
    Ok(classes)
}

impl PolicyModel for UnetPolicy {
    fn condition_noun(&self) -> &'static str {
        "class"
    }

    fn device(&self) -> Device {
        self.vs.device()
    }

    fn conditions(&self, cfg: &FinetuneConfig) -> Result<Vec<i64>> {
        run_classes(cfg, self.base_config.model.num_classes)
    }

    fn sampler(&self, cfg: &FinetuneConfig) -> SamplerConfig {
        cfg.sampler_config()
    }

    fn sample(&self, sampler: &SamplerConfig, y: &Tensor, seed: u64) -> Result<Trajectory> {
        self.with_eps(|m| sample_trajectory(m, &self.sched, sampler, y, self.image_shape(), seed))
    }

    fn images(&self, traj: &Trajectory, _chunk: usize) -> Tensor {
        traj.images()
    }

    fn with_replay<R>(
        &self,
        _cfg: &FinetuneConfig,
        _training: bool,
        f: impl FnOnce(&Replay<'_>) -> R,
    ) -> R {
        let base = match (&self.ref_model, self.kl) {
            (Some((_, base)), true) => Some(base as &dyn StepPolicy),
            _ => None,
        };
        self.with_eps(|m| {
            f(&Replay {
                policy: m,
                base,
                sched: &self.sched,
            })
        })
    }

    fn trainable(&self) -> &VarStore {
        self.lora_vs.as_ref().unwrap_or(&self.vs)
    }

    fn trainable_mut(&mut self) -> &mut VarStore {
        self.lora_vs.as_mut().unwrap_or(&mut self.vs)
    }

    /// Writes `out/lora.safetensors` + `out/lora.toml` (LoRA runs) and `out/merged/`, a base
    /// checkpoint folder with the adapters folded in (loadable by `divrl sample`); returns
    /// `out/merged`. With `policy_steps` the adapters act on some steps only, which one set of
    /// weights cannot express: no `merged/` is written and the adapters' file is returned.
    fn export(&self, cfg: &FinetuneConfig) -> Result<PathBuf> {
        let out = &cfg.out;
        let mut merged: BTreeMap<String, Tensor> = self
            .vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.detach().copy()))
            .collect();
        if let Some(lvs) = &self.lora_vs {
            let lora: BTreeMap<String, Tensor> = lvs.variables().into_iter().collect();
            write_safetensors_atomic(
                &out.join(LORA_FILE),
                &lora
                    .iter()
                    .map(|(n, t)| (n.clone(), t.shallow_clone()))
                    .collect::<Vec<_>>(),
            )?;
            write_toml(&out.join(LORA_CONFIG_FILE), &cfg.lora_config())?;
            let scale = cfg.lora_config().scale();
            tch::no_grad(|| -> Result<()> {
                for (name, a) in &lora {
                    let Some(prefix) = name.strip_suffix(".lora_a") else {
                        continue;
                    };
                    let b = lora
                        .get(&format!("{prefix}.lora_b"))
                        .with_context(|| format!("LoRA {prefix} has no lora_b"))?;
                    let w = merged
                        .get_mut(&format!("{prefix}.weight"))
                        .with_context(|| format!("LoRA {prefix} has no base weight"))?;
                    *w = merged_weight(w, a, b, scale);
                }
                Ok(())
            })?;
        }
        if self.gate_t_min.is_some() {
            return Ok(out.join(LORA_FILE));
        }
        let dir = out.join(MERGED_DIR);
        std::fs::create_dir_all(&dir)?;
        write_safetensors_atomic(&dir.join(EMA_FILE), &merged.into_iter().collect::<Vec<_>>())?;
        write_toml(&dir.join(CONFIG_FILE), &self.base_config)?;
        Ok(dir)
    }
}
