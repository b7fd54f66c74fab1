//! A finished fine-tuning run's LoRA adapters on its base checkpoint, as an ε model a sampler
//! draws from (`divrl sample --adapters RUN`). A run with `policy_steps` adapts only the first
//! sampling steps, which no merged checkpoint can express: here the adapters act at the noise
//! levels of the run's first `policy_steps` steps (timesteps `>=` the run's `policy_steps`-th),
//! the frozen base below them, exactly as during training ([`super::step_gate`]).
use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::{nn::VarStore, Device, Tensor};

use crate::checkpoint::{load_model, load_vars, LoadedModel, CONFIG_FILE};
use crate::config::read_toml;
use crate::models::unet::UNet;
use crate::nn::lora::LoraConfig;
use crate::schedule::EpsModel;

use super::config::FinetuneConfig;
use super::step_gate::{gate_t_min, StepGated};
use super::unet_policy::{LORA_CONFIG_FILE, LORA_FILE};

/// A base UNet with a run's adapters, and the frozen base where the adapters stop acting.
pub struct AdaptedModel {
    /// The base with the adapters added (its `sched` and `config` are the base's).
    pub model: LoadedModel,
    _adapters: VarStore,
    /// With `policy_steps`: the frozen base and the lowest timestep the adapters act at.
    gate: Option<(VarStore, UNet, i64)>,
    /// The run's `policy_steps` (0 = the adapters act at every step).
    pub policy_steps: usize,
}

impl AdaptedModel {
    /// The base checkpoint `base` (EMA weights unless `ema` is false) with the adapters of the
    /// fine-tuning run folder `run` (`lora.safetensors`, `lora.toml`, `config.toml`).
    pub fn load(base: &Path, run: &Path, device: Device, ema: bool) -> Result<Self> {
        let what = |f: &str| format!("--adapters {}: {f}", run.display());
        if !run.join(LORA_FILE).is_file() {
            let merged = run.join(super::unet_policy::MERGED_DIR);
            if merged.join("config.toml").is_file() {
                bail!(
                    "{}: no {LORA_FILE}, it trained every weight; sample its merged checkpoint with --checkpoint {}",
                    what("a full fine-tuning run"),
                    merged.display()
                );
            }
            bail!(
                "{}: no {LORA_FILE} (a finished LoRA fine-tuning run folder holds it)",
                what("not a fine-tuning run")
            );
        }
        let lora: LoraConfig =
            read_toml(&run.join(LORA_CONFIG_FILE)).with_context(|| what(LORA_CONFIG_FILE))?;
        let cfg = FinetuneConfig::read_toml_for(&run.join(CONFIG_FILE), None)
            .with_context(|| what(CONFIG_FILE))?;
        if cfg.model != "unet" {
            bail!(
                "{}: a {} run (its adapters load into diffusers from lora/)",
                what("not a class-conditional UNet run"),
                cfg.model
            );
        }
        let mut model = load_model(base, device, ema)?;
        let gate = match gate_t_min(&model.sched, cfg.steps, cfg.policy_steps)? {
            None => None,
            Some(t_min) => {
                // The frozen base: a copy of the weights just loaded, before the adapters.
                let (fvs, frozen) = model.frozen_copy()?;
                Some((fvs, frozen, t_min))
            }
        };
        let mut adapters = VarStore::new(device);
        crate::rng::with_torch_rng(|| model.unet.add_lora(&adapters.root(), &lora))?;
        load_vars(&mut adapters, &run.join(LORA_FILE))
            .with_context(|| format!("adapters of {} on base {}", run.display(), base.display()))?;
        Ok(Self {
            model,
            _adapters: adapters,
            gate,
            policy_steps: cfg.policy_steps,
        })
    }

    /// The lowest timestep at which the adapters act (`None`: every timestep).
    pub fn gate_t_min(&self) -> Option<i64> {
        self.gate.as_ref().map(|g| g.2)
    }

    fn with_eps<R>(&self, f: impl FnOnce(&dyn EpsModel) -> R) -> R {
        match &self.gate {
            Some((_, base, t_min)) => f(&StepGated {
                policy: &self.model.unet,
                base,
                t_min: *t_min,
            }),
            None => f(&self.model.unet),
        }
    }
}

impl EpsModel for AdaptedModel {
    fn eps(&self, x: &Tensor, t: &Tensor, class: &Tensor) -> Tensor {
        self.with_eps(|m| m.eps(x, t, class))
    }
    fn null_class(&self) -> i64 {
        self.model.unet.null_class()
    }
    fn has_cond_vector(&self) -> bool {
        self.model.unet.has_cond_vector()
    }
    fn eps_mapped_cond(
        &self,
        x: &Tensor,
        t: &Tensor,
        class: &Tensor,
        map: &dyn Fn(&Tensor) -> Tensor,
    ) -> Result<Tensor> {
        self.with_eps(|m| m.eps_mapped_cond(x, t, class, map))
    }
}
