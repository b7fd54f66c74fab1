//! `divrl finetune` end to end on a tiny base model: a run killed with SIGKILL and resumed ends
//! with the same weights as an uninterrupted run; exports, log and error handling.
use npyz::WriterBuilder;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn divrl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_divrl"))
}

/// 300 8×8 images in 3 classes (class c: brightness pattern shifted by c).
fn write_tiny_data(dir: &Path) -> String {
    let n = 300usize;
    let imgs: Vec<u8> = (0..n * 64)
        .map(|i| (((i / 64) % 3) * 60 + (i * 37) % 120) as u8)
        .collect();
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
    format!("npy:{},{}", ip.display(), lp.display())
}

const TINY_BASE: &str = r#"
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
batch_size = 8
warmup_steps = 1
sample_every = 0
checkpoint_every = 0
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
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "expected exit 2: {err}");
    let last = err.lines().last().unwrap_or("").to_string();
    assert!(last.starts_with("divrl: error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    last
}

const EPOCHS: &str = "30";

fn finetune(base: &Path, data: &str, out: &Path) -> Command {
    let mut c = divrl();
    c.args(["finetune", "--base", base.to_str().unwrap(), "--data", data])
        .args(["--out", out.to_str().unwrap()])
        .args(["--extractor", "pixels", "--ref-per-class", "8"])
        .args(["--images-per-class", "4", "--steps", "4", "--guidance", "2"])
        .args([
            "--epochs",
            EPOCHS,
            "--checkpoint-every",
            "1",
            "--sample-every",
            "10",
        ])
        .args([
            "--lr",
            "3e-3",
            "--clip-range",
            "0.1",
            "--timestep-fraction",
            "0.5",
        ])
        .args([
            "--train-batch-size",
            "6",
            "--inner-epochs",
            "2",
            "--seed",
            "7",
        ])
        .args(["--device", "cpu", "--threads", "1", "--no-progress"]);
    c
}

fn tensors(p: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            let d = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (n, d)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn latest_epoch(out: &Path) -> usize {
    std::fs::read_to_string(out.join("checkpoints/latest"))
        .ok()
        .and_then(|s| s.trim().strip_prefix("epoch-").and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

#[test]
fn killed_and_resumed_equals_uninterrupted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = write_tiny_data(d);
    let base_cfg = d.join("base.toml");
    std::fs::write(&base_cfg, TINY_BASE).unwrap();
    let base = d.join("base");
    run_ok(
        divrl()
            .args(["train-base", "--out", base.to_str().unwrap()])
            .args([
                "--config",
                base_cfg.to_str().unwrap(),
                "--data",
                &data,
                "--steps",
                "3",
                "--device",
                "cpu",
                "--no-progress",
            ]),
    );

    // Uninterrupted.
    let a = d.join("a");
    run_ok(&mut finetune(&base, &data, &a));
    for f in [
        "lora.safetensors",
        "lora.toml",
        "merged/config.toml",
        "merged/ema.safetensors",
        "config.toml",
        "samples/epoch-000010.png",
    ] {
        assert!(a.join(f).exists(), "{f} missing");
    }
    let log = std::fs::read_to_string(a.join("log.jsonl")).unwrap();
    let epochs: Vec<u64> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(epochs, (1..=30).collect::<Vec<u64>>());
    for key in [
        "set_reward_mean",
        "approx_kl",
        "clip_fraction",
        "loss",
        "grad_norm",
        "lr",
        "images_per_s",
    ] {
        assert!(
            log.lines().next().unwrap().contains(key),
            "{key} not logged"
        );
    }

    // Killed with SIGKILL after a few checkpoints, then resumed.
    let b = d.join("b");
    let mut child = finetune(&base, &data, &b)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while latest_epoch(&b) < 3 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "run ended before it could be killed"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "run ended before it could be killed"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed_at = latest_epoch(&b);
    assert!((3..30).contains(&killed_at), "killed at {killed_at}");
    assert!(!b.join("lora.safetensors").exists());
    // Without --resume the folder is refused.
    let e = run_err(&mut finetune(&base, &data, &b));
    assert!(e.contains("--resume"), "{e}");
    let err = run_ok(finetune(&base, &data, &b).arg("--resume"));
    assert!(err.contains("resuming"), "{err}");

    let (ta, tb) = (
        tensors(&a.join("lora.safetensors")),
        tensors(&b.join("lora.safetensors")),
    );
    assert_eq!(ta.len(), tb.len());
    let mut worst = 0.0f32;
    for ((na, va), (nb, vb)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        for (x, y) in va.iter().zip(vb) {
            worst = worst.max((x - y).abs());
        }
    }
    assert!(worst <= 1e-6, "resumed weights differ by {worst}");
    // Training moved the adapters (lora_b starts at zero), so the comparison is not vacuous.
    let moved = ta
        .iter()
        .filter(|(n, _)| n.ends_with("lora_b"))
        .any(|(_, v)| v.iter().any(|x| *x != 0.0));
    assert!(moved, "the adapters never moved");
    let log_b = std::fs::read_to_string(b.join("log.jsonl")).unwrap();
    assert_eq!(log_b.lines().count(), 30);
}

#[test]
fn bad_settings_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let e = run_err(divrl().args([
        "finetune",
        "--out",
        out.to_str().unwrap(),
        "--timestep-fraction",
        "0",
    ]));
    assert!(e.contains("timestep_fraction"), "{e}");
    let e = run_err(divrl().args([
        "finetune",
        "--out",
        out.to_str().unwrap(),
        "--base",
        dir.path().join("nope").to_str().unwrap(),
    ]));
    assert!(e.contains("nope"), "{e}");
    let cfg: PathBuf = dir.path().join("bad.toml");
    std::fs::write(&cfg, "epochs = 3\nno_such_field = 1\n").unwrap();
    let e = run_err(divrl().args(["finetune", "--config", cfg.to_str().unwrap()]));
    assert!(e.contains("no_such_field"), "{e}");
}
