//! Image-level evaluation: FID, Precision/Recall/Density/Coverage and Inception Score in an
//! extractor's feature space (the maths is `divrl_reward::metrics`), and the attribute histogram
//! of the generated images with its KL divergence to uniform.
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::features::to_features;

#[derive(Debug, Clone, Copy)]
pub struct EvalOptions {
    /// Nearest-neighbour rank of Precision/Recall/Density/Coverage.
    pub k: usize,
    /// Splits of the Inception Score (reduced to the number of images when fewer).
    pub is_splits: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            k: 3,
            is_splits: 10,
        }
    }
}

/// Histogram of an attribute over the generated images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributeReport {
    /// Where the attribute came from (`inversion`, `classes`, `clip`).
    pub source: String,
    pub names: Vec<String>,
    pub counts: Vec<u64>,
    /// KL(P_attr ‖ uniform) in nats.
    pub kl_to_uniform: f64,
}

impl AttributeReport {
    pub fn new(source: &str, names: Vec<String>, labels: &[usize]) -> Result<Self> {
        if names.is_empty() {
            bail!("attribute histogram needs at least one attribute value");
        }
        let mut counts = vec![0u64; names.len()];
        for &l in labels {
            if l >= names.len() {
                bail!("attribute label {l} outside 0..{}", names.len());
            }
            counts[l] += 1;
        }
        let kl = divrl_reward::metrics::kl_to_uniform(&counts)?;
        Ok(Self {
            source: source.to_string(),
            names,
            counts,
            kl_to_uniform: kl,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub extractor: String,
    pub generated: usize,
    pub reference: usize,
    pub dim: usize,
    pub k: usize,
    pub fid: f64,
    pub precision: f64,
    pub recall: f64,
    pub density: f64,
    pub coverage: f64,
    /// Inception Score (mean, std over splits) from the extractor's class logits, if it has any.
    pub inception_score: Option<f64>,
    pub inception_score_std: Option<f64>,
    pub attribute: Option<AttributeReport>,
}

/// Metrics of generated vs reference features (`[M, D]`, `[N, D]`), with IS from the generated
/// images' logits when given.
pub fn evaluate(
    extractor: &str,
    generated: &Tensor,
    reference: &Tensor,
    generated_logits: Option<&Tensor>,
    attribute: Option<AttributeReport>,
    opts: EvalOptions,
) -> Result<EvalReport> {
    let g = to_features("generated features", generated)?;
    let r = to_features("reference features", reference)?;
    let fid = divrl_reward::metrics::fid(&g, &r)?;
    let p = divrl_reward::metrics::prdc(&g, &r, opts.k)?;
    let (is, is_std) = match generated_logits {
        Some(l) => {
            let lf = to_features("generated logits", l)?;
            let splits = opts.is_splits.min(lf.rows()).max(1);
            let (m, s) = divrl_reward::metrics::inception_score(&lf, splits)?;
            (Some(m), Some(s))
        }
        None => (None, None),
    };
    Ok(EvalReport {
        extractor: extractor.to_string(),
        generated: g.rows(),
        reference: r.rows(),
        dim: g.dim(),
        k: opts.k,
        fid,
        precision: p.precision,
        recall: p.recall,
        density: p.density,
        coverage: p.coverage,
        inception_score: is,
        inception_score_std: is_std,
        attribute,
    })
}

impl EvalReport {
    /// A human-readable table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "extractor {} (D = {}), generated {}, reference {}, k = {}\n",
            self.extractor, self.dim, self.generated, self.reference, self.k
        );
        s += &format!("FID        {:.4}\n", self.fid);
        s += &format!("precision  {:.4}\n", self.precision);
        s += &format!("recall     {:.4}\n", self.recall);
        s += &format!("density    {:.4}\n", self.density);
        s += &format!("coverage   {:.4}\n", self.coverage);
        if let (Some(m), Some(sd)) = (self.inception_score, self.inception_score_std) {
            s += &format!("IS         {m:.4} ± {sd:.4}\n");
        }
        if let Some(a) = &self.attribute {
            let total: u64 = a.counts.iter().sum();
            s += &format!(
                "attribute ({}), KL to uniform {:.4} nats\n",
                a.source, a.kl_to_uniform
            );
            for (n, c) in a.names.iter().zip(&a.counts) {
                s += &format!(
                    "  {:<24} {:>7}  {:.4}\n",
                    n,
                    c,
                    *c as f64 / total.max(1) as f64
                );
            }
        }
        s
    }
}
