//! `scheduler/scheduler_config.json` of a diffusers pipeline → the noise schedule and diffusers'
//! DDIM timestep spacing ("leading": `t_i = i·⌊T/steps⌋ + steps_offset`, descending).
//!
//! The step after the last timestep uses `final_alpha_cumprod` = 1 when `set_alpha_to_one`, else
//! ᾱ_0 (as `DDIMScheduler`). The DDIM policy needs a positive variance at every step, so
//! `set_alpha_to_one = true` is refused for training/sampling with log-probabilities (Stable
//! Diffusion 1.x ships `false`).
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::schedule::{BetaSchedule, NoiseSchedule, ScheduleConfig};

fn d_t() -> i64 {
    1000
}
fn d_start() -> f64 {
    0.0001
}
fn d_end() -> f64 {
    0.02
}
fn d_sched() -> String {
    "linear".into()
}
fn d_pred() -> String {
    "epsilon".into()
}
fn d_true() -> bool {
    true
}
fn d_spacing() -> String {
    "leading".into()
}

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Prediction {
    Epsilon,
    VPrediction,
}

/// The fields of `scheduler_config.json` that matter here (diffusers' defaults otherwise).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    #[serde(default = "d_t")]
    pub num_train_timesteps: i64,
    #[serde(default = "d_start")]
    pub beta_start: f64,
    #[serde(default = "d_end")]
    pub beta_end: f64,
    #[serde(default = "d_sched")]
    pub beta_schedule: String,
    #[serde(default = "d_pred")]
    pub prediction_type: String,
    #[serde(default)]
    pub steps_offset: i64,
    #[serde(default = "d_true")]
    pub set_alpha_to_one: bool,
    #[serde(default = "d_spacing")]
    pub timestep_spacing: String,
    #[serde(default)]
    pub trained_betas: Option<serde_json::Value>,
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
}

/// The schedule of a Stable Diffusion pipeline.
#[derive(Debug, Clone)]
pub struct SdScheduler {
    pub cfg: SchedulerConfig,
    pub sched: NoiseSchedule,
    pub prediction: Prediction,
}

impl SdScheduler {
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        let beta_schedule = match cfg.beta_schedule.as_str() {
            "linear" => BetaSchedule::Linear,
            "scaled_linear" => BetaSchedule::ScaledLinear,
            "squaredcos_cap_v2" => BetaSchedule::Cosine,
            other => bail!(
                "unsupported beta_schedule {other:?} (linear, scaled_linear or squaredcos_cap_v2)"
            ),
        };
        let prediction = match cfg.prediction_type.as_str() {
            "epsilon" => Prediction::Epsilon,
            "v_prediction" => Prediction::VPrediction,
            other => bail!("unsupported prediction_type {other:?} (epsilon or v_prediction)"),
        };
        if cfg.trained_betas.as_ref().is_some_and(|v| !v.is_null()) {
            bail!("unsupported scheduler feature: trained_betas");
        }
        if cfg.rescale_betas_zero_snr {
            bail!("unsupported scheduler feature: rescale_betas_zero_snr");
        }
        if cfg.steps_offset < 0 {
            bail!("steps_offset must be >= 0");
        }
        let mut sched = NoiseSchedule::new(&ScheduleConfig {
            num_train_timesteps: cfg.num_train_timesteps,
            beta_start: cfg.beta_start,
            beta_end: cfg.beta_end,
            beta_schedule,
        })?;
        sched.final_alpha_cumprod = if cfg.set_alpha_to_one {
            1.0
        } else {
            sched.alphas_cumprod[0]
        };
        Ok(Self {
            cfg: cfg.clone(),
            sched,
            prediction,
        })
    }

    /// The `steps + 1` timesteps of a DDIM trajectory: diffusers' spacing for `steps`
    /// inference steps, then `-1` (the clean end point, ᾱ = `final_alpha_cumprod`).
    pub fn timesteps(&self, steps: usize) -> Result<Vec<i64>> {
        let t = self.cfg.num_train_timesteps;
        if steps < 1 || steps as i64 > t {
            bail!("number of sampling steps must be in 1..={t}, got {steps}");
        }
        if self.sched.final_alpha_cumprod >= 1.0 {
            bail!(
                "scheduler set_alpha_to_one = true makes the last DDIM step deterministic; the policy needs a density at every step (set it to false, as Stable Diffusion 1.x does)"
            );
        }
        let s = steps as i64;
        let mut ts: Vec<i64> = match self.cfg.timestep_spacing.as_str() {
            "leading" => {
                let ratio = t / s;
                (0..s)
                    .rev()
                    .map(|i| i * ratio + self.cfg.steps_offset)
                    .collect()
            }
            "trailing" => {
                let ratio = t as f64 / s as f64;
                (1..=s)
                    .rev()
                    .map(|i| (i as f64 * ratio).round() as i64 - 1)
                    .collect()
            }
            "linspace" => (0..s)
                .rev()
                .map(|i| ((t - 1) as f64 * i as f64 / (s - 1).max(1) as f64).round() as i64)
                .collect(),
            other => bail!("unsupported timestep_spacing {other:?} (leading, trailing, linspace)"),
        };
        if ts.iter().any(|&x| x >= t) || ts.windows(2).any(|w| w[1] >= w[0]) {
            bail!("timestep spacing gives invalid timesteps for {steps} steps");
        }
        ts.push(-1);
        Ok(ts)
    }
}
