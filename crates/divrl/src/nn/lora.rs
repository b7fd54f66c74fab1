//! LoRA (Hu et al. 2021) adapters for linear layers.
//!
//! A [`LoraLinear`] is a linear layer `y = x Wᵀ + b` that can carry a low-rank update
//! `y += (α/r) · x Aᵀ Bᵀ` with `A ∈ R^{r×in}`, `B ∈ R^{out×r}`. `B` starts at zero, so a fresh
//! adapter leaves the layer's output unchanged; [`LoraLinear::merge`] folds `(α/r)·B·A` into `W`.
//! Adapter variables live in their own [`tch::nn::VarStore`] (passed as a path), so the base
//! weights can stay frozen while only the adapters train.
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

/// Which layers get an adapter and how big it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank r of the update.
    #[serde(default = "default_rank")]
    pub rank: i64,
    /// Scale numerator α; the update is multiplied by α / r.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Names of the wrapped projections (attention: `to_q`, `to_k`, `to_v`, `to_out`).
    #[serde(default = "default_targets")]
    pub targets: Vec<String>,
}

fn default_rank() -> i64 {
    4
}
fn default_alpha() -> f64 {
    4.0
}
fn default_targets() -> Vec<String> {
    ["to_q", "to_k", "to_v", "to_out"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: default_rank(),
            alpha: default_alpha(),
            targets: default_targets(),
        }
    }
}

impl LoraConfig {
    pub fn validate(&self) -> Result<()> {
        if self.rank < 1 {
            bail!("LoRA rank must be >= 1, got {}", self.rank);
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            bail!("LoRA alpha must be a positive number, got {}", self.alpha);
        }
        if self.targets.is_empty() {
            bail!("LoRA target list is empty");
        }
        Ok(())
    }
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// The low-rank pair of one adapted layer.
#[derive(Debug)]
pub struct LoraAdapter {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
}

/// A linear layer that may carry a LoRA adapter.
#[derive(Debug)]
pub struct LoraLinear {
    /// Short name used by LoRA target lists (`to_q`, ...).
    pub name: String,
    pub ws: Tensor,
    pub bs: Option<Tensor>,
    pub lora: Option<LoraAdapter>,
    in_dim: i64,
    out_dim: i64,
}

impl LoraLinear {
    /// Creates the base layer under `p / name` (variables `weight` and `bias`, as `nn::linear`).
    pub fn new(p: &nn::Path, name: &str, in_dim: i64, out_dim: i64, bias: bool) -> Self {
        let lin = nn::linear(
            p / name,
            in_dim,
            out_dim,
            nn::LinearConfig {
                bias,
                ..Default::default()
            },
        );
        Self {
            name: name.to_string(),
            ws: lin.ws,
            bs: lin.bs,
            lora: None,
            in_dim,
            out_dim,
        }
    }

    /// Adds an adapter with variables `lora_a` (uniform ±1/√in, as PEFT's Kaiming-uniform) and
    /// `lora_b` (zeros) under `p`.
    pub fn add_lora(&mut self, p: &nn::Path, rank: i64, alpha: f64) -> Result<()> {
        if self.lora.is_some() {
            bail!("layer {} already has a LoRA adapter", self.name);
        }
        if rank < 1 || rank > self.in_dim.min(self.out_dim) {
            bail!(
                "LoRA rank {rank} out of range for layer {} ({}→{})",
                self.name,
                self.in_dim,
                self.out_dim
            );
        }
        let bound = 1.0 / (self.in_dim as f64).sqrt();
        let a = p.var(
            "lora_a",
            &[rank, self.in_dim],
            nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        );
        let b = p.var("lora_b", &[self.out_dim, rank], nn::Init::Const(0.0));
        self.lora = Some(LoraAdapter {
            a,
            b,
            scale: alpha / rank as f64,
        });
        Ok(())
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.linear(&self.ws, self.bs.as_ref());
        match &self.lora {
            None => y,
            Some(l) => y + x.linear::<Tensor>(&l.a, None).linear::<Tensor>(&l.b, None) * l.scale,
        }
    }

    /// Folds the adapter into the base weight ([`merged_weight`]) and removes it.
    pub fn merge(&mut self) {
        if let Some(l) = self.lora.take() {
            tch::no_grad(|| {
                let w = merged_weight(&self.ws, &l.a, &l.b, l.scale);
                self.ws.copy_(&w);
            });
        }
    }
}

/// `W + scale·B·A` in `W`'s dtype: the base weight with a LoRA adapter folded in (what
/// [`LoraLinear::merge`] and the fine-tuning export both write).
pub fn merged_weight(w: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Tensor {
    w + (b.matmul(a) * scale).to_kind(w.kind())
}
