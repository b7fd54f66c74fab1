//! Image-level evaluation: FID, Precision/Recall/Density/Coverage and Inception Score in an
//! extractor's feature space (the maths is `divrl_reward::metrics`), and the attribute histogram
//! of the generated images with its KL divergence to uniform.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::features::to_features;
use crate::models::clip::LoadedClip;

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

    /// The histogram of a data set attribute's exact oracle on images `[N, C, H, W]` in [0, 1].
    pub fn from_oracle(kind: crate::data::AttributeKind, images: &Tensor) -> Result<Self> {
        let labels: Vec<usize> = kind.oracle(images)?.into_iter().map(usize::from).collect();
        Self::new(
            kind.name(),
            kind.value_names().iter().map(|s| s.to_string()).collect(),
            &labels,
        )
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
    /// The first attribute (kept for readers of single-attribute reports).
    pub attribute: Option<AttributeReport>,
    /// Every attribute evaluated, in the order asked for.
    #[serde(default)]
    pub attributes: Vec<AttributeReport>,
    /// The same metrics in a feature space the reward never used (FID-Inception pool3, or raw
    /// pixels), against the same held-out images: a gain that shows only in the reward's ϕ may be
    /// the policy gaming ϕ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub independent: Option<Box<EvalReport>>,
    /// Mean within-class pairwise pixel distance of the generated images against the held-out real
    /// images of the same classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pixel_within_class: Option<divrl_reward::within_class::WithinClass>,
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
        attributes: attribute.iter().cloned().collect(),
        attribute,
        independent: None,
        pixel_within_class: None,
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
        let single: Vec<AttributeReport> = self.attribute.iter().cloned().collect();
        let attrs = if self.attributes.is_empty() {
            &single
        } else {
            &self.attributes
        };
        if let Some(w) = &self.pixel_within_class {
            s += &format!(
                "within-class pixel distance {:.4} (real {:.4}, ratio {:.4} over {} classes)\n",
                w.generated, w.real, w.ratio, w.classes
            );
        }
        for a in attrs {
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
        if let Some(ind) = &self.independent {
            s += "independent space: ";
            s += &ind.table();
        }
        s
    }

    /// Replaces the attribute histograms (the first also becomes `attribute`).
    pub fn with_attributes(mut self, attributes: Vec<AttributeReport>) -> Self {
        self.attribute = attributes.first().cloned();
        self.attributes = attributes;
        self
    }
}

/// An attribute for CLIP zero-shot evaluation: a name and one prompt per category, e.g.
/// `gender`: ["a headshot of a man", "a headshot of a woman"].
#[derive(Debug, Clone, PartialEq)]
pub struct ClipAttribute {
    pub name: String,
    pub prompts: Vec<String>,
}

impl ClipAttribute {
    /// Parses `[NAME=]PROMPTS`, where PROMPTS is a file (one prompt per line; blank lines and
    /// `#` comments skipped) or a comma-separated list. The name defaults to `clip`.
    pub fn parse(spec: &str) -> Result<Self> {
        let (name, list) = match spec.split_once('=') {
            Some((n, l)) if !n.is_empty() && !n.contains(',') && !n.contains('/') => (n, l),
            _ => ("clip", spec),
        };
        let path = std::path::Path::new(list);
        let prompts: Vec<String> = if path.is_file() {
            std::fs::read_to_string(path)
                .with_context(|| format!("reading prompts from {}", path.display()))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from)
                .collect()
        } else {
            list.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect()
        };
        if prompts.len() < 2 {
            bail!(
                "CLIP attribute {name:?} needs at least two prompts (a comma list or a file with one per line), got {}",
                prompts.len()
            );
        }
        Ok(Self {
            name: name.to_string(),
            prompts,
        })
    }
}

/// ITI-GEN's CLIP evaluation of one attribute: every image (`[N, C, H, W]` in `[0, 1]`) goes to
/// the category whose prompt has the largest zero-shot probability (the highest cosine
/// similarity), in batches of `batch` images; returns the histogram and its KL to uniform.
/// The report's source is `clip:<name>`, its category names the prompts.
pub fn clip_attribute_report(
    clip: &LoadedClip,
    images: &Tensor,
    attribute: &ClipAttribute,
    batch: usize,
) -> Result<AttributeReport> {
    let n = images.size().first().copied().unwrap_or(0);
    if n == 0 {
        bail!("CLIP attribute {:?}: no images", attribute.name);
    }
    let mut labels = Vec::with_capacity(n as usize);
    for chunk in images.split(batch.max(1) as i64, 0) {
        let p = clip.zero_shot(&chunk, &attribute.prompts)?;
        let am: Vec<i64> = Vec::<i64>::try_from(&p.argmax(-1, false))?;
        labels.extend(am.into_iter().map(|v| v as usize));
    }
    AttributeReport::new(
        &format!("clip:{}", attribute.name),
        attribute.prompts.clone(),
        &labels,
    )
}
