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
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tch::{Kind, Tensor};

use divrl_report::{line_plot, Block, Report, Series, Table};
use divrl_reward::select::{select_sets, Criterion, Method};
use divrl_reward::{DiversityReward, RewardKind, RewardSpec};

use crate::config::{read_safetensors, write_atomic, write_safetensors_atomic};
use crate::data::AttributeKind;
use crate::demo::{
    machine_description, metric_cells, progress_bar, read_log, utc_now, METRIC_HEADERS,
};
use crate::eval::{EvalOptions, EvalReport};
use crate::features::to_features;
use crate::rl::setup::BaseEvaluation;
use crate::rl::{build_finetuner, presets, FinetuneConfig};
use crate::rng::SplitMix64;

pub mod diversity;

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
    let mut v = toml::Table::try_from(&cfg)?;
    for (k, val) in o {
        v.insert(k.clone(), val.clone());
    }
    let c: FinetuneConfig = toml::Value::Table(v)
        .try_into()
        .context("bad config overlay")?;
    c.validate()?;
    Ok(c)
}

fn read_json<T: DeserializeOwned>(p: &Path) -> Result<T> {
    serde_json::from_slice(&std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
        .with_context(|| format!("parsing {}", p.display()))
}

fn write_json<T: Serialize>(p: &Path, v: &T) -> Result<()> {
    write_atomic(p, &serde_json::to_vec_pretty(v)?)
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
        ExperimentKind::Selection => selection(&ctx)?,
        ExperimentKind::Guidance => guidance(&ctx)?,
        ExperimentKind::Debias => debias(&ctx)?,
        ExperimentKind::Ablation => ablation(&ctx)?,
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

fn paper_cells(t: &ExperimentTable, row: &str) -> Vec<String> {
    match t.paper.iter().find(|p| p.row == row) {
        Some(p) => vec![
            format!("{:.2}", p.recall),
            format!("{:.2}", p.precision),
            format!("{:.2}", p.fid),
        ],
        None => vec!["—".into(), "—".into(), "—".into()],
    }
}

/// The result table (ours, and the paper's numbers where it has the row).
pub fn result_table(t: &ExperimentTable) -> Table {
    let param_keys: Vec<String> = t
        .cells
        .first()
        .map(|c| c.params.keys().cloned().collect())
        .unwrap_or_default();
    let debias = t.experiment == "debias";
    let mut headers: Vec<String> = param_keys.clone();
    headers.extend(METRIC_HEADERS.iter().map(|s| s.to_string()));
    if debias {
        headers.push("inverted share".into());
        headers.push("KL to uniform ↓".into());
    }
    headers.push("set reward first → last epoch".into());
    if !t.paper.is_empty() {
        headers.extend(["paper Recall %", "paper Precision %", "paper FID"].map(String::from));
    }
    let mut table = Table::new(headers);
    for c in &t.cells {
        let mut row: Vec<String> = param_keys
            .iter()
            .map(|k| c.params.get(k).cloned().unwrap_or_default())
            .collect();
        row.extend(metric_cells(&c.report));
        if debias {
            match &c.report.attribute {
                Some(a) => {
                    let n: u64 = a.counts.iter().sum();
                    row.push(format!("{:.3}", a.counts[1] as f64 / n.max(1) as f64));
                    row.push(format!("{:.4}", a.kl_to_uniform));
                }
                None => row.extend(["—".to_string(), "—".to_string()]),
            }
        }
        row.push(match (c.set_reward_first, c.set_reward_last) {
            (Some(a), Some(b)) => format!("{a:.3} → {b:.3}"),
            _ => "—".into(),
        });
        if !t.paper.is_empty() {
            row.extend(paper_cells(t, &c.name));
        }
        table.row(row);
    }
    table
}

fn markdown(t: &ExperimentTable) -> String {
    let mut s = format!(
        "# divrl experiment {}{}\n\nCommand: `{}`  \nMachine: {}  \nFinished: {}\n\n{}\n\n",
        t.experiment,
        if t.quick { " (--quick)" } else { "" },
        t.command,
        t.machine,
        t.finished_utc,
        t.space
    );
    for (k, v) in &t.sizes {
        s += &format!("- {k}: {v}\n");
    }
    s.push('\n');
    match seeded_tables(t) {
        Some(tables) => {
            for table in tables {
                if let Some(c) = &table.caption {
                    s += &format!("**{c}**\n\n");
                }
                s += &table.markdown();
                s.push('\n');
            }
        }
        None => s += &result_table(t).markdown(),
    }
    s
}

/// The per-seed tables (every seed's row, mean ± sd, paired change against the base) of the
/// experiments that run seeds: diversity, and debias when its cells carry seeds.
fn seeded_tables(t: &ExperimentTable) -> Option<Vec<Table>> {
    let seeded = t.cells.iter().all(|c| c.params.contains_key("seed"));
    match t.experiment.as_str() {
        "diversity" => Some(diversity::tables(&t.cells, &diversity::diversity_metrics())),
        "debias" if seeded && !t.cells.is_empty() => Some(diversity::tables(
            &t.cells,
            &diversity::debias_metrics(&t.cells),
        )),
        _ => None,
    }
}

fn svg(title: &str, x: &str, y: &str, series: Vec<Series>) -> Result<String> {
    line_plot(title, x, y, &series).map_err(|e| anyhow::anyhow!("plot {title}: {e}"))
}

fn space_of(r: &EvalReport) -> String {
    format!(
        "Metrics in the feature space of ϕ = {} ({}-d), against {} held-out real images (disjoint from the reference images), k = {}.",
        r.extractor, r.dim, r.reference, r.k
    )
}

fn finish(
    ctx: &Ctx,
    sizes: BTreeMap<String, String>,
    cells: Vec<CellResult>,
    paper: Vec<PaperRow>,
) -> Result<ExperimentTable> {
    let space = cells
        .first()
        .map(|c| space_of(&c.report))
        .unwrap_or_default();
    Ok(ExperimentTable {
        experiment: ctx.opts.kind.name().into(),
        quick: ctx.opts.quick,
        command: ctx.opts.command.clone(),
        machine: machine_description(),
        finished_utc: utc_now(),
        space,
        sizes,
        cells,
        paper,
    })
}

fn sizes_of(cfg: &FinetuneConfig, extra: &[(&str, String)]) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = [
        ("base", cfg.base.display().to_string()),
        ("data", cfg.data.clone()),
        ("phi", cfg.extractor.clone()),
        ("DDIM steps", cfg.steps.to_string()),
        (
            "evaluation images per class",
            cfg.eval_per_class.to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in extra {
        m.insert(k.to_string(), v.clone());
    }
    m
}

fn ft_sizes(cfg: &FinetuneConfig) -> Vec<(&'static str, String)> {
    vec![
        ("fine-tuning epochs", cfg.epochs.to_string()),
        (
            "M (images per class and epoch)",
            cfg.images_per_class.to_string(),
        ),
        (
            "N (reference images per class)",
            cfg.ref_per_class.to_string(),
        ),
        (
            "policy update",
            format!(
                "{}, lr {}, clip {}, timestep fraction {}",
                if cfg.full_finetune {
                    "all weights".to_string()
                } else {
                    format!("LoRA rank {}", cfg.lora_rank)
                },
                cfg.lr,
                cfg.clip_range,
                cfg.timestep_fraction
            ),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Table 1: post-sampling selection

fn selection(ctx: &Ctx) -> Result<(ExperimentTable, Vec<(String, String)>)> {
    let w = ctx.opts.guidance.unwrap_or(4.0);
    let s_per_class = ctx
        .opts
        .sets_per_class
        .unwrap_or(if ctx.opts.quick { 4 } else { 20 });
    let (o, m) = (10usize, 5usize);
    if s_per_class == 0 {
        bail!("--sets-per-class must be >= 1");
    }
    let cfg = ctx.config(RewardKind::Mmd, w)?;
    ctx.pb.set_length(4);
    ctx.pb
        .set_message("loading the base model, ϕ and the pools");
    let t = build_finetuner(&cfg, true, false)?;
    let classes = t.classes.clone();
    let k = classes.len();
    let n_per_class = s_per_class * o;
    ctx.pb.inc(1);
    // Candidates: S·O images per class from the evaluation noise, interleaved by class.
    let cand = ctx.cells_dir.join("candidates.safetensors");
    let (feats, logits) = if cand.exists() {
        let m: BTreeMap<String, Tensor> = read_safetensors(&cand)?.into_iter().collect();
        let f = m
            .get("features")
            .context("candidates file has no features")?;
        if f.size()[0] as usize != n_per_class * k {
            bail!(
                "{} holds {} candidates, this run needs {}: use another --out",
                cand.display(),
                f.size()[0],
                n_per_class * k
            );
        }
        (
            f.shallow_clone(),
            m.get("logits").map(|l| l.shallow_clone()),
        )
    } else {
        ctx.pb.set_message(format!(
            "sampling {} candidates at guidance {w}",
            n_per_class * k
        ));
        let imgs = t.eval_images(n_per_class, w)?;
        let (f, l) = t.features(&imgs)?;
        let mut v = vec![("features".to_string(), f.to_kind(Kind::Float))];
        if let Some(l) = &l {
            v.push(("logits".to_string(), l.to_kind(Kind::Float)));
        }
        write_safetensors_atomic(&cand, &v)?;
        let grid = crate::demo::grid_png(&imgs, k, o.min(n_per_class))?;
        write_atomic(&ctx.opts.out.join("candidates-first-set.png"), &grid)?;
        (f.to_kind(Kind::Float), l.map(|l| l.to_kind(Kind::Float)))
    };
    ctx.pb.inc(1);
    let all = to_features("candidate features", &feats)?;
    let eval_feats = t
        .eval_features()
        .context("no evaluation set")?
        .shallow_clone();
    // Per class: the candidate indices in set order (set s = reps s·O .. (s+1)·O).
    let class_idx: Vec<Vec<usize>> = (0..k)
        .map(|ci| (0..n_per_class).map(|r| r * k + ci).collect())
        .collect();
    let gp_spec = RewardSpec::new(RewardKind::GpMi);
    let mut cells = Vec::new();
    let criteria: [(&str, Option<(RewardKind, Criterion)>); 6] = [
        ("random", None),
        ("max-mmd", Some((RewardKind::Mmd, Criterion::Max))),
        ("max-gp-mi", Some((RewardKind::GpMi, Criterion::Max))),
        ("min-mmd", Some((RewardKind::Mmd, Criterion::Min))),
        ("min-gp-mi", Some((RewardKind::GpMi, Criterion::Min))),
        ("all-10", None),
    ];
    ctx.pb.set_message("selecting");
    for (name, crit) in criteria {
        let p = ctx.cell_json(name);
        if p.exists() {
            cells.push(read_json::<CellResult>(&p)?);
            continue;
        }
        let t0 = Instant::now();
        let mut chosen: Vec<usize> = Vec::new();
        let mut rng = SplitMix64(0x5E1E_C7ED);
        for (ci, idx) in class_idx.iter().enumerate() {
            let c = classes[ci];
            match (name, crit) {
                ("all-10", _) => chosen.extend(idx),
                (_, None) => {
                    for set in idx.chunks(o) {
                        let mut s = set.to_vec();
                        rng.shuffle(&mut s);
                        chosen.extend(&s[..m]);
                    }
                }
                (_, Some((kind, criterion))) => {
                    let mmd = t.reward_of(c).context("no reward for class")?;
                    let gp;
                    let reward: &DiversityReward = if kind == RewardKind::Mmd {
                        mmd
                    } else {
                        gp = DiversityReward::new(&gp_spec, mmd.reference().clone())?;
                        &gp
                    };
                    let cf = all.select_rows(idx);
                    let sel = select_sets(reward, &cf, o, m, criterion, Method::Exhaustive)?;
                    for (s, sl) in sel.iter().enumerate() {
                        chosen.extend(sl.subset.iter().map(|&j| idx[s * o + j]));
                    }
                }
            }
        }
        let it = Tensor::from_slice(&chosen.iter().map(|&i| i as i64).collect::<Vec<_>>());
        let report = crate::eval::evaluate(
            t.phi_name(),
            &feats.index_select(0, &it),
            &eval_feats,
            logits.as_ref().map(|l| l.index_select(0, &it)).as_ref(),
            None,
            EvalOptions::default(),
        )?;
        let r = CellResult {
            name: name.into(),
            params: [("criterion".to_string(), name.to_string())].into(),
            report,
            epochs: 0,
            train_seconds: 0.0,
            seconds: t0.elapsed().as_secs_f64(),
            set_reward_first: None,
            set_reward_last: None,
        };
        write_json(&p, &r)?;
        cells.push(r);
    }
    // The noise scale of a row: random selection with 10 other seeds (cheap: features cached).
    let spread_file = ctx.cells_dir.join("random-spread.json");
    let spread: BTreeMap<String, f64> = if spread_file.exists() {
        read_json(&spread_file)?
    } else {
        let mut vals: Vec<[f64; 3]> = Vec::new();
        for seed in 1..=10u64 {
            let mut rng = SplitMix64(0x5E1E_C7ED ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut chosen: Vec<i64> = Vec::new();
            for idx in &class_idx {
                for set in idx.chunks(o) {
                    let mut s = set.to_vec();
                    rng.shuffle(&mut s);
                    chosen.extend(s[..m].iter().map(|&i| i as i64));
                }
            }
            let it = Tensor::from_slice(&chosen);
            let g = to_features("selected features", &feats.index_select(0, &it))?;
            let r = to_features("held-out features", &eval_feats)?;
            let p = divrl_reward::metrics::prdc(&g, &r, 3)?;
            vals.push([p.recall, p.precision, divrl_reward::metrics::fid(&g, &r)?]);
        }
        let sd = |j: usize| {
            let mean = vals.iter().map(|v| v[j]).sum::<f64>() / vals.len() as f64;
            (vals.iter().map(|v| (v[j] - mean).powi(2)).sum::<f64>() / (vals.len() - 1) as f64)
                .sqrt()
        };
        let sp: BTreeMap<String, f64> = [
            ("recall_sd", sd(0)),
            ("precision_sd", sd(1)),
            ("fid_sd", sd(2)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        write_json(&spread_file, &sp)?;
        sp
    };
    ctx.pb.inc(2);
    let sizes = sizes_of(
        &cfg,
        &[
            ("guidance", w.to_string()),
            ("candidate sets per class (S)", s_per_class.to_string()),
            ("O (candidates per set)", o.to_string()),
            ("M (selected per set)", m.to_string()),
            (
                "N (reference images per class)",
                cfg.ref_per_class.to_string(),
            ),
            (
                "selected images per row",
                format!("{} (all-10: {})", s_per_class * m * k, n_per_class * k),
            ),
            ("evaluation images per class", "—".into()),
            (
                "noise scale: std of random selection over 10 seeds",
                format!(
                    "Recall {:.4}, Precision {:.4}, FID {:.2}",
                    spread["recall_sd"], spread["precision_sd"], spread["fid_sd"]
                ),
            ),
        ],
    );
    let pts = |f: fn(&EvalReport) -> f64| -> Vec<Series> {
        cells
            .iter()
            .map(|c| Series::new(c.name.clone(), vec![(f(&c.report), c.report.fid)]).with_markers())
            .collect()
    };
    let plots = vec![
        (
            "recall-vs-fid".to_string(),
            svg(
                "Recall vs FID per criterion",
                "Recall",
                "FID",
                pts(|r| r.recall),
            )?,
        ),
        (
            "precision-vs-fid".to_string(),
            svg(
                "Precision vs FID per criterion",
                "Precision",
                "FID",
                pts(|r| r.precision),
            )?,
        ),
    ];
    Ok((finish(ctx, sizes, cells, paper_table1())?, plots))
}

// ---------------------------------------------------------------------------------------------
// Table 2: fine-tuning at guidance 1–4

fn guidance(ctx: &Ctx) -> Result<(ExperimentTable, Vec<(String, String)>)> {
    let ws = ctx.opts.scales.clone().unwrap_or(vec![4.0, 3.0, 2.0, 1.0]);
    if ws.is_empty() || ws.iter().any(|w| !w.is_finite() || *w < 0.0) {
        bail!("--scales must list guidance scales >= 0");
    }
    let rewards = [RewardKind::GpMi, RewardKind::Mmd];
    let mut plan = Vec::new();
    for &w in &ws {
        plan.push((w, None));
        for r in rewards {
            plan.push((w, Some(r)));
        }
    }
    let mut units = 0;
    for (w, r) in &plan {
        let c = ctx.config(r.unwrap_or(RewardKind::Mmd), *w)?;
        units += Ctx::units(&c, r.is_some());
    }
    ctx.pb.set_length(units);
    let mut cells = Vec::new();
    let mut first_cfg = None;
    for (w, r) in plan {
        let cfg = ctx.config(r.unwrap_or(RewardKind::Mmd), w)?;
        let method = r
            .map(|r| r.to_string())
            .unwrap_or_else(|| "baseline".into());
        let name = format!("w{w}-{method}");
        let params = [("guidance", w.to_string()), ("method", method)];
        cells.push(match r {
            None => ctx.baseline(&name, &params, &cfg)?,
            Some(_) => ctx.finetune(&name, &params, cfg.clone())?,
        });
        first_cfg.get_or_insert(cfg);
    }
    let cfg = first_cfg.expect("cells");
    let sizes = sizes_of(&cfg, &ft_sizes(&cfg));
    let series = |f: fn(&EvalReport) -> f64| -> Vec<Series> {
        ["baseline", "gp-mi", "mmd"]
            .iter()
            .map(|m| {
                let mut p: Vec<(f64, f64)> = cells
                    .iter()
                    .filter(|c| c.params["method"] == *m)
                    .map(|c| {
                        (
                            c.params["guidance"].parse().unwrap_or(f64::NAN),
                            f(&c.report),
                        )
                    })
                    .collect();
                p.sort_by(|a, b| a.0.total_cmp(&b.0));
                Series::new(*m, p).with_markers()
            })
            .collect()
    };
    let plots = vec![
        (
            "recall".to_string(),
            svg(
                "Recall vs guidance",
                "guidance",
                "Recall",
                series(|r| r.recall),
            )?,
        ),
        (
            "fid".to_string(),
            svg("FID vs guidance", "guidance", "FID", series(|r| r.fid))?,
        ),
        (
            "precision".to_string(),
            svg(
                "Precision vs guidance",
                "guidance",
                "Precision",
                series(|r| r.precision),
            )?,
        ),
    ];
    Ok((finish(ctx, sizes, cells, paper_table2())?, plots))
}

// ---------------------------------------------------------------------------------------------
// Debiasing on the skewed-attribute variant

/// Where the inversion-skewed base model is expected.
pub use crate::rl::presets::SKEWED_BASE;

/// The debias preset for the attribute with the options applied (seed 1).
fn debias_config(ctx: &Ctx) -> Result<FinetuneConfig> {
    let kind = ctx.opts.attribute.unwrap_or(AttributeKind::Inversion);
    let mut c = ctx.overridden(presets::debias(ctx.opts.quick, kind))?;
    if let Some(w) = ctx.opts.guidance {
        c.guidance = w;
    }
    c.balanced_reference = true;
    c.validate()?;
    Ok(c)
}

/// Debiasing a base trained on a skewed attribute: per seed, the base model and an RL
/// fine-tuning run toward balanced references, both evaluated on that seed's noise with the
/// attribute's exact oracle (histogram, KL to uniform), FID and Recall in ϕ and in the
/// independent space.
fn debias(ctx: &Ctx) -> Result<(ExperimentTable, Vec<(String, String)>)> {
    let cfg = debias_config(ctx)?;
    if !crate::features::resolve_model_path(&cfg.base)
        .join("config.toml")
        .exists()
    {
        bail!(
            "the debias experiment needs a base model trained on the skewed variant at {} (divrl train-base --data {} --out {}), or --base",
            cfg.base.display(),
            cfg.data,
            cfg.base.display()
        );
    }
    let seeds = diversity::seeds_of(ctx, if ctx.opts.quick { 1 } else { 3 })?;
    let cells = diversity::seeded_cells(ctx, &cfg, &seeds, &[], false)?;
    if cells.iter().any(|c| c.report.attribute.is_none()) {
        bail!("the evaluation set has no attribute: debias needs a data set with one (fashion-mnist-skewed or fashion-mnist-background)");
    }
    let mut extra = diversity::seeded_sizes(&cfg, &seeds);
    extra.push(("data", cfg.data.clone()));
    let names: Vec<String> = cells
        .iter()
        .find_map(|c| c.report.attribute.as_ref())
        .map(|a| a.names.clone())
        .unwrap_or_default();
    let counts = crate::rl::setup::balanced_counts(cfg.ref_per_class, names.len().max(1));
    extra.push((
        "reference sets",
        format!(
            "balanced: {} images per class",
            names
                .iter()
                .zip(&counts)
                .map(|(n, c)| format!("{c} {n}"))
                .collect::<Vec<_>>()
                .join(" + ")
        ),
    ));
    let sizes = sizes_of(&cfg, &extra);
    let mut curves = Vec::new();
    for c in cells.iter().filter(|c| c.epochs > 0) {
        if let Ok((ep, _)) = read_log(&ctx.cells_dir.join(&c.name)) {
            curves.push(Series::new(
                c.name.clone(),
                ep.iter()
                    .map(|e| (e.epoch as f64, e.set_reward_mean))
                    .collect(),
            ));
        }
    }
    let kl = |method_rl: bool| {
        Series::new(
            if method_rl { "fine-tuned" } else { "base" },
            cells
                .iter()
                .filter(|c| (c.epochs > 0) == method_rl)
                .filter_map(|c| {
                    let seed: f64 = c.params.get("seed")?.parse().ok()?;
                    Some((seed, c.report.attribute.as_ref()?.kl_to_uniform))
                })
                .collect(),
        )
        .with_markers()
    };
    let plots = vec![
        (
            "set-reward".to_string(),
            svg("set reward per epoch", "epoch", "set reward", curves)?,
        ),
        (
            "kl".to_string(),
            svg(
                "attribute KL to uniform per seed",
                "seed",
                "KL (nats)",
                vec![kl(false), kl(true)],
            )?,
        ),
    ];
    Ok((finish(ctx, sizes, cells, Vec::new())?, plots))
}

// ---------------------------------------------------------------------------------------------
// Ablation over M and N

/// The ablation's reward: GP-MI, whose per-image (leave-one-out) reward is defined for every
/// M ≥ 1, while MMD's unbiased estimator needs M ≥ 3 for it (DESIGN.md), so M = 2 is possible.
pub const ABLATION_REWARD: RewardKind = RewardKind::GpMi;

fn ablation(ctx: &Ctx) -> Result<(ExperimentTable, Vec<(String, String)>)> {
    let w = ctx.opts.guidance.unwrap_or(4.0);
    let mut plan: Vec<(String, usize, usize)> = Vec::new();
    for m in [2usize, 3, 5, 7, 10] {
        plan.push(("M".into(), m, 50));
    }
    for n in [5usize, 30, 70, 100] {
        plan.push(("N".into(), 5, n));
    }
    let cell_cfg = |m: usize, n: usize| -> Result<FinetuneConfig> {
        let mut c = ctx.config(ABLATION_REWARD, w)?;
        c.images_per_class = m;
        c.ref_per_class = n;
        // Minibatches hold the same trajectories per optimizer step whatever M is.
        c.validate()?;
        Ok(c)
    };
    let base = ctx.config(ABLATION_REWARD, w)?;
    let mut units = Ctx::units(&base, false);
    for (_, m, n) in &plan {
        units += Ctx::units(&cell_cfg(*m, *n)?, true);
    }
    ctx.pb.set_length(units);
    let mut cells = vec![ctx.baseline(
        "baseline",
        &[("sweep", "—".into()), ("M", "—".into()), ("N", "—".into())],
        &base,
    )?];
    for (sweep, m, n) in plan {
        let name = format!("M{m}-N{n}");
        cells.push(ctx.finetune(
            &name,
            &[("sweep", sweep), ("M", m.to_string()), ("N", n.to_string())],
            cell_cfg(m, n)?,
        )?);
    }
    let mut extra = ft_sizes(&base);
    extra.retain(|(k, _)| !k.starts_with("M ") && !k.starts_with("N "));
    extra.push(("reward", ABLATION_REWARD.to_string()));
    extra.push(("guidance", w.to_string()));
    extra.push((
        "sweeps",
        "M ∈ {2,3,5,7,10} with N = 50; N ∈ {5,30,50,70,100} with M = 5 (the M=5, N=50 cell is shared)".into(),
    ));
    let sizes = sizes_of(&base, &extra);
    let plots = ablation_plots(&cells)?;
    Ok((finish(ctx, sizes, cells, Vec::new())?, plots))
}

/// The ablation's plots: Recall and FID against M (at N = 50) and against N (at M = 5), the
/// fine-tuned cells as markers and the baseline (`cells[0]`) as a flat line.
fn ablation_plots(cells: &[CellResult]) -> Result<Vec<(String, String)>> {
    let pick =
        |key: &str, other: &str, other_v: &str, f: fn(&EvalReport) -> f64| -> Vec<(f64, f64)> {
            let mut p: Vec<(f64, f64)> = cells
                .iter()
                .filter(|c| c.epochs > 0 && c.params[other] == other_v)
                .map(|c| (c.params[key].parse().unwrap_or(f64::NAN), f(&c.report)))
                .collect();
            p.sort_by(|a, b| a.0.total_cmp(&b.0));
            p
        };
    let b = &cells
        .first()
        .context("ablation without a baseline cell")?
        .report;
    // One plot per (sweep, metric): M swept at N = 50, then N swept at M = 5.
    let sweeps = [("M", "N", "50", [2.0, 10.0]), ("N", "M", "5", [5.0, 100.0])];
    type Metric = fn(&EvalReport) -> f64;
    let metrics: [(&str, Metric); 2] = [("Recall", |r| r.recall), ("FID", |r| r.fid)];
    let mut plots = Vec::new();
    for (key, other, other_v, x_range) in sweeps {
        for (metric, f) in metrics {
            let base_line = x_range.iter().map(|&x| (x, f(b))).collect();
            plots.push((
                format!("{}-vs-{key}", metric.to_lowercase()),
                svg(
                    &format!("{metric} vs {key} ({other} = {other_v})"),
                    key,
                    metric,
                    vec![
                        Series::new("fine-tuned", pick(key, other, other_v, f)).with_markers(),
                        Series::new("base model", base_line),
                    ],
                )?,
            ));
        }
    }
    Ok(plots)
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
    fn ablation_plots_one_per_sweep_and_metric() {
        let report = |recall: f64, fid: f64| EvalReport {
            extractor: "small".into(),
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
        };
        let cell = |name: &str, m: &str, n: &str, epochs: usize, recall: f64| CellResult {
            name: name.into(),
            params: [("M", m), ("N", n)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            report: report(recall, 100.0 * recall),
            epochs,
            train_seconds: 0.0,
            seconds: 0.0,
            set_reward_first: None,
            set_reward_last: None,
        };
        let cells = [
            cell("baseline", "—", "—", 0, 0.1),
            cell("M2-N50", "2", "50", 3, 0.2),
            cell("M5-N50", "5", "50", 3, 0.3),
            cell("M5-N5", "5", "5", 3, 0.4),
        ];
        let plots = ablation_plots(&cells).unwrap();
        let names: Vec<&str> = plots.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["recall-vs-M", "fid-vs-M", "recall-vs-N", "fid-vs-N"]
        );
        for ((_, svg), title) in plots.iter().zip([
            "Recall vs M (N = 50)",
            "FID vs M (N = 50)",
            "Recall vs N (M = 5)",
            "FID vs N (M = 5)",
        ]) {
            assert!(svg.contains(title), "{title} missing");
            assert!(svg.contains("base model") && svg.contains("fine-tuned"));
        }
        assert!(ablation_plots(&[]).is_err());
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
