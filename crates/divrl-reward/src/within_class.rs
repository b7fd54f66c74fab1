//! Within-class diversity: the mean pairwise Euclidean distance between samples of the same
//! class, the quantity guidance shrinks and diversity fine-tuning should restore. Measured on
//! generated and on real samples of the same classes, their ratio says how much of the real
//! data's within-class spread a generator reaches (1 = as varied as the data).
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Error, Features, Result};

/// Mean pairwise distance of the rows of `x` whose label is `c`, for every label with at least
/// two rows, in ascending label order. Exact: every unordered pair once, distances in f64.
pub fn per_class_mean_distance(x: &Features, labels: &[i64]) -> Result<Vec<(i64, f64)>> {
    if labels.len() != x.rows() {
        return Err(Error::Shape {
            what: "class labels".into(),
            expected: format!("{} (one per sample)", x.rows()),
            got: labels.len().to_string(),
        });
    }
    let mut classes: Vec<i64> = labels.to_vec();
    classes.sort_unstable();
    classes.dedup();
    let out: Vec<(i64, f64)> = classes
        .par_iter()
        .filter_map(|&c| {
            let idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == c).collect();
            if idx.len() < 2 {
                return None;
            }
            let mut sum = 0.0;
            let mut pairs = 0usize;
            for (a, &i) in idx.iter().enumerate() {
                let ri = x.row(i);
                for &j in &idx[a + 1..] {
                    let d2: f64 = ri
                        .iter()
                        .zip(x.row(j))
                        .map(|(p, q)| (p - q) * (p - q))
                        .sum();
                    sum += d2.sqrt();
                    pairs += 1;
                }
            }
            Some((c, sum / pairs as f64))
        })
        .collect();
    if out.is_empty() {
        return Err(Error::too_few(
            "within-class distance needs a class with at least 2 samples",
        ));
    }
    Ok(out)
}

/// Generated vs real within-class spread over the classes both sets have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WithinClass {
    /// Mean over classes of the generated samples' mean pairwise distance.
    pub generated: f64,
    /// The same for the real samples.
    pub real: f64,
    /// Mean over classes of generated / real (per class, then averaged).
    pub ratio: f64,
    /// Classes compared.
    pub classes: usize,
}

/// Compares the within-class spread of generated and real samples (same feature space, e.g.
/// raw pixels), class by class, over the classes present in both with at least two samples.
pub fn within_class(
    generated: &Features,
    generated_labels: &[i64],
    real: &Features,
    real_labels: &[i64],
) -> Result<WithinClass> {
    generated.check_same_dim(real, "generated samples", "real samples")?;
    let g = per_class_mean_distance(generated, generated_labels)?;
    let r = per_class_mean_distance(real, real_labels)?;
    let mut n = 0usize;
    let (mut sg, mut sr, mut sratio) = (0.0, 0.0, 0.0);
    for (c, dg) in &g {
        if let Some((_, dr)) = r.iter().find(|(rc, _)| rc == c) {
            if *dr <= 0.0 {
                return Err(Error::param(format!(
                    "real samples of class {c} are all identical (within-class distance 0)"
                )));
            }
            sg += dg;
            sr += dr;
            sratio += dg / dr;
            n += 1;
        }
    }
    if n == 0 {
        return Err(Error::too_few(
            "within-class comparison: no class has at least 2 generated and 2 real samples",
        ));
    }
    Ok(WithinClass {
        generated: sg / n as f64,
        real: sr / n as f64,
        ratio: sratio / n as f64,
        classes: n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_distances() {
        // class 0: points 0, 3, 4 on a line -> pairs 3, 4, 1 -> mean 8/3; class 1: (0,0),(3,4) -> 5.
        let x = Features::from_rows(
            "x",
            &[
                vec![0.0, 0.0],
                vec![3.0, 0.0],
                vec![0.0, 0.0],
                vec![4.0, 0.0],
                vec![3.0, 4.0],
                vec![9.0, 9.0],
            ],
        )
        .unwrap();
        let labels = [0, 0, 1, 0, 1, 2];
        let d = per_class_mean_distance(&x, &labels).unwrap();
        assert_eq!(d.len(), 2, "class 2 has one sample and is skipped");
        assert!((d[0].1 - 8.0 / 3.0).abs() < 1e-15);
        assert!((d[1].1 - 5.0).abs() < 1e-15);
    }

    #[test]
    fn ratio_is_per_class_then_averaged() {
        let g = Features::from_rows("g", &[vec![0.0], vec![1.0], vec![0.0], vec![4.0]]).unwrap();
        let r = Features::from_rows("r", &[vec![0.0], vec![2.0], vec![0.0], vec![4.0]]).unwrap();
        let w = within_class(&g, &[0, 0, 1, 1], &r, &[0, 0, 1, 1]).unwrap();
        assert_eq!(w.classes, 2);
        assert!((w.generated - 2.5).abs() < 1e-15);
        assert!((w.real - 3.0).abs() < 1e-15);
        assert!((w.ratio - (0.5 + 1.0) / 2.0).abs() < 1e-15);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let g = Features::from_rows("g", &[vec![0.0], vec![1.0]]).unwrap();
        assert!(per_class_mean_distance(&g, &[0]).is_err());
        assert!(per_class_mean_distance(&g, &[0, 1]).is_err());
        let r = Features::from_rows("r", &[vec![1.0], vec![1.0]]).unwrap();
        assert!(within_class(&g, &[0, 0], &r, &[0, 0]).is_err());
        assert!(within_class(&g, &[0, 0], &g, &[1, 1]).is_err());
    }
}
