//! `divrl experiment selection|guidance|debias|ablation`: the paper's Tables 1–2, the debiasing
//! experiment and the M/N ablation, on our data.
//!
//! Each experiment is a list of cells (one selection criterion, one fine-tuning run, one
//! baseline). A finished cell writes `cells/<name>.json`; a rerun with the same `--out` skips
//! finished cells and resumes an unfinished fine-tuning run from its newest checkpoint
//! (`cells/<name>/`). When every cell is done the experiment writes `table.md`, `table.json`,
//! `plots/*.svg` and a self-contained `report.html`.
//!
//! All metrics are in ϕ's feature space (the shipped small Fashion-MNIST classifier by default,
//! 128-d penultimate features), against the held-out evaluation pool (200 real images per
//! class, disjoint from the reference pool the rewards use).
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use divrl::config::write_atomic;
use divrl::data::AttributeKind;
use divrl::eval::EvalReport;
use divrl::rl::run_log::read_log;
use divrl::rl::setup::BaseEvaluation;
use divrl::rl::{build_finetuner, presets, FinetuneConfig};
use divrl_report::{Block, Report};
use divrl_reward::RewardKind;

use crate::files::{progress_bar, read_json, write_json};
use table::{markdown, seeded_tables};

mod ablation;
mod debias;
pub mod diversity;
mod guidance;
mod selection;
mod table;

pub use ablation::ABLATION_REWARD;
pub use divrl::rl::presets::SKEWED_BASE;
pub use table::result_table;

/// Which experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExperimentKind {
    Selection,
    Guidance,
    Debias,
    Ablation,
    Diversity,
}

impl ExperimentKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Selection => "selection",
            Self::Guidance => "guidance",
            Self::Debias => "debias",
            Self::Ablation => "ablation",
            Self::Diversity => "diversity",
        }
    }
}

/// Settings of one experiment run.
#[derive(Debug, Clone)]
pub struct ExperimentOptions {
    pub kind: ExperimentKind,
    pub out: PathBuf,
    pub quick: bool,
    pub progress: bool,
    /// Base checkpoint (default: the preset's; debias: the attribute's skewed base).
    pub base: Option<PathBuf>,
    /// Guidance scale (selection and debias; guidance sweeps 1–4, ablation uses the preset's 4).
    pub guidance: Option<f64>,
    /// Selection: candidate sets of O per class (full 20, quick 4).
    pub sets_per_class: Option<usize>,
    /// Guidance: the scales to run (default 4, 3, 2, 1, the paper's).
    pub scales: Option<Vec<f64>>,
    /// A TOML table laid over every cell's fine-tuning config (sizes, device, ϕ, data …).
    pub overlay: Option<toml::Table>,
    pub device: Option<String>,
    pub threads: Option<usize>,
    /// The command line, for the report.
    pub command: String,
    /// Diversity: the seeds to run (default 1, 2, 3; quick 1, 2). Processes with disjoint seeds
    /// may share one `out`; a last run over every seed then tables them all.
    pub seeds: Option<Vec<u64>>,
    /// Diversity: training-free sampler baselines evaluated beside the base on the same noise.
    pub sampler_baselines: Vec<diversity::SamplerBaseline>,
    /// Diversity: continue every run to twice its epochs and evaluate again (collapse check).
    pub double: bool,
    /// Debias: the skewed attribute (its data set and default base) [default: inversion].
    pub attribute: Option<AttributeKind>,
}

/// One finished cell.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellResult {
    pub name: String,
    /// What distinguishes the cell (criterion, guidance, reward, M, N …).
    pub params: BTreeMap<String, String>,
    pub report: EvalReport,
    /// Fine-tuning epochs (0 for baselines and selections).
    pub epochs: usize,
    pub train_seconds: f64,
    pub seconds: f64,
    /// Mean set reward of the first and the last epoch (fine-tuning cells).
    pub set_reward_first: Option<f64>,
    pub set_reward_last: Option<f64>,
}

/// `table.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExperimentTable {
    pub experiment: String,
    pub quick: bool,
    pub command: String,
    pub machine: String,
    pub finished_utc: String,
    /// Feature space and evaluation pool of every metric.
    pub space: String,
    /// Sizes that define the experiment.
    pub sizes: BTreeMap<String, String>,
    pub cells: Vec<CellResult>,
    /// The paper's numbers for the same rows, where it has them (Recall, Precision in %).
    pub paper: Vec<PaperRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PaperRow {
    pub row: String,
    pub recall: f64,
    pub precision: f64,
    pub fid: f64,
}

/// Rows `(row, Recall %, Precision %, FID)`.
fn paper_rows(rows: &[(&str, f64, f64, f64)]) -> Vec<PaperRow> {
    rows.iter()
        .map(|&(row, recall, precision, fid)| PaperRow {
            row: row.into(),
            recall,
            precision,
            fid,
        })
        .collect()
}

/// Table 1 of the paper (ImageNet 128×128, post-sampling selection of 5 of 10).
pub fn paper_table1() -> Vec<PaperRow> {
    paper_rows(&[
        ("random", 40.22, 85.77, 8.10),
        ("max-mmd", 47.66, 83.26, 6.22),
        ("max-gp-mi", 45.31, 84.14, 6.81),
        ("min-mmd", 27.69, 92.39, 14.94),
        ("min-gp-mi", 31.24, 88.26, 10.32),
    ])
}

/// Table 2 of the paper (ImageNet 128×128, fine-tuning at guidance 1–4).
pub fn paper_table2() -> Vec<PaperRow> {
    paper_rows(&[
        ("w4-baseline", 36.15, 82.96, 24.49),
        ("w4-gp-mi", 45.31, 81.72, 23.81),
        ("w4-mmd", 47.66, 83.26, 23.42),
        ("w3-baseline", 40.35, 82.10, 23.00),
        ("w3-gp-mi", 46.31, 81.74, 22.31),
        ("w3-mmd", 49.31, 81.26, 22.08),
        ("w2-baseline", 45.95, 79.20, 21.19),
        ("w2-gp-mi", 47.83, 79.05, 20.95),
        ("w2-mmd", 49.30, 78.82, 20.48),
        ("w1-baseline", 55.10, 74.16, 19.86),
        ("w1-gp-mi", 56.13, 73.52, 19.49),
        ("w1-mmd", 59.63, 74.84, 19.19),
    ])
}

/// Lays the entries of `overlay` over `cfg` (unknown keys are an error).
pub fn apply_overlay(cfg: FinetuneConfig, overlay: Option<&toml::Table>) -> Result<FinetuneConfig> {
    let Some(o) = overlay else {
        return Ok(cfg);
    };
    let c = cfg.overlaid(o).context("bad config overlay")?;
    c.validate()?;
    Ok(c)
}

struct Ctx<'a> {
    opts: &'a ExperimentOptions,
    pb: indicatif::ProgressBar,
    cells_dir: PathBuf,
}

impl Ctx<'_> {
    fn cell_json(&self, name: &str) -> PathBuf {
        self.cells_dir.join(format!("{name}.json"))
    }

    /// The preset with the experiment's overrides.
    fn config(&self, reward: RewardKind, guidance: f64) -> Result<FinetuneConfig> {
        let mut c = self.overridden(presets::experiment(reward, guidance, self.opts.quick))?;
        // The experiment decides the guidance, whatever the overlay says.
        c.guidance = guidance;
        Ok(c)
    }

    /// `preset` with the options' base, device and threads, then the overlay.
    fn overridden(&self, mut c: FinetuneConfig) -> Result<FinetuneConfig> {
        if let Some(b) = &self.opts.base {
            c.base = b.clone();
        }
        if let Some(d) = &self.opts.device {
            c.device = d.clone();
        }
        if let Some(t) = self.opts.threads {
            c.threads = t;
        }
        apply_overlay(c, self.opts.overlay.as_ref())
    }

    /// Progress units of a cell: its epochs and one evaluation.
    fn units(cfg: &FinetuneConfig, train: bool) -> u64 {
        1 + if train { cfg.epochs as u64 } else { 0 }
    }

    /// A baseline cell: the base model evaluated at `cfg.guidance`.
    fn baseline(
        &self,
        name: &str,
        params: &[(&str, String)],
        cfg: &FinetuneConfig,
    ) -> Result<CellResult> {
        let p = self.cell_json(name);
        if p.exists() {
            self.pb.inc(Self::units(cfg, false));
            return read_json(&p);
        }
        self.pb
            .set_message(format!("{name}: evaluating the base model"));
        let t0 = Instant::now();
        let report = BaseEvaluation::new(cfg, false)?.evaluate()?;
        let r = CellResult {
            name: name.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            report,
            epochs: 0,
            train_seconds: 0.0,
            seconds: t0.elapsed().as_secs_f64(),
            set_reward_first: None,
            set_reward_last: None,
        };
        write_json(&p, &r)?;
        self.pb.inc(1);
        Ok(r)
    }

    /// A fine-tuning cell: `cfg.epochs` of RL fine-tuning in `cells/<name>/` (resumed from its
    /// newest checkpoint), then one evaluation from the evaluation noise.
    fn finetune(
        &self,
        name: &str,
        params: &[(&str, String)],
        cfg: FinetuneConfig,
    ) -> Result<CellResult> {
        self.finetune_in(name, name, params, cfg)
    }

    /// [`Ctx::finetune`] in the run folder `cells/<run>/`, which several cells may share: a cell
    /// with more epochs continues the run of one with fewer.
    fn finetune_in(
        &self,
        name: &str,
        run: &str,
        params: &[(&str, String)],
        mut cfg: FinetuneConfig,
    ) -> Result<CellResult> {
        let p = self.cell_json(name);
        if p.exists() {
            self.pb.inc(Self::units(&cfg, true));
            return read_json(&p);
        }
        let t0 = Instant::now();
        cfg.out = self.cells_dir.join(run);
        cfg.eval_every = 0;
        let mut t = build_finetuner(&cfg, true, false)?;
        t.resume()?;
        self.pb.set_message(format!("{name}: fine-tuning"));
        self.pb.inc(t.epoch as u64);
        t.run_with(&self.pb, !self.opts.progress, &mut |_, _, _| Ok(()))?;
        self.pb.set_message(format!("{name}: evaluating"));
        let (epochs, evals) = read_log(&cfg.out)?;
        // An evaluation the run already logged at this epoch with the same settings (e.g. a run
        // with eval_every adopted as a cell) is the same computation: reuse it.
        let generated = cfg.eval_per_class * t.classes.len();
        let independent = |r: &EvalReport| {
            r.independent
                .as_ref()
                .map(|i| i.extractor.as_str())
                .unwrap_or("")
                == cfg.eval_independent.as_str()
        };
        let logged = evals.iter().rev().find(|e| {
            e.epoch == cfg.epochs && e.report.generated == generated && independent(&e.report)
        });
        let report = match logged {
            Some(e) => e.report.clone(),
            None if t.epoch == cfg.epochs => t.evaluate()?,
            None => bail!(
                "{} is at epoch {} and logged no evaluation at epoch {} with these settings",
                cfg.out.display(),
                t.epoch,
                cfg.epochs
            ),
        };
        let r = CellResult {
            name: name.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            report,
            epochs: cfg.epochs,
            train_seconds: t.train_seconds,
            seconds: t0.elapsed().as_secs_f64(),
            set_reward_first: epochs.first().map(|e| e.set_reward_mean),
            set_reward_last: epochs
                .iter()
                .rfind(|e| e.epoch <= cfg.epochs)
                .map(|e| e.set_reward_mean),
        };
        write_json(&p, &r)?;
        self.pb.inc(1);
        Ok(r)
    }
}

/// What [`run_experiment`] wrote.
#[derive(Debug, Clone)]
pub struct ExperimentOutcome {
    pub table_md: PathBuf,
    pub table_json: PathBuf,
    pub html: PathBuf,
    pub table: ExperimentTable,
    pub markdown: String,
}

/// Runs (or continues) an experiment and writes its table, plots and report.
pub fn run_experiment(opts: &ExperimentOptions) -> Result<ExperimentOutcome> {
    let cells_dir = opts.out.join("cells");
    std::fs::create_dir_all(&cells_dir)
        .with_context(|| format!("creating {}", cells_dir.display()))?;
    let ctx = Ctx {
        opts,
        pb: progress_bar(0, opts.progress, opts.kind.name()),
        cells_dir,
    };
    ctx.pb
        .enable_steady_tick(std::time::Duration::from_millis(250));
    let (table, plots) = match opts.kind {
        ExperimentKind::Selection => selection::selection(&ctx)?,
        ExperimentKind::Guidance => guidance::guidance(&ctx)?,
        ExperimentKind::Debias => debias::debias(&ctx)?,
        ExperimentKind::Ablation => ablation::ablation(&ctx)?,
        ExperimentKind::Diversity => diversity::diversity(&ctx)?,
    };
    ctx.pb.finish_and_clear();
    let md = markdown(&table);
    let out = &opts.out;
    let table_md = out.join("table.md");
    let table_json = out.join("table.json");
    write_atomic(&table_md, md.as_bytes())?;
    write_json(&table_json, &table)?;
    std::fs::create_dir_all(out.join("plots"))?;
    for (name, svg) in &plots {
        write_atomic(
            &out.join("plots").join(format!("{name}.svg")),
            svg.as_bytes(),
        )?;
    }
    let mut r = Report::new(format!("divrl experiment {}", table.experiment));
    r.subtitle = Some(format!(
        "{} · {} · {}{}",
        table.command,
        table.machine,
        table.finished_utc,
        if table.quick { " · --quick size" } else { "" }
    ));
    r.paragraph(table.space.clone());
    r.push(Block::List(
        table
            .sizes
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect(),
    ));
    match seeded_tables(&table) {
        Some(tables) => {
            for t in tables {
                r.push(Block::Table(t));
            }
        }
        None => r.push(Block::Table(result_table(&table))),
    }
    r.push(Block::Plots(plots.into_iter().map(|(_, s)| s).collect()));
    r.push(Block::Details {
        summary: "table.json".into(),
        body: serde_json::to_string_pretty(&table)?,
    });
    let html = out.join("report.html");
    r.write(&html)
        .with_context(|| format!("writing {}", html.display()))?;
    Ok(ExperimentOutcome {
        table_md,
        table_json,
        html,
        table,
        markdown: md,
    })
}

/// A report with the given Recall and FID and fixed other metrics, for the tables' unit tests.
#[cfg(test)]
pub(crate) fn test_report(extractor: &str, recall: f64, fid: f64) -> EvalReport {
    EvalReport {
        extractor: extractor.into(),
        generated: 10,
        reference: 20,
        dim: 4,
        k: 3,
        fid,
        precision: 0.5,
        recall,
        density: 1.0,
        coverage: 0.5,
        inception_score: None,
        inception_score_std: None,
        attribute: None,
        attributes: Vec::new(),
        independent: None,
        pixel_within_class: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_replaces_fields_and_rejects_unknown_ones() {
        let base = presets::experiment(RewardKind::Mmd, 4.0, true);
        let o: toml::Table = toml::from_str("epochs = 3\nextractor = \"pixels\"").unwrap();
        let c = apply_overlay(base.clone(), Some(&o)).unwrap();
        assert_eq!(c.epochs, 3);
        assert_eq!(c.extractor, "pixels");
        assert_eq!(c.lr, base.lr);
        let bad: toml::Table = toml::from_str("no_such = 1").unwrap();
        let e = apply_overlay(base, Some(&bad)).unwrap_err();
        assert!(format!("{e:#}").contains("no_such"), "{e:#}");
    }

    #[test]
    fn paper_tables_have_every_row() {
        assert_eq!(paper_table1().len(), 5);
        assert_eq!(paper_table2().len(), 12);
        assert!(paper_table2()
            .iter()
            .any(|r| r.row == "w1-mmd" && r.recall == 59.63));
    }
}
