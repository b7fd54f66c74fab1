//! The `divrl` command's own layer: the maths verbs, which need no libtorch, and what every verb
//! shares (the one-line error contract, JSON output, the reward-kernel options).
//!
//! The `divrl` binary (`main.rs`) runs [`MathsCommand`] itself, so `divrl reward`, `select` and
//! `metrics` start in milliseconds without loading libtorch; it hands every other verb (and
//! `--help`, `--version`) to its sibling `divrl-torch` (crate `divrl-torch-cli`), which embeds the
//! same [`MathsCommand`] in its full verb list, so each verb and flag is declared once.

pub mod metrics;
pub mod reward;
pub mod select;

use std::process::ExitCode;

use clap::error::ErrorKind;

/// The verbs that need no libtorch. `divrl-torch` flattens this enum into its own verb list.
#[derive(clap::Subcommand)]
pub enum MathsCommand {
    /// Diversity Reward of a generated feature set against a reference set, and per-image rewards
    Reward(reward::Args),
    /// Pick the most (or least) diverse M-subset of each candidate set
    Select(select::Args),
    /// FID, Precision, Recall, Density and Coverage between two feature sets
    Metrics(metrics::Args),
}

/// The command's one-line description (both binaries' `--help`).
pub const ABOUT: &str = "Diversity-oriented RL fine-tuning for diffusion models";

impl MathsCommand {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            MathsCommand::Reward(args) => reward::run(args),
            MathsCommand::Select(args) => select::run(args),
            MathsCommand::Metrics(args) => metrics::run(args),
        }
    }
}

/// A verb's result as divrl's exit contract: success, or one `divrl: error: …` line and exit 2.
pub fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&one_line(&err)),
    }
}

/// Prints `divrl: error: {msg}` on stderr; exit code 2.
pub fn fail(msg: &str) -> ExitCode {
    eprintln!("divrl: error: {msg}");
    ExitCode::from(2)
}

/// An error chain on one line: "outer: inner: innermost".
pub fn one_line(err: &anyhow::Error) -> String {
    let mut s = String::new();
    for (i, cause) in err.chain().enumerate() {
        if i > 0 {
            s.push_str(": ");
        }
        s.push_str(&cause.to_string());
    }
    s.replace('\n', " ")
}

/// Help and version as clap prints them; every other parse error as divrl's one line (the
/// message up to its usage block, lines joined), exit 2.
pub fn parse_error(err: clap::Error) -> ExitCode {
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        err.exit();
    }
    let text = err.render().to_string();
    let msg: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("Usage:"))
        .map(str::trim)
        .collect();
    let msg = msg.join(" ");
    fail(&format!(
        "{} (see --help)",
        msg.strip_prefix("error: ").unwrap_or(&msg)
    ))
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Reward-kernel options shared by `reward` and `select`.
#[derive(clap::Args, Debug, Clone)]
pub struct RewardOpts {
    /// Which Diversity Reward
    #[arg(long, value_enum, default_value = "mmd")]
    pub kind: KindArg,
    /// Polynomial kernel degree d (mmd) [default: 3]
    #[arg(long)]
    pub degree: Option<u32>,
    /// Polynomial kernel scale γ (mmd) [default: 1/D]
    #[arg(long)]
    pub gamma: Option<f64>,
    /// Polynomial kernel offset c0 (mmd) [default: 1]
    #[arg(long)]
    pub coef0: Option<f64>,
    /// RBF bandwidth σ (gp-mi, mmd with --mmd-kernel rbf) [default: --sigma-scale × median pairwise distance of the references]
    #[arg(long)]
    pub sigma: Option<f64>,
    /// Multiple of the median reference distance used as σ when --sigma is not given
    #[arg(long, default_value_t = 1.0)]
    pub sigma_scale: f64,
    /// Kernel of the mmd reward: polynomial (KID) or rbf
    #[arg(long, default_value = "polynomial")]
    pub mmd_kernel: divrl_reward::MmdKernel,
    /// Jitter λ added to kernel diagonals (gp-mi)
    #[arg(long, default_value_t = 1e-6)]
    pub jitter: f64,
    /// Nearest-neighbour rank of the ball radius (recall)
    #[arg(long, default_value_t = 3)]
    pub k: usize,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum KindArg {
    Mmd,
    GpMi,
    Recall,
}

impl RewardOpts {
    pub fn spec(&self) -> divrl_reward::RewardSpec {
        divrl_reward::RewardSpec {
            kind: match self.kind {
                KindArg::Mmd => divrl_reward::RewardKind::Mmd,
                KindArg::GpMi => divrl_reward::RewardKind::GpMi,
                KindArg::Recall => divrl_reward::RewardKind::Recall,
            },
            degree: self.degree,
            gamma: self.gamma,
            coef0: self.coef0,
            sigma: self.sigma,
            sigma_scale: self.sigma_scale,
            mmd_kernel: self.mmd_kernel,
            jitter: self.jitter,
            k: self.k,
        }
    }
}
