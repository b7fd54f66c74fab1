//! `divrl sd-sample`: a PNG grid from a Stable Diffusion diffusers folder, optionally with a LoRA
//! (peft/diffusers layout, e.g. the `lora/` folder of a `finetune --model sd` run). One grid row
//! per prompt; deterministic for a seed.

use std::path::PathBuf;

use anyhow::Context;
use divrl::models::sd::pipeline::SdPolicy;
use divrl::models::sd::{Precision, StableDiffusion};
use divrl::tch::{nn::VarStore, Tensor};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Diffusers folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/)
    #[arg(long)]
    pub base: PathBuf,
    /// LoRA folder (pytorch_lora_weights.safetensors [+ adapter_config.json]) or file
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// A prompt (repeat the flag for several; one grid row each)
    #[arg(long, required = true)]
    pub prompt: Vec<String>,
    /// Images per prompt
    #[arg(long, default_value_t = 4)]
    pub n: usize,
    /// DDIM steps
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// DDIM stochasticity (> 0: the policy's sampler)
    #[arg(long, default_value_t = 1.0)]
    pub eta: f64,
    /// Classifier-free guidance scale
    #[arg(long, default_value_t = 5.0)]
    pub guidance: f64,
    /// Image side in pixels (0 = the UNet's sample_size latents)
    #[arg(long, default_value_t = 0)]
    pub resolution: i64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// fp32, bf16 or fp16 (CUDA autocast)
    #[arg(long, default_value = "fp32")]
    pub precision: Precision,
    /// Output PNG grid
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub compute: super::ComputeOpts,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = args.compute.device()?;
    if args.n == 0 {
        anyhow::bail!("--n must be >= 1");
    }
    let mut sd = StableDiffusion::load(&args.base, device, args.precision)
        .with_context(|| format!("loading Stable Diffusion folder {}", args.base.display()))?;
    let lora_vs = VarStore::new(device);
    if let Some(l) = &args.lora {
        let layers = divrl::models::sd::lora_diffusers::read_lora(l)?;
        let n =
            divrl::models::sd::lora_diffusers::apply_lora(&mut sd.unet, &lora_vs.root(), &layers)?;
        eprintln!("applied {n} LoRA layers from {}", l.display());
    }
    let policy = SdPolicy::new(&sd, &args.prompt)?;
    let cfg = SdPolicy::sampler(args.steps, args.eta, args.guidance);
    let labels: Vec<i64> = (0..args.prompt.len() as i64)
        .flat_map(|p| std::iter::repeat_n(p, args.n))
        .collect();
    let traj = policy.sample(
        &cfg,
        &Tensor::from_slice(&labels).to_device(device),
        args.resolution,
        args.seed,
    )?;
    let images = policy.images(&traj);
    divrl::sample::save_grid(&images, args.n, &args.out)?;
    eprintln!(
        "{} images ({} prompts) -> {}",
        labels.len(),
        args.prompt.len(),
        args.out.display()
    );
    Ok(())
}
