//! Debiasing a base trained on a skewed attribute toward balanced references, per seed.

use anyhow::{bail, Result};
use divrl::data::AttributeKind;
use divrl::rl::run_log::read_log;
use divrl::rl::{presets, FinetuneConfig};
use divrl_report::Series;

use super::table::{finish, sizes_of, svg};
use super::{diversity, Ctx, ExperimentTable};

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
pub(super) fn debias(ctx: &Ctx) -> Result<(ExperimentTable, Vec<(String, String)>)> {
    let cfg = debias_config(ctx)?;
    if !divrl::features::resolve_model_path(&cfg.base)
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
    let counts = divrl::rl::setup::balanced_counts(cfg.ref_per_class, names.len().max(1));
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
