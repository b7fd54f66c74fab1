//! What every experiment writes: the result table (ours beside the paper's rows), its markdown,
//! the per-seed tables, and the header facts (ϕ's space, sizes, machine, time).

use std::collections::BTreeMap;

use anyhow::Result;
use divrl::eval::EvalReport;
use divrl::rl::FinetuneConfig;
use divrl_report::{line_plot, Series, Table};

use super::{diversity, CellResult, Ctx, ExperimentTable, PaperRow};
use crate::cells::{metric_cells, METRIC_HEADERS};
use crate::provenance::{machine_description, utc_now};

pub(super) fn paper_cells(t: &ExperimentTable, row: &str) -> Vec<String> {
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

pub(super) fn markdown(t: &ExperimentTable) -> String {
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
pub(super) fn seeded_tables(t: &ExperimentTable) -> Option<Vec<Table>> {
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

pub(super) fn svg(title: &str, x: &str, y: &str, series: Vec<Series>) -> Result<String> {
    line_plot(title, x, y, &series).map_err(|e| anyhow::anyhow!("plot {title}: {e}"))
}

pub(super) fn space_of(r: &EvalReport) -> String {
    format!(
        "Metrics in the feature space of ϕ = {} ({}-d), against {} held-out real images (disjoint from the reference images), k = {}.",
        r.extractor, r.dim, r.reference, r.k
    )
}

pub(super) fn finish(
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

pub(super) fn sizes_of(cfg: &FinetuneConfig, extra: &[(&str, String)]) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = [
        ("base", cfg.base.display().to_string()),
        ("data", cfg.data.clone()),
        ("phi", cfg.extractor.clone()),
        ("DDIM steps", cfg.steps.to_string()),
        (
            "DDIM steps of the evaluation",
            cfg.eval_sampler_steps().to_string(),
        ),
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

pub(super) fn ft_sizes(cfg: &FinetuneConfig) -> Vec<(&'static str, String)> {
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
