//! Seconds per call of `DiversityReward::evaluate` (what `DiversityReward.individual` runs) on
//! feature files, from Rust, without Python: the baseline `bench/individual.py` measures the
//! binding's overhead against, on the very same arrays and interleaved with the Python calls.
//!
//!     cargo run --release -p divrl-py --example individual_timing -- REF.npy GEN.npy KIND MIN_SECONDS

use std::path::Path;
use std::time::Instant;

use divrl_reward::io::read_features;
use divrl_reward::{DiversityReward, RewardSpec};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [reference, generated, kind, min_time] = args.as_slice() else {
        eprintln!("usage: individual_timing REF.npy GEN.npy KIND MIN_SECONDS");
        std::process::exit(2);
    };
    let run = || -> Result<f64, String> {
        let reference = read_features(Path::new(reference)).map_err(|e| e.to_string())?;
        let generated = read_features(Path::new(generated)).map_err(|e| e.to_string())?;
        let kind = kind
            .parse()
            .map_err(|e: divrl_reward::Error| e.to_string())?;
        let min_time: f64 = min_time
            .parse()
            .map_err(|_| format!("bad MIN_SECONDS {min_time}"))?;
        let reward =
            DiversityReward::new(&RewardSpec::new(kind), reference).map_err(|e| e.to_string())?;
        let call = || {
            reward
                .evaluate(&generated)
                .map(|o| o.individual)
                .map_err(|e| e.to_string())
        };
        call()?;
        let (mut reps, start) = (0u64, Instant::now());
        while start.elapsed().as_secs_f64() < min_time {
            std::hint::black_box(call()?);
            reps += 1;
        }
        Ok(start.elapsed().as_secs_f64() / reps as f64)
    };
    match run() {
        Ok(s) => println!("{s:e}"),
        Err(e) => {
            eprintln!("individual_timing: error: {e}");
            std::process::exit(2);
        }
    }
}
