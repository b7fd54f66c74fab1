//! `divrl select`: the most (or least) diverse M-subset of each candidate set.

use std::path::PathBuf;

use anyhow::bail;
use divrl_reward::io::read_array;
use divrl_reward::select::{select_sets, select_sets_each, Criterion, Method, Selection};
use divrl_reward::{DiversityReward, Features};
use serde::Serialize;

use super::{print_json, RewardOpts};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Candidate features, S × O × D (S sets of O candidates), or O × D for one set
    #[arg(long)]
    pub candidates: PathBuf,
    /// Reference features: N × D shared by every set, or S × N × D (one reference set per set)
    #[arg(long)]
    pub reference: PathBuf,
    /// Subset size M
    #[arg(long)]
    pub size: usize,
    #[command(flatten)]
    pub reward: RewardOpts,
    /// Keep the subset with the largest or the smallest reward
    #[arg(long, value_enum, default_value = "max")]
    pub criterion: CriterionArg,
    /// Greedy (lazy where exact) instead of exhaustive search, for O too large to enumerate
    #[arg(long)]
    pub greedy: bool,
    /// With --greedy: also run exhaustive search and report how close greedy gets
    #[arg(long, requires = "greedy")]
    pub compare: bool,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum CriterionArg {
    Max,
    Min,
}

#[derive(Serialize)]
struct Output {
    subsets: Vec<Vec<usize>>,
    rewards: Vec<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comparison: Option<Comparison>,
}

#[derive(Serialize)]
struct Comparison {
    exhaustive_rewards: Vec<f64>,
    /// Sets where greedy found the exhaustive optimum.
    greedy_exact: usize,
    /// Mean of (greedy − worst) / (best − worst) over sets where best ≠ worst.
    greedy_normalised_mean: f64,
}

fn run_method(
    rewards: &Rewards,
    cands: &Features,
    o: usize,
    m: usize,
    criterion: Criterion,
    method: Method,
) -> divrl_reward::Result<Vec<Selection>> {
    match rewards {
        Rewards::Shared(r) => select_sets(r, cands, o, m, criterion, method),
        Rewards::PerSet(rs) => select_sets_each(rs, cands, o, m, criterion, method),
    }
}

enum Rewards {
    Shared(DiversityReward),
    PerSet(Vec<DiversityReward>),
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cand = read_array(&args.candidates)?;
    let cpath = args.candidates.display().to_string();
    let (sets, o, d) = match cand.shape.as_slice() {
        [s, o, d] => (*s, *o, *d),
        [o, d] => (1, *o, *d),
        other => bail!("{cpath}: expected candidates of shape S × O × D (or O × D), got {other:?}"),
    };
    let cands = Features::new(&cpath, sets * o, d, cand.data)?;
    let refa = read_array(&args.reference)?;
    let rpath = args.reference.display().to_string();
    let spec = args.reward.spec();
    let rewards = match refa.shape.as_slice() {
        [n, rd] => Rewards::Shared(DiversityReward::new(
            &spec,
            Features::new(&rpath, *n, *rd, refa.data)?,
        )?),
        [s, n, rd] => {
            if *s != sets {
                bail!("{rpath}: {s} reference sets for {sets} candidate sets (need one per set, or one N × D shared)");
            }
            let all = Features::new(&rpath, s * n, *rd, refa.data)?;
            let per = (0..*s)
                .map(|i| DiversityReward::new(&spec, all.slice_rows(i * n, (i + 1) * n)))
                .collect::<divrl_reward::Result<Vec<_>>>()?;
            Rewards::PerSet(per)
        }
        other => bail!("{rpath}: expected references of shape N × D or S × N × D, got {other:?}"),
    };
    let criterion = match args.criterion {
        CriterionArg::Max => Criterion::Max,
        CriterionArg::Min => Criterion::Min,
    };
    let method = if args.greedy {
        Method::Greedy
    } else {
        Method::Exhaustive
    };
    let chosen = run_method(&rewards, &cands, o, args.size, criterion, method)?;
    let comparison = if args.compare {
        let best = run_method(
            &rewards,
            &cands,
            o,
            args.size,
            criterion,
            Method::Exhaustive,
        )?;
        let opposite = match criterion {
            Criterion::Max => Criterion::Min,
            Criterion::Min => Criterion::Max,
        };
        let worst = run_method(&rewards, &cands, o, args.size, opposite, Method::Exhaustive)?;
        let mut norm = Vec::new();
        for ((g, b), w) in chosen.iter().zip(&best).zip(&worst) {
            if b.reward != w.reward {
                norm.push((g.reward - w.reward) / (b.reward - w.reward));
            }
        }
        Some(Comparison {
            exhaustive_rewards: best.iter().map(|s| s.reward).collect(),
            greedy_exact: chosen
                .iter()
                .zip(&best)
                .filter(|(g, b)| g.subset == b.subset)
                .count(),
            greedy_normalised_mean: if norm.is_empty() {
                1.0
            } else {
                norm.iter().sum::<f64>() / norm.len() as f64
            },
        })
    } else {
        None
    };
    let out = Output {
        subsets: chosen.iter().map(|s| s.subset.clone()).collect(),
        rewards: chosen.iter().map(|s| s.reward).collect(),
        comparison,
    };
    if args.json {
        return print_json(&out);
    }
    println!(
        "{} sets of {o} candidates, subsets of {} by {} {}",
        sets,
        args.size,
        args.criterion_name(),
        spec.kind
    );
    println!("  set  reward            subset");
    for (i, (s, r)) in out.subsets.iter().zip(&out.rewards).enumerate().take(20) {
        println!("{i:>5}  {r:<16.9e}  {s:?}");
    }
    if sets > 20 {
        println!("  ... {} more (use --json for all)", sets - 20);
    }
    if let Some(c) = &out.comparison {
        println!(
            "greedy found the exhaustive optimum in {}/{} sets; mean normalised reward (worst 0, best 1) {:.4}",
            c.greedy_exact, sets, c.greedy_normalised_mean
        );
    }
    Ok(())
}

impl Args {
    fn criterion_name(&self) -> &'static str {
        match self.criterion {
            CriterionArg::Max => "max",
            CriterionArg::Min => "min",
        }
    }
}
