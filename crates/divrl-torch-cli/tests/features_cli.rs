//! End-to-end tests of the feature verbs (`reward`, `select`, `metrics`) through the binary.

mod common;

use common::{run, s};
use std::path::{Path, PathBuf};

use divrl_reward::io::write_npy;
use divrl_reward::{DiversityReward, Features, RewardKind, RewardSpec};
use serde_json::Value;

/// Deterministic pseudo-random values in [-1, 1) (a simple LCG; the CLI only needs data).
fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

fn npy(dir: &Path, name: &str, shape: &[usize], seed: u64) -> (PathBuf, Vec<f64>) {
    let data = values(shape.iter().product(), seed);
    let p = dir.join(name);
    write_npy(&p, shape, &data, false).unwrap();
    (p, data)
}

#[test]
fn reward_json_matches_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let (g, gd) = npy(dir.path(), "g.npy", &[5, 16], 1);
    let (r, rd) = npy(dir.path(), "r.npy", &[50, 16], 2);
    for (kind, name) in [
        (RewardKind::Mmd, "mmd"),
        (RewardKind::GpMi, "gp-mi"),
        (RewardKind::Recall, "recall"),
    ] {
        let (code, out, err) = run(&[
            "reward",
            "--generated",
            s(&g),
            "--reference",
            s(&r),
            "--kind",
            name,
            "--json",
        ]);
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["kind"], name);
        let lib = DiversityReward::new(
            &RewardSpec::new(kind),
            Features::new("r", 50, 16, rd.clone()).unwrap(),
        )
        .unwrap()
        .evaluate(&Features::new("g", 5, 16, gd.clone()).unwrap())
        .unwrap();
        assert_eq!(v["set_reward"].as_f64().unwrap(), lib.set_reward);
        let ind: Vec<f64> = v["individual"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(ind, lib.individual);
    }
    // The human table names the reward and lists five images.
    let (code, out, _) = run(&["reward", "--generated", s(&g), "--reference", s(&r)]);
    assert_eq!(code, 0);
    assert!(
        out.contains("set reward") && out.lines().count() >= 8,
        "{out}"
    );
}

#[test]
fn f32_npy_and_safetensors_inputs_agree() {
    let dir = tempfile::tempdir().unwrap();
    let gd: Vec<f32> = values(5 * 8, 3).iter().map(|&v| v as f32).collect();
    let rd: Vec<f32> = values(20 * 8, 4).iter().map(|&v| v as f32).collect();
    let g32 = dir.path().join("g32.npy");
    write_npy(
        &g32,
        &[5, 8],
        &gd.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
        true,
    )
    .unwrap();
    let r_st = dir.path().join("r.safetensors");
    let bytes: Vec<u8> = rd.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![20, 8], &bytes).unwrap();
    safetensors::serialize_to_file([("features", view)], None, &r_st).unwrap();
    let r64 = dir.path().join("r64.npy");
    write_npy(
        &r64,
        &[20, 8],
        &rd.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
        false,
    )
    .unwrap();
    let a = run(&[
        "reward",
        "--generated",
        s(&g32),
        "--reference",
        s(&r_st),
        "--json",
    ]);
    let b = run(&[
        "reward",
        "--generated",
        s(&g32),
        "--reference",
        s(&r64),
        "--json",
    ]);
    assert_eq!(a.0, 0, "{}", a.2);
    assert_eq!(a.1, b.1);
}

#[test]
fn select_shared_and_per_set_references() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = npy(dir.path(), "c.npy", &[6, 10, 8], 5);
    let (r, rd) = npy(dir.path(), "r.npy", &[30, 8], 6);
    let (code, out, err) = run(&[
        "select",
        "--candidates",
        s(&c),
        "--reference",
        s(&r),
        "--size",
        "5",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let shared: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shared["subsets"].as_array().unwrap().len(), 6);
    for sub in shared["subsets"].as_array().unwrap() {
        let v: Vec<u64> = sub
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(v.len(), 5);
        assert!(v.windows(2).all(|w| w[0] < w[1]) && v[4] < 10);
    }
    // The same references repeated per set give the same subsets.
    let per: Vec<f64> = (0..6).flat_map(|_| rd.clone()).collect();
    let rp = dir.path().join("rp.npy");
    write_npy(&rp, &[6, 30, 8], &per, false).unwrap();
    let (code, out2, err) = run(&[
        "select",
        "--candidates",
        s(&c),
        "--reference",
        s(&rp),
        "--size",
        "5",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let per: Value = serde_json::from_str(&out2).unwrap();
    assert_eq!(per["subsets"], shared["subsets"]);
    // Max beats min for every set.
    let (_, out3, _) = run(&[
        "select",
        "--candidates",
        s(&c),
        "--reference",
        s(&r),
        "--size",
        "5",
        "--criterion",
        "min",
        "--json",
    ]);
    let min: Value = serde_json::from_str(&out3).unwrap();
    for (a, b) in shared["rewards"]
        .as_array()
        .unwrap()
        .iter()
        .zip(min["rewards"].as_array().unwrap())
    {
        assert!(a.as_f64().unwrap() >= b.as_f64().unwrap());
    }
    // Greedy with a comparison against exhaustive search.
    let (code, out4, err) = run(&[
        "select",
        "--candidates",
        s(&c),
        "--reference",
        s(&r),
        "--size",
        "5",
        "--kind",
        "gp-mi",
        "--greedy",
        "--compare",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let g: Value = serde_json::from_str(&out4).unwrap();
    let norm = g["comparison"]["greedy_normalised_mean"].as_f64().unwrap();
    assert!((0.0..=1.0 + 1e-12).contains(&norm), "{norm}");
}

#[test]
fn metrics_json_has_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let (g, _) = npy(dir.path(), "g.npy", &[40, 6], 7);
    let (r, _) = npy(dir.path(), "r.npy", &[60, 6], 8);
    let (code, out, err) = run(&[
        "metrics",
        "--generated",
        s(&g),
        "--reference",
        s(&r),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    for key in ["fid", "precision", "recall", "density", "coverage"] {
        assert!(v[key].as_f64().unwrap().is_finite(), "{key}");
    }
    // Same distribution: small FID, high precision and recall.
    assert!(v["fid"].as_f64().unwrap() < 1.0);
}

/// Exit code 2 and exactly one line on stderr, naming the problem.
fn assert_bad(args: &[&str], needle: &str) {
    let (code, out, err) = run(args);
    assert_eq!(code, 2, "args {args:?}: stdout {out} stderr {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "more than one line: {err}"
    );
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn bad_input_gives_one_line_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (g, _) = npy(d, "g.npy", &[5, 8], 9);
    let (r, _) = npy(d, "r.npy", &[20, 8], 10);
    let (r7, _) = npy(d, "r7.npy", &[20, 7], 11);
    let (g2, _) = npy(d, "g2.npy", &[2, 8], 12);
    let (c3, _) = npy(d, "c3.npy", &[2, 4, 8], 13);
    let (v1, _) = npy(d, "v1.npy", &[8], 14);
    let mut nan = values(40, 15);
    nan[13] = f64::NAN;
    let gnan = d.join("nan.npy");
    // write_npy refuses nothing: NaN must be caught when the features are read.
    write_npy(&gnan, &[5, 8], &nan, false).unwrap();
    let corrupt = d.join("corrupt.npy");
    std::fs::write(&corrupt, b"\x93NUMPY garbage").unwrap();
    let truncated = d.join("trunc.npy");
    let full = std::fs::read(&g).unwrap();
    std::fs::write(&truncated, &full[..full.len() - 16]).unwrap();
    let missing = d.join("missing.npy");
    let txt = d.join("feats.txt");
    std::fs::write(&txt, "1 2 3").unwrap();

    assert_bad(
        &["reward", "--generated", s(&g), "--reference", s(&r7)],
        "dimension",
    );
    assert_bad(
        &["reward", "--generated", s(&gnan), "--reference", s(&r)],
        "non-finite",
    );
    assert_bad(
        &["reward", "--generated", s(&g2), "--reference", s(&r)],
        "at least 3",
    );
    assert_bad(
        &[
            "reward",
            "--generated",
            s(&g),
            "--reference",
            s(&r),
            "--kind",
            "recall",
            "--k",
            "4",
        ],
        "k = 4",
    );
    assert_bad(
        &["reward", "--generated", s(&corrupt), "--reference", s(&r)],
        "corrupt.npy",
    );
    assert_bad(
        &["reward", "--generated", s(&truncated), "--reference", s(&r)],
        "trunc.npy",
    );
    assert_bad(
        &["reward", "--generated", s(&missing), "--reference", s(&r)],
        "cannot read",
    );
    assert_bad(
        &["reward", "--generated", s(&txt), "--reference", s(&r)],
        "unsupported",
    );
    assert_bad(
        &["reward", "--generated", s(&v1), "--reference", s(&r)],
        "2-D",
    );
    assert_bad(
        &[
            "select",
            "--candidates",
            s(&c3),
            "--reference",
            s(&r),
            "--size",
            "5",
        ],
        "O < M",
    );
    assert_bad(
        &[
            "select",
            "--candidates",
            s(&c3),
            "--reference",
            s(&r),
            "--size",
            "3",
            "--kind",
            "recall",
            "--k",
            "2",
            "--greedy",
        ],
        "greedy",
    );
    assert_bad(
        &[
            "metrics",
            "--generated",
            s(&g),
            "--reference",
            s(&r),
            "--k",
            "5",
        ],
        "more than 5",
    );
    assert_bad(
        &[
            "metrics",
            "--generated",
            s(&g),
            "--reference",
            s(&r),
            "--k",
            "0",
        ],
        "k must be",
    );
    assert_bad(
        &[
            "reward",
            "--generated",
            s(&g),
            "--reference",
            s(&r),
            "--kind",
            "gp-mi",
            "--sigma=-1",
        ],
        "sigma",
    );
}
