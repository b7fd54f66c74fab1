//! CADS, condition-annealed sampling (Sadat et al., ICLR 2024): during sampling the conditional
//! branch sees a noisy condition vector
//!
//! ```text
//! ŷ = √γ(t) · y + s · √(1 − γ(t)) · n,   n ~ N(0, I) drawn afresh at every step,
//! ```
//!
//! optionally rescaled to the mean and standard deviation of `y` and mixed back with ψ:
//! `ŷ ← ψ · ((ŷ − mean ŷ) / std ŷ · std y + mean y) + (1 − ψ) · ŷ`. The annealing schedule is
//! piecewise linear in the diffusion time `t ∈ [0, 1]` (1 = pure noise): `γ = 1` for `t ≤ τ1`,
//! `(τ2 − t) / (τ2 − τ1)` between, `0` for `t ≥ τ2`, so the condition is hidden early in the
//! reverse process and restored for the last steps. Guidance's unconditional (null-class)
//! branch is never perturbed.
//!
//! Here `y` is the class embedding that [`crate::models::unet::UNet`] adds to its time
//! embedding, the diffusion time of timestep `k` is `k / (T − 1)` (`T` training timesteps),
//! and mean and standard deviation are taken per sample over the vector's entries.
//!
//! The noise `n` of a sample at a step is a pure function of the sample's initial noise `x_T`
//! and the step's timestep ([`sample_keys`], [`condition_noise`]), so a stored trajectory's
//! steps can be replayed exactly (PPO's importance ratio stays 1 on-policy) without storing
//! anything beyond the trajectory itself.
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::rng::SplitMix64;

/// CADS settings; [`Default`] gives the paper's recommended values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CadsConfig {
    /// γ = 1 (clean condition) for diffusion times t ≤ τ1.
    pub tau1: f64,
    /// γ = 0 (condition replaced by noise of scale s) for t ≥ τ2.
    pub tau2: f64,
    /// s: scale of the noise added to the condition vector.
    pub noise_scale: f64,
    /// ψ ∈ [0, 1]: share of the rescaled vector (1 = fully rescaled to y's mean and std, 0 = no
    /// rescaling).
    pub psi: f64,
}

impl Default for CadsConfig {
    fn default() -> Self {
        Self {
            tau1: 0.6,
            tau2: 0.9,
            noise_scale: 0.25,
            psi: 1.0,
        }
    }
}

impl CadsConfig {
    pub fn validate(&self) -> Result<()> {
        let unit = |v: f64| v.is_finite() && (0.0..=1.0).contains(&v);
        if !unit(self.tau1) || !unit(self.tau2) || self.tau1 > self.tau2 {
            bail!(
                "CADS needs 0 <= tau1 <= tau2 <= 1, got tau1 = {} and tau2 = {}",
                self.tau1,
                self.tau2
            );
        }
        if !(self.noise_scale.is_finite() && self.noise_scale >= 0.0) {
            bail!(
                "CADS noise scale must be a finite number >= 0, got {}",
                self.noise_scale
            );
        }
        if !unit(self.psi) {
            bail!("CADS psi must be in [0, 1], got {}", self.psi);
        }
        Ok(())
    }

    /// γ(t) for diffusion time `t ∈ [0, 1]` (1 = pure noise).
    pub fn gamma(&self, t: f64) -> f64 {
        if t <= self.tau1 {
            1.0
        } else if t >= self.tau2 {
            0.0
        } else {
            (self.tau2 - t) / (self.tau2 - self.tau1)
        }
    }

    /// γ of timestep `t` of a schedule with `num_train_timesteps` timesteps.
    pub fn gamma_at(&self, t: i64, num_train_timesteps: i64) -> f64 {
        self.gamma(diffusion_time(t, num_train_timesteps))
    }

    /// The annealed condition vectors: `y` (`[B, D]`) with row `i` perturbed by `noise` row `i`
    /// at level `gamma[i]`. Rows with `γ = 1` come back exactly as they were.
    pub fn perturb(&self, y: &Tensor, gamma: &[f64], noise: &Tensor) -> Tensor {
        let dev = y.device();
        let col = |f: &dyn Fn(f64) -> f64| {
            let v: Vec<f32> = gamma.iter().map(|&g| f(g) as f32).collect();
            Tensor::from_slice(&v).to_device(dev).view([-1, 1])
        };
        let s = self.noise_scale;
        let noisy = y * col(&|g| g.sqrt()) + noise * col(&|g| s * (1.0 - g).max(0.0).sqrt());
        let mixed = if self.psi > 0.0 {
            let dims: &[i64] = &[1];
            let (m_in, sd_in) = (
                y.mean_dim(dims, true, Kind::Float),
                y.std_dim(dims, true, true),
            );
            let (m, sd) = (
                noisy.mean_dim(dims, true, Kind::Float),
                noisy.std_dim(dims, true, true).clamp_min(1e-12),
            );
            let rescaled = (&noisy - m) / sd * sd_in + m_in;
            rescaled * self.psi + &noisy * (1.0 - self.psi)
        } else {
            noisy
        };
        let keep: Vec<bool> = gamma.iter().map(|&g| g >= 1.0).collect();
        let keep = Tensor::from_slice(&keep).to_device(dev).view([-1, 1]);
        y.where_self(&keep, &mixed)
    }
}

/// Diffusion time in `[0, 1]` of timestep `t` (`t / (T − 1)`, clamped; 1 = pure noise).
pub fn diffusion_time(t: i64, num_train_timesteps: i64) -> f64 {
    (t as f64 / (num_train_timesteps - 1).max(1) as f64).clamp(0.0, 1.0)
}

/// SplitMix64's output function, used as a 64-bit mixer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One key per sample (row of `x_init`, the initial noise `x_T`): a hash of its float bits.
pub fn sample_keys(x_init: &Tensor) -> Result<Vec<u64>> {
    let b = x_init.size()[0];
    let flat = x_init
        .detach()
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous()
        .view([b, -1]);
    let vals: Vec<f32> = Vec::<f32>::try_from(&flat.view([-1]))?;
    let per = if b > 0 { vals.len() / b as usize } else { 0 };
    Ok((0..b as usize)
        .map(|i| {
            vals[i * per..(i + 1) * per]
                .iter()
                .fold(0x243F_6A88_85A3_08D3u64, |h, v| {
                    mix(h ^ u64::from(v.to_bits())).wrapping_add(0x9E37_79B9_7F4A_7C15)
                })
        })
        .collect())
}

/// The CADS noise `n` (`[B, dim]`, standard normal) of samples with `keys` at timesteps `ts`
/// (one per row): the same numbers at sampling and at every replay.
pub fn condition_noise(keys: &[u64], ts: &[i64], dim: i64, device: Device) -> Tensor {
    assert_eq!(keys.len(), ts.len(), "one timestep per key");
    let mut v = Vec::with_capacity(keys.len() * dim.max(0) as usize);
    for (&k, &t) in keys.iter().zip(ts) {
        let seed = mix(k ^ mix((t as u64).wrapping_add(0xC4D5_0000_0000_0001)));
        v.extend(SplitMix64(seed).normals(dim.max(0) as usize));
    }
    Tensor::from_slice(&v)
        .view([keys.len() as i64, dim])
        .to_device(device)
}
