//! The values the pytest suite checks the Python bindings against, computed here with
//! `divrl-reward` directly on the committed `examples/features/*.npy` (the inputs of README's
//! `divrl reward/select/metrics` commands). They live in `tests/fixtures/expected.json`; this
//! test fails when the crate's results drift from that file by more than 1e-12 (relative).
//!
//! When it was written (2026-12-01), the CLI gave the same numbers to the last bit on the
//! cases checked: `divrl reward --kind gp-mi --json` (diverse.npy), `divrl metrics --json`
//! (generated.npy against heldout.npy) and `divrl select --size 5 --kind recall --json`
//! (candidates.npy), each with `--reference examples/features/reference.npy` where it applies.
//!
//! Regenerate after an intended change of the maths:
//!     DIVRL_WRITE_FIXTURE=1 cargo test --release -p divrl-py --test expectations

use std::path::{Path, PathBuf};

use divrl_reward::io::{read_array, read_features};
use divrl_reward::metrics::{fid, inception_score, kl_to_uniform, prdc};
use divrl_reward::select::{select_sets, select_sets_each, Criterion, Method};
use divrl_reward::{DiversityReward, Features, RewardKind, RewardSpec};
use serde_json::{json, Value};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn features(name: &str) -> Features {
    read_features(&root().join("examples/features").join(name)).unwrap()
}

fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/expected.json")
}

/// The reward variants the fixture covers: each kind with its defaults, and with options.
fn specs() -> Vec<(&'static str, RewardSpec)> {
    vec![
        ("mmd", RewardSpec::new(RewardKind::Mmd)),
        ("gp-mi", RewardSpec::new(RewardKind::GpMi)),
        ("recall", RewardSpec::new(RewardKind::Recall)),
        (
            "mmd-options",
            RewardSpec {
                degree: Some(2),
                gamma: Some(0.01),
                coef0: Some(0.5),
                ..RewardSpec::new(RewardKind::Mmd)
            },
        ),
        (
            "gp-mi-options",
            RewardSpec {
                sigma: Some(5.0),
                jitter: 1e-5,
                ..RewardSpec::new(RewardKind::GpMi)
            },
        ),
        (
            "recall-options",
            RewardSpec {
                k: 2,
                ..RewardSpec::new(RewardKind::Recall)
            },
        ),
    ]
}

fn spec_json(spec: &RewardSpec) -> Value {
    json!({
        "kind": spec.kind.name(),
        "degree": spec.degree,
        "gamma": spec.gamma,
        "coef0": spec.coef0,
        "sigma": spec.sigma,
        "jitter": spec.jitter,
        "k": spec.k,
    })
}

fn rewards_section() -> Value {
    let reference = features("reference.npy");
    let mut out = serde_json::Map::new();
    for (name, spec) in specs() {
        let reward = DiversityReward::new(&spec, reference.clone()).unwrap();
        let mut sets = serde_json::Map::new();
        for file in ["diverse.npy", "collapsed.npy"] {
            let r = reward.evaluate(&features(file)).unwrap();
            sets.insert(
                file.into(),
                json!({"set_reward": r.set_reward, "individual": r.individual}),
            );
        }
        out.insert(
            name.into(),
            json!({"spec": spec_json(&spec), "generated": sets}),
        );
    }
    Value::Object(out)
}

fn select_section() -> Value {
    let cand = read_array(&root().join("examples/features/candidates.npy")).unwrap();
    let (s, o, d) = (cand.shape[0], cand.shape[1], cand.shape[2]);
    let cands = Features::new("candidates", s * o, d, cand.data).unwrap();
    let reference = features("reference.npy");
    let mut out = Vec::new();
    let cases = [
        ("mmd", Criterion::Max, Method::Exhaustive),
        ("mmd", Criterion::Min, Method::Exhaustive),
        ("mmd", Criterion::Max, Method::Greedy),
        ("gp-mi", Criterion::Max, Method::Exhaustive),
        ("gp-mi", Criterion::Max, Method::Greedy),
        ("recall", Criterion::Max, Method::Exhaustive),
    ];
    for (kind, criterion, method) in cases {
        let spec = RewardSpec::new(kind.parse().unwrap());
        let reward = DiversityReward::new(&spec, reference.clone()).unwrap();
        let chosen = select_sets(&reward, &cands, o, 5, criterion, method).unwrap();
        out.push(json!({
            "kind": kind,
            "criterion": if criterion == Criterion::Max { "max" } else { "min" },
            "greedy": method == Method::Greedy,
            "size": 5,
            "reference": "shared",
            "subsets": chosen.iter().map(|c| c.subset.clone()).collect::<Vec<_>>(),
            "rewards": chosen.iter().map(|c| c.reward).collect::<Vec<_>>(),
        }));
    }
    // Per-set references: candidate sets 0..4, set i against reference rows 5i..5i+30.
    let per_set: Vec<DiversityReward> = (0..4)
        .map(|i| {
            DiversityReward::new(
                &RewardSpec::new(RewardKind::GpMi),
                reference.slice_rows(5 * i, 5 * i + 30),
            )
            .unwrap()
        })
        .collect();
    let first4 = cands.slice_rows(0, 4 * o);
    let chosen =
        select_sets_each(&per_set, &first4, o, 4, Criterion::Max, Method::Exhaustive).unwrap();
    out.push(json!({
        "kind": "gp-mi",
        "criterion": "max",
        "greedy": false,
        "size": 4,
        "reference": "per-set: sets 0..4, set i against reference rows 5i..5i+30",
        "subsets": chosen.iter().map(|c| c.subset.clone()).collect::<Vec<_>>(),
        "rewards": chosen.iter().map(|c| c.reward).collect::<Vec<_>>(),
    }));
    Value::Array(out)
}

fn metrics_section() -> Value {
    let generated = features("generated.npy");
    let heldout = features("heldout.npy");
    let mut out = serde_json::Map::new();
    for k in [3usize, 5] {
        let p = prdc(&generated, &heldout, k).unwrap();
        out.insert(
            format!("k{k}"),
            json!({
                "k": k,
                "fid": fid(&generated, &heldout).unwrap(),
                "precision": p.precision,
                "recall": p.recall,
                "density": p.density,
                "coverage": p.coverage,
            }),
        );
    }
    // Inception Score on stand-in logits (the first 10 feature columns) with 10 splits, and the
    // attribute KL of the argmax (first maximum) over the first 5 columns.
    let logits: Vec<f64> = (0..generated.rows())
        .flat_map(|i| generated.row(i)[..10].to_vec())
        .collect();
    let logits = Features::new("logits", generated.rows(), 10, logits).unwrap();
    let (is_mean, is_std) = inception_score(&logits, 10).unwrap();
    let mut counts = vec![0u64; 5];
    for i in 0..generated.rows() {
        let row = &generated.row(i)[..5];
        let mut best = 0;
        for (j, v) in row.iter().enumerate() {
            if *v > row[best] {
                best = j;
            }
        }
        counts[best] += 1;
    }
    out.insert(
        "inception_score".into(),
        json!({"logits": "generated[:, :10]", "splits": 10, "mean": is_mean, "std": is_std}),
    );
    out.insert(
        "attributes".into(),
        json!({
            "labels": "argmax(generated[:, :5], axis=1)",
            "counts": counts,
            "kl": kl_to_uniform(&counts).unwrap(),
        }),
    );
    Value::Object(out)
}

fn expectations() -> Value {
    json!({
        "made_by": "cargo test --release -p divrl-py --test expectations (DIVRL_WRITE_FIXTURE=1 rewrites)",
        "inputs": "examples/features/*.npy",
        "rewards": rewards_section(),
        "select": select_section(),
        "metrics": metrics_section(),
    })
}

/// Equal up to 1e-12 relative (absolute below 1); other values exactly.
fn assert_close(expected: &Value, got: &Value, at: &str) {
    match (expected, got) {
        (Value::Number(a), Value::Number(b)) if a.is_f64() || b.is_f64() => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!(
                (a - b).abs() <= 1e-12 * a.abs().max(1.0),
                "{at}: fixture {a:e}, crate {b:e}"
            );
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{at}: length");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_close(x, y, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            let keys_a: Vec<_> = a.keys().collect();
            let keys_b: Vec<_> = b.keys().collect();
            assert_eq!(keys_a, keys_b, "{at}: keys");
            for (key, x) in a {
                assert_close(x, &b[key], &format!("{at}.{key}"));
            }
        }
        _ => assert_eq!(expected, got, "{at}"),
    }
}

#[test]
fn fixture_matches_the_crate() {
    let got = expectations();
    let path = fixture_path();
    if std::env::var_os("DIVRL_WRITE_FIXTURE").is_some() {
        let text = serde_json::to_string_pretty(&got).unwrap() + "\n";
        std::fs::write(&path, text).unwrap();
        return;
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (write it with DIVRL_WRITE_FIXTURE=1)",
            path.display()
        )
    });
    let expected: Value = serde_json::from_str(&text).unwrap();
    assert_close(&expected, &got, "expected.json");
}
