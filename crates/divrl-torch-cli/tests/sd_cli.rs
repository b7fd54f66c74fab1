//! `divrl finetune --model sd` and `divrl sd-sample` end to end on a tiny random Stable Diffusion
//! folder (SD 1.x architecture, a few channels), and their one-line errors.
mod common;

use common::{divrl, run_err, run_ok};
use std::path::{Path, PathBuf};

fn clip_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../divrl/tests/fixtures/clip/tiny")
}

fn write_pngs(dir: &Path, n: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = divrl::rng::SplitMix64(seed);
    for i in 0..n {
        let px: Vec<u8> = (0..16 * 16 * 3)
            .map(|_| (rng.next_u64() % 256) as u8)
            .collect();
        image::RgbImage::from_raw(16, 16, px)
            .unwrap()
            .save(dir.join(format!("{i:03}.png")))
            .unwrap();
    }
}

#[test]
fn finetune_sd_then_sample_with_the_lora() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("tiny-sd");
    divrl::models::sd::tiny::write_tiny_pipeline(&base, 3).unwrap();
    let refs = tmp.path().join("refs");
    write_pngs(&refs.join("cat"), 3, 1);
    write_pngs(&refs.join("dog"), 3, 2);
    let run = tmp.path().join("run");
    run_ok(
        divrl()
            .args(["finetune", "--model", "sd", "--base"])
            .arg(&base)
            .args(["--prompts", "a cat", "--prompts", "a dog", "--references"])
            .arg(&refs)
            .args(["--extractor", "clip", "--extractor-weights"])
            .arg(clip_fixture())
            .args([
                "--epochs",
                "1",
                "--steps",
                "2",
                "--images-per-class",
                "3",
                "--grad-accum",
                "3",
                "--device",
                "cpu",
                "--no-progress",
                "--out",
            ])
            .arg(&run),
    );
    let lora = run.join("lora");
    assert!(lora.join("pytorch_lora_weights.safetensors").exists());
    assert!(lora.join("adapter_config.json").exists());
    let cfg = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(cfg.contains("model = \"sd\""), "{cfg}");
    assert_eq!(
        std::fs::read_to_string(run.join("log.jsonl"))
            .unwrap()
            .lines()
            .count(),
        1
    );
    let grid = tmp.path().join("grid.png");
    run_ok(
        divrl()
            .args(["sd-sample", "--base"])
            .arg(&base)
            .arg("--lora")
            .arg(&lora)
            .args([
                "--prompt", "a cat", "--prompt", "a dog", "--n", "2", "--steps", "2", "--device",
                "cpu", "--out",
            ])
            .arg(&grid),
    );
    let img = image::open(&grid).unwrap();
    // 2 rows × 2 images of 16 px with 2 px borders.
    assert_eq!((img.width(), img.height()), (38, 38));
}

#[test]
fn sd_errors_are_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let refs = tmp.path().join("refs");
    write_pngs(&refs, 3, 1);
    // Missing folder.
    let line = run_err(
        divrl()
            .args(["finetune", "--model", "sd", "--base"])
            .arg(tmp.path().join("missing"))
            .args(["--prompts", "a cat", "--references"])
            .arg(&refs)
            .args(["--device", "cpu", "--out"])
            .arg(tmp.path().join("run")),
    );
    assert!(line.contains("does not exist"), "{line}");
    // A config.json lacking a required key.
    let base = tmp.path().join("tiny-sd");
    divrl::models::sd::tiny::write_tiny_pipeline(&base, 3).unwrap();
    let p = base.join("unet/config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("block_out_channels");
    std::fs::write(&p, v.to_string()).unwrap();
    let line = run_err(
        divrl()
            .args(["sd-sample", "--base"])
            .arg(&base)
            .args(["--prompt", "a cat", "--device", "cpu", "--out"])
            .arg(tmp.path().join("g.png")),
    );
    assert!(line.contains("block_out_channels"), "{line}");
    // No prompt for model sd.
    let line = run_err(
        divrl()
            .args(["finetune", "--model", "sd", "--base"])
            .arg(&base)
            .args(["--device", "cpu"]),
    );
    assert!(line.contains("prompt"), "{line}");
}

/// Stable Diffusion on 2 ranks (`--nproc 2`, one trajectory per sampling chunk, the SD default)
/// trains the LoRA that one process trains: the same weights to 1e-6 (measured: identical bits)
/// after 2 epochs of several optimizer steps. Needs ϕ (CLIP) run one sampling chunk at a time in
/// both: over the whole epoch at once its features differed in the last bits (2.7e-5 of weight
/// after 2 epochs).
#[test]
fn sd_on_two_ranks_trains_what_one_process_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("tiny-sd");
    divrl::models::sd::tiny::write_tiny_pipeline(&base, 3).unwrap();
    let refs = tmp.path().join("refs");
    write_pngs(&refs.join("cat"), 3, 1);
    write_pngs(&refs.join("dog"), 3, 2);
    let finetune = |out: &Path| {
        let mut c = divrl();
        c.args(["finetune", "--model", "sd", "--base"])
            .arg(&base)
            .args(["--prompts", "a cat", "--prompts", "a dog", "--references"])
            .arg(&refs)
            .args(["--extractor", "clip", "--extractor-weights"])
            .arg(clip_fixture())
            .args(["--epochs", "2", "--steps", "2", "--images-per-class", "3"])
            .args(["--grad-accum", "2", "--lr", "1e-2", "--clip-range", "0.1"])
            .args(["--seed", "3", "--device", "cpu", "--threads", "1"])
            .args(["--no-progress", "--out"])
            .arg(out)
            .env("TORCH_CPP_LOG_LEVEL", "ERROR");
        c
    };
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    run_ok(&mut finetune(&one));
    let (_, err) = run_ok(finetune(&two).args(["--nproc", "2"]));
    assert!(err.contains("on 2 ranks"), "{err}");
    let file = "lora/pytorch_lora_weights.safetensors";
    let (ta, tb) = (
        common::f32_tensors(&one.join(file)),
        common::f32_tensors(&two.join(file)),
    );
    assert_eq!(ta.len(), tb.len());
    let mut gap = 0.0f32;
    for ((na, va), (nb, vb)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        for (x, y) in va.iter().zip(vb) {
            gap = gap.max((x - y).abs());
        }
    }
    assert!(gap <= 1e-6, "2 ranks differ from 1 process by {gap}");
    // LoRA's up (B) matrices start at zero: non-zero ones show the run trained.
    let up: Vec<&(String, Vec<f32>)> = ta.iter().filter(|(n, _)| n.contains("lora_B")).collect();
    assert!(
        !up.is_empty(),
        "no lora_B in {:?}",
        ta.iter().map(|t| &t.0).collect::<Vec<_>>()
    );
    assert!(
        up.iter().any(|(_, v)| v.iter().any(|x| *x != 0.0)),
        "the adapters never moved"
    );
    assert_eq!(
        std::fs::read_to_string(two.join("log.jsonl"))
            .unwrap()
            .lines()
            .count(),
        2
    );
}
