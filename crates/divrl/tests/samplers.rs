//! The training-free diversity options of the sampler: guidance in a limited noise interval and
//! CADS. Off = bit-identical to the plain sampler; on = replayable exactly as PPO replays.
mod common;

use common::{max_abs_diff, tiny_unet};
use divrl::cads::{condition_noise, diffusion_time, sample_keys, CadsConfig};
use divrl::rl::policy::StepBatch;
use divrl::sample::{recompute_log_prob, sample_trajectory, Trajectory};
use divrl::schedule::{
    edm_sigma, EpsModel, GuidanceInterval, NoiseSchedule, SamplerConfig, SamplerKind,
    ScheduleConfig,
};
use tch::{Device, Kind, Tensor};

fn sched() -> NoiseSchedule {
    NoiseSchedule::new(&ScheduleConfig::default()).unwrap()
}

fn cfg(kind: SamplerKind, guidance: f64) -> SamplerConfig {
    SamplerConfig {
        kind,
        steps: 6,
        guidance,
        ..SamplerConfig::default()
    }
}

fn classes() -> Tensor {
    Tensor::from_slice(&[0i64, 1, 2, 0, 1, 2])
}

fn same(a: &Trajectory, b: &Trajectory) -> bool {
    a.latents.equal(&b.latents) && a.log_probs.equal(&b.log_probs)
}

#[test]
fn cads_schedule_matches_hand_computed_values() {
    let c = CadsConfig::default();
    assert_eq!(
        (c.tau1, c.tau2, c.noise_scale, c.psi),
        (0.6, 0.9, 0.25, 1.0)
    );
    for (t, want) in [
        (0.0, 1.0),
        (0.5, 1.0),
        (0.6, 1.0),
        (0.7, 2.0 / 3.0),
        (0.75, 0.5),
        (0.85, 1.0 / 6.0),
        (0.9, 0.0),
        (1.0, 0.0),
    ] {
        assert!(
            (c.gamma(t) - want).abs() < 1e-12,
            "gamma({t}) = {}",
            c.gamma(t)
        );
    }
    // Timestep k of T = 1000 is diffusion time k / 999.
    assert_eq!(diffusion_time(999, 1000), 1.0);
    assert_eq!(diffusion_time(0, 1000), 0.0);
    assert!((c.gamma_at(700, 1000) - (0.9 - 700.0 / 999.0) / 0.3).abs() < 1e-12);
    // τ1 = τ2: a step function.
    let step = CadsConfig {
        tau1: 0.5,
        tau2: 0.5,
        ..c
    };
    assert_eq!((step.gamma(0.5), step.gamma(0.5001)), (1.0, 0.0));
}

#[test]
fn cads_perturbation_is_the_papers_formula() {
    let y = Tensor::from_slice(&[1.0f32, -2.0, 0.5, 3.0, 0.0, 0.0, 1.0, -1.0]).view([2, 4]);
    let n = Tensor::from_slice(&[0.3f32, -0.1, 2.0, 0.7, 1.0, -1.0, 0.5, 0.25]).view([2, 4]);
    let yv: Vec<f32> = Vec::try_from(y.flatten(0, -1)).unwrap();
    let nv: Vec<f32> = Vec::try_from(n.flatten(0, -1)).unwrap();
    let gamma = [0.36, 1.0];
    // ψ = 0: ŷ = √γ y + s √(1−γ) n; a γ = 1 row is returned untouched.
    let c = CadsConfig {
        noise_scale: 0.5,
        psi: 0.0,
        ..CadsConfig::default()
    };
    let out: Vec<f32> = Vec::try_from(c.perturb(&y, &gamma, &n).flatten(0, -1)).unwrap();
    for i in 0..4 {
        let want = 0.6 * yv[i] as f64 + 0.5 * 0.8 * nv[i] as f64;
        assert!((out[i] as f64 - want).abs() < 1e-6, "{} vs {want}", out[i]);
        assert_eq!(out[4 + i], yv[4 + i]);
    }
    // ψ = 1: the noisy row is rescaled to y's mean and standard deviation.
    let c1 = CadsConfig { psi: 1.0, ..c };
    let r = c1.perturb(&y, &gamma, &n);
    let (m, sd) = (r.get(0).mean(Kind::Float), r.get(0).std(true));
    assert!((m.double_value(&[]) - 0.625).abs() < 1e-5);
    assert!((sd.double_value(&[]) - y.get(0).std(true).double_value(&[])).abs() < 1e-5);
    // ψ = 0.5 mixes the two.
    let half = CadsConfig { psi: 0.5, ..c };
    let mix = half.perturb(&y, &gamma, &n);
    let want = (c.perturb(&y, &gamma, &n) + r) * 0.5;
    assert!(max_abs_diff(&mix, &want) < 1e-6);
    // s = 0 with ψ = 1 keeps y (up to rounding) wherever γ > 0.
    let s0 = CadsConfig {
        noise_scale: 0.0,
        psi: 1.0,
        ..c
    };
    assert!(max_abs_diff(&s0.perturb(&y, &gamma, &n), &y) < 1e-5);
}

#[test]
fn condition_noise_is_a_function_of_the_initial_noise_and_timestep() {
    let x = Tensor::randn([3, 1, 4, 4], (Kind::Float, Device::Cpu));
    let keys = sample_keys(&x).unwrap();
    assert_eq!(keys, sample_keys(&x.copy()).unwrap());
    assert_ne!(keys[0], keys[1]);
    let a = condition_noise(&keys, &[999, 999, 999], 64, Device::Cpu);
    let b = condition_noise(&keys, &[999, 999, 999], 64, Device::Cpu);
    let c = condition_noise(&keys, &[799, 999, 999], 64, Device::Cpu);
    assert!(a.equal(&b));
    assert!(
        max_abs_diff(&a.get(0), &c.get(0)) > 0.1,
        "fresh noise per step"
    );
    assert!(a.get(1).equal(&c.get(1)));
    assert!(
        max_abs_diff(&a.get(0), &a.get(1)) > 0.1,
        "independent samples"
    );
    let v = condition_noise(&[7, 8, 9, 10], &[1, 2, 3, 4], 4096, Device::Cpu);
    assert!(v.mean(Kind::Float).double_value(&[]).abs() < 0.05);
    assert!((v.std(true).double_value(&[]) - 1.0).abs() < 0.05);
}

#[test]
fn options_off_or_inert_give_bit_identical_samples() {
    let (_vs, unet) = tiny_unet(21);
    let sched = sched();
    let shape = [1, 8, 8];
    for (kind, w) in [(SamplerKind::Ddim, 3.0), (SamplerKind::Ddpm, 2.0)] {
        let plain = sample_trajectory(&unet, &sched, &cfg(kind, w), &classes(), shape, 5).unwrap();
        // An interval holding every σ of the schedule: guidance everywhere.
        let all = SamplerConfig {
            guidance_interval: Some(GuidanceInterval {
                sigma_lo: 0.0,
                sigma_hi: 1e6,
            }),
            ..cfg(kind, w)
        };
        let t = sample_trajectory(&unet, &sched, &all, &classes(), shape, 5).unwrap();
        assert!(
            same(&t, &plain),
            "{kind:?}: full interval differs from plain"
        );
        // An empty interval: w = 1 everywhere.
        let none = SamplerConfig {
            guidance_interval: Some(GuidanceInterval {
                sigma_lo: 1e5,
                sigma_hi: 1e6,
            }),
            ..cfg(kind, w)
        };
        let w1 = sample_trajectory(&unet, &sched, &cfg(kind, 1.0), &classes(), shape, 5).unwrap();
        let t = sample_trajectory(&unet, &sched, &none, &classes(), shape, 5).unwrap();
        assert!(same(&t, &w1), "{kind:?}: empty interval differs from w = 1");
        assert!(!same(&w1, &plain));
        // CADS with τ1 = 1: γ = 1 at every step.
        let inert = SamplerConfig {
            cads: Some(CadsConfig {
                tau1: 1.0,
                tau2: 1.0,
                ..CadsConfig::default()
            }),
            ..cfg(kind, w)
        };
        let t = sample_trajectory(&unet, &sched, &inert, &classes(), shape, 5).unwrap();
        assert!(
            same(&t, &plain),
            "{kind:?}: CADS with tau1 = 1 differs from plain"
        );
        // Active CADS does change the samples.
        let on = SamplerConfig {
            cads: Some(CadsConfig {
                noise_scale: 1.0,
                ..CadsConfig::default()
            }),
            ..cfg(kind, w)
        };
        let t = sample_trajectory(&unet, &sched, &on, &classes(), shape, 5).unwrap();
        assert!(max_abs_diff(&t.images(), &plain.images()) > 1e-4);
    }
}

#[test]
fn a_partial_interval_switches_guidance_by_sigma() {
    let (_vs, unet) = tiny_unet(22);
    let sched = sched();
    let c = cfg(SamplerKind::Ddim, 3.0);
    let ts = sched.sampling_timesteps(c.steps).unwrap();
    // σ of the 6 steps' x_t: guide only the first three (highest noise).
    let sig: Vec<f64> = ts[..6]
        .iter()
        .map(|&t| edm_sigma(sched.alpha_bar(t)))
        .collect();
    let iv = GuidanceInterval {
        sigma_lo: (sig[2] + sig[3]) / 2.0,
        sigma_hi: 1e6,
    };
    let on: Vec<bool> = sig.iter().map(|&s| iv.contains(s)).collect();
    assert_eq!(on, [true, true, true, false, false, false]);
    let part = SamplerConfig {
        guidance_interval: Some(iv),
        ..c.clone()
    };
    let t = sample_trajectory(&unet, &sched, &part, &classes(), [1, 8, 8], 9).unwrap();
    let plain = sample_trajectory(&unet, &sched, &c, &classes(), [1, 8, 8], 9).unwrap();
    // The first three transitions are those of plain guidance; then they part.
    for k in 0..=3 {
        assert!(t.latents.get(k).equal(&plain.latents.get(k)), "latent {k}");
    }
    assert!(max_abs_diff(&t.latents.get(4), &plain.latents.get(4)) > 1e-5);
    assert_eq!(edm_sigma(0.2), 2.0);
}

/// The bound on [`max_replay_dev`]'s η: 64 f32 ulps of relative rounding in the UNet's mean.
const REPLAY_ETA: f64 = 64.0 * f32::EPSILON as f64;

/// Every transition replayed through `StepBatch` as PPO does it, in shuffled minibatches of
/// mixed timesteps: the log-probabilities equal the stored ones (importance ratio 1) up to float
/// rounding. Replayed in another batch composition, the UNet's reductions run in another order,
/// so its mean μ moves by a relative η of a few f32 ulps times the reductions' depth, and the
/// per-dimension mean log-probability by at most mean|x − μ| · max|μ| · η / σ² (its derivative
/// in μ is (x − μ)/σ²). The deviation is returned in units of that scale, i.e. as the η it
/// implies: machine-independent where the raw |Δ log p| grows like 1/σ at the last, nearly
/// deterministic steps (with scalar kernels and two threads it reached 1.4e-5 against σ ≈ 0.1).
fn max_replay_dev(
    unet: &divrl::models::unet::UNet,
    sched: &NoiseSchedule,
    traj: &Trajectory,
) -> f64 {
    let b = traj.classes.size()[0] as usize;
    let k = traj.num_steps();
    let mut worst = 0.0f64;
    for j in 0..k {
        // Sample i at step (i + j) % k, in two minibatches of different composition.
        let steps: Vec<usize> = (0..b).map(|i| (i + j) % k).collect();
        for (samples, st) in [
            (&[0usize, 2, 4][..], [steps[0], steps[2], steps[4]]),
            (&[5usize, 3, 1][..], [steps[5], steps[3], steps[1]]),
        ] {
            let sb = StepBatch::gather(sched, traj, samples, &st);
            let g = tch::no_grad(|| sb.gaussian(unet, &traj.sampler));
            let lp = g.log_prob(&sb.x_s, traj.sampler.reduction);
            let dev = (&lp - sb.old_log_probs(traj)).abs().to_kind(Kind::Double);
            let rows = lp.size()[0];
            let flat = |t: &Tensor| t.reshape([rows, -1]).to_kind(Kind::Double);
            let resid = flat(&(&sb.x_s - &g.mean))
                .abs()
                .mean_dim(1, false, Kind::Double);
            let mu_max = flat(&g.mean).abs().amax(1, false);
            let var = flat(&g.std).square().mean_dim(1, false, Kind::Double);
            let scale = resid * mu_max.clamp_min(1.0) / var;
            let eta = (dev / scale).max().double_value(&[]);
            worst = worst.max(eta);
        }
    }
    worst
}

#[test]
fn on_policy_replay_with_cads_and_interval_has_ratio_one() {
    let (_vs, unet) = tiny_unet(23);
    let sched = sched();
    let cads = CadsConfig {
        tau1: 0.3,
        tau2: 0.8,
        noise_scale: 0.5,
        psi: 0.7,
    };
    let variants = [
        ("cads", None, Some(cads)),
        (
            "interval",
            Some(GuidanceInterval {
                sigma_lo: 0.5,
                sigma_hi: 20.0,
            }),
            None,
        ),
        (
            "both",
            Some(GuidanceInterval {
                sigma_lo: 0.05,
                sigma_hi: 3.0,
            }),
            Some(cads),
        ),
    ];
    for (name, iv, cads) in variants {
        for kind in [SamplerKind::Ddim, SamplerKind::Ddpm] {
            let c = SamplerConfig {
                guidance_interval: iv,
                cads,
                ..cfg(kind, 3.0)
            };
            let traj = sample_trajectory(&unet, &sched, &c, &classes(), [1, 8, 8], 31).unwrap();
            let dev = max_replay_dev(&unet, &sched, &traj);
            eprintln!("{name} {kind:?}: on-policy replay η = {dev:.2e}");
            // Measured 0 … 3e-7 (1–3 ulps) under every kernel level and thread count, against
            // 2e-2 … 4e-2 for an off-policy replay below.
            assert!(dev < REPLAY_ETA, "{name} {kind:?}: replay η = {dev}");
            for k in 0..traj.num_steps() {
                let lp = recompute_log_prob(&unet, &sched, &traj, k);
                assert!(max_abs_diff(&lp, &traj.log_probs.get(k as i64)) < 1e-5);
            }
            // Stored and reloaded: the same replay (the sampler options travel in the file).
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("t.safetensors");
            traj.save(&p).unwrap();
            let back = Trajectory::load(&p, Device::Cpu).unwrap();
            assert_eq!(back.sampler, c);
            assert!(max_replay_dev(&unet, &sched, &back) < REPLAY_ETA);
            // Replaying without the options is off-policy: the check above can fail.
            if cads.is_some() {
                let mut wrong = back;
                wrong.sampler.cads = None;
                let off = max_replay_dev(&unet, &sched, &wrong);
                eprintln!("{name} {kind:?}: off-policy replay η = {off:.2e}");
                assert!(off > 1e-3, "{name}: {off}");
            }
        }
    }
}

#[test]
fn sampler_files_without_the_options_still_parse_and_stay_unchanged() {
    let old =
        r#"{"kind":"ddim","steps":20,"eta":1.0,"guidance":4.0,"clip_x0":true,"reduction":"mean"}"#;
    let c: SamplerConfig = serde_json::from_str(old).unwrap();
    assert_eq!((c.guidance_interval, c.cads), (None, None));
    assert_eq!(serde_json::to_string(&c).unwrap(), old);
    let on = SamplerConfig {
        cads: Some(CadsConfig::default()),
        guidance_interval: Some(GuidanceInterval {
            sigma_lo: 0.28,
            sigma_hi: 5.42,
        }),
        ..c
    };
    let back: SamplerConfig = serde_json::from_str(&serde_json::to_string(&on).unwrap()).unwrap();
    assert_eq!(back, on);
}

#[test]
fn bad_options_are_errors() {
    let bad_cads = [
        (0.9, 0.6, 0.25, 1.0),
        (-0.1, 0.6, 0.25, 1.0),
        (0.6, 1.5, 0.25, 1.0),
        (0.6, 0.9, -0.1, 1.0),
        (0.6, 0.9, 0.25, 1.5),
        (f64::NAN, 0.9, 0.25, 1.0),
        (0.6, 0.9, f64::INFINITY, 1.0),
    ];
    for (tau1, tau2, noise_scale, psi) in bad_cads {
        let c = SamplerConfig {
            cads: Some(CadsConfig {
                tau1,
                tau2,
                noise_scale,
                psi,
            }),
            ..SamplerConfig::default()
        };
        assert!(c.validate().is_err(), "{tau1} {tau2} {noise_scale} {psi}");
    }
    for s in ["5,1", "1,1", "-1,2", "nan,1", "0,inf", "1", "a,b", "1,2,3"] {
        assert!(s.parse::<GuidanceInterval>().is_err(), "{s}");
    }
    let ok: GuidanceInterval = " 0.28, 5.42".parse().unwrap();
    assert_eq!((ok.sigma_lo, ok.sigma_hi), (0.28, 5.42));

    // A model without a condition vector cannot do CADS.
    struct NoCond;
    impl EpsModel for NoCond {
        fn eps(&self, x: &Tensor, _t: &Tensor, _c: &Tensor) -> Tensor {
            x * 0.1
        }
        fn null_class(&self) -> i64 {
            3
        }
    }
    let c = SamplerConfig {
        cads: Some(CadsConfig::default()),
        ..cfg(SamplerKind::Ddim, 2.0)
    };
    let e = sample_trajectory(&NoCond, &sched(), &c, &classes(), [1, 2, 2], 0).unwrap_err();
    assert!(e.to_string().contains("CADS"), "{e}");
}
