//! The forward noising process and the reverse steps as Gaussian policies.
//!
//! Each reverse step `x_t → x_s` (s < t) is `x_s ~ N(μ_θ(x_t, t, c), σ_t² I)`. [`Transitions`]
//! computes that Gaussian for a batch whose rows may sit at different timesteps: the sampler's
//! [`ReverseStep`] (every row at one pair; it returns the sample *and* its log-density) and
//! PPO's replay of stored trajectories ([`crate::rl::policy::StepBatch`], one pair per row,
//! differentiable in the weights) both go through it, so an unchanged policy's importance ratio
//! is 1 by construction.
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

pub use crate::cads::CadsConfig;

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
    /// Guidance in a limited interval (Kynkäänniemi et al. 2024): the scale `guidance` applies
    /// only at steps whose noise level lies in the interval, the others use w = 1 (the plain
    /// conditional ε, one forward pass). `None`: guidance at every step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_interval: Option<GuidanceInterval>,
    /// CADS, noise on the condition annealed over the early steps ([`crate::cads`]). `None`: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cads: Option<CadsConfig>,
}

/// A noise-level interval in EDM's σ (Karras et al. 2022): the step at timestep t is inside iff
/// `sigma_lo < σ_t ≤ sigma_hi`, with `σ_t = √((1 − ᾱ_t) / ᾱ_t)` (the noise-to-signal ratio of
/// `x_t`; a variance-preserving `x_t` is `√ᾱ_t` times EDM's `x + σ ε`). So the σ values of the
/// guidance-interval paper, given for EDM samplers, carry over unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuidanceInterval {
    pub sigma_lo: f64,
    pub sigma_hi: f64,
}

impl GuidanceInterval {
    pub fn validate(&self) -> Result<()> {
        if !(self.sigma_lo.is_finite()
            && self.sigma_hi.is_finite()
            && self.sigma_lo >= 0.0
            && self.sigma_lo < self.sigma_hi)
        {
            bail!(
                "guidance interval needs finite 0 <= sigma_lo < sigma_hi, got ({}, {}]",
                self.sigma_lo,
                self.sigma_hi
            );
        }
        Ok(())
    }

    pub fn contains(&self, sigma: f64) -> bool {
        sigma > self.sigma_lo && sigma <= self.sigma_hi
    }
}

impl std::str::FromStr for GuidanceInterval {
    type Err = anyhow::Error;
    /// `LO,HI` (σ values), validated.
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let [lo, hi] = parts.as_slice() else {
            bail!("bad guidance interval {s:?}: expected LO,HI (two noise levels sigma)");
        };
        let num = |v: &str| {
            v.parse::<f64>()
                .map_err(|_| anyhow::anyhow!("bad guidance interval {s:?}: {v:?} is not a number"))
        };
        let iv = Self {
            sigma_lo: num(lo)?,
            sigma_hi: num(hi)?,
        };
        iv.validate()?;
        Ok(iv)
    }
}

/// EDM noise level `σ = √((1 − ᾱ) / ᾱ)` of a variance-preserving step with cumulative ᾱ.
pub fn edm_sigma(alpha_bar: f64) -> f64 {
    ((1.0 - alpha_bar) / alpha_bar).sqrt()
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
            guidance_interval: None,
            cads: None,
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
        if let Some(iv) = &self.guidance_interval {
            iv.validate()?;
        }
        if let Some(c) = &self.cads {
            c.validate()?;
        }
        Ok(())
    }

    /// The guidance scale of a step from `x_t` with cumulative ᾱ_t: `guidance` inside the
    /// guidance interval (or when there is none), 1 outside it.
    pub fn guidance_at(&self, alpha_bar_t: f64) -> f64 {
        match &self.guidance_interval {
            Some(iv) if !iv.contains(edm_sigma(alpha_bar_t)) => 1.0,
            _ => self.guidance,
        }
    }

    /// CADS's γ at timestep `t` (1 = the condition untouched, also when CADS is off).
    pub fn cads_gamma(&self, t: i64, num_train_timesteps: i64) -> f64 {
        match &self.cads {
            Some(c) => c.gamma_at(t, num_train_timesteps),
            None => 1.0,
        }
    }

    /// Whether CADS or a guidance interval is on (the options that change the ε computation).
    pub fn has_options(&self) -> bool {
        self.guidance_interval.is_some() || self.cads.is_some()
    }
}

/// A network that predicts ε from (x_t, t, class); the null class gives the unconditional ε.
pub trait EpsModel {
    fn eps(&self, x: &Tensor, t: &Tensor, class: &Tensor) -> Tensor;
    fn null_class(&self) -> i64;
    /// Whether the model conditions through a vector that [`Self::eps_mapped_cond`] can
    /// replace (what CADS perturbs).
    fn has_cond_vector(&self) -> bool {
        false
    }
    /// ε with each row's condition vector `y` (`[B, D]`) replaced by `map(y)`. Models without
    /// a condition vector return an error.
    fn eps_mapped_cond(
        &self,
        x: &Tensor,
        t: &Tensor,
        class: &Tensor,
        map: &dyn Fn(&Tensor) -> Tensor,
    ) -> Result<Tensor> {
        let _ = (x, t, class, map);
        bail!("this model has no condition vector to perturb (CADS needs one)")
    }
}

/// What CADS needs per row of a batch: the sample keys ([`crate::cads::sample_keys`]), the
/// rows' timesteps and their γ.
pub struct CadsRows<'a> {
    pub cfg: &'a CadsConfig,
    pub keys: &'a [u64],
    pub timesteps: &'a [i64],
    pub gamma: &'a [f64],
}

/// Guided ε with per-row options: row `i` is guided with scale `guidance` if `guided[i]`
/// (else it is the plain conditional ε), and with `cads` its conditional branch sees the
/// annealed condition. One batched forward over the conditional rows and the unconditional
/// (null-class, never perturbed) copies of the guided rows.
pub fn guided_eps_rows<M: EpsModel + ?Sized>(
    model: &M,
    x: &Tensor,
    t: &Tensor,
    class: &Tensor,
    guidance: f64,
    guided: &[bool],
    cads: Option<&CadsRows>,
) -> Result<Tensor> {
    let b = x.size()[0];
    let dev = x.device();
    let g: Vec<i64> = (0..b)
        .filter(|&i| guided[i as usize] && (guidance - 1.0).abs() >= 1e-12)
        .collect();
    let (xa, ta, ca) = if g.is_empty() {
        (x.shallow_clone(), t.shallow_clone(), class.shallow_clone())
    } else {
        let gi = Tensor::from_slice(&g).to_device(dev);
        let xg = x.index_select(0, &gi);
        let tg = t.index_select(0, &gi);
        let null = Tensor::full([g.len() as i64], model.null_class(), (Kind::Int64, dev));
        (
            Tensor::cat(&[x, &xg], 0),
            Tensor::cat(&[t, &tg], 0),
            Tensor::cat(&[class, &null], 0),
        )
    };
    let out = match cads {
        Some(c) if c.gamma.iter().any(|&v| v < 1.0) => {
            // The unconditional copies keep γ = 1: their null-class vector stays as it is.
            let mut gamma = c.gamma.to_vec();
            gamma.resize(b as usize + g.len(), 1.0);
            let map = |y: &Tensor| {
                let d = y.size()[1];
                let n = crate::cads::condition_noise(c.keys, c.timesteps, d, y.device());
                let pad = Tensor::zeros([g.len() as i64, d], (Kind::Float, y.device()));
                c.cfg.perturb(y, &gamma, &Tensor::cat(&[n, pad], 0))
            };
            model.eps_mapped_cond(&xa, &ta, &ca, &map)?
        }
        _ => model.eps(&xa, &ta, &ca),
    };
    if g.is_empty() {
        return Ok(out);
    }
    let cond = out.narrow(0, 0, b);
    let uncond = out.narrow(0, b, g.len() as i64);
    let gi = Tensor::from_slice(&g).to_device(dev);
    let guided_eps = &uncond + (cond.index_select(0, &gi) - &uncond) * guidance;
    Ok(cond.index_copy(0, &gi, &guided_eps))
}

/// Guided ε with a per-row timestep tensor `t` (`[B]`): one batched forward over (conditional,
/// unconditional) unless w = 1, or one over the null class when w = 0.
pub fn guided_eps<M: EpsModel + ?Sized>(
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

/// Reverse transitions `t_i → s_i`, one per row of a batch. The sampler's step (every row at the
/// same pair) and PPO's replay of stored trajectories (each row at its own pair) are this one
/// computation, so a replayed transition has the sampled Gaussian by construction.
pub struct Transitions {
    /// `[B]` int64 timesteps t_i.
    t: Tensor,
    ts: Vec<i64>,
    a_t: Vec<f64>,
    a_s: Vec<f64>,
    num_train_timesteps: i64,
}

impl Transitions {
    /// Row `i` goes from timestep `ts[i]` to `ss[i]` (`ss[i] < ts[i]`; −1 = the clean image).
    pub fn new(sched: &NoiseSchedule, ts: Vec<i64>, ss: &[i64], device: Device) -> Self {
        assert_eq!(ts.len(), ss.len(), "one target timestep per row");
        Self {
            t: Tensor::from_slice(&ts).to_device(device),
            a_t: ts.iter().map(|&t| sched.alpha_bar(t)).collect(),
            a_s: ss.iter().map(|&s| sched.alpha_bar(s)).collect(),
            ts,
            num_train_timesteps: sched.num_train_timesteps(),
        }
    }

    /// `rows` rows, all from `t` to `s` (one step of the sampler).
    pub fn uniform(sched: &NoiseSchedule, t: i64, s: i64, rows: usize, device: Device) -> Self {
        Self::new(sched, vec![t; rows], &vec![s; rows], device)
    }

    /// Whether CADS perturbs the condition of some row (then [`Self::eps`] needs the keys).
    pub fn needs_cads_keys(&self, cfg: &SamplerConfig) -> bool {
        cfg.cads.is_some() && self.gamma(cfg).iter().any(|&g| g < 1.0)
    }

    fn gamma(&self, cfg: &SamplerConfig) -> Vec<f64> {
        self.ts
            .iter()
            .map(|&t| cfg.cads_gamma(t, self.num_train_timesteps))
            .collect()
    }

    /// `f(ᾱ_t, ᾱ_s)` of each row as a float `[B, 1, 1, 1]` tensor, computed in f64 and rounded
    /// once (the same value a scalar coefficient would be rounded to).
    fn coef(&self, device: Device, f: impl Fn(f64, f64) -> f64) -> Tensor {
        let v: Vec<f32> = self
            .a_t
            .iter()
            .zip(&self.a_s)
            .map(|(&t, &s)| f(t, s) as f32)
            .collect();
        Tensor::from_slice(&v).to_device(device).view([-1, 1, 1, 1])
    }

    /// The guided ε of each row under `model`, with the sampler's guidance interval and CADS
    /// applied per row. `keys` are the rows' CADS keys ([`crate::cads::sample_keys`] of their
    /// initial noise), needed only when CADS perturbs some row's condition.
    pub fn eps<M: EpsModel + ?Sized>(
        &self,
        model: &M,
        cfg: &SamplerConfig,
        x_t: &Tensor,
        class: &Tensor,
        keys: Option<&[u64]>,
    ) -> Result<Tensor> {
        if !cfg.has_options() {
            return Ok(guided_eps(model, x_t, &self.t, class, cfg.guidance));
        }
        let guided: Vec<bool> = self
            .a_t
            .iter()
            .map(|&a| {
                cfg.guidance_interval
                    .is_none_or(|iv| iv.contains(edm_sigma(a)))
            })
            .collect();
        let gamma = self.gamma(cfg);
        let rows = match &cfg.cads {
            Some(c) if gamma.iter().any(|&g| g < 1.0) => {
                let Some(keys) = keys else {
                    bail!("a CADS step needs the samples' keys (crate::cads::sample_keys)");
                };
                if keys.len() != self.ts.len() {
                    bail!("{} CADS keys for {} samples", keys.len(), self.ts.len());
                }
                Some(CadsRows {
                    cfg: c,
                    keys,
                    timesteps: &self.ts,
                    gamma: &gamma,
                })
            }
            _ => None,
        };
        guided_eps_rows(
            model,
            x_t,
            &self.t,
            class,
            cfg.guidance,
            &guided,
            rows.as_ref(),
        )
    }

    /// Each row's transition Gaussian from its ε (no network call): DDPM posterior or DDIM(eta).
    pub fn gaussian_from_eps(
        &self,
        cfg: &SamplerConfig,
        x_t: &Tensor,
        eps: &Tensor,
    ) -> StepGaussian {
        let dev = x_t.device();
        let c = |f: &dyn Fn(f64, f64) -> f64| self.coef(dev, f);
        let mut x0 = (x_t - eps * c(&|t, _| (1.0 - t).sqrt())) / c(&|t, _| t.sqrt());
        if cfg.clip_x0 {
            x0 = x0.clamp(-1.0, 1.0);
        }
        let (mean, var): (Tensor, Box<dyn Fn(f64, f64) -> f64>) = match cfg.kind {
            SamplerKind::Ddpm => {
                // β = 1 − ᾱ_t/ᾱ_s; posterior variance β (1 − ᾱ_s) / (1 − ᾱ_t).
                let mean = &x0 * c(&|t, s| s.sqrt() * (1.0 - t / s) / (1.0 - t))
                    + x_t * c(&|t, s| (t / s).sqrt() * (1.0 - s) / (1.0 - t));
                (mean, Box::new(|t, s| (1.0 - t / s) * (1.0 - s) / (1.0 - t)))
            }
            SamplerKind::Ddim => {
                let eta = cfg.eta;
                let var = move |t: f64, s: f64| eta * eta * (1.0 - s) / (1.0 - t) * (1.0 - t / s);
                // ε consistent with the (possibly clipped) x̂_0.
                let eps_hat = (x_t - &x0 * c(&|t, _| t.sqrt())) / c(&|t, _| (1.0 - t).sqrt());
                let mean = &x0 * c(&|_, s| s.sqrt())
                    + eps_hat * c(&|t, s| (1.0 - s - var(t, s)).max(0.0).sqrt());
                (mean, Box::new(var))
            }
        };
        StepGaussian {
            mean,
            std: c(&|t, s| var(t, s).sqrt()),
            log_norm: c(&|t, s| var(t, s).sqrt().ln() + 0.5 * (2.0 * std::f64::consts::PI).ln()),
        }
    }

    /// Each row's transition Gaussian under `model` ([`Self::eps`], then
    /// [`Self::gaussian_from_eps`]).
    pub fn gaussian<M: EpsModel + ?Sized>(
        &self,
        model: &M,
        cfg: &SamplerConfig,
        x_t: &Tensor,
        class: &Tensor,
        keys: Option<&[u64]>,
    ) -> Result<StepGaussian> {
        let eps = self.eps(model, cfg, x_t, class, keys)?;
        Ok(self.gaussian_from_eps(cfg, x_t, &eps))
    }
}

/// The Gaussians `N(mean_i, std_i² I)` of a batch of reverse transitions.
#[derive(Debug)]
pub struct StepGaussian {
    pub mean: Tensor,
    /// `[B, 1, 1, 1]`.
    pub std: Tensor,
    /// `ln σ_i + ½ ln 2π` (`[B, 1, 1, 1]`), computed in f64 before rounding.
    log_norm: Tensor,
}

impl StepGaussian {
    /// Gaussians with the given means and per-row standard deviations.
    pub fn new(mean: Tensor, std: &[f64]) -> Self {
        let dev = mean.device();
        let col = |v: Vec<f32>| Tensor::from_slice(&v).to_device(dev).view([-1, 1, 1, 1]);
        Self {
            std: col(std.iter().map(|&s| s as f32).collect()),
            log_norm: col(std
                .iter()
                .map(|&s| (s.ln() + 0.5 * (2.0 * std::f64::consts::PI).ln()) as f32)
                .collect()),
            mean,
        }
    }

    /// `mean + std · noise`.
    pub fn sample(&self, noise: &Tensor) -> Tensor {
        &self.mean + noise * &self.std
    }

    /// `log N(x; mean, std² I)` of each row, reduced over all but the first dimension → `[B]`.
    pub fn log_prob(&self, x: &Tensor, reduction: LogProbReduction) -> Tensor {
        let z = (x - &self.mean) / &self.std;
        reduce_rows(&(z.square() * -0.5 - &self.log_norm), reduction)
    }

    /// `KL(N(mean, std²) ‖ N(other_mean, std²))` of each row, reduced as the log-probabilities are.
    pub fn kl_to(&self, other_mean: &Tensor, reduction: LogProbReduction) -> Tensor {
        reduce_rows(
            &(((&self.mean - other_mean) / &self.std).square() * 0.5),
            reduction,
        )
    }
}

fn reduce_rows(v: &Tensor, reduction: LogProbReduction) -> Tensor {
    let dims: Vec<i64> = (1..v.dim() as i64).collect();
    match reduction {
        LogProbReduction::Mean => v.mean_dim(dims.as_slice(), false, Kind::Float),
        LogProbReduction::Sum => v.sum_dim_intlist(dims.as_slice(), false, Kind::Float),
    }
}

/// Result of one sampled reverse step.
#[derive(Debug)]
pub struct StepOutput {
    pub sample: Tensor,
    pub log_prob: Tensor,
    pub gaussian: StepGaussian,
}

/// One reverse step of the sampler viewed as a policy: [`Transitions`] with every row at the
/// same timestep pair.
pub struct ReverseStep<'a, M: EpsModel + ?Sized> {
    pub model: &'a M,
    pub sched: &'a NoiseSchedule,
    pub cfg: &'a SamplerConfig,
}

impl<M: EpsModel + ?Sized> ReverseStep<'_, M> {
    fn gaussian(
        &self,
        x_t: &Tensor,
        t: i64,
        s: i64,
        class: &Tensor,
        keys: Option<&[u64]>,
    ) -> Result<StepGaussian> {
        let rows = Transitions::uniform(self.sched, t, s, x_t.size()[0] as usize, x_t.device());
        rows.gaussian(self.model, self.cfg, x_t, class, keys)
    }

    /// Samples x_s = μ + σ·noise and returns it with its log-probability. Panics at a step
    /// where CADS perturbs the condition: those need [`Self::sample_keyed`].
    pub fn sample(
        &self,
        x_t: &Tensor,
        t: i64,
        s: i64,
        class: &Tensor,
        noise: &Tensor,
    ) -> StepOutput {
        self.sample_keyed(x_t, t, s, class, noise, None)
            .expect("ReverseStep::sample at a CADS step")
    }

    /// [`Self::sample`] with the samples' CADS keys ([`crate::cads::sample_keys`] of their
    /// initial noise), needed only at steps where CADS perturbs the condition.
    pub fn sample_keyed(
        &self,
        x_t: &Tensor,
        t: i64,
        s: i64,
        class: &Tensor,
        noise: &Tensor,
        keys: Option<&[u64]>,
    ) -> Result<StepOutput> {
        let gaussian = self.gaussian(x_t, t, s, class, keys)?;
        let sample = gaussian.sample(noise);
        let log_prob = gaussian.log_prob(&sample, self.cfg.reduction);
        Ok(StepOutput {
            sample,
            log_prob,
            gaussian,
        })
    }

    /// Log-probability of a given x_s under the current weights (differentiable in them).
    /// Panics at a step where CADS perturbs the condition: use [`Self::log_prob_keyed`].
    pub fn log_prob(&self, x_t: &Tensor, t: i64, s: i64, class: &Tensor, x_s: &Tensor) -> Tensor {
        self.log_prob_keyed(x_t, t, s, class, x_s, None)
            .expect("ReverseStep::log_prob at a CADS step")
    }

    /// [`Self::log_prob`] with the samples' CADS keys.
    pub fn log_prob_keyed(
        &self,
        x_t: &Tensor,
        t: i64,
        s: i64,
        class: &Tensor,
        x_s: &Tensor,
        keys: Option<&[u64]>,
    ) -> Result<Tensor> {
        let g = self.gaussian(x_t, t, s, class, keys)?;
        Ok(g.log_prob(x_s, self.cfg.reduction))
    }
}
