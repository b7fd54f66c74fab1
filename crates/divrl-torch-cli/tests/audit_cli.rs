//! `divrl audit` end to end on a tiny 28×28 base trained on the skewed variant.
mod common;

use common::{divrl, run_err, run_ok, s, tiny_base_toml};

fn skewed_base(d: &std::path::Path) -> std::path::PathBuf {
    let cfg = tiny_base_toml()
        .replace("image_size = 8", "image_size = 28")
        .replace("num_classes = 3", "num_classes = 10");
    let base_cfg = d.join("base.toml");
    std::fs::write(&base_cfg, cfg).unwrap();
    let base = d.join("skewed-base");
    run_ok(
        divrl()
            .args(["train-base", "--out", s(&base), "--config", s(&base_cfg)])
            .args(["--data", "fashion-mnist-skewed", "--steps", "2"])
            .args(["--device", "cpu", "--no-progress"]),
    );
    base
}

fn audit(base: &std::path::Path, json: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let (out, _) = run_ok(
        divrl()
            .args(["audit", "--base", s(base), "--json", s(json)])
            .args([
                "--per-class",
                "10",
                "--steps",
                "3",
                "--m",
                "3",
                "--draws",
                "20",
            ])
            .args(["--ref-per-class", "8", "--extractor", "pixels"])
            .args(["--device", "cpu", "--threads", "1"])
            .args(extra),
    );
    assert!(out.contains("| ϕ | reward |"), "{out}");
    assert!(out.contains("| pixels |"), "{out}");
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

#[test]
fn audit_reports_and_its_minority_test_can_fail() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = skewed_base(d);
    // Pixels see the inversion: on real images (a 50/50 pool) the inverted image of a 2 + 1 set
    // stands out against balanced references.
    let r = audit(
        &base,
        &d.join("a.json"),
        &["--reward", "mmd,gp-mi", "--minority", "1"],
    );
    assert_eq!(r["generated_counts"].as_array().unwrap().len(), 2);
    let gen: u64 = r["generated_counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    let real: u64 = r["real_counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!((gen, real), (100, 100));
    let e = &r["extractors"][0];
    assert_eq!(e["extractor"], "pixels");
    assert_eq!(e["nearest"].as_array().unwrap().len(), 2);
    let arms = e["rewards"].as_array().unwrap();
    assert_eq!(arms.len(), 2);
    assert_eq!(arms[0]["reward"], "mmd");
    assert_eq!(arms[1]["reward"], "gp-mi");
    for a in arms {
        for pop in ["generated", "real"] {
            let values = a[pop]["values"].as_array().unwrap();
            assert!(!values.is_empty());
            let n: u64 = values
                .iter()
                .map(|v| v["marginal"]["count"].as_u64().unwrap())
                .sum();
            assert_eq!(
                n,
                10 * 20 * 3,
                "{pop}: every member of every set is counted once"
            );
        }
        let t = &a["real"]["minority_test"];
        assert!((t["chance"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(
            t["draws"].as_u64().unwrap(),
            20 * t["classes"].as_array().unwrap().len() as u64
        );
        assert!(t["draws"].as_u64().unwrap() >= 100, "{t}");
    }
    let mmd_real = &arms[0]["real"]["minority_test"];
    assert!(mmd_real["top_share"].as_f64().unwrap() > 0.6, "{mmd_real}");
    assert!(
        mmd_real["margin"]["mean"].as_f64().unwrap() > 0.0,
        "{mmd_real}"
    );

    // A reward blind to everything (an RBF kernel far narrower than any distance: every image
    // is equally novel) fails the same test: the minority is never strictly on top.
    let r = audit(
        &base,
        &d.join("b.json"),
        &["--reward", "gp-mi", "--sigma", "1e-4", "--minority", "1"],
    );
    let t = &r["extractors"][0]["rewards"][0]["real"]["minority_test"];
    assert_eq!(t["top_share"].as_f64().unwrap(), 0.0, "{t}");
    assert_eq!(t["beats_majority_share"].as_f64().unwrap(), 0.0, "{t}");
    assert!(t["margin"]["mean"].as_f64().unwrap().abs() < 1e-9, "{t}");

    // Any registry pixel side is a ϕ to audit in, beside the 8 × 8 one: pixels-28 is the raw image.
    let r = audit(
        &base,
        &d.join("c.json"),
        &["--extractor", "pixels-28", "--minority", "1"],
    );
    let names: Vec<_> = r["extractors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["extractor"].as_str().unwrap().to_owned(),
                e["dim"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [("pixels".to_owned(), 64), ("pixels-28".to_owned(), 784)]
    );
}

#[test]
fn audit_rejects_bad_input_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = s(d);
    for (args, needle) in [
        (vec!["--m", "2"], "--m must be at least 3"),
        (vec!["--extractor", "clip"], "unknown --extractor"),
        (vec!["--extractor", "pixels-0"], "unknown --extractor"),
        (vec!["--extractor", "small,pixels-x"], "unknown --extractor"),
        (vec!["--ref-per-class", "7"], "even"),
        (vec!["--json", "/nonexistent-dir/x.json"], "does not exist"),
        (vec!["--base", "/nonexistent-checkpoint"], "checkpoint"),
    ] {
        let mut cmd = divrl();
        cmd.args(["audit", "--device", "cpu"]);
        if !args.contains(&"--base") {
            cmd.args(["--base", base]);
        }
        let line = run_err(cmd.args(&args));
        assert!(line.contains(needle), "{line}");
    }
}
