//! Attribute histograms over an image set and their KL divergence to the uniform distribution,
//! KL(P ‖ U) = Σ_k p_k ln(K p_k) in nats (ITI-GEN's measure; `divrl_reward::metrics::kl_to_uniform`).
use serde::{Deserialize, Serialize};

use crate::{FacePrediction, FacesError, Gender, Result};

/// Lower edges (in rounded years) of FairFace's age groups 3–9, 10–19, …, 70+ (the first group is
/// 0–2): the nine age categories of the FairFace data set used for multi-category age evaluation.
pub const AGE_GROUP_EDGES: [u32; 8] = [3, 10, 20, 30, 40, 50, 60, 70];

/// Names of the age groups defined by `edges` (ascending lower edges of all groups but the first).
pub fn age_group_names(edges: &[u32]) -> Vec<String> {
    let mut names = Vec::with_capacity(edges.len() + 1);
    let mut lo = 0;
    for &e in edges {
        names.push(format!("{lo}-{}", e - 1));
        lo = e;
    }
    names.push(format!("{lo}+"));
    names
}

/// Counts per category and KL to uniform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributeHistogram {
    pub attribute: String,
    pub names: Vec<String>,
    pub counts: Vec<u64>,
    /// KL(P ‖ uniform over `names`) in nats.
    pub kl_to_uniform: f64,
}

impl AttributeHistogram {
    /// Histogram of category indices (`labels[i] < names.len()`).
    pub fn from_labels(attribute: &str, names: Vec<String>, labels: &[usize]) -> Result<Self> {
        let mut counts = vec![0u64; names.len()];
        for &l in labels {
            *counts.get_mut(l).ok_or_else(|| {
                FacesError::Invalid(format!("{attribute}: label {l} outside 0..{}", names.len()))
            })? += 1;
        }
        let kl_to_uniform = divrl_reward::metrics::kl_to_uniform(&counts)?;
        Ok(Self {
            attribute: attribute.to_string(),
            names,
            counts,
            kl_to_uniform,
        })
    }

    /// Share of each category.
    pub fn shares(&self) -> Vec<f64> {
        let total: u64 = self.counts.iter().sum();
        self.counts
            .iter()
            .map(|&c| c as f64 / total.max(1) as f64)
            .collect()
    }
}

/// Gender histogram, categories `female`, `male` (the networks' order).
pub fn gender_histogram(predictions: &[FacePrediction]) -> Result<AttributeHistogram> {
    let labels: Vec<usize> = predictions
        .iter()
        .map(|p| match p.gender {
            Gender::Female => 0,
            Gender::Male => 1,
        })
        .collect();
    AttributeHistogram::from_labels("gender", vec!["female".into(), "male".into()], &labels)
}

/// Age histogram of the rounded ages over the groups of `edges` (ascending, > 0), e.g.
/// [`AGE_GROUP_EDGES`].
pub fn age_histogram(predictions: &[FacePrediction], edges: &[u32]) -> Result<AttributeHistogram> {
    if edges.is_empty() || edges[0] == 0 || edges.windows(2).any(|w| w[0] >= w[1]) {
        return Err(FacesError::Invalid(format!(
            "age group edges must be ascending and positive, got {edges:?}"
        )));
    }
    let labels: Vec<usize> = predictions
        .iter()
        .map(|p| edges.partition_point(|&e| e <= p.age))
        .collect();
    AttributeHistogram::from_labels("age", age_group_names(edges), &labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pred(age: u32, male: bool) -> FacePrediction {
        FacePrediction {
            gender: if male { Gender::Male } else { Gender::Female },
            p_male: if male { 0.9 } else { 0.1 },
            age,
            age_expected: age as f32,
            age_confidence: 0.5,
        }
    }

    #[test]
    fn group_names_and_bins() {
        assert_eq!(
            age_group_names(&AGE_GROUP_EDGES),
            vec!["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+"]
        );
        let ps: Vec<_> = [0, 2, 3, 9, 10, 29, 30, 69, 70, 80]
            .iter()
            .map(|&a| pred(a, true))
            .collect();
        let h = age_histogram(&ps, &AGE_GROUP_EDGES).unwrap();
        assert_eq!(h.counts, vec![2, 2, 1, 1, 1, 0, 0, 1, 2]);
        assert!(age_histogram(&ps, &[10, 10]).is_err());
        assert!(age_histogram(&ps, &[0, 10]).is_err());
    }

    #[test]
    fn gender_kl_closed_form() {
        // 3 male of 4: KL = 0.75 ln 1.5 + 0.25 ln 0.5.
        let ps = [
            pred(30, true),
            pred(30, true),
            pred(30, true),
            pred(30, false),
        ];
        let h = gender_histogram(&ps).unwrap();
        assert_eq!(h.counts, vec![1, 3]);
        let want = 0.75 * 1.5f64.ln() + 0.25 * 0.5f64.ln();
        assert!((h.kl_to_uniform - want).abs() < 1e-15);
        assert_eq!(h.shares(), vec![0.25, 0.75]);
        assert!(gender_histogram(&[]).is_err());
    }
}
