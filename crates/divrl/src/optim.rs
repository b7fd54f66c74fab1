//! AdamW with a state that can be saved and restored (libtorch's C++ optimizers cannot be), plus
//! gradient clipping and an exponential moving average of weights.
use anyhow::{bail, Result};
use std::collections::HashMap;
use tch::{nn::VarStore, Kind, Tensor};

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// AdamW (Loshchilov & Hutter) over the trainable variables of a VarStore, sorted by name.
#[derive(Debug)]
pub struct AdamW {
    pub cfg: AdamWConfig,
    names: Vec<String>,
    params: Vec<Tensor>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    pub step: i64,
}

impl AdamW {
    pub fn new(vs: &VarStore, cfg: AdamWConfig) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let m = vars.iter().map(|(_, t)| t.zeros_like()).collect();
        let v = vars.iter().map(|(_, t)| t.zeros_like()).collect();
        let (names, params) = vars.into_iter().unzip();
        Self {
            cfg,
            names,
            params,
            m,
            v,
            step: 0,
        }
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm before.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        tch::no_grad(|| {
            let mut total = 0.0;
            let grads: Vec<Tensor> = self
                .params
                .iter()
                .map(|p| p.grad())
                .filter(|g| g.defined())
                .collect();
            if !grads.is_empty() {
                let sq = Tensor::stack(
                    &grads
                        .iter()
                        .map(|g| g.square().sum(Kind::Float))
                        .collect::<Vec<_>>(),
                    0,
                );
                total = sq.sum(Kind::Float).sqrt().double_value(&[]);
            }
            if max_norm > 0.0 && total > max_norm {
                let s = max_norm / (total + 1e-6);
                for mut g in grads {
                    let _ = g.f_mul_scalar_(s);
                }
            }
            total
        })
    }

    /// Every variable's gradient as one `f32` vector (variables in name order, zeros for an
    /// undefined gradient) and whether each was defined: what a data-parallel run sums over ranks.
    pub fn flat_grads(&self) -> (Vec<f32>, Vec<bool>) {
        let mut flat = Vec::new();
        let mut defined = Vec::with_capacity(self.params.len());
        tch::no_grad(|| {
            for p in &self.params {
                let g = p.grad();
                defined.push(g.defined());
                let n = p.numel();
                if g.defined() {
                    let v = g
                        .to_device(tch::Device::Cpu)
                        .to_kind(Kind::Float)
                        .contiguous();
                    flat.extend(Vec::<f32>::try_from(v.view([-1])).expect("float gradient"));
                } else {
                    flat.extend(std::iter::repeat_n(0.0f32, n));
                }
            }
        });
        (flat, defined)
    }

    /// ([`AdamW::flat_grads`]' length, number of variables).
    pub fn grad_layout(&self) -> (usize, usize) {
        let n = self.params.iter().map(|p| p.numel()).sum();
        (n, self.params.len())
    }

    /// Sets the gradients from [`AdamW::flat_grads`]' layout; a variable marked undefined gets
    /// none.
    pub fn set_flat_grads(&mut self, flat: &[f32], defined: &[bool]) -> Result<()> {
        let (total, vars) = self.grad_layout();
        if flat.len() != total || defined.len() != vars {
            bail!(
                "{} gradient values for {} variables of {total} values",
                flat.len(),
                self.params.len()
            );
        }
        // Only a defined gradient can be written: a variable with none here gets a zero one
        // from a backward pass through `0 · p` (outside no_grad).
        for (p, &d) in self.params.iter().zip(defined) {
            if d && !p.grad().defined() {
                (p * 0.0).sum(Kind::Float).backward();
            }
        }
        let mut at = 0;
        tch::no_grad(|| {
            for (p, &d) in self.params.iter().zip(defined) {
                let n = p.numel();
                let values = &flat[at..at + n];
                at += n;
                if !d {
                    // Nothing gave it a gradient (and it has none here): step() skips it.
                    continue;
                }
                let v = Tensor::from_slice(values)
                    .view(p.size().as_slice())
                    .to_kind(p.kind())
                    .to_device(p.device());
                p.grad().copy_(&v);
            }
        });
        Ok(())
    }

    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        tch::no_grad(|| {
            for ((p, m), v) in self
                .params
                .iter_mut()
                .zip(self.m.iter_mut())
                .zip(self.v.iter_mut())
            {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let _ = p.f_mul_scalar_(1.0 - lr * c.weight_decay);
                let _ = m.f_mul_scalar_(c.beta1);
                let _ = m.f_add_(&(&g * (1.0 - c.beta1)));
                let _ = v.f_mul_scalar_(c.beta2);
                let _ = v.f_addcmul_(&g, &g.g_mul_scalar(1.0 - c.beta2));
                let denom = (&*v / bc2).sqrt() + c.eps;
                let upd = (&*m / bc1) / denom * lr;
                let _ = p.f_sub_(&upd);
            }
        });
    }

    /// State tensors: `m.<name>`, `v.<name>` and `step`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_string(), Tensor::from_slice(&[self.step]))];
        for (i, n) in self.names.iter().enumerate() {
            out.push((format!("m.{n}"), self.m[i].shallow_clone()));
            out.push((format!("v.{n}"), self.v[i].shallow_clone()));
        }
        out
    }

    pub fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<()> {
        let mut map: HashMap<String, Tensor> = state.into_iter().collect();
        let step = map
            .remove("step")
            .ok_or_else(|| anyhow::anyhow!("optimizer state has no step"))?;
        self.step = step.int64_value(&[0]);
        for (i, n) in self.names.iter().enumerate() {
            for (buf, key) in [
                (&mut self.m[i], format!("m.{n}")),
                (&mut self.v[i], format!("v.{n}")),
            ] {
                let t = map
                    .remove(&key)
                    .ok_or_else(|| anyhow::anyhow!("optimizer state lacks {key}"))?;
                if t.size() != buf.size() {
                    bail!(
                        "optimizer state {key} has shape {:?}, expected {:?}",
                        t.size(),
                        buf.size()
                    );
                }
                tch::no_grad(|| buf.copy_(&t.to_device(buf.device()).to_kind(buf.kind())));
            }
        }
        Ok(())
    }
}

/// Exponential moving average of a VarStore's variables into another with the same names.
pub fn ema_update(ema: &VarStore, model: &VarStore, decay: f64) -> Result<()> {
    let src = model.variables();
    tch::no_grad(|| {
        for (name, mut e) in ema.variables() {
            let p = src
                .get(&name)
                .ok_or_else(|| anyhow::anyhow!("EMA variable {name} missing in model"))?;
            let _ = e.f_mul_scalar_(decay);
            let _ = e.f_add_(&(p * (1.0 - decay)));
        }
        Ok(())
    })
}

/// Copies all variables of `src` into `dst` (same names and shapes).
pub fn copy_vars(dst: &VarStore, src: &VarStore) -> Result<()> {
    let s = src.variables();
    tch::no_grad(|| {
        for (name, mut d) in dst.variables() {
            let t = s
                .get(&name)
                .ok_or_else(|| anyhow::anyhow!("variable {name} missing in source"))?;
            d.copy_(t);
        }
        Ok(())
    })
}
