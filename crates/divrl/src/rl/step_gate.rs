//! A policy whose adapters act only on the high-noise steps (`policy_steps`): rows at timesteps
//! `t >= t_min` go through the trained UNet, the others through the frozen base. The sampler and
//! the PPO replay both see this one ε, so the ratio is 1 on policy by construction, and the base
//! keeps drawing the details of whatever coarse image the adapted early steps lay out.
use anyhow::Result;
use tch::{Device, Tensor};

use crate::models::unet::UNet;
use crate::schedule::{EpsModel, NoiseSchedule, SamplerConfig, StepGaussian};

use super::policy::StepBatch;
use super::ppo::StepPolicy;

/// The lowest timestep at which adapters act on the first `policy_steps` of `steps` sampling
/// steps (`None` for `policy_steps = 0`: every step).
pub fn gate_t_min(sched: &NoiseSchedule, steps: usize, policy_steps: usize) -> Result<Option<i64>> {
    Ok(match policy_steps {
        0 => None,
        p => Some(sched.sampling_timesteps(steps)?[p - 1]),
    })
}

/// ε of `policy` at timesteps `>= t_min`, of `base` below.
pub struct StepGated<'a> {
    pub policy: &'a UNet,
    pub base: &'a UNet,
    pub t_min: i64,
}

impl StepGated<'_> {
    /// Runs `f` on the rows of each model and puts the outputs back in row order.
    fn split(
        &self,
        t: &Tensor,
        f: impl Fn(&UNet, Option<&Tensor>) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let ts: Vec<i64> = Vec::<i64>::try_from(&t.to_device(Device::Cpu))?;
        let (on, off): (Vec<i64>, Vec<i64>) =
            (0..ts.len() as i64).partition(|&i| ts[i as usize] >= self.t_min);
        if off.is_empty() {
            return f(self.policy, None);
        }
        if on.is_empty() {
            return f(self.base, None);
        }
        let device = t.device();
        let on = Tensor::from_slice(&on).to_device(device);
        let off = Tensor::from_slice(&off).to_device(device);
        let a = f(self.policy, Some(&on))?;
        let b = f(self.base, Some(&off))?;
        let mut shape = a.size();
        shape[0] = ts.len() as i64;
        let out = Tensor::zeros(shape.as_slice(), (a.kind(), device));
        Ok(out.index_copy(0, &on, &a).index_copy(0, &off, &b))
    }
}

fn rows(x: &Tensor, idx: Option<&Tensor>) -> Tensor {
    match idx {
        Some(i) => x.index_select(0, i),
        None => x.shallow_clone(),
    }
}

impl EpsModel for StepGated<'_> {
    fn eps(&self, x: &Tensor, t: &Tensor, class: &Tensor) -> Tensor {
        self.split(t, |m, idx| {
            Ok(m.eps(&rows(x, idx), &rows(t, idx), &rows(class, idx)))
        })
        .expect("timesteps on the CPU")
    }

    fn null_class(&self) -> i64 {
        self.policy.null_class()
    }

    fn has_cond_vector(&self) -> bool {
        true
    }

    fn eps_mapped_cond(
        &self,
        x: &Tensor,
        t: &Tensor,
        class: &Tensor,
        map: &dyn Fn(&Tensor) -> Tensor,
    ) -> Result<Tensor> {
        // `map` acts on the whole batch of condition vectors (CADS keys each row by its sample),
        // so it sees every row in its original order, each embedded by its own model.
        let y = map(&self.split(t, |m, idx| Ok(m.class_embedding(&rows(class, idx))))?);
        self.split(t, |m, idx| {
            Ok(m.forward_emb(&rows(x, idx), &rows(t, idx), &rows(&y, idx)))
        })
    }
}

impl StepPolicy for StepGated<'_> {
    fn gaussian(&self, sb: &StepBatch, sampler: &SamplerConfig) -> StepGaussian {
        sb.gaussian(self, sampler)
    }
}
