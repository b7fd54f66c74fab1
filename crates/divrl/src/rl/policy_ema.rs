//! A Polyak (exponential moving) average of the trained variables across epochs: the policy a
//! run evaluates and exports when `policy_ema > 0`.
//!
//! PPO's last iterate wanders: with a small clip range and a reward at its noise floor, the
//! weights keep drifting between epochs, and the finished run is one draw of that walk. After
//! every epoch's update the average moves towards the current weights,
//!
//! ```text
//! θ̄_0 = θ_0,    θ̄_e = d·θ̄_{e−1} + (1 − d)·θ_e,
//! ```
//!
//! so θ̄_e = d^e·θ_0 + (1 − d)·Σ_i d^(e−i)·θ_i: a window of about 1/(1 − d) epochs, with the
//! starting weights (LoRA: the base) keeping weight d^e. Each variable is averaged on its own
//! (LoRA's A and B separately, as diffusers' EMA does). The average is kept in f64 and goes into
//! every checkpoint, so a resumed run continues it exactly. Sampling for training always uses
//! the current weights; [`PolicyEma::apply`] lends the average to the model for evaluation and
//! export and puts the current weights back bit for bit.
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use tch::{nn::VarStore, Kind, Tensor};

/// The checkpoint file holding the average.
pub const POLICY_EMA_FILE: &str = "policy_ema.safetensors";

/// The running average of a [`VarStore`]'s variables.
pub struct PolicyEma {
    decay: f64,
    /// f64 copies, by variable name.
    average: BTreeMap<String, Tensor>,
}

impl PolicyEma {
    /// Starts the average at the variables' current values. `decay` in [0, 1).
    pub fn new(vs: &VarStore, decay: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&decay) {
            bail!("policy_ema must be in [0, 1), got {decay}");
        }
        let average = tch::no_grad(|| {
            vs.variables()
                .into_iter()
                .map(|(n, t)| (n, t.detach().to_kind(Kind::Double)))
                .collect()
        });
        Ok(Self { decay, average })
    }

    /// θ̄ ← d·θ̄ + (1 − d)·θ for every variable of `vs`.
    pub fn update(&mut self, vs: &VarStore) -> Result<()> {
        let d = self.decay;
        tch::no_grad(|| {
            for (name, t) in vs.variables() {
                let a = self
                    .average
                    .get_mut(&name)
                    .with_context(|| format!("variable {name} has no average"))?;
                let t = t.detach().to_device(a.device()).to_kind(Kind::Double);
                *a = &*a * d + t * (1.0 - d);
            }
            Ok(())
        })
    }

    /// The average, named like the variables (f64), for a checkpoint.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.average
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect()
    }

    /// Replaces the average with `tensors` (a checkpoint's): every variable, same shapes.
    pub fn load(&mut self, tensors: Vec<(String, Tensor)>) -> Result<()> {
        let mut got: BTreeMap<String, Tensor> = tensors.into_iter().collect();
        for (name, a) in self.average.iter_mut() {
            let t = got
                .remove(name)
                .with_context(|| format!("the saved average has no {name}"))?;
            if t.size() != a.size() {
                bail!(
                    "the saved average of {name} has shape {:?}, expected {:?}",
                    t.size(),
                    a.size()
                );
            }
            *a = t.to_device(a.device()).to_kind(Kind::Double);
        }
        if let Some(name) = got.keys().next() {
            bail!("the saved average has {name}, which the model does not train");
        }
        Ok(())
    }

    /// Runs `f` with the average in `vs`'s variables, then restores their current values
    /// exactly (also when `f` fails).
    pub fn apply<R>(&self, vs: &VarStore, f: impl FnOnce() -> Result<R>) -> Result<R> {
        let vars = vs.variables();
        let current: Vec<(Tensor, Tensor)> = tch::no_grad(|| {
            vars.iter()
                .map(|(n, v)| {
                    let saved = v.detach().copy();
                    let mut dst = v.shallow_clone();
                    dst.copy_(&self.average[n].to_kind(v.kind()));
                    (v.shallow_clone(), saved)
                })
                .collect()
        });
        let r = f();
        tch::no_grad(|| {
            for (mut v, saved) in current {
                v.copy_(&saved);
            }
        });
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::Init, Device};

    fn store() -> (VarStore, Tensor, Tensor) {
        let vs = VarStore::new(Device::Cpu);
        let a = vs.root().var("a", &[3], Init::Const(0.0));
        let b = vs.root().var("b", &[2, 2], Init::Const(0.0));
        (vs, a, b)
    }

    fn set(t: &Tensor, v: &[f32]) {
        tch::no_grad(|| {
            t.shallow_clone()
                .copy_(&Tensor::from_slice(v).reshape(t.size()));
        });
    }

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    #[test]
    fn the_average_is_the_closed_form_and_apply_restores_the_weights() {
        let (vs, a, b) = store();
        set(&a, &[1.0, -2.0, 0.5]);
        set(&b, &[0.0, 1.0, 2.0, 3.0]);
        let d = 0.75;
        let mut ema = PolicyEma::new(&vs, d).unwrap();
        // θ_0 = (1, −2, 0.5), then θ_e = θ_0 + e·(0.1, 0.2, −0.3) for e = 1..=4.
        let theta = |e: usize| -> Vec<f64> {
            let e = e as f64;
            vec![1.0 + 0.1 * e, -2.0 + 0.2 * e, 0.5 - 0.3 * e]
        };
        for e in 1..=4 {
            let v: Vec<f32> = theta(e).iter().map(|&x| x as f32).collect();
            set(&a, &v);
            ema.update(&vs).unwrap();
        }
        // d^4·θ_0 + (1 − d)·Σ_{i=1..4} d^(4−i)·θ_i, from the f32 values the store held.
        let f32v = |e: usize| -> Vec<f64> { theta(e).iter().map(|&x| x as f32 as f64).collect() };
        let mut want = f32v(0).iter().map(|x| d.powi(4) * x).collect::<Vec<_>>();
        for i in 1..=4 {
            for (w, x) in want.iter_mut().zip(f32v(i)) {
                *w += (1.0 - d) * d.powi(4 - i as i32) * x;
            }
        }
        let got = values(&ema.tensors()[0].1);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-12, "{got:?} vs {want:?}");
        }
        // b never changed: its average is b.
        assert_eq!(values(&ema.tensors()[1].1), vec![0.0, 1.0, 2.0, 3.0]);

        let before = values(&a);
        let inside = ema.apply(&vs, || Ok(values(&a))).unwrap();
        for (g, w) in inside.iter().zip(&want) {
            assert!((g - *w as f32 as f64).abs() < 1e-7);
        }
        assert_eq!(values(&a), before, "apply must restore the weights exactly");
        let err = ema
            .apply(&vs, || -> Result<()> { bail!("evaluation failed") })
            .unwrap_err();
        assert!(err.to_string().contains("evaluation failed"));
        assert_eq!(values(&a), before, "restored after an error too");
    }

    #[test]
    fn a_saved_average_loads_back_and_a_foreign_one_is_refused() {
        let (vs, a, _) = store();
        set(&a, &[1.0, 2.0, 3.0]);
        let mut ema = PolicyEma::new(&vs, 0.5).unwrap();
        set(&a, &[3.0, 2.0, 1.0]);
        ema.update(&vs).unwrap();
        let saved = ema.tensors();
        let mut other = PolicyEma::new(&vs, 0.5).unwrap();
        other.load(saved).unwrap();
        assert_eq!(values(&other.tensors()[0].1), vec![2.0, 2.0, 2.0]);

        let wrong = vec![(
            "a".to_string(),
            Tensor::zeros([4], (Kind::Double, Device::Cpu)),
        )];
        assert!(other.load(wrong).unwrap_err().to_string().contains("shape"));
        let mut extra = ema.tensors();
        extra.push(("c".into(), Tensor::zeros([1], (Kind::Double, Device::Cpu))));
        assert!(other
            .load(extra)
            .unwrap_err()
            .to_string()
            .contains("does not train"));
        assert!(PolicyEma::new(&vs, 1.0).is_err());
        assert!(PolicyEma::new(&vs, -0.1).is_err());
    }
}
