//! `divrl metrics`: FID, Precision, Recall, Density and Coverage between feature sets.

use std::path::PathBuf;

use divrl_reward::io::read_features;
use divrl_reward::metrics::{fid, prdc};
use serde::Serialize;

use super::print_json;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Generated features, M × D
    #[arg(long)]
    pub generated: PathBuf,
    /// Reference (real) features, N × D
    #[arg(long)]
    pub reference: PathBuf,
    /// Nearest-neighbour rank for Precision, Recall, Density and Coverage
    #[arg(long, default_value_t = 3)]
    pub k: usize,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Output {
    fid: f64,
    precision: f64,
    recall: f64,
    density: f64,
    coverage: f64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let generated = read_features(&args.generated)?;
    let reference = read_features(&args.reference)?;
    let p = prdc(&generated, &reference, args.k)?;
    let out = Output {
        fid: fid(&generated, &reference)?,
        precision: p.precision,
        recall: p.recall,
        density: p.density,
        coverage: p.coverage,
    };
    if args.json {
        return print_json(&out);
    }
    println!(
        "generated {} × {}, reference {} × {}, k = {}",
        generated.rows(),
        generated.dim(),
        reference.rows(),
        reference.dim(),
        args.k
    );
    println!("FID        {:.6}", out.fid);
    println!("precision  {:.4}", out.precision);
    println!("recall     {:.4}", out.recall);
    println!("density    {:.4}", out.density);
    println!("coverage   {:.4}", out.coverage);
    Ok(())
}
