//! `divrl finetune`: diversity-oriented RL fine-tuning of a base checkpoint (the paper's
//! Algorithm 1). Settings come from `--config run.toml`; every field is also a flag, and flags win.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;
use divrl::rl::FinetuneConfig;
use divrl::run_lock::RunLock;
use divrl::schedule::{GuidanceInterval, SamplerKind};
use divrl_reward::{MmdKernel, RewardKind};

/// `divrl finetune`'s arguments: the run-control flags below and one flag per
/// [`divrl::finetune_fields!`] entry (declared there, next to its config field).
macro_rules! define_finetune_args {
    ($(
        $(#[$attr:meta])*
        $name:ident : $ty:ty = $default:expr,
            $apply:ident $flag:ty { $($flag_attr:tt)* } $kind:ident;
    )*) => {
        #[derive(clap::Args, Debug, Default)]
        pub struct Args {
            /// TOML file with any of the fields below (flags override it)
            #[arg(long)]
            pub config: Option<PathBuf>,
            /// Continue the run in --out from its newest checkpoint
            #[arg(long)]
            pub resume: bool,
            /// No progress bar (log one line per epoch instead)
            #[arg(long)]
            pub no_progress: bool,
            /// Start N local ranks of a data-parallel run (as torchrun does; each gets its share
            /// of the cores, or of the GPUs as cuda:LOCAL_RANK); without it, RANK, WORLD_SIZE,
            /// MASTER_ADDR and MASTER_PORT from the environment make this process one rank
            #[arg(long, value_name = "N")]
            pub nproc: Option<usize>,
            /// Seconds a rank waits for the others at any exchange (rendezvous, ϕ-features,
            /// gradients, checkpoints) before it stops with an error naming the missing ranks
            #[arg(long, value_name = "SECS", default_value_t = 1800.0)]
            pub dist_timeout: f64,
            $( $($flag_attr)* pub $name: Option<$flag>, )*
            #[command(flatten)]
            pub compute: super::ComputeOverrides,
        }

        /// The flags given on the command line, written into `cfg` (the `set` and `some` fields;
        /// the `none` ones are applied in [`resolve`]).
        fn apply_flags(args: &Args, cfg: &mut FinetuneConfig) {
            $( apply_flag!($apply, args.$name, cfg.$name); )*
        }
    };
}

macro_rules! apply_flag {
    (set, $flag:expr, $field:expr) => {
        if let Some(v) = &$flag {
            $field = v.clone();
        }
    };
    (some, $flag:expr, $field:expr) => {
        if let Some(v) = &$flag {
            $field = Some(v.clone());
        }
    };
    (none, $flag:expr, $field:expr) => {
        let _ = (&$flag, &$field);
    };
}

divrl::finetune_fields!(define_finetune_args);

/// The config file (or defaults) with the flags applied.
pub fn resolve(args: &Args) -> anyhow::Result<FinetuneConfig> {
    // Fields neither the file nor a flag sets take the defaults of the run's model.
    let mut cfg: FinetuneConfig = match &args.config {
        Some(p) => FinetuneConfig::read_toml_for(p, args.model.as_deref())?,
        None => FinetuneConfig::defaults_for(args.model.as_deref().unwrap_or("unet"))?,
    };
    apply_flags(args, &mut cfg);
    let any_cads_setting = args.cads_tau1.is_some()
        || args.cads_tau2.is_some()
        || args.cads_noise.is_some()
        || args.cads_psi.is_some();
    match args.cads {
        Some(on) => cfg.cads = on,
        None if any_cads_setting => cfg.cads = true,
        None => {}
    }
    if let Some(iv) = &args.guidance_interval {
        cfg.guidance_interval = if iv.trim().eq_ignore_ascii_case("none") {
            None
        } else {
            let iv: GuidanceInterval = iv.parse()?;
            Some([iv.sigma_lo, iv.sigma_hi])
        };
    }
    args.compute.apply(&mut cfg.device, &mut cfg.threads);
    cfg.validate()?;
    Ok(cfg)
}

/// Errors when `out` holds a run and `--resume` was not given.
fn check_fresh(args: &Args, out: &std::path::Path) -> anyhow::Result<()> {
    if !args.resume && out.join(divrl::rl::run_dir::CHECKPOINTS_DIR).exists() {
        bail!(
            "{} already holds a run: pass --resume to continue it, or choose another --out",
            out.display()
        );
    }
    Ok(())
}

/// Locks `out` for this process (the inputs are valid by now) and checks again, under the
/// lock, that no other run finished there since the first look.
fn claim(args: &Args, out: &std::path::Path) -> anyhow::Result<Arc<RunLock>> {
    let lock = divrl::run_lock::lock_run_folder(out)?;
    check_fresh(args, out)?;
    Ok(lock)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut cfg = resolve(&args)?;
    if let Some(n) = args.nproc.filter(|&n| n != 1) {
        // Refused before any rank starts, so that the user reads one error, not one per rank.
        check_fresh(&args, &cfg.out)?;
        return super::launch::run_local_ranks(n, args.compute.threads.is_some());
    }
    let launch = divrl_dist::Launch::from_env()?;
    let comm = if launch.world > 1 {
        if !(args.dist_timeout > 0.0 && args.dist_timeout.is_finite()) {
            bail!("--dist-timeout must be a positive number of seconds");
        }
        // Each rank its own GPU, when the run is on GPUs.
        if matches!(cfg.device.as_str(), "auto" | "cuda" | "gpu")
            && divrl::tch::Cuda::is_available()
        {
            cfg.device = format!("cuda:{}", launch.local_rank);
        }
        let timeout = std::time::Duration::from_secs_f64(args.dist_timeout);
        Some(divrl_dist::Comm::connect(&launch, timeout)?)
    } else {
        None
    };
    let out = &cfg.out;
    check_fresh(&args, out)?;
    let progress = !args.no_progress && launch.rank == 0;
    if cfg.model == "sd" {
        let trainer = divrl::rl::build_sd_finetuner(&cfg)?;
        return train(&args, trainer, comm, progress, "LoRA in lora/, log.jsonl");
    }
    let trainer = divrl::rl::build_finetuner(&cfg, false, progress)?;
    let what = if cfg.policy_steps > 0 {
        "lora.safetensors, lora.toml, log.jsonl; no merged/: the adapters act on the first policy_steps steps only"
    } else {
        "lora.safetensors, merged/, log.jsonl"
    };
    train(&args, trainer, comm, progress, what)
}

/// Claims the run folder, resumes when asked, runs to `cfg.epochs` and reports each evaluation
/// and where the results are (`what`).
/// In a data-parallel run (`comm`) every rank trains; rank 0 alone claims the folder, writes and
/// reports.
fn train<P: divrl::rl::PolicyModel>(
    args: &Args,
    mut trainer: divrl::rl::Trainer<P>,
    comm: Option<divrl_dist::Comm>,
    progress: bool,
    what: &str,
) -> anyhow::Result<()> {
    let out = trainer.cfg.out.clone();
    if let Some(comm) = comm {
        trainer.set_data_parallel(divrl::rl::data_parallel::DataParallel::new(comm))?;
    }
    let (rank, world) = trainer.rank_world();
    let _lock = if rank == 0 {
        Some(claim(args, &out)?)
    } else {
        None
    };
    if args.resume {
        let resumed = trainer.resume()?;
        if rank == 0 {
            if resumed {
                eprintln!("resuming {} at epoch {}", out.display(), trainer.epoch);
            } else {
                eprintln!("no checkpoint in {}: starting from epoch 0", out.display());
            }
        }
    }
    let t0 = std::time::Instant::now();
    let evals = trainer.run(progress)?;
    trainer.finish_data_parallel()?;
    if rank > 0 {
        return Ok(());
    }
    for (e, r) in &evals {
        eprintln!("evaluation at epoch {e}:\n{}", r.table());
    }
    let ranks = if world > 1 {
        format!(" on {world} ranks")
    } else {
        String::new()
    };
    eprintln!(
        "fine-tuned to epoch {}{ranks} in {:.1} s -> {} ({what})",
        trainer.epoch,
        t0.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Args as _;

    fn command() -> clap::Command {
        Args::augment_args(clap::Command::new("finetune"))
    }

    /// Every config field can be set from the command line, under its own name.
    #[test]
    fn every_config_field_has_a_flag() {
        let cmd = command();
        let longs: Vec<String> = cmd
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_string))
            .collect();
        let defaults = serde_json::to_value(FinetuneConfig::default()).unwrap();
        let keys: Vec<&String> = defaults.as_object().unwrap().keys().collect();
        assert!(keys.len() > 50, "{keys:?}");
        for key in keys {
            let long = key.replace('_', "-");
            assert!(longs.contains(&long), "config field {key} has no --{long}");
        }
        assert!(longs.iter().any(|l| l == "guidance-interval"));
    }

    /// The `[default: …]` a flag's help quotes is the config's default (numbers, booleans and
    /// one-word strings; descriptions such as "all" or "1/D" of unset options are skipped).
    #[test]
    fn quoted_defaults_are_the_config_defaults() {
        let defaults = serde_json::to_value(FinetuneConfig::default()).unwrap();
        let mut checked = 0;
        for arg in command().get_arguments() {
            let (Some(long), Some(help)) = (arg.get_long(), arg.get_help()) else {
                continue;
            };
            let help = help.to_string();
            let Some(start) = help.find("[default: ") else {
                continue;
            };
            let quoted = &help[start + "[default: ".len()..];
            let quoted = &quoted[..quoted.find(']').unwrap()];
            if quoted.contains(' ') {
                continue;
            }
            let value = &defaults[long.replace('-', "_")];
            let same = match value {
                serde_json::Value::Number(n) => quoted
                    .parse::<f64>()
                    .is_ok_and(|q| (q - n.as_f64().unwrap()).abs() <= 1e-12 * q.abs().max(1.0)),
                serde_json::Value::Bool(b) => quoted == b.to_string(),
                serde_json::Value::String(s) => quoted == s || (s.is_empty() && quoted == "none"),
                _ => continue,
            };
            assert!(
                same,
                "--{long} quotes [default: {quoted}], the config has {value}"
            );
            checked += 1;
        }
        assert!(checked >= 40, "only {checked} quoted defaults checked");
    }

    /// A flag lands in its field; an unset flag leaves the file's (here the default) value.
    #[test]
    fn flags_override_the_defaults_field_by_field() {
        let args = Args {
            lr: Some(0.5),
            sigma: Some(2.0),
            classes: Some(vec![1, 3]),
            ..Args::default()
        };
        let cfg = resolve(&args).unwrap();
        let d = FinetuneConfig::default();
        assert_eq!(cfg.lr, 0.5);
        assert_eq!(cfg.sigma, Some(2.0));
        assert_eq!(cfg.classes, vec![1, 3]);
        assert_eq!(
            FinetuneConfig {
                lr: d.lr,
                sigma: d.sigma,
                classes: d.classes.clone(),
                ..cfg
            },
            d
        );
    }
}
