//! `divrl train-base` and `divrl sample` end to end on a tiny model and data set.
use npyz::WriterBuilder;
use std::path::Path;
use std::process::Command;

fn divrl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_divrl"))
}

fn write_tiny_data(dir: &Path) -> (String, String) {
    let n = 30usize;
    let imgs: Vec<u8> = (0..n * 64).map(|i| ((i * 37) % 251) as u8).collect();
    let ip = dir.join("x.npy");
    let mut w = npyz::WriteOptions::<u8>::new()
        .default_dtype()
        .shape(&[n as u64, 8, 8])
        .writer(std::fs::File::create(&ip).unwrap())
        .begin_nd()
        .unwrap();
    w.extend(imgs).unwrap();
    w.finish().unwrap();
    let lp = dir.join("y.npy");
    let mut w = npyz::WriteOptions::<i64>::new()
        .default_dtype()
        .shape(&[n as u64])
        .writer(std::fs::File::create(&lp).unwrap())
        .begin_nd()
        .unwrap();
    w.extend((0..n as i64).map(|i| i % 3)).unwrap();
    w.finish().unwrap();
    (ip.display().to_string(), lp.display().to_string())
}

const TINY: &str = r#"
[model]
in_channels = 1
image_size = 8
base_channels = 8
channel_mult = [1, 2]
num_res_blocks = 1
attn_levels = [1]
num_heads = 2
num_classes = 3
groups = 4

[train]
batch_size = 4
warmup_steps = 1
sample_every = 2
checkpoint_every = 2
log_every = 1
"#;

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "failed: {err}");
    err
}

fn run_err(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "expected exit 2");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let last = err.lines().last().unwrap_or("").to_string();
    assert!(last.starts_with("divrl: error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    last
}

#[test]
fn train_resume_sample_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (x, y) = write_tiny_data(d);
    let cfg = d.join("tiny.toml");
    std::fs::write(&cfg, TINY).unwrap();
    let ck = d.join("ck");
    let data = format!("npy:{x},{y}");
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
    let read = |p: &Path| std::fs::read(p).unwrap();
    let (ema_bytes, raw_bytes) = (
        read(&ck.join("ema.safetensors")),
        read(&ck2.join("weights.safetensors")),
    );
    let (ema, raw) = (
        safetensors::SafeTensors::deserialize(&ema_bytes).unwrap(),
        safetensors::SafeTensors::deserialize(&raw_bytes).unwrap(),
    );
    let floats = |v: &safetensors::tensor::TensorView| -> Vec<f32> {
        v.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    assert_eq!(ema.len(), raw.len());
    let mut max_dev = 0f32;
    for (name, v) in ema.tensors() {
        let w = raw.tensor(&name).unwrap();
        for (a, b) in floats(&v).iter().zip(floats(&w)) {
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
