//! The ablation over M (images per set) and N (reference images per class).

use anyhow::{Context, Result};
use divrl::eval::EvalReport;
use divrl::rl::FinetuneConfig;
use divrl_report::Series;
use divrl_reward::RewardKind;

use super::table::{finish, ft_sizes, sizes_of, svg};
use super::{CellResult, Ctx, ExperimentTable};

/// The ablation's reward: GP-MI, whose per-image (leave-one-out) reward is defined for every
/// M ≥ 1, while MMD's unbiased estimator needs M ≥ 3 for it (DESIGN.md), so M = 2 is possible.
pub const ABLATION_REWARD: RewardKind = RewardKind::GpMi;

pub(super) fn ablation(ctx: &Ctx) -> Result<(ExperimentTable, Vec<(String, String)>)> {
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
    fn ablation_plots_one_per_sweep_and_metric() {
        let report = |recall: f64, fid: f64| crate::experiment::test_report("small", recall, fid);
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
}
