//! `divrl features`, `divrl eval` and `divrl train-classifier` end to end through the binary.
mod common;

use common::{divrl, run, run_err, s, write_npy};
use serde_json::Value;
use std::path::Path;

/// `n` copies of one Fashion-MNIST test image as a uint8 `[n, 28, 28]` array.
fn collapsed_npy(path: &Path, n: usize) {
    let test = divrl::data::fashion_mnist_test().unwrap();
    let img: Vec<f32> = Vec::<f32>::try_from(&test.images.get(0).view([-1])).unwrap();
    let px: Vec<u8> = img.iter().map(|v| (v * 255.0).round() as u8).collect();
    write_npy(path, &[n as u64, 28, 28], &px.repeat(n));
}

#[test]
fn eval_real_halves_and_collapsed_set() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (code, out, err) = run(&[
        "eval",
        "--generated",
        "fashion-mnist:eval",
        "--reference",
        "fashion-mnist:reference",
        "--json",
        "--cache-dir",
        s(&cache),
        "--device",
        "cpu",
        "--no-progress",
        "--attribute",
        "classes",
    ]);
    assert_eq!(code, 0, "{err}");
    let real: Value = serde_json::from_str(&out).unwrap();
    let collapsed_path = dir.path().join("one.npy");
    collapsed_npy(&collapsed_path, 500);
    let report = dir.path().join("report.json");
    let (code, out, err) = run(&[
        "eval",
        "--generated",
        s(&collapsed_path),
        "--reference",
        "fashion-mnist:reference",
        "--json",
        "--cache-dir",
        s(&cache),
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        s(&report),
        "--attribute",
        "classes",
    ]);
    assert_eq!(code, 0, "{err}");
    let col: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        col,
        serde_json::from_str::<Value>(&std::fs::read_to_string(&report).unwrap()).unwrap()
    );
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap();
    eprintln!("real {real}\ncollapsed {col}");
    assert_eq!(real["generated"], 2000);
    assert_eq!(real["dim"], 128);
    assert!(
        f(&real, "fid") < 0.05 * f(&col, "fid"),
        "FID {} vs collapsed {}",
        f(&real, "fid"),
        f(&col, "fid")
    );
    for k in ["precision", "recall"] {
        assert!((0.65..0.95).contains(&f(&real, k)), "{k} {}", f(&real, k));
    }
    assert!((0.78..0.95).contains(&f(&real, "coverage")));
    assert!(f(&col, "recall") < 0.01 && f(&col, "coverage") < 0.01);
    // Stratified pools: the predicted-class histogram is near uniform; the collapsed set's is one class.
    assert!(f(&real["attribute"], "kl_to_uniform") < 0.05);
    assert!((f(&col["attribute"], "kl_to_uniform") - 10f64.ln()).abs() < 1e-9);
    // The human table.
    let (code, out, _) = run(&[
        "eval",
        "--generated",
        "fashion-mnist:eval",
        "--reference",
        "fashion-mnist:reference",
        "--cache-dir",
        s(&cache),
        "--device",
        "cpu",
        "--no-progress",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains("FID") && out.contains("coverage") && out.contains("IS"),
        "{out}"
    );
}

#[test]
fn features_are_cached_by_content() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let a = dir.path().join("a.npy");
    let l = dir.path().join("l.npy");
    let args = |out: &Path| {
        vec![
            "features".to_string(),
            "--images".into(),
            "fashion-mnist:eval".into(),
            "--out".into(),
            s(out).into(),
            "--logits-out".into(),
            s(&l).into(),
            "--cache-dir".into(),
            s(&cache).into(),
            "--device".into(),
            "cpu".into(),
            "--no-progress".into(),
        ]
    };
    let a_args = args(&a);
    let (code, _, err) = run(&a_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("from the cache"), "{err}");
    let b = dir.path().join("b.npy");
    let b_args = args(&b);
    let (code, _, err) = run(&b_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("from the cache"), "{err}");
    let fa = divrl_reward::io::read_array(&a).unwrap();
    assert_eq!(fa.shape, vec![2000, 128]);
    assert_eq!(fa, divrl_reward::io::read_array(&b).unwrap());
    assert_eq!(
        divrl_reward::io::read_array(&l).unwrap().shape,
        vec![2000, 10]
    );
}

#[test]
fn inversion_attribute_of_the_skewed_pools() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(&[
        "eval",
        "--generated",
        "fashion-mnist-skewed:eval",
        "--reference",
        "fashion-mnist-skewed:reference",
        "--attribute",
        "inversion",
        "--json",
        "--no-cache",
        "--device",
        "cpu",
        "--no-progress",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["attribute"]["counts"], serde_json::json!([1000, 1000]));
    assert!(v["attribute"]["kl_to_uniform"].as_f64().unwrap().abs() < 1e-12);
    let _ = dir;
}

/// `--extractor pixels` (8 × 8 grey pooled pixels, the debias preset's ϕ) is in the one
/// extractor registry: a pool of normal images is far from a 50/50 pool in it, the 50/50 pools
/// are close to each other, and it takes no weights.
#[test]
fn pixels_extractor_sees_the_inversion() {
    let fid = |generated: &str| {
        let (code, out, err) = run(&[
            "eval",
            "--generated",
            generated,
            "--reference",
            "fashion-mnist-skewed:reference",
            "--extractor",
            "pixels",
            "--json",
            "--no-cache",
            "--device",
            "cpu",
            "--no-progress",
        ]);
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["dim"], 64);
        v["fid"].as_f64().unwrap()
    };
    let (balanced, normal) = (fid("fashion-mnist-skewed:eval"), fid("fashion-mnist:eval"));
    assert!(
        normal > 10.0 * balanced.max(0.01),
        "normal {normal}, balanced {balanced}"
    );
    let dir = tempfile::tempdir().unwrap();
    let e = run_err(divrl().args([
        "features",
        "--images",
        "fashion-mnist:eval",
        "--out",
        s(&dir.path().join("f.npy")),
        "--extractor",
        "pixels",
        "--weights",
        s(dir.path()),
    ]));
    assert!(e.contains("pixels extractor has no weights"), "{e}");
}

#[test]
fn bad_inputs_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f.npy");
    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    std::fs::write(imgs.join("b.png"), b"corrupt").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "features",
                "--images",
                s(&imgs),
                "--out",
                s(&out),
                "--no-cache",
            ],
            "b.png",
        ),
        (
            vec![
                "features",
                "--images",
                "fashion-mnist:eval",
                "--out",
                s(&out),
                "--weights",
                "/no/such/dir",
            ],
            "does not exist",
        ),
        (
            vec![
                "features",
                "--images",
                "fashion-mnist:eval",
                "--out",
                s(&out),
                "--extractor",
                "vgg",
            ],
            "unknown extractor",
        ),
        (
            vec![
                "features",
                "--images",
                "fashion-mnist:eval",
                "--out",
                s(&out),
                "--extractor",
                "inception",
                "--weights",
                "/no/x.pt",
            ],
            "setup-inception",
        ),
        (
            vec![
                "features",
                "--images",
                "fashion-mnist:eval",
                "--out",
                s(&out),
                "--extractor",
                "clip",
                "--weights",
                "/no/clip",
            ],
            "CLIP folder",
        ),
        (
            vec!["features", "--images", "/no/images", "--out", s(&out)],
            "does not exist",
        ),
        (
            vec![
                "eval",
                "--generated",
                "fashion-mnist:eval",
                "--reference",
                "fashion-mnist:reference",
                "--attribute",
                "clip",
                "--no-cache",
            ],
            "clip-prompt",
        ),
        (
            vec![
                "eval",
                "--generated",
                "fashion-mnist:eval",
                "--reference",
                "fashion-mnist:reference",
                "--extractor",
                "inception",
                "--weights",
                "/no/x.pt",
            ],
            "setup-inception",
        ),
    ];
    for (args, needle) in cases {
        let line = run_err(divrl().args(&args));
        assert!(line.contains(needle), "{args:?}: {line}");
    }
    assert!(!out.exists());
}

const TINY: &str = r#"
[model]
in_channels = 1
image_size = 8
channels = [4, 8]
convs_per_level = 1
feature_dim = 6
num_classes = 3
groups = 2
dropout = 0.0
class_names = ["a", "b", "c"]

[train]
epochs = 1
batch_size = 8
lr = 0.01
weight_decay = 0.0
hflip = false
max_shift = 1
seed = 3
"#;

#[test]
fn train_classifier_then_use_it_as_the_extractor() {
    let dir = tempfile::tempdir().unwrap();
    let n = 60usize;
    let x = dir.path().join("x.npy");
    let y = dir.path().join("y.npy");
    write_npy(
        &x,
        &[n as u64, 8, 8],
        &(0..n * 64)
            .map(|i| ((i * 31) % 256) as u8)
            .collect::<Vec<_>>(),
    );
    write_npy(
        &y,
        &[n as u64],
        &(0..n).map(|i| (i % 3) as u8).collect::<Vec<_>>(),
    );
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, TINY).unwrap();
    let ck = dir.path().join("clf");
    let data = format!("npy:{},{}", s(&x), s(&y));
    let (code, out, err) = run(&[
        "train-classifier",
        "--out",
        s(&ck),
        "--data",
        &data,
        "--config",
        s(&cfg),
        "--device",
        "cpu",
        "--no-progress",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("held-out accuracy"), "{out}");
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(ck.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["heldout_images"], 12); // 10% of the smallest class each for eval and reference, ×3 classes ×2
                                         // Refuses to overwrite without --force.
    let (code, _, err) = run(&[
        "train-classifier",
        "--out",
        s(&ck),
        "--data",
        &data,
        "--config",
        s(&cfg),
        "--device",
        "cpu",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("--force"), "{err}");
    let f = dir.path().join("f.npy");
    let (code, _, err) = run(&[
        "features",
        "--images",
        s(&x),
        "--extractor",
        "small",
        "--weights",
        s(&ck),
        "--out",
        s(&f),
        "--no-cache",
        "--device",
        "cpu",
        "--no-progress",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(divrl_reward::io::read_array(&f).unwrap().shape, vec![n, 6]);
}
