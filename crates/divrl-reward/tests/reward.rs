mod common;

use common::*;
use divrl_reward::{
    median_pairwise_distance, DiversityReward, Features, Kernel, MmdKernel, RewardKind, RewardSpec,
};
use proptest::prelude::*;

const TOL: f64 = 1e-9;

#[test]
fn kernels_match_hand_computed_values() {
    let k = Kernel::polynomial(2, None, None, None).unwrap();
    // (x·y / 2 + 1)^3 with x·y = 1·3 + 2·4 = 11.
    assert_close(
        k.eval(&[1.0, 2.0], &[3.0, 4.0]),
        6.5f64.powi(3),
        0.0,
        1e-15,
        "poly",
    );
    let k = Kernel::rbf(2.0).unwrap();
    // exp(−‖x−y‖² / 8) with ‖x−y‖² = 8.
    assert_close(
        k.eval(&[1.0, 2.0], &[3.0, 4.0]),
        (-1.0f64).exp(),
        0.0,
        1e-15,
        "rbf",
    );
    // The matrix path agrees with direct evaluation.
    let mut r = rng(1);
    let a = gaussian(&mut r, 7, 5, 0.3, 1.0);
    let b = gaussian(&mut r, 4, 5, -0.2, 2.0);
    for kernel in [
        Kernel::polynomial(5, Some(2), Some(0.7), Some(0.5)).unwrap(),
        Kernel::rbf(1.3).unwrap(),
    ] {
        let m = kernel.cross(&a, &b);
        for i in 0..7 {
            for j in 0..4 {
                assert_close(
                    m[(i, j)],
                    kernel.eval(a.row(i), b.row(j)),
                    0.0,
                    1e-12,
                    "cross",
                );
            }
        }
    }
}

#[test]
fn median_heuristic_is_the_median_pairwise_distance() {
    // Points on a line at 0, 1, 3, 7: distances 1, 3, 7, 2, 6, 4 -> sorted 1 2 3 4 6 7 -> median 3.5.
    let x = Features::from_rows("x", &[vec![0.0], vec![1.0], vec![3.0], vec![7.0]]).unwrap();
    assert_eq!(median_pairwise_distance(&x).unwrap(), 3.5);
    // Odd number of pairs (3 points): distances 1, 3, 2 -> median 2.
    let x = Features::from_rows("x", &[vec![0.0], vec![1.0], vec![3.0]]).unwrap();
    assert_eq!(median_pairwise_distance(&x).unwrap(), 2.0);
}

fn check_against_brute(kind: RewardKind, m: usize, n: usize, d: usize, seed: u64) {
    check_spec_against_brute(RewardSpec::new(kind), m, n, d, seed)
}

fn check_spec_against_brute(spec: RewardSpec, m: usize, n: usize, d: usize, seed: u64) {
    let kind = spec.kind;
    let mut r = rng(seed);
    let g = gaussian(&mut r, m, d, 0.5, 1.0);
    let x = gaussian(&mut r, n, d, 0.0, 1.0);
    let reward = DiversityReward::new(&spec, x.clone()).unwrap();
    let out = reward.evaluate(&g).unwrap();
    let brute = |set: &Features| match kind {
        RewardKind::Mmd => brute_mmd(&reward.kernel().unwrap(), set, &x),
        RewardKind::GpMi => brute_gp_mi(&reward.kernel().unwrap(), spec.jitter, set, &x),
        RewardKind::Recall => brute_recall(spec.k, set, &x),
    };
    let full = brute(&g);
    assert_close(out.set_reward, full, 0.0, TOL, "set reward");
    assert_close(
        reward.set_reward(&g).unwrap(),
        full,
        0.0,
        TOL,
        "set_reward()",
    );
    assert_eq!(out.individual.len(), m);
    for (i, &ind) in out.individual.iter().enumerate() {
        let rest: Vec<usize> = (0..m).filter(|&j| j != i).collect();
        let loo = full - brute(&g.select_rows(&rest));
        assert_close(
            ind,
            loo,
            full,
            TOL,
            &format!("{kind} individual reward {i}"),
        );
    }
}

#[test]
fn mmd_matches_brute_force() {
    check_against_brute(RewardKind::Mmd, 5, 50, 64, 2);
    check_against_brute(RewardKind::Mmd, 3, 2, 3, 3);
    check_against_brute(RewardKind::Mmd, 12, 7, 16, 4);
}

#[test]
fn mmd_with_the_rbf_kernel_matches_brute_force() {
    for (scale, m, n, d, seed) in [
        (1.0, 5, 50, 64, 12),
        (0.5, 3, 2, 3, 13),
        (2.0, 12, 7, 16, 14),
    ] {
        let spec = RewardSpec {
            mmd_kernel: MmdKernel::Rbf,
            sigma_scale: scale,
            ..RewardSpec::new(RewardKind::Mmd)
        };
        check_spec_against_brute(spec, m, n, d, seed);
    }
}

#[test]
fn sigma_scale_multiplies_the_median_bandwidth_unless_sigma_is_given() {
    let x = Features::from_rows("x", &[vec![0.0], vec![1.0], vec![3.0], vec![7.0]]).unwrap();
    for kind in [RewardKind::Mmd, RewardKind::GpMi] {
        let spec = RewardSpec {
            mmd_kernel: MmdKernel::Rbf,
            sigma_scale: 2.0,
            ..RewardSpec::new(kind)
        };
        let r = DiversityReward::new(&spec, x.clone()).unwrap();
        assert_eq!(r.kernel(), Some(Kernel::Rbf { sigma: 7.0 }), "{kind}");
        let fixed = RewardSpec {
            sigma: Some(0.3),
            ..spec
        };
        let r = DiversityReward::new(&fixed, x.clone()).unwrap();
        assert_eq!(r.kernel(), Some(Kernel::Rbf { sigma: 0.3 }), "{kind}");
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = DiversityReward::new(
                &RewardSpec {
                    sigma_scale: bad,
                    ..spec.clone()
                },
                x.clone(),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("sigma_scale"), "{e}");
        }
    }
    // The polynomial MMD kernel ignores the bandwidth settings.
    let poly = RewardSpec {
        sigma_scale: 2.0,
        ..RewardSpec::new(RewardKind::Mmd)
    };
    let r = DiversityReward::new(&poly, x).unwrap();
    assert!(matches!(r.kernel(), Some(Kernel::Polynomial { .. })));
}

#[test]
fn gp_mi_matches_brute_force() {
    check_against_brute(RewardKind::GpMi, 5, 12, 8, 5);
    check_against_brute(RewardKind::GpMi, 1, 6, 4, 6);
    check_against_brute(RewardKind::GpMi, 9, 20, 32, 7);
}

#[test]
fn recall_matches_brute_force() {
    check_against_brute(RewardKind::Recall, 5, 50, 8, 8);
    check_against_brute(RewardKind::Recall, 9, 30, 3, 9);
}

#[test]
fn individual_gp_mi_rewards_are_non_negative() {
    // Conditioning on more references can only shrink a conditional variance, so adding a
    // generated sample never lowers the GP mutual information (paper §4.2.1, monotone F).
    let mut r = rng(10);
    let x = gaussian(&mut r, 30, 6, 0.0, 1.0);
    let reward = DiversityReward::new(&RewardSpec::new(RewardKind::GpMi), x).unwrap();
    for s in 0..20 {
        let g = gaussian(&mut rng(100 + s), 5, 6, 0.3, 1.5);
        for v in reward.individual(&g).unwrap() {
            assert!(v >= -1e-12, "negative marginal utility {v}");
        }
    }
}

#[test]
fn diverse_sets_beat_collapsed_sets() {
    // References spread over two modes; a generated set covering both must score higher than
    // one collapsed onto a single mode, for every reward.
    let mut r = rng(11);
    let mut rows = Vec::new();
    for i in 0..40 {
        let c = if i % 2 == 0 { 3.0 } else { -3.0 };
        rows.push(vec![
            c + 0.3 * (i as f64 / 40.0),
            0.2 * ((i * 7 % 11) as f64 / 11.0),
        ]);
    }
    let x = Features::from_rows("ref", &rows).unwrap();
    let both = Features::from_rows(
        "both",
        &[
            vec![3.0, 0.0],
            vec![-3.0, 0.1],
            vec![3.1, 0.1],
            vec![-2.9, 0.0],
            vec![3.2, 0.05],
            vec![-3.1, 0.08],
        ],
    )
    .unwrap();
    let one = Features::from_rows(
        "one",
        &[
            vec![3.0, 0.0],
            vec![3.05, 0.1],
            vec![3.1, 0.1],
            vec![2.9, 0.0],
            vec![3.2, 0.05],
            vec![3.15, 0.08],
        ],
    )
    .unwrap();
    let _ = &mut r;
    for kind in [RewardKind::Mmd, RewardKind::GpMi, RewardKind::Recall] {
        let reward = DiversityReward::new(&RewardSpec::new(kind), x.clone()).unwrap();
        let (a, b) = (
            reward.set_reward(&both).unwrap(),
            reward.set_reward(&one).unwrap(),
        );
        assert!(
            a > b,
            "{kind}: two-mode set {a} should beat one-mode set {b}"
        );
    }
}

#[test]
fn bad_input_is_rejected_with_a_message() {
    let mut r = rng(12);
    let x = gaussian(&mut r, 10, 4, 0.0, 1.0);
    let mmd = DiversityReward::new(&RewardSpec::new(RewardKind::Mmd), x.clone()).unwrap();
    let wrong_dim = gaussian(&mut r, 5, 3, 0.0, 1.0);
    assert!(mmd
        .evaluate(&wrong_dim)
        .unwrap_err()
        .to_string()
        .contains("dimension"));
    let two = gaussian(&mut r, 2, 4, 0.0, 1.0);
    assert!(mmd.set_reward(&two).is_ok());
    assert!(mmd
        .evaluate(&two)
        .unwrap_err()
        .to_string()
        .contains("at least 3"));
    let recall = DiversityReward::new(&RewardSpec::new(RewardKind::Recall), x.clone()).unwrap();
    let four = gaussian(&mut r, 4, 4, 0.0, 1.0);
    assert!(recall
        .evaluate(&four)
        .unwrap_err()
        .to_string()
        .contains("k = 3"));
    assert!(DiversityReward::new(&RewardSpec::new(RewardKind::Mmd), x.select_rows(&[0])).is_err());
    let nan = Features::new("gen", 1, 2, vec![1.0, f64::NAN]).unwrap_err();
    assert!(nan.to_string().contains("NaN"));
    // Exact duplicates with no jitter: singular, reported, not a panic.
    let dup =
        Features::from_rows("dup", &[vec![1.0, 0.0], vec![1.0, 0.0], vec![0.0, 1.0]]).unwrap();
    let refs =
        Features::from_rows("ref", &[vec![0.0, 0.0], vec![1.0, 1.0], vec![2.0, 0.0]]).unwrap();
    let spec = RewardSpec {
        kind: RewardKind::GpMi,
        jitter: 0.0,
        ..Default::default()
    };
    let gp = DiversityReward::new(&spec, refs).unwrap();
    assert!(gp
        .evaluate(&dup)
        .unwrap_err()
        .to_string()
        .contains("not positive definite"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]
    #[test]
    fn individual_rewards_equal_leave_one_out(
        m in 3usize..9, n in 2usize..14, d in 1usize..10, seed in 0u64..1_000_000,
        kind in prop_oneof![Just(RewardKind::Mmd), Just(RewardKind::GpMi), Just(RewardKind::Recall)],
    ) {
        let (m, n) = if kind == RewardKind::Recall { (m.max(5), n) } else { (m, n) };
        check_against_brute(kind, m, n, d, seed);
    }
}
