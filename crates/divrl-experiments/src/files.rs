//! JSON files of the reports and cached cells (written atomically), and the console progress bar.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{de::DeserializeOwned, Serialize};

use divrl::config::write_atomic;

/// Reads and parses a JSON file.
pub fn read_json<T: DeserializeOwned>(p: &Path) -> Result<T> {
    serde_json::from_slice(&std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
        .with_context(|| format!("parsing {}", p.display()))
}

/// Writes `v` as pretty JSON, atomically (a reader never sees half a file).
pub fn write_json<T: Serialize>(p: &Path, v: &T) -> Result<()> {
    write_atomic(p, &serde_json::to_vec_pretty(v)?)
}

/// A progress bar (hidden without `progress`) with divrl's style.
pub fn progress_bar(len: u64, progress: bool, what: &str) -> indicatif::ProgressBar {
    divrl::progress::bar(
        len,
        progress,
        &format!(
            "{{spinner}} {what} [{{bar:30}}] {{pos}}/{{len}} {{msg}} ({{elapsed}}, ETA {{eta}})"
        ),
    )
}
