//! Brute-force oracles: every reward recomputed from its definition, with no caching, no
//! closed forms and no shared code paths beyond `Kernel::eval` (itself checked against
//! hand-computed values).
#![allow(dead_code)]

use divrl_reward::{Features, Kernel};
use faer::Mat;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `rows × dim` standard normal features, shifted by `shift` and scaled by `scale`.
pub fn gaussian(rng: &mut ChaCha8Rng, rows: usize, dim: usize, shift: f64, scale: f64) -> Features {
    let data = (0..rows * dim)
        .map(|_| {
            shift
                + scale * {
                    let z: f64 = StandardNormal.sample(rng);
                    z
                }
        })
        .collect::<Vec<f64>>();
    Features::new("test", rows, dim, data).unwrap()
}

pub fn uniform(rng: &mut ChaCha8Rng, rows: usize, dim: usize) -> Features {
    let data = (0..rows * dim).map(|_| rng.gen::<f64>()).collect();
    Features::new("test", rows, dim, data).unwrap()
}

/// Relative agreement to `tol`, measured against the largest of |a|, |b| and `scale`.
pub fn assert_close(a: f64, b: f64, scale: f64, tol: f64, what: &str) {
    let s = a.abs().max(b.abs()).max(scale.abs()).max(1e-300);
    assert!(
        (a - b).abs() <= tol * s,
        "{what}: {a} vs {b} (diff {:e}, allowed {:e})",
        (a - b).abs(),
        tol * s
    );
}

pub fn brute_mmd(kernel: &Kernel, g: &Features, r: &Features) -> f64 {
    let (m, n) = (g.rows(), r.rows());
    let mut kgg = 0.0;
    for i in 0..m {
        for j in 0..m {
            if i != j {
                kgg += kernel.eval(g.row(i), g.row(j));
            }
        }
    }
    let mut krr = 0.0;
    for i in 0..n {
        for j in 0..n {
            if i != j {
                krr += kernel.eval(r.row(i), r.row(j));
            }
        }
    }
    let mut kgr = 0.0;
    for i in 0..m {
        for j in 0..n {
            kgr += kernel.eval(g.row(i), r.row(j));
        }
    }
    let (mf, nf) = (m as f64, n as f64);
    -(kgg / (mf * (mf - 1.0)) + krr / (nf * (nf - 1.0)) - 2.0 * kgr / (mf * nf))
}

/// ln |det A| through an LU determinant (no Cholesky involved).
pub fn logdet_lu(a: &Mat<f64>) -> f64 {
    a.determinant().abs().ln()
}

pub fn brute_gp_mi(kernel: &Kernel, jitter: f64, g: &Features, r: &Features) -> f64 {
    let (m, n) = (g.rows(), r.rows());
    let joint: Vec<&[f64]> = (0..m)
        .map(|i| g.row(i))
        .chain((0..n).map(|i| r.row(i)))
        .collect();
    let kj = Mat::from_fn(m + n, m + n, |i, j| {
        kernel.eval(joint[i], joint[j]) + if i == j { jitter } else { 0.0 }
    });
    let kg = Mat::from_fn(m, m, |i, j| {
        kernel.eval(g.row(i), g.row(j)) + if i == j { jitter } else { 0.0 }
    });
    logdet_lu(&kg) - logdet_lu(&kj)
}

fn sqd(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Improved recall: share of `r` within (≤) the k-NN ball of some row of `g`.
pub fn brute_recall(k: usize, g: &Features, r: &Features) -> f64 {
    let m = g.rows();
    let radii: Vec<f64> = (0..m)
        .map(|i| {
            let mut d: Vec<f64> = (0..m)
                .filter(|&j| j != i)
                .map(|j| sqd(g.row(i), g.row(j)))
                .collect();
            d.sort_by(f64::total_cmp);
            d[k - 1]
        })
        .collect();
    let hit = (0..r.rows())
        .filter(|&n| (0..m).any(|i| sqd(g.row(i), r.row(n)) <= radii[i]))
        .count();
    hit as f64 / r.rows() as f64
}

/// All `m`-subsets of `0..o` in lexicographic order.
pub fn subsets(o: usize, m: usize) -> Vec<Vec<usize>> {
    fn rec(o: usize, m: usize, start: usize, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if cur.len() == m {
            out.push(cur.clone());
            return;
        }
        for j in start..o {
            cur.push(j);
            rec(o, m, j + 1, cur, out);
            cur.pop();
        }
    }
    let mut out = Vec::new();
    rec(o, m, 0, &mut Vec::new(), &mut out);
    out
}
