//! `divrl train-base`: DDPM training of the class-conditional base UNet.

use std::path::PathBuf;

use anyhow::{bail, Context};
use divrl::checkpoint::{BaseConfig, CONFIG_FILE, STATE_FILE};
use divrl::train::{RunOptions, Trainer};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint folder to write (config.toml, ema/weights/optim .safetensors, state.json, samples/)
    #[arg(long)]
    pub out: PathBuf,
    /// TOML config with [model], [schedule] and [train] tables (defaults: the Fashion-MNIST base model)
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run saved in --out (its config is used; --steps may extend it)
    #[arg(long)]
    pub resume: bool,
    /// Data set: fashion-mnist | fashion-mnist-skewed | idx:IMAGES,LABELS | folder:DIR[,SIZE[,CHANNELS]] | npy:IMAGES[,LABELS]
    #[arg(long)]
    pub data: Option<String>,
    /// Start from this checkpoint's (EMA) weights instead of a random initialisation, e.g. to
    /// fine-tune a base on new data; without --config its config.toml is the starting config
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Total optimisation steps
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate (AdamW; warm-up then cosine decay)
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Sample grid every N steps (0 = never)
    #[arg(long)]
    pub sample_every: Option<usize>,
    /// Checkpoint every N steps (0 = only at the end)
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Stop after this step (checkpointing there) without changing the schedule set by --steps;
    /// continue later with --resume
    #[arg(long)]
    pub stop_at: Option<usize>,
    #[command(flatten)]
    pub compute: super::ComputeOpts,
    /// Hide the progress bar (log lines still go to stderr)
    #[arg(long)]
    pub no_progress: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = args.compute.device()?;
    let has_ckpt = args.out.join(STATE_FILE).exists();
    let mut trainer = if args.resume {
        if !has_ckpt {
            bail!(
                "--resume: {} holds no checkpoint ({STATE_FILE} missing)",
                args.out.display()
            );
        }
        if args.config.is_some()
            || args.data.is_some()
            || args.batch_size.is_some()
            || args.lr.is_some()
            || args.seed.is_some()
            || args.init.is_some()
        {
            bail!("--resume uses the saved config; only --steps, --sample-every and --checkpoint-every may change");
        }
        let mut t = Trainer::resume(&args.out, device, args.steps)?;
        if let Some(s) = args.sample_every {
            t.cfg.train.sample_every = s;
        }
        if let Some(s) = args.checkpoint_every {
            t.cfg.train.checkpoint_every = s;
        }
        tracing::info!("resuming {} at step {}", args.out.display(), t.state.step);
        t
    } else {
        if has_ckpt || args.out.join(CONFIG_FILE).exists() {
            bail!(
                "{} already holds a checkpoint: pass --resume, or choose another --out",
                args.out.display()
            );
        }
        let mut cfg: BaseConfig = match (&args.config, &args.init) {
            (Some(p), _) => divrl::config::read_toml(p)?,
            (None, Some(dir)) => divrl::config::read_toml(&dir.join(CONFIG_FILE))
                .with_context(|| format!("--init {}", dir.display()))?,
            (None, None) => BaseConfig::default(),
        };
        let tc = &mut cfg.train;
        tc.init = args.init.clone();
        if let Some(v) = &args.data {
            tc.data = v.clone();
        }
        if let Some(v) = args.steps {
            tc.steps = v;
        }
        if let Some(v) = args.batch_size {
            tc.batch_size = v;
        }
        if let Some(v) = args.lr {
            tc.lr = v;
        }
        if let Some(v) = args.seed {
            tc.seed = v;
        }
        if let Some(v) = args.sample_every {
            tc.sample_every = v;
        }
        if let Some(v) = args.checkpoint_every {
            tc.checkpoint_every = v;
        }
        Trainer::new(cfg, device)?
    };
    let splits =
        divrl::data::load_splits(&trainer.cfg.train.data).context("loading training data")?;
    let n_params: i64 = trainer
        .vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    tracing::info!(
        "training on {} ({} images) on {}, {} parameters, {} steps of batch {}",
        trainer.cfg.train.data,
        splits.train.len(),
        divrl::device::device_name(device),
        n_params,
        trainer.cfg.train.steps,
        trainer.cfg.train.batch_size
    );
    let t0 = std::time::Instant::now();
    let start = trainer.state.step;
    divrl::train::run(
        &mut trainer,
        &splits.train,
        RunOptions {
            out: &args.out,
            progress: !args.no_progress,
            stop_at: args.stop_at,
        },
    )?;
    let secs = t0.elapsed().as_secs_f64();
    let imgs = (trainer.state.step - start) * trainer.cfg.train.batch_size;
    eprintln!(
        "trained to step {} in {:.1} s this run ({:.1} img/s; {:.1} s in all); checkpoint in {}",
        trainer.state.step,
        secs,
        imgs as f64 / secs.max(1e-9),
        trainer.state.train_seconds,
        args.out.display()
    );
    Ok(())
}
