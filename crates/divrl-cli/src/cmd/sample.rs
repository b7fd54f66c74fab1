//! `divrl sample`: a PNG grid from a base checkpoint (deterministic for a seed).

use std::path::PathBuf;

use anyhow::bail;
use divrl::schedule::{LogProbReduction, SamplerConfig, SamplerKind};
use divrl::tch::{Kind, Tensor};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint folder (config.toml + ema.safetensors), e.g. models/fashion-mnist-base
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Class indices, comma-separated, or "all" (one grid row per class)
    #[arg(long, default_value = "all")]
    pub class: String,
    /// Images per class
    #[arg(long, default_value_t = 8)]
    pub n: usize,
    /// Classifier-free guidance scale (1 = conditional model as is, 0 = unconditional)
    #[arg(long, default_value_t = 1.0)]
    pub guidance: f64,
    /// Denoising steps
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// ddim or ddpm
    #[arg(long, default_value = "ddim")]
    pub sampler: SamplerKind,
    /// DDIM stochasticity (> 0)
    #[arg(long, default_value_t = 1.0)]
    pub eta: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output PNG grid
    #[arg(long)]
    pub out: PathBuf,
    /// Images per row (default: --n when several classes, else about √n)
    #[arg(long)]
    pub nrow: Option<usize>,
    /// Also store the trajectory (latents, timesteps, log-probs, classes) as safetensors
    #[arg(long)]
    pub trajectory: Option<PathBuf>,
    /// Use the raw weights instead of the EMA weights
    #[arg(long)]
    pub raw_weights: bool,
    #[command(flatten)]
    pub compute: super::ComputeOpts,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = args.compute.device()?;
    if args.n == 0 || args.n > 10_000 {
        bail!("--n must be in 1..=10000, got {}", args.n);
    }
    if args.nrow == Some(0) {
        bail!("--nrow must be at least 1 (images per grid row), got 0");
    }
    if args
        .out
        .extension()
        .map(|e| !e.eq_ignore_ascii_case("png"))
        .unwrap_or(true)
    {
        bail!("--out must be a .png file, got {}", args.out.display());
    }
    let sampler = SamplerConfig {
        kind: args.sampler,
        steps: args.steps,
        eta: args.eta,
        guidance: args.guidance,
        clip_x0: true,
        reduction: LogProbReduction::Mean,
    };
    sampler.validate()?;
    let model = divrl::checkpoint::load_model(&args.checkpoint, device, !args.raw_weights)?;
    let k = model.config.model.num_classes;
    let classes: Vec<i64> = if args.class.trim() == "all" {
        (0..k).collect()
    } else {
        args.class
            .split(',')
            .map(|s| {
                let c: i64 = s.trim().parse().map_err(|_| {
                    anyhow::anyhow!("bad class {s:?}: expected an integer or \"all\"")
                })?;
                if c < 0 || c >= k {
                    bail!(
                        "class {c} out of range: the model has classes 0..={}",
                        k - 1
                    );
                }
                Ok(c)
            })
            .collect::<anyhow::Result<_>>()?
    };
    let labels: Vec<i64> = classes
        .iter()
        .flat_map(|&c| std::iter::repeat_n(c, args.n))
        .collect();
    let y = Tensor::from_slice(&labels).to_device(device);
    let m = &model.config.model;
    let t0 = std::time::Instant::now();
    let traj = divrl::sample::sample_trajectory(
        &model.unet,
        &model.sched,
        &sampler,
        &y,
        [m.in_channels, m.image_size, m.image_size],
        args.seed,
    )?;
    let images = traj.images().to_kind(Kind::Float);
    let secs = t0.elapsed().as_secs_f64();
    let nrow = args.nrow.unwrap_or(if classes.len() > 1 {
        args.n
    } else {
        (args.n as f64).sqrt().ceil() as usize
    });
    divrl::sample::save_grid(&images, nrow, &args.out)?;
    if let Some(p) = &args.trajectory {
        traj.save(p)?;
    }
    eprintln!(
        "{} images, {} {} steps, guidance {}, in {:.2} s ({:.1} img/s) on {} -> {}",
        labels.len(),
        args.steps,
        format!("{:?}", args.sampler).to_lowercase(),
        args.guidance,
        secs,
        labels.len() as f64 / secs.max(1e-9),
        divrl::device::device_name(device),
        args.out.display()
    );
    Ok(())
}
