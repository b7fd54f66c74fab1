//! A run folder belongs to one process at a time, the lock dies with its holder (kill -9
//! included), and the temporaries of killed runs are removed at the next start (issue 15, rows
//! 5 and 9).
//!
//! The second process is this test binary itself, re-run on the ignored `lock_holder` test,
//! which takes the lock on `$DIVRL_TEST_LOCK_DIR`, says so, and waits to be killed.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use divrl::checkpoint::{BaseConfig, LoadedModel};
use divrl::features::pixels::PixelExtractor;
use divrl::models::unet::UNet;
use divrl::rl::{FinetuneConfig, Finetuner};
use divrl::run_lock::{lock_run_folder, remove_stale_temporaries, temporary_owner, LOCK_FILE};
use divrl::schedule::{NoiseSchedule, ScheduleConfig};
use divrl_reward::Features;
use tch::{nn::VarStore, Device};

/// Not a test: the other process of the tests below.
#[test]
#[ignore = "run by the other tests as a second process"]
fn lock_holder() {
    let Some(dir) = std::env::var_os("DIVRL_TEST_LOCK_DIR") else {
        return;
    };
    let _lock = lock_run_folder(Path::new(&dir)).unwrap();
    println!("locked");
    std::thread::sleep(std::time::Duration::from_secs(120));
}

/// Starts a second process that holds the lock on `dir`; returns once it does.
fn spawn_holder(dir: &Path) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "lock_holder", "--ignored", "--nocapture"])
        .env("DIVRL_TEST_LOCK_DIR", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("holder exited early").unwrap();
        if line.contains("locked") {
            break;
        }
    }
    child
}

/// The pid of a process that has exited (and been reaped), for stale temporary names.
fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

#[test]
fn a_second_process_is_refused_naming_the_holder_and_kill_9_frees_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut holder = spawn_holder(&dir);
    let err = lock_run_folder(&dir).expect_err("the folder is held by the other process");
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&format!("pid {}", holder.id())),
        "the error should name the holder: {msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
    // SIGKILL: the holder gets no chance to clean up, the kernel releases the lock.
    holder.kill().unwrap();
    holder.wait().unwrap();
    let lock = lock_run_folder(&dir).expect("free after the holder died");
    let written = std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
    assert_eq!(written.trim(), std::process::id().to_string());
    // Re-entrant within a process: a second guard shares the lock.
    let again = lock_run_folder(&dir).unwrap();
    assert_eq!(again.dir(), lock.dir());
    drop((lock, again));
}

#[test]
fn temporaries_of_dead_writers_are_removed_at_the_next_start_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    // Another process holds the folder while a killed writer's debris appears.
    let mut holder = spawn_holder(&dir);
    let dead = dead_pid();
    let ckpt = dir.join("checkpoints");
    let merged = dir.join("merged");
    std::fs::create_dir_all(ckpt.join(format!(".tmp-epoch-000004-{dead}"))).unwrap();
    std::fs::write(
        ckpt.join(format!(".tmp-epoch-000004-{dead}/trainable.safetensors")),
        b"x",
    )
    .unwrap();
    std::fs::create_dir_all(&merged).unwrap();
    let stale = [
        ckpt.join(format!(".latest.tmp{dead}")),
        merged.join(format!(".ema.safetensors.tmp{dead}.safetensors")),
        dir.join(format!(".log.jsonl.tmp{dead}")),
    ];
    for p in &stale {
        std::fs::write(p, b"half").unwrap();
    }
    // A live writer's temporary (pid 1 always runs) and ordinary files stay.
    let keep = [
        ckpt.join(".latest.tmp1"),
        ckpt.join("latest"),
        dir.join(".notes.tmp"),
        dir.join("log.jsonl"),
        merged.join("ema.safetensors"),
    ];
    for p in &keep {
        std::fs::write(p, b"keep").unwrap();
    }
    std::fs::create_dir_all(ckpt.join("epoch-000003")).unwrap();

    // Refused: nothing is touched.
    assert!(lock_run_folder(&dir).is_err());
    assert!(stale.iter().all(|p| p.exists()));
    holder.kill().unwrap();
    holder.wait().unwrap();

    let _lock = lock_run_folder(&dir).unwrap();
    for p in &stale {
        assert!(!p.exists(), "{} survived", p.display());
    }
    assert!(!ckpt.join(format!(".tmp-epoch-000004-{dead}")).exists());
    for p in &keep {
        assert!(p.exists(), "{} was removed", p.display());
    }
    assert!(ckpt.join("epoch-000003").is_dir());
    assert!(remove_stale_temporaries(&dir).unwrap().is_empty());
}

#[test]
fn temporary_names_are_recognised_exactly() {
    assert_eq!(temporary_owner(".tmp-epoch-000004-123", true), Some(123));
    assert_eq!(temporary_owner(".latest.tmp77", false), Some(77));
    assert_eq!(
        temporary_owner(".ema.safetensors.tmp9.safetensors", false),
        Some(9)
    );
    for (name, dir) in [
        (".tmp-epoch-000004-123", false),
        (".latest.tmp77", true),
        ("latest.tmp77", false),
        (".tmp77", false),
        (".latest.tmp", false),
        (".latest.tmp7x", false),
        ("epoch-000004", true),
        (".tmp-epoch-", true),
        (LOCK_FILE, false),
    ] {
        assert_eq!(temporary_owner(name, dir), None, "{name} (dir: {dir})");
    }
}

/// A tiny fine-tuner on 8×8 images writing to `out` (as in `tests/finetune.rs`).
fn tiny_finetuner(out: &Path) -> Finetuner {
    let config = BaseConfig {
        model: common::tiny_cfg(),
        ..Default::default()
    };
    let (mut vs, unet) = divrl::rng::with_torch_seed(3, || {
        let vs = VarStore::new(Device::Cpu);
        let unet = UNet::new(&vs.root(), &config.model).unwrap();
        (vs, unet)
    });
    vs.freeze();
    let model = LoadedModel {
        vs,
        unet,
        sched: NoiseSchedule::new(&ScheduleConfig::default()).unwrap(),
        config,
    };
    let cfg = FinetuneConfig {
        out: out.to_path_buf(),
        images_per_class: 4,
        steps: 4,
        epochs: 1,
        train_batch_size: 4,
        checkpoint_every: 1,
        sample_every: 0,
        device: "cpu".into(),
        threads: 1,
        ..Default::default()
    };
    let refs: BTreeMap<i64, Features> = (0..3)
        .map(|c| {
            let rows: Vec<Vec<f64>> = (0..8)
                .map(|i| {
                    (0..64)
                        .map(|j| ((i * 7 + j * 3) % 11) as f64 / 10.0)
                        .collect()
                })
                .collect();
            (c, Features::from_rows("refs", &rows).unwrap())
        })
        .collect();
    Finetuner::new(
        cfg,
        model,
        Box::new(PixelExtractor::new(8, 1).unwrap()),
        refs,
        None,
    )
    .unwrap()
}

#[test]
fn the_trainer_refuses_a_held_run_folder_and_cleans_up_after_a_killed_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut holder = spawn_holder(&dir);
    let mut ft = tiny_finetuner(&dir);
    for err in [ft.resume().unwrap_err(), ft.run(false).unwrap_err()] {
        let msg = format!("{err:#}");
        assert!(msg.contains(&format!("pid {}", holder.id())), "{msg}");
    }
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        [LOCK_FILE],
        "the refused trainer wrote into the folder"
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    // What a run killed while checkpointing and exporting leaves behind.
    let dead = dead_pid();
    let partial = dir
        .join("checkpoints")
        .join(format!(".tmp-epoch-000001-{dead}"));
    std::fs::create_dir_all(&partial).unwrap();
    let latest_tmp = dir.join("checkpoints").join(format!(".latest.tmp{dead}"));
    std::fs::write(&latest_tmp, b"epoch-0000").unwrap();
    std::fs::create_dir_all(dir.join("merged")).unwrap();
    let ema_tmp = dir
        .join("merged")
        .join(format!(".ema.safetensors.tmp{dead}.safetensors"));
    std::fs::write(&ema_tmp, b"half").unwrap();
    assert!(!ft.resume().unwrap());
    assert!(!partial.exists() && !latest_tmp.exists() && !ema_tmp.exists());
    ft.run(false).unwrap();
    assert!(dir.join("merged").join("ema.safetensors").exists());
}
