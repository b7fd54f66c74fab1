//! The fine-tuning loop, as the paper's Algorithm 1, once for every [`PolicyModel`]:
//!
//! ```text
//! while not converged:                                       (Trainer::run)
//!     for each condition c: sample M images with trajectories   (sample_rollout)
//!     compute the set Diversity Reward against X_r|c            (score)
//!     assign each image its marginal utility, eq. (18)          (score)
//!     advantages: per-condition normalisation, clipping         (ConditionStatTracker)
//!     E_in rounds of clipped policy-gradient steps, eq. (20)    (ppo_update)
//! ```
//!
//! Only the LoRA adapters train (the base is frozen) unless `full_finetune`. Every random draw
//! comes from one SplitMix64 stream whose state is checkpointed with the weights, the optimizer
//! and the advantage tracker ([`RunDir`]), so a resumed run continues exactly where the
//! uninterrupted one would.
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

use divrl_reward::{DiversityReward, Features};

use crate::checkpoint::LoadedModel;
use crate::config::{read_toml, write_toml};
use crate::eval::EvalReport;
use crate::features::{to_features, Extractor};
use crate::optim::{AdamW, AdamWConfig};
use crate::rng::SplitMix64;
use crate::sample::{save_grid, Trajectory};

use super::advantage::{clip_advantages, mean_std, ConditionStatTracker};
use super::config::FinetuneConfig;
use super::data_parallel::DataParallel;
use super::evaluator::{eval_images, EvalSet, Evaluator};
use super::model::PolicyModel;
use super::policy::StepBatch;
use super::policy_ema::{Averaged, PolicyEma, POLICY_EMA_FILE};
pub use super::ppo::PpoStats;
use super::ppo::{self, StepPolicy};
use super::run_dir::{RlState, RunDir};
use super::run_log::{Diagnostics, EpochLog, EvalLog};
use super::unet_policy::UnetPolicy;

/// One epoch's samples: a single trajectory batch, `sets_per_class` sets of `images_per_class`
/// per condition.
pub struct Rollout {
    pub traj: Trajectory,
    /// Condition of each sample.
    pub conditions: Vec<i64>,
    /// Generated set of each sample (0, 1, …; each set holds M samples of one condition and is
    /// scored as one X_g).
    pub sets: Vec<usize>,
    /// The samples `traj` holds, as indices into `conditions` (all of them in one process; this
    /// rank's chunks in a data-parallel run, [`super::data_parallel::owned_samples`]).
    pub local: Vec<usize>,
    /// The sampling chunk the epoch was cut into (one seed per chunk).
    pub chunk: usize,
}

/// Rewards of a rollout.
#[derive(Debug, Clone)]
pub struct Scores {
    /// Scaled marginal-utility reward of each sample.
    pub rewards: Vec<f64>,
    /// Set reward of each condition (unscaled).
    pub set_rewards: BTreeMap<i64, f64>,
}

/// How many evaluations a run of `cfg.epochs` makes: the base's, every `eval_every` epochs, and
/// the last epoch's when it is not on the cadence (0 without evaluation).
pub fn planned_evals(cfg: &FinetuneConfig) -> usize {
    if cfg.eval_every == 0 {
        return 0;
    }
    1 + cfg.epochs / cfg.eval_every + usize::from(cfg.epochs % cfg.eval_every != 0)
}

/// A policy model, its optimizer and everything Algorithm 1 needs.
pub struct Trainer<P: PolicyModel> {
    pub cfg: FinetuneConfig,
    /// The diffusion model with its trained variables.
    pub model: P,
    pub opt: AdamW,
    pub tracker: ConditionStatTracker,
    pub rng: SplitMix64,
    /// Epochs completed.
    pub epoch: usize,
    pub images_seen: u64,
    pub train_seconds: f64,
    /// The conditions the run trains on (class or prompt indices).
    pub classes: Vec<i64>,
    rewards: BTreeMap<i64, DiversityReward>,
    evaluator: Evaluator,
    run_dir: RunDir,
    /// Fixed-noise set reward of the current weights (diagnostics), if known.
    fixed_set_reward: Option<f64>,
    /// This process's rank and collectives in a data-parallel run ([`Trainer::set_data_parallel`]).
    dp: Option<Mutex<DataParallel>>,
    /// The weights' moving average when `policy_ema > 0`: what evaluations and exports use.
    ema: Option<PolicyEma>,
}

/// Fine-tuning of the class-conditional UNet (Algorithm 1 with [`UnetPolicy`]).
pub type Finetuner = Trainer<UnetPolicy>;

impl Trainer<UnetPolicy> {
    /// Binds a base model, ϕ, the per-condition reference features (`[N, D]` each, ϕ's space) and
    /// optionally a held-out evaluation set. LoRA adapters are created from `cfg.seed`.
    pub fn new(
        cfg: FinetuneConfig,
        model: LoadedModel,
        phi: Box<dyn Extractor>,
        references: BTreeMap<i64, Features>,
        eval: Option<EvalSet>,
    ) -> Result<Self> {
        cfg.validate()?;
        let model = UnetPolicy::new(&cfg, model)?;
        Trainer::with_model(cfg, model, phi, references, eval)
    }
}

impl<P: PolicyModel> Trainer<P> {
    /// Binds a policy model (adapters already added), ϕ, the per-condition reference features
    /// and optionally a held-out evaluation set; creates the optimizer over the model's trained
    /// variables, the advantage tracker and the run's random stream.
    pub fn with_model(
        cfg: FinetuneConfig,
        model: P,
        phi: Box<dyn Extractor>,
        references: BTreeMap<i64, Features>,
        eval: Option<EvalSet>,
    ) -> Result<Self> {
        cfg.validate()?;
        let classes = model.conditions(&cfg)?;
        let noun = model.condition_noun();
        let spec = cfg.reward_spec();
        let mut rewards = BTreeMap::new();
        for &c in &classes {
            let r = references
                .get(&c)
                .with_context(|| format!("no reference images for {noun} {c}"))?;
            if r.dim() as i64 != phi.dim() {
                bail!(
                    "reference features of {noun} {c} have dimension {}, ϕ ({}) gives {}",
                    r.dim(),
                    phi.name(),
                    phi.dim()
                );
            }
            let dr = DiversityReward::new(&spec, r.clone())
                .with_context(|| format!("reward of {noun} {c}"))?;
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
        let opt = AdamW::new(
            model.trainable(),
            AdamWConfig {
                beta1: cfg.adam_beta1,
                beta2: cfg.adam_beta2,
                eps: cfg.adam_eps,
                weight_decay: cfg.weight_decay,
            },
        );
        let ema = if cfg.policy_ema > 0.0 {
            Some(PolicyEma::new(
                model.trainable(),
                cfg.policy_ema,
                Averaged::parse(&cfg.policy_ema_of)?,
            )?)
        } else {
            None
        };
        Ok(Self {
            tracker: ConditionStatTracker::new(cfg.tracker_buffer, cfg.tracker_min_count),
            rng: SplitMix64(cfg.seed ^ 0x5EED_D1B5_0000_0001),
            run_dir: RunDir::new(&cfg.out),
            cfg,
            model,
            opt,
            epoch: 0,
            images_seen: 0,
            train_seconds: 0.0,
            classes,
            rewards,
            evaluator: Evaluator { phi, set: eval },
            fixed_set_reward: None,
            dp: None,
            ema,
        })
    }

    /// Makes this trainer one rank of a data-parallel run: it samples its share of every epoch's
    /// chunks ([`super::data_parallel`]), exchanges ϕ-features and gradients with the other
    /// ranks, and only rank 0 writes (log, grids, evaluations, checkpoints, exports). With
    /// `sample_batch_size` 0 the chunk becomes ⌈samples per epoch / world⌉ (recorded in the
    /// run's config, so that a resume keeps it).
    pub fn set_data_parallel(&mut self, dp: DataParallel) -> Result<()> {
        if self.epoch > 0 {
            bail!("set_data_parallel before resume: the run's config must include the chunk");
        }
        let (n, world) = (self.epoch_samples(), dp.world());
        if self.cfg.sample_batch_size == 0 && world > 1 {
            self.cfg.sample_batch_size = n.div_ceil(world);
        }
        // Every rank finds this at once, before any exchange: no rank waits for one that left.
        let chunks = n.div_ceil(self.cfg.sample_batch_size.max(1));
        if chunks < world {
            bail!(
                "{world} ranks but an epoch of {n} samples makes only {chunks} sampling chunk(s) of sample_batch_size {}: lower sample_batch_size to at most {} or use fewer ranks",
                self.cfg.sample_batch_size,
                n.div_ceil(world)
            );
        }
        self.dp = Some(Mutex::new(dp));
        Ok(())
    }

    /// Leaves the data-parallel run (rank 0 waits for every rank); nothing in one process.
    pub fn finish_data_parallel(&mut self) -> Result<()> {
        match self.dp.take() {
            Some(dp) => dp.into_inner().expect("no panic while holding it").finish(),
            None => Ok(()),
        }
    }

    /// (rank, world) of this process; (0, 1) in one process.
    pub fn rank_world(&self) -> (usize, usize) {
        match &self.dp {
            Some(dp) => {
                let dp = dp.lock().expect("no panic while holding it");
                (dp.rank(), dp.world())
            }
            None => (0, 1),
        }
    }

    /// Whether this process writes the run's files (rank 0, or the only process).
    pub fn is_writer(&self) -> bool {
        self.rank_world().0 == 0
    }

    /// Runs `f` on the data-parallel handle, when there is one.
    fn with_dp<R>(&self, f: impl FnOnce(&mut DataParallel) -> Result<R>) -> Option<Result<R>> {
        self.dp
            .as_ref()
            .map(|dp| f(&mut dp.lock().expect("no panic while holding it")))
    }

    /// Samples an epoch draws: conditions per epoch × M × K.
    fn epoch_samples(&self) -> usize {
        let conds = match self.cfg.classes_per_epoch {
            0 => self.classes.len(),
            n => n.min(self.classes.len()),
        };
        conds * self.cfg.images_per_class * self.cfg.sets_per_class.max(1)
    }

    /// The variables that train (adapters, or all base weights).
    pub fn trainable(&self) -> &tch::nn::VarStore {
        self.model.trainable()
    }

    /// Trajectories for the chunks `which` of `labels` cut into chunks of `chunk`, chunk `i`
    /// from `seeds[i]`, concatenated in the order of `which`.
    fn sample_labels(
        &self,
        sampler: &crate::schedule::SamplerConfig,
        labels: &[i64],
        chunk: usize,
        seeds: &[u64],
        which: &[usize],
    ) -> Result<Trajectory> {
        let device = self.model.device();
        let parts = which
            .iter()
            .map(|&c| {
                let ls = &labels[super::data_parallel::chunk_range(labels.len(), chunk, c)];
                let y = Tensor::from_slice(ls).to_device(device);
                self.model.sample(sampler, &y, seeds[c])
            })
            .collect::<Result<Vec<_>>>()?;
        Trajectory::cat(parts)
    }

    /// Algorithm 1, line 3: `sets_per_class` sets of M images per condition, with their
    /// trajectories and log-probs.
    pub fn sample_rollout(&mut self) -> Result<Rollout> {
        let mut conds = self.classes.clone();
        let per_epoch = self.cfg.classes_per_epoch;
        if per_epoch > 0 && per_epoch < conds.len() {
            self.rng.shuffle(&mut conds);
            conds.truncate(per_epoch);
            conds.sort_unstable();
        }
        let m = self.cfg.images_per_class;
        let k = self.cfg.sets_per_class.max(1);
        let labels: Vec<i64> = conds
            .iter()
            .flat_map(|&c| std::iter::repeat_n(c, m * k))
            .collect();
        let sets: Vec<usize> = (0..labels.len()).map(|i| i / m).collect();
        let chunk = match self.cfg.sample_batch_size {
            0 => labels.len(),
            n => n,
        };
        // Every rank draws every chunk's seed, so the stream is the same on all of them.
        let seeds: Vec<u64> = labels.chunks(chunk).map(|_| self.rng.next_u64()).collect();
        let sampler = self.model.sampler(&self.cfg);
        // This rank's chunks (every chunk in one process; set_data_parallel checked that every
        // rank has one).
        let (rank, world) = self.rank_world();
        let which = super::data_parallel::owned_chunks(labels.len(), chunk, rank, world);
        let traj = self.sample_labels(&sampler, &labels, chunk, &seeds, &which)?;
        let local = super::data_parallel::owned_samples(labels.len(), chunk, rank, world);
        Ok(Rollout {
            traj,
            conditions: labels,
            sets,
            local,
            chunk,
        })
    }

    /// The `[-1, 1]` images of a trajectory's final states (decoded, for latent models).
    pub fn images(&self, traj: &Trajectory) -> Tensor {
        self.model.images(traj, self.cfg.sample_batch_size)
    }

    /// ϕ-features (and logits) of `[-1, 1]` images, batched, on the CPU.
    pub fn features(&self, images: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        self.evaluator.features(images)
    }

    /// ϕ-features of this process's rollout `images`, one sampling chunk at a time: a chunk's
    /// features are then the same bits whichever process computes them (ϕ's batched forward
    /// differs in the last bits with the batch it runs in). One call when there is one chunk.
    fn chunk_features(&self, roll: &Rollout, images: &Tensor) -> Result<Tensor> {
        let n = roll.conditions.len();
        let (rank, world) = self.rank_world();
        let which = super::data_parallel::owned_chunks(n, roll.chunk, rank, world);
        if which.len() <= 1 {
            return Ok(self.features(images)?.0);
        }
        let mut parts = Vec::with_capacity(which.len());
        let mut at = 0i64;
        for c in which {
            let len = super::data_parallel::chunk_range(n, roll.chunk, c).len() as i64;
            parts.push(self.features(&images.narrow(0, at, len))?.0);
            at += len;
        }
        Ok(Tensor::cat(&parts, 0))
    }

    /// Algorithm 1, lines 4–5: set rewards per condition on ϕ of the rollout's `images`, and
    /// each image's marginal utility. A non-finite feature or reward is an error (the run stops
    /// before touching the weights).
    pub fn score(&self, roll: &Rollout, images: &Tensor) -> Result<Scores> {
        let noun = self.model.condition_noun();
        let feats = self
            .chunk_features(roll, images)
            .map_err(|e| anyhow::anyhow!("non-finite or failed ϕ features: {e}"))?;
        // In a data-parallel run `images` are this rank's: every rank gets the whole epoch's.
        let n = roll.conditions.len();
        let feats = match self.with_dp(|dp| dp.gather_rows(&feats, n, roll.chunk)) {
            Some(all) => all.context("gathering the epoch's ϕ-features from every rank")?,
            None => feats,
        };
        let all = to_features("generated features", &feats)
            .map_err(|e| anyhow::anyhow!("non-finite reward: {e}"))?;
        let mut rewards = vec![0.0; roll.conditions.len()];
        let mut set_sums: BTreeMap<i64, (f64, usize)> = BTreeMap::new();
        let mut sets = roll.sets.clone();
        sets.dedup();
        for s in sets {
            let idx: Vec<usize> = (0..roll.sets.len())
                .filter(|&i| roll.sets[i] == s)
                .collect();
            let c = roll.conditions[idx[0]];
            if idx.iter().any(|&i| roll.conditions[i] != c) {
                bail!("generated set {s} mixes conditions");
            }
            let out = self.rewards[&c]
                .evaluate(&all.select_rows(&idx))
                .with_context(|| format!("reward of {noun} {c}"))?;
            if !out.set_reward.is_finite() || out.individual.iter().any(|r| !r.is_finite()) {
                bail!(
                    "non-finite reward for {noun} {c} (set reward {}, per-image {:?})",
                    out.set_reward,
                    out.individual
                );
            }
            for (j, &i) in idx.iter().enumerate() {
                rewards[i] = out.individual[j] * self.cfg.reward_scale;
            }
            let e = set_sums.entry(c).or_insert((0.0, 0));
            e.0 += out.set_reward;
            e.1 += 1;
        }
        // A condition's set reward is the mean over its sets.
        let set_rewards = set_sums
            .into_iter()
            .map(|(c, (sum, n))| (c, sum / n as f64))
            .collect();
        Ok(Scores {
            rewards,
            set_rewards,
        })
    }

    /// Algorithm 1, line 6: `inner_epochs` rounds of clipped importance-sampling updates over the
    /// rollout ([`ppo::ppo_update`]), with the KL penalty to the frozen base when `kl_coef > 0`.
    pub fn ppo_update(&mut self, roll: &Rollout, advantages: &[f64]) -> Result<PpoStats> {
        let Self {
            model,
            cfg,
            opt,
            rng,
            epoch,
            dp,
            ..
        } = self;
        let mut guard = dp
            .as_mut()
            .map(|d| d.get_mut().expect("no panic while holding it"));
        let shard = guard.as_mut().map(|d| (roll.local.as_slice(), &mut **d));
        model.with_replay(cfg, true, |replay| {
            ppo::ppo_update_shard(
                replay,
                &roll.traj,
                advantages,
                cfg,
                opt,
                rng,
                *epoch + 1,
                roll.chunk,
                shard,
            )
        })
    }

    /// Mean set reward of `images_per_class` samples per condition from noise that is the same
    /// every epoch (a function of the seed only): how the current weights score, free of the
    /// rollout's sampling noise. Draws nothing from the run's RNG stream.
    pub fn fixed_noise_set_reward(&self) -> Result<f64> {
        let m = self.cfg.images_per_class;
        let labels: Vec<i64> = self
            .classes
            .iter()
            .flat_map(|&c| std::iter::repeat_n(c, m))
            .collect();
        let seed = self.cfg.seed ^ 0xF1ED_0000_0000_0001;
        let sampler = self.model.sampler(&self.cfg);
        let traj = self.sample_labels(&sampler, &labels, labels.len(), &[seed], &[0])?;
        let (feats, _) = self.features(&self.images(&traj))?;
        let all = to_features("generated features", &feats)?;
        let noun = self.model.condition_noun();
        let mut sum = 0.0;
        for (j, &c) in self.classes.iter().enumerate() {
            let idx: Vec<usize> = (j * m..(j + 1) * m).collect();
            let out = self.rewards[&c]
                .evaluate(&all.select_rows(&idx))
                .with_context(|| format!("fixed-noise reward of {noun} {c}"))?;
            sum += out.set_reward;
        }
        Ok(sum / self.classes.len() as f64)
    }

    /// After an update: the correlation between each trajectory's advantage and the change of
    /// its log-probability (mean over its trainable transitions), and the mean absolute change.
    pub fn log_prob_change(&self, roll: &Rollout, advantages: &[f64]) -> Result<(f64, f64)> {
        let traj = &roll.traj;
        // This process's trajectories (all of them in one process).
        let n = roll.local.len();
        let k = self.cfg.trained_steps(traj.num_steps());
        let sampler = &traj.sampler;
        let mut delta = vec![0.0f64; n];
        let mut abs_sum = 0.0;
        let chunk = 100usize;
        self.model.with_replay(&self.cfg, false, |replay| {
            tch::no_grad(|| -> Result<()> {
                for step in 0..k {
                    for start in (0..n).step_by(chunk) {
                        let samples: Vec<usize> = (start..(start + chunk).min(n)).collect();
                        let steps = vec![step; samples.len()];
                        let sb = StepBatch::gather(replay.sched, traj, &samples, &steps);
                        let lp = StepPolicy::gaussian(replay.policy, &sb, sampler)
                            .log_prob(&sb.x_s, sampler.reduction);
                        let d = (lp - sb.old_log_probs(traj)).to_kind(Kind::Double);
                        let d: Vec<f64> = Vec::<f64>::try_from(&d.to_device(Device::Cpu))?;
                        for (&i, v) in samples.iter().zip(d) {
                            delta[i] += v / k as f64;
                            abs_sum += v.abs();
                        }
                    }
                }
                Ok(())
            })
        })?;
        let total = roll.conditions.len();
        let (delta, abs_sum) = match self.with_dp(|dp| {
            let all = dp.gather_f64(&delta, total, roll.chunk)?;
            Ok((all, dp.sum_f64(&[abs_sum])?[0]))
        }) {
            Some(r) => r?,
            None => (delta, abs_sum),
        };
        Ok((pearson(advantages, &delta), abs_sum / (total * k) as f64))
    }

    /// One iteration of Algorithm 1's loop. Returns the log line and the epoch's images.
    pub fn step_epoch(&mut self) -> Result<(EpochLog, Tensor)> {
        let fixed_before = match (self.cfg.diagnostics, self.fixed_set_reward) {
            (false, _) => None,
            (true, Some(r)) => Some(r),
            (true, None) => Some(self.fixed_noise_set_reward()?),
        };
        let t0 = Instant::now();
        let roll = self.sample_rollout()?;
        let images = self.images(&roll.traj);
        let scores = self.score(&roll, &images)?;
        let mut adv = self.tracker.update(&roll.conditions, &scores.rewards)?;
        clip_advantages(&mut adv, self.cfg.adv_clip);
        let ppo = self.ppo_update(&roll, &adv)?;
        if let Some(ema) = &mut self.ema {
            ema.update(self.model.trainable())?;
        }
        self.epoch += 1;
        let secs = t0.elapsed().as_secs_f64();
        self.train_seconds += secs;
        // Diagnostics cost extra forward passes; they are timed outside the epoch.
        let diagnostics = match fixed_before {
            Some(before) => {
                let (corr, change) = self.log_prob_change(&roll, &adv)?;
                let after = self.fixed_noise_set_reward()?;
                self.fixed_set_reward = Some(after);
                Some(Diagnostics {
                    adv_logp_corr: corr,
                    logp_change_abs_mean: change,
                    fixed_set_reward_before: before,
                    fixed_set_reward_after: after,
                })
            }
            None => None,
        };
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
            diagnostics,
        };
        Ok((log, images))
    }

    /// Held-out evaluation: `eval_per_class` images per condition from fixed noise (the same
    /// before and after fine-tuning), metrics against the held-out real features.
    pub fn evaluate(&self) -> Result<EvalReport> {
        let images = self.eval_images(self.cfg.eval_per_class, self.cfg.guidance)?;
        self.evaluate_images(&images)
    }

    /// `per_class` images per condition at guidance `guidance`, from the evaluation noise (a
    /// function of the seed only, so the same before and after fine-tuning). Conditions are
    /// interleaved: image `i` has condition `classes[i % classes.len()]`, so every
    /// Inception-Score split holds every condition. `[-1, 1]`, on the CPU.
    /// With `policy_ema` the images come from the weights' moving average.
    pub fn eval_images(&self, per_class: usize, guidance: f64) -> Result<Tensor> {
        self.with_result_weights(|| {
            eval_images(&self.model, &self.cfg, &self.classes, per_class, guidance)
        })
    }

    /// [`Self::eval_images`] with guidance at every noise level (the run's `guidance_interval`
    /// dropped): the plain sampler beside the interval one, on the same evaluation noise.
    pub fn eval_images_plain(&self, per_class: usize, guidance: f64) -> Result<Tensor> {
        let cfg = FinetuneConfig {
            guidance_interval: None,
            ..self.cfg.clone()
        };
        self.with_result_weights(|| {
            eval_images(&self.model, &cfg, &self.classes, per_class, guidance)
        })
    }

    /// Runs `f` with the run's result in the model: the moving average of the weights with
    /// `policy_ema`, the current weights otherwise; the current weights are back afterwards.
    pub fn with_result_weights<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        match &self.ema {
            Some(ema) => {
                let residual = ema.rank_residual(self.model.trainable())?;
                if residual > 0.0 {
                    tracing::info!(
                        "moving average of the LoRA updates: best rank-r factors, relative residual {residual:.3e}"
                    );
                }
                ema.apply(self.model.trainable(), f)
            }
            None => f(),
        }
    }

    /// The weights' moving average (`policy_ema > 0`).
    pub fn policy_ema(&self) -> Option<&PolicyEma> {
        self.ema.as_ref()
    }

    /// Metrics of generated `[-1, 1]` images against the held-out real features (and the
    /// attribute's histogram on data sets that have one).
    pub fn evaluate_images(&self, images: &Tensor) -> Result<EvalReport> {
        self.evaluator.evaluate_images(images, &self.classes)
    }

    /// The held-out real features, when an evaluation set was given.
    pub fn eval_features(&self) -> Option<&Tensor> {
        self.evaluator.eval_features()
    }

    /// The Diversity Reward (with its reference set) of condition `c`.
    pub fn reward_of(&self, c: i64) -> Option<&DiversityReward> {
        self.rewards.get(&c)
    }

    /// ϕ's registry name.
    pub fn phi_name(&self) -> &str {
        self.evaluator.phi.name()
    }

    /// The run folder (log lines, checkpoints).
    pub fn run_dir(&self) -> &RunDir {
        &self.run_dir
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

    /// Writes `out/checkpoints/epoch-NNNNNN/` ([`RunDir::save_checkpoint`]).
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        let state = self.state();
        let extra: Vec<(&str, Vec<(String, Tensor)>)> = self
            .ema
            .iter()
            .map(|ema| (POLICY_EMA_FILE, ema.tensors()))
            .collect();
        self.run_dir.save_checkpoint(
            self.model.trainable(),
            &self.opt,
            &state,
            &extra,
            self.cfg.keep_checkpoints,
        )
    }

    /// Restores the newest checkpoint of `out` (weights, optimizer, tracker, RNG, epoch, log).
    /// Returns false when there is none.
    pub fn resume(&mut self) -> Result<bool> {
        // In a data-parallel run rank 0 holds the folder; the others only read it.
        let _lock = if self.is_writer() {
            Some(crate::run_lock::lock_run_folder(&self.cfg.out)?)
        } else {
            None
        };
        let Some((dir, state)) = self.run_dir.latest()? else {
            return Ok(false);
        };
        let differ = state.config.training_differences(&self.cfg);
        if !differ.is_empty() {
            bail!(
                "{} was made with a different configuration: {} differ{} (only epochs, out, device, threads and the checkpoint/sample/eval cadence may change on --resume)",
                dir.display(),
                differ.join(", "),
                if differ.len() == 1 { "s" } else { "" }
            );
        }
        self.run_dir
            .restore(&dir, state.epoch, self.model.trainable_mut(), &mut self.opt)?;
        if let Some(ema) = &mut self.ema {
            let path = dir.join(POLICY_EMA_FILE);
            let saved = crate::config::read_safetensors(&path)
                .with_context(|| format!("the moving average of {}", dir.display()))?;
            ema.load(saved)
                .with_context(|| format!("loading {}", path.display()))?;
        }
        self.tracker = state.tracker;
        self.rng = SplitMix64(state.rng);
        self.epoch = state.epoch;
        self.images_seen = state.images_seen;
        self.train_seconds = state.train_seconds;
        Ok(true)
    }

    /// Samples and scores the evaluation images and logs the evaluation; returns the report, the
    /// images and the seconds it took (as logged).
    fn eval_and_log(&mut self) -> Result<(EvalReport, Tensor, f64)> {
        let t0 = Instant::now();
        let images = self.eval_images(self.cfg.eval_per_class, self.cfg.guidance)?;
        let report = self.evaluate_images(&images)?;
        let rec = EvalLog {
            kind: "eval".into(),
            epoch: self.epoch,
            report: report.clone(),
            seconds: t0.elapsed().as_secs_f64(),
        };
        self.run_dir.append_log(&rec)?;
        Ok((report, images, rec.seconds))
    }

    /// Runs epochs until `cfg.epochs`, logging, writing grids, evaluating and checkpointing, then
    /// exports the result. Returns the evaluation reports (before, ..., after).
    pub fn run(&mut self, progress: bool) -> Result<Vec<(usize, EvalReport)>> {
        let len = self.cfg.epochs + planned_evals(&self.cfg);
        let pb = crate::progress::bar(
            len as u64,
            progress,
            "{spinner} finetune [{bar:30}] {pos}/{len} epochs + evaluations {msg} ({elapsed}, ETA {eta})",
        );
        pb.set_position(self.epoch as u64);
        let evals = self.run_with(&pb, !progress, &mut |_, _, _| Ok(()))?;
        pb.finish_and_clear();
        Ok(evals)
    }

    /// [`Trainer::run`] with the caller's progress bar (advanced by one per epoch and one per
    /// evaluation) and a hook that sees every evaluation's epoch, report and images.
    /// `log_lines` logs one line per epoch through `tracing` (for runs without a bar).
    pub fn run_with(
        &mut self,
        pb: &indicatif::ProgressBar,
        log_lines: bool,
        on_eval: &mut dyn FnMut(usize, &EvalReport, &Tensor) -> Result<()>,
    ) -> Result<Vec<(usize, EvalReport)>> {
        let out = self.cfg.out.clone();
        // Rank 0 alone writes (and evaluates, which the others do not wait for until their next
        // exchange); one process is rank 0.
        let writer = self.is_writer();
        let _lock = if writer {
            let lock = crate::run_lock::lock_run_folder(&out)?;
            write_toml(&out.join("config.toml"), &self.cfg)?;
            Some(lock)
        } else {
            None
        };
        let mut evals = Vec::new();
        let do_eval = writer && self.cfg.eval_every > 0 && self.evaluator.set.is_some();
        let mut eval_now = |me: &mut Self| -> Result<()> {
            let (rep, images, seconds) = me.eval_and_log()?;
            if log_lines {
                tracing::info!(
                    "evaluation at epoch {}: {} images sampled and scored in {seconds:.0} s",
                    me.epoch,
                    images.size()[0],
                );
            }
            on_eval(me.epoch, &rep, &images)?;
            pb.inc(1);
            evals.push((me.epoch, rep));
            Ok(())
        };
        if do_eval && self.epoch == 0 {
            pb.set_message("evaluating the base model");
            eval_now(self)?;
        }
        let total = self.cfg.epochs;
        while self.epoch < total {
            let (log, images) = self.step_epoch().map_err(|e| {
                let keep = match self.run_dir.last_checkpoint() {
                    Some(p) => format!("the last good checkpoint is {}", p.display()),
                    None => "no checkpoint was written yet".to_string(),
                };
                e.context(format!(
                    "epoch {} failed, run stopped ({keep})",
                    self.epoch + 1
                ))
            })?;
            let e = self.epoch;
            if writer {
                self.run_dir.append_log(&log)?;
            }
            if writer && self.cfg.sample_every > 0 && e % self.cfg.sample_every == 0 {
                save_grid(
                    &images,
                    self.cfg.images_per_class,
                    &out.join("samples").join(format!("epoch-{e:06}.png")),
                )?;
            }
            pb.inc(1);
            if do_eval && (e % self.cfg.eval_every == 0 || e == total) {
                pb.set_message(format!("evaluating at epoch {e}"));
                eval_now(self)?;
            }
            if (self.cfg.checkpoint_every > 0 && e % self.cfg.checkpoint_every == 0) || e == total {
                if writer {
                    self.save_checkpoint()?;
                }
                // Every rank has this epoch's checkpoint once past here: a rank killed later
                // resumes from the same one as the others.
                if let Some(r) = self.with_dp(|dp| dp.barrier()) {
                    r.with_context(|| format!("after the checkpoint of epoch {e}"))?;
                }
            }
            pb.set_message(format!(
                "epoch {e}/{total}, set reward {:.4}",
                log.set_reward_mean
            ));
            if log_lines && writer {
                tracing::info!(
                    "epoch {e}/{total}: set reward {:.5}, reward {:.5}±{:.5}, kl {:.2e}, clip {:.3}, grad {:.3e}, {:.1} img/s",
                    log.set_reward_mean,
                    log.reward_mean,
                    log.reward_std,
                    log.ppo.approx_kl,
                    log.ppo.clip_fraction,
                    log.ppo.grad_norm,
                    log.images_per_s
                );
            }
        }
        if writer {
            self.export()?;
        }
        Ok(evals)
    }

    /// Writes the trained result into the run folder ([`PolicyModel::export`]); returns what a
    /// user loads next (`out/merged` for the UNet, `out/lora` for Stable Diffusion).
    /// With `policy_ema` the export holds the weights' moving average.
    pub fn export(&self) -> Result<PathBuf> {
        self.with_result_weights(|| self.model.export(&self.cfg))
    }
}

/// Pearson correlation of two equally long series (0 when either is constant).
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let (ma, sa) = mean_std(a);
    let (mb, sb) = mean_std(b);
    if a.is_empty() || sa <= 0.0 || sb <= 0.0 {
        return 0.0;
    }
    let cov = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - ma) * (y - mb))
        .sum::<f64>()
        / a.len() as f64;
    cov / (sa * sb)
}

/// Reads a run's `config.toml` back.
pub fn read_run_config(dir: &Path) -> Result<FinetuneConfig> {
    read_toml(&dir.join("config.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planned_evals_counts_before_and_after() {
        let mut c = FinetuneConfig {
            epochs: 12,
            eval_every: 6,
            ..FinetuneConfig::default()
        };
        assert_eq!(planned_evals(&c), 3);
        c.epochs = 13;
        assert_eq!(planned_evals(&c), 4);
        c.eval_every = 0;
        assert_eq!(planned_evals(&c), 0);
    }
}
