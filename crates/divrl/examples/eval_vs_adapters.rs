//! Checks that a finished fine-tuning run's in-process evaluation (the trainer resumed from its
//! last checkpoint, the result weights) and its exported adapters (`divrl sample --adapters`'s
//! model) draw the same images from the run's evaluation noise, and prints the evaluation of
//! those images. The run folder is copied first: nothing in it is written.
//!   cargo run --release -p divrl --example eval_vs_adapters -- runs/demo
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
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
    let tmp = tempfile_dir()?;
    copy_dir(&run, &tmp)?;
    let mut cfg = read_run_config(&run)?;
    cfg.out = tmp.clone();
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
    let labels: Vec<i64> = (0..per_class)
        .flat_map(|_| trainer.classes.iter().copied())
        .collect();
    let chunk = match cfg.sample_batch_size {
        0 => 100,
        n => n,
    };
    let mut imgs = Vec::new();
    for (i, ls) in labels.chunks(chunk).enumerate() {
        let y = Tensor::from_slice(ls);
        let seed = (cfg.seed ^ 0xE7A1_0000_0000_0000).wrapping_add(i as u64);
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
    std::fs::remove_dir_all(&tmp)?;
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("eval-vs-adapters-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
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
