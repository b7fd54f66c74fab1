//! DDPM training of the base model: ε-prediction MSE, classifier-free-guidance label dropout,
//! AdamW, EMA weights, periodic sample grids, safetensors checkpoints, exact resume.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;
use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::checkpoint::{self, BaseConfig, LoadedModel};
use crate::config::{read_safetensors, write_atomic, write_safetensors_atomic, write_toml};
use crate::data::{Dataset, SplitMix64};
use crate::models::unet::UNet;
use crate::optim::{copy_vars, ema_update, AdamW, AdamWConfig};
use crate::sample::{sample_trajectory, save_grid};
use crate::schedule::{NoiseSchedule, SamplerConfig};

pub use crate::checkpoint::TrainConfig;

/// Progress written to `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct TrainState {
    pub step: usize,
    pub images_seen: u64,
    pub train_seconds: f64,
    pub last_loss: f64,
}

/// The model, its EMA copy and the optimizer.
pub struct Trainer {
    pub cfg: BaseConfig,
    pub vs: VarStore,
    pub unet: UNet,
    pub ema_vs: VarStore,
    pub ema_unet: UNet,
    pub opt: AdamW,
    pub sched: NoiseSchedule,
    pub state: TrainState,
    pub device: Device,
}

impl Trainer {
    pub fn new(cfg: BaseConfig, device: Device) -> Result<Self> {
        cfg.validate()?;
        let (vs, unet, mut ema_vs, ema_unet) =
            crate::rng::with_torch_seed(cfg.train.seed as i64, || -> Result<_> {
                let vs = VarStore::new(device);
                let unet = UNet::new(&vs.root(), &cfg.model)?;
                let ema_vs = VarStore::new(device);
                let ema_unet = UNet::new(&ema_vs.root(), &cfg.model)?;
                Ok((vs, unet, ema_vs, ema_unet))
            })?;
        if let Some(dir) = &cfg.train.init {
            let init = checkpoint::load_model(dir, device, true)
                .with_context(|| format!("--init {}", dir.display()))?;
            if init.config.model != cfg.model || init.config.schedule != cfg.schedule {
                bail!(
                    "--init {}: its [model]/[schedule] differ from this run's config",
                    dir.display()
                );
            }
            copy_vars(&vs, &init.vs)?;
        }
        copy_vars(&ema_vs, &vs)?;
        ema_vs.freeze();
        let opt = AdamW::new(
            &vs,
            AdamWConfig {
                weight_decay: cfg.train.weight_decay,
                ..Default::default()
            },
        );
        let sched = NoiseSchedule::new(&cfg.schedule)?;
        Ok(Self {
            cfg,
            vs,
            unet,
            ema_vs,
            ema_unet,
            opt,
            sched,
            state: TrainState::default(),
            device,
        })
    }

    /// Restores weights, EMA, optimizer and progress from a checkpoint folder.
    pub fn resume(dir: &Path, device: Device, steps_override: Option<usize>) -> Result<Self> {
        let mut cfg: BaseConfig = crate::config::read_toml(&dir.join(checkpoint::CONFIG_FILE))?;
        if let Some(s) = steps_override {
            cfg.train.steps = s;
        }
        // The checkpoint's own weights replace any `init` weights: do not require that folder.
        let init = cfg.train.init.take();
        let mut t = Self::new(cfg, device)?;
        t.cfg.train.init = init;
        checkpoint::load_vars(&mut t.vs, &dir.join(checkpoint::WEIGHTS_FILE))?;
        checkpoint::load_vars(&mut t.ema_vs, &dir.join(checkpoint::EMA_FILE))?;
        t.opt
            .load_state(read_safetensors(&dir.join(checkpoint::OPTIM_FILE))?)?;
        let text = std::fs::read_to_string(dir.join(checkpoint::STATE_FILE))
            .context("reading state.json")?;
        t.state = serde_json::from_str(&text).context("parsing state.json")?;
        if t.state.step as i64 != t.opt.step {
            bail!(
                "state.json step {} disagrees with optimizer step {}",
                t.state.step,
                t.opt.step
            );
        }
        Ok(t)
    }

    /// One optimisation step on a batch; returns the loss. Randomness (batch, timesteps, noise,
    /// label dropout) is a SplitMix64 stream of (seed, step), not libtorch's global generator, so
    /// a resumed run repeats an uninterrupted one.
    pub fn train_step(&mut self, data: &Dataset) -> Result<f64> {
        let tc = &self.cfg.train;
        let step = self.state.step;
        let mut rng = SplitMix64(
            tc.seed
                .wrapping_mul(0x9E37_79B9)
                .wrapping_add(step as u64)
                .wrapping_add(1),
        );
        let idx: Vec<usize> = (0..tc.batch_size).map(|_| rng.below(data.len())).collect();
        let drop: Vec<bool> = (0..tc.batch_size)
            .map(|_| rng.uniform() < tc.p_uncond)
            .collect();
        let (x0, y) = data.batch(&idx);
        for (i, d) in drop.iter().enumerate() {
            if *d {
                let _ = y.get(i as i64).fill_(self.cfg.model.null_class());
            }
        }
        let nt = self.sched.num_train_timesteps() as usize;
        let t: Vec<i64> = (0..tc.batch_size).map(|_| rng.below(nt) as i64).collect();
        let t = Tensor::from_slice(&t).to_device(self.device);
        let eps = rng.randn(&x0.size(), self.device);
        let (x0, y) = (x0.to_device(self.device), y.to_device(self.device));
        let xt = self.sched.add_noise(&x0, &eps, &t);
        let pred = self.unet.forward_t(&xt, &t, &y, true);
        let loss = pred.mse_loss(&eps, tch::Reduction::Mean);
        self.opt.zero_grad();
        loss.backward();
        self.opt.clip_grad_norm(tc.grad_clip);
        let lr = tc.lr_at(step);
        self.opt.step(lr);
        let decay = tc.ema_decay.min((1.0 + step as f64) / (10.0 + step as f64));
        ema_update(&self.ema_vs, &self.vs, decay)?;
        let l = loss.double_value(&[]);
        if !l.is_finite() {
            bail!("loss became {l} at step {step}");
        }
        self.state.step += 1;
        self.state.images_seen += tc.batch_size as u64;
        self.state.last_loss = l;
        Ok(l)
    }

    /// Writes the full checkpoint (config, EMA, weights, optimizer, state).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_toml(&dir.join(checkpoint::CONFIG_FILE), &self.cfg)?;
        let named = |vs: &VarStore| {
            let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        write_safetensors_atomic(&dir.join(checkpoint::EMA_FILE), &named(&self.ema_vs))?;
        write_safetensors_atomic(&dir.join(checkpoint::WEIGHTS_FILE), &named(&self.vs))?;
        write_safetensors_atomic(&dir.join(checkpoint::OPTIM_FILE), &self.opt.state())?;
        write_atomic(
            &dir.join(checkpoint::STATE_FILE),
            serde_json::to_string_pretty(&self.state)?.as_bytes(),
        )?;
        Ok(())
    }

    /// A grid with `per_class` EMA samples of every class (rows = classes).
    pub fn sample_grid(&self, path: &Path, per_class: i64, sampler: &SamplerConfig) -> Result<()> {
        let k = self.cfg.model.num_classes;
        let classes = Tensor::arange(k, (Kind::Int64, self.device))
            .repeat_interleave_self_int(per_class, 0, None);
        let s = self.cfg.model.image_size;
        let traj = sample_trajectory(
            &self.ema_unet,
            &self.sched,
            sampler,
            &classes,
            [self.cfg.model.in_channels, s, s],
            0,
        )?;
        save_grid(&traj.images(), per_class as usize, path)
    }
}

/// Options of a training run that are not part of the saved config.
pub struct RunOptions<'a> {
    pub out: &'a Path,
    pub progress: bool,
    /// Stop (with a checkpoint) after this step without changing the learning-rate schedule,
    /// which stays defined by `steps`; `--resume` continues from there.
    pub stop_at: Option<usize>,
}

/// Trains until `cfg.train.steps`, checkpointing and sampling on schedule.
pub fn run(trainer: &mut Trainer, data: &Dataset, opts: RunOptions) -> Result<()> {
    let tc = trainer.cfg.train.clone();
    let m = &trainer.cfg.model;
    let shape = data.image_shape();
    if shape != [m.in_channels, m.image_size, m.image_size] {
        bail!(
            "data images are {:?}, the model config expects [{}, {}, {}]",
            shape,
            m.in_channels,
            m.image_size,
            m.image_size
        );
    }
    if data.num_classes() > m.num_classes {
        bail!(
            "data has {} classes, the model only {}",
            data.num_classes(),
            m.num_classes
        );
    }
    let start = trainer.state.step;
    if start >= tc.steps {
        tracing::info!(
            "checkpoint already at step {start} >= {} steps; nothing to do",
            tc.steps
        );
        return Ok(());
    }
    let pb = crate::progress::bar(
        tc.steps as u64,
        opts.progress,
        "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
    );
    pb.set_position(start as u64);
    let sampler = SamplerConfig::default();
    let t0 = Instant::now();
    let base_seconds = trainer.state.train_seconds;
    let mut window = (Instant::now(), 0usize);
    let end = opts.stop_at.map_or(tc.steps, |s| s.min(tc.steps));
    for step in start..end {
        let loss = trainer.train_step(data)?;
        trainer.state.train_seconds = base_seconds + t0.elapsed().as_secs_f64();
        pb.inc(1);
        let done = step + 1;
        if tc.log_every > 0 && done % tc.log_every == 0 {
            let dt = window.0.elapsed().as_secs_f64();
            let ips = (done - start - window.1) as f64 * tc.batch_size as f64 / dt.max(1e-9);
            window = (Instant::now(), done - start);
            pb.set_message(format!("loss {loss:.4} {ips:.0} img/s"));
            tracing::info!(
                "step {done}/{} loss {loss:.4} lr {:.2e} {ips:.1} img/s",
                tc.steps,
                tc.lr_at(step)
            );
        }
        if tc.sample_every > 0 && done % tc.sample_every == 0 {
            trainer.sample_grid(
                &opts.out.join("samples").join(format!("step_{done:06}.png")),
                8,
                &sampler,
            )?;
        }
        if (tc.checkpoint_every > 0 && done % tc.checkpoint_every == 0) || done == end {
            trainer.save(opts.out)?;
        }
    }
    pb.finish_and_clear();
    Ok(())
}

/// Convenience: reload a finished run for sampling.
pub fn load_for_sampling(dir: &Path, device: Device) -> Result<LoadedModel> {
    checkpoint::load_model(dir, device, true)
}
