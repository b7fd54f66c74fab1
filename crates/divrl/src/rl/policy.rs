//! Replaying stored trajectories under the current weights, with a different timestep for each
//! trajectory of a minibatch (PPO trains on timesteps shuffled per trajectory).
//!
//! Each transition's Gaussian is the sampler's own ([`crate::schedule::Transitions`]), with
//! one timestep pair per row instead of one for the batch.
use tch::Tensor;

use crate::sample::Trajectory;
use crate::schedule::{EpsModel, NoiseSchedule, SamplerConfig, StepGaussian, Transitions};

/// Transitions `k_i → k_i + 1` of samples `i` of a stored trajectory.
pub struct StepBatch {
    pub x_t: Tensor,
    pub x_s: Tensor,
    pub class: Tensor,
    rows: Transitions,
    /// The samples' initial noise x_T (their CADS keys; see [`crate::cads`]).
    x_init: Tensor,
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
        let sample_idx = Tensor::from_slice(&samples.iter().map(|&b| b as i64).collect::<Vec<_>>())
            .to_device(device);
        let ts: Vec<i64> = steps.iter().map(|&k| traj.timesteps[k]).collect();
        let ss: Vec<i64> = steps.iter().map(|&k| traj.timesteps[k + 1]).collect();
        Self {
            x_t: flat.index_select(0, &i_t),
            x_s: flat.index_select(0, &i_s),
            class: traj.classes.index_select(0, &sample_idx),
            rows: Transitions::new(sched, ts, &ss, device),
            x_init: traj.latents.get(0).index_select(0, &sample_idx),
            flat_index: i_t,
        }
    }

    /// The stored (sampling-time) log-probabilities of these transitions.
    pub fn old_log_probs(&self, traj: &Trajectory) -> Tensor {
        traj.log_probs
            .flatten(0, 1)
            .index_select(0, &self.flat_index)
    }

    /// Each transition's Gaussian under `model`, with the sampler's guidance interval and CADS
    /// applied per row exactly as at sampling time.
    pub fn gaussian<M: EpsModel + ?Sized>(&self, model: &M, cfg: &SamplerConfig) -> StepGaussian {
        let keys = self
            .rows
            .needs_cads_keys(cfg)
            .then(|| crate::cads::sample_keys(&self.x_init).expect("a float latent tensor"));
        self.rows
            .gaussian(model, cfg, &self.x_t, &self.class, keys.as_deref())
            .expect("CADS replay of a trajectory sampled with CADS")
    }
}
