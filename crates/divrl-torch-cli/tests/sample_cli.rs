//! `divrl sample` with the training-free diversity options (guidance interval, CADS) and image
//! export (`--out-dir`, `--npy`), and the same options on `divrl finetune`, on a tiny model.
mod common;

use common::{divrl, run_err, run_ok, s, tiny_base, write_tiny_data};
use divrl::features::ImageSource;
use std::path::Path;
use std::process::Command;

fn sample(base: &Path, extra: &[&str]) -> Command {
    let mut c = divrl();
    c.args(["sample", "--checkpoint", s(base)])
        .args(["--n", "3", "--steps", "4", "--guidance", "3"])
        .args(["--device", "cpu", "--threads", "1"])
        .args(extra);
    c
}

#[test]
fn exported_images_match_and_options_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = tiny_base(d, &write_tiny_data(d, 60));
    let (pngs, npy, grid) = (d.join("pngs"), d.join("gen.npy"), d.join("grid.png"));
    let (_, err) = run_ok(&mut sample(
        &base,
        &[
            "--out-dir",
            s(&pngs),
            "--npy",
            s(&npy),
            "--out",
            s(&grid),
            "--cads",
            "--guidance-interval",
            "0.5,50",
        ],
    ));
    assert!(
        err.contains("CADS") && err.contains("sigma (0.5, 50]"),
        "{err}"
    );
    assert!(grid.exists());
    // One PNG per image, named by index and class (3 classes × 3 images).
    let mut names: Vec<String> = std::fs::read_dir(&pngs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let want: Vec<String> = (0..9)
        .map(|i| format!("{i:05}-class{}.png", i / 3))
        .collect();
    assert_eq!(names, want);
    let px = image::open(pngs.join(&want[4])).unwrap();
    assert_eq!(px.color(), image::ColorType::L8);
    assert_eq!((px.width(), px.height()), (8, 8));
    // The .npy, read as `divrl eval --generated` reads it, holds the PNGs' pixels.
    let from_npy = ImageSource::parse(s(&npy)).unwrap().load().unwrap();
    let from_png = ImageSource::parse(s(&pngs)).unwrap().load().unwrap();
    assert_eq!(from_npy.size(), vec![9, 1, 8, 8]);
    assert!(from_npy.equal(&from_png), "npy and PNG pixels differ");
    assert!(from_npy.std(true).double_value(&[]) > 0.01, "blank images");
    let labels = divrl::data::npy::read_npy_labels(&d.join("gen.labels.npy")).unwrap();
    assert_eq!(labels, vec![0, 0, 0, 1, 1, 1, 2, 2, 2]);

    // Deterministic for a seed; each option changes the images; the grid alone still works.
    let again = d.join("again.npy");
    run_ok(&mut sample(
        &base,
        &[
            "--npy",
            s(&again),
            "--cads",
            "--guidance-interval",
            "0.5,50",
        ],
    ));
    assert_eq!(std::fs::read(&npy).unwrap(), std::fs::read(&again).unwrap());
    let load = |p: &Path| ImageSource::Npy(p.to_path_buf()).load().unwrap();
    let variants: [(&str, &[&str]); 4] = [
        ("plain", &[]),
        ("interval", &["--guidance-interval", "0.5,50"]),
        ("cads", &["--cads-noise", "1"]),
        ("inert", &["--cads-tau1", "1", "--cads-tau2", "1"]),
    ];
    for (name, extra) in variants {
        let p = d.join(format!("{name}.npy"));
        let mut args = vec!["--npy", s(&p)];
        args.extend_from_slice(extra);
        run_ok(&mut sample(&base, &args));
    }
    let plain = load(&d.join("plain.npy"));
    assert!(!plain.equal(&load(&d.join("interval.npy"))));
    assert!(!plain.equal(&load(&d.join("cads.npy"))));
    assert!(
        plain.equal(&load(&d.join("inert.npy"))),
        "CADS with tau1 = 1 is plain"
    );
    run_ok(&mut sample(&base, &["--out", s(&d.join("g2.png"))]));
}

#[test]
fn bad_sampler_flags_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Checked before the checkpoint is opened: no model needed.
    let ck = d.join("no-model");
    let out = d.join("o.png");
    let cases: [(&[&str], &str); 12] = [
        (&["--cads-tau1", "0.95"], "tau1"),
        (&["--cads-tau2", "1.5"], "tau2"),
        (&["--cads-tau1", "-0.1"], "tau1"),
        (&["--cads-noise", "-1"], "noise"),
        (&["--cads-noise", "NaN"], "noise"),
        (&["--cads-psi", "2"], "psi"),
        (&["--guidance-interval", "5,1"], "sigma_lo < sigma_hi"),
        (&["--guidance-interval", "1,1"], "sigma_lo < sigma_hi"),
        (&["--guidance-interval", "nan,1"], "sigma_lo < sigma_hi"),
        (&["--guidance-interval", "-1,2"], "sigma_lo < sigma_hi"),
        (&["--guidance-interval", "3"], "LO,HI"),
        (&["--guidance-interval", "a,2"], "not a number"),
    ];
    for (extra, want) in cases {
        let e = run_err(sample(&ck, extra).args(["--out", s(&out)]));
        assert!(e.contains(want), "{extra:?}: {e}");
    }
    let e = run_err(&mut sample(&ck, &["--npy", s(&d.join("x.png"))]));
    assert!(e.contains(".npy"), "{e}");
    let e = run_err(&mut sample(&ck, &[]));
    assert!(e.contains("nothing to write"), "{e}");
    std::fs::write(d.join("file"), b"x").unwrap();
    let e = run_err(&mut sample(&ck, &["--out-dir", s(&d.join("file"))]));
    assert!(e.contains("not a folder"), "{e}");
    assert!(!out.exists());

    for (extra, want) in [
        (&["--cads-tau1", "0.95"][..], "tau1"),
        (&["--cads", "--cads-psi", "-1"][..], "psi"),
        (&["--guidance-interval", "2,1"][..], "sigma_lo < sigma_hi"),
    ] {
        let e = run_err(
            divrl()
                .args(["finetune", "--out", s(&d.join("run"))])
                .args(extra),
        );
        assert!(e.contains(want), "{extra:?}: {e}");
    }
}

#[test]
fn finetune_rollouts_with_cads_and_interval_replay_on_policy() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = write_tiny_data(d, 300);
    let base = tiny_base(d, &data);
    let out = d.join("run");
    run_ok(
        divrl()
            .args([
                "finetune",
                "--base",
                s(&base),
                "--data",
                &data,
                "--out",
                s(&out),
            ])
            .args(["--extractor", "pixels", "--ref-per-class", "8"])
            .args(["--images-per-class", "4", "--steps", "4", "--guidance", "3"])
            .args(["--epochs", "2", "--sample-every", "0", "--seed", "3"])
            .args([
                "--cads",
                "--cads-noise",
                "0.5",
                "--guidance-interval",
                "0.3,40",
            ])
            .args(["--device", "cpu", "--threads", "1", "--no-progress"]),
    );
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2);
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let dev = v["first_ratio_max_dev"].as_f64().unwrap();
        assert!(
            dev < 1e-4,
            "importance ratio before the first update: {dev}"
        );
    }
    // The run's recorded config carries the options (so --resume checks them).
    let cfg = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(
        cfg.contains("cads = true") && cfg.contains("guidance_interval"),
        "{cfg}"
    );
}

/// A run with `--policy-steps` writes no merged checkpoint; `divrl sample --adapters RUN` draws
/// from it on its base (the adapters on the first steps' noise levels only), and a folder that
/// is not a run is one clear error.
#[test]
fn sample_draws_from_a_policy_steps_run_with_adapters() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = write_tiny_data(d, 300);
    let base = tiny_base(d, &data);
    let out = d.join("run");
    run_ok(
        divrl()
            .args(["finetune", "--base", s(&base), "--data", &data])
            .args(["--out", s(&out), "--extractor", "pixels"])
            .args(["--ref-per-class", "8", "--images-per-class", "4"])
            .args(["--steps", "4", "--guidance", "3", "--policy-steps", "2"])
            .args(["--epochs", "2", "--lr", "0.05", "--sample-every", "0"])
            .args(["--device", "cpu", "--threads", "1", "--no-progress"]),
    );
    assert!(out.join("lora.safetensors").exists() && !out.join("merged").exists());
    let (plain, adapted) = (d.join("plain.npy"), d.join("adapted.npy"));
    run_ok(&mut sample(&base, &["--npy", s(&plain), "--seed", "2"]));
    let (_, err) = run_ok(&mut sample(
        &base,
        &["--npy", s(&adapted), "--seed", "2", "--adapters", s(&out)],
    ));
    assert!(
        err.contains("adapters of") && err.contains("first 2 steps"),
        "{err}"
    );
    assert_ne!(
        std::fs::read(&plain).unwrap(),
        std::fs::read(&adapted).unwrap(),
        "the adapters must change the samples"
    );
    let e = run_err(&mut sample(
        &base,
        &["--npy", s(&d.join("never.npy")), "--adapters", s(&base)],
    ));
    assert!(e.contains("not a fine-tuning run"), "{e}");
    assert!(!d.join("never.npy").exists());
}
