//! A tiny random Stable Diffusion pipeline folder in the diffusers layout (same architecture and
//! key names as SD 1.x, a few channels), for tests and smoke runs of the CLI. Its images are
//! noise-like; it exercises every code path of loading, sampling, decoding and training.
use anyhow::Result;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{nn::VarStore, Device};

use super::unet2d::{UNet2DCondition, UNet2DConditionConfig};
use super::vae::{AutoencoderKlConfig, VaeDecoder};
use crate::config::{write_atomic, write_safetensors_atomic};
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::clip_tokenizer::{END_TOKEN, START_TOKEN};

/// The tiny UNet's `config.json` (SD 1.x block structure, 8/16 channels, 8×8 latents).
pub fn tiny_unet_config() -> serde_json::Value {
    json!({
        "_class_name": "UNet2DConditionModel",
        "sample_size": 8, "in_channels": 4, "out_channels": 4,
        "block_out_channels": [8, 16], "layers_per_block": 1,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "cross_attention_dim": 16, "attention_head_dim": 2, "norm_num_groups": 4,
        "flip_sin_to_cos": true, "freq_shift": 0, "use_linear_projection": false
    })
}

/// The tiny VAE's `config.json` (two up blocks: 8×8 latents → 16×16 pixels).
pub fn tiny_vae_config() -> serde_json::Value {
    json!({
        "_class_name": "AutoencoderKL",
        "in_channels": 3, "out_channels": 3, "block_out_channels": [8, 8], "layers_per_block": 1,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
        "latent_channels": 4, "norm_num_groups": 4, "sample_size": 16, "scaling_factor": 0.18215
    })
}

/// Stable Diffusion 1.x's `scheduler_config.json` (DDIM, scaled-linear betas).
pub fn sd15_scheduler_config() -> serde_json::Value {
    json!({
        "_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
        "beta_end": 0.012, "beta_schedule": "scaled_linear", "prediction_type": "epsilon",
        "steps_offset": 1, "set_alpha_to_one": false, "clip_sample": false
    })
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    write_atomic(path, &serde_json::to_vec_pretty(v)?)
}

fn write_vars(path: &Path, vs: &VarStore) -> Result<()> {
    let vars: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
    write_safetensors_atomic(path, &vars)
}

/// Writes the tiny pipeline into `dir` (created); weights drawn with libtorch's generator
/// seeded by `seed`.
pub fn write_tiny_pipeline(dir: &Path, seed: i64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for sub in ["unet", "vae", "text_encoder", "tokenizer", "scheduler"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    write_json(
        &dir.join("model_index.json"),
        &json!({
            "_class_name": "StableDiffusionPipeline",
            "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDIMScheduler"]
        }),
    )?;
    // Byte-level vocabulary without merges: every character is a token.
    let table = {
        let printable = |b: u32| {
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b)
        };
        let mut n = 0u32;
        (0..256u32)
            .map(|b| {
                if printable(b) {
                    char::from_u32(b).unwrap_or('?')
                } else {
                    n += 1;
                    char::from_u32(255 + n).unwrap_or('?')
                }
            })
            .collect::<Vec<char>>()
    };
    let mut vocab = BTreeMap::new();
    for c in &table {
        let id = vocab.len() as i64;
        vocab.insert(c.to_string(), id);
    }
    for c in &table {
        let id = vocab.len() as i64;
        vocab.insert(format!("{c}</w>"), id);
    }
    let n = vocab.len() as i64;
    vocab.insert(START_TOKEN.to_string(), n);
    vocab.insert(END_TOKEN.to_string(), n + 1);
    let vocab_size = n + 2;
    write_json(&dir.join("tokenizer/vocab.json"), &json!(vocab))?;
    write_atomic(&dir.join("tokenizer/merges.txt"), b"#version: 0.2\n")?;
    write_json(
        &dir.join("tokenizer/tokenizer_config.json"),
        &json!({"model_max_length": 16, "pad_token": END_TOKEN}),
    )?;

    let text_cfg = json!({
        "architectures": ["CLIPTextModel"], "vocab_size": vocab_size, "hidden_size": 16,
        "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "max_position_embeddings": 16, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5
    });
    write_json(&dir.join("text_encoder/config.json"), &text_cfg)?;
    write_json(&dir.join("unet/config.json"), &tiny_unet_config())?;
    write_json(&dir.join("vae/config.json"), &tiny_vae_config())?;
    write_json(
        &dir.join("scheduler/scheduler_config.json"),
        &sd15_scheduler_config(),
    )?;

    crate::rng::with_torch_seed(seed, || -> Result<()> {
        let tc: ClipTextConfig = serde_json::from_value(text_cfg.clone())?;
        let vs = VarStore::new(Device::Cpu);
        ClipTextModel::new(&vs.root(), &tc)?;
        write_vars(&dir.join("text_encoder/model.safetensors"), &vs)?;

        let uc: UNet2DConditionConfig = serde_json::from_value(tiny_unet_config())?;
        let vs = VarStore::new(Device::Cpu);
        UNet2DCondition::new(&vs.root(), &uc)?;
        write_vars(&dir.join("unet/diffusion_pytorch_model.safetensors"), &vs)?;

        let vc: AutoencoderKlConfig = serde_json::from_value(tiny_vae_config())?;
        let vs = VarStore::new(Device::Cpu);
        VaeDecoder::new(&vs.root(), &vc)?;
        write_vars(&dir.join("vae/diffusion_pytorch_model.safetensors"), &vs)?;
        Ok(())
    })
}
