//! The rows of issue 15, as a hostile user met them: every bad value is one `divrl: error:` line
//! and exit 2 (never a panic, a wrapped number or a `null`), a run folder has one owner, and
//! nothing is created in `--out` before the inputs are known to be valid.
mod common;

use common::{divrl, run_err, run_ok, s, tiny_base, write_npy, write_tiny_data};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The shipped example features (`examples/features`).
fn example(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/features")
        .join(name);
    p.to_str().unwrap().to_string()
}

fn err_of(args: &[&str]) -> String {
    run_err(divrl().args(args))
}

#[test]
fn reward_and_select_parameters_out_of_range_are_one_line_errors() {
    let (g, r, c) = (
        example("diverse.npy"),
        example("reference.npy"),
        example("candidates.npy"),
    );
    // Row 1: k beyond every sample count panicked in partition_at_index.
    for k in ["18446744073709551615", "18446744073709551614"] {
        let e = err_of(&[
            "reward",
            "--generated",
            &g,
            "--reference",
            &r,
            "--kind",
            "recall",
            "--k",
            k,
        ]);
        assert!(e.contains(&format!("k = {k}")), "{e}");
    }
    // Row 2: select returned a wrong reward for the same k.
    let e = err_of(&[
        "select",
        "--candidates",
        &c,
        "--reference",
        &r,
        "--size",
        "5",
        "--kind",
        "recall",
        "--k",
        "18446744073709551615",
    ]);
    assert!(e.contains("k = 18446744073709551615"), "{e}");
    // Row 3: kernels that overflow gave null rewards and arbitrary selections.
    for (flag, value) in [("--gamma", "1e308"), ("--coef0", "1e308")] {
        let e = err_of(&[
            "reward",
            "--generated",
            &g,
            "--reference",
            &r,
            flag,
            value,
            "--json",
        ]);
        assert!(e.contains("not finite"), "{e}");
        let e = err_of(&[
            "select",
            "--candidates",
            &c,
            "--reference",
            &r,
            "--size",
            "5",
            flag,
            value,
        ]);
        assert!(e.contains("not finite"), "{e}");
    }
    // Rows 3 and 4: degrees that overflow or wrap through `as i32`.
    for d in ["1000", "2147483647", "2147483648", "4294967295"] {
        let e = err_of(&[
            "reward",
            "--generated",
            &g,
            "--reference",
            &r,
            "--degree",
            d,
        ]);
        assert!(e.contains("degree") && e.contains(d), "{e}");
    }
    let e = err_of(&[
        "reward",
        "--generated",
        &g,
        "--reference",
        &r,
        "--kind",
        "gp-mi",
        "--sigma",
        "1e-200",
    ]);
    assert!(e.contains("sigma"), "{e}");
}

#[test]
fn sample_rejects_zero_images_per_row() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("grid.png");
    let e = run_err(divrl().args([
        "sample",
        "--checkpoint",
        s(&dir.path().join("missing")),
        "--nrow",
        "0",
        "--out",
        s(&out),
        "--device",
        "cpu",
    ]));
    assert!(e.contains("--nrow"), "{e}");
    assert!(!out.exists());
}

/// `n` uint8 28×28 images with a different stripe pattern each.
fn images_npy(path: &Path, n: usize) {
    let px: Vec<u8> = (0..n * 784)
        .map(|i| (((i / 784) * 37 + (i % 28) * 11 + (i / 28 % 28) * 5) % 256) as u8)
        .collect();
    write_npy(path, &[n as u64, 28, 28], &px);
}

#[test]
fn eval_rejects_degenerate_inception_score_splits() {
    let dir = tempfile::tempdir().unwrap();
    let gen = dir.path().join("g.npy");
    images_npy(&gen, 10);
    let args = |splits: &'static str| -> Vec<String> {
        [
            "eval",
            "--generated",
            s(&gen),
            "--reference",
            s(&gen),
            "--no-cache",
            "--device",
            "cpu",
            "--no-progress",
            "--json",
            "--is-splits",
            splits,
        ]
        .map(String::from)
        .to_vec()
    };
    let e = run_err(divrl().args(args("0")));
    assert!(e.contains("--is-splits"), "{e}");
    for splits in ["6", "10", "11"] {
        let e = run_err(divrl().args(args(splits)));
        assert!(
            e.contains("--is-splits") && e.contains("10 generated"),
            "{e}"
        );
    }
    let (out, _) = run_ok(divrl().args(args("5")));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["inception_score"].as_f64().unwrap().is_finite(), "{v}");
    let help = run_ok(divrl().args(["eval", "--help"])).0;
    assert!(help.contains("shuffled with a fixed seed"), "{help}");
}

#[test]
fn a_truncated_image_array_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.npy");
    images_npy(&full, 4);
    let bytes = std::fs::read(&full).unwrap();
    let truncated = dir.path().join("truncated.npy");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let e = run_err(divrl().args([
        "features",
        "--images",
        s(&truncated),
        "--out",
        s(&dir.path().join("f.npy")),
        "--no-cache",
        "--device",
        "cpu",
        "--no-progress",
    ]));
    assert!(e.contains("truncated.npy"), "{e}");
}

#[test]
fn demo_creates_nothing_before_its_inputs_are_valid_and_finds_its_base_from_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A device that does not exist, and a base that does not exist.
    let out1 = d.join("out-device");
    let e = run_err(divrl().args(["demo", "--device", "cuda:99", "--out", s(&out1)]));
    assert!(e.contains("cuda:99"), "{e}");
    let out2 = d.join("out-base");
    let e = run_err(divrl().args([
        "demo",
        "--base",
        s(&d.join("no-such-base")),
        "--device",
        "cpu",
        "--out",
        s(&out2),
    ]));
    assert!(e.contains("no-such-base"), "{e}");
    // From a folder without models/: the default base loads (the failure comes later, from the
    // data set, which the overlay points at a missing file).
    let overlay = d.join("overlay.toml");
    std::fs::write(
        &overlay,
        "data = \"npy:/nonexistent/x.npy,/nonexistent/y.npy\"\ndevice = \"cpu\"\n",
    )
    .unwrap();
    let out3 = d.join("out-cwd");
    let e =
        run_err(
            divrl()
                .current_dir(d)
                .args(["demo", "--config", s(&overlay), "--out", s(&out3)]),
        );
    assert!(!e.contains("base checkpoint"), "{e}");
    assert!(e.contains("/nonexistent/x.npy"), "{e}");
    for out in [out1, out2, out3] {
        assert!(!out.exists(), "{} was created", out.display());
    }
}

fn lock_pid(out: &Path) -> Option<u32> {
    std::fs::read_to_string(out.join(".divrl-lock"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[test]
fn two_finetunes_on_one_out_folder_cannot_both_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = write_tiny_data(d, 300);
    let base = tiny_base(d, &data);
    let out: PathBuf = d.join("run");
    // Checkpoints only at the end, so that the "already holds a run" check, which looks for
    // checkpoints, cannot stop the second run before it meets the lock.
    let finetune = |seed: &str, epochs: &str| {
        let mut c = divrl();
        c.args(["finetune", "--base", s(&base), "--data", &data])
            .args(["--out", s(&out), "--extractor", "pixels"])
            .args(["--ref-per-class", "8", "--images-per-class", "4"])
            .args(["--steps", "4", "--guidance", "2", "--epochs", epochs])
            .args(["--checkpoint-every", "0", "--sample-every", "0"])
            .args(["--seed", seed, "--device", "cpu", "--threads", "1"])
            .arg("--no-progress");
        c
    };
    let mut first = finetune("1", "5000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while lock_pid(&out) != Some(first.id()) {
        assert!(t0.elapsed() < Duration::from_secs(120), "no lock taken");
        assert!(first.try_wait().unwrap().is_none(), "first run ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A different configuration on the same folder, started while the first runs (before the
    // lock, both ran and the later finisher's files won).
    let e = run_err(&mut finetune("2", "2"));
    assert!(e.contains(&format!("pid {}", first.id())), "{e}");
    // The same configuration with --resume: still one owner.
    let e = run_err(finetune("1", "5000").arg("--resume"));
    assert!(e.contains(&format!("pid {}", first.id())), "{e}");
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first run was disturbed"
    );
    first.kill().unwrap();
    first.wait().unwrap();
}

mod fuzz {
    //! The feature verbs on generated hostile inputs: exit 0 with finite JSON, or exit 2 with
    //! exactly one line. A few dozen processes, so a few seconds.
    use super::common::{divrl, s};
    use proptest::prelude::*;
    use serde_json::Value;

    fn all_finite(v: &Value) -> bool {
        match v {
            Value::Null => false,
            Value::Number(n) => n.as_f64().is_some_and(f64::is_finite),
            Value::Array(a) => a.iter().all(all_finite),
            Value::Object(o) => o.values().all(all_finite),
            _ => true,
        }
    }

    fn check(args: &[String]) {
        let out = divrl().args(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => {
                let v: Value = serde_json::from_str(&stdout)
                    .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {stdout}"));
                assert!(all_finite(&v), "{args:?}: non-finite output {stdout}");
            }
            Some(2) => {
                let lines: Vec<&str> = stderr.trim_end().lines().collect();
                assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
                assert!(lines[0].starts_with("divrl: error: "), "{args:?}: {stderr}");
            }
            other => panic!("{args:?}: exit {other:?}: {stderr}"),
        }
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            -2.0f64..2.0,
            (-300i32..300).prop_map(|e| 10f64.powi(e)),
            Just(f64::MAX),
            Just(f64::NAN),
        ]
    }

    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("0".to_string()),
            Just("-1".to_string()),
            Just("1e308".to_string()),
            Just("1e-320".to_string()),
            Just("nan".to_string()),
            Just("inf".to_string()),
            Just("18446744073709551615".to_string()),
            Just("4294967295".to_string()),
            (0u32..6).prop_map(|v| v.to_string()),
            (-12i32..12).prop_map(|e| format!("1e{e}")),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn feature_verbs_exit_0_with_finite_json_or_2_with_one_line(
            rows in 0usize..7,
            ref_rows in 0usize..7,
            gen in prop::collection::vec(value(), 0..21),
            refs in prop::collection::vec(value(), 21),
            kind in prop_oneof![Just("mmd"), Just("gp-mi"), Just("recall")],
            flag in prop_oneof![Just("--k"), Just("--degree"), Just("--gamma"), Just("--coef0"), Just("--sigma"), Just("--jitter")],
            num in number(),
            size in 0usize..7,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            let dim = 3;
            let g = d.join("g.npy");
            let mut gdata = gen.clone();
            gdata.resize(rows * dim, 0.5);
            divrl_reward::io::write_npy(&g, &[rows, dim], &gdata, rows % 2 == 0).unwrap();
            let r = d.join("r.npy");
            divrl_reward::io::write_npy(&r, &[ref_rows, dim], &refs[..ref_rows * dim], false).unwrap();
            let common = |verb: &str, first: &str| -> Vec<String> {
                vec![verb.into(), first.into(), s(&g).into(), "--reference".into(), s(&r).into(), "--json".into()]
            };
            let mut a = common("reward", "--generated");
            a.extend(["--kind".into(), kind.into(), format!("{flag}={num}")]);
            check(&a);
            let mut a = common("select", "--candidates");
            a.extend(["--kind".into(), kind.into(), format!("{flag}={num}"), "--size".into(), size.to_string()]);
            check(&a);
            let mut a = common("metrics", "--generated");
            a.push(format!("--k={num}"));
            check(&a);
        }
    }
}

#[test]
fn rbf_mmd_bandwidth_scale_equals_the_explicit_sigma_and_rejects_bad_scales() {
    let (g, r) = (example("diverse.npy"), example("reference.npy"));
    let base = [
        "reward",
        "--generated",
        &g,
        "--reference",
        &r,
        "--kind",
        "mmd",
    ];
    // The bandwidth `--sigma-scale 1` resolves to, read from the text report.
    let (text, _) = run_ok(divrl().args(base).args(["--mmd-kernel", "rbf"]));
    let sigma: f64 = text
        .split("\"sigma\":")
        .nth(1)
        .and_then(|t| t.split('}').next())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("no RBF sigma in {text}"));
    let set_reward = |extra: &[&str]| -> f64 {
        let (out, _) = run_ok(divrl().args(base).args(extra).arg("--json"));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["set_reward"].as_f64().unwrap()
    };
    let scaled = set_reward(&["--mmd-kernel", "rbf", "--sigma-scale", "2"]);
    let explicit = set_reward(&["--mmd-kernel", "rbf", "--sigma", &(2.0 * sigma).to_string()]);
    assert!(
        (scaled - explicit).abs() <= 1e-12 * explicit.abs().max(1.0),
        "{scaled} vs {explicit}"
    );
    assert!(
        (scaled - set_reward(&[])).abs() > 1e-9,
        "the RBF kernel must differ from the polynomial one"
    );
    for bad in ["0", "nan", "inf"] {
        let e = err_of(
            &[
                base.as_slice(),
                &["--mmd-kernel", "rbf", "--sigma-scale", bad],
            ]
            .concat(),
        );
        assert!(e.contains("sigma_scale"), "{bad}: {e}");
    }
    let e = err_of(&[base.as_slice(), &["--mmd-kernel", "gaussian"]].concat());
    assert!(e.contains("mmd-kernel") || e.contains("gaussian"), "{e}");
}
