//! `divrl train-base` and `divrl sample` end to end on a tiny model and data set.
mod common;

use common::{divrl, f32_tensors, run_err, run_ok, write_images, TINY_MODEL};
use std::path::Path;

/// The `[train]` table: batches of 4, samples and checkpoints every 2 steps.
const TRAIN: &str = r#"
[train]
batch_size = 4
warmup_steps = 1
sample_every = 2
checkpoint_every = 2
log_every = 1
"#;

#[test]
fn train_resume_sample_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = write_images(d, 30, |i| ((i * 37) % 251) as u8);
    let cfg = d.join("tiny.toml");
    std::fs::write(&cfg, format!("{TINY_MODEL}{TRAIN}")).unwrap();
    let ck = d.join("ck");
    let args = |steps: &str| {
        let mut c = divrl();
        c.args([
            "train-base",
            "--out",
            ck.to_str().unwrap(),
            "--steps",
            steps,
            "--device",
            "cpu",
            "--no-progress",
        ]);
        c
    };
    run_ok(args("2").args(["--config", cfg.to_str().unwrap(), "--data", &data]));
    for f in [
        "config.toml",
        "ema.safetensors",
        "weights.safetensors",
        "optim.safetensors",
        "state.json",
        "samples/step_000002.png",
    ] {
        assert!(ck.join(f).exists(), "{f} missing");
    }
    // A second run into the same folder needs --resume.
    let e = run_err(args("2").args(["--config", cfg.to_str().unwrap(), "--data", &data]));
    assert!(e.contains("--resume"), "{e}");
    run_ok(args("3").arg("--resume"));
    let state = std::fs::read_to_string(ck.join("state.json")).unwrap();
    assert!(state.contains("\"step\": 3"), "{state}");

    // --init starts from the checkpoint's EMA weights (the config comes with it): one step at a
    // negligible learning rate leaves the raw weights equal to those EMA weights.
    let ck2 = d.join("ck2");
    run_ok(divrl().args([
        "train-base",
        "--out",
        ck2.to_str().unwrap(),
        "--init",
        ck.to_str().unwrap(),
        "--steps",
        "1",
        "--lr",
        "1e-12",
        "--data",
        &data,
        "--device",
        "cpu",
        "--no-progress",
    ]));
    let ema = f32_tensors(&ck.join("ema.safetensors"));
    let raw = f32_tensors(&ck2.join("weights.safetensors"));
    assert_eq!(ema.len(), raw.len());
    let mut max_dev = 0f32;
    for ((name, v), (raw_name, w)) in ema.iter().zip(&raw) {
        assert_eq!(name, raw_name);
        for (a, b) in v.iter().zip(w) {
            max_dev = max_dev.max((a - b).abs());
        }
    }
    assert!(
        max_dev < 1e-6,
        "--init weights differ from the EMA weights by {max_dev}"
    );
    let cfg2 = std::fs::read_to_string(ck2.join("config.toml")).unwrap();
    assert!(cfg2.contains("init = "), "{cfg2}");
    let e = run_err(divrl().args([
        "train-base",
        "--out",
        d.join("ck3").to_str().unwrap(),
        "--init",
        d.join("nope").to_str().unwrap(),
        "--device",
        "cpu",
    ]));
    assert!(e.contains("--init"), "{e}");

    let sample = |out: &Path, extra: &[&str]| {
        let mut c = divrl();
        c.args([
            "sample",
            "--checkpoint",
            ck.to_str().unwrap(),
            "--n",
            "3",
            "--steps",
            "4",
            "--device",
            "cpu",
        ]);
        c.args(["--out", out.to_str().unwrap()]).args(extra);
        c
    };
    let (a, b, c) = (d.join("a.png"), d.join("b.png"), d.join("c.png"));
    run_ok(&mut sample(
        &a,
        &[
            "--guidance",
            "2",
            "--trajectory",
            d.join("t.safetensors").to_str().unwrap(),
        ],
    ));
    run_ok(&mut sample(&b, &["--guidance", "2"]));
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "same seed, same grid"
    );
    run_ok(&mut sample(&c, &["--guidance", "2", "--seed", "8"]));
    assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&c).unwrap());
    // PNG IHDR: width and height at bytes 16..24. 3 classes × 3 images of 8×8, 2-pixel borders.
    let png = std::fs::read(&a).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let wh = (
        u32::from_be_bytes(png[16..20].try_into().unwrap()),
        u32::from_be_bytes(png[20..24].try_into().unwrap()),
    );
    assert_eq!(wh, (3 * 10 + 2, 3 * 10 + 2));
    assert!(d.join("t.safetensors").exists());
    run_ok(&mut sample(&c, &["--class", "1", "--sampler", "ddpm"]));

    let e = run_err(&mut sample(&c, &["--class", "3"]));
    assert!(e.contains("out of range"), "{e}");
    let e = run_err(&mut sample(&c, &["--class", "x"]));
    assert!(e.contains("bad class"), "{e}");
    run_err(&mut sample(&c, &["--eta", "0"]));
    let e = run_err(divrl().args([
        "sample",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--out",
        c.to_str().unwrap(),
        "--device",
        "tpu",
    ]));
    assert!(e.contains("bad device"), "{e}");
    run_err(&mut sample(&d.join("c.jpg"), &[]));
    std::fs::write(ck.join("ema.safetensors"), b"broken").unwrap();
    let e = run_err(&mut sample(&c, &[]));
    assert!(e.contains("ema.safetensors"), "{e}");
    let e = run_err(divrl().args([
        "sample",
        "--checkpoint",
        d.join("nope").to_str().unwrap(),
        "--out",
        c.to_str().unwrap(),
    ]));
    assert!(e.contains("does not exist"), "{e}");
    run_err(divrl().args([
        "train-base",
        "--out",
        d.join("o").to_str().unwrap(),
        "--data",
        "npy:/nonexistent.npy",
        "--device",
        "cpu",
    ]));
}
