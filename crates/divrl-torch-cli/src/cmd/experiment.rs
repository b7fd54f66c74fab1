//! `divrl experiment selection|guidance|debias|ablation`: the paper's tables on our data.
//! Resumable (finished cells are skipped); writes table.md, table.json, plots/ and report.html.

use std::path::{Path, PathBuf};

use anyhow::Context;
use divrl_experiments::experiment::{run_experiment, ExperimentKind, ExperimentOptions};

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Which {
    /// Table 1: choose 5 of 10 samples by max/min MMD and GP-MI and at random
    Selection,
    /// Table 2: baseline vs MMD vs GP-MI fine-tuning at guidance 1, 2, 3, 4
    Guidance,
    /// Skewed-attribute base vs RL toward balanced references over several seeds: the
    /// attribute's histogram and KL to uniform, FID and Recall in ϕ and in the independent space
    Debias,
    /// M in {2,3,5,7,10} with N = 50, N in {5,30,50,70,100} with M = 5
    Ablation,
    /// Base vs training-free sampler baselines vs RL over several seeds, in ϕ and in a space
    /// the reward never saw (FID-Inception), with mean ± sd and every seed's row
    Diversity,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(value_enum)]
    pub which: Which,
    /// Small sizes for a first look (see RESULTS.md for what each size is)
    #[arg(long)]
    pub quick: bool,
    /// Output folder; rerunning with the same folder skips finished cells [default: runs/exp-<name>]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Base checkpoint [default: models/fashion-mnist-base-small; diversity: models/fashion-mnist-base; debias: models/fashion-mnist-skewed-base-9000, or models/fashion-mnist-background-base with --attribute background]
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Guidance scale of selection, debias and diversity [default: 4; debias 1]
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Selection: candidate sets of 10 per class [default: 20, quick 4]
    #[arg(long)]
    pub sets_per_class: Option<usize>,
    /// Guidance: the scales to run, comma-separated [default: 4,3,2,1]
    #[arg(long, value_delimiter = ',')]
    pub scales: Option<Vec<f64>>,
    /// TOML file of fine-tuning fields laid over every cell's preset
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Diversity and debias: seeds (evaluation noise and fine-tuning): N for 1..=N, A-B, or
    /// A,B,...; processes with disjoint seeds may share --out [default: 3; quick: diversity 2, debias 1]
    #[arg(long, value_parser = parse_seeds)]
    pub seeds: Option<SeedList>,
    /// Diversity: a training-free sampler baseline evaluated beside the base, as
    /// NAME=KEY=VALUE[;KEY=VALUE...] over the run config's sampler fields (repeatable)
    #[arg(long = "baseline", value_parser = parse_baseline)]
    pub baselines: Vec<divrl_experiments::experiment::diversity::SamplerBaseline>,
    /// Diversity: continue each fine-tuning to twice its epochs and evaluate again
    #[arg(long)]
    pub double: bool,
    /// Debias: the skewed attribute: inversion (fashion-mnist-skewed, 90/10) or background
    /// (fashion-mnist-background, black/gray/light 80/15/5) [default: inversion]
    #[arg(long, value_enum)]
    pub attribute: Option<AttributeArg>,
    #[command(flatten)]
    pub compute: super::ComputeOverrides,
    /// No progress bar
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum AttributeArg {
    Inversion,
    Background,
}

/// The seeds of `--seeds`.
#[derive(Clone, Debug)]
pub struct SeedList(pub Vec<u64>);

fn parse_seeds(s: &str) -> Result<SeedList, String> {
    divrl_experiments::experiment::diversity::parse_seeds(s)
        .map(SeedList)
        .map_err(|e| format!("{e:#}"))
}

fn parse_baseline(
    s: &str,
) -> Result<divrl_experiments::experiment::diversity::SamplerBaseline, String> {
    divrl_experiments::experiment::diversity::parse_baseline(s).map_err(|e| format!("{e:#}"))
}

/// The process's command line, for reports.
pub fn command_line() -> String {
    let mut v: Vec<String> = std::env::args().collect();
    if let Some(first) = v.first_mut() {
        *first = "divrl".into();
    }
    v.join(" ")
}

/// Reads a TOML overlay file.
pub fn read_overlay(path: Option<&Path>) -> anyhow::Result<Option<divrl::toml_table::Table>> {
    match path {
        None => Ok(None),
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let t = text
                .parse::<divrl::toml_table::Table>()
                .with_context(|| format!("parsing {}", p.display()))?;
            Ok(Some(t))
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let kind = match args.which {
        Which::Selection => ExperimentKind::Selection,
        Which::Guidance => ExperimentKind::Guidance,
        Which::Debias => ExperimentKind::Debias,
        Which::Ablation => ExperimentKind::Ablation,
        Which::Diversity => ExperimentKind::Diversity,
    };
    if kind != ExperimentKind::Diversity && (!args.baselines.is_empty() || args.double) {
        anyhow::bail!("--baseline and --double belong to `experiment diversity`");
    }
    if !matches!(kind, ExperimentKind::Diversity | ExperimentKind::Debias) && args.seeds.is_some() {
        anyhow::bail!("--seeds belongs to `experiment diversity` and `experiment debias`");
    }
    if kind != ExperimentKind::Debias && args.attribute.is_some() {
        anyhow::bail!("--attribute belongs to `experiment debias`");
    }
    let opts = ExperimentOptions {
        kind,
        out: args.out.unwrap_or_else(|| {
            PathBuf::from(format!(
                "runs/exp-{}{}",
                kind.name(),
                if args.quick { "-quick" } else { "" }
            ))
        }),
        quick: args.quick,
        progress: !args.no_progress,
        base: args.base,
        guidance: args.guidance,
        sets_per_class: args.sets_per_class,
        scales: args.scales,
        overlay: read_overlay(args.config.as_deref())?,
        device: args.compute.device,
        threads: args.compute.threads,
        command: command_line(),
        seeds: args.seeds.map(|s| s.0),
        sampler_baselines: args.baselines,
        double: args.double,
        attribute: args.attribute.map(|a| match a {
            AttributeArg::Inversion => divrl::data::AttributeKind::Inversion,
            AttributeArg::Background => divrl::data::AttributeKind::Background,
        }),
    };
    let done = run_experiment(&opts)?;
    eprint!("{}", done.markdown);
    println!("table:  {}", done.table_md.display());
    println!("json:   {}", done.table_json.display());
    println!("report: {}", done.html.display());
    Ok(())
}
