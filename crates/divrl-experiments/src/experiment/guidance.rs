//! Table 2: fine-tuning at guidance 1–4 with each reward, beside the base at each guidance.

use anyhow::{bail, Result};
use divrl::eval::EvalReport;
use divrl_report::Series;
use divrl_reward::RewardKind;

use super::table::{finish, ft_sizes, sizes_of, svg};
use super::{paper_table2, Ctx, ExperimentTable};

pub(super) fn guidance(ctx: &Ctx) -> Result<(ExperimentTable, Vec<(String, String)>)> {
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
