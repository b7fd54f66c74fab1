//! Stable Diffusion 1.x (and 2.x-style UNets) from a diffusers pipeline folder:
//!
//! ```text
//! <dir>/unet/config.json           + diffusion_pytorch_model.safetensors   (UNet2DConditionModel)
//! <dir>/vae/config.json            + diffusion_pytorch_model.safetensors   (AutoencoderKL; decoder used)
//! <dir>/text_encoder/config.json   + model.safetensors                     (CLIPTextModel)
//! <dir>/tokenizer/vocab.json       + merges.txt                            (CLIPTokenizer)
//! <dir>/scheduler/scheduler_config.json
//! ```
//! (`*.fp16.safetensors` variants are read when the plain file is absent; tensors are converted
//! to the model's dtype.) Module files: [`unet2d`], [`vae`], [`scheduler`], [`pipeline`] (the DDIM
//! policy with classifier-free guidance in latent space), [`lora_diffusers`] (adapters in the
//! peft/diffusers files); the text encoder is
//! [`crate::models::clip::ClipTextModel`].
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{nn, nn::VarStore, Device, Kind, Tensor};

use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::clip_tokenizer::ClipTokenizer;
use crate::nn::lora::LoraLinear;

pub mod lora_diffusers;
pub mod pipeline;
pub mod scheduler;
pub mod tiny;
pub mod unet2d;
pub mod vae;

use scheduler::{SchedulerConfig, SdScheduler};
use unet2d::{UNet2DCondition, UNet2DConditionConfig};
use vae::{AutoencoderKlConfig, VaeDecoder};

/// A config value that is one number or one per block (`attention_head_dim`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrList {
    Int(i64),
    List(Vec<i64>),
}

impl IntOrList {
    /// One value per block.
    pub fn expand(&self, n: usize, what: &str) -> Result<Vec<i64>> {
        match self {
            Self::Int(v) => Ok(vec![*v; n]),
            Self::List(v) if v.len() == n => Ok(v.clone()),
            Self::List(v) => bail!("{what} has {} entries, the model has {n} blocks", v.len()),
        }
    }
}

/// A linear layer with its optional adapter, computing the base in the weights' dtype and the
/// adapter in the adapter's dtype (f32 adapters on bf16 base weights).
pub fn lora_forward(l: &LoraLinear, x: &Tensor) -> Tensor {
    let y = x.linear(&l.ws, l.bs.as_ref());
    match &l.lora {
        None => y,
        Some(a) => {
            let d = x
                .to_kind(a.a.kind())
                .linear::<Tensor>(&a.a, None)
                .linear::<Tensor>(&a.b, None)
                * a.scale;
            let k = y.kind();
            y + d.to_kind(k)
        }
    }
}

/// `root / "a" / "b" / …` for a dotted path `a.b.…`.
pub fn sub_path<'a>(root: &nn::Path<'a>, dotted: &str) -> nn::Path<'a> {
    let mut parts = dotted.split('.');
    let mut p = root / parts.next().unwrap_or_default();
    for c in parts {
        p = &p / c;
    }
    p
}

/// Numeric precision of the frozen networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    Fp32,
    /// Frozen UNet, VAE and text-encoder weights stored and run in bfloat16 (half the memory);
    /// LoRA adapters, their gradients and the optimizer stay f32 (as diffusers' LoRA training
    /// scripts do with `weight_dtype`). Works on CPU and CUDA.
    Bf16,
    /// f16 autocast of the UNet and VAE forwards (libtorch's CUDA autocast; weights stay f32).
    /// CUDA only.
    Fp16,
}

impl std::str::FromStr for Precision {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "f32" | "float32" => Ok(Self::Fp32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "fp16" | "f16" | "float16" => Ok(Self::Fp16),
            _ => bail!("unknown precision {s:?}: expected fp32, bf16 or fp16"),
        }
    }
}

impl Precision {
    /// Checks the precision is available on `device`.
    pub fn check(self, device: Device) -> Result<()> {
        if self == Self::Fp16 && !device.is_cuda() {
            bail!("precision fp16 is libtorch's CUDA autocast and needs --device cuda (use fp32 or bf16 on the CPU)");
        }
        Ok(())
    }

    /// Runs `f` under f16 autocast for `Fp16`, plainly otherwise.
    pub fn run<T>(self, f: impl FnOnce() -> T) -> T {
        match self {
            Self::Fp16 => tch::autocast(true, f),
            _ => f(),
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: bad config", path.display()))
}

/// The first of `names` that exists in `dir`.
fn weights_file(dir: &Path, names: &[&str]) -> Result<PathBuf> {
    for n in names {
        let p = dir.join(n);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!(
        "{}: no weights file (expected {})",
        dir.display(),
        names.join(" or ")
    )
}

/// Old diffusers VAE attention names (`query`, `key`, `value`, `proj_attn`) → current ones.
fn vae_rename(name: &str) -> String {
    for (old, new) in [
        (".attentions.0.query.", ".attentions.0.to_q."),
        (".attentions.0.key.", ".attentions.0.to_k."),
        (".attentions.0.value.", ".attentions.0.to_v."),
        (".attentions.0.proj_attn.", ".attentions.0.to_out.0."),
    ] {
        if name.contains(old) {
            return name.replace(old, new);
        }
    }
    name.to_string()
}

/// Copies the tensors of a safetensors file into `vs` (names mapped by `rename`; tensors the
/// model has no variable for are ignored; a missing or mis-shaped one is an error).
pub fn load_weights(vs: &mut VarStore, path: &Path, rename: &dyn Fn(&str) -> String) -> Result<()> {
    let tensors: HashMap<String, Tensor> = crate::config::read_safetensors(path)?
        .into_iter()
        .map(|(n, t)| (rename(&n), t))
        .collect();
    let vars = vs.variables();
    let mut missing: Vec<&String> = vars.keys().filter(|n| !tensors.contains_key(*n)).collect();
    if !missing.is_empty() {
        missing.sort();
        bail!(
            "{}: {} model tensors missing (first: {})",
            path.display(),
            missing.len(),
            missing[0]
        );
    }
    tch::no_grad(|| -> Result<()> {
        for (name, mut var) in vars {
            let mut t = tensors[&name].shallow_clone();
            // 1×1-conv attention projections of old VAE files.
            if t.dim() == 4 && var.dim() == 2 && t.size()[2..] == [1, 1] {
                t = t.flatten(1, -1);
            }
            if t.size() != var.size() {
                bail!(
                    "{}: tensor {name} has shape {:?}, the config implies {:?}",
                    path.display(),
                    t.size(),
                    var.size()
                );
            }
            var.copy_(&t.to_device(var.device()).to_kind(var.kind()));
        }
        Ok(())
    })
}

/// A loaded Stable Diffusion pipeline (frozen; LoRA adapters are added by the caller into their
/// own [`VarStore`]).
pub struct StableDiffusion {
    pub dir: PathBuf,
    pub unet_vs: VarStore,
    pub unet: UNet2DCondition,
    pub vae_vs: VarStore,
    pub vae: VaeDecoder,
    pub text_vs: VarStore,
    pub text: ClipTextModel,
    pub tokenizer: ClipTokenizer,
    pub scheduler: SdScheduler,
    pub precision: Precision,
    pub device: Device,
}

impl StableDiffusion {
    /// Loads a diffusers pipeline folder onto `device`; every network frozen.
    pub fn load(dir: &Path, device: Device, precision: Precision) -> Result<Self> {
        precision.check(device)?;
        if !dir.is_dir() {
            bail!("Stable Diffusion folder {} does not exist", dir.display());
        }
        for sub in ["unet", "vae", "text_encoder", "tokenizer", "scheduler"] {
            if !dir.join(sub).is_dir() {
                bail!(
                    "{}: no {sub}/ folder (expected a diffusers pipeline: unet/, vae/, text_encoder/, tokenizer/, scheduler/)",
                    dir.display()
                );
            }
        }
        let cfg_of = |sub: &str, file: &str| dir.join(sub).join(file);

        let ucfg_path = cfg_of("unet", "config.json");
        let ucfg: UNet2DConditionConfig = read_json(&ucfg_path)?;
        ucfg.validate()
            .with_context(|| format!("{}", ucfg_path.display()))?;
        let mut unet_vs = VarStore::new(device);
        let unet = crate::rng::with_torch_rng(|| UNet2DCondition::new(&unet_vs.root(), &ucfg))?;
        let st = [
            "diffusion_pytorch_model.safetensors",
            "diffusion_pytorch_model.fp16.safetensors",
        ];
        load_weights(&mut unet_vs, &weights_file(&dir.join("unet"), &st)?, &|n| {
            n.to_string()
        })?;

        let vcfg_path = cfg_of("vae", "config.json");
        let vcfg: AutoencoderKlConfig = read_json(&vcfg_path)?;
        vcfg.validate()
            .with_context(|| format!("{}", vcfg_path.display()))?;
        let mut vae_vs = VarStore::new(device);
        let vae = crate::rng::with_torch_rng(|| VaeDecoder::new(&vae_vs.root(), &vcfg))?;
        load_weights(
            &mut vae_vs,
            &weights_file(&dir.join("vae"), &st)?,
            &vae_rename,
        )?;
        if vcfg.latent_channels != ucfg.in_channels || ucfg.out_channels != ucfg.in_channels {
            bail!(
                "{}: the UNet has {}→{} channels, the VAE {} latent channels",
                dir.display(),
                ucfg.in_channels,
                ucfg.out_channels,
                vcfg.latent_channels
            );
        }

        let tcfg_path = cfg_of("text_encoder", "config.json");
        let tcfg: ClipTextConfig = read_json(&tcfg_path)?;
        let mut text_vs = VarStore::new(device);
        let text = crate::rng::with_torch_rng(|| ClipTextModel::new(&text_vs.root(), &tcfg))
            .with_context(|| format!("{}", tcfg_path.display()))?;
        load_weights(
            &mut text_vs,
            &weights_file(
                &dir.join("text_encoder"),
                &["model.safetensors", "model.fp16.safetensors"],
            )?,
            &|n| n.to_string(),
        )?;
        if tcfg.hidden_size != ucfg.cross_attention_dim {
            bail!(
                "{}: text encoder hidden_size {} differs from the UNet's cross_attention_dim {}",
                dir.display(),
                tcfg.hidden_size,
                ucfg.cross_attention_dim
            );
        }
        let tokenizer = ClipTokenizer::from_vocab_merges(
            &cfg_of("tokenizer", "vocab.json"),
            &cfg_of("tokenizer", "merges.txt"),
            tcfg.max_position_embeddings as usize,
        )?;
        let scfg: SchedulerConfig = read_json(&cfg_of("scheduler", "scheduler_config.json"))?;
        let scheduler = SdScheduler::new(&scfg).with_context(|| {
            format!("{}", cfg_of("scheduler", "scheduler_config.json").display())
        })?;

        for vs in [&mut unet_vs, &mut vae_vs, &mut text_vs] {
            if precision == Precision::Bf16 {
                vs.bfloat16();
            }
            vs.freeze();
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            unet_vs,
            unet,
            vae_vs,
            vae,
            text_vs,
            text,
            tokenizer,
            scheduler,
            precision,
            device,
        })
    }

    /// `[P, L, cross_attention_dim]` text states of prompts (f32, no gradient).
    pub fn encode_prompts(&self, prompts: &[String]) -> Result<Tensor> {
        let ids = self.tokenizer.encode_batch(prompts)?.to_device(self.device);
        let h = tch::no_grad(|| self.text.last_hidden_state(&ids))?;
        Ok(h.to_kind(Kind::Float))
    }

    /// Latent shape `[C, H, W]` for images of `resolution` pixels (0 = the UNet's
    /// `sample_size` latents).
    pub fn latent_shape(&self, resolution: i64) -> Result<[i64; 3]> {
        let c = self.unet.cfg.in_channels;
        let scale = self.vae.scale();
        let side = if resolution == 0 {
            self.unet.cfg.sample_size
        } else {
            if resolution < 1 || resolution % scale != 0 {
                bail!("resolution {resolution} must be a positive multiple of the VAE's {scale}");
            }
            resolution / scale
        };
        let down = 1i64 << (self.unet.cfg.block_out_channels.len() - 1);
        if side < 1 || side % down != 0 {
            bail!("latent size {side} must be a positive multiple of {down} (the UNet's downsampling)");
        }
        Ok([c, side, side])
    }

    /// Pixels in `[-1, 1]` of latents (no gradient).
    pub fn decode(&self, latents: &Tensor) -> Tensor {
        tch::no_grad(|| {
            self.precision
                .run(|| self.vae.decode(&latents.to_device(self.device)))
                .clamp(-1.0, 1.0)
        })
    }
}
