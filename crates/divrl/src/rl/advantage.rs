//! Rewards → advantages: normalised per condition with a running history (as ddpo-pytorch's
//! `PerPromptStatTracker`), falling back to the statistics of the whole batch while a condition
//! has fewer than `min_count` rewards on record; then clipped.
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Per-condition reward history (the newest `buffer_size` rewards of each condition).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConditionStatTracker {
    pub buffer_size: usize,
    pub min_count: usize,
    history: BTreeMap<i64, VecDeque<f64>>,
}

/// Population mean and standard deviation (numpy's `np.std`).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

impl ConditionStatTracker {
    pub fn new(buffer_size: usize, min_count: usize) -> Self {
        Self {
            buffer_size: buffer_size.max(1),
            min_count,
            history: BTreeMap::new(),
        }
    }

    /// Rewards on record for a condition.
    pub fn count(&self, condition: i64) -> usize {
        self.history.get(&condition).map_or(0, VecDeque::len)
    }

    /// Records `rewards` (one per sample, `conditions[i]` its condition) and returns the
    /// normalised advantages `(r − mean) / (std + 1e-6)`.
    pub fn update(&mut self, conditions: &[i64], rewards: &[f64]) -> Result<Vec<f64>> {
        if conditions.len() != rewards.len() {
            bail!(
                "{} conditions for {} rewards",
                conditions.len(),
                rewards.len()
            );
        }
        if let Some(i) = rewards.iter().position(|r| !r.is_finite()) {
            bail!("reward {i} is not finite ({})", rewards[i]);
        }
        let batch = mean_std(rewards);
        let mut adv = vec![0.0; rewards.len()];
        let mut unique: Vec<i64> = conditions.to_vec();
        unique.sort_unstable();
        unique.dedup();
        for c in unique {
            let idx: Vec<usize> = (0..conditions.len())
                .filter(|&i| conditions[i] == c)
                .collect();
            let buf = self.history.entry(c).or_default();
            for &i in &idx {
                buf.push_back(rewards[i]);
                if buf.len() > self.buffer_size {
                    buf.pop_front();
                }
            }
            let (mean, std) = if buf.len() < self.min_count {
                batch
            } else {
                mean_std(buf.make_contiguous())
            };
            for &i in &idx {
                adv[i] = (rewards[i] - mean) / (std + 1e-6);
            }
        }
        Ok(adv)
    }
}

/// Clips every advantage to `[-clip, clip]`.
pub fn clip_advantages(adv: &mut [f64], clip: f64) {
    for a in adv {
        *a = a.clamp(-clip, clip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_fallback_then_per_condition() {
        let mut t = ConditionStatTracker::new(4, 3);
        // Condition 0 has two rewards (< min_count): normalised with the batch (mean 2.5).
        let a = t
            .update(&[0, 0, 1, 1, 1], &[1.0, 2.0, 3.0, 3.0, 3.5])
            .unwrap();
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 3.0, 3.5]);
        assert!((a[0] - (1.0 - m) / (s + 1e-6)).abs() < 1e-12);
        // Condition 1 has three (= min_count): its own statistics.
        let (m1, s1) = mean_std(&[3.0, 3.0, 3.5]);
        assert!((a[4] - (3.5 - m1) / (s1 + 1e-6)).abs() < 1e-12);
        // The buffer keeps the newest 4.
        t.update(&[1, 1], &[10.0, 11.0]).unwrap();
        assert_eq!(t.count(1), 4);
        let a = t.update(&[1], &[0.0]).unwrap();
        let (m, s) = mean_std(&[3.5, 10.0, 11.0, 0.0]);
        assert!((a[0] - (0.0 - m) / (s + 1e-6)).abs() < 1e-12);
        assert!(t.update(&[0], &[f64::NAN]).is_err());
    }

    #[test]
    fn clipping() {
        let mut v = vec![-7.0, 0.5, 9.0];
        clip_advantages(&mut v, 5.0);
        assert_eq!(v, vec![-5.0, 0.5, 5.0]);
    }
}
