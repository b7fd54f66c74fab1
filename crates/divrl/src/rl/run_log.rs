//! The run's `log.jsonl`: one line per epoch ([`EpochLog`]) and per evaluation ([`EvalLog`]),
//! written by [`super::RunDir::append_log`] and read back by [`read_log`] (reports, experiments,
//! plots).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::eval::EvalReport;

use super::ppo::PpoStats;
use super::run_dir::LOG_FILE;

/// One line of `log.jsonl` per epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochLog {
    pub kind: String,
    pub epoch: usize,
    pub set_reward_mean: f64,
    pub set_rewards: BTreeMap<String, f64>,
    pub reward_mean: f64,
    pub reward_std: f64,
    pub reward_min: f64,
    pub reward_max: f64,
    pub advantage_abs_mean: f64,
    #[serde(flatten)]
    pub ppo: PpoStats,
    pub lr: f64,
    pub images: usize,
    pub images_per_s: f64,
    pub seconds: f64,
    /// Where the signal is lost (`diagnostics = true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<Diagnostics>,
}

/// Per-epoch diagnostics of the policy gradient's signal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Diagnostics {
    /// Pearson correlation, over the epoch's trajectories, between an image's advantage and the
    /// change of its log-probability (mean over its trained transitions) caused by the update.
    /// Positive: the update made high-advantage images more likely, as it should.
    pub adv_logp_corr: f64,
    /// Mean absolute per-transition log-probability change of the update.
    pub logp_change_abs_mean: f64,
    /// Mean set reward of `images_per_class` fresh samples per condition from fixed noise (the
    /// same every epoch), before and after this epoch's update.
    pub fixed_set_reward_before: f64,
    pub fixed_set_reward_after: f64,
}

/// An evaluation line of `log.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalLog {
    pub kind: String,
    pub epoch: usize,
    #[serde(flatten)]
    pub report: EvalReport,
    pub seconds: f64,
}

/// Reads a run's `log.jsonl`: epoch lines and evaluation lines (other kinds are skipped).
pub fn read_log(dir: &Path) -> Result<(Vec<EpochLog>, Vec<EvalLog>)> {
    let p = dir.join(LOG_FILE);
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let (mut epochs, mut evals) = (Vec::new(), Vec::new());
    for (i, l) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value =
            serde_json::from_str(l).with_context(|| format!("{} line {}", p.display(), i + 1))?;
        match v.get("kind").and_then(|k| k.as_str()) {
            Some("epoch") => epochs.push(serde_json::from_value(v)?),
            Some("eval") => evals.push(serde_json::from_value(v)?),
            _ => {}
        }
    }
    Ok((epochs, evals))
}
