//! `divrl demo`: the baseline's collapse at high guidance, diversity RL fine-tuning, evaluation
//! before and after, and a self-contained HTML report with its JSON twin.
//!
//! Everything lands in the run folder (`--out`): the fine-tuning run itself (`log.jsonl`,
//! checkpoints, `merged/`), the guidance-1 baseline (`baseline-w1.json`, cached), the sample
//! grids (`grids/*.png`, from the evaluation noise, so "before" and "after" use the same noise),
//! `report.html` and `report.json`. Rerunning with the same `--out` continues where it stopped.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use divrl::config::write_atomic;
use divrl::eval::EvalReport;
use divrl::rl::run_log::{read_log, EpochLog, EvalLog};
use divrl::rl::trainer::planned_evals;
use divrl::rl::{FinetuneConfig, Finetuner};
use divrl_report::{line_plot, Block, Figure, Report, Series, Table};

use crate::cells::{metric_cells, METRIC_HEADERS};
use crate::experiment::diversity::diversity_metrics;
use crate::files::{progress_bar, read_json, write_json};
use crate::grids::grid_png;
use crate::provenance::{machine_description, utc_now};

pub const REPORT_HTML: &str = "report.html";
pub const REPORT_JSON: &str = "report.json";
pub const BASELINE_W1: &str = "baseline-w1.json";
/// The base at the fine-tuning guidance on every noise level, when the run guides in an interval.
pub const BASELINE_PLAIN: &str = "baseline-plain.json";
/// Wall seconds of the completed invocations so far (a resumed demo adds to it).
pub const WALL_FILE: &str = "wall-seconds.json";
pub const GRIDS_DIR: &str = "grids";
/// Images per class in the report's grids (at most the evaluation images per class).
pub const GRID_PER_CLASS: usize = 8;

/// What the demo needs besides the fine-tuning config.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub cfg: FinetuneConfig,
    pub quick: bool,
    pub progress: bool,
    /// The command line, for the report.
    pub command: String,
}

/// The JSON twin of the report: every number it shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoJson {
    pub command: String,
    pub quick: bool,
    pub machine: String,
    pub finished_utc: String,
    /// Wall time of the invocation that wrote this report.
    pub wall_seconds: f64,
    /// Wall time of every completed invocation on this run folder, this one included (an
    /// invocation killed before its report is not counted).
    pub wall_seconds_total: f64,
    /// Fine-tuning time over all invocations (sampling, rewards, PPO; without evaluations).
    pub train_seconds: f64,
    pub baseline_w1: EvalReport,
    /// The base model at the fine-tuning guidance applied at every noise level (the plain
    /// sampler), when the run guides only inside `guidance_interval`; then `before` is the base
    /// with interval guidance. Same evaluation noise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_plain: Option<EvalReport>,
    /// The base model at the fine-tuning guidance (the run's epoch-0 evaluation).
    pub before: EvalReport,
    pub after: EvalReport,
    pub evals: Vec<EvalLog>,
    pub epochs: Vec<EpochLog>,
    pub config: FinetuneConfig,
}

/// What [`run_demo`] made.
#[derive(Debug, Clone)]
pub struct DemoOutcome {
    pub html: PathBuf,
    pub json: PathBuf,
    pub report: DemoJson,
}

/// Runs the demo (or continues it) and writes the report.
pub fn run_demo(opts: &DemoOptions) -> Result<DemoOutcome> {
    let t0 = Instant::now();
    let cfg = &opts.cfg;
    if cfg.eval_every == 0 {
        bail!("the demo needs eval_every > 0 (held-out metrics before and after)");
    }
    let out = cfg.out.clone();
    // Units: setup, the guidance-1 (and plain-guidance) baseline, every epoch, every
    // evaluation, the report.
    let plain = cfg.guidance_interval.is_some();
    let total = 3 + usize::from(plain) + cfg.epochs + planned_evals(cfg);
    let pb = progress_bar(total as u64, opts.progress, "demo");
    pb.set_message("loading the base model, ϕ and the held-out pool");
    pb.enable_steady_tick(std::time::Duration::from_millis(250));
    let mut trainer: Finetuner = divrl::rl::build_finetuner(cfg, true, false)?;
    // The inputs are valid: only now does anything appear in the run folder, which stays ours
    // until the report is written.
    let _lock = divrl::run_lock::lock_run_folder(&out)?;
    std::fs::create_dir_all(out.join(GRIDS_DIR))
        .with_context(|| format!("creating {}", out.display()))?;
    if trainer.resume()? {
        pb.println(format!(
            "resuming {} at epoch {}",
            out.display(),
            trainer.epoch
        ));
    }
    let k = trainer.classes.len();
    let g = GRID_PER_CLASS.min(cfg.eval_per_class);
    pb.inc(1);

    // The base model at guidance 1 and, with interval guidance, the plain sampler (guidance at
    // every noise level) beside it on the same noise: the baseline a user has before trying
    // anything. Both cached: they do not change while fine-tuning.
    let w = cfg.guidance;
    let baseline = |json: &str, png: String, what: &str, plain: bool| -> Result<EvalReport> {
        let (json_path, png_path) = (out.join(json), out.join(GRIDS_DIR).join(png));
        let rep = if json_path.exists() && png_path.exists() {
            read_json(&json_path)?
        } else {
            if trainer.epoch > 0 {
                bail!(
                    "{} holds a run past epoch 0 but no {json}: the {what} baseline must come from the base model; use a fresh --out",
                    out.display()
                );
            }
            pb.set_message(format!("sampling the base model ({what})"));
            let t = Instant::now();
            let imgs = if plain {
                trainer.eval_images_plain(cfg.eval_per_class, w)?
            } else {
                trainer.eval_images(cfg.eval_per_class, 1.0)?
            };
            let rep = trainer.evaluate_images(&imgs)?;
            write_atomic(&png_path, &grid_png(&imgs, k, g)?)?;
            write_json(&json_path, &rep)?;
            if !opts.progress {
                tracing::info!(
                    "{what} baseline: {} images sampled and scored in {:.0} s",
                    imgs.size()[0],
                    t.elapsed().as_secs_f64()
                );
            }
            rep
        };
        pb.inc(1);
        Ok(rep)
    };
    let baseline_w1 = baseline(BASELINE_W1, "base-w1.png".into(), "guidance-1", false)?;
    let baseline_plain = if plain {
        Some(baseline(
            BASELINE_PLAIN,
            format!("base-plain-w{w}.png"),
            "plain-guidance",
            true,
        )?)
    } else {
        None
    };

    // Fine-tuning, with the evaluation grids of the first and the last evaluation.
    let before_png = out.join(GRIDS_DIR).join(format!("before-w{w}.png"));
    let after_png = out.join(GRIDS_DIR).join(format!("after-w{w}.png"));
    pb.set_position((2 + usize::from(plain) + trainer.epoch) as u64);
    let epochs = cfg.epochs;
    trainer.run_with(&pb, !opts.progress, &mut |epoch, _rep, imgs| {
        if epoch == 0 {
            write_atomic(&before_png, &grid_png(imgs, k, g)?)?;
        } else if epoch == epochs {
            write_atomic(&after_png, &grid_png(imgs, k, g)?)?;
        } else {
            let p = out
                .join(GRIDS_DIR)
                .join(format!("epoch-{epoch:04}-w{w}.png"));
            write_atomic(&p, &grid_png(imgs, k, g)?)?;
        }
        Ok(())
    })?;
    pb.set_position((total - 1) as u64);
    pb.set_message("writing the report");

    let (epoch_logs, eval_logs) = read_log(&out)?;
    let before = eval_logs
        .iter()
        .find(|e| e.epoch == 0)
        .context("log.jsonl has no evaluation at epoch 0")?
        .report
        .clone();
    let after = eval_logs
        .iter()
        .find(|e| e.epoch == epochs)
        .with_context(|| format!("log.jsonl has no evaluation at epoch {epochs}"))?
        .report
        .clone();
    let wall = t0.elapsed().as_secs_f64();
    let wall_file = out.join(WALL_FILE);
    let wall_before: f64 = if wall_file.exists() {
        read_json(&wall_file)?
    } else {
        0.0
    };
    let json = DemoJson {
        command: opts.command.clone(),
        quick: opts.quick,
        machine: machine_description(),
        finished_utc: utc_now(),
        wall_seconds: wall,
        wall_seconds_total: wall_before + wall,
        train_seconds: trainer.train_seconds,
        baseline_w1,
        baseline_plain,
        before,
        after,
        evals: eval_logs,
        epochs: epoch_logs,
        config: cfg.clone(),
    };
    let report = build_report(&json, &out)?;
    let html = out.join(REPORT_HTML);
    let jpath = out.join(REPORT_JSON);
    write_json(&jpath, &json)?;
    write_json(&wall_file, &json.wall_seconds_total)?;
    report
        .write(&html)
        .with_context(|| format!("writing {}", html.display()))?;
    pb.inc(1);
    pb.finish_and_clear();
    Ok(DemoOutcome {
        html,
        json: jpath,
        report: json,
    })
}

/// The fine-tuning guidance in words: `guidance 4`, or `guidance 4 in σ ∈ (0.28, 5.42]`.
fn guided(cfg: &FinetuneConfig) -> String {
    match cfg.guidance_interval {
        Some([lo, hi]) => format!("guidance {} in σ ∈ ({lo}, {hi}]", cfg.guidance),
        None => format!("guidance {}", cfg.guidance),
    }
}

/// The diversity metrics (ϕ, the independent space, the pixel spread) of `rows`, then each
/// change row's difference `a − b`; "–" where a report lacks a metric.
fn spaces_table(
    caption: String,
    rows: &[(String, &EvalReport)],
    changes: &[(String, &EvalReport, &EvalReport)],
) -> Table {
    let ms = diversity_metrics();
    let mut t =
        Table::new(std::iter::once("model".to_string()).chain(ms.iter().map(|m| m.header.clone())))
            .with_caption(caption);
    for (name, rep) in rows {
        t.row(
            std::iter::once(name.clone()).chain(ms.iter().map(|m| match (m.get)(rep) {
                Some(v) if m.header.starts_with("ind. FID") => format!("{v:.2}"),
                Some(v) => format!("{v:.3}"),
                None => "–".into(),
            })),
        );
    }
    for (name, a, b) in changes {
        t.row(std::iter::once(name.clone()).chain(ms.iter().map(|m| {
            match ((m.get)(a), (m.get)(b)) {
                (Some(x), Some(y)) => format!("{:+.3}", x - y),
                _ => "–".into(),
            }
        })));
    }
    t
}

fn figure(path: &Path, caption: String) -> Option<Figure> {
    std::fs::read(path).ok().map(|png| Figure { caption, png })
}

fn plot(title: &str, y: &str, series: Vec<Series>) -> Result<String> {
    line_plot(title, "epoch", y, &series).map_err(|e| anyhow::anyhow!("plot {title}: {e}"))
}

fn build_report(j: &DemoJson, out: &Path) -> Result<Report> {
    let cfg = &j.config;
    let w = cfg.guidance;
    let space = format!(
        "ϕ = {} ({}-d features); held-out pool of {} real images",
        j.before.extractor, j.before.dim, j.before.reference
    );
    let mut r = Report::new(if j.quick {
        "divrl demo (--quick): diversity RL fine-tuning"
    } else {
        "divrl demo: diversity RL fine-tuning"
    });
    r.subtitle = Some(format!(
        "{} · {} · {} · wall time {:.0} s (this invocation {:.0} s), of which fine-tuning {:.0} s",
        j.command, j.machine, j.finished_utc, j.wall_seconds_total, j.wall_seconds, j.train_seconds
    ));
    r.paragraph(format!(
        "Base model {} (data {}); the {} Diversity Reward against {} reference images per class; {} epochs of M = {} images for each of {} classes, {} DDIM steps at guidance {w} (evaluated with {}). Metrics: {}; {} generated images per class ({} in all); k = {} for Precision/Recall/Density/Coverage.",
        cfg.base.display(),
        cfg.data,
        cfg.reward,
        cfg.ref_per_class,
        cfg.epochs,
        cfg.images_per_class,
        j.before.generated / cfg.eval_per_class.max(1),
        cfg.steps,
        cfg.eval_sampler_steps(),
        space,
        cfg.eval_per_class,
        j.before.generated,
        j.before.k
    ));

    r.heading("1. The base model collapses at high guidance");
    let mut t = Table::new(
        std::iter::once("base model".to_string())
            .chain(METRIC_HEADERS.iter().map(|s| s.to_string())),
    )
    .with_caption(format!("Base model vs the held-out pool ({space})"));
    t.row(std::iter::once("guidance 1".to_string()).chain(metric_cells(&j.baseline_w1)));
    if let Some(p) = &j.baseline_plain {
        t.row(std::iter::once(format!("guidance {w}, every noise level")).chain(metric_cells(p)));
    }
    t.row(std::iter::once(guided(cfg)).chain(metric_cells(&j.before)));
    r.push(Block::Table(t));
    if j.baseline_plain.is_some() {
        r.paragraph(format!(
            "The run guides only inside a band of noise levels (Kynkäänniemi et al. 2024), a training-free way to keep diversity at high guidance: the fine-tuning starts from there (Recall {:.3} on this noise), and the plain sampler (guidance {w} at every step, the same noise) is the baseline a user has, which the next lines compare with guidance 1.",
            j.before.recall
        ));
    }
    let (b1, bw) = (
        &j.baseline_w1,
        j.baseline_plain.as_ref().unwrap_or(&j.before),
    );
    let verdict = if bw.recall < b1.recall {
        format!(
            "Recall drops at guidance {w}: each class's samples cover less of the real distribution, while Precision {} ({:.3} → {:.3}).",
            if bw.precision >= b1.precision { "holds or rises" } else { "falls too" },
            b1.precision,
            bw.precision
        )
    } else {
        format!("Recall does not drop at guidance {w} in this run: no collapse is visible at this sample size.")
    };
    r.paragraph(format!(
        "Guidance 1 → {w}: Recall {:.3} → {:.3}, Coverage {:.3} → {:.3}, FID {:.2} → {:.2}. {verdict} FID also measures sample quality, which guidance improves, so it can fall while diversity drops.",
        b1.recall, bw.recall, b1.coverage, bw.coverage, b1.fid, bw.fid
    ));
    let gdir = out.join(GRIDS_DIR);
    let figs: Vec<Figure> = [
        (
            gdir.join("base-w1.png"),
            "base model, guidance 1 (rows: classes 0–9)".to_string(),
        ),
        (
            gdir.join(format!("base-plain-w{w}.png")),
            format!("base model, guidance {w} at every noise level"),
        ),
        (
            gdir.join(format!("before-w{w}.png")),
            format!("base model, {}", guided(cfg)),
        ),
    ]
    .into_iter()
    .filter_map(|(p, c)| figure(&p, c))
    .collect();
    r.push(Block::Figures(figs));

    r.heading("2. Fine-tuning");
    let ep = |f: fn(&EpochLog) -> f64| -> Vec<(f64, f64)> {
        j.epochs.iter().map(|e| (e.epoch as f64, f(e))).collect()
    };
    let ev = |f: fn(&EvalReport) -> f64| -> Vec<(f64, f64)> {
        j.evals
            .iter()
            .map(|e| (e.epoch as f64, f(&e.report)))
            .collect()
    };
    r.push(Block::Plots(vec![
        plot(
            "set reward (mean over classes)",
            &format!("{} set reward", cfg.reward),
            vec![Series::new("set reward", ep(|e| e.set_reward_mean))],
        )?,
        plot(
            "PPO approx-KL",
            "approx KL",
            vec![Series::new("approx KL", ep(|e| e.ppo.approx_kl))],
        )?,
        plot(
            "PPO clip fraction",
            "clipped share",
            vec![Series::new("clip fraction", ep(|e| e.ppo.clip_fraction))],
        )?,
        plot(
            "PPO loss",
            "loss",
            vec![Series::new("loss", ep(|e| e.ppo.loss))],
        )?,
        plot(
            "held-out Recall / Precision",
            "metric",
            vec![
                Series::new("Recall", ev(|r| r.recall)).with_markers(),
                Series::new("Precision", ev(|r| r.precision)).with_markers(),
                Series::new("Coverage", ev(|r| r.coverage)).with_markers(),
            ],
        )?,
        plot(
            "held-out FID",
            "FID",
            vec![Series::new("FID", ev(|r| r.fid)).with_markers()],
        )?,
    ]));

    r.heading("3. Before and after fine-tuning");
    let mut t = Table::new(
        std::iter::once("model".to_string()).chain(METRIC_HEADERS.iter().map(|s| s.to_string())),
    )
    .with_caption(format!(
        "Guidance {w}, the same evaluation noise before and after ({space})"
    ));
    t.row(std::iter::once("base (before)".to_string()).chain(metric_cells(&j.before)));
    t.row(
        std::iter::once(format!(
            "fine-tuned, {} epochs ({})",
            cfg.epochs, cfg.reward
        ))
        .chain(metric_cells(&j.after)),
    );
    t.row(
        std::iter::once("change".to_string()).chain(
            [
                j.after.recall - j.before.recall,
                j.after.precision - j.before.precision,
                j.after.fid - j.before.fid,
                j.after.density - j.before.density,
                j.after.coverage - j.before.coverage,
            ]
            .iter()
            .map(|d| format!("{d:+.3}")),
        ),
    );
    r.push(Block::Table(t));
    if j.before.independent.is_some() || j.before.pixel_within_class.is_some() {
        let after_name = format!("fine-tuned, {} epochs", cfg.epochs);
        let mut rows = vec![("base, guidance 1".to_string(), &j.baseline_w1)];
        let mut changes = vec![(
            "change vs the base (before)".to_string(),
            &j.after,
            &j.before,
        )];
        if let Some(p) = &j.baseline_plain {
            rows.push((format!("base, guidance {w} every step"), p));
            changes.push((format!("change vs guidance {w} every step"), &j.after, p));
        }
        rows.push((format!("base, {}", guided(cfg)), &j.before));
        rows.push((after_name, &j.after));
        r.push(Block::Table(spaces_table(
            format!(
                "Every space: ϕ (the reward's), {} (never seen by the reward), and the mean pixel distance between two images of a class relative to real images'",
                j.before
                    .independent
                    .as_ref()
                    .map_or("no independent network".to_string(), |i| format!(
                        "the {} network ({}-d)",
                        i.extractor, i.dim
                    ))
            ),
            &rows,
            &changes,
        )));
    }
    if let (Some(a), Some(b)) = (&j.before.attribute, &j.after.attribute) {
        r.paragraph(format!(
            "Attribute ({}) KL to uniform: {:.4} before, {:.4} after (nats).",
            a.source, a.kl_to_uniform, b.kl_to_uniform
        ));
    }
    let figs: Vec<Figure> = [
        (
            gdir.join(format!("before-w{w}.png")),
            format!("before: base model, {}", guided(cfg)),
        ),
        (
            gdir.join(format!("after-w{w}.png")),
            format!("after {} epochs, {}, same noise", cfg.epochs, guided(cfg)),
        ),
    ]
    .into_iter()
    .filter_map(|(p, c)| figure(&p, c))
    .collect();
    r.push(Block::Figures(figs));
    r.paragraph(
        "This page is one seed on one CPU: another seed or machine moves these numbers by about ±0.02–0.04 ϕ Recall and ±1 FID. `divrl experiment diversity --seeds 3` runs the same setting over seeds with the base's own spread beside it (RESULTS.md has its tables). Every number of this page is in report.json.",
    );

    r.heading("4. Configuration");
    r.push(Block::Details {
        summary: "config.toml (the fine-tuning run)".into(),
        body: toml::to_string(cfg)?,
    });
    r.push(Block::Details {
        summary: "log.jsonl summary (per epoch)".into(),
        body: j
            .epochs
            .iter()
            .map(|e| {
                format!(
                    "epoch {:>3}: set reward {:>10.4}  approx-KL {:.2e}  clip {:.3}  loss {:+.4}  {:.1} s",
                    e.epoch,
                    e.set_reward_mean,
                    e.ppo.approx_kl,
                    e.ppo.clip_fraction,
                    e.ppo.loss,
                    e.seconds
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
    });
    Ok(r)
}
