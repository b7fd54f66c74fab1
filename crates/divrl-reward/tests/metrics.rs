mod common;

use common::*;
use divrl_reward::metrics::{fid, frechet_distance, inception_score, kl_to_uniform, prdc};
use divrl_reward::Features;
use faer::Mat;
use rand_distr::{Distribution, StandardNormal};

#[test]
fn frechet_distance_matches_closed_forms() {
    // Diagonal covariances: ‖μ₁−μ₂‖² + Σ (√a − √b)².
    let s1 = Mat::from_fn(3, 3, |i, j| if i == j { [1.0, 4.0, 9.0][i] } else { 0.0 });
    let s2 = Mat::from_fn(3, 3, |i, j| if i == j { [4.0, 1.0, 0.25][i] } else { 0.0 });
    let want = (1.0 + 4.0 + 0.0) + (1.0 + 1.0 + 6.25);
    let got = frechet_distance(&[0.0, 1.0, 2.0], &s1, &[1.0, 3.0, 2.0], &s2).unwrap();
    assert_close(got, want, 0.0, 1e-12, "diagonal");
    // Non-commuting 2×2: tr((Σ₁^½ Σ₂ Σ₁^½)^½) = √(tr Σ₁Σ₂ + 2√det Σ₁Σ₂).
    let s1 = Mat::from_fn(2, 2, |i, j| [[2.0, 0.5], [0.5, 1.0]][i][j]);
    let s2 = Mat::from_fn(2, 2, |i, j| [[1.0, -0.3], [-0.3, 3.0]][i][j]);
    let tr12 = 2.0 * 1.0 + 0.5 * -0.3 + 0.5 * -0.3 + 1.0 * 3.0;
    let det12 = (2.0 * 1.0 - 0.25) * (3.0 - 0.09);
    let want = 3.0 + 4.0 - 2.0 * (tr12 + 2.0 * f64::sqrt(det12)).sqrt();
    let got = frechet_distance(&[0.0, 0.0], &s1, &[0.0, 0.0], &s2).unwrap();
    assert_close(got, want, 0.0, 1e-12, "2x2");
    // Identical Gaussians: zero.
    assert!(
        frechet_distance(&[1.0, 2.0], &s1, &[1.0, 2.0], &s1)
            .unwrap()
            .abs()
            < 1e-12
    );
}

#[test]
fn sample_fid_converges_to_the_population_value() {
    // X ~ N(0, I), Y ~ N(μ, diag(s²)) in 4-D: population FID = ‖μ‖² + Σ (1 − s)².
    let mut r = rng(21);
    let (n, d) = (40_000, 4);
    let mu = [0.5, -0.5, 0.0, 1.0];
    let s = [1.0, 2.0, 0.5, 1.5];
    let x = gaussian(&mut r, n, d, 0.0, 1.0);
    let y_data: Vec<f64> = (0..n * d)
        .map(|i| {
            let z: f64 = StandardNormal.sample(&mut r);
            mu[i % d] + s[i % d] * z
        })
        .collect();
    let y = Features::new("y", n, d, y_data).unwrap();
    let want: f64 = mu.iter().map(|m| m * m).sum::<f64>()
        + s.iter().map(|v| (1.0 - v) * (1.0 - v)).sum::<f64>();
    let got = fid(&y, &x).unwrap();
    assert!(
        (got - want).abs() < 0.05,
        "sample FID {got} vs population {want}"
    );
    // Two halves of one distribution: near zero.
    let half = fid(&x.slice_rows(0, n / 2), &x.slice_rows(n / 2, n)).unwrap();
    assert!(half < 0.01, "same-distribution FID {half}");
}

#[test]
fn prdc_on_a_hand_built_line() {
    // Real points 0..4 (1-NN radius 1 each), generated 0.5, 0.6, 2.2, 2.3 (1-NN radius 0.1).
    let real = Features::from_rows(
        "real",
        &[vec![0.0], vec![1.0], vec![2.0], vec![3.0], vec![4.0]],
    )
    .unwrap();
    let fake = Features::from_rows("fake", &[vec![0.5], vec![0.6], vec![2.2], vec![2.3]]).unwrap();
    let m = prdc(&fake, &real, 1).unwrap();
    assert_eq!(m.precision, 1.0); // every fake is within 1 of a real point
    assert_eq!(m.recall, 0.0); // no real point is within 0.1 of a fake one
    assert_eq!(m.density, 2.0); // each fake sits in exactly two real balls
    assert_eq!(m.coverage, 0.8); // the ball around 4 holds no fake point
}

fn brute_prdc(fake: &Features, real: &Features, k: usize) -> [f64; 4] {
    let d = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>();
    let radii = |x: &Features| -> Vec<f64> {
        (0..x.rows())
            .map(|i| {
                let mut v: Vec<f64> = (0..x.rows())
                    .filter(|&j| j != i)
                    .map(|j| d(x.row(i), x.row(j)))
                    .collect();
                v.sort_by(f64::total_cmp);
                v[k - 1]
            })
            .collect()
    };
    let (rr, rf) = (radii(real), radii(fake));
    let (n, m) = (real.rows(), fake.rows());
    let precision = (0..m)
        .filter(|&j| (0..n).any(|i| d(real.row(i), fake.row(j)) <= rr[i]))
        .count() as f64
        / m as f64;
    let recall = (0..n)
        .filter(|&i| (0..m).any(|j| d(real.row(i), fake.row(j)) <= rf[j]))
        .count() as f64
        / n as f64;
    let density = (0..m)
        .map(|j| {
            (0..n)
                .filter(|&i| d(real.row(i), fake.row(j)) < rr[i])
                .count()
        })
        .sum::<usize>() as f64
        / (k * m) as f64;
    let coverage = (0..n)
        .filter(|&i| (0..m).any(|j| d(real.row(i), fake.row(j)) < rr[i]))
        .count() as f64
        / n as f64;
    [precision, recall, density, coverage]
}

#[test]
fn prdc_matches_brute_force_across_blocks() {
    // More than one 256-row block on each side.
    let mut r = rng(22);
    let real = gaussian(&mut r, 600, 5, 0.0, 1.0);
    let fake = gaussian(&mut r, 300, 5, 0.3, 0.7);
    for k in [1, 3, 5] {
        let m = prdc(&fake, &real, k).unwrap();
        let b = brute_prdc(&fake, &real, k);
        for (got, want) in [m.precision, m.recall, m.density, m.coverage]
            .into_iter()
            .zip(b)
        {
            assert_close(got, want, 0.0, 1e-12, "prdc");
        }
    }
}

#[test]
fn collapsed_generator_has_low_recall_and_coverage() {
    let mut r = rng(23);
    let real = gaussian(&mut r, 400, 8, 0.0, 1.0);
    let same = gaussian(&mut r, 400, 8, 0.0, 1.0);
    let good = prdc(&same, &real, 3).unwrap();
    let one = real.row(0).to_vec();
    let collapsed = Features::from_rows("c", &vec![one; 400]).unwrap();
    let bad = prdc(&collapsed, &real, 3).unwrap();
    assert!(good.recall > 0.6 && good.coverage > 0.8, "{good:?}");
    assert!(bad.recall < 0.05 && bad.coverage < 0.05, "{bad:?}");
}

#[test]
fn inception_score_extremes() {
    // Confident and evenly spread over 4 classes: IS = 4. Uniform predictions: IS = 1.
    let mut rows = Vec::new();
    for i in 0..40 {
        let mut v = vec![-1e3; 4];
        v[i % 4] = 0.0;
        rows.push(v);
    }
    let (is, std) = inception_score(&Features::from_rows("l", &rows).unwrap(), 1).unwrap();
    assert_close(is, 4.0, 0.0, 1e-12, "IS");
    assert!(std.abs() < 1e-12);
    // Two splits of the (shuffled) set hold the classes about evenly: IS just below 4.
    let (is2, std2) = inception_score(&Features::from_rows("l", &rows).unwrap(), 2).unwrap();
    assert!(is2 <= 4.0 + 1e-12 && is2 > 3.7, "{is2} ± {std2}");
    let flat = Features::from_rows("l", &vec![vec![0.3; 10]; 20]).unwrap();
    assert_close(
        inception_score(&flat, 1).unwrap().0,
        1.0,
        0.0,
        1e-12,
        "IS flat",
    );
    assert!(inception_score(&flat, 21).is_err());
}

#[test]
fn kl_to_uniform_values() {
    assert_eq!(kl_to_uniform(&[50, 50]).unwrap(), 0.0);
    assert_close(
        kl_to_uniform(&[1, 0]).unwrap(),
        2f64.ln(),
        0.0,
        1e-15,
        "KL one-hot",
    );
    let want = 0.9 * (1.8f64).ln() + 0.1 * (0.2f64).ln();
    assert_close(
        kl_to_uniform(&[90, 10]).unwrap(),
        want,
        0.0,
        1e-15,
        "KL 90/10",
    );
    assert!(kl_to_uniform(&[0, 0]).is_err());
}

#[test]
fn metrics_reject_bad_input() {
    let mut r = rng(24);
    let a = gaussian(&mut r, 3, 4, 0.0, 1.0);
    let b = gaussian(&mut r, 10, 4, 0.0, 1.0);
    assert!(prdc(&a, &b, 3)
        .unwrap_err()
        .to_string()
        .contains("more than 3"));
    assert!(fid(&a.slice_rows(0, 1), &b).is_err());
    assert!(fid(&gaussian(&mut r, 5, 3, 0.0, 1.0), &b)
        .unwrap_err()
        .to_string()
        .contains("dimension"));
}

#[test]
fn inception_score_shuffles_before_splitting() {
    // 1000 confident, noisy predictions over 10 classes, stored class by class (as `divrl
    // sample` writes them).
    let mut r = rng(25);
    let noise = gaussian(&mut r, 1000, 10, 0.0, 1.0);
    let rows: Vec<Vec<f64>> = (0..1000)
        .map(|i| {
            let mut v = noise.row(i).to_vec();
            v[i / 100] += 6.0;
            v
        })
        .collect();
    let sorted = Features::from_rows("sorted", &rows).unwrap();
    let (is_sorted, sd_sorted) = inception_score(&sorted, 10).unwrap();
    // The same images in another random order score the same within the split noise.
    use rand::seq::SliceRandom;
    let mut perm: Vec<usize> = (0..1000).collect();
    perm.shuffle(&mut r);
    let (is_shuffled, sd_shuffled) = inception_score(&sorted.select_rows(&perm), 10).unwrap();
    assert!(
        (is_sorted - is_shuffled).abs() <= 3.0 * sd_sorted.max(sd_shuffled),
        "sorted {is_sorted} ± {sd_sorted}, shuffled {is_shuffled} ± {sd_shuffled}"
    );
    // Splitting in the given order would score each single-class tenth (one split does not
    // depend on the order): IS near 1.
    let in_order: f64 = (0..10)
        .map(|c| {
            inception_score(&sorted.slice_rows(c * 100, (c + 1) * 100), 1)
                .unwrap()
                .0
        })
        .sum::<f64>()
        / 10.0;
    assert!(in_order < 1.5, "{in_order}");
    assert!(
        is_sorted > 4.0 * in_order,
        "{is_sorted} vs in-order splits {in_order}"
    );
}
