//! Cost of one Stable Diffusion 1.5-sized policy step (random weights: the real SD 1.5 UNet
//! architecture, 860M parameters, LoRA rank 4 on every attention projection):
//! a guided sampling step (batch 2 = conditional + unconditional, no autograd) and a PPO step
//! (the same forward with autograd, then backward into the adapters). Prints JSON with seconds
//! and the process's peak resident memory.
//! With `ckpt` the PPO step uses gradient checkpointing (forward without autograd, stage-wise
//! recomputation in the backward). Run the two modes in separate processes to compare peak memory.
//!   cargo run --release -p divrl --example sd_step_cost -- [latent_side=32] [fp32|bf16] [cpu|cuda] [plain|ckpt]
use anyhow::Result;
use std::time::Instant;
use tch::{nn::VarStore, Kind, Tensor};

use divrl::models::sd::unet2d::{UNet2DCondition, UNet2DConditionConfig};
use divrl::models::sd::Precision;
use divrl::nn::lora::LoraConfig;

fn peak_rss_gib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0 / 1024.0)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let side: i64 = args.get(1).map_or(Ok(32), |s| s.parse())?;
    let precision: Precision = args.get(2).map_or(Ok(Precision::Fp32), |s| s.parse())?;
    let device = divrl::device::parse_device(args.get(3).map_or("cpu", String::as_str))?;
    precision.check(device)?;
    let ckpt = args.get(4).is_some_and(|s| s == "ckpt");
    let cfg: UNet2DConditionConfig = serde_json::from_value(serde_json::json!({
        "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
        "block_out_channels": [320, 640, 1280, 1280],
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                             "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                           "CrossAttnUpBlock2D"],
        "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32
    }))?;
    let t0 = Instant::now();
    let mut vs = VarStore::new(device);
    let mut unet = UNet2DCondition::new(&vs.root(), &cfg)?;
    if precision == Precision::Bf16 {
        vs.bfloat16();
    }
    vs.freeze();
    let lvs = VarStore::new(device);
    let n_lora = unet.add_lora(&lvs.root(), &LoraConfig::default())?;
    let n_params: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
    let n_lora_params: i64 = lvs.variables().values().map(|t| t.numel() as i64).sum();
    let build_s = t0.elapsed().as_secs_f64();
    let x = Tensor::randn([2, 4, side, side], (Kind::Float, device));
    let t = Tensor::from_slice(&[500i64, 500]).to_device(device);
    let ctx = Tensor::randn([2, 77, 768], (Kind::Float, device));
    let t0 = Instant::now();
    let _ = tch::no_grad(|| precision.run(|| unet.forward(&x, &t, &ctx)))
        .sum(Kind::Float)
        .double_value(&[]);
    let sample_s = t0.elapsed().as_secs_f64();
    let rss_before_ppo = peak_rss_gib();
    let t0 = Instant::now();
    if ckpt {
        let (out, ck) = precision.run(|| unet.forward_checkpointed(&x, &t, &ctx));
        let leaf = out.set_requires_grad(true);
        leaf.square().mean(Kind::Float).backward();
        precision.run(|| unet.backward_checkpointed(&ck, &leaf.grad()));
    } else {
        let out = precision.run(|| unet.forward(&x, &t, &ctx));
        out.square().mean(Kind::Float).backward();
    }
    let g: f64 = lvs
        .variables()
        .values()
        .map(|v| v.grad().abs().sum(Kind::Float).double_value(&[]))
        .sum();
    let ppo_s = t0.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "device": divrl::device::device_name(device),
            "precision": format!("{precision:?}"),
            "gradient_checkpointing": ckpt,
            "latent_side": side, "pixels": side * 8,
            "unet_params": n_params, "lora_layers": n_lora, "lora_params": n_lora_params,
            "build_s": build_s, "guided_sampling_step_s": sample_s,
            "ppo_step_fwd_bwd_s": ppo_s, "lora_grad_abs_sum": g,
            "peak_rss_gib_before_ppo": rss_before_ppo,
            "peak_rss_gib": peak_rss_gib(),
        })
    );
    Ok(())
}
