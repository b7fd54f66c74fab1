//! `divrl experiment diversity`: does fine-tuning raise diversity, beyond sampling noise, in a
//! feature space the reward never saw, and better than what a user would try first?
//!
//! For each seed s = 1..=S: the base model (evaluation noise of seed s), the training-free
//! samplers given as baselines (same noise), and an RL fine-tuning run with seed s evaluated on
//! the same noise after `epochs` and, with `--double`, after twice as many (the run continues;
//! a collapse shows as a drop). Every evaluation reports ϕ's metrics, the same metrics in the
//! independent space (`eval_independent`, FID-Inception by default) and the within-class pixel
//! distance relative to real images. Tables: every seed's row, then mean ± sd per method and
//! the paired change against the base (same seed, same noise).
use anyhow::{bail, Result};
use divrl_report::Table;
use divrl_reward::{MmdKernel, RewardKind};

use super::table::{finish, ft_sizes, sizes_of};
use super::{Ctx, ExperimentTable};
use divrl::eval::EvalReport;
use divrl::rl::{presets, FinetuneConfig};

/// Reads one number from a report (`None` where the report lacks it).
pub type MetricFn = Box<dyn Fn(&EvalReport) -> Option<f64>>;

/// One metric of a report, by name.
pub struct Metric {
    pub header: String,
    pub get: MetricFn,
}

impl Metric {
    pub fn new(
        header: impl Into<String>,
        get: impl Fn(&EvalReport) -> Option<f64> + 'static,
    ) -> Self {
        Metric {
            header: header.into(),
            get: Box::new(get),
        }
    }
}

fn ind(r: &EvalReport) -> Option<&EvalReport> {
    r.independent.as_deref()
}

/// The diversity tables' metrics: ϕ, independent space, within-class pixel distance.
pub fn diversity_metrics() -> Vec<Metric> {
    vec![
        Metric::new("ϕ Recall ↑", |r| Some(r.recall)),
        Metric::new("ϕ Precision", |r| Some(r.precision)),
        Metric::new("ϕ FID ↓", |r| Some(r.fid)),
        Metric::new("ϕ Coverage ↑", |r| Some(r.coverage)),
        Metric::new("ind. Recall ↑", |r| ind(r).map(|i| i.recall)),
        Metric::new("ind. Precision", |r| ind(r).map(|i| i.precision)),
        Metric::new("ind. FID ↓", |r| ind(r).map(|i| i.fid)),
        Metric::new("ind. Coverage ↑", |r| ind(r).map(|i| i.coverage)),
        Metric::new("pixel within-class / real ↑", |r| {
            r.pixel_within_class.as_ref().map(|w| w.ratio)
        }),
    ]
}

/// The debiasing tables' metrics: the attribute's KL to uniform and the share of each value
/// (named after the first report that has the attribute), then FID and Recall in ϕ and in the
/// independent space.
pub fn debias_metrics(cells: &[super::CellResult]) -> Vec<Metric> {
    let names: Vec<String> = cells
        .iter()
        .find_map(|c| c.report.attribute.as_ref())
        .map(|a| a.names.clone())
        .unwrap_or_default();
    let mut m = vec![Metric::new("attribute KL to uniform ↓", |r| {
        r.attribute.as_ref().map(|a| a.kl_to_uniform)
    })];
    for (v, name) in names.into_iter().enumerate() {
        m.push(Metric::new(format!("{name} share"), move |r| {
            let a = r.attribute.as_ref()?;
            let n: u64 = a.counts.iter().sum();
            Some(*a.counts.get(v)? as f64 / n.max(1) as f64)
        }));
    }
    m.extend([
        Metric::new("ϕ FID ↓", |r| Some(r.fid)),
        Metric::new("ind. FID ↓", |r| ind(r).map(|i| i.fid)),
        Metric::new("ϕ Recall ↑", |r| Some(r.recall)),
        Metric::new("ind. Recall ↑", |r| ind(r).map(|i| i.recall)),
        Metric::new("pixel within-class / real ↑", |r| {
            r.pixel_within_class.as_ref().map(|w| w.ratio)
        }),
    ]);
    m
}

/// Mean and sample standard deviation (n − 1; 0 for a single value).
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (m, 0.0);
    }
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0);
    (m, var.sqrt())
}

fn cell(v: Option<f64>) -> String {
    match v {
        Some(x) if x.abs() >= 10.0 => format!("{x:.2}"),
        Some(x) => format!("{x:.3}"),
        None => "—".into(),
    }
}

fn pm(v: &[f64]) -> String {
    if v.is_empty() {
        return "—".into();
    }
    let (m, s) = mean_sd(v);
    let digits = if m.abs() >= 10.0 { 2 } else { 3 };
    format!("{m:.digits$} ± {s:.digits$}")
}

/// A method's training-free sampler options, laid over the config of its baseline cells.
#[derive(Debug, Clone)]
pub struct SamplerBaseline {
    pub name: String,
    pub overlay: toml::Table,
}

/// The tables of a diversity experiment: mean ± sd per method; the paired change of each method
/// against the base model of the same seed; the paired change of each fine-tuned method against
/// each training-free sampler baseline (any other method whose cells have no epochs), since
/// "better than what a user would try first" is a claim about those pairs; every cell's row.
pub fn tables(cells: &[super::CellResult], metrics: &[Metric]) -> Vec<Table> {
    let headers = |first: &[&str]| -> Vec<String> {
        first
            .iter()
            .map(|s| s.to_string())
            .chain(metrics.iter().map(|m| m.header.clone()))
            .collect()
    };
    let mut per_seed = Table::new(headers(&["method", "seed"]))
        .with_caption("Every seed's row (same evaluation noise for every method of a seed)");
    let mut methods: Vec<String> = Vec::new();
    for c in cells {
        let method = c.params.get("method").cloned().unwrap_or_default();
        if !methods.contains(&method) {
            methods.push(method.clone());
        }
        per_seed.row(
            [method, c.params.get("seed").cloned().unwrap_or_default()]
                .into_iter()
                .chain(metrics.iter().map(|m| cell((m.get)(&c.report)))),
        );
    }
    let by = |method: &str| -> Vec<&super::CellResult> {
        cells
            .iter()
            .filter(|c| c.params.get("method").map(String::as_str) == Some(method))
            .collect()
    };
    let mut summary =
        Table::new(headers(&["method", "seeds"])).with_caption("Mean ± sd over seeds (sample sd)");
    for method in &methods {
        let cs = by(method);
        summary.row(
            [method.clone(), cs.len().to_string()]
                .into_iter()
                .chain(metrics.iter().map(|m| {
                    let v: Vec<f64> = cs.iter().filter_map(|c| (m.get)(&c.report)).collect();
                    pm(&v)
                })),
        );
    }
    let fine_tuned = |method: &str| by(method).iter().any(|c| c.epochs > 0);
    let mut out = vec![summary];
    let against_base: Vec<&str> = methods
        .iter()
        .map(String::as_str)
        .filter(|m| *m != "base")
        .collect();
    out.extend(paired_table(
        "base",
        "the base model",
        &against_base,
        &by,
        metrics,
        &headers,
    ));
    let tuned: Vec<&str> = methods
        .iter()
        .map(String::as_str)
        .filter(|m| fine_tuned(m))
        .collect();
    for reference in methods.iter().filter(|m| *m != "base" && !fine_tuned(m)) {
        out.extend(paired_table(
            reference,
            &format!("the {reference} baseline"),
            &tuned,
            &by,
            metrics,
            &headers,
        ));
    }
    out.push(per_seed);
    out
}

/// The paired change of each of `methods` against `reference` on the same seed (mean ± sd, and
/// in how many seeds it rose); `None` when no method has a cell on a seed of `reference`.
fn paired_table<'a>(
    reference: &str,
    what: &str,
    methods: &[&str],
    by: &dyn Fn(&str) -> Vec<&'a super::CellResult>,
    metrics: &[Metric],
    headers: &dyn Fn(&[&str]) -> Vec<String>,
) -> Option<Table> {
    let first = format!("method vs {reference}");
    let mut delta = Table::new(headers(&[first.as_str(), "seeds"])).with_caption(format!(
        "Paired change against {what} of the same seed: mean ± sd, and in how many seeds it rose"
    ));
    let mut rows = 0;
    for method in methods {
        let pairs: Vec<(&super::CellResult, &super::CellResult)> = by(method)
            .into_iter()
            .filter_map(|c| {
                let seed = c.params.get("seed")?;
                by(reference)
                    .into_iter()
                    .find(|b| b.params.get("seed") == Some(seed))
                    .map(|b| (c, b))
            })
            .collect();
        if pairs.is_empty() {
            continue;
        }
        rows += 1;
        delta.row(
            [method.to_string(), pairs.len().to_string()]
                .into_iter()
                .chain(metrics.iter().map(|m| {
                    let d: Vec<f64> = pairs
                        .iter()
                        .filter_map(|(c, b)| Some((m.get)(&c.report)? - (m.get)(&b.report)?))
                        .collect();
                    if d.is_empty() {
                        return "—".into();
                    }
                    let up = d.iter().filter(|x| **x > 0.0).count();
                    format!("{} ({up}/{} up)", pm(&d), d.len())
                })),
        );
    }
    (rows > 0).then_some(delta)
}

/// The sizes a seeded experiment's report lists: the fine-tuning sizes, the seeds, guidance, K,
/// the reward and the independent space.
pub(super) fn seeded_sizes(cfg: &FinetuneConfig, seeds: &[u64]) -> Vec<(&'static str, String)> {
    let mut extra = ft_sizes(cfg);
    extra.push((
        "seeds",
        seeds
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    ));
    extra.push(("guidance", cfg.guidance.to_string()));
    extra.push((
        "generated sets per class and epoch (K)",
        cfg.sets_per_class.to_string(),
    ));
    extra.push(("reward", reward_description(cfg)));
    extra.push((
        "independent space",
        if cfg.eval_independent.is_empty() {
            "none".to_string()
        } else {
            cfg.eval_independent.clone()
        },
    ));
    extra
}

/// The preset of the experiment with the options applied (seed 1).
fn config(ctx: &Ctx) -> Result<FinetuneConfig> {
    let mut c = ctx.overridden(presets::diversity(ctx.opts.quick))?;
    if let Some(w) = ctx.opts.guidance {
        c.guidance = w;
    }
    Ok(c)
}

pub(super) fn diversity(ctx: &Ctx) -> Result<(ExperimentTable, Vec<(String, String)>)> {
    let cfg = config(ctx)?;
    let seeds = seeds_of(ctx, if ctx.opts.quick { 2 } else { 3 })?;
    let baselines = &ctx.opts.sampler_baselines;
    let cells = seeded_cells(ctx, &cfg, &seeds, baselines, ctx.opts.double)?;
    let mut extra = seeded_sizes(&cfg, &seeds);
    for b in baselines {
        extra.push(("sampler baseline", format!("{}: {}", b.name, b.overlay)));
    }
    let sizes = sizes_of(&cfg, &extra);
    let table = finish(ctx, sizes, cells, Vec::new())?;
    Ok((table, Vec::new()))
}

/// `--seeds`, or seeds 1..=`default` (at least one).
pub(super) fn seeds_of(ctx: &Ctx, default: u64) -> Result<Vec<u64>> {
    let seeds = ctx
        .opts
        .seeds
        .clone()
        .unwrap_or_else(|| (1..=default).collect());
    if seeds.is_empty() {
        bail!("--seeds must name at least one seed");
    }
    Ok(seeds)
}

/// The cells of a seeded experiment. Per seed s: the base model (`base-s<s>`) and each sampler
/// baseline on that seed's evaluation noise, the RL run `rl-s<s>` of `cfg` with seed s and, with
/// `double`, its continuation to twice the epochs (`rl2x-s<s>`).
pub(super) fn seeded_cells(
    ctx: &Ctx,
    cfg: &FinetuneConfig,
    seeds: &[u64],
    baselines: &[SamplerBaseline],
    double: bool,
) -> Result<Vec<super::CellResult>> {
    let per_seed_units = 1
        + baselines.len() as u64
        + Ctx::units(cfg, true)
        + if double { Ctx::units(cfg, true) } else { 0 };
    ctx.pb.set_length(per_seed_units * seeds.len() as u64);
    let mut cells = Vec::new();
    for &s in seeds {
        let mut c = cfg.clone();
        c.seed = s;
        let p = |method: &str| [("method", method.to_string()), ("seed", s.to_string())];
        cells.push(ctx.baseline(&format!("base-s{s}"), &p("base"), &c)?);
        for b in baselines {
            let bc = super::apply_overlay(c.clone(), Some(&b.overlay))?;
            cells.push(ctx.baseline(&format!("{}-s{s}", b.name), &p(&b.name), &bc)?);
        }
        let run = format!("rl-s{s}");
        let rl = format!("rl-{}", c.reward);
        cells.push(ctx.finetune_in(&run, &run, &p(&rl), c.clone())?);
        if double {
            let mut c2 = c.clone();
            c2.epochs *= 2;
            let name = format!("rl2x-s{s}");
            cells.push(ctx.finetune_in(&name, &run, &p(&format!("{rl}-2x")), c2)?);
        }
    }
    Ok(cells)
}

pub(super) fn reward_description(cfg: &FinetuneConfig) -> String {
    let sigma = || match cfg.sigma {
        Some(s) => s.to_string(),
        None if cfg.sigma_scale == 1.0 => "median reference distance".into(),
        None => format!("{} × median reference distance", cfg.sigma_scale),
    };
    match cfg.reward {
        RewardKind::GpMi => format!("gp-mi (σ = {}, λ = {})", sigma(), cfg.jitter),
        RewardKind::Mmd => match cfg.mmd_kernel {
            MmdKernel::Polynomial => "mmd (polynomial kernel)".to_string(),
            MmdKernel::Rbf => format!("mmd (RBF kernel, σ = {})", sigma()),
        },
        RewardKind::Recall => format!("recall (k = {})", cfg.recall_k),
    }
}

/// Parses `--seeds`: `N` (seeds 1..=N), `A-B` (A..=B) or a list `A,B,...`.
pub fn parse_seeds(spec: &str) -> Result<Vec<u64>> {
    let bad =
        || anyhow::anyhow!("--seeds {spec:?}: expected N, A-B or A,B,... (positive integers)");
    let num = |t: &str| t.trim().parse::<u64>().map_err(|_| bad());
    let seeds: Vec<u64> = if let Some((a, b)) = spec.split_once('-') {
        let (a, b) = (num(a)?, num(b)?);
        if a > b {
            return Err(bad());
        }
        (a..=b).collect()
    } else if spec.contains(',') {
        spec.split(',').map(num).collect::<Result<_>>()?
    } else {
        (1..=num(spec)?).collect()
    };
    let mut sorted = seeds.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if seeds.is_empty() || sorted.len() != seeds.len() || seeds.len() > 1000 {
        return Err(bad());
    }
    Ok(seeds)
}

/// Parses `--baseline NAME=KEY=VALUE[;KEY=VALUE…]` into a sampler baseline (TOML values).
pub fn parse_baseline(spec: &str) -> Result<SamplerBaseline> {
    let Some((name, rest)) = spec.split_once('=') else {
        bail!("baseline {spec:?}: expected NAME=KEY=VALUE[;KEY=VALUE...]");
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        bail!("baseline name {name:?}: letters, digits and '-' only");
    }
    let text = rest.replace(';', "\n");
    let overlay: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("baseline {name}: bad KEY=VALUE list: {e}"))?;
    if overlay.is_empty() {
        bail!("baseline {name}: no sampler option given");
    }
    Ok(SamplerBaseline {
        name: name.to_string(),
        overlay,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_sd_matches_hand_values() {
        let (m, s) = mean_sd(&[1.0, 2.0, 3.0, 4.0]);
        assert!((m - 2.5).abs() < 1e-15);
        assert!((s - (5.0f64 / 3.0).sqrt()).abs() < 1e-15);
        assert_eq!(mean_sd(&[7.0]), (7.0, 0.0));
    }

    fn cell(method: &str, seed: u64, epochs: usize, recall: f64) -> crate::experiment::CellResult {
        crate::experiment::CellResult {
            name: format!("{method}-s{seed}"),
            params: [("method", method.to_string()), ("seed", seed.to_string())]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            report: crate::experiment::test_report("pixels", recall, 1.0),
            epochs,
            train_seconds: 0.0,
            seconds: 0.0,
            set_reward_first: None,
            set_reward_last: None,
        }
    }

    #[test]
    fn fine_tuned_methods_are_paired_with_every_sampler_baseline() {
        let cells = vec![
            cell("base", 1, 0, 0.30),
            cell("plain", 1, 0, 0.20),
            cell("rl-mmd", 1, 2, 0.50),
            cell("base", 2, 0, 0.35),
            cell("plain", 2, 0, 0.25),
            cell("rl-mmd", 2, 2, 0.40),
        ];
        let t = tables(&cells, &[Metric::new("R", |r| Some(r.recall))]);
        let md: Vec<String> = t.iter().map(|t| t.markdown()).collect();
        assert_eq!(t.len(), 4, "{md:#?}");
        assert!(
            md[0].contains("| rl-mmd | 2 | 0.450 ± 0.071 |"),
            "{}",
            md[0]
        );
        // Against the base: every other method, the baseline included.
        assert!(md[1].contains("| method vs base |"), "{}", md[1]);
        assert!(md[1].contains("| plain | 2 | -0.100 ± 0.000 (0/2 up) |"));
        assert!(md[1].contains("| rl-mmd | 2 | 0.125 ± 0.106 (2/2 up) |"));
        // Against the sampler baseline: the fine-tuned method only.
        let c = t[2].caption.as_deref().unwrap();
        assert!(
            c.starts_with("Paired change against the plain baseline"),
            "{c}"
        );
        assert!(
            md[2].contains("| rl-mmd | 2 | 0.225 ± 0.106 (2/2 up) |"),
            "{}",
            md[2]
        );
        assert!(!md[2].contains("| base |") && !md[2].contains("| plain |"));
        assert_eq!(md[3].matches("| rl-mmd |").count(), 2);
        // No sampler baseline: the tables of before (mean ± sd, against the base, every row).
        let plain_free: Vec<_> = cells
            .into_iter()
            .filter(|c| c.params["method"] != "plain")
            .collect();
        assert_eq!(
            tables(&plain_free, &[Metric::new("R", |r| Some(r.recall))]).len(),
            3
        );
    }

    #[test]
    fn seed_specs() {
        assert_eq!(parse_seeds("3").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_seeds("2-3").unwrap(), vec![2, 3]);
        assert_eq!(parse_seeds("5,1").unwrap(), vec![5, 1]);
        for bad in ["0", "3-2", "1,1", "x", "", "1,,2", "-1"] {
            assert!(parse_seeds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn baseline_specs_parse_or_fail_clearly() {
        let b = parse_baseline("cads=cads = true;cads_noise = 0.25").unwrap();
        assert_eq!(b.name, "cads");
        assert_eq!(b.overlay.len(), 2);
        assert!(parse_baseline("nothing").is_err());
        assert!(parse_baseline("x=").is_err());
        assert!(parse_baseline("bad name=a = 1").is_err());
        assert!(parse_baseline("x=a = ").is_err());
    }
}
