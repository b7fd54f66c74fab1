//! `divrl finetune` data-parallel over loopback (libtorch's c10d): two ranks of one thread train
//! the same adapters as one process with the same global batch; a rank killed with SIGKILL stops
//! the other with one clear error within the timeout; a two-rank run killed with SIGKILL resumes
//! to the uninterrupted two-rank run's weights.
mod common;

use common::{divrl, f32_tensors, run_err, run_ok, s, tiny_base, write_tiny_data};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// 3 classes × 4 images an epoch, in two sampling chunks of 6 (the second class straddles them),
/// minibatches of 6 that mix the ranks' samples.
fn finetune(base: &Path, data: &str, out: &Path, epochs: usize) -> Command {
    finetune_on(base, data, out, epochs, 1, 6, 2)
}

/// [`finetune`] with `threads` libtorch threads (per rank), minibatches of `batch` and `inner`
/// PPO epochs.
fn finetune_on(
    base: &Path,
    data: &str,
    out: &Path,
    epochs: usize,
    threads: usize,
    batch: usize,
    inner: usize,
) -> Command {
    let mut c = divrl();
    c.args([
        "finetune",
        "--base",
        s(base),
        "--data",
        data,
        "--out",
        s(out),
    ])
    .args(["--extractor", "pixels", "--ref-per-class", "8"])
    .args(["--images-per-class", "4", "--steps", "4", "--guidance", "2"])
    .args(["--sample-batch-size", "6", "--epochs", &epochs.to_string()])
    .args(["--checkpoint-every", "1", "--sample-every", "0"])
    .args(["--lr", "3e-3", "--clip-range", "0.1", "--kl-coef", "0.1"])
    .args(["--train-batch-size", &batch.to_string()])
    .args(["--inner-epochs", &inner.to_string(), "--seed", "7"])
    .args([
        "--device",
        "cpu",
        "--threads",
        &threads.to_string(),
        "--no-progress",
    ])
    .env("TORCH_CPP_LOG_LEVEL", "ERROR");
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One rank of a two-rank run started by hand, the way torchrun starts it.
fn rank(mut cmd: Command, rank: usize, port: u16, timeout_s: u32) -> Child {
    cmd.args(["--dist-timeout", &timeout_s.to_string()])
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn latest_epoch(out: &Path) -> usize {
    std::fs::read_to_string(out.join("checkpoints/latest"))
        .ok()
        .and_then(|s| s.trim().strip_prefix("epoch-").and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn wait_for_checkpoint(out: &Path, epoch: usize, children: &mut [Child]) {
    let t0 = Instant::now();
    while latest_epoch(out) < epoch {
        for c in children.iter_mut() {
            assert!(c.try_wait().unwrap().is_none(), "a rank ended early");
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "no checkpoint");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Largest absolute difference between two runs' adapters; asserts they moved.
fn weight_gap(a: &Path, b: &Path) -> f32 {
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
    let moved = ta
        .iter()
        .filter(|(n, _)| n.ends_with("lora_b"))
        .any(|(_, v)| v.iter().any(|x| *x != 0.0));
    assert!(moved, "the adapters never moved");
    worst
}

fn log(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Asserts that two runs' logs agree: the rewards to `rewards_tol` (relative), the PPO
/// statistics to `ppo_tol`.
fn assert_logs_agree(a: &Path, b: &Path, epochs: usize, rewards_tol: f64, ppo_tol: f64) {
    let (la, lb) = (log(a), log(b));
    assert_eq!((la.len(), lb.len()), (epochs, epochs));
    for (a, b) in la.iter().zip(&lb) {
        for (keys, tol) in [
            (
                &[
                    "set_reward_mean",
                    "reward_mean",
                    "reward_std",
                    "reward_min",
                    "reward_max",
                    "advantage_abs_mean",
                    "images",
                ][..],
                rewards_tol,
            ),
            (
                &["approx_kl", "kl_to_base", "clip_fraction", "loss"][..],
                ppo_tol,
            ),
        ] {
            for &key in keys {
                let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
                // The loss is a mean of ±advantage terms (about 0): absolute, on their scale.
                let scale = if key == "loss" {
                    1.0
                } else {
                    x.abs().max(1e-3)
                };
                assert!(
                    (x - y).abs() <= tol * scale,
                    "epoch {}: {key} {x} vs {y}",
                    a["epoch"]
                );
            }
        }
        assert_eq!(a["optimizer_steps"], b["optimizer_steps"]);
    }
}

/// One epoch in one optimizer step (minibatch = the whole epoch): the two ranks' summed
/// gradient is the one process's, so the adapters agree to 1e-6 (measured: identical bits) and
/// the logs' rewards are equal.
#[test]
fn two_ranks_take_the_one_process_step() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = write_tiny_data(d, 300);
    let base = tiny_base(d, &data);
    let (one, two) = (d.join("one"), d.join("two"));
    run_ok(&mut finetune_on(&base, &data, &one, 1, 1, 12, 1));
    let (_, err) = run_ok(finetune_on(&base, &data, &two, 1, 1, 12, 1).args(["--nproc", "2"]));
    assert!(err.contains("on 2 ranks"), "{err}");
    let gap = weight_gap(&one, &two);
    assert!(gap <= 1e-6, "2 ranks differ from 1 process by {gap}");
    assert_logs_agree(&one, &two, 1, 0.0, 1e-5);
    // The chunk the ranks split is part of the run's config (resume keeps it).
    let cfg = std::fs::read_to_string(two.join("config.toml")).unwrap();
    assert!(cfg.contains("sample_batch_size = 6"), "{cfg}");
    // One class of 4 samples is one chunk of 6: rank 1 would have nothing to sample, and both
    // ranks refuse before any exchange, each with one error line.
    let port = free_port();
    let small = d.join("small");
    let ranks: Vec<Child> = (0..2)
        .map(|r| {
            let mut c = finetune(&base, &data, &small, 1);
            c.args(["--classes", "0"]);
            rank(c, r, port, 30)
        })
        .collect();
    for r in ranks {
        let out = r.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        let last = err.lines().last().unwrap_or("");
        assert!(
            last.starts_with("divrl: error: ") && last.contains("sampling chunk"),
            "{err}"
        );
    }
}

/// Two epochs of several optimizer steps (minibatches of 6 that mix the ranks' samples, two
/// inner epochs, the KL term): the same LoRA weights to 1e-6 (measured: identical bits, since
/// each sampling chunk's gradient is computed apart and the chunks are added in chunk order in
/// both runs). The same process on 2 threads instead of 1 moves them by far more (measured
/// 1.4e-4), so the comparison is not vacuous.
#[test]
fn two_ranks_train_what_one_process_trains() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = write_tiny_data(d, 300);
    let base = tiny_base(d, &data);
    let (one, two, threads) = (d.join("one"), d.join("two"), d.join("threads"));
    run_ok(&mut finetune(&base, &data, &one, 2));
    run_ok(finetune(&base, &data, &two, 2).args(["--nproc", "2"]));
    run_ok(&mut finetune_on(&base, &data, &threads, 2, 2, 6, 2));
    let gap = weight_gap(&one, &two);
    let thread_gap = weight_gap(&one, &threads);
    assert!(
        gap <= 1e-6 && thread_gap > 1e-6,
        "2 ranks differ from 1 process by {gap} (1 vs 2 threads: {thread_gap})"
    );
    assert_logs_agree(&one, &two, 2, 0.0, 1e-9);
}

#[test]
fn a_killed_rank_stops_the_other_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = write_tiny_data(d, 300);
    let base = tiny_base(d, &data);
    let out = d.join("run");
    let port = free_port();
    let timeout_s = 15;
    let mut ranks = vec![
        rank(finetune(&base, &data, &out, 1000), 0, port, timeout_s),
        rank(finetune(&base, &data, &out, 1000), 1, port, timeout_s),
    ];
    wait_for_checkpoint(&out, 2, &mut ranks);
    ranks[1].kill().unwrap(); // SIGKILL
    ranks[1].wait().unwrap();
    let t0 = Instant::now();
    let out0 = ranks.remove(0).wait_with_output().unwrap();
    let waited = t0.elapsed();
    assert!(
        waited < Duration::from_secs(timeout_s as u64 + 10),
        "rank 0 took {waited:?} to stop"
    );
    assert_eq!(out0.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out0.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(last.starts_with("divrl: error: "), "{err}");
    assert!(
        last.contains("rank 1") || last.contains("ranks: 1"),
        "{last}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_killed_two_rank_run_resumes_to_the_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = write_tiny_data(d, 300);
    let base = tiny_base(d, &data);
    let epochs = 8;
    let a = d.join("a");
    run_ok(finetune(&base, &data, &a, epochs).args(["--nproc", "2"]));

    let b = d.join("b");
    let port = free_port();
    let mut ranks = vec![
        rank(finetune(&base, &data, &b, epochs), 0, port, 10),
        rank(finetune(&base, &data, &b, epochs), 1, port, 10),
    ];
    wait_for_checkpoint(&b, 3, &mut ranks);
    for r in &mut ranks {
        r.kill().unwrap(); // SIGKILL, both ranks
        r.wait().unwrap();
    }
    let killed_at = latest_epoch(&b);
    assert!((3..epochs).contains(&killed_at), "killed at {killed_at}");
    assert!(!b.join("lora.safetensors").exists());
    let e = run_err(finetune(&base, &data, &b, epochs).args(["--nproc", "2"]));
    assert!(e.contains("--resume") || e.contains("rank"), "{e}");
    let (_, err) = run_ok(finetune(&base, &data, &b, epochs).args(["--nproc", "2", "--resume"]));
    assert!(err.contains("resuming"), "{err}");
    let gap = weight_gap(&a, &b);
    assert!(gap <= 1e-6, "resumed 2-rank run differs by {gap}");
    assert_eq!(log(&b).len(), epochs);
}
