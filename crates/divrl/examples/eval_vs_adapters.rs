//! Checks that a finished fine-tuning run's in-process evaluation (the trainer resumed from its
//! last checkpoint, the result weights) and its exported adapters (`divrl sample --adapters`'s
//! model) draw the same images from the run's evaluation noise, and prints the evaluation of
//! those images. The run folder is copied first: nothing in it is written.
//!   cargo run --release -p divrl --example eval_vs_adapters -- runs/demo
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use divrl::rl::evaluator::eval_batches;
use divrl::rl::trainer::read_run_config;
use divrl::rl::{build_finetuner, AdaptedModel};
use divrl::sample::sample_trajectory;
use tch::{Device, Tensor};

fn main() -> Result<()> {
    let run = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "runs/demo".into()),
    );
    let tmp = tempfile::tempdir()?;
    copy_dir(&run, tmp.path())?;
    let mut cfg = read_run_config(&run)?;
    cfg.out = tmp.path().to_path_buf();
    let mut trainer = build_finetuner(&cfg, true, false)?;
    if !trainer.resume()? {
        bail!("{} has no checkpoint", run.display());
    }
    let per_class = cfg.eval_per_class;
    let a = trainer.eval_images(per_class, cfg.guidance)?;

    // The same loop as the trainer's evaluation, through the exported adapters.
    let adapted = AdaptedModel::load(&cfg.base, &run, Device::Cpu, true)?;
    let mut sampler = cfg.sampler_config();
    sampler.guidance = cfg.guidance;
    sampler.steps = cfg.eval_sampler_steps();
    let m = &adapted.model.config.model;
    let shape = [m.in_channels, m.image_size, m.image_size];
    let mut imgs = Vec::new();
    for (ls, seed) in eval_batches(&cfg, &trainer.classes, per_class)? {
        let y = Tensor::from_slice(&ls);
        let t = tch::no_grad(|| {
            sample_trajectory(&adapted, &adapted.model.sched, &sampler, &y, shape, seed)
        })?;
        imgs.push(t.images());
    }
    let b = Tensor::cat(&imgs, 0);
    let diff = (&a - &b).abs().max().double_value(&[]);
    println!(
        "{} images; max |in-process − adapters| = {diff:.3e}",
        a.size()[0]
    );
    let rep = trainer.evaluate_images(&a)?;
    println!(
        "in-process: precision {:.4}, recall {:.4}, fid {:.4}",
        rep.precision, rep.recall, rep.fid
    );
    if diff > 1e-4 {
        let rb = trainer.evaluate_images(&b)?;
        println!(
            "adapters:   precision {:.4}, recall {:.4}, fid {:.4}",
            rb.precision, rb.recall, rb.fid
        );
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let p = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            std::fs::create_dir_all(&p)?;
            copy_dir(&e.path(), &p)?;
        } else {
            std::fs::copy(e.path(), &p)?;
        }
    }
    Ok(())
}
