//! `divrl demo`: baseline collapse at high guidance, diversity RL fine-tuning, before/after
//! evaluation and a self-contained HTML report (plus JSON). Settings: `divrl::rl::presets::demo`.

use std::path::PathBuf;

use divrl_experiments::demo::{run_demo, DemoOptions};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A first look in about 3 minutes (4 epochs, 10 evaluation images per class)
    #[arg(long)]
    pub quick: bool,
    /// Run folder; rerunning with the same folder continues [default: runs/demo, runs/demo-quick]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// TOML file of fine-tuning fields laid over the preset (as `divrl finetune --config`)
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Base checkpoint folder [default: models/fashion-mnist-base, the base of the diversity preset; a relative models/... path missing from the working directory is looked up in the repository's models/ or $DIVRL_MODELS_DIR]
    #[arg(long)]
    pub base: Option<PathBuf>,
    #[command(flatten)]
    pub compute: super::ComputeOverrides,
    /// No progress bar (one log line per epoch instead)
    #[arg(long)]
    pub no_progress: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let overlay = super::experiment::read_overlay(args.config.as_deref())?;
    let mut cfg = divrl::rl::presets::demo(args.quick);
    if let Some(b) = args.base {
        cfg.base = b;
    }
    args.compute.apply(&mut cfg.device, &mut cfg.threads);
    let mut cfg = divrl_experiments::experiment::apply_overlay(cfg, overlay.as_ref())?;
    if let Some(o) = args.out {
        cfg.out = o;
    }
    let opts = DemoOptions {
        cfg,
        quick: args.quick,
        progress: !args.no_progress,
        command: super::experiment::command_line(),
    };
    let t0 = std::time::Instant::now();
    let done = run_demo(&opts)?;
    let (b, a) = (&done.report.before, &done.report.after);
    eprintln!(
        "guidance {}: Recall {:.3} -> {:.3}, Precision {:.3} -> {:.3}, FID {:.2} -> {:.2} (base at guidance 1: Recall {:.3}, FID {:.2}); {:.0} s",
        opts.cfg.guidance,
        b.recall,
        a.recall,
        b.precision,
        a.precision,
        b.fid,
        a.fid,
        done.report.baseline_w1.recall,
        done.report.baseline_w1.fid,
        t0.elapsed().as_secs_f64()
    );
    if let (Some(bi), Some(ai)) = (&b.independent, &a.independent) {
        eprintln!(
            "{} (never seen by the reward): Recall {:.3} -> {:.3}, Coverage {:.3} -> {:.3}, FID {:.2} -> {:.2}",
            bi.extractor, bi.recall, ai.recall, bi.coverage, ai.coverage, bi.fid, ai.fid
        );
    }
    if let (Some(bp), Some(ap)) = (&b.pixel_within_class, &a.pixel_within_class) {
        eprintln!(
            "pixel distance within classes / real: {:.3} -> {:.3}",
            bp.ratio, ap.ratio
        );
    }
    if let Some(p) = &done.report.baseline_plain {
        eprintln!(
            "(guidance {} at every noise level, the plain sampler: Recall {:.3}, FID {:.2}{})",
            opts.cfg.guidance,
            p.recall,
            p.fid,
            p.independent.as_ref().map_or(String::new(), |i| format!(
                "; {}: Recall {:.3}, FID {:.2}",
                i.extractor, i.recall, i.fid
            ))
        );
    }
    println!("report: {}", done.html.display());
    println!("json:   {}", done.json.display());
    Ok(())
}
