//! `divrl eval --attribute gender --attribute age` end to end on scikit-image's LFW crops, and
//! its bad inputs. Needs `scripts/setup-faces.sh` (fails with that instruction otherwise, unless
//! DIVRL_SKIP_FACES=1 is set).
mod common;

use common::{divrl, run, run_err, s, write_npy};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn faces_dir() -> Option<PathBuf> {
    let dir = divrl_faces::default_dir();
    let needed = [
        "manifest.json",
        "gender-v1.onnx",
        "age-v1.onnx",
        "lfw_subset.npy",
    ];
    if needed.iter().all(|f| dir.join(f).is_file()) {
        return Some(dir);
    }
    if std::env::var_os("DIVRL_SKIP_FACES").is_some() {
        eprintln!(
            "SKIPPED: {} incomplete and DIVRL_SKIP_FACES set",
            dir.display()
        );
        return None;
    }
    panic!(
        "{} incomplete: run scripts/setup-faces.sh (or set DIVRL_SKIP_FACES=1)",
        dir.display()
    );
}

/// The first 100 images of lfw_subset.npy (the faces) as their own float64 [100, 25, 25] file.
fn lfw_faces(dir: &Path, out: &Path) {
    let f = npyz::NpyFile::new(std::io::BufReader::new(
        std::fs::File::open(dir.join("lfw_subset.npy")).unwrap(),
    ))
    .unwrap();
    let v: Vec<f64> = f.into_vec().unwrap();
    write_npy(out, &[100, 25, 25], &v[..100 * 625]);
}

#[test]
fn gender_and_age_of_the_lfw_faces() {
    let Some(dir) = faces_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let faces = tmp.path().join("faces.npy");
    lfw_faces(&dir, &faces);
    // The reference is the whole sample as shipped ([200, 25, 25] float64), read as is.
    let (code, out, err) = run(&[
        "eval",
        "--generated",
        s(&faces),
        "--reference",
        s(&dir.join("lfw_subset.npy")),
        "--attribute",
        "gender",
        "--attribute",
        "age",
        "--faces",
        s(&dir),
        "--json",
        "--no-cache",
        "--device",
        "cpu",
        "--no-progress",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    eprintln!("{}", serde_json::to_string(&v["attributes"]).unwrap());
    assert_eq!(v["generated"], 100);
    assert_eq!(v["reference"], 200);
    let attrs = v["attributes"].as_array().unwrap();
    assert_eq!(attrs.len(), 2);
    assert_eq!(v["attribute"], attrs[0]);
    let g = &attrs[0];
    assert_eq!(g["source"], "gender");
    assert_eq!(g["names"], serde_json::json!(["female", "male"]));
    let male = g["counts"][1].as_u64().unwrap();
    assert_eq!(g["counts"][0].as_u64().unwrap() + male, 100);
    // LFW is ~77% male; see crates/divrl-faces/tests/faces.rs for the band.
    assert!((67..=87).contains(&male), "{male} male of 100");
    let p = male as f64 / 100.0;
    let kl = p * (2.0 * p).ln() + (1.0 - p) * (2.0 * (1.0 - p)).ln();
    assert!((g["kl_to_uniform"].as_f64().unwrap() - kl).abs() < 1e-12);
    let a = &attrs[1];
    assert_eq!(a["source"], "age");
    assert_eq!(a["names"].as_array().unwrap().len(), 9);
    assert_eq!(a["names"][3], "20-29");
    let counts: Vec<u64> = a["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), 100);
    assert!(counts[3..7].iter().sum::<u64>() >= 70, "{counts:?}");

    // The table lists both histograms.
    let (code, out, err) = run(&[
        "eval",
        "--generated",
        s(&faces),
        "--reference",
        s(&faces),
        "--attribute",
        "gender",
        "--attribute",
        "age",
        "--no-cache",
        "--device",
        "cpu",
        "--no-progress",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("attribute (gender), KL to uniform"), "{out}");
    assert!(out.contains("attribute (age), KL to uniform"), "{out}");
    assert!(out.contains("70+"), "{out}");
}

#[test]
fn bad_face_inputs_exit_2_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let faces = tmp.path().join("faces.npy");
    write_npy(&faces, &[2, 4, 4], &[0.5; 32]);
    let mut nan = vec![0.5; 32];
    nan[7] = f64::NAN;
    let nan_npy = tmp.path().join("nan.npy");
    write_npy(&nan_npy, &[2, 4, 4], &nan);
    let two_ch = tmp.path().join("two.npy");
    write_npy(&two_ch, &[2, 2, 4, 4], &[0.5; 64]);
    let mut cases: Vec<(Vec<&str>, &str)> = vec![(
        vec![
            "eval",
            "--generated",
            s(&faces),
            "--reference",
            s(&faces),
            "--attribute",
            "age",
            "--faces",
            "/no/such/faces",
        ],
        "scripts/setup-faces.sh",
    )];
    let dir = faces_dir();
    let dir_s = dir.as_deref().map(|d| s(d).to_string());
    if let Some(d) = &dir_s {
        for (bad, needle) in [(&nan_npy, "non-finite"), (&two_ch, "is not [N,H,W]")] {
            cases.push((
                vec![
                    "eval",
                    "--generated",
                    s(bad),
                    "--reference",
                    s(&faces),
                    "--attribute",
                    "gender",
                    "--faces",
                    d,
                    "--no-cache",
                ],
                needle,
            ));
        }
    }
    for (args, needle) in cases {
        let line = run_err(divrl().args(&args));
        assert!(line.contains(needle), "{args:?}: {line}");
    }
    // An unknown attribute or a one-prompt CLIP attribute is a usage error (clap, exit 2).
    for bad in ["gendr", "clip:only one prompt"] {
        let (code, _, err) = run(&[
            "eval",
            "--generated",
            s(&faces),
            "--reference",
            s(&faces),
            "--attribute",
            bad,
        ]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("--attribute"), "{err}");
    }
}
