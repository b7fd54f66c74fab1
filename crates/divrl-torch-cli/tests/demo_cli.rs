//! `divrl demo` and `divrl experiment …` end to end on a tiny base model: the report and its
//! JSON twin, self-containment of the HTML, resuming, the experiments' tables and skipping of
//! finished cells.
mod common;

use common::{divrl, run_err, run_ok, tiny_base, tiny_base_toml, write_tiny_data};
use std::path::Path;

fn overlay(d: &Path, data: &str, extra: &str) -> std::path::PathBuf {
    let p = d.join("overlay.toml");
    std::fs::write(
        &p,
        format!(
            "data = {data:?}\nextractor = \"pixels\"\nref_per_class = 8\nimages_per_class = 4\nsteps = 4\nskip_final_steps = 1\nguidance = 2.0\nepochs = 2\neval_per_class = 4\ndevice = \"cpu\"\nthreads = 1\nlr = 3e-3\nclip_range = 0.1\n{extra}"
        ),
    )
    .unwrap();
    p
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn demo_writes_a_self_contained_report_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = write_tiny_data(d, 300);
    let base = tiny_base(d, &data);
    // The preset's adapters act on its first 7 steps: 3 of the overlay's 4 here. A coarser pixel
    // space stands in for the independent one.
    let ov = overlay(
        d,
        &data,
        "eval_every = 1\npolicy_steps = 3\neval_independent = \"pixels-4\"\n",
    );
    let out = d.join("demo");
    let demo = || {
        let mut c = divrl();
        c.args(["demo", "--quick", "--base", base.to_str().unwrap()])
            .args(["--config", ov.to_str().unwrap()])
            .args(["--out", out.to_str().unwrap(), "--no-progress"]);
        c
    };
    let (stdout, stderr) = run_ok(&mut demo());
    // Without a bar every slow stage says when it is done (the full demo's baselines and
    // evaluations take minutes each).
    for line in [
        "guidance-1 baseline: ",
        "plain-guidance baseline: ",
        "evaluation at epoch 0: ",
        "evaluation at epoch 1: ",
        "evaluation at epoch 2: ",
        "epoch 2/2: set reward",
    ] {
        assert!(stderr.contains(line), "{line}: {stderr}");
    }
    assert_eq!(
        stderr.matches(" images sampled and scored in ").count(),
        5,
        "{stderr}"
    );
    let html_path = out.join("report.html");
    assert!(
        stdout.contains(&format!("report: {}", html_path.display())),
        "{stdout}"
    );
    let j = json(&out.join("report.json"));
    // The preset guides inside a noise interval: the plain sampler is a baseline beside it.
    for part in ["baseline_w1", "baseline_plain", "before", "after"] {
        for m in ["recall", "precision", "fid", "density", "coverage"] {
            assert!(j[part][m].as_f64().unwrap().is_finite(), "{part}.{m}");
        }
        assert!(j[part]["independent"]["recall"]
            .as_f64()
            .unwrap()
            .is_finite());
        assert!(j[part]["pixel_within_class"]["ratio"].as_f64().unwrap() > 0.0);
    }
    assert_ne!(
        j["baseline_plain"], j["before"],
        "the interval changed nothing"
    );
    assert!(j["config"]["guidance_interval"].is_array());
    assert_eq!(j["epochs"].as_array().unwrap().len(), 2);
    let eval_epochs: Vec<u64> = j["evals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(eval_epochs, vec![0, 1, 2]);
    assert_eq!(j["config"]["guidance"].as_f64(), Some(2.0));
    assert_eq!(j["quick"].as_bool(), Some(true));
    // The fine-tuned model differs from the base (the adapters or weights moved) while the
    // evaluation noise is the same, so the after grid differs from the before grid.
    let before = std::fs::read(out.join("grids/before-w2.png")).unwrap();
    let after = std::fs::read(out.join("grids/after-w2.png")).unwrap();
    assert_ne!(before, after, "fine-tuning did not change the samples");

    let html = std::fs::read_to_string(&html_path).unwrap();
    divrl_report::check_balanced(&html).unwrap();
    // Images are embedded: every src is a data URI, nothing links outside the file.
    let srcs: Vec<&str> = html.split("src=\"").skip(1).collect();
    assert!(srcs.len() >= 4, "only {} images", srcs.len());
    for s in &srcs {
        assert!(
            s.starts_with("data:image/png;base64,"),
            "{}",
            &s[..40.min(s.len())]
        );
    }
    for external in ["href=\"http", "<script", "<link", "@import", "url("] {
        assert!(!html.contains(external), "{external}");
    }
    assert!(html.matches("<svg").count() >= 6, "plots missing");
    for text in [
        "Before and after",
        "guidance 1",
        "every noise level",
        "Every space",
        "ind. Recall",
        "config.toml",
        "approx-KL",
    ] {
        assert!(html.contains(text), "{text} missing");
    }

    // Rerunning continues the finished run: no new epochs, the cached baseline is kept.
    let w1 = std::fs::read(out.join("baseline-w1.json")).unwrap();
    let plain = std::fs::read(out.join("baseline-plain.json")).unwrap();
    let (stdout, _) = run_ok(&mut demo());
    assert!(stdout.contains("report: "), "{stdout}");
    assert_eq!(std::fs::read(out.join("baseline-w1.json")).unwrap(), w1);
    assert_eq!(
        std::fs::read(out.join("baseline-plain.json")).unwrap(),
        plain
    );
    let j2 = json(&out.join("report.json"));
    assert_eq!(j2["epochs"], j["epochs"]);
    // Wall time adds up over invocations.
    let total = |j: &serde_json::Value| j["wall_seconds_total"].as_f64().unwrap();
    assert!((total(&j) - j["wall_seconds"].as_f64().unwrap()).abs() < 1e-9);
    assert!(total(&j2) > total(&j));
    assert_eq!(j2["after"], j["after"]);
}

#[test]
fn experiments_write_tables_and_skip_finished_cells() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = write_tiny_data(d, 300);
    let base = tiny_base(d, &data);
    let ov = overlay(d, &data, "");
    let exp = |which: &str, out: &Path| {
        let mut c = divrl();
        c.args([
            "experiment",
            which,
            "--quick",
            "--base",
            base.to_str().unwrap(),
        ])
        .args(["--config", ov.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap(), "--no-progress"]);
        c
    };

    // Table 1: selection of 5 of 10 by max/min MMD and GP-MI and at random.
    let sel = d.join("sel");
    run_ok(exp("selection", &sel).args(["--sets-per-class", "2"]));
    let t = json(&sel.join("table.json"));
    let names: Vec<&str> = t["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "random",
            "max-mmd",
            "max-gp-mi",
            "min-mmd",
            "min-gp-mi",
            "all-10"
        ]
    );
    let gen = |i: usize| t["cells"][i]["report"]["generated"].as_u64().unwrap();
    // 3 classes × 2 sets × 5 selected; all-10 keeps every candidate.
    assert_eq!((gen(0), gen(1), gen(5)), (30, 30, 60));
    let md = std::fs::read_to_string(sel.join("table.md")).unwrap();
    assert!(
        md.contains("| max-mmd |") && md.contains("paper Recall %"),
        "{md}"
    );
    assert!(sel.join("plots/recall-vs-fid.svg").exists());
    divrl_report::check_balanced(&std::fs::read_to_string(sel.join("report.html")).unwrap())
        .unwrap();

    // Table 2: baseline, GP-MI and MMD fine-tuning at guidance 4, 3, 2, 1.
    let g = d.join("guid");
    run_ok(&mut exp("guidance", &g));
    let t = json(&g.join("table.json"));
    let cells = t["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 12);
    assert_eq!(cells[0]["name"], "w4-baseline");
    assert_eq!(cells[2]["name"], "w4-mmd");
    assert_eq!(cells[11]["name"], "w1-mmd");
    assert_eq!(cells[1]["epochs"].as_u64(), Some(2));
    // Baselines at one guidance share the evaluation noise with their fine-tuned cells, and
    // fine-tuning changed the model, so their metrics differ.
    assert_ne!(cells[0]["report"], cells[2]["report"]);
    // A rerun skips every finished cell: the cell files are not rewritten.
    let cell = g.join("cells/w4-mmd.json");
    let before = std::fs::metadata(&cell).unwrap().modified().unwrap();
    std::fs::remove_file(g.join("table.md")).unwrap();
    run_ok(&mut exp("guidance", &g));
    assert_eq!(
        std::fs::metadata(&cell).unwrap().modified().unwrap(),
        before
    );
    assert!(g.join("table.md").exists());

    // debias without a skewed base: one line naming what is missing.
    let e = run_err(divrl().args([
        "experiment",
        "debias",
        "--quick",
        "--base",
        d.join("nope").to_str().unwrap(),
        "--out",
        d.join("deb").to_str().unwrap(),
    ]));
    assert!(e.contains("nope"), "{e}");
}

#[test]
fn debias_reports_attribute_kl_with_balanced_references() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A tiny 28×28 base on the skewed variant (10% inverted training images).
    let cfg = tiny_base_toml()
        .replace("image_size = 8", "image_size = 28")
        .replace("num_classes = 3", "num_classes = 10");
    let base_cfg = d.join("base.toml");
    std::fs::write(&base_cfg, cfg).unwrap();
    let base = d.join("skewed-base");
    run_ok(
        divrl()
            .args(["train-base", "--out", base.to_str().unwrap()])
            .args([
                "--config",
                base_cfg.to_str().unwrap(),
                "--data",
                "fashion-mnist-skewed",
                "--steps",
                "2",
                "--device",
                "cpu",
                "--no-progress",
            ]),
    );
    // The default data set is replaced by the skewed one; ref_per_class must be even, and the
    // preset's policy_steps must fit the 3 steps.
    let ov = d.join("ov.toml");
    std::fs::write(
        &ov,
        "extractor = \"pixels\"\nref_per_class = 8\nimages_per_class = 3\nsteps = 3\nskip_final_steps = 1\npolicy_steps = 2\nepochs = 1\neval_per_class = 4\ndevice = \"cpu\"\nthreads = 1\n",
    )
    .unwrap();
    let out = d.join("deb");
    run_ok(
        divrl()
            .args([
                "experiment",
                "debias",
                "--quick",
                "--base",
                base.to_str().unwrap(),
            ])
            .args([
                "--config",
                ov.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ])
            .args(["--guidance", "2", "--seeds", "2", "--no-progress"]),
    );
    let t = json(&out.join("table.json"));
    let cells = t["cells"].as_array().unwrap();
    let names: Vec<&str> = cells.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["base-s1", "rl-s1", "base-s2", "rl-s2"]);
    for c in cells {
        let a = &c["report"]["attribute"];
        let counts: Vec<u64> = a["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(counts.iter().sum::<u64>(), 40, "{a}");
        let kl = a["kl_to_uniform"].as_f64().unwrap();
        // KL(p ‖ uniform) over two values = ln 2 − H(p).
        let p = counts[1] as f64 / 40.0;
        let h = -[p, 1.0 - p]
            .iter()
            .filter(|&&q| q > 0.0)
            .map(|&q| q * q.ln())
            .sum::<f64>();
        assert!((kl - (2f64.ln() - h)).abs() < 1e-9, "{kl} vs {p}");
    }
    let md = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(
        md.contains("KL to uniform")
            && md.contains("balanced: 4 normal + 4 inverted")
            && md.contains("inverted share")
            && md.contains("Mean ± sd over seeds")
            && md.contains("| rl-mmd | 2 |"),
        "{md}"
    );
    // The run used the skewed data set and balanced references.
    let run_cfg = std::fs::read_to_string(out.join("cells/rl-s1/config.toml")).unwrap();
    assert!(
        run_cfg.contains("data = \"fashion-mnist-skewed\""),
        "{run_cfg}"
    );
    assert!(run_cfg.contains("balanced_reference = true"), "{run_cfg}");
    // The inversion preset evaluates a moving average of the weights (issue 13's setting).
    assert!(run_cfg.contains("policy_ema = 0.8"), "{run_cfg}");

    // The three-valued background attribute: three counts, KL over three values.
    let out = d.join("deb-bg");
    run_ok(
        divrl()
            .args([
                "experiment",
                "debias",
                "--quick",
                "--attribute",
                "background",
            ])
            .args(["--base", base.to_str().unwrap()])
            .args(["--config", ov.to_str().unwrap()])
            .args(["--out", out.to_str().unwrap(), "--no-progress"]),
    );
    let t = json(&out.join("table.json"));
    for c in t["cells"].as_array().unwrap() {
        let a = &c["report"]["attribute"];
        assert_eq!(a["source"], "background", "{a}");
        let counts: Vec<f64> = a["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(counts.len(), 3);
        let n: f64 = counts.iter().sum();
        let kl: f64 = counts
            .iter()
            .filter(|&&c| c > 0.0)
            .map(|&c| c / n * (3.0 * c / n).ln())
            .sum();
        assert!((a["kl_to_uniform"].as_f64().unwrap() - kl).abs() < 1e-9);
    }
    let md = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(md.contains("3 black + 3 gray + 2 light"), "{md}");
    assert!(md.contains("light share"), "{md}");
    let run_cfg = std::fs::read_to_string(out.join("cells/rl-s1/config.toml")).unwrap();
    assert!(
        run_cfg.contains("data = \"fashion-mnist-background\""),
        "{run_cfg}"
    );
    // --attribute and --seeds belong to the experiments that use them.
    let e = run_err(divrl().args(["experiment", "guidance", "--attribute", "background"]));
    assert!(e.contains("--attribute belongs"), "{e}");
}

#[test]
fn diversity_experiment_reports_seeds_spaces_and_paired_changes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = write_tiny_data(d, 300);
    let base = tiny_base(d, &data);
    // ϕ is pixels here (the overlay): a coarser pixel space stands in for the independent one.
    let ov = overlay(
        d,
        &data,
        "eval_independent = \"pixels-4\"\nsets_per_class = 2\npolicy_steps = 3\n",
    );
    let out = d.join("div");
    let run = || {
        let mut c = divrl();
        c.args(["experiment", "diversity", "--quick", "--seeds", "2"])
            .args(["--base", base.to_str().unwrap()])
            .args(["--config", ov.to_str().unwrap()])
            .args(["--baseline", "w1=guidance = 1.0", "--double"])
            .args(["--out", out.to_str().unwrap(), "--no-progress"]);
        c
    };
    run_ok(&mut run());
    let t = json(&out.join("table.json"));
    let names: Vec<&str> = t["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["base-s1", "w1-s1", "rl-s1", "rl2x-s1", "base-s2", "w1-s2", "rl-s2", "rl2x-s2"]
    );
    let cell = |i: usize| &t["cells"][i];
    // Every evaluation has the independent space and the pixel spread.
    for i in 0..8 {
        let r = &cell(i)["report"];
        assert!(r["independent"]["recall"].as_f64().unwrap().is_finite());
        assert!(r["pixel_within_class"]["ratio"].as_f64().unwrap() > 0.0);
    }
    // The 2× cell continued the 1× run: twice the epochs.
    assert_eq!(cell(2)["epochs"].as_u64(), Some(2));
    assert_eq!(cell(3)["epochs"].as_u64(), Some(4));
    // Seeds differ (evaluation noise and fine-tuning), so do their base rows.
    assert_ne!(cell(0)["report"], cell(4)["report"]);
    let md = std::fs::read_to_string(out.join("table.md")).unwrap();
    for needle in [
        "Mean ± sd over seeds",
        "Paired change against the base model",
        "| method vs w1 |",
        "| rl-mmd-2x |",
        "ind. Recall",
    ] {
        assert!(md.contains(needle), "{needle} missing in\n{md}");
    }
    // A rerun skips every finished cell.
    let f = out.join("cells/rl2x-s2.json");
    let before = std::fs::metadata(&f).unwrap().modified().unwrap();
    run_ok(&mut run());
    assert_eq!(std::fs::metadata(&f).unwrap().modified().unwrap(), before);
    // A malformed baseline is one clear error.
    let e = run_err(divrl().args(["experiment", "diversity", "--baseline", "nothing"]));
    assert!(e.contains("NAME=KEY=VALUE"), "{e}");
}
