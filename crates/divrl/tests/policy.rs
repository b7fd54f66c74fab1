//! The sampler as a policy: closed-form step densities, replayed log-probabilities, seeds.
mod common;

use common::{max_abs_diff, tiny_unet};
use divrl::sample::{recompute_log_prob, sample_trajectory, Trajectory};
use divrl::schedule::{
    EpsModel, LogProbReduction, NoiseSchedule, ReverseStep, SamplerConfig, SamplerKind,
    ScheduleConfig,
};
use tch::{Device, Kind, Tensor};

/// ε(x, t, c) = 0.3·x + 0.05·c − 0.1 (null class: −0.2): simple enough to redo by hand.
struct Affine;
impl EpsModel for Affine {
    fn eps(&self, x: &Tensor, _t: &Tensor, class: &Tensor) -> Tensor {
        let c = class.to_kind(Kind::Float).view([-1, 1, 1, 1]);
        let is_null = class.eq(3).to_kind(Kind::Float).view([-1, 1, 1, 1]);
        x * 0.3 + (c * 0.05 - 0.1) * (1.0 - &is_null) + &is_null * -0.2
    }
    fn null_class(&self) -> i64 {
        3
    }
}

fn closed_form(kind: SamplerKind, eta: f64, guidance: f64, reduction: LogProbReduction) {
    let sched = NoiseSchedule::new(&ScheduleConfig::default()).unwrap();
    let cfg = SamplerConfig {
        kind,
        steps: 10,
        eta,
        guidance,
        clip_x0: false,
        reduction,
        ..SamplerConfig::default()
    };
    let (t, s) = (600i64, 500i64);
    tch::manual_seed(3);
    let x = Tensor::randn([2, 1, 3, 3], (Kind::Float, Device::Cpu));
    let noise = Tensor::randn([2, 1, 3, 3], (Kind::Float, Device::Cpu));
    let class = Tensor::from_slice(&[1i64, 2]);
    let step = ReverseStep {
        model: &Affine,
        sched: &sched,
        cfg: &cfg,
    };
    let out = step.sample(&x, t, s, &class, &noise);

    // The same Gaussian, by hand in f64.
    let (at, as_) = (
        sched.alphas_cumprod[t as usize],
        sched.alphas_cumprod[s as usize],
    );
    let xs: Vec<f32> = Vec::try_from(&x.flatten(0, -1)).unwrap();
    let zs: Vec<f32> = Vec::try_from(&noise.flatten(0, -1)).unwrap();
    let samples: Vec<f32> = Vec::try_from(&out.sample.flatten(0, -1)).unwrap();
    let lps: Vec<f32> = Vec::try_from(&out.log_prob).unwrap();
    for b in 0..2 {
        let c = [1.0, 2.0][b];
        let mut total = 0.0f64;
        for i in 0..9 {
            let xi = xs[b * 9 + i] as f64;
            let e_c = 0.3 * xi + 0.05 * c - 0.1;
            let e_u = 0.3 * xi - 0.2;
            let e = e_u + guidance * (e_c - e_u);
            let x0 = (xi - (1.0 - at).sqrt() * e) / at.sqrt();
            let (mean, var) = match kind {
                SamplerKind::Ddpm => {
                    let alpha = at / as_;
                    let beta = 1.0 - alpha;
                    (
                        as_.sqrt() * beta / (1.0 - at) * x0
                            + alpha.sqrt() * (1.0 - as_) / (1.0 - at) * xi,
                        beta * (1.0 - as_) / (1.0 - at),
                    )
                }
                SamplerKind::Ddim => {
                    let var = eta * eta * (1.0 - as_) / (1.0 - at) * (1.0 - at / as_);
                    (as_.sqrt() * x0 + (1.0 - as_ - var).sqrt() * e, var)
                }
            };
            let xs_i = mean + var.sqrt() * zs[b * 9 + i] as f64;
            assert!(
                (xs_i - samples[b * 9 + i] as f64).abs() < 1e-4,
                "sample {xs_i} vs {}",
                samples[b * 9 + i]
            );
            let lp = -(xs_i - mean).powi(2) / (2.0 * var)
                - 0.5 * (2.0 * std::f64::consts::PI * var).ln();
            total += lp;
        }
        let want = match reduction {
            LogProbReduction::Mean => total / 9.0,
            LogProbReduction::Sum => total,
        };
        let got = lps[b] as f64;
        assert!(
            (got - want).abs() < 1e-4 * want.abs().max(1.0),
            "{kind:?} log-prob {got} vs closed form {want}"
        );
    }
    // Recomputing the density of the sampled x_s gives the same number.
    let again = step.log_prob(&x, t, s, &class, &out.sample);
    assert!(max_abs_diff(&again, &out.log_prob) < 1e-6);
}

#[test]
fn ddpm_step_log_prob_is_the_closed_form_gaussian() {
    closed_form(SamplerKind::Ddpm, 0.0, 1.0, LogProbReduction::Mean);
    closed_form(SamplerKind::Ddpm, 0.0, 3.0, LogProbReduction::Sum);
}

#[test]
fn ddim_step_log_prob_is_the_closed_form_gaussian() {
    closed_form(SamplerKind::Ddim, 1.0, 1.0, LogProbReduction::Sum);
    closed_form(SamplerKind::Ddim, 0.5, 2.5, LogProbReduction::Mean);
    closed_form(SamplerKind::Ddim, 0.8, 0.0, LogProbReduction::Mean);
}

#[test]
fn ddim_eta_one_equals_ddpm() {
    let sched = NoiseSchedule::new(&ScheduleConfig::default()).unwrap();
    let x = Tensor::randn([2, 1, 3, 3], (Kind::Float, Device::Cpu));
    let noise = Tensor::randn([2, 1, 3, 3], (Kind::Float, Device::Cpu));
    let class = Tensor::from_slice(&[0i64, 1]);
    let mk = |kind| SamplerConfig {
        kind,
        steps: 10,
        eta: 1.0,
        guidance: 2.0,
        clip_x0: true,
        reduction: LogProbReduction::Mean,
        ..SamplerConfig::default()
    };
    let (c1, c2) = (mk(SamplerKind::Ddim), mk(SamplerKind::Ddpm));
    let a = ReverseStep {
        model: &Affine,
        sched: &sched,
        cfg: &c1,
    }
    .sample(&x, 900, 700, &class, &noise);
    let b = ReverseStep {
        model: &Affine,
        sched: &sched,
        cfg: &c2,
    }
    .sample(&x, 900, 700, &class, &noise);
    assert!(max_abs_diff(&a.gaussian.mean, &b.gaussian.mean) < 1e-5);
    assert_eq!(max_abs_diff(&a.gaussian.std, &b.gaussian.std), 0.0);
}

fn tiny_sampler(kind: SamplerKind, guidance: f64) -> SamplerConfig {
    SamplerConfig {
        kind,
        steps: 5,
        eta: 1.0,
        guidance,
        clip_x0: true,
        reduction: LogProbReduction::Mean,
        ..SamplerConfig::default()
    }
}

#[test]
fn stored_trajectory_log_probs_replay_under_unchanged_weights() {
    let (_vs, unet) = tiny_unet(1);
    let sched = NoiseSchedule::new(&ScheduleConfig::default()).unwrap();
    let classes = Tensor::from_slice(&[0i64, 1, 2, 3]);
    for (kind, g) in [(SamplerKind::Ddim, 2.0), (SamplerKind::Ddpm, 1.0)] {
        let cfg = tiny_sampler(kind, g);
        let traj = sample_trajectory(&unet, &sched, &cfg, &classes, [1, 8, 8], 11).unwrap();
        assert_eq!(traj.latents.size(), vec![6, 4, 1, 8, 8]);
        assert_eq!(traj.log_probs.size(), vec![5, 4]);
        assert_eq!(*traj.timesteps.last().unwrap(), 0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("traj.safetensors");
        traj.save(&path).unwrap();
        let loaded = Trajectory::load(&path, Device::Cpu).unwrap();
        assert_eq!(loaded.sampler, traj.sampler);
        for (t, name) in [(&traj, "in memory"), (&loaded, "reloaded")] {
            for k in 0..t.num_steps() {
                let lp = recompute_log_prob(&unet, &sched, t, k);
                let d = max_abs_diff(&lp, &t.log_probs.get(k as i64));
                assert!(
                    d < 1e-5,
                    "{name} step {k}: recomputed log-prob differs by {d}"
                );
            }
        }
    }
}

#[test]
fn recomputed_log_prob_is_differentiable_and_changes_with_weights() {
    let (vs, unet) = tiny_unet(2);
    let sched = NoiseSchedule::new(&ScheduleConfig::default()).unwrap();
    let classes = Tensor::from_slice(&[0i64, 2]);
    let traj = sample_trajectory(
        &unet,
        &sched,
        &tiny_sampler(SamplerKind::Ddim, 1.5),
        &classes,
        [1, 8, 8],
        5,
    )
    .unwrap();
    let lp = recompute_log_prob(&unet, &sched, &traj, 2);
    lp.sum(Kind::Float).backward();
    let any_grad = vs
        .trainable_variables()
        .iter()
        .any(|v| v.grad().defined() && v.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    assert!(any_grad, "log-prob must carry gradients to the weights");
    tch::no_grad(|| {
        for mut v in vs.trainable_variables() {
            let _ = v.f_add_(&(v.randn_like() * 0.05));
        }
    });
    let lp2 = recompute_log_prob(&unet, &sched, &traj, 2);
    assert!(
        max_abs_diff(&lp, &lp2) > 1e-4,
        "changed weights must change the log-prob"
    );
}

#[test]
fn sampling_is_reproducible_for_a_seed() {
    let (_vs, unet) = tiny_unet(3);
    let sched = NoiseSchedule::new(&ScheduleConfig::default()).unwrap();
    let classes = Tensor::from_slice(&[0i64, 1, 2]);
    let cfg = tiny_sampler(SamplerKind::Ddim, 3.0);
    let a = sample_trajectory(&unet, &sched, &cfg, &classes, [1, 8, 8], 42).unwrap();
    let b = sample_trajectory(&unet, &sched, &cfg, &classes, [1, 8, 8], 42).unwrap();
    let c = sample_trajectory(&unet, &sched, &cfg, &classes, [1, 8, 8], 43).unwrap();
    assert_eq!(max_abs_diff(&a.latents, &b.latents), 0.0);
    assert_eq!(max_abs_diff(&a.log_probs, &b.log_probs), 0.0);
    assert!(max_abs_diff(&a.images(), &c.images()) > 1e-3);
}

#[test]
fn bad_sampler_settings_are_errors() {
    let (_vs, unet) = tiny_unet(4);
    let sched = NoiseSchedule::new(&ScheduleConfig::default()).unwrap();
    let classes = Tensor::from_slice(&[0i64]);
    let mut cfg = tiny_sampler(SamplerKind::Ddim, 1.0);
    cfg.eta = 0.0;
    assert!(sample_trajectory(&unet, &sched, &cfg, &classes, [1, 8, 8], 0).is_err());
    let mut cfg = tiny_sampler(SamplerKind::Ddpm, 1.0);
    cfg.steps = 5000;
    assert!(sample_trajectory(&unet, &sched, &cfg, &classes, [1, 8, 8], 0).is_err());
    assert!(unet.check_classes(&Tensor::from_slice(&[4i64])).is_err());
    assert!(unet.check_classes(&Tensor::from_slice(&[-1i64])).is_err());
    assert!(unet
        .check_input(&Tensor::zeros([1, 3, 8, 8], (Kind::Float, Device::Cpu)))
        .is_err());
}

/// The sampler and PPO's replay are one computation ([`divrl::schedule::Transitions`]): with a
/// network whose ε of a row does not depend on the other rows of its batch, replaying stored
/// transitions at mixed timesteps, in any minibatch, gives the sampled log-probabilities bit
/// for bit, so the importance ratio of an unchanged policy is exactly 1.
#[test]
fn replay_at_mixed_steps_is_the_sampled_step_bit_for_bit() {
    use divrl::rl::policy::StepBatch;
    use divrl::schedule::GuidanceInterval;
    let sched = NoiseSchedule::new(&ScheduleConfig::default()).unwrap();
    let classes = Tensor::from_slice(&[0i64, 1, 2, 0, 1, 2]);
    for (kind, guidance, interval, reduction) in [
        (SamplerKind::Ddim, 1.0, None, LogProbReduction::Mean),
        (SamplerKind::Ddim, 2.5, None, LogProbReduction::Sum),
        (SamplerKind::Ddpm, 4.0, None, LogProbReduction::Mean),
        (
            SamplerKind::Ddim,
            3.0,
            Some(GuidanceInterval {
                sigma_lo: 0.5,
                sigma_hi: 5.0,
            }),
            LogProbReduction::Mean,
        ),
    ] {
        let cfg = SamplerConfig {
            kind,
            steps: 6,
            eta: 1.0,
            guidance,
            guidance_interval: interval,
            reduction,
            ..SamplerConfig::default()
        };
        let traj = sample_trajectory(&Affine, &sched, &cfg, &classes, [1, 4, 4], 5).unwrap();
        for (samples, shift) in [(vec![0usize, 1, 2, 3, 4, 5], 0), (vec![4, 1, 3], 2)] {
            let steps: Vec<usize> = samples.iter().map(|&i| (i + shift) % 6).collect();
            let sb = StepBatch::gather(&sched, &traj, &samples, &steps);
            let lp = sb
                .gaussian(&Affine, &traj.sampler)
                .log_prob(&sb.x_s, reduction);
            let d = max_abs_diff(&lp, &sb.old_log_probs(&traj));
            assert_eq!(
                d, 0.0,
                "{kind:?} w = {guidance} {interval:?}: |Δ log π| = {d}"
            );
        }
    }
}
