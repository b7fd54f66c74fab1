//! Parameter ranges checked at the boundary (issue 15, rows 1-4): every reward, selection and
//! metric either returns a finite value or a one-line error naming the cause; nothing panics
//! and nothing wraps.

mod common;

use common::*;
use divrl_reward::metrics::{fid, inception_score, prdc};
use divrl_reward::select::{select, Criterion, Method};
use divrl_reward::{DiversityReward, Features, Kernel, RewardKind, RewardSpec};

/// Five generated and four reference points in 3-d, unit scale.
fn small_sets() -> (Features, Features) {
    let mut r = rng(15);
    (
        gaussian(&mut r, 5, 3, 0.0, 1.0),
        gaussian(&mut r, 4, 3, 0.5, 1.0),
    )
}

fn spec(kind: RewardKind) -> RewardSpec {
    RewardSpec::new(kind)
}

/// Every result a reward can produce on `generated`: errors or finite numbers.
fn all_outputs_finite_or_err(reward: &DiversityReward, generated: &Features) -> Option<String> {
    let mut errors = Vec::new();
    match reward.set_reward(generated) {
        Ok(v) => assert!(v.is_finite(), "set reward {v}"),
        Err(e) => errors.push(e.to_string()),
    }
    match reward.evaluate(generated) {
        Ok(o) => {
            assert!(o.set_reward.is_finite(), "{o:?}");
            assert!(o.individual.iter().all(|v| v.is_finite()), "{o:?}");
        }
        Err(e) => errors.push(e.to_string()),
    }
    for e in &errors {
        assert!(!e.contains('\n'), "multi-line error {e:?}");
    }
    errors.pop()
}

#[test]
fn recall_k_beyond_the_sample_count_is_an_error_not_a_panic() {
    let (g, r) = small_sets();
    for k in [usize::MAX, usize::MAX - 1, usize::MAX / 2, 5, 4] {
        let s = RewardSpec {
            k,
            ..spec(RewardKind::Recall)
        };
        let reward = match DiversityReward::new(&s, r.clone()) {
            Ok(rw) => rw,
            Err(e) => {
                assert!(e.to_string().contains("k"), "{e}");
                continue;
            }
        };
        let err = reward
            .evaluate(&g)
            .expect_err("k >= M leaves no k-th neighbour");
        assert!(err.to_string().contains(&format!("k = {k}")), "{err}");
        if k >= 5 {
            let err = reward.set_reward(&g).expect_err("k >= M");
            assert!(err.to_string().contains(&format!("k = {k}")), "{err}");
        }
    }
    // The largest k that fits still works: 5 points, k = 4 for the set reward.
    let reward = DiversityReward::new(
        &RewardSpec {
            k: 4,
            ..spec(RewardKind::Recall)
        },
        r,
    )
    .unwrap();
    assert!(reward.set_reward(&g).unwrap().is_finite());
}

#[test]
fn selection_with_recall_k_beyond_the_subset_size_is_an_error() {
    let mut rg = rng(16);
    let cands = gaussian(&mut rg, 8, 3, 0.0, 1.0);
    let refs = gaussian(&mut rg, 6, 3, 0.0, 1.0);
    for k in [usize::MAX, usize::MAX - 1, 5] {
        let reward = DiversityReward::new(
            &RewardSpec {
                k,
                ..spec(RewardKind::Recall)
            },
            refs.clone(),
        )
        .unwrap();
        let err = select(&reward, &cands, 5, Criterion::Max, Method::Exhaustive)
            .expect_err("subsets of 5 have no k-th neighbour for k >= 5");
        assert!(err.to_string().contains(&format!("k = {k}")), "{err}");
    }
    // k = 4 is the largest that fits subsets of 5, and gives a reward in [0, 1].
    let reward = DiversityReward::new(
        &RewardSpec {
            k: 4,
            ..spec(RewardKind::Recall)
        },
        refs,
    )
    .unwrap();
    let s = select(&reward, &cands, 5, Criterion::Max, Method::Exhaustive).unwrap();
    assert!((0.0..=1.0).contains(&s.reward), "{s:?}");
}

#[test]
fn polynomial_degree_is_bounded_and_never_wraps() {
    assert!(Kernel::polynomial(
        3,
        Some(divrl_reward::kernel::MAX_POLYNOMIAL_DEGREE),
        None,
        None
    )
    .is_ok());
    for d in [
        divrl_reward::kernel::MAX_POLYNOMIAL_DEGREE + 1,
        1000,
        i32::MAX as u32,
        i32::MAX as u32 + 1,
        u32::MAX,
    ] {
        let err = Kernel::polynomial(3, Some(d), None, None).expect_err("degree out of range");
        assert!(err.to_string().contains("degree"), "{err}");
        let (g, r) = small_sets();
        let _ = g;
        let err = DiversityReward::new(
            &RewardSpec {
                degree: Some(d),
                ..spec(RewardKind::Mmd)
            },
            r,
        )
        .expect_err("degree out of range");
        assert!(err.to_string().contains(&d.to_string()), "{err}");
    }
}

#[test]
fn kernel_parameters_that_overflow_the_kernel_matrix_are_errors() {
    let (g, r) = small_sets();
    let cases = [
        RewardSpec {
            gamma: Some(1e308),
            ..spec(RewardKind::Mmd)
        },
        RewardSpec {
            coef0: Some(1e308),
            ..spec(RewardKind::Mmd)
        },
        RewardSpec {
            coef0: Some(1e150),
            degree: Some(3),
            ..spec(RewardKind::Mmd)
        },
        RewardSpec {
            gamma: Some(1e30),
            degree: Some(100),
            ..spec(RewardKind::Mmd)
        },
    ];
    for s in cases {
        let err = DiversityReward::new(&s, r.clone()).expect_err("overflowing kernel");
        let msg = err.to_string();
        assert!(msg.contains("not finite"), "{msg}");
        assert!(msg.contains("gamma") && msg.contains("coef0"), "{msg}");
        let _ = &g;
    }
}

#[test]
fn rbf_bandwidth_whose_square_leaves_f64_is_rejected() {
    for sigma in [1e-200, 1e-170, 1e200, f64::MAX] {
        let err = Kernel::rbf(sigma).expect_err("2σ² is 0 or infinite");
        assert!(err.to_string().contains("sigma"), "{err}");
    }
    assert!(Kernel::rbf(1e-100).is_ok() && Kernel::rbf(1e100).is_ok());
}

#[test]
fn generated_features_that_overflow_the_kernel_are_errors_not_nan() {
    let (_, r) = small_sets();
    let mut rg = rng(17);
    let huge = Features::new(
        "huge",
        5,
        3,
        gaussian(&mut rg, 5, 3, 0.0, 1.0)
            .as_slice()
            .iter()
            .map(|v| v * 1e200)
            .collect(),
    )
    .unwrap();
    for kind in [RewardKind::Mmd, RewardKind::GpMi, RewardKind::Recall] {
        let s = RewardSpec { k: 2, ..spec(kind) };
        let reward = DiversityReward::new(&s, r.clone()).unwrap();
        let err = all_outputs_finite_or_err(&reward, &huge)
            .unwrap_or_else(|| panic!("{kind}: no error on features of magnitude 1e200"));
        assert!(
            err.contains("huge") || err.contains("generated"),
            "{kind}: {err}"
        );
        let sel = select(&reward, &huge, 4, Criterion::Max, Method::Exhaustive);
        assert!(sel.is_err(), "{kind}: {sel:?}");
    }
}

#[test]
fn mmd_sums_that_overflow_are_errors_naming_the_cause() {
    // Every kernel value is finite (≈ 1e307), as is the mean of K_rr over 4 references, but the
    // sums over 5 generated points are not.
    let (g, r) = small_sets();
    let s = RewardSpec {
        degree: Some(1),
        gamma: Some(1e-300),
        coef0: Some(1e307),
        ..spec(RewardKind::Mmd)
    };
    let reward = DiversityReward::new(&s, r).expect("finite kernel matrix");
    let err = all_outputs_finite_or_err(&reward, &g).expect("sums overflow");
    assert!(err.contains("not finite"), "{err}");
    let err = select(&reward, &g, 3, Criterion::Max, Method::Exhaustive).expect_err("overflow");
    assert!(err.to_string().contains("not finite"), "{err}");
    let err = select(&reward, &g, 3, Criterion::Max, Method::Greedy).expect_err("overflow");
    assert!(err.to_string().contains("not finite"), "{err}");
}

#[test]
fn metrics_of_features_that_overflow_are_errors_not_nan() {
    let mut rg = rng(18);
    let real = gaussian(&mut rg, 20, 3, 0.0, 1.0);
    let huge = Features::new(
        "huge",
        20,
        3,
        gaussian(&mut rg, 20, 3, 0.0, 1.0)
            .as_slice()
            .iter()
            .map(|v| v * 1e200)
            .collect(),
    )
    .unwrap();
    let err = fid(&huge, &real).expect_err("covariance overflows");
    assert!(err.to_string().contains("generated"), "{err}");
    let err = prdc(&huge, &real, 3).expect_err("squared distances overflow");
    assert!(err.to_string().contains("generated"), "{err}");
    // Logits of any finite magnitude give a finite Inception Score.
    let rows: Vec<Vec<f64>> = (0..20)
        .map(|i| {
            let mut v = vec![-f64::MAX; 4];
            v[i % 4] = f64::MAX;
            v
        })
        .collect();
    let logits = Features::from_rows("l", &rows).unwrap();
    let (m, s) = inception_score(&logits, 2).unwrap();
    assert!(m.is_finite() && s.is_finite(), "{m} {s}");
    let (m, _) = inception_score(&logits, 1).unwrap();
    assert_close(m, 4.0, 0.0, 1e-9, "IS of extreme logits");
}
