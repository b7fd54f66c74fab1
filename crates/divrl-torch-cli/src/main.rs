//! `divrl-torch`: the verbs of the `divrl` command that compute with libtorch. Users type
//! `divrl`, which runs the maths verbs itself and hands everything else to this binary (its
//! sibling in the same folder); run directly, it behaves the same and also knows the maths verbs.
//!
//! Every verb is a thin layer over the libraries: argument parsing here, work there.
//! Errors print one line (`divrl: error: ...`) on stderr and exit with code 2.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use divrl_cli::MathsCommand;

#[derive(Parser)]
#[command(
    name = "divrl",
    bin_name = "divrl",
    version,
    about = divrl_cli::ABOUT
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Maths(MathsCommand),
    /// Train the class-conditional diffusion base model (DDPM, EMA, checkpoints, resumable)
    TrainBase(cmd::train_base::Args),
    /// Sample a PNG grid from a base checkpoint (DDIM/DDPM, classifier-free guidance)
    Sample(cmd::sample::Args),
    /// Train the small classifier that is the default feature space (Fashion-MNIST)
    TrainClassifier(cmd::train_classifier::Args),
    /// Features of an image set (pixels | small | inception | clip), cached by content hash
    Features(cmd::features::Args),
    /// FID, Precision, Recall, Density, Coverage, IS and attribute KL of generated vs reference images
    Eval(cmd::eval::Args),
    /// Diversity-oriented RL fine-tuning of a base checkpoint (the paper's Algorithm 1)
    Finetune(Box<cmd::finetune::Args>),
    /// Sample a PNG grid from a Stable Diffusion diffusers folder, optionally with a LoRA
    SdSample(cmd::sd_sample::Args),
    /// Baseline collapse, diversity fine-tuning, before/after evaluation and an HTML report
    Demo(cmd::demo::Args),
    /// The paper's experiments on our data: selection, guidance, debias, ablation
    Experiment(cmd::experiment::Args),
    /// Reward audit: can ϕ and the reward see the attribute to balance (generated vs real)?
    Audit(cmd::audit::Args),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DIVRL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return divrl_cli::parse_error(err),
    };
    divrl_cli::finish(match cli.command {
        Command::Maths(verb) => verb.run(),
        Command::TrainBase(args) => cmd::train_base::run(args),
        Command::Sample(args) => cmd::sample::run(args),
        Command::TrainClassifier(args) => cmd::train_classifier::run(args),
        Command::Features(args) => cmd::features::run(args),
        Command::Eval(args) => cmd::eval::run(args),
        Command::Finetune(args) => cmd::finetune::run(*args),
        Command::SdSample(args) => cmd::sd_sample::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Experiment(args) => cmd::experiment::run(args),
        Command::Audit(args) => cmd::audit::run(args),
    })
}
