//! The clipped importance-sampling objective of DDPO / PPO over one trajectory step, and the PPO
//! phase of Algorithm 1 built on it ([`ppo_update`], shared by both trainers).
//!
//! With ratio ρ = exp(log π_θ(a|s) − log π_θ_old(a|s)) and advantage A, the loss is
//! `mean(max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)))` (the gradient of `−A·ρ` is the estimator of the
//! paper's eq. 20 for one step).
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

use crate::optim::AdamW;
use crate::rng::SplitMix64;
use crate::sample::Trajectory;
use crate::schedule::{NoiseSchedule, SamplerConfig, StepGaussian};

use super::config::FinetuneConfig;
use super::data_parallel::{accumulate, sum_in_chunk_order, ChunkGrad, DataParallel};
use super::policy::StepBatch;

/// The loss (differentiable) and its diagnostics.
#[derive(Debug)]
pub struct PpoTerms {
    pub loss: Tensor,
    /// `0.5 · mean((log π − log π_old)²)` (DDPO's estimate).
    pub approx_kl: f64,
    /// Share of samples whose ratio left `[1−ε, 1+ε]`.
    pub clip_fraction: f64,
    /// `max |ρ − 1|`.
    pub max_ratio_dev: f64,
}

/// `log_prob`, `old_log_prob`, `advantages`: `[B]`.
pub fn clipped_loss(
    log_prob: &Tensor,
    old_log_prob: &Tensor,
    advantages: &Tensor,
    clip_range: f64,
) -> PpoTerms {
    let diff = log_prob - old_log_prob;
    let ratio = diff.exp();
    let unclipped = -advantages * &ratio;
    let clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range);
    let loss = unclipped.maximum(&clipped).mean(Kind::Float);
    let (approx_kl, clip_fraction, max_ratio_dev) = tch::no_grad(|| {
        let dev = (&ratio - 1.0).abs();
        (
            (diff.square().mean(Kind::Float) * 0.5).double_value(&[]),
            dev.gt(clip_range)
                .to_kind(Kind::Float)
                .mean(Kind::Float)
                .double_value(&[]),
            dev.max().double_value(&[]),
        )
    });
    PpoTerms {
        loss,
        approx_kl,
        clip_fraction,
        max_ratio_dev,
    }
}

/// Diagnostics of one PPO phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PpoStats {
    pub loss: f64,
    pub approx_kl: f64,
    pub clip_fraction: f64,
    /// Mean pre-clipping gradient norm over optimizer steps.
    pub grad_norm: f64,
    /// Mean per-step KL to the base policy (when `kl_coef > 0`).
    pub kl_to_base: f64,
    /// `max |ρ − 1|` over everything computed before the epoch's first optimizer step (0 in exact
    /// arithmetic: the policy has not moved yet).
    pub first_ratio_max_dev: f64,
    pub optimizer_steps: usize,
}

/// What differs between the policies [`ppo_update`] trains: how the Gaussian of stored
/// transitions is recomputed under the current weights.
pub trait StepPolicy {
    /// The Gaussian of each transition of `sb`, differentiable in the trained variables.
    fn gaussian(&self, sb: &StepBatch, sampler: &SamplerConfig) -> StepGaussian;

    /// Runs after every `backward()` of a minibatch loss: a policy with gradient checkpointing
    /// carries the gradient from its recorded outputs into its weights here.
    fn finish_backward(&self) -> Result<()> {
        Ok(())
    }
}

/// The policy side of a PPO phase.
pub struct Replay<'a> {
    /// The trained policy.
    pub policy: &'a dyn StepPolicy,
    /// The frozen base policy of the KL penalty, weighted by `kl_coef`; `None` = no penalty.
    pub base: Option<&'a dyn StepPolicy>,
    /// The noise schedule of the trajectories' timesteps.
    pub sched: &'a NoiseSchedule,
}

/// Algorithm 1, line 6: `inner_epochs` rounds of clipped importance-sampling updates (eq. 20)
/// over the trajectories `traj` with one advantage per trajectory. Each round shuffles the
/// trajectories into minibatches of `train_batch_size` and each trajectory's trainable steps
/// ([`FinetuneConfig::trained_steps`]: all but the final `skip_final_steps`, at most the first
/// `policy_steps`; the others' stored log-probabilities are never read) and trains
/// on the first `timestep_fraction` of them; `grad_accum` minibatches make one optimizer step,
/// with the gradient norm clipped to `max_grad_norm`. Every shuffle draws from `rng`. `epoch`
/// (1-based) only names the epoch in errors.
pub fn ppo_update(
    replay: &Replay<'_>,
    traj: &Trajectory,
    advantages: &[f64],
    cfg: &FinetuneConfig,
    opt: &mut AdamW,
    rng: &mut SplitMix64,
    epoch: usize,
) -> Result<PpoStats> {
    let one_chunk = advantages.len();
    ppo_update_shard(
        replay, traj, advantages, cfg, opt, rng, epoch, one_chunk, None,
    )
}

/// [`ppo_update`] over an epoch sampled in chunks of `chunk` trajectories (sample `i` in chunk
/// `i / chunk`), in one process (`shard` = `None`: `traj` holds the whole epoch) or as one rank
/// of a data-parallel run: `traj` holds the trajectories `local` (indices into the epoch's
/// `advantages`, in `traj`'s order), every rank walks the same minibatches of the whole epoch
/// (the shuffles draw from the same `rng` stream on every rank) and computes the loss of its own
/// members scaled to the whole minibatch. With several chunks each chunk's members of a
/// minibatch are forwarded together and its gradient kept apart; the step's gradient is the
/// chunks' sum in chunk order, gathered from every rank ([`super::data_parallel`]). The
/// statistics are summed over ranks (maximum for `first_ratio_max_dev`).
#[allow(clippy::needless_range_loop)] // j indexes each trajectory's own timestep order
#[allow(clippy::too_many_arguments)]
pub fn ppo_update_shard(
    replay: &Replay<'_>,
    traj: &Trajectory,
    advantages: &[f64],
    cfg: &FinetuneConfig,
    opt: &mut AdamW,
    rng: &mut SplitMix64,
    epoch: usize,
    chunk: usize,
    mut shard: Option<(&[usize], &mut DataParallel)>,
) -> Result<PpoStats> {
    let held = traj.latents.size()[1] as usize;
    let b = advantages.len();
    // Position in `traj` of each of the epoch's trajectories that this process holds.
    let mut at: Vec<Option<usize>> = vec![None; b];
    match &shard {
        None => {
            if b != held {
                bail!("{b} advantages for {held} samples");
            }
            at.iter_mut().enumerate().for_each(|(i, a)| *a = Some(i));
        }
        Some((local, _)) => {
            if local.len() != held {
                bail!("{} local indices for {held} samples", local.len());
            }
            for (pos, &i) in local.iter().enumerate() {
                if i >= b {
                    bail!("local sample {i} of an epoch of {b}");
                }
                at[i] = Some(pos);
            }
        }
    }
    // Trainable transitions: all but the final `skip_final_steps`, at most the first
    // `policy_steps` (see FinetuneConfig::trained_steps).
    let k = cfg.trained_steps(traj.num_steps());
    let n_t = ((cfg.timestep_fraction * k as f64).ceil() as usize).clamp(1, k);
    let device = traj.latents.device();
    let adv = Tensor::from_slice(&advantages.iter().map(|&a| a as f32).collect::<Vec<_>>())
        .to_device(device);
    // With one sampling chunk (one process, `sample_batch_size` 0) the gradients simply
    // accumulate; with several, each chunk's stays apart until the step
    // ([`super::data_parallel`]: the same bits in one process and on any number of ranks).
    let chunk = chunk.max(1);
    let chunked = b > chunk;
    if shard.is_some() && !chunked {
        bail!("a data-parallel PPO phase needs several sampling chunks, the epoch has one");
    }
    let mut st = PpoStats::default();
    let (mut n_terms, mut before_first_step) = (0usize, true);
    for _ in 0..cfg.inner_epochs {
        let mut order: Vec<usize> = (0..b).collect();
        rng.shuffle(&mut order);
        let tperm: Vec<Vec<usize>> = (0..b)
            .map(|_| {
                let mut p: Vec<usize> = (0..k).collect();
                rng.shuffle(&mut p);
                p
            })
            .collect();
        let minibatches: Vec<&[usize]> = order.chunks(cfg.train_batch_size).collect();
        for group in minibatches.chunks(cfg.grad_accum) {
            opt.zero_grad();
            let denom = (n_t * group.len()) as f64;
            // Each sampling chunk's gradient apart, when the epoch has several chunks.
            let mut parts: Vec<ChunkGrad> = Vec::new();
            for mb in group {
                n_terms += n_t;
                // This process's members of the minibatch by sampling chunk (minibatch order
                // within a chunk); each chunk's members are one forward batch.
                let mut by_chunk: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
                for &i in mb.iter().filter(|&&i| at[i].is_some()) {
                    by_chunk.entry(i / chunk).or_default().push(i);
                }
                for (c, mine) in by_chunk {
                    // Their share of the minibatch's mean.
                    let share = mine.len() as f64 / mb.len() as f64;
                    let rows: Vec<usize> = mine.iter().map(|&i| at[i].expect("held")).collect();
                    let mb_idx =
                        Tensor::from_slice(&mine.iter().map(|&i| i as i64).collect::<Vec<_>>())
                            .to_device(device);
                    let a = adv.index_select(0, &mb_idx);
                    for j in 0..n_t {
                        let steps: Vec<usize> = mine.iter().map(|&i| tperm[i][j]).collect();
                        let sb = StepBatch::gather(replay.sched, traj, &rows, &steps);
                        let term = backward_term(replay, &sb, traj, &a, cfg, share, denom, epoch)?;
                        st.add(&term, share, before_first_step);
                    }
                    if chunked {
                        accumulate(&mut parts, ChunkGrad::take(opt, c));
                    }
                }
            }
            if chunked {
                let parts = match shard.as_mut() {
                    Some((_, dp)) => dp
                        .gather_chunk_grads(parts, opt.grad_layout())
                        .with_context(|| format!("epoch {epoch}"))?,
                    None => parts,
                };
                let (values, defined) = sum_in_chunk_order(parts)?;
                opt.set_flat_grads(&values, &defined)?;
            }
            let norm = opt.clip_grad_norm(cfg.max_grad_norm);
            if !norm.is_finite() {
                bail!("non-finite gradient norm at epoch {epoch}");
            }
            opt.step(cfg.lr);
            before_first_step = false;
            st.grad_norm += norm;
            st.optimizer_steps += 1;
        }
    }
    opt.zero_grad();
    if let Some((_, dp)) = shard.as_mut() {
        let sums = dp.sum_f64(&[st.loss, st.approx_kl, st.clip_fraction, st.kl_to_base])?;
        (st.loss, st.approx_kl, st.clip_fraction, st.kl_to_base) =
            (sums[0], sums[1], sums[2], sums[3]);
        st.first_ratio_max_dev = dp.max_f64(&[st.first_ratio_max_dev])?[0];
    }
    let n = n_terms.max(1) as f64;
    st.loss /= n;
    st.approx_kl /= n;
    st.clip_fraction /= n;
    st.kl_to_base /= n;
    st.grad_norm /= st.optimizer_steps.max(1) as f64;
    Ok(st)
}

/// What one term of a minibatch's loss adds to [`PpoStats`].
struct Term {
    /// The term's loss, already scaled by its members' share of the minibatch.
    loss: f64,
    /// The unscaled KL to the base policy (0 without a penalty).
    kl_to_base: f64,
    approx_kl: f64,
    clip_fraction: f64,
    max_ratio_dev: f64,
}

impl PpoStats {
    /// Adds a term whose members are `share` of their minibatch; `before_first_step`: no
    /// optimizer step has been taken yet this phase.
    fn add(&mut self, t: &Term, share: f64, before_first_step: bool) {
        self.loss += t.loss;
        self.kl_to_base += t.kl_to_base * share;
        self.approx_kl += t.approx_kl * share;
        self.clip_fraction += t.clip_fraction * share;
        if before_first_step {
            self.first_ratio_max_dev = self.first_ratio_max_dev.max(t.max_ratio_dev);
        }
    }
}

/// One term of a minibatch's loss, back-propagated into the trained variables: the clipped
/// objective of the transitions `sb` (one timestep of each of some trajectories) with their
/// advantages `a`, plus `kl_coef` × their KL to the base policy, times their `share` of the
/// minibatch; the gradient is that loss over `denom` (the terms of an optimizer step). `epoch`
/// (1-based) only names the epoch in errors.
#[allow(clippy::too_many_arguments)]
fn backward_term(
    replay: &Replay<'_>,
    sb: &StepBatch,
    traj: &Trajectory,
    a: &Tensor,
    cfg: &FinetuneConfig,
    share: f64,
    denom: f64,
    epoch: usize,
) -> Result<Term> {
    let sampler = &traj.sampler;
    let g = replay.policy.gaussian(sb, sampler);
    let lp = g.log_prob(&sb.x_s, sampler.reduction);
    let PpoTerms {
        mut loss,
        approx_kl,
        clip_fraction,
        max_ratio_dev,
    } = clipped_loss(&lp, &sb.old_log_probs(traj), a, cfg.clip_range);
    let mut kl_to_base = 0.0;
    if let Some(base) = replay.base {
        let base_mean = tch::no_grad(|| base.gaussian(sb, sampler).mean);
        let kl = g.kl_to(&base_mean, sampler.reduction).mean(Kind::Float);
        kl_to_base = kl.double_value(&[]);
        loss += kl * cfg.kl_coef;
    }
    if share < 1.0 {
        loss *= share;
    }
    let lv = loss.double_value(&[]);
    if !lv.is_finite() {
        bail!("non-finite PPO loss ({lv}) at epoch {epoch}");
    }
    (loss / denom).backward();
    replay.policy.finish_backward()?;
    Ok(Term {
        loss: lv,
        kl_to_base,
        approx_kl,
        clip_fraction,
        max_ratio_dev,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::AdamWConfig;
    use crate::schedule::{LogProbReduction, ScheduleConfig};
    use std::cell::Cell;
    use tch::{nn::VarStore, Device};

    /// A policy that is no diffusion model (mean `w · x_t`, σ = 0.5, one trained scalar `w`):
    /// [`ppo_update`] needs nothing but [`StepPolicy`]. Counts its `finish_backward` calls.
    struct Scaled {
        vs: VarStore,
        w: Tensor,
        finished: Cell<usize>,
    }

    impl Scaled {
        fn new() -> Self {
            let vs = VarStore::new(Device::Cpu);
            let w = vs.root().var("w", &[1], tch::nn::Init::Const(1.0));
            Self {
                vs,
                w,
                finished: Cell::new(0),
            }
        }
    }

    fn half(mean: Tensor) -> StepGaussian {
        let b = mean.size()[0] as usize;
        StepGaussian::new(mean, &vec![0.5; b])
    }

    impl StepPolicy for Scaled {
        fn gaussian(&self, sb: &StepBatch, _: &SamplerConfig) -> StepGaussian {
            half(&sb.x_t * &self.w)
        }
        fn finish_backward(&self) -> Result<()> {
            if !self.w.grad().defined() {
                bail!("finish_backward ran before backward");
            }
            self.finished.set(self.finished.get() + 1);
            Ok(())
        }
    }

    /// 6 trajectories of 4 steps sampled from `Scaled` at w = 1 (so the first ratios are 1).
    fn trajectory() -> Trajectory {
        let (b, k) = (6, 4);
        let mut rng = SplitMix64(7);
        let mut x = rng.randn(&[b, 1, 2, 2], Device::Cpu);
        let (mut latents, mut log_probs) = (vec![x.shallow_clone()], Vec::new());
        for _ in 0..k {
            let next = &x + rng.randn(&[b, 1, 2, 2], Device::Cpu) * 0.5;
            log_probs.push(half(x.shallow_clone()).log_prob(&next, LogProbReduction::Mean));
            x = next;
            latents.push(x.shallow_clone());
        }
        Trajectory {
            latents: Tensor::stack(&latents, 0),
            timesteps: vec![800, 600, 400, 200, 0],
            log_probs: Tensor::stack(&log_probs, 0),
            classes: Tensor::zeros([b], (Kind::Int64, Device::Cpu)),
            sampler: SamplerConfig::default(),
        }
    }

    fn settings() -> FinetuneConfig {
        FinetuneConfig {
            inner_epochs: 2,
            train_batch_size: 4, // 6 trajectories: minibatches of 4 and 2
            grad_accum: 1,
            timestep_fraction: 0.5, // 2 of 4 steps
            clip_range: 0.2,
            lr: 1e-2,
            ..FinetuneConfig::default()
        }
    }

    const ADV: [f64; 6] = [1.0, -1.0, 0.5, 2.0, -0.3, 0.0];

    /// `ppo_update` of a fresh `Scaled` from RNG state `seed`: stats, final `w`, final RNG state
    /// and the number of `finish_backward` calls.
    fn run(
        cfg: &FinetuneConfig,
        traj: &Trajectory,
        seed: u64,
    ) -> (Result<PpoStats>, f64, u64, usize) {
        let policy = Scaled::new();
        let mut opt = AdamW::new(&policy.vs, AdamWConfig::default());
        let mut rng = SplitMix64(seed);
        let sched = NoiseSchedule::new(&ScheduleConfig::default()).unwrap();
        let replay = Replay {
            policy: &policy,
            base: None,
            sched: &sched,
        };
        let st = ppo_update(&replay, traj, &ADV, cfg, &mut opt, &mut rng, 1);
        (
            st,
            policy.w.double_value(&[0]),
            rng.0,
            policy.finished.get(),
        )
    }

    #[test]
    fn update_is_a_function_of_the_rng_state_with_finite_statistics() {
        let traj = trajectory();
        let cfg = settings();
        let (st, w, rng, finished) = run(&cfg, &traj, 42);
        let st = st.unwrap();
        assert_eq!(st.optimizer_steps, 4); // 2 inner epochs × 2 minibatches
        assert_eq!(
            finished, 8,
            "one finish_backward per minibatch and timestep"
        );
        assert!(st.first_ratio_max_dev < 1e-6, "{}", st.first_ratio_max_dev);
        for v in [st.loss, st.approx_kl, st.clip_fraction, st.grad_norm] {
            assert!(v.is_finite(), "{st:?}");
        }
        assert!(st.grad_norm > 0.0 && w != 1.0, "the policy must move");
        assert_eq!(st.kl_to_base, 0.0);
        // The same RNG state gives the same update, bit for bit; another one other shuffles.
        let (again, w2, rng2, _) = run(&cfg, &traj, 42);
        let again = again.unwrap();
        assert_eq!(
            (
                again.loss,
                again.approx_kl,
                again.clip_fraction,
                again.grad_norm
            ),
            (st.loss, st.approx_kl, st.clip_fraction, st.grad_norm)
        );
        assert_eq!((w2, rng2), (w, rng));
        let (_, _, rng3, _) = run(&cfg, &traj, 43);
        assert_ne!(rng3, rng);
    }

    #[test]
    fn skipped_final_steps_may_hold_nan_log_probs() {
        let traj = trajectory();
        let _ = traj.log_probs.get(3).fill_(f64::NAN);
        let mut cfg = settings();
        cfg.timestep_fraction = 1.0;
        cfg.skip_final_steps = 1;
        let (st, _, _, _) = run(&cfg, &traj, 42);
        assert!(st.unwrap().loss.is_finite());
        cfg.skip_final_steps = 0;
        let e = run(&cfg, &traj, 42).0.unwrap_err().to_string();
        assert_eq!(e, "non-finite PPO loss (NaN) at epoch 1");
    }

    #[test]
    fn advantages_must_match_the_trajectories() {
        let traj = trajectory();
        let policy = Scaled::new();
        let mut opt = AdamW::new(&policy.vs, AdamWConfig::default());
        let sched = NoiseSchedule::new(&ScheduleConfig::default()).unwrap();
        let replay = Replay {
            policy: &policy,
            base: None,
            sched: &sched,
        };
        let e = ppo_update(
            &replay,
            &traj,
            &ADV[..5],
            &settings(),
            &mut opt,
            &mut SplitMix64(0),
            1,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "5 advantages for 6 samples");
    }

    #[test]
    fn ratio_one_gives_minus_mean_advantage_and_its_gradient() {
        let lp = Tensor::from_slice(&[-1.0f32, -2.0, -3.0]).set_requires_grad(true);
        let adv = Tensor::from_slice(&[1.0f32, -2.0, 0.5]);
        let t = clipped_loss(&lp, &lp.detach(), &adv, 1e-4);
        assert!((t.loss.double_value(&[]) - (0.5 / 3.0)).abs() < 1e-6);
        assert_eq!(t.max_ratio_dev, 0.0);
        assert_eq!(t.clip_fraction, 0.0);
        t.loss.backward();
        let g: Vec<f32> = Vec::try_from(&lp.grad()).unwrap();
        // d/dlp of −A·exp(lp − old) at lp = old is −A / B.
        for (gi, a) in g.iter().zip([1.0f32, -2.0, 0.5]) {
            assert!((gi + a / 3.0).abs() < 1e-6);
        }
    }

    #[test]
    fn clipping_stops_the_gradient_outside_the_trust_region() {
        // Positive advantage, ratio far above 1 + ε: the clipped term wins, no gradient.
        let lp = Tensor::from_slice(&[0.5f32]).set_requires_grad(true);
        let old = Tensor::from_slice(&[0.0f32]);
        let adv = Tensor::from_slice(&[1.0f32]);
        let t = clipped_loss(&lp, &old, &adv, 0.1);
        assert_eq!(t.clip_fraction, 1.0);
        t.loss.backward();
        assert_eq!(lp.grad().double_value(&[0]), 0.0);
    }
}
