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
//! starting weights (LoRA: the base) keeping weight d^e. The average is kept in f64 and goes into
//! every checkpoint, so a resumed run continues it exactly. Sampling for training always uses
//! the current weights; [`PolicyEma::apply`] lends the average to the model for evaluation and
//! export and puts the current weights back bit for bit.
//!
//! What is averaged ([`Averaged`], config `policy_ema_of`):
//! - `weights`: each variable on its own (LoRA's A and B separately, as diffusers' EMA does).
//!   A LoRA layer's update is the product B·A, and the product of averaged factors is not the
//!   average of the products: when the factors rotate between epochs (B·A is unchanged by
//!   B → B·G, A → G⁻¹·A), their averages partly cancel and the update shrinks.
//! - `lora-product`: the update ΔW = B·A of every adapter (variables `<layer>.lora_a`,
//!   `<layer>.lora_b`) is averaged instead, other variables as weights. The average of rank-r
//!   products can have a higher rank, so [`PolicyEma::apply`] lends the model its best rank-r
//!   approximation (truncated SVD, Eckart–Young, split as B = U·√Σ, A = √Σ·Vᵀ), which is what the
//!   export can hold; [`PolicyEma::rank_residual`] says how much of it was cut.
use anyhow::{bail, Context, Result};
use faer::Mat;
use std::collections::BTreeMap;
use tch::{nn::VarStore, Kind, Tensor};

/// The checkpoint file holding the average.
pub const POLICY_EMA_FILE: &str = "policy_ema.safetensors";

/// What [`PolicyEma`] averages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Averaged {
    /// Every variable on its own.
    Weights,
    /// Each LoRA adapter's product B·A; other variables on their own.
    LoraProduct,
}

impl Averaged {
    /// `weights` or `lora-product` (config `policy_ema_of`).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "weights" => Ok(Self::Weights),
            "lora-product" => Ok(Self::LoraProduct),
            other => bail!("policy_ema_of must be weights or lora-product, got {other:?}"),
        }
    }
}

/// One LoRA adapter's variables and the name of its averaged product.
struct Pair {
    a: String,
    b: String,
    product: String,
}

/// The running average of a [`VarStore`]'s variables.
pub struct PolicyEma {
    decay: f64,
    /// The adapters whose product is averaged (empty for [`Averaged::Weights`]).
    pairs: Vec<Pair>,
    /// f64 averages by name: a variable's own name, or `<layer>.lora_ba` for a product.
    average: BTreeMap<String, Tensor>,
}

impl PolicyEma {
    /// Starts the average at the variables' current values. `decay` in [0, 1).
    pub fn new(vs: &VarStore, decay: f64, of: Averaged) -> Result<Self> {
        if !(0.0..1.0).contains(&decay) {
            bail!("policy_ema must be in [0, 1), got {decay}");
        }
        let names: Vec<String> = vs.variables().into_keys().collect();
        let mut pairs = Vec::new();
        if of == Averaged::LoraProduct {
            for a in &names {
                if let Some(layer) = a.strip_suffix(".lora_a") {
                    let b = format!("{layer}.lora_b");
                    if names.contains(&b) {
                        pairs.push(Pair {
                            a: a.clone(),
                            b,
                            product: format!("{layer}.lora_ba"),
                        });
                    }
                }
            }
            if pairs.is_empty() {
                bail!("policy_ema_of = lora-product needs LoRA adapters; the model trains none");
            }
            pairs.sort_by(|x, y| x.a.cmp(&y.a));
        }
        let mut ema = Self {
            decay,
            pairs,
            average: BTreeMap::new(),
        };
        ema.average = ema.current(vs);
        Ok(ema)
    }

    /// The quantities averaged, from `vs`'s current variables (f64).
    fn current(&self, vs: &VarStore) -> BTreeMap<String, Tensor> {
        let mut vars = vs.variables();
        tch::no_grad(|| {
            let mut out = BTreeMap::new();
            for p in &self.pairs {
                let a = vars.remove(&p.a).expect("adapter variable");
                let b = vars.remove(&p.b).expect("adapter variable");
                let ba = b
                    .detach()
                    .to_kind(Kind::Double)
                    .matmul(&a.detach().to_kind(Kind::Double));
                out.insert(p.product.clone(), ba);
            }
            for (n, t) in vars {
                out.insert(n, t.detach().to_kind(Kind::Double));
            }
            out
        })
    }

    /// θ̄ ← d·θ̄ + (1 − d)·θ for every averaged quantity of `vs`.
    pub fn update(&mut self, vs: &VarStore) -> Result<()> {
        let d = self.decay;
        let now = self.current(vs);
        if now.len() != self.average.len() {
            bail!("the model's variables changed since the average started");
        }
        tch::no_grad(|| {
            for (name, t) in now {
                let a = self
                    .average
                    .get_mut(&name)
                    .with_context(|| format!("variable {name} has no average"))?;
                *a = &*a * d + t.to_device(a.device()) * (1.0 - d);
            }
            Ok(())
        })
    }

    /// The average, by name (f64), for a checkpoint.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.average
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect()
    }

    /// Replaces the average with `tensors` (a checkpoint's): every quantity, same shapes.
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

    /// The largest relative Frobenius error ‖B̄·Ā − avg(B·A)‖ / ‖avg(B·A)‖ over the adapters,
    /// of the rank-r factors [`PolicyEma::apply`] lends (0 for [`Averaged::Weights`] and for
    /// zero averages).
    pub fn rank_residual(&self, vs: &VarStore) -> Result<f64> {
        let vars = vs.variables();
        let mut worst = 0.0f64;
        for p in &self.pairs {
            let rank = vars[&p.a].size()[0] as usize;
            worst = worst.max(best_rank_r(&self.average[&p.product], rank)?.residual);
        }
        Ok(worst)
    }

    /// Runs `f` with the average in `vs`'s variables, then restores their current values
    /// exactly (also when `f` fails).
    pub fn apply<R>(&self, vs: &VarStore, f: impl FnOnce() -> Result<R>) -> Result<R> {
        let vars = vs.variables();
        // The values lent to each variable, computed before anything is overwritten.
        let mut lent: BTreeMap<String, Tensor> = BTreeMap::new();
        for p in &self.pairs {
            let rank = vars[&p.a].size()[0] as usize;
            let f = best_rank_r(&self.average[&p.product], rank)
                .with_context(|| format!("the averaged update of {}", p.product))?;
            lent.insert(p.a.clone(), f.a);
            lent.insert(p.b.clone(), f.b);
        }
        for (n, t) in &self.average {
            if vars.contains_key(n) {
                lent.insert(n.clone(), t.shallow_clone());
            }
        }
        let current: Vec<(Tensor, Tensor)> = tch::no_grad(|| {
            vars.iter()
                .map(|(n, v)| {
                    let saved = v.detach().copy();
                    let mut dst = v.shallow_clone();
                    dst.copy_(&lent[n].to_device(v.device()).to_kind(v.kind()));
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

/// Rank-r factors of a matrix M (out × in): B = U_r·√Σ_r (out × r), A = √Σ_r·V_rᵀ (r × in).
struct Factors {
    a: Tensor,
    b: Tensor,
    /// ‖M − B·A‖_F / ‖M‖_F = √(Σ_{i>r} σ_i²) / √(Σ σ_i²), 0 when M = 0.
    residual: f64,
}

/// The best rank-`rank` approximation of the 2-D f64 tensor `m` (Eckart–Young), by faer's SVD.
fn best_rank_r(m: &Tensor, rank: usize) -> Result<Factors> {
    let (rows, cols) = match m.size()[..] {
        [r, c] => (r as usize, c as usize),
        _ => bail!("a LoRA update must be a matrix, got shape {:?}", m.size()),
    };
    let v = Vec::<f64>::try_from(m.to_kind(Kind::Double).contiguous().view([-1]))?;
    let mat = Mat::<f64>::from_fn(rows, cols, |i, j| v[i * cols + j]);
    let svd = mat
        .thin_svd()
        .map_err(|e| anyhow::anyhow!("SVD did not converge: {e:?}"))?;
    let (u, s, vv) = (svd.U(), svd.S().column_vector(), svd.V());
    let k = s.nrows();
    let total: f64 = (0..k).map(|i| s[i] * s[i]).sum();
    let cut: f64 = (rank.min(k)..k).map(|i| s[i] * s[i]).sum();
    let residual = if total > 0.0 {
        (cut / total).sqrt()
    } else {
        0.0
    };
    let mut b = vec![0.0f64; rows * rank];
    let mut a = vec![0.0f64; rank * cols];
    for j in 0..rank.min(k) {
        let w = s[j].max(0.0).sqrt();
        for i in 0..rows {
            b[i * rank + j] = u[(i, j)] * w;
        }
        for i in 0..cols {
            a[j * cols + i] = vv[(i, j)] * w;
        }
    }
    Ok(Factors {
        a: Tensor::from_slice(&a).view([rank as i64, cols as i64]),
        b: Tensor::from_slice(&b).view([rows as i64, rank as i64]),
        residual,
    })
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
        let mut ema = PolicyEma::new(&vs, d, Averaged::Weights).unwrap();
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
        let mut ema = PolicyEma::new(&vs, 0.5, Averaged::Weights).unwrap();
        set(&a, &[3.0, 2.0, 1.0]);
        ema.update(&vs).unwrap();
        let saved = ema.tensors();
        let mut other = PolicyEma::new(&vs, 0.5, Averaged::Weights).unwrap();
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
        assert!(PolicyEma::new(&vs, 1.0, Averaged::Weights).is_err());
        assert!(PolicyEma::new(&vs, -0.1, Averaged::Weights).is_err());
    }

    /// An adapter `l` (in 4, out 3, rank 2) and a plain variable `c`.
    fn adapter_store() -> (VarStore, Tensor, Tensor, Tensor) {
        let vs = VarStore::new(Device::Cpu);
        let l = vs.root().sub("l");
        let a = l.var("lora_a", &[2, 4], Init::Const(0.0));
        let b = l.var("lora_b", &[3, 2], Init::Const(0.0));
        let c = vs.root().var("c", &[2], Init::Const(0.0));
        (vs, a, b, c)
    }

    fn mat(t: &Tensor) -> Tensor {
        t.to_kind(Kind::Double)
    }

    fn max_abs(x: &Tensor) -> f64 {
        x.abs().max().double_value(&[])
    }

    #[test]
    fn the_lora_product_average_is_the_average_of_the_updates() {
        let (vs, a, b, c) = adapter_store();
        let d = 0.5;
        // Start: B = 0 (as LoRA starts), so the update is 0.
        set(&a, &[1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
        set(&c, &[1.0, 1.0]);
        let mut ema = PolicyEma::new(&vs, d, Averaged::LoraProduct).unwrap();
        let names: Vec<String> = ema.tensors().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["c".to_string(), "l.lora_ba".to_string()]);
        // Epoch 1: (B1, A1); epoch 2: the same update with the factors rotated by 90°
        // (B2 = B1·G, A2 = Gᵀ·A1): their factor averages cancel, the products do not.
        let a1 = [1.0f32, 2.0, 0.0, -1.0, 0.5, 0.0, 1.0, 3.0];
        let b1 = [1.0f32, 0.0, 0.0, 2.0, -1.0, 1.0];
        set(&a, &a1);
        set(&b, &b1);
        set(&c, &[3.0, -1.0]);
        ema.update(&vs).unwrap();
        let g = Tensor::from_slice(&[0.0f32, -1.0, 1.0, 0.0]).view([2, 2]);
        let a2 = g.tr().matmul(&a);
        let b2 = b.matmul(&g);
        let (a2, b2) = (
            Vec::<f32>::try_from(a2.view([-1])).unwrap(),
            Vec::<f32>::try_from(b2.view([-1])).unwrap(),
        );
        let update = mat(&b).matmul(&mat(&a));
        set(&a, &a2);
        set(&b, &b2);
        assert!(max_abs(&(mat(&b).matmul(&mat(&a)) - &update)) < 1e-12);
        ema.update(&vs).unwrap();
        // avg = d²·0 + (1 − d)·d·U + (1 − d)·U = 0.75·U, rank 2 = the adapters' rank.
        let want = &update * ((1.0 - d) * d + (1.0 - d));
        let got: BTreeMap<String, Tensor> = ema.tensors().into_iter().collect();
        assert!(max_abs(&(&got["l.lora_ba"] - &want)) < 1e-12);
        // c is averaged as a weight: 0.25·1 + 0.25·3 + 0.5·3.
        assert!(max_abs(&(&got["c"] - Tensor::from_slice(&[2.5f64, -0.5]))) < 1e-12);
        assert!(ema.rank_residual(&vs).unwrap() < 1e-12);

        let before = (values(&a), values(&b), values(&c));
        let (lent_update, lent_c) = ema
            .apply(&vs, || Ok((mat(&b).matmul(&mat(&a)), values(&c))))
            .unwrap();
        assert!(
            max_abs(&(&lent_update - &want)) < 1e-5,
            "the rank-2 average is lent exactly"
        );
        assert_eq!(lent_c, vec![2.5, -0.5]);
        assert_eq!(
            (values(&a), values(&b), values(&c)),
            before,
            "weights restored exactly"
        );

        // Averaging the factors instead shrinks this update: their averages cancel.
        let (vs2, a_, b_, _) = adapter_store();
        set(&a_, &[1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
        let mut fac = PolicyEma::new(&vs2, d, Averaged::Weights).unwrap();
        for (av, bv) in [(a1.to_vec(), b1.to_vec()), (a2, b2)] {
            set(&a_, &av);
            set(&b_, &bv);
            fac.update(&vs2).unwrap();
        }
        let fac_update = fac.apply(&vs2, || Ok(mat(&b_).matmul(&mat(&a_)))).unwrap();
        let norm = |x: &Tensor| x.norm().double_value(&[]);
        assert!(
            norm(&fac_update) < 0.8 * norm(&want),
            "{} vs {}",
            norm(&fac_update),
            norm(&want)
        );
    }

    #[test]
    fn an_average_above_the_adapter_rank_is_lent_as_its_best_rank_r_approximation() {
        let (vs, a, b, _) = adapter_store();
        let mut ema = PolicyEma::new(&vs, 0.5, Averaged::LoraProduct).unwrap();
        // Two rank-2 updates spanning different subspaces: their average has rank 3.
        set(&a, &[1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
        set(&b, &[2.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
        ema.update(&vs).unwrap();
        set(&a, &[0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
        set(&b, &[0.0, 0.0, 0.0, 0.0, 0.7, 0.3]);
        ema.update(&vs).unwrap();
        let avg: BTreeMap<String, Tensor> = ema.tensors().into_iter().collect();
        let m = &avg["l.lora_ba"];
        // Independent reference: the singular values² are the eigenvalues of M·Mᵀ.
        let eig = Vec::<f64>::try_from(m.matmul(&m.tr()).linalg_eigvalsh("L")).unwrap();
        let total: f64 = eig.iter().sum();
        assert!(eig[0] > 1e-6, "the average has rank 3: {eig:?}");
        let want_residual = (eig[0].max(0.0) / total).sqrt();
        let got_residual = ema.rank_residual(&vs).unwrap();
        assert!(
            (got_residual - want_residual).abs() < 1e-9,
            "{got_residual} vs {want_residual}"
        );
        let lent = ema.apply(&vs, || Ok(mat(&b).matmul(&mat(&a)))).unwrap();
        let err = (m - &lent).norm().double_value(&[]) / m.norm().double_value(&[]);
        assert!(
            (err - want_residual).abs() < 1e-6,
            "{err} vs {want_residual}"
        );
        // Balanced split: ‖B‖ = ‖A‖ column by column (√σ on both sides).
        let (la, lb) = ema.apply(&vs, || Ok((mat(&a), mat(&b)))).unwrap();
        let na = Vec::<f64>::try_from(la.square().sum_dim_intlist(
            [1i64].as_slice(),
            false,
            Kind::Double,
        ))
        .unwrap();
        let nb = Vec::<f64>::try_from(lb.square().sum_dim_intlist(
            [0i64].as_slice(),
            false,
            Kind::Double,
        ))
        .unwrap();
        for (x, y) in na.iter().zip(&nb) {
            assert!((x - y).abs() < 1e-5, "{na:?} vs {nb:?}");
        }
    }

    #[test]
    fn a_lora_product_average_needs_adapters() {
        let (vs, _, _) = store();
        let err = PolicyEma::new(&vs, 0.5, Averaged::LoraProduct)
            .err()
            .unwrap();
        assert!(err.to_string().contains("needs LoRA adapters"));
        assert!(Averaged::parse("products").is_err());
        assert_eq!(
            Averaged::parse("lora-product").unwrap(),
            Averaged::LoraProduct
        );
    }
}
