//! Replaying stored trajectories under the current weights, with a different timestep for each
//! trajectory of a minibatch (PPO trains on timesteps shuffled per trajectory).
//!
//! The Gaussian of each transition is the one of [`crate::schedule::step_gaussian`], with the
//! schedule coefficients as per-sample tensors instead of scalars.
use tch::{Kind, Tensor};

use crate::sample::Trajectory;
use crate::schedule::{
    edm_sigma, guided_eps_rows, CadsRows, EpsModel, LogProbReduction, NoiseSchedule, SamplerConfig,
    SamplerKind,
};

/// Guided ε with a per-sample timestep tensor `t` (`[B]`).
pub fn guided_eps_t<M: EpsModel + ?Sized>(
    model: &M,
    x: &Tensor,
    t: &Tensor,
    class: &Tensor,
    guidance: f64,
) -> Tensor {
    if (guidance - 1.0).abs() < 1e-12 {
        return model.eps(x, t, class);
    }
    let null = class.full_like(model.null_class());
    if guidance == 0.0 {
        return model.eps(x, t, &null);
    }
    let out = model.eps(
        &Tensor::cat(&[x, x], 0),
        &Tensor::cat(&[t, t], 0),
        &Tensor::cat(&[class, &null], 0),
    );
    let parts = out.chunk(2, 0);
    &parts[1] + (&parts[0] - &parts[1]) * guidance
}

/// Transitions `k_i → k_i + 1` of samples `i` of a stored trajectory.
pub struct StepBatch {
    pub x_t: Tensor,
    pub x_s: Tensor,
    pub t: Tensor,
    pub class: Tensor,
    a_t: Vec<f64>,
    a_s: Vec<f64>,
    /// The rows' timesteps and their samples' initial noise x_T (CADS keys; see [`crate::cads`]).
    ts: Vec<i64>,
    x_init: Tensor,
    num_train_timesteps: i64,
    /// `[b]` indices into the trajectory's step axis and sample axis, for gathering old log-probs.
    flat_index: Tensor,
}

impl StepBatch {
    /// `samples[i]` trained at its step `steps[i]`.
    pub fn gather(
        sched: &NoiseSchedule,
        traj: &Trajectory,
        samples: &[usize],
        steps: &[usize],
    ) -> Self {
        assert_eq!(samples.len(), steps.len());
        let s = traj.latents.size();
        let b_total = s[1];
        let device = traj.latents.device();
        let flat = traj.latents.flatten(0, 1);
        let idx = |off: usize| {
            Tensor::from_slice(
                &samples
                    .iter()
                    .zip(steps)
                    .map(|(&b, &k)| (k + off) as i64 * b_total + b as i64)
                    .collect::<Vec<_>>(),
            )
            .to_device(device)
        };
        let (i_t, i_s) = (idx(0), idx(1));
        let flat_index = Tensor::from_slice(
            &samples
                .iter()
                .zip(steps)
                .map(|(&b, &k)| k as i64 * b_total + b as i64)
                .collect::<Vec<_>>(),
        )
        .to_device(device);
        let sample_idx = Tensor::from_slice(&samples.iter().map(|&b| b as i64).collect::<Vec<_>>())
            .to_device(device);
        let ts: Vec<i64> = steps.iter().map(|&k| traj.timesteps[k]).collect();
        Self {
            x_t: flat.index_select(0, &i_t),
            x_s: flat.index_select(0, &i_s),
            t: Tensor::from_slice(&ts).to_device(device),
            class: traj.classes.index_select(0, &sample_idx),
            a_t: ts.iter().map(|&t| sched.alpha_bar(t)).collect(),
            a_s: steps
                .iter()
                .map(|&k| sched.alpha_bar(traj.timesteps[k + 1]))
                .collect(),
            x_init: traj.latents.get(0).index_select(0, &sample_idx),
            ts,
            num_train_timesteps: sched.num_train_timesteps(),
            flat_index,
        }
    }

    /// The stored (sampling-time) log-probabilities of these transitions.
    pub fn old_log_probs(&self, traj: &Trajectory) -> Tensor {
        traj.log_probs
            .flatten(0, 1)
            .index_select(0, &self.flat_index)
    }

    fn coef(&self, f: impl Fn(f64, f64) -> f64) -> Tensor {
        let v: Vec<f32> = self
            .a_t
            .iter()
            .zip(&self.a_s)
            .map(|(&t, &s)| f(t, s) as f32)
            .collect();
        Tensor::from_slice(&v)
            .to_device(self.x_t.device())
            .view([-1, 1, 1, 1])
    }

    /// The guided ε of each row under `model`, with the sampler's guidance interval and CADS
    /// applied per row exactly as at sampling time.
    fn eps<M: EpsModel + ?Sized>(&self, model: &M, cfg: &SamplerConfig) -> Tensor {
        if !cfg.has_options() {
            return guided_eps_t(model, &self.x_t, &self.t, &self.class, cfg.guidance);
        }
        let guided: Vec<bool> = self
            .a_t
            .iter()
            .map(|&a| {
                cfg.guidance_interval
                    .is_none_or(|iv| iv.contains(edm_sigma(a)))
            })
            .collect();
        let gamma: Vec<f64> = self
            .ts
            .iter()
            .map(|&t| cfg.cads_gamma(t, self.num_train_timesteps))
            .collect();
        let keys = match &cfg.cads {
            Some(_) if gamma.iter().any(|&g| g < 1.0) => {
                crate::cads::sample_keys(&self.x_init).expect("a float latent tensor")
            }
            _ => Vec::new(),
        };
        let rows = cfg.cads.as_ref().map(|c| CadsRows {
            cfg: c,
            keys: &keys,
            timesteps: &self.ts,
            gamma: &gamma,
        });
        guided_eps_rows(
            model,
            &self.x_t,
            &self.t,
            &self.class,
            cfg.guidance,
            &guided,
            rows.as_ref(),
        )
        .expect("CADS replay of a trajectory sampled with CADS")
    }

    /// Mean and standard deviation (`[b, 1, 1, 1]`) of each transition's Gaussian under `model`.
    pub fn gaussian<M: EpsModel + ?Sized>(
        &self,
        model: &M,
        cfg: &SamplerConfig,
    ) -> (Tensor, Tensor) {
        let eps = self.eps(model, cfg);
        let x_t = &self.x_t;
        let mut x0 = (x_t - &eps * self.coef(|t, _| (1.0 - t).sqrt())) / self.coef(|t, _| t.sqrt());
        if cfg.clip_x0 {
            x0 = x0.clamp(-1.0, 1.0);
        }
        match cfg.kind {
            SamplerKind::Ddpm => {
                let var = |t: f64, s: f64| (1.0 - t / s) * (1.0 - s) / (1.0 - t);
                let mean = &x0 * self.coef(|t, s| s.sqrt() * (1.0 - t / s) / (1.0 - t))
                    + x_t * self.coef(|t, s| (t / s).sqrt() * (1.0 - s) / (1.0 - t));
                (mean, self.coef(|t, s| var(t, s).sqrt()))
            }
            SamplerKind::Ddim => {
                let eta = cfg.eta;
                let var = move |t: f64, s: f64| eta * eta * (1.0 - s) / (1.0 - t) * (1.0 - t / s);
                let eps_hat =
                    (x_t - &x0 * self.coef(|t, _| t.sqrt())) / self.coef(|t, _| (1.0 - t).sqrt());
                let mean = &x0 * self.coef(|_, s| s.sqrt())
                    + eps_hat * self.coef(move |t, s| (1.0 - s - var(t, s)).max(0.0).sqrt());
                (mean, self.coef(move |t, s| var(t, s).sqrt()))
            }
        }
    }
}

/// `log N(x; mean, std²)` reduced per sample, with a per-sample `std` (`[b, 1, 1, 1]`).
pub fn gaussian_log_prob_t(
    x: &Tensor,
    mean: &Tensor,
    std: &Tensor,
    reduction: LogProbReduction,
) -> Tensor {
    let z = (x - mean) / std;
    let lp = z.square() * -0.5 - (std.log() + 0.5 * (2.0 * std::f64::consts::PI).ln());
    let dims: Vec<i64> = (1..x.dim() as i64).collect();
    match reduction {
        LogProbReduction::Mean => lp.mean_dim(dims.as_slice(), false, Kind::Float),
        LogProbReduction::Sum => lp.sum_dim_intlist(dims.as_slice(), false, Kind::Float),
    }
}

/// KL(N(μ_a, σ²) ‖ N(μ_b, σ²)) reduced per sample as the log-probabilities are.
pub fn gaussian_kl_t(
    mean_a: &Tensor,
    mean_b: &Tensor,
    std: &Tensor,
    reduction: LogProbReduction,
) -> Tensor {
    let kl = ((mean_a - mean_b) / std).square() * 0.5;
    let dims: Vec<i64> = (1..mean_a.dim() as i64).collect();
    match reduction {
        LogProbReduction::Mean => kl.mean_dim(dims.as_slice(), false, Kind::Float),
        LogProbReduction::Sum => kl.sum_dim_intlist(dims.as_slice(), false, Kind::Float),
    }
}
