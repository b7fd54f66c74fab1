//! The forward noising process and the reverse steps as Gaussian policies.
//!
//! Each reverse step `x_t → x_s` (s < t) is `x_s ~ N(μ_θ(x_t, t, c), σ_t² I)`; [`ReverseStep`]
//! returns the sample *and* its log-density, and [`ReverseStep::log_prob`] recomputes the
//! log-density of a given `x_s` under the current weights (differentiable, what PPO needs).
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BetaSchedule {
    Linear,
    Cosine,
    /// Stable Diffusion's: β linear in √β from √beta_start to √beta_end.
    #[serde(rename = "scaled_linear")]
    ScaledLinear,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    pub num_train_timesteps: i64,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 1e-4,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
        }
    }
}

/// ᾱ_t for t = 0..T-1, kept in f64.
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    pub cfg: ScheduleConfig,
    pub alphas_cumprod: Vec<f64>,
    /// ᾱ after the last step (`t < 0`): 1.0 here; diffusers' DDIM uses ᾱ_0 unless
    /// `set_alpha_to_one` (see [`crate::models::sd::scheduler`]).
    pub final_alpha_cumprod: f64,
}

impl NoiseSchedule {
    pub fn new(cfg: &ScheduleConfig) -> Result<Self> {
        let n = cfg.num_train_timesteps;
        if !(2..=100_000).contains(&n) {
            bail!("num_train_timesteps must be in 2..=100000, got {n}");
        }
        let betas: Vec<f64> = match cfg.beta_schedule {
            BetaSchedule::Linear | BetaSchedule::ScaledLinear => {
                if !(cfg.beta_start > 0.0 && cfg.beta_start <= cfg.beta_end && cfg.beta_end < 1.0) {
                    bail!(
                        "need 0 < beta_start <= beta_end < 1, got {} and {}",
                        cfg.beta_start,
                        cfg.beta_end
                    );
                }
                let scaled = cfg.beta_schedule == BetaSchedule::ScaledLinear;
                let (lo, hi) = if scaled {
                    (cfg.beta_start.sqrt(), cfg.beta_end.sqrt())
                } else {
                    (cfg.beta_start, cfg.beta_end)
                };
                (0..n)
                    .map(|i| {
                        let b = lo + (hi - lo) * i as f64 / (n - 1) as f64;
                        if scaled {
                            b * b
                        } else {
                            b
                        }
                    })
                    .collect()
            }
            BetaSchedule::Cosine => {
                // Nichol & Dhariwal 2021, s = 0.008, betas clipped at 0.999.
                let f = |t: f64| {
                    ((t / n as f64 + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                        .cos()
                        .powi(2)
                };
                (0..n)
                    .map(|i| (1.0 - f(i as f64 + 1.0) / f(i as f64)).min(0.999))
                    .collect()
            }
        };
        let mut acc = 1.0;
        let alphas_cumprod = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect();
        Ok(Self {
            cfg: cfg.clone(),
            alphas_cumprod,
            final_alpha_cumprod: 1.0,
        })
    }

    pub fn num_train_timesteps(&self) -> i64 {
        self.cfg.num_train_timesteps
    }

    /// ᾱ_t; t = -1 means "after the last step" ([`Self::final_alpha_cumprod`], 1.0 = no noise).
    pub fn alpha_bar(&self, t: i64) -> f64 {
        if t < 0 {
            self.final_alpha_cumprod
        } else {
            self.alphas_cumprod[t as usize]
        }
    }

    /// `x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε` for a batch of timesteps `t` (`[B]`, int64).
    pub fn add_noise(&self, x0: &Tensor, eps: &Tensor, t: &Tensor) -> Tensor {
        let ab = Tensor::from_slice(&self.alphas_cumprod)
            .to_kind(Kind::Float)
            .to_device(x0.device());
        let a = ab.index_select(0, t).view([-1, 1, 1, 1]);
        let s1 = a.sqrt();
        let s2 = (a.neg() + 1.0).sqrt();
        x0 * s1 + eps * s2
    }

    /// `steps + 1` timesteps from T-1 down to 0, evenly spaced: the sampler makes `steps`
    /// transitions and ends at t = 0 (ᾱ_0 < 1, so every transition has a positive variance).
    pub fn sampling_timesteps(&self, steps: usize) -> Result<Vec<i64>> {
        let t_max = self.cfg.num_train_timesteps - 1;
        if steps < 1 || steps as i64 > t_max {
            bail!("number of sampling steps must be in 1..={t_max}, got {steps}");
        }
        let ts: Vec<i64> = (0..=steps)
            .map(|i| ((t_max as f64) * (1.0 - i as f64 / steps as f64)).round() as i64)
            .collect();
        Ok(ts)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// Ancestral sampling from the posterior q(x_s | x_t, x̂_0) ("fixed small" variance).
    Ddpm,
    /// DDIM (Song et al.) with stochasticity eta > 0.
    Ddim,
}

impl std::str::FromStr for SamplerKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "ddpm" => Ok(Self::Ddpm),
            "ddim" => Ok(Self::Ddim),
            _ => bail!("unknown sampler {s:?}: expected ddpm or ddim"),
        }
    }
}

/// How a step's log-density over pixels is reduced to one number per sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogProbReduction {
    /// Mean over dimensions (DDPO's convention).
    Mean,
    /// Sum over dimensions (the true log-density).
    Sum,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerConfig {
    pub kind: SamplerKind,
    pub steps: usize,
    /// DDIM stochasticity (ignored by DDPM); must be > 0 so each step has a density.
    pub eta: f64,
    /// Classifier-free guidance scale w: ε = ε_∅ + w (ε_c − ε_∅); 1 = plain conditional, 0 = unconditional.
    pub guidance: f64,
    /// Clip the predicted x̂_0 to [-1, 1].
    pub clip_x0: bool,
    pub reduction: LogProbReduction,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            kind: SamplerKind::Ddim,
            steps: 50,
            eta: 1.0,
            guidance: 1.0,
            clip_x0: true,
            reduction: LogProbReduction::Mean,
        }
    }
}

impl SamplerConfig {
    pub fn validate(&self) -> Result<()> {
        if self.steps < 1 {
            bail!("sampling steps must be >= 1");
        }
        if self.kind == SamplerKind::Ddim && !(self.eta.is_finite() && self.eta > 0.0) {
            bail!(
                "DDIM eta must be > 0 (each step must be a Gaussian with a density), got {}",
                self.eta
            );
        }
        if !self.guidance.is_finite() || self.guidance < 0.0 {
            bail!(
                "guidance scale must be a finite number >= 0, got {}",
                self.guidance
            );
        }
        Ok(())
    }
}

/// A network that predicts ε from (x_t, t, class); the null class gives the unconditional ε.
pub trait EpsModel {
    fn eps(&self, x: &Tensor, t: &Tensor, class: &Tensor) -> Tensor;
    fn null_class(&self) -> i64;
}

impl EpsModel for crate::models::unet::UNet {
    fn eps(&self, x: &Tensor, t: &Tensor, class: &Tensor) -> Tensor {
        self.forward(x, t, class)
    }
    fn null_class(&self) -> i64 {
        self.cfg.null_class()
    }
}

/// Guided ε: one batched forward over (conditional, unconditional) unless w = 1 or the whole
/// batch is already the null class.
pub fn guided_eps<M: EpsModel + ?Sized>(
    model: &M,
    x: &Tensor,
    t: i64,
    class: &Tensor,
    guidance: f64,
) -> Tensor {
    let b = x.size()[0];
    let tt = Tensor::full([b], t, (Kind::Int64, x.device()));
    if (guidance - 1.0).abs() < 1e-12 {
        return model.eps(x, &tt, class);
    }
    let null = Tensor::full([b], model.null_class(), (Kind::Int64, x.device()));
    if guidance == 0.0 {
        return model.eps(x, &tt, &null);
    }
    let out = model.eps(
        &Tensor::cat(&[x, x], 0),
        &Tensor::cat(&[&tt, &tt], 0),
        &Tensor::cat(&[class, &null], 0),
    );
    let parts = out.chunk(2, 0);
    &parts[1] + (&parts[0] - &parts[1]) * guidance
}

/// The Gaussian of one reverse transition t → s: mean and (scalar) standard deviation.
#[derive(Debug)]
pub struct StepGaussian {
    pub mean: Tensor,
    pub std: f64,
    pub pred_x0: Tensor,
}

/// Computes the transition Gaussian from ε (no network call): DDPM posterior or DDIM(eta).
pub fn step_gaussian(
    sched: &NoiseSchedule,
    cfg: &SamplerConfig,
    x_t: &Tensor,
    eps: &Tensor,
    t: i64,
    s: i64,
) -> StepGaussian {
    let a_t = sched.alpha_bar(t);
    let a_s = sched.alpha_bar(s);
    let mut x0 = (x_t - eps * (1.0 - a_t).sqrt()) / a_t.sqrt();
    if cfg.clip_x0 {
        x0 = x0.clamp(-1.0, 1.0);
    }
    match cfg.kind {
        SamplerKind::Ddpm => {
            let alpha = a_t / a_s;
            let beta = 1.0 - alpha;
            let var = beta * (1.0 - a_s) / (1.0 - a_t);
            let mean = &x0 * (a_s.sqrt() * beta / (1.0 - a_t))
                + x_t * (alpha.sqrt() * (1.0 - a_s) / (1.0 - a_t));
            StepGaussian {
                mean,
                std: var.sqrt(),
                pred_x0: x0,
            }
        }
        SamplerKind::Ddim => {
            let var = cfg.eta * cfg.eta * (1.0 - a_s) / (1.0 - a_t) * (1.0 - a_t / a_s);
            // ε consistent with the (possibly clipped) x̂_0.
            let eps_hat = (x_t - &x0 * a_t.sqrt()) / (1.0 - a_t).sqrt();
            let dir = (1.0 - a_s - var).max(0.0).sqrt();
            let mean = &x0 * a_s.sqrt() + eps_hat * dir;
            StepGaussian {
                mean,
                std: var.sqrt(),
                pred_x0: x0,
            }
        }
    }
}

/// log N(x; mean, std² I), reduced over all but the first dimension → `[B]`.
pub fn gaussian_log_prob(
    x: &Tensor,
    mean: &Tensor,
    std: f64,
    reduction: LogProbReduction,
) -> Tensor {
    let z = (x - mean) / std;
    let lp = z.square() * -0.5 - (std.ln() + 0.5 * (2.0 * std::f64::consts::PI).ln());
    let dims: Vec<i64> = (1..x.dim() as i64).collect();
    match reduction {
        LogProbReduction::Mean => lp.mean_dim(dims.as_slice(), false, Kind::Float),
        LogProbReduction::Sum => lp.sum_dim_intlist(dims.as_slice(), false, Kind::Float),
    }
}

/// Result of one sampled reverse step.
#[derive(Debug)]
pub struct StepOutput {
    pub sample: Tensor,
    pub log_prob: Tensor,
    pub mean: Tensor,
    pub std: f64,
    pub pred_x0: Tensor,
}

/// One reverse step of the sampler viewed as a policy.
pub struct ReverseStep<'a, M: EpsModel + ?Sized> {
    pub model: &'a M,
    pub sched: &'a NoiseSchedule,
    pub cfg: &'a SamplerConfig,
}

impl<M: EpsModel + ?Sized> ReverseStep<'_, M> {
    fn gaussian(&self, x_t: &Tensor, t: i64, s: i64, class: &Tensor) -> StepGaussian {
        let eps = guided_eps(self.model, x_t, t, class, self.cfg.guidance);
        step_gaussian(self.sched, self.cfg, x_t, &eps, t, s)
    }

    /// Samples x_s = μ + σ·noise and returns it with its log-probability.
    pub fn sample(
        &self,
        x_t: &Tensor,
        t: i64,
        s: i64,
        class: &Tensor,
        noise: &Tensor,
    ) -> StepOutput {
        let g = self.gaussian(x_t, t, s, class);
        let sample = &g.mean + noise * g.std;
        let log_prob = gaussian_log_prob(&sample, &g.mean, g.std, self.cfg.reduction);
        StepOutput {
            sample,
            log_prob,
            mean: g.mean,
            std: g.std,
            pred_x0: g.pred_x0,
        }
    }

    /// Log-probability of a given x_s under the current weights (differentiable in them).
    pub fn log_prob(&self, x_t: &Tensor, t: i64, s: i64, class: &Tensor, x_s: &Tensor) -> Tensor {
        let g = self.gaussian(x_t, t, s, class);
        gaussian_log_prob(x_s, &g.mean, g.std, self.cfg.reduction)
    }
}
