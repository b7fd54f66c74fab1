//! `divrl finetune` end to end on a tiny base model: a run killed with SIGKILL and resumed ends
//! with the same weights as an uninterrupted run; exports, log and error handling.
mod common;

use common::{divrl, f32_tensors, run_err, run_ok, tiny_base, write_tiny_data};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    let data = write_tiny_data(d, 300);
    let base = tiny_base(d, &data);

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
    // A resume that would train differently is refused, naming what differs.
    // (`--weight-decay`: a flag `finetune()` does not already pass; clap refuses a repeated one.)
    let e = run_err(finetune(&base, &data, &b).args(["--resume", "--weight-decay", "0.5"]));
    assert!(
        e.contains("different configuration: weight_decay differs"),
        "{e}"
    );
    let (_, err) = run_ok(finetune(&base, &data, &b).arg("--resume"));
    assert!(err.contains("resuming"), "{err}");

    let (ta, tb) = (
        f32_tensors(&a.join("lora.safetensors")),
        f32_tensors(&b.join("lora.safetensors")),
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
