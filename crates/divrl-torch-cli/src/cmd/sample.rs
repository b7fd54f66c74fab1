//! `divrl sample`: a PNG grid from a base checkpoint (deterministic for a seed), optionally
//! every image as a PNG file or in one `.npy`, with guidance in a noise interval and/or CADS.

use std::path::PathBuf;

use anyhow::bail;
use divrl::export::Images8;
use divrl::schedule::{CadsConfig, GuidanceInterval, LogProbReduction, SamplerConfig, SamplerKind};
use divrl::tch::{Kind, Tensor};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint folder (config.toml + ema.safetensors), e.g. models/fashion-mnist-base
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// A finished `divrl finetune` run folder whose LoRA adapters (lora.safetensors, lora.toml)
    /// go onto --checkpoint (the run's base). A run with policy_steps adapts only the noise
    /// levels of its first policy_steps steps, as in training (such runs write no merged/)
    #[arg(long, value_name = "RUN")]
    pub adapters: Option<PathBuf>,
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
    #[command(flatten)]
    pub diversity: DiversityOpts,
    /// Output PNG grid (at least one of --out, --out-dir, --npy)
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write every image as its own lossless 8-bit PNG, DIR/{index:05}-class{c}.png
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Write every image into one uint8 .npy ([N, H, W], or [N, H, W, 3] for colour; what
    /// `divrl eval --generated` reads) and the class labels as int64 FILE.labels.npy (stem + .labels.npy)
    #[arg(long, value_name = "FILE")]
    pub npy: Option<PathBuf>,
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

/// The training-free diversity options of the sampler: guidance in a limited noise interval
/// and CADS.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct DiversityOpts {
    /// Guidance interval (Kynkäänniemi et al. 2024): apply --guidance only at steps whose noise
    /// level σ_t = √((1−ᾱ_t)/ᾱ_t) (EDM's σ, so the paper's values carry over) has
    /// LO < σ_t ≤ HI; other steps use w = 1 (conditional ε, one forward pass). E.g. 0.28,5.42.
    /// The linear 1000-step schedule spans σ ≈ 0.01 (t = 0) to ≈ 157 (t = 999)
    #[arg(long, value_name = "LO,HI", allow_hyphen_values = true)]
    pub guidance_interval: Option<String>,
    /// CADS (Sadat et al. 2024): Gaussian noise on the class embedding, annealed away over the
    /// early steps, with the paper's defaults (tau1 0.6, tau2 0.9, noise 0.25, psi 1). Any
    /// --cads-* flag also turns CADS on
    #[arg(long)]
    pub cads: bool,
    /// CADS: diffusion time t ∈ [0, 1] (t = timestep/(T−1), 1 = pure noise) up to which the
    /// condition is clean (γ = 1) [default: 0.6]
    #[arg(long, value_name = "T", allow_negative_numbers = true)]
    pub cads_tau1: Option<f64>,
    /// CADS: diffusion time t ∈ [0, 1] from which the condition is pure noise (γ = 0); γ falls
    /// linearly between tau1 and tau2 [default: 0.9]
    #[arg(long, value_name = "T", allow_negative_numbers = true)]
    pub cads_tau2: Option<f64>,
    /// CADS: scale s ≥ 0 of the noise: ŷ = √γ·y + s·√(1−γ)·n, n ~ N(0, I) [default: 0.25]
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub cads_noise: Option<f64>,
    /// CADS: ψ ∈ [0, 1], how much of ŷ is rescaled to y's mean and standard deviation (0 = no
    /// rescaling) [default: 1]
    #[arg(long, value_name = "PSI", allow_negative_numbers = true)]
    pub cads_psi: Option<f64>,
}

impl DiversityOpts {
    pub fn interval(&self) -> anyhow::Result<Option<GuidanceInterval>> {
        self.guidance_interval
            .as_deref()
            .map(str::parse)
            .transpose()
    }

    pub fn cads(&self) -> anyhow::Result<Option<CadsConfig>> {
        let any = self.cads_tau1.is_some()
            || self.cads_tau2.is_some()
            || self.cads_noise.is_some()
            || self.cads_psi.is_some();
        if !(self.cads || any) {
            return Ok(None);
        }
        let d = CadsConfig::default();
        let c = CadsConfig {
            tau1: self.cads_tau1.unwrap_or(d.tau1),
            tau2: self.cads_tau2.unwrap_or(d.tau2),
            noise_scale: self.cads_noise.unwrap_or(d.noise_scale),
            psi: self.cads_psi.unwrap_or(d.psi),
        };
        c.validate()?;
        Ok(Some(c))
    }

    /// A short description for the summary line ("" when both are off).
    pub fn describe(iv: &Option<GuidanceInterval>, cads: &Option<CadsConfig>) -> String {
        let mut s = String::new();
        if let Some(iv) = iv {
            s += &format!(" in sigma ({}, {}]", iv.sigma_lo, iv.sigma_hi);
        }
        if let Some(c) = cads {
            s += &format!(
                ", CADS tau1 {} tau2 {} s {} psi {}",
                c.tau1, c.tau2, c.noise_scale, c.psi
            );
        }
        s
    }
}

/// What `divrl sample` draws from: a base checkpoint, or one with a run's adapters (one value
/// per process, so the variants' sizes do not matter).
#[allow(clippy::large_enum_variant)]
enum Source {
    Base(divrl::checkpoint::LoadedModel),
    Adapted(divrl::rl::AdaptedModel),
}

impl Source {
    fn model(&self) -> &divrl::checkpoint::LoadedModel {
        match self {
            Self::Base(m) => m,
            Self::Adapted(a) => &a.model,
        }
    }

    fn eps(&self) -> &dyn divrl::schedule::EpsModel {
        match self {
            Self::Base(m) => &m.unet,
            Self::Adapted(a) => a,
        }
    }
}

fn check_ext(flag: &str, p: &std::path::Path, ext: &str) -> anyhow::Result<()> {
    if p.extension()
        .map(|e| !e.eq_ignore_ascii_case(ext))
        .unwrap_or(true)
    {
        bail!("{flag} must be a .{ext} file, got {}", p.display());
    }
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = args.compute.device()?;
    if args.n == 0 || args.n > 10_000 {
        bail!("--n must be in 1..=10000, got {}", args.n);
    }
    if args.out.is_none() && args.out_dir.is_none() && args.npy.is_none() {
        bail!("nothing to write: give --out (grid), --out-dir (one PNG per image) and/or --npy");
    }
    if args.nrow == Some(0) {
        bail!("--nrow must be at least 1 (images per grid row), got 0");
    }
    if let Some(o) = &args.out {
        check_ext("--out", o, "png")?;
    }
    if let Some(o) = &args.npy {
        check_ext("--npy", o, "npy")?;
    }
    if let Some(d) = &args.out_dir {
        if d.exists() && !d.is_dir() {
            bail!("--out-dir {} exists and is not a folder", d.display());
        }
    }
    let guidance_interval = args.diversity.interval()?;
    let cads = args.diversity.cads()?;
    let sampler = SamplerConfig {
        kind: args.sampler,
        steps: args.steps,
        eta: args.eta,
        guidance: args.guidance,
        clip_x0: true,
        reduction: LogProbReduction::Mean,
        guidance_interval,
        cads,
    };
    sampler.validate()?;
    let source = match &args.adapters {
        Some(run) => Source::Adapted(divrl::rl::AdaptedModel::load(
            &args.checkpoint,
            run,
            device,
            !args.raw_weights,
        )?),
        None => Source::Base(divrl::checkpoint::load_model(
            &args.checkpoint,
            device,
            !args.raw_weights,
        )?),
    };
    let model = source.model();
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
        source.eps(),
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
    let mut written = Vec::new();
    if let Some(out) = &args.out {
        divrl::sample::save_grid(&images, nrow, out)?;
        written.push(out.display().to_string());
    }
    if args.out_dir.is_some() || args.npy.is_some() {
        let px = Images8::from_tensor(&images)?;
        if let Some(dir) = &args.out_dir {
            let files = divrl::export::write_pngs(dir, &px, &labels)?;
            written.push(format!("{} PNGs in {}", files.len(), dir.display()));
        }
        if let Some(npy) = &args.npy {
            divrl::export::write_npy(npy, &px, &labels)?;
            written.push(format!(
                "{} (+ {})",
                npy.display(),
                divrl::export::labels_path(npy).display()
            ));
        }
    }
    if let Some(p) = &args.trajectory {
        traj.save(p)?;
    }
    let with = match (&source, &args.adapters) {
        (Source::Adapted(a), Some(run)) => match a.gate_t_min() {
            Some(t_min) => format!(
                ", adapters of {} at t >= {t_min} (its first {} steps)",
                run.display(),
                a.policy_steps
            ),
            None => format!(", adapters of {}", run.display()),
        },
        _ => String::new(),
    };
    eprintln!(
        "{} images, {} {} steps, guidance {}{}{with}, in {:.2} s ({:.1} img/s) on {} -> {}",
        labels.len(),
        args.steps,
        format!("{:?}", args.sampler).to_lowercase(),
        args.guidance,
        DiversityOpts::describe(&sampler.guidance_interval, &sampler.cads),
        secs,
        labels.len() as f64 / secs.max(1e-9),
        divrl::device::device_name(device),
        written.join(", ")
    );
    Ok(())
}
