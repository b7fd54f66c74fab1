//! `divrl reward`: the set reward of generated features against references, and each
//! image's marginal utility.

use std::path::PathBuf;

use divrl_reward::io::read_features;
use divrl_reward::DiversityReward;

use super::{print_json, RewardOpts};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Generated features, M × D (.npy f32/f64 or .safetensors with one tensor)
    #[arg(long)]
    pub generated: PathBuf,
    /// Reference features, N × D
    #[arg(long)]
    pub reference: PathBuf,
    #[command(flatten)]
    pub reward: RewardOpts,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let generated = read_features(&args.generated)?;
    let reference = read_features(&args.reference)?;
    let reward = DiversityReward::new(&args.reward.spec(), reference)?;
    let out = reward.evaluate(&generated)?;
    if args.json {
        return print_json(&out);
    }
    println!("reward      {}", out.kind);
    if let Some(k) = reward.kernel() {
        println!("kernel      {}", serde_json::to_string(&k)?);
    }
    println!("set reward  {:.9e}", out.set_reward);
    println!("image  individual reward");
    for (i, v) in out.individual.iter().enumerate() {
        println!("{i:>5}  {v:.9e}");
    }
    Ok(())
}
