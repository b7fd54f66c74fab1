//! Base-model checkpoints: a folder with `config.toml`, `ema.safetensors` (the weights used for
//! sampling), and, for resuming, `weights.safetensors`, `optim.safetensors` and `state.json`.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use tch::{nn::VarStore, Device};

use crate::config::{read_safetensors, read_toml};
use crate::models::unet::{UNet, UNetConfig};
use crate::schedule::{NoiseSchedule, ScheduleConfig};
use crate::train::TrainConfig;

/// Everything `config.toml` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BaseConfig {
    #[serde(default)]
    pub model: UNetConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub train: TrainConfig,
}

impl BaseConfig {
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        NoiseSchedule::new(&self.schedule)?;
        self.train.validate()
    }
}

pub const CONFIG_FILE: &str = "config.toml";
pub const EMA_FILE: &str = "ema.safetensors";
pub const WEIGHTS_FILE: &str = "weights.safetensors";
pub const OPTIM_FILE: &str = "optim.safetensors";
pub const STATE_FILE: &str = "state.json";

/// Copies a safetensors file into a VarStore, checking names and shapes (no panics on a
/// mismatched or corrupt file).
pub fn load_vars(vs: &mut VarStore, path: &Path) -> Result<()> {
    let tensors: HashMap<String, tch::Tensor> = read_safetensors(path)?.into_iter().collect();
    let vars = vs.variables();
    let mut missing = Vec::new();
    for (name, var) in &vars {
        match tensors.get(name) {
            None => missing.push(name.clone()),
            Some(t) if t.size() != var.size() => bail!(
                "{}: tensor {name} has shape {:?}, the model expects {:?} (checkpoint made for another config?)",
                path.display(),
                t.size(),
                var.size()
            ),
            Some(_) => {}
        }
    }
    if !missing.is_empty() {
        missing.sort();
        bail!(
            "{}: {} model tensors missing (first: {})",
            path.display(),
            missing.len(),
            missing[0]
        );
    }
    tch::no_grad(|| {
        for (name, mut var) in vars {
            let t = &tensors[&name];
            var.copy_(&t.to_device(var.device()).to_kind(var.kind()));
        }
    });
    Ok(())
}

/// A UNet ready for sampling, loaded from a checkpoint folder.
pub struct LoadedModel {
    pub vs: VarStore,
    pub unet: UNet,
    pub sched: NoiseSchedule,
    pub config: BaseConfig,
}

/// Loads `config.toml` and the EMA weights (or the raw weights with `ema = false`, or when there
/// is no EMA file).
pub fn load_model(dir: &Path, device: Device, ema: bool) -> Result<LoadedModel> {
    if !dir.is_dir() {
        bail!("checkpoint folder {} does not exist", dir.display());
    }
    let config: BaseConfig =
        read_toml(&dir.join(CONFIG_FILE)).context("loading checkpoint config")?;
    config
        .validate()
        .with_context(|| format!("{}", dir.join(CONFIG_FILE).display()))?;
    let mut vs = VarStore::new(device);
    let unet = UNet::new(&vs.root(), &config.model)?;
    let file = if ema && dir.join(EMA_FILE).exists() {
        EMA_FILE
    } else {
        WEIGHTS_FILE
    };
    load_vars(&mut vs, &dir.join(file))?;
    vs.freeze();
    let sched = NoiseSchedule::new(&config.schedule)?;
    Ok(LoadedModel {
        vs,
        unet,
        sched,
        config,
    })
}
