//! A fine-tuning run's folder: `log.jsonl` (rewritten whole and atomically on every line, so a
//! killed run never leaves a half line), `checkpoints/epoch-NNNNNN/` (trainable variables,
//! optimizer, [`RlState`]) written through a temporary folder and a rename, `checkpoints/latest`
//! naming the newest, and pruning to `keep_checkpoints`.
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{nn::VarStore, Tensor};

use crate::checkpoint::{load_vars, OPTIM_FILE, STATE_FILE};
use crate::config::{read_safetensors, write_atomic, write_safetensors_atomic};
use crate::optim::AdamW;

use super::advantage::ConditionStatTracker;
use super::config::FinetuneConfig;

pub const LOG_FILE: &str = "log.jsonl";
pub const CHECKPOINTS_DIR: &str = "checkpoints";
pub const LATEST_FILE: &str = "latest";
pub const TRAINABLE_FILE: &str = "trainable.safetensors";

/// What a checkpoint's `state.json` holds besides the tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RlState {
    pub epoch: usize,
    pub rng: u64,
    pub tracker: ConditionStatTracker,
    pub images_seen: u64,
    pub train_seconds: f64,
    pub config: FinetuneConfig,
}

/// The run folder `out` with the log lines written so far and the last good checkpoint.
#[derive(Debug, Clone)]
pub struct RunDir {
    out: PathBuf,
    log_lines: Vec<String>,
    last_checkpoint: Option<PathBuf>,
}

impl RunDir {
    /// The run folder `out` (nothing is created until something is written).
    pub fn new(out: &Path) -> Self {
        Self {
            out: out.to_path_buf(),
            log_lines: Vec::new(),
            last_checkpoint: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.out
    }

    /// The newest checkpoint this run wrote or resumed from.
    pub fn last_checkpoint(&self) -> Option<&Path> {
        self.last_checkpoint.as_deref()
    }

    /// Appends one JSON line to `log.jsonl`.
    pub fn append_log<T: Serialize>(&mut self, record: &T) -> Result<()> {
        self.log_lines.push(serde_json::to_string(record)?);
        let mut text = self.log_lines.join("\n");
        text.push('\n');
        write_atomic(&self.out.join(LOG_FILE), text.as_bytes())
    }

    /// Writes `checkpoints/epoch-NNNNNN/` (with `extra` tensor files, e.g. the policy's moving
    /// average) through a temporary folder and a rename, then points `checkpoints/latest` at it,
    /// then keeps only the newest `keep` checkpoints.
    pub fn save_checkpoint(
        &mut self,
        trainable: &VarStore,
        opt: &AdamW,
        state: &RlState,
        extra: &[(&str, Vec<(String, Tensor)>)],
        keep: usize,
    ) -> Result<PathBuf> {
        let root = self.out.join(CHECKPOINTS_DIR);
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let name = format!("epoch-{:06}", state.epoch);
        let tmp = root.join(format!(".tmp-{name}-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        let vars: Vec<(String, Tensor)> = trainable.variables().into_iter().collect();
        write_safetensors_atomic(&tmp.join(TRAINABLE_FILE), &vars)?;
        write_safetensors_atomic(&tmp.join(OPTIM_FILE), &opt.state())?;
        for (file, tensors) in extra {
            write_safetensors_atomic(&tmp.join(file), tensors)?;
        }
        write_atomic(&tmp.join(STATE_FILE), &serde_json::to_vec_pretty(state)?)?;
        let dst = root.join(&name);
        if dst.exists() {
            std::fs::remove_dir_all(&dst)
                .with_context(|| format!("removing stale {}", dst.display()))?;
        }
        std::fs::rename(&tmp, &dst).with_context(|| format!("renaming to {}", dst.display()))?;
        write_atomic(&root.join(LATEST_FILE), name.as_bytes())?;
        let mut old: Vec<PathBuf> = std::fs::read_dir(&root)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_dir()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("epoch-") && n != name)
            })
            .collect();
        old.sort();
        let keep_old = keep.saturating_sub(1);
        if old.len() > keep_old {
            for p in &old[..old.len() - keep_old] {
                std::fs::remove_dir_all(p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
        self.last_checkpoint = Some(dst.clone());
        Ok(dst)
    }

    /// The newest checkpoint's folder and state, or `None` when the run has none.
    pub fn latest(&self) -> Result<Option<(PathBuf, RlState)>> {
        let root = self.out.join(CHECKPOINTS_DIR);
        let latest = root.join(LATEST_FILE);
        if !latest.exists() {
            return Ok(None);
        }
        let name = std::fs::read_to_string(&latest)
            .with_context(|| format!("reading {}", latest.display()))?;
        let dir = root.join(name.trim());
        let path = dir.join(STATE_FILE);
        let state: RlState = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("parsing {}", path.display()))?;
        Ok(Some((dir, state)))
    }

    /// Loads checkpoint `dir`'s trainable variables and optimizer state, makes it the last good
    /// checkpoint and keeps the log lines up to its `epoch` (later ones are dropped, to be
    /// written again by the resumed run).
    pub fn restore(
        &mut self,
        dir: &Path,
        epoch: usize,
        trainable: &mut VarStore,
        opt: &mut AdamW,
    ) -> Result<()> {
        load_vars(trainable, &dir.join(TRAINABLE_FILE))?;
        opt.load_state(read_safetensors(&dir.join(OPTIM_FILE))?)
            .with_context(|| format!("{}", dir.join(OPTIM_FILE).display()))?;
        self.last_checkpoint = Some(dir.to_path_buf());
        let log = self.out.join(LOG_FILE);
        if log.exists() {
            let text = std::fs::read_to_string(&log)
                .with_context(|| format!("reading {}", log.display()))?;
            self.log_lines = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v.get("epoch").and_then(|e| e.as_u64()))
                        .is_some_and(|e| e as usize <= epoch)
                })
                .map(str::to_string)
                .collect();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::AdamWConfig;
    use tch::{Device, Kind};

    fn state(epoch: usize) -> RlState {
        RlState {
            epoch,
            rng: 7,
            tracker: ConditionStatTracker::new(4, 2),
            images_seen: 10 * epoch as u64,
            train_seconds: 1.5,
            config: FinetuneConfig::default(),
        }
    }

    #[test]
    fn checkpoints_are_pruned_and_restored_with_the_log_up_to_their_epoch() {
        let tmp = tempfile::tempdir().unwrap();
        let mut run = RunDir::new(tmp.path());
        let vs = VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[3], tch::nn::Init::Const(1.0));
        let opt = AdamW::new(&vs, AdamWConfig::default());
        for e in 1..=3 {
            tch::no_grad(|| {
                let _ = w.shallow_clone().fill_(e as f64);
            });
            run.append_log(&serde_json::json!({"kind": "epoch", "epoch": e}))
                .unwrap();
            run.save_checkpoint(&vs, &opt, &state(e), &[], 2).unwrap();
        }
        let root = tmp.path().join(CHECKPOINTS_DIR);
        let mut kept: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        kept.sort();
        assert_eq!(kept, ["epoch-000002", "epoch-000003", "latest"]);

        // A later epoch was logged but never checkpointed: resuming drops its line.
        run.append_log(&serde_json::json!({"kind": "epoch", "epoch": 4}))
            .unwrap();
        let mut again = RunDir::new(tmp.path());
        let (dir, st) = again.latest().unwrap().expect("a checkpoint");
        assert_eq!(st.epoch, 3);
        assert_eq!(st.images_seen, 30);
        let mut vs2 = VarStore::new(Device::Cpu);
        let w2 = vs2.root().var("w", &[3], tch::nn::Init::Const(0.0));
        let mut opt2 = AdamW::new(&vs2, AdamWConfig::default());
        again.restore(&dir, st.epoch, &mut vs2, &mut opt2).unwrap();
        assert_eq!(w2.sum(Kind::Float).double_value(&[]), 9.0);
        assert_eq!(again.last_checkpoint(), Some(dir.as_path()));
        again
            .append_log(&serde_json::json!({"kind": "eval", "epoch": 3}))
            .unwrap();
        let text = std::fs::read_to_string(tmp.path().join(LOG_FILE)).unwrap();
        let epochs: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(epochs, [1, 2, 3, 3]);
    }

    #[test]
    fn a_folder_without_checkpoints_has_no_latest() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(RunDir::new(tmp.path()).latest().unwrap().is_none());
    }
}
