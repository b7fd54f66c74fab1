//! Algorithm 1 on Stable Diffusion: prompts are the conditions, the policy is DDIM in latent space
//! with classifier-free guidance ([`crate::models::sd::pipeline::SdPolicy`]), the rollout's final
//! latents are decoded by the VAE and embedded by ϕ (CLIP image features), and only LoRA adapters
//! on the UNet's attention projections train.
//!
//! Same loop, reward, advantage tracker, PPO objective, checkpoints and log lines as the
//! class-conditional [`crate::rl::Finetuner`]; condition `i` is prompt `i`.
//!
//! Memory: rollouts run without autograd, `sample_batch_size` trajectories at a time (default 1);
//! the PPO update back-propagates each timestep of each minibatch (`train_batch_size`, default 1)
//! separately and accumulates gradients over `grad_accum` minibatches, so one UNet graph is alive
//! at a time, and with `gradient_checkpointing` (the sd default) only one UNet *stage*'s graph
//! (see [`crate::models::sd::unet2d`]).
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn::VarStore, Device, Kind, Tensor};

use divrl_reward::{DiversityReward, Features};

use crate::checkpoint::load_vars;
use crate::config::{read_safetensors, write_atomic, write_safetensors_atomic, write_toml};
use crate::features::{extract, to_features, Extractor};
use crate::models::sd::pipeline::SdPolicy;
use crate::models::sd::StableDiffusion;
use crate::nn::lora_diffusers::export_peft;
use crate::optim::{AdamW, AdamWConfig};
use crate::rng::SplitMix64;
use crate::sample::{save_grid, Trajectory};
use crate::schedule::SamplerConfig;

use super::advantage::{clip_advantages, mean_std, ConditionStatTracker};
use super::config::FinetuneConfig;
use super::policy::StepBatch;
use super::ppo::{self, PpoStats, Replay, StepPolicy};
use super::trainer::{
    EpochLog, RlState, Rollout, Scores, CHECKPOINTS_DIR, LATEST_FILE, LOG_FILE, OPTIM_FILE,
    STATE_FILE, TRAINABLE_FILE,
};

/// Folder of the exported LoRA (peft/diffusers layout) inside the run folder.
pub const SD_LORA_DIR: &str = "lora";

/// The Stable Diffusion policy with LoRA adapters, its optimizer and Algorithm 1's state.
pub struct SdFinetuner {
    pub cfg: FinetuneConfig,
    /// The frozen pipeline; its UNet carries the adapters.
    pub sd: StableDiffusion,
    /// The adapters (the only trained variables).
    pub lora_vs: VarStore,
    pub opt: AdamW,
    pub tracker: ConditionStatTracker,
    pub rng: SplitMix64,
    pub epoch: usize,
    pub images_seen: u64,
    pub train_seconds: f64,
    /// `[P + 1, L, D]` text states of the prompts and the empty prompt.
    cond: Tensor,
    phi: Box<dyn Extractor>,
    rewards: BTreeMap<i64, DiversityReward>,
    device: Device,
    last_checkpoint: Option<PathBuf>,
    log_lines: Vec<String>,
}

impl SdFinetuner {
    /// Binds a loaded pipeline, ϕ and the per-prompt reference features (`[N, D]`, keyed by
    /// prompt index). LoRA adapters are created from `cfg.seed`.
    pub fn new(
        cfg: FinetuneConfig,
        mut sd: StableDiffusion,
        phi: Box<dyn Extractor>,
        references: BTreeMap<i64, Features>,
    ) -> Result<Self> {
        cfg.validate()?;
        if cfg.model != "sd" {
            bail!("SdFinetuner needs model = \"sd\", got {:?}", cfg.model);
        }
        let device = sd.device;
        let spec = cfg.reward_spec();
        let mut rewards = BTreeMap::new();
        for c in 0..cfg.prompts.len() as i64 {
            let r = references
                .get(&c)
                .with_context(|| format!("no reference images for prompt {c}"))?;
            if r.dim() as i64 != phi.dim() {
                bail!(
                    "reference features of prompt {c} have dimension {}, ϕ ({}) gives {}",
                    r.dim(),
                    phi.name(),
                    phi.dim()
                );
            }
            let dr = DiversityReward::new(&spec, r.clone())
                .with_context(|| format!("reward of prompt {c}"))?;
            if cfg.images_per_class < dr.min_individual_size() {
                bail!(
                    "the {} reward's per-image rewards need images_per_class >= {}, got {}",
                    cfg.reward,
                    dr.min_individual_size(),
                    cfg.images_per_class
                );
            }
            rewards.insert(c, dr);
        }
        let lora_vs = VarStore::new(device);
        let n = crate::rng::with_torch_seed(cfg.seed as i64, || {
            sd.unet.add_lora(&lora_vs.root(), &cfg.lora_config())
        })?;
        if n == 0 {
            bail!("no layer matched the LoRA targets {:?}", cfg.lora_targets);
        }
        let opt = AdamW::new(
            &lora_vs,
            AdamWConfig {
                beta1: cfg.adam_beta1,
                beta2: cfg.adam_beta2,
                eps: cfg.adam_eps,
                weight_decay: cfg.weight_decay,
            },
        );
        let cond = {
            let mut all = cfg.prompts.clone();
            all.push(String::new());
            sd.encode_prompts(&all)?
        };
        Ok(Self {
            tracker: ConditionStatTracker::new(cfg.tracker_buffer, cfg.tracker_min_count),
            rng: SplitMix64(cfg.seed ^ 0x5EED_D1B5_0000_0001),
            cfg,
            sd,
            lora_vs,
            opt,
            epoch: 0,
            images_seen: 0,
            train_seconds: 0.0,
            cond,
            phi,
            rewards,
            device,
            last_checkpoint: None,
            log_lines: Vec::new(),
        })
    }

    /// The current policy (the UNet with its adapters, conditioned on the run's prompts).
    pub fn policy(&self) -> SdPolicy<'_> {
        sd_policy(&self.sd, &self.cond, &self.cfg.prompts)
    }

    /// Algorithm 1, line 3: M latent trajectories per prompt.
    pub fn sample_rollout(&mut self) -> Result<Rollout> {
        let mut conds: Vec<i64> = (0..self.cfg.prompts.len() as i64).collect();
        let per_epoch = self.cfg.classes_per_epoch;
        if per_epoch > 0 && per_epoch < conds.len() {
            self.rng.shuffle(&mut conds);
            conds.truncate(per_epoch);
            conds.sort_unstable();
        }
        let m = self.cfg.images_per_class;
        let labels: Vec<i64> = conds
            .iter()
            .flat_map(|&c| std::iter::repeat_n(c, m))
            .collect();
        let chunk = match self.cfg.sample_batch_size {
            0 => labels.len(),
            n => n,
        };
        let sampler = SdPolicy::sampler(self.cfg.steps, self.cfg.eta, self.cfg.guidance);
        let seeds: Vec<u64> = labels.chunks(chunk).map(|_| self.rng.next_u64()).collect();
        let policy = self.policy();
        let mut parts = Vec::new();
        for (ls, &seed) in labels.chunks(chunk).zip(&seeds) {
            let y = Tensor::from_slice(ls).to_device(self.device);
            parts.push(policy.sample(&sampler, &y, self.cfg.resolution, seed)?);
        }
        let traj = if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Trajectory {
                latents: Tensor::cat(&parts.iter().map(|p| &p.latents).collect::<Vec<_>>(), 1),
                timesteps: parts[0].timesteps.clone(),
                log_probs: Tensor::cat(&parts.iter().map(|p| &p.log_probs).collect::<Vec<_>>(), 1),
                classes: Tensor::cat(&parts.iter().map(|p| &p.classes).collect::<Vec<_>>(), 0),
                sampler,
            }
        };
        // One set of M per prompt (sets_per_class > 1 is rejected for model sd).
        let sets = (0..labels.len()).map(|i| i / m).collect();
        Ok(Rollout {
            traj,
            conditions: labels,
            sets,
        })
    }

    /// VAE-decoded images in `[-1, 1]` of the rollout's final latents (in sampling-size chunks).
    pub fn decode(&self, traj: &Trajectory) -> Tensor {
        let lat = traj.images();
        let n = lat.size()[0];
        let chunk = match self.cfg.sample_batch_size {
            0 => n,
            c => c as i64,
        };
        let mut out = Vec::new();
        let mut i = 0;
        while i < n {
            let len = chunk.min(n - i);
            out.push(
                self.sd
                    .decode(&lat.narrow(0, i, len))
                    .to_device(Device::Cpu),
            );
            i += len;
        }
        Tensor::cat(&out, 0)
    }

    /// Algorithm 1, lines 4–5: set reward per prompt on ϕ(decoded images), marginal utilities.
    pub fn score(&self, roll: &Rollout, images: &Tensor) -> Result<Scores> {
        let x01 = ((images.to_kind(Kind::Float) + 1.0) / 2.0).clamp(0.0, 1.0);
        let e = tch::no_grad(|| extract(self.phi.as_ref(), &x01, 0, false))
            .map_err(|e| anyhow::anyhow!("non-finite or failed ϕ features: {e}"))?;
        let all = to_features("generated features", &e.features)
            .map_err(|e| anyhow::anyhow!("non-finite reward: {e}"))?;
        let mut rewards = vec![0.0; roll.conditions.len()];
        let mut set_rewards = BTreeMap::new();
        let mut conds = roll.conditions.clone();
        conds.dedup();
        for c in conds {
            let idx: Vec<usize> = (0..roll.conditions.len())
                .filter(|&i| roll.conditions[i] == c)
                .collect();
            let out = self.rewards[&c]
                .evaluate(&all.select_rows(&idx))
                .with_context(|| format!("reward of prompt {c}"))?;
            if !out.set_reward.is_finite() || out.individual.iter().any(|r| !r.is_finite()) {
                bail!("non-finite reward for prompt {c}");
            }
            for (j, &i) in idx.iter().enumerate() {
                rewards[i] = out.individual[j] * self.cfg.reward_scale;
            }
            set_rewards.insert(c, out.set_reward);
        }
        Ok(Scores {
            rewards,
            set_rewards,
        })
    }

    /// Algorithm 1, line 6: clipped importance-sampling steps over the rollout
    /// ([`ppo::ppo_update`]; one backward per timestep and minibatch, through the checkpointed
    /// UNet stages with `gradient_checkpointing`).
    pub fn ppo_update(&mut self, roll: &Rollout, advantages: &[f64]) -> Result<PpoStats> {
        let policy = sd_policy(&self.sd, &self.cond, &self.cfg.prompts);
        let policy = if self.cfg.gradient_checkpointing {
            policy.with_checkpointing()
        } else {
            policy
        };
        let replay = Replay {
            policy: &policy,
            base: None, // kl_coef > 0 is rejected for model sd (FinetuneConfig::validate)
            sched: &self.sd.scheduler.sched,
        };
        ppo::ppo_update(
            &replay,
            &roll.traj,
            advantages,
            &self.cfg,
            &mut self.opt,
            &mut self.rng,
            self.epoch + 1,
        )
    }

    /// One iteration of Algorithm 1. Returns the log line and the epoch's decoded images.
    pub fn step_epoch(&mut self) -> Result<(EpochLog, Tensor)> {
        let t0 = Instant::now();
        let roll = self.sample_rollout()?;
        let images = self.decode(&roll.traj);
        let scores = self.score(&roll, &images)?;
        let mut adv = self.tracker.update(&roll.conditions, &scores.rewards)?;
        clip_advantages(&mut adv, self.cfg.adv_clip);
        let ppo = self.ppo_update(&roll, &adv)?;
        self.epoch += 1;
        let secs = t0.elapsed().as_secs_f64();
        self.train_seconds += secs;
        let n = roll.conditions.len();
        self.images_seen += n as u64;
        let (rm, rs) = mean_std(&scores.rewards);
        let set_mean = scores.set_rewards.values().sum::<f64>() / scores.set_rewards.len() as f64;
        let log = EpochLog {
            kind: "epoch".into(),
            epoch: self.epoch,
            set_reward_mean: set_mean,
            set_rewards: scores
                .set_rewards
                .iter()
                .map(|(c, r)| (c.to_string(), *r))
                .collect(),
            reward_mean: rm,
            reward_std: rs,
            reward_min: scores.rewards.iter().cloned().fold(f64::INFINITY, f64::min),
            reward_max: scores
                .rewards
                .iter()
                .cloned()
                .fold(f64::NEG_INFINITY, f64::max),
            advantage_abs_mean: adv.iter().map(|a| a.abs()).sum::<f64>() / n as f64,
            ppo,
            lr: self.cfg.lr,
            images: n,
            images_per_s: n as f64 / secs.max(1e-9),
            seconds: secs,
            diagnostics: None,
        };
        Ok((log, images))
    }

    fn state(&self) -> RlState {
        RlState {
            epoch: self.epoch,
            rng: self.rng.0,
            tracker: self.tracker.clone(),
            images_seen: self.images_seen,
            train_seconds: self.train_seconds,
            config: self.cfg.clone(),
        }
    }

    /// Writes `out/checkpoints/epoch-NNNNNN/` (adapters, optimizer, state) through a temporary
    /// folder, points `latest` at it and prunes old ones.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        let root = self.cfg.out.join(CHECKPOINTS_DIR);
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let name = format!("epoch-{:06}", self.epoch);
        let tmp = root.join(format!(".tmp-{name}-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        let vars: Vec<(String, Tensor)> = self.lora_vs.variables().into_iter().collect();
        write_safetensors_atomic(&tmp.join(TRAINABLE_FILE), &vars)?;
        write_safetensors_atomic(&tmp.join(OPTIM_FILE), &self.opt.state())?;
        write_atomic(
            &tmp.join(STATE_FILE),
            &serde_json::to_vec_pretty(&self.state())?,
        )?;
        let dst = root.join(&name);
        if dst.exists() {
            std::fs::remove_dir_all(&dst)?;
        }
        std::fs::rename(&tmp, &dst).with_context(|| format!("renaming to {}", dst.display()))?;
        write_atomic(&root.join(LATEST_FILE), name.as_bytes())?;
        let mut old: Vec<PathBuf> = std::fs::read_dir(&root)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_dir()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("epoch-") && n != name)
            })
            .collect();
        old.sort();
        let keep_old = self.cfg.keep_checkpoints.saturating_sub(1);
        if old.len() > keep_old {
            for p in &old[..old.len() - keep_old] {
                std::fs::remove_dir_all(p)?;
            }
        }
        self.last_checkpoint = Some(dst.clone());
        Ok(dst)
    }

    /// Restores the newest checkpoint of `out`; false when there is none.
    pub fn resume(&mut self) -> Result<bool> {
        let _lock = crate::run_lock::lock_run_folder(&self.cfg.out)?;
        let root = self.cfg.out.join(CHECKPOINTS_DIR);
        let latest = root.join(LATEST_FILE);
        if !latest.exists() {
            return Ok(false);
        }
        let name = std::fs::read_to_string(&latest)?;
        let dir = root.join(name.trim());
        let state: RlState = serde_json::from_slice(
            &std::fs::read(dir.join(STATE_FILE))
                .with_context(|| format!("reading {}", dir.join(STATE_FILE).display()))?,
        )
        .with_context(|| format!("parsing {}", dir.join(STATE_FILE).display()))?;
        if state.config.training_identity() != self.cfg.training_identity() {
            bail!(
                "{} was made with a different configuration (only epochs, out, device, threads and the checkpoint/sample cadence may change on --resume)",
                dir.display()
            );
        }
        load_vars(&mut self.lora_vs, &dir.join(TRAINABLE_FILE))?;
        self.opt
            .load_state(read_safetensors(&dir.join(OPTIM_FILE))?)
            .with_context(|| format!("{}", dir.join(OPTIM_FILE).display()))?;
        self.tracker = state.tracker;
        self.rng = SplitMix64(state.rng);
        self.epoch = state.epoch;
        self.images_seen = state.images_seen;
        self.train_seconds = state.train_seconds;
        self.last_checkpoint = Some(dir);
        let log = self.cfg.out.join(LOG_FILE);
        if log.exists() {
            self.log_lines = std::fs::read_to_string(&log)?
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v.get("epoch").and_then(|e| e.as_u64()))
                        .is_some_and(|e| e as usize <= self.epoch)
                })
                .map(str::to_string)
                .collect();
        }
        Ok(true)
    }

    fn append_log(&mut self, line: &EpochLog) -> Result<()> {
        self.log_lines.push(serde_json::to_string(line)?);
        let mut text = self.log_lines.join("\n");
        text.push('\n');
        write_atomic(&self.cfg.out.join(LOG_FILE), text.as_bytes())
    }

    /// Runs epochs until `cfg.epochs` (log, sample grids, checkpoints), then exports the LoRA.
    pub fn run(&mut self, progress: bool) -> Result<PathBuf> {
        let out = self.cfg.out.clone();
        let _lock = crate::run_lock::lock_run_folder(&out)?;
        write_toml(&out.join("config.toml"), &self.cfg)?;
        let total = self.cfg.epochs;
        while self.epoch < total {
            let (log, images) = self.step_epoch().map_err(|e| {
                let keep = match &self.last_checkpoint {
                    Some(p) => format!("the last good checkpoint is {}", p.display()),
                    None => "no checkpoint was written yet".to_string(),
                };
                e.context(format!(
                    "epoch {} failed, run stopped ({keep})",
                    self.epoch + 1
                ))
            })?;
            self.append_log(&log)?;
            let e = self.epoch;
            if self.cfg.sample_every > 0 && e % self.cfg.sample_every == 0 {
                save_grid(
                    &images,
                    self.cfg.images_per_class,
                    &out.join("samples").join(format!("epoch-{e:06}.png")),
                )?;
            }
            if (self.cfg.checkpoint_every > 0 && e % self.cfg.checkpoint_every == 0) || e == total {
                self.save_checkpoint()?;
            }
            let msg = format!(
                "epoch {e}/{total}: set reward {:.5}, reward {:.5}±{:.5}, kl {:.2e}, clip {:.3}, grad {:.3e}, {:.2} img/s",
                log.set_reward_mean,
                log.reward_mean,
                log.reward_std,
                log.ppo.approx_kl,
                log.ppo.clip_fraction,
                log.ppo.grad_norm,
                log.images_per_s
            );
            if progress {
                eprintln!("{msg}");
            } else {
                tracing::info!("{msg}");
            }
        }
        self.export()
    }

    /// Writes `out/lora/` (peft/diffusers layout, [`crate::nn::lora_diffusers`]).
    pub fn export(&self) -> Result<PathBuf> {
        export_peft(&self.sd.unet, &self.cfg.out.join(SD_LORA_DIR))
    }
}

/// The policy of prompts `prompts` with text states `cond` (borrows only the pipeline, so the
/// optimizer and RNG stay free to update while it is alive).
fn sd_policy<'a>(sd: &'a StableDiffusion, cond: &Tensor, prompts: &[String]) -> SdPolicy<'a> {
    SdPolicy {
        sd,
        cond: cond.shallow_clone(),
        prompts: prompts.to_vec(),
        checkpoints: None,
    }
}

/// The Stable Diffusion policy replays a transition like the sampler, and with gradient
/// checkpointing finishes each backward pass through the recorded UNet stages.
impl StepPolicy for SdPolicy<'_> {
    fn gaussian(&self, sb: &StepBatch, sampler: &SamplerConfig) -> (Tensor, Tensor) {
        sb.gaussian(self, sampler)
    }

    fn finish_backward(&self) -> Result<()> {
        self.backward_checkpoints().map(|_| ())
    }
}

/// Reference images of prompt `i`: `references[i]`, or the i-th sub-folder (sorted) of a single
/// `references[0]`; the first `n` image files (sorted by name) of it.
pub fn reference_files(
    references: &[PathBuf],
    prompts: usize,
    n: usize,
) -> Result<Vec<Vec<PathBuf>>> {
    let dirs: Vec<PathBuf> =
        if references.len() == prompts && !(prompts == 1 && has_subdirs(&references[0])?) {
            references.to_vec()
        } else if references.len() == 1 {
            let root = &references[0];
            let mut subs: Vec<PathBuf> = std::fs::read_dir(root)
                .with_context(|| format!("reading reference folder {}", root.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect();
            subs.sort();
            if subs.len() != prompts {
                bail!(
                    "{} has {} sub-folders, one per prompt ({prompts}) needed",
                    root.display(),
                    subs.len()
                );
            }
            subs
        } else {
            bail!(
                "{} reference folders for {prompts} prompts",
                references.len()
            );
        };
    dirs.iter()
        .map(|d| {
            let mut files: Vec<PathBuf> = std::fs::read_dir(d)
                .with_context(|| format!("reading reference folder {}", d.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().is_some_and(|x| {
                        matches!(
                            x.to_string_lossy().to_ascii_lowercase().as_str(),
                            "png" | "jpg" | "jpeg"
                        )
                    })
                })
                .collect();
            files.sort();
            files.truncate(n);
            if files.len() < 2 {
                bail!(
                    "{}: needs at least 2 reference images (png/jpg), found {}",
                    d.display(),
                    files.len()
                );
            }
            Ok(files)
        })
        .collect()
}

fn has_subdirs(dir: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("reading reference folder {}", dir.display()))?
        .filter_map(|e| e.ok())
        .any(|e| e.path().is_dir()))
}

/// ϕ features of image files (each decoded on its own, so sizes may differ).
pub fn reference_features(phi: &dyn Extractor, files: &[PathBuf], what: &str) -> Result<Features> {
    let mut rows = Vec::with_capacity(files.len());
    for f in files {
        let img = crate::features::load_image_files(std::slice::from_ref(f))?;
        rows.push(extract(phi, &img, 0, false)?.features.to_kind(Kind::Float));
    }
    to_features(what, &Tensor::cat(&rows, 0))
}
