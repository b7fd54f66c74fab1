//! The RL fine-tuning loop on a tiny UNet and 8×8 images: PPO invariants, the PPO phase against
//! a hand-written clipped step, gradient coverage, the NaN guard, exports, and a toy problem with
//! a known optimum.
mod common;

use std::cell::Cell;
use std::collections::BTreeMap;

use common::tiny_cfg;
use divrl::checkpoint::{load_model, BaseConfig, LoadedModel};
use divrl::features::pixels::PixelExtractor;
use divrl::features::{Extracted, Extractor};
use divrl::models::unet::UNet;
use divrl::rl::policy::StepBatch;
use divrl::rl::ppo::clipped_loss;
use divrl::rl::{FinetuneConfig, Finetuner};
use divrl::sample::recompute_log_prob;
use divrl::schedule::{LogProbReduction, NoiseSchedule, ScheduleConfig, StepGaussian};
use divrl_reward::{Features, RewardKind};
use tch::{nn::VarStore, Device, Kind, Tensor};

fn tiny_model(seed: i64) -> LoadedModel {
    let config = BaseConfig {
        model: tiny_cfg(),
        ..Default::default()
    };
    let (mut vs, unet) = divrl::rng::with_torch_seed(seed, || {
        let vs = VarStore::new(Device::Cpu);
        let unet = UNet::new(&vs.root(), &config.model).unwrap();
        (vs, unet)
    });
    vs.freeze();
    let sched = NoiseSchedule::new(&ScheduleConfig::default()).unwrap();
    LoadedModel {
        vs,
        unet,
        sched,
        config,
    }
}

fn tiny_run_cfg(out: &std::path::Path) -> FinetuneConfig {
    FinetuneConfig {
        out: out.to_path_buf(),
        images_per_class: 4,
        steps: 6,
        guidance: 2.0,
        epochs: 3,
        train_batch_size: 4,
        checkpoint_every: 1,
        sample_every: 0,
        device: "cpu".into(),
        threads: 1,
        ..Default::default()
    }
}

/// Two reference modes per class in pixel space: all-dark and all-bright 8×8 images.
fn two_mode_refs(dim: usize, classes: i64) -> BTreeMap<i64, Features> {
    (0..classes)
        .map(|c| {
            let rows: Vec<Vec<f64>> = (0..12)
                .map(|i| {
                    let base = if i % 2 == 0 { 0.1 } else { 0.9 };
                    (0..dim)
                        .map(|j| base + 0.02 * (((i * 7 + j * 3) % 5) as f64 - 2.0))
                        .collect()
                })
                .collect();
            (c, Features::from_rows("refs", &rows).unwrap())
        })
        .collect()
}

fn pixels() -> Box<dyn Extractor> {
    Box::new(PixelExtractor::new(8, 1).unwrap())
}

/// Standard-normal test inputs from a seeded SplitMix64, not libtorch's global generator: the
/// tests of this file run in parallel threads, and a global draw during another test's seeded
/// model initialisation ([`divrl::rng::with_torch_seed`]) would change that model's weights.
fn noise(shape: &[i64], seed: u64) -> Tensor {
    divrl::rng::SplitMix64(seed).randn(shape, Device::Cpu)
}

fn snapshot(vs: &VarStore) -> BTreeMap<String, Tensor> {
    vs.variables()
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy()))
        .collect()
}

fn max_change(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> f64 {
    a.iter()
        .map(|(n, t)| (t - &b[n]).abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

#[test]
fn replayed_log_probs_match_and_first_ratio_is_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_run_cfg(dir.path());
    let mut ft = Finetuner::new(cfg, tiny_model(1), pixels(), two_mode_refs(64, 3), None).unwrap();
    let roll = ft.sample_rollout().unwrap();
    let traj = &roll.traj;
    let b = roll.conditions.len();
    // Per-sample replay at mixed steps = the sampler's stored log-probs = helper's replay.
    let samples: Vec<usize> = (0..b).collect();
    let steps: Vec<usize> = (0..b).map(|i| (i * 5) % traj.num_steps()).collect();
    let sb = StepBatch::gather(&ft.model.sched, traj, &samples, &steps);
    let g = tch::no_grad(|| sb.gaussian(&ft.model.unet, &traj.sampler));
    let lp = g.log_prob(&sb.x_s, traj.sampler.reduction);
    let old = sb.old_log_probs(traj);
    assert!(common::max_abs_diff(&lp, &old) < 1e-5);
    let k = 2;
    let theirs = tch::no_grad(|| recompute_log_prob(&ft.model.unet, &ft.model.sched, traj, k));
    assert!(common::max_abs_diff(&theirs, &traj.log_probs.get(k as i64)) < 1e-5);

    let adv: Vec<f64> = (0..b)
        .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    let st = ft.ppo_update(&roll, &adv).unwrap();
    assert!(st.first_ratio_max_dev < 1e-5, "{}", st.first_ratio_max_dev);
    assert!(st.optimizer_steps >= 1);
    assert!(st.grad_norm > 0.0);
}

#[test]
fn zero_advantages_leave_weights_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_run_cfg(dir.path());
    cfg.weight_decay = 0.0; // decoupled decay moves weights whatever the reward
    cfg.kl_coef = 0.0;
    for full in [false, true] {
        cfg.full_finetune = full;
        let mut ft = Finetuner::new(
            cfg.clone(),
            tiny_model(2),
            pixels(),
            two_mode_refs(64, 3),
            None,
        )
        .unwrap();
        let roll = ft.sample_rollout().unwrap();
        let (t0, b0) = (snapshot(ft.trainable()), snapshot(&ft.model.vs));
        ft.ppo_update(&roll, &vec![0.0; roll.conditions.len()])
            .unwrap();
        assert_eq!(max_change(&t0, &snapshot(ft.trainable())), 0.0);
        assert_eq!(max_change(&b0, &snapshot(&ft.model.vs)), 0.0);
        // Non-zero advantages do move them (so the check above can fail).
        let adv: Vec<f64> = (0..roll.conditions.len())
            .map(|i| (i as f64) - 5.0)
            .collect();
        ft.ppo_update(&roll, &adv).unwrap();
        assert!(max_change(&t0, &snapshot(ft.trainable())) > 0.0);
        if !full {
            assert_eq!(
                max_change(&b0, &snapshot(&ft.model.vs)),
                0.0,
                "base must stay frozen"
            );
        }
    }
}

#[test]
fn every_lora_parameter_gets_a_gradient_and_the_base_none() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_run_cfg(dir.path());
    let mut ft = Finetuner::new(cfg, tiny_model(3), pixels(), two_mode_refs(64, 3), None).unwrap();
    let roll = ft.sample_rollout().unwrap();
    let b = roll.conditions.len();
    let adv: Vec<f64> = (0..b).map(|i| (i % 3) as f64 - 1.0).collect();
    // One update first: lora_b starts at zero, so lora_a has no gradient until B moves.
    ft.ppo_update(&roll, &adv).unwrap();
    let samples: Vec<usize> = (0..b).collect();
    let steps: Vec<usize> = (0..b).map(|i| i % roll.traj.num_steps()).collect();
    let sb = StepBatch::gather(&ft.model.sched, &roll.traj, &samples, &steps);
    let g = sb.gaussian(&ft.model.unet, &roll.traj.sampler);
    let lp = g.log_prob(&sb.x_s, roll.traj.sampler.reduction);
    let a = Tensor::from_slice(&adv.iter().map(|&x| x as f32).collect::<Vec<_>>());
    clipped_loss(&lp, &sb.old_log_probs(&roll.traj), &a, 1.0)
        .loss
        .backward();
    let lora = ft.trainable().variables();
    assert!(!lora.is_empty());
    for (n, t) in &lora {
        let g = t.grad();
        assert!(g.defined(), "{n} has no gradient");
        assert!(
            g.abs().sum(Kind::Float).double_value(&[]) > 0.0,
            "{n} has a zero gradient"
        );
    }
    for (n, t) in ft.model.vs.variables() {
        assert!(!t.requires_grad(), "base variable {n} is trainable");
        assert!(!t.grad().defined(), "base variable {n} got a gradient");
    }
}

/// ϕ that turns NaN on its `bad_from`-th call.
struct NanAfter {
    inner: PixelExtractor,
    calls: Cell<usize>,
    bad_from: usize,
}
impl Extractor for NanAfter {
    fn name(&self) -> &str {
        "nan-after"
    }
    fn fingerprint(&self) -> &str {
        "nan-after"
    }
    fn dim(&self) -> i64 {
        self.inner.dim()
    }
    fn default_batch(&self) -> usize {
        1000
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn forward(&self, images: &Tensor) -> anyhow::Result<Extracted> {
        let n = self.calls.get() + 1;
        self.calls.set(n);
        let mut out = self.inner.forward(images)?;
        if n >= self.bad_from {
            out.features = out.features.fill_(f64::NAN);
        }
        Ok(out)
    }
}

#[test]
fn nan_reward_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_run_cfg(dir.path());
    cfg.epochs = 5;
    let phi = NanAfter {
        inner: PixelExtractor::new(8, 1).unwrap(),
        calls: Cell::new(0),
        bad_from: 3,
    };
    let mut ft = Finetuner::new(
        cfg.clone(),
        tiny_model(4),
        Box::new(phi),
        two_mode_refs(64, 3),
        None,
    )
    .unwrap();
    let err = format!("{:#}", ft.run(false).unwrap_err());
    assert!(err.contains("non-finite"), "{err}");
    assert!(err.contains("epoch 3"), "{err}");
    assert!(err.contains("epoch-000002"), "{err}");
    let ck = dir.path().join("checkpoints");
    assert_eq!(
        std::fs::read_to_string(ck.join("latest")).unwrap(),
        "epoch-000002"
    );
    assert!(!ck.join("epoch-000003").exists());
    assert!(
        !dir.path().join("merged").exists(),
        "no export after a failed run"
    );
    // The log stops at the last good epoch, and the checkpoint resumes.
    let log = std::fs::read_to_string(dir.path().join("log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2);
    let mut again =
        Finetuner::new(cfg, tiny_model(4), pixels(), two_mode_refs(64, 3), None).unwrap();
    assert!(again.resume().unwrap());
    assert_eq!(again.epoch, 2);
}

#[test]
fn merged_export_equals_the_adapted_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_run_cfg(dir.path());
    cfg.epochs = 2;
    cfg.lr = 1e-2;
    let mut ft = Finetuner::new(cfg, tiny_model(5), pixels(), two_mode_refs(64, 3), None).unwrap();
    ft.run(false).unwrap();
    assert!(dir.path().join("lora.safetensors").exists());
    let merged = load_model(&dir.path().join("merged"), Device::Cpu, true).unwrap();
    let x = noise(&[3, 1, 8, 8], 1);
    let t = Tensor::from_slice(&[10i64, 500, 900]);
    let c = Tensor::from_slice(&[0i64, 1, 3]);
    let a = tch::no_grad(|| ft.model.unet.forward(&x, &t, &c));
    let b = tch::no_grad(|| merged.unet.forward(&x, &t, &c));
    let base = tch::no_grad(|| tiny_model(5).unet.forward(&x, &t, &c));
    assert!(common::max_abs_diff(&a, &b) < 1e-4);
    assert!(
        common::max_abs_diff(&a, &base) > 1e-6,
        "the adapters must have moved"
    );
}

/// `divrl sample --adapters RUN` draws from the policy the run trained: with `policy_steps` the
/// adapted ε at the noise levels of the run's first steps and the base's below them; without,
/// the same ε as the run's merged checkpoint.
#[test]
fn a_runs_adapters_on_its_base_are_the_trained_policy() {
    use divrl::checkpoint::{CONFIG_FILE, EMA_FILE};
    use divrl::rl::AdaptedModel;
    use divrl::schedule::EpsModel;
    let dir = tempfile::tempdir().unwrap();
    let base_dir = dir.path().join("base");
    std::fs::create_dir_all(&base_dir).unwrap();
    let base = tiny_model(21);
    divrl::config::write_toml(&base_dir.join(CONFIG_FILE), &base.config).unwrap();
    let vars: Vec<(String, Tensor)> = base.vs.variables().into_iter().collect();
    divrl::config::write_safetensors_atomic(&base_dir.join(EMA_FILE), &vars).unwrap();
    let x = noise(&[4, 1, 8, 8], 2);
    let c = Tensor::from_slice(&[0i64, 1, 3, 2]);
    let eps = |m: &dyn EpsModel, t: i64| {
        tch::no_grad(|| m.eps(&x, &Tensor::full([4], t, (Kind::Int64, Device::Cpu)), &c))
    };
    for policy_steps in [2usize, 0] {
        let run = dir.path().join(format!("run-{policy_steps}"));
        let mut cfg = tiny_run_cfg(&run);
        cfg.epochs = 2;
        cfg.lr = 1e-2;
        cfg.policy_steps = policy_steps;
        let mut ft = Finetuner::new(
            cfg.clone(),
            tiny_model(21),
            pixels(),
            two_mode_refs(64, 3),
            None,
        )
        .unwrap();
        ft.run(false).unwrap();
        let a = AdaptedModel::load(&base_dir, &run, Device::Cpu, true).unwrap();
        assert_eq!(a.policy_steps, policy_steps);
        let ts = ft.model.sched.sampling_timesteps(cfg.steps).unwrap();
        if policy_steps > 0 {
            let t_min = ts[policy_steps - 1];
            assert_eq!(a.gate_t_min(), Some(t_min));
            for t in [ts[0], t_min] {
                assert_eq!(
                    common::max_abs_diff(&eps(&a, t), &eps(&ft.model.unet, t)),
                    0.0
                );
                assert!(
                    common::max_abs_diff(&eps(&a, t), &eps(&base.unet, t)) > 1e-6,
                    "adapters moved"
                );
            }
            for t in [ts[policy_steps], 1] {
                assert_eq!(common::max_abs_diff(&eps(&a, t), &eps(&base.unet, t)), 0.0);
            }
        } else {
            assert_eq!(a.gate_t_min(), None);
            let merged = load_model(&run.join("merged"), Device::Cpu, true).unwrap();
            for t in [ts[0], ts[3], 1] {
                assert!(common::max_abs_diff(&eps(&a, t), &eps(&merged.unet, t)) < 1e-4);
                assert!(common::max_abs_diff(&eps(&a, t), &eps(&base.unet, t)) > 1e-6);
            }
        }
    }
    let err = AdaptedModel::load(&base_dir, &base_dir, Device::Cpu, true)
        .err()
        .unwrap();
    assert!(
        format!("{err:#}").contains("not a fine-tuning run"),
        "{err:#}"
    );
    // A full fine-tuning run has merged/ and no adapters: the error points at merged/.
    let full = dir.path().join("run-0");
    std::fs::remove_file(full.join("lora.safetensors")).unwrap();
    let err = AdaptedModel::load(&base_dir, &full, Device::Cpu, true)
        .err()
        .unwrap();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("a full fine-tuning run")
            && msg.contains("--checkpoint")
            && msg.contains("merged"),
        "{msg}"
    );
}

/// Mean intensity as a 1-d ϕ: the references sit in two modes (dark, bright).
struct MeanIntensity;
impl Extractor for MeanIntensity {
    fn name(&self) -> &str {
        "mean"
    }
    fn fingerprint(&self) -> &str {
        "mean"
    }
    fn dim(&self) -> i64 {
        1
    }
    fn default_batch(&self) -> usize {
        1000
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn forward(&self, images: &Tensor) -> anyhow::Result<Extracted> {
        Ok(Extracted {
            features: images
                .mean_dim(&[1i64, 2, 3][..], false, Kind::Float)
                .view([-1, 1]),
            logits: None,
        })
    }
}

#[test]
fn toy_policy_spreads_towards_two_reference_modes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = FinetuneConfig {
        out: dir.path().to_path_buf(),
        classes: vec![0],
        images_per_class: 8,
        steps: 5,
        guidance: 1.0,
        epochs: 24,
        inner_epochs: 2,
        train_batch_size: 8,
        clip_range: 0.2,
        lr: 2e-3,
        full_finetune: true,
        reward: RewardKind::Mmd,
        tracker_min_count: 1000, // batch statistics: one condition
        checkpoint_every: 0,
        sample_every: 0,
        device: "cpu".into(),
        threads: 1,
        ..Default::default()
    };
    let refs = two_mode_refs(1, 3);
    let mut ft = Finetuner::new(cfg, tiny_model(6), Box::new(MeanIntensity), refs, None).unwrap();
    let mut r = Vec::new();
    for _ in 0..24 {
        r.push(ft.step_epoch().unwrap().0.set_reward_mean);
    }
    let third = |i: usize| r[i * 8..(i + 1) * 8].iter().sum::<f64>() / 8.0;
    eprintln!(
        "set rewards by thirds: {} {} {}",
        third(0),
        third(1),
        third(2)
    );
    eprintln!("{r:?}");
    assert!(third(0) < third(1) && third(1) < third(2), "{r:?}");
}

#[test]
fn kl_to_base_is_zero_until_the_policy_moves() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_run_cfg(dir.path());
    cfg.kl_coef = 0.5;
    cfg.lr = 1e-2;
    cfg.train_batch_size = 12; // one optimizer step per update
    let mut ft = Finetuner::new(cfg, tiny_model(7), pixels(), two_mode_refs(64, 3), None).unwrap();
    let roll = ft.sample_rollout().unwrap();
    let adv: Vec<f64> = (0..roll.conditions.len())
        .map(|i| (i % 4) as f64 - 1.5)
        .collect();
    // Zero-initialised adapters: the policy is the base, exactly.
    let first = ft.ppo_update(&roll, &adv).unwrap();
    assert_eq!(first.kl_to_base, 0.0);
    let second = ft.ppo_update(&roll, &adv).unwrap();
    assert!(second.kl_to_base > 0.0 && second.kl_to_base.is_finite());
}

#[test]
fn skipped_final_steps_are_never_trained() {
    // Poison the stored log-probs of the last transition: training on it gives a NaN loss, so
    // the update succeeds only if that step is skipped (timestep_fraction 1 trains all others).
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_run_cfg(dir.path());
    cfg.timestep_fraction = 1.0;
    for skip in [1usize, 0] {
        cfg.skip_final_steps = skip;
        let mut ft = Finetuner::new(
            cfg.clone(),
            tiny_model(3),
            pixels(),
            two_mode_refs(64, 3),
            None,
        )
        .unwrap();
        let roll = ft.sample_rollout().unwrap();
        let last = roll.traj.num_steps() as i64 - 1;
        let _ = roll.traj.log_probs.get(last).fill_(f64::NAN);
        let adv: Vec<f64> = (0..roll.conditions.len())
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let r = ft.ppo_update(&roll, &adv);
        if skip == 1 {
            let st = r.unwrap();
            assert!(st.loss.is_finite() && st.grad_norm > 0.0);
        } else {
            let e = r.unwrap_err().to_string();
            assert!(e.contains("non-finite PPO loss"), "{e}");
        }
    }
    cfg.skip_final_steps = cfg.steps;
    assert!(cfg.validate().is_err());
}

#[test]
#[allow(clippy::needless_range_loop)] // j indexes each trajectory's own timestep order
fn ppo_update_equals_a_hand_written_clipped_step() {
    // One optimizer step: 12 trajectories in 2 accumulated minibatches of 6, 2 of the 5 trainable
    // steps each, with the KL penalty and a gradient clip that acts.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_run_cfg(dir.path());
    cfg.inner_epochs = 1;
    cfg.train_batch_size = 6;
    cfg.grad_accum = 2;
    cfg.skip_final_steps = 1;
    cfg.timestep_fraction = 0.3; // ceil(0.3 · 5) = 2 steps
    cfg.kl_coef = 0.5;
    cfg.lr = 1e-2;
    cfg.max_grad_norm = 1e-3;
    let make = || {
        Finetuner::new(
            cfg.clone(),
            tiny_model(8),
            pixels(),
            two_mode_refs(64, 3),
            None,
        )
        .unwrap()
    };
    let (mut ours, mut hand, mut chunked) = (make(), make(), make());
    let mut roll = ours.sample_rollout().unwrap();
    let _ = chunked.sample_rollout().unwrap(); // the same RNG state
    let same = hand.sample_rollout().unwrap(); // and the same RNG state
    assert_eq!(
        common::max_abs_diff(&roll.traj.latents, &same.traj.latents),
        0.0
    );
    let b = roll.conditions.len();
    assert_eq!(b, 12);
    let adv: Vec<f64> = (0..b).map(|i| ((i * 5) % 7) as f64 - 2.5).collect();
    // A first update moves both policies away from the base (so the ratios and the KL matter),
    // the same way: the update is a function of the seed.
    let (s1, s2) = (
        ours.ppo_update(&roll, &adv).unwrap(),
        hand.ppo_update(&roll, &adv).unwrap(),
    );
    assert_eq!(format!("{s1:?}"), format!("{s2:?}"));
    chunked.ppo_update(&roll, &adv).unwrap();
    assert!(s1.loss.is_finite() && s1.grad_norm.is_finite() && s1.approx_kl.is_finite());
    assert_eq!(ours.rng.0, hand.rng.0);
    assert_eq!(
        max_change(&snapshot(ours.trainable()), &snapshot(hand.trainable())),
        0.0
    );

    let st = ours.ppo_update(&roll, &adv).unwrap();

    // By hand: the same draws (trajectory order, then each trajectory's step order), the clipped
    // loss and the KL to the base written out, gradients accumulated over the 4 terms.
    let (k, n_t) = (roll.traj.num_steps() - 1, 2);
    let mut rng = hand.rng.clone();
    let mut order: Vec<usize> = (0..b).collect();
    rng.shuffle(&mut order);
    let tperm: Vec<Vec<usize>> = (0..b)
        .map(|_| {
            let mut p: Vec<usize> = (0..k).collect();
            rng.shuffle(&mut p);
            p
        })
        .collect();
    let base = tiny_model(8); // the frozen base: the same weights without the adapters
    let sampler = &roll.traj.sampler;
    assert_eq!(sampler.reduction, LogProbReduction::Mean);
    let eps = cfg.clip_range;
    let before = snapshot(hand.trainable());
    hand.opt.zero_grad();
    let (mut loss_sum, mut kl_sum, mut clipped, mut terms) = (0.0, 0.0, 0.0, 0.0);
    for mb in order.chunks(cfg.train_batch_size) {
        let a = Tensor::from_slice(&mb.iter().map(|&i| adv[i] as f32).collect::<Vec<_>>());
        for j in 0..n_t {
            let steps: Vec<usize> = mb.iter().map(|&i| tperm[i][j]).collect();
            let sb = StepBatch::gather(&hand.model.sched, &roll.traj, mb, &steps);
            let g = sb.gaussian(&hand.model.unet, sampler);
            let lp = g.log_prob(&sb.x_s, sampler.reduction);
            let ratio = (lp - sb.old_log_probs(&roll.traj)).exp();
            let surrogate = (-&a * &ratio)
                .maximum(&(-&a * ratio.clamp(1.0 - eps, 1.0 + eps)))
                .mean(Kind::Float);
            clipped += tch::no_grad(|| {
                (&ratio - 1.0)
                    .abs()
                    .gt(eps)
                    .to_kind(Kind::Float)
                    .mean(Kind::Float)
                    .double_value(&[])
            });
            let base_mean = tch::no_grad(|| sb.gaussian(&base.unet, sampler).mean);
            let kl = ((&g.mean - base_mean) / &g.std)
                .square()
                .mean_dim(&[1i64, 2, 3][..], false, Kind::Float)
                .mean(Kind::Float)
                * 0.5;
            let loss = surrogate + &kl * cfg.kl_coef;
            loss_sum += loss.double_value(&[]);
            kl_sum += kl.double_value(&[]);
            terms += 1.0;
            (loss / (n_t * 2) as f64).backward();
        }
    }
    let norm = hand.opt.clip_grad_norm(cfg.max_grad_norm);
    hand.opt.step(cfg.lr);
    hand.opt.zero_grad();

    assert_eq!(terms, 4.0);
    assert_eq!(st.optimizer_steps, 1);
    assert_eq!(ours.rng.0, rng.0, "the same number of draws");
    assert!(norm > cfg.max_grad_norm, "the clip must act ({norm})");
    assert!(
        (st.grad_norm - norm).abs() <= 1e-6 * norm,
        "{} vs {norm}",
        st.grad_norm
    );
    assert!(
        (st.loss - loss_sum / terms).abs() <= 1e-6,
        "{} vs {}",
        st.loss,
        loss_sum / terms
    );
    assert!(st.kl_to_base > 0.0);
    assert!((st.kl_to_base - kl_sum / terms).abs() <= 1e-9 + 1e-6 * st.kl_to_base);
    assert!((st.clip_fraction - clipped / terms).abs() <= 1e-9);
    assert!(st.clip_fraction > 0.0 && st.clip_fraction < 1.0, "{st:?}");
    let moved = max_change(&before, &snapshot(hand.trainable()));
    let diff = max_change(&snapshot(ours.trainable()), &snapshot(hand.trainable()));
    assert!(moved > 0.0);
    assert!(
        diff <= 1e-6 * moved,
        "the updates differ by {diff} (step {moved})"
    );

    // The second update on an epoch sampled in 3 chunks of 4: each chunk's members of a
    // minibatch are forwarded together (batches of 4 and 2 instead of 6) and the chunks'
    // gradients added in chunk order (how ranks split an epoch) — the same gradient up to float
    // summation (its norm to 1e-5: a chunk counted twice, left out or mis-scaled would show
    // here). The weights agree to 1e-3 of the step: this is the first step with a non-zero
    // gradient for LoRA's A (B was zero before the first update), and Adam's per-coordinate
    // normalisation turns last-bit differences of its near-zero entries into ~1e-4 of the step.
    roll.chunk = 4;
    let st4 = chunked.ppo_update(&roll, &adv).unwrap();
    assert_eq!(chunked.rng.0, ours.rng.0);
    let diff4 = max_change(&snapshot(chunked.trainable()), &snapshot(hand.trainable()));
    assert!(
        diff4 <= 1e-3 * moved,
        "chunked updates differ by {diff4} (step {moved})"
    );
    assert!(
        (st4.grad_norm - norm).abs() <= 1e-5 * norm,
        "gradient norm {} vs {norm}",
        st4.grad_norm
    );
    assert!((st4.loss - st.loss).abs() <= 1e-6);
    assert!(
        (st4.clip_fraction - st.clip_fraction).abs() <= 1e-6,
        "{st4:?} vs {st:?}"
    );
}

#[test]
fn each_generated_set_is_scored_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_run_cfg(dir.path());
    cfg.sets_per_class = 2;
    cfg.reward = RewardKind::GpMi;
    let refs = two_mode_refs(64, 3);
    let ft = Finetuner::new(cfg, tiny_model(11), pixels(), refs.clone(), None).unwrap();
    let mut ft = ft;
    let roll = ft.sample_rollout().unwrap();
    assert_eq!(roll.conditions.len(), 3 * 2 * 4);
    assert_eq!(roll.sets.len(), roll.conditions.len());
    let scores = ft.score(&roll, &roll.traj.images()).unwrap();
    // Recompute every set by hand: its 4 images' features against its class's references.
    let (feats, _) = ft.features(&roll.traj.images()).unwrap();
    let all = divrl::features::to_features("f", &feats).unwrap();
    let spec = divrl_reward::RewardSpec::new(RewardKind::GpMi);
    for c in 0..3i64 {
        let reward = divrl_reward::DiversityReward::new(&spec, refs[&c].clone()).unwrap();
        let mut set_sum = 0.0;
        for s in 0..2 {
            let idx: Vec<usize> = (0..roll.sets.len())
                .filter(|&i| roll.sets[i] == (c as usize) * 2 + s)
                .collect();
            assert_eq!(idx.len(), 4);
            assert!(idx.iter().all(|&i| roll.conditions[i] == c));
            let out = reward.evaluate(&all.select_rows(&idx)).unwrap();
            for (j, &i) in idx.iter().enumerate() {
                assert!((scores.rewards[i] - out.individual[j]).abs() < 1e-12);
            }
            set_sum += out.set_reward;
        }
        assert!((scores.set_rewards[&c] - set_sum / 2.0).abs() < 1e-12);
    }
    // One set of 8 would give other per-image rewards: the sets really are separate.
    let idx: Vec<usize> = (0..8).collect();
    let reward = divrl_reward::DiversityReward::new(&spec, refs[&0].clone()).unwrap();
    let joint = reward.evaluate(&all.select_rows(&idx)).unwrap();
    assert!((joint.individual[0] - scores.rewards[0]).abs() > 1e-9);
}

#[test]
fn diagnostics_do_not_change_training_and_chain_across_epochs() {
    let run = |diagnostics: bool| {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = tiny_run_cfg(dir.path());
        cfg.diagnostics = diagnostics;
        cfg.full_finetune = true;
        cfg.clip_range = 0.2;
        cfg.lr = 1e-3;
        let mut ft =
            Finetuner::new(cfg, tiny_model(12), pixels(), two_mode_refs(64, 3), None).unwrap();
        let logs: Vec<_> = (0..2).map(|_| ft.step_epoch().unwrap().0).collect();
        (snapshot(ft.trainable()), logs)
    };
    let (w_plain, plain) = run(false);
    let (w_diag, diag) = run(true);
    assert_eq!(
        max_change(&w_plain, &w_diag),
        0.0,
        "diagnostics moved the weights"
    );
    assert!(plain.iter().all(|l| l.diagnostics.is_none()));
    let d: Vec<_> = diag
        .iter()
        .map(|l| l.diagnostics.clone().unwrap())
        .collect();
    // The fixed noise is the same every epoch: after epoch 1 = before epoch 2.
    assert_eq!(d[0].fixed_set_reward_after, d[1].fixed_set_reward_before);
    for x in &d {
        assert!((-1.0..=1.0).contains(&x.adv_logp_corr), "{x:?}");
        assert!(x.logp_change_abs_mean > 0.0, "{x:?}");
        // A policy-gradient step makes the images with positive advantages more likely.
        assert!(x.adv_logp_corr > 0.2, "{x:?}");
    }
}

#[test]
fn evaluation_reports_an_independent_space_and_pixel_spread() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_run_cfg(dir.path());
    // Held-out "real" images: per class, a dark and a bright 8×8 image.
    let real = Tensor::cat(
        &[
            Tensor::full([3, 1, 8, 8], 0.2, (Kind::Float, Device::Cpu)),
            Tensor::full([3, 1, 8, 8], 0.8, (Kind::Float, Device::Cpu)),
        ],
        0,
    );
    let labels: Vec<i64> = vec![0, 1, 2, 0, 1, 2];
    let phi_real = pixels().forward(&real).unwrap().features;
    let ind = Box::new(PixelExtractor::new(4, 1).unwrap());
    let ind_real = ind.forward(&real).unwrap().features;
    let eval = divrl::rl::evaluator::EvalSet {
        features: phi_real,
        attribute: None,
        independent: Some((ind, ind_real)),
        pixels: Some((
            divrl::rl::evaluator::pixel_rows(&real, false).unwrap(),
            labels,
        )),
    };
    let ft = Finetuner::new(
        cfg,
        tiny_model(13),
        pixels(),
        two_mode_refs(64, 3),
        Some(eval),
    )
    .unwrap();
    let images = ft.eval_images(4, 2.0).unwrap();
    let r = ft.evaluate_images(&images).unwrap();
    let ind = r.independent.as_ref().expect("independent space");
    assert_eq!(ind.dim, 16);
    assert_eq!(r.dim, 64);
    let w = r.pixel_within_class.as_ref().expect("pixel spread");
    assert_eq!(w.classes, 3);
    // Real spread per class: |0.8 - 0.2| · 8 over 64 pixels = 4.8.
    assert!((w.real - 4.8).abs() < 1e-5, "{w:?}");
    assert!(w.generated > 0.0 && w.ratio > 0.0 && w.ratio.is_finite());
}

/// `eval_steps`: the held-out evaluation samples with its own step count from the same
/// evaluation noise: a 6-step run with `eval_steps = 9` evaluates exactly as a 9-step run does.
#[test]
fn eval_steps_set_the_evaluation_samplers_step_count() {
    let dir = tempfile::tempdir().unwrap();
    let images = |steps: usize, eval_steps: usize| {
        let mut cfg = tiny_run_cfg(dir.path());
        cfg.steps = steps;
        cfg.eval_steps = eval_steps;
        let ft = Finetuner::new(cfg, tiny_model(13), pixels(), two_mode_refs(64, 3), None).unwrap();
        ft.eval_images(2, 2.0).unwrap()
    };
    let six = images(6, 0);
    let nine = images(9, 0);
    let six_eval_nine = images(6, 9);
    assert_eq!(six_eval_nine.size(), vec![6, 1, 8, 8]);
    assert!(
        six_eval_nine.equal(&nine),
        "eval_steps 9 = a 9-step run's evaluation"
    );
    let d = (&six - &nine).abs().max().double_value(&[]);
    assert!(d > 1e-4, "6 and 9 steps draw different images ({d})");
}

/// `policy_steps`: the adapters act on the first steps only; the later steps are exactly the
/// frozen base's; sampling and replay agree (ratio 1 on policy); only the first steps train, and
/// every adapter weight gets a gradient through them.
#[test]
fn policy_steps_gate_the_adapters_to_the_first_steps() {
    use divrl::rl::step_gate::StepGated;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_run_cfg(dir.path());
    cfg.policy_steps = 2;
    cfg.epochs = 1;
    cfg.weight_decay = 0.0;
    assert_eq!(cfg.trained_steps(6), 2);
    assert_eq!(
        FinetuneConfig {
            policy_steps: 0,
            ..cfg.clone()
        }
        .trained_steps(6),
        6
    );
    assert_eq!(
        FinetuneConfig {
            skip_final_steps: 5,
            ..cfg.clone()
        }
        .trained_steps(6),
        1
    );
    for bad in [
        FinetuneConfig {
            policy_steps: 7,
            ..cfg.clone()
        },
        FinetuneConfig {
            full_finetune: true,
            ..cfg.clone()
        },
    ] {
        assert!(Finetuner::new(bad, tiny_model(21), pixels(), two_mode_refs(64, 3), None).is_err());
    }

    let mut ft = Finetuner::new(
        cfg.clone(),
        tiny_model(21),
        pixels(),
        two_mode_refs(64, 3),
        None,
    )
    .unwrap();
    let lora = ft.model.lora_vs.as_ref().unwrap();
    tch::no_grad(|| {
        for (n, t) in lora.variables() {
            if n.ends_with("lora_b") {
                t.shallow_clone().copy_(&(noise(&t.size(), 3) * 0.3));
            }
        }
    });
    let base = tiny_model(21); // the same base weights, no adapters
    let roll = ft.sample_rollout().unwrap();
    let traj = &roll.traj;
    let b = roll.conditions.len();
    let samples: Vec<usize> = (0..b).collect();
    let replay = |m: &dyn Fn(&StepBatch) -> StepGaussian, k: usize| {
        let sb = StepBatch::gather(&ft.model.sched, traj, &samples, &vec![k; b]);
        let lp = tch::no_grad(|| m(&sb)).log_prob(&sb.x_s, traj.sampler.reduction);
        common::max_abs_diff(&lp, &sb.old_log_probs(traj))
    };
    let adapted = |sb: &StepBatch| sb.gaussian(&ft.model.unet, &traj.sampler);
    let frozen = |sb: &StepBatch| sb.gaussian(&base.unet, &traj.sampler);
    for k in 0..traj.num_steps() {
        let (a, f) = (replay(&adapted, k), replay(&frozen, k));
        if k < 2 {
            assert!(a < 1e-5 && f > 1e-3, "step {k}: adapted {a}, base {f}");
        } else {
            assert!(f < 1e-5 && a > 1e-3, "step {k}: adapted {a}, base {f}");
        }
    }
    // One batch of rows at mixed steps through the gated ε = the stored log-probs.
    let steps: Vec<usize> = (0..b).map(|i| i % traj.num_steps()).collect();
    let sb = StepBatch::gather(&ft.model.sched, traj, &samples, &steps);
    let t_min = ft.model.sched.sampling_timesteps(cfg.steps).unwrap()[1];
    let gated = StepGated {
        policy: &ft.model.unet,
        base: &base.unet,
        t_min,
    };
    let lp = tch::no_grad(|| sb.gaussian(&gated, &traj.sampler))
        .log_prob(&sb.x_s, traj.sampler.reduction);
    assert!(common::max_abs_diff(&lp, &sb.old_log_probs(traj)) < 1e-5);

    let before = snapshot(ft.trainable());
    let adv: Vec<f64> = (0..b)
        .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    let st = ft.ppo_update(&roll, &adv).unwrap();
    assert!(st.first_ratio_max_dev < 1e-5, "{}", st.first_ratio_max_dev);
    for (n, t) in ft.trainable().variables() {
        let d = (&t - &before[&n]).abs().max().double_value(&[]);
        assert!(d > 0.0, "adapter {n} got no gradient");
    }
    // The adapters cannot be folded into one set of weights: no merged/ checkpoint.
    let got = ft.export().unwrap();
    assert_eq!(got, dir.path().join("lora.safetensors"));
    assert!(got.exists());
    assert!(!dir.path().join("merged").exists());
}

/// `policy_ema_of = "lora-product"`: the average is of each adapter's update B·A (closed form
/// over the epochs' weights); the export holds its best rank-r factors (error = the tail of the
/// singular values, from an independent eigen-decomposition); a resumed run continues it exactly.
#[test]
fn the_lora_product_average_is_exported_as_its_best_rank_r_factors() {
    use divrl::config::read_safetensors;
    let dir = tempfile::tempdir().unwrap();
    let d = 0.6;
    let mut cfg = tiny_run_cfg(&dir.path().join("a"));
    cfg.epochs = 3;
    cfg.lr = 1e-2;
    cfg.policy_ema = d;
    cfg.policy_ema_of = "lora-product".into();
    let refs = || two_mode_refs(64, 3);
    let mut ft = Finetuner::new(cfg.clone(), tiny_model(6), pixels(), refs(), None).unwrap();
    let product = |th: &BTreeMap<String, Tensor>, layer: &str| {
        th[&format!("{layer}.lora_b")]
            .to_kind(Kind::Double)
            .matmul(&th[&format!("{layer}.lora_a")].to_kind(Kind::Double))
    };
    let mut thetas = vec![snapshot(ft.trainable())];
    for _ in 0..cfg.epochs {
        let _ = ft.step_epoch().unwrap();
        thetas.push(snapshot(ft.trainable()));
    }
    let layers: Vec<String> = thetas[0]
        .keys()
        .filter_map(|n| n.strip_suffix(".lora_a").map(str::to_string))
        .collect();
    assert!(!layers.is_empty());
    let got: BTreeMap<String, Tensor> = ft.policy_ema().unwrap().tensors().into_iter().collect();
    assert_eq!(got.len(), layers.len(), "one averaged update per adapter");
    ft.export().unwrap();
    let exported: BTreeMap<String, Tensor> = read_safetensors(&cfg.out.join("lora.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let e = cfg.epochs as i32;
    let mut worst_cut = 0.0f64;
    for layer in &layers {
        let mut want = product(&thetas[0], layer) * d.powi(e);
        for (i, th) in thetas.iter().enumerate().skip(1) {
            want += product(th, layer) * ((1.0 - d) * d.powi(e - i as i32));
        }
        let avg = &got[&format!("{layer}.lora_ba")];
        let gap = (avg - &want).abs().max().double_value(&[]);
        assert!(gap < 1e-12, "{layer}: {gap}");
        // The export: B·A = the best rank-r approximation of the average.
        let rank = thetas[0][&format!("{layer}.lora_a")].size()[0] as usize;
        let mut eig = Vec::<f64>::try_from(want.matmul(&want.tr()).linalg_eigvalsh("L")).unwrap();
        eig.sort_by(|x, y| y.partial_cmp(x).unwrap());
        let total: f64 = eig.iter().map(|x| x.max(0.0)).sum();
        let cut = (eig[rank.min(eig.len())..]
            .iter()
            .map(|x| x.max(0.0))
            .sum::<f64>()
            / total)
            .sqrt();
        worst_cut = worst_cut.max(cut);
        let lent = product(&exported, layer);
        let err = (&want - &lent).norm().double_value(&[]) / want.norm().double_value(&[]);
        assert!(
            (err - cut).abs() < 1e-4,
            "{layer}: export error {err}, best rank-{rank} error {cut}"
        );
    }
    let residual = ft
        .policy_ema()
        .unwrap()
        .rank_residual(ft.trainable())
        .unwrap();
    assert!(
        (residual - worst_cut).abs() < 1e-6,
        "{residual} vs {worst_cut}"
    );

    // Resumed after 2 epochs: the same average as the run in one go.
    let run_to = |out: &std::path::Path, epochs: usize, resume: bool| {
        let mut c = cfg.clone();
        c.out = out.to_path_buf();
        c.epochs = epochs;
        let mut t = Finetuner::new(c, tiny_model(6), pixels(), refs(), None).unwrap();
        assert_eq!(t.resume().unwrap(), resume);
        t.run(false).unwrap();
        t
    };
    run_to(&dir.path().join("c"), 2, false);
    let resumed = run_to(&dir.path().join("c"), 3, true);
    let again: BTreeMap<String, Tensor> = resumed
        .policy_ema()
        .unwrap()
        .tensors()
        .into_iter()
        .collect();
    assert!(max_change(&got, &again) < 1e-9);
}

/// `policy_ema`: the run's result is θ̄_e = d·θ̄_{e−1} + (1 − d)·θ_e from the starting weights
/// (checked against the closed form over the epochs' weights), the export holds it while the
/// training weights stay as they are, and a run resumed from a checkpoint continues the average
/// to the uninterrupted run's.
#[test]
fn the_moving_average_is_exported_and_resumes_exactly() {
    use divrl::config::read_safetensors;
    let dir = tempfile::tempdir().unwrap();
    let d = 0.6;
    let mut cfg = tiny_run_cfg(&dir.path().join("a"));
    cfg.epochs = 4;
    cfg.lr = 1e-2;
    cfg.policy_ema = d;
    let refs = || two_mode_refs(64, 3);
    let mut ft = Finetuner::new(cfg.clone(), tiny_model(6), pixels(), refs(), None).unwrap();
    let mut thetas = vec![snapshot(ft.trainable())];
    for _ in 0..cfg.epochs {
        let _ = ft.step_epoch().unwrap();
        thetas.push(snapshot(ft.trainable()));
    }
    let e = cfg.epochs as i32;
    let want: BTreeMap<String, Tensor> = thetas[0]
        .keys()
        .map(|n| {
            let mut w = thetas[0][n].to_kind(Kind::Double) * d.powi(e);
            for (i, th) in thetas.iter().enumerate().skip(1) {
                w += th[n].to_kind(Kind::Double) * ((1.0 - d) * d.powi(e - i as i32));
            }
            (n.clone(), w)
        })
        .collect();
    let got: BTreeMap<String, Tensor> = ft.policy_ema().unwrap().tensors().into_iter().collect();
    assert!(
        max_change(&want, &got) < 1e-12,
        "{}",
        max_change(&want, &got)
    );
    let last = snapshot(ft.trainable());
    let last64: BTreeMap<String, Tensor> = last
        .iter()
        .map(|(n, t)| (n.clone(), t.to_kind(Kind::Double)))
        .collect();
    assert!(
        max_change(&want, &last64) > 1e-4,
        "the average must differ from the last weights"
    );

    // The export holds the average; the training weights are untouched.
    ft.export().unwrap();
    assert_eq!(max_change(&last, &snapshot(ft.trainable())), 0.0);
    let exported: BTreeMap<String, Tensor> = read_safetensors(&cfg.out.join("lora.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.to_kind(Kind::Double)))
        .collect();
    assert!(max_change(&want, &exported) < 1e-6);

    // Two epochs, then a fresh trainer resumes and finishes: the same average as `run` in one go.
    let run_to = |out: &std::path::Path, epochs: usize, resume: bool| {
        let mut c = cfg.clone();
        c.out = out.to_path_buf();
        c.epochs = epochs;
        let mut t = Finetuner::new(c, tiny_model(6), pixels(), refs(), None).unwrap();
        assert_eq!(t.resume().unwrap(), resume);
        t.run(false).unwrap();
        t
    };
    let whole = run_to(&dir.path().join("b"), 4, false);
    run_to(&dir.path().join("c"), 2, false);
    let resumed = run_to(&dir.path().join("c"), 4, true);
    assert!(dir
        .path()
        .join("c/checkpoints/epoch-000004/policy_ema.safetensors")
        .exists());
    let avg = |t: &Finetuner| -> BTreeMap<String, Tensor> {
        t.policy_ema().unwrap().tensors().into_iter().collect()
    };
    assert!(max_change(&avg(&whole), &avg(&resumed)) < 1e-9);
    assert!(
        max_change(&avg(&whole), &want) < 1e-9,
        "run = step_epoch by hand"
    );
}
