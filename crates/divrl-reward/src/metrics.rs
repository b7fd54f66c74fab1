//! Evaluation metrics on feature matrices: FID, improved Precision/Recall (Kynkäänniemi et
//! al.), Density/Coverage (Naeem et al.), Inception Score and the KL of an attribute
//! histogram to uniform.

use faer::{Mat, Par, Side};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::linalg::dot_products;
use crate::{Error, Features, Result};

/// Mean vector and unbiased (N − 1) covariance of the rows.
pub fn mean_and_covariance(x: &Features, what: &str) -> Result<(Vec<f64>, Mat<f64>)> {
    let n = x.rows();
    if n < 2 {
        return Err(Error::too_few(format!(
            "a covariance needs at least 2 {what} samples, got {n}"
        )));
    }
    let d = x.dim();
    let mut mu = vec![0.0; d];
    for i in 0..n {
        for (m, v) in mu.iter_mut().zip(x.row(i)) {
            *m += v;
        }
    }
    mu.iter_mut().for_each(|m| *m /= n as f64);
    let centred = Mat::from_fn(n, d, |i, j| x.row(i)[j] - mu[j]);
    let mut cov = Mat::<f64>::zeros(d, d);
    crate::linalg::matmul_into(
        cov.as_mut(),
        faer::Accum::Replace,
        centred.transpose(),
        centred.as_ref(),
        1.0 / (n - 1) as f64,
        Par::rayon(0),
    );
    let finite =
        mu.iter().all(|v| v.is_finite()) && (0..d).all(|j| (0..d).all(|i| cov[(i, j)].is_finite()));
    if !finite {
        return Err(Error::param(format!(
            "the {what} features are too large: their mean or covariance overflows f64; rescale them"
        )));
    }
    Ok((mu, cov))
}

/// Symmetric square root of a symmetric positive semi-definite matrix (negative
/// eigenvalues from rounding are clamped to zero).
fn sqrtm_psd(a: &Mat<f64>) -> Result<Mat<f64>> {
    let evd = a
        .self_adjoint_eigen(Side::Lower)
        .map_err(|_| Error::param("eigendecomposition of a covariance matrix did not converge"))?;
    let u = evd.U();
    let s = evd.S();
    let d = a.nrows();
    let scaled = Mat::from_fn(d, d, |i, j| u[(i, j)] * s[j].max(0.0).sqrt());
    let mut out = Mat::<f64>::zeros(d, d);
    crate::linalg::matmul_into(
        out.as_mut(),
        faer::Accum::Replace,
        scaled.as_ref(),
        u.transpose(),
        1.0,
        Par::rayon(0),
    );
    Ok(out)
}

/// Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂):
/// ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}.
///
/// The trace term uses the symmetric form, whose eigenvalues are those of Σ₁Σ₂ but which
/// stays real and PSD under rounding.
pub fn frechet_distance(
    mu1: &[f64],
    sigma1: &Mat<f64>,
    mu2: &[f64],
    sigma2: &Mat<f64>,
) -> Result<f64> {
    let d = mu1.len();
    if mu2.len() != d
        || sigma1.nrows() != d
        || sigma1.ncols() != d
        || sigma2.nrows() != d
        || sigma2.ncols() != d
    {
        return Err(Error::Shape {
            what: "Fréchet distance inputs".into(),
            expected: format!("means of length {d} and {d}×{d} covariances"),
            got: format!(
                "means {} and {}, covariances {}×{} and {}×{}",
                d,
                mu2.len(),
                sigma1.nrows(),
                sigma1.ncols(),
                sigma2.nrows(),
                sigma2.ncols()
            ),
        });
    }
    let diff: f64 = mu1.iter().zip(mu2).map(|(a, b)| (a - b) * (a - b)).sum();
    let root1 = sqrtm_psd(sigma1)?;
    let mut tmp = Mat::<f64>::zeros(d, d);
    crate::linalg::matmul_into(
        tmp.as_mut(),
        faer::Accum::Replace,
        root1.as_ref(),
        sigma2.as_ref(),
        1.0,
        Par::rayon(0),
    );
    let mut inner = Mat::<f64>::zeros(d, d);
    crate::linalg::matmul_into(
        inner.as_mut(),
        faer::Accum::Replace,
        tmp.as_ref(),
        root1.as_ref(),
        1.0,
        Par::rayon(0),
    );
    // Symmetrise against rounding before the symmetric eigensolver.
    let inner = Mat::from_fn(d, d, |i, j| 0.5 * (inner[(i, j)] + inner[(j, i)]));
    let eig = inner
        .self_adjoint_eigenvalues(Side::Lower)
        .map_err(|_| Error::param("eigendecomposition in the FID trace term did not converge"))?;
    let tr_sqrt: f64 = eig.iter().map(|&l| l.max(0.0).sqrt()).sum();
    let tr1: f64 = (0..d).map(|i| sigma1[(i, i)]).sum();
    let tr2: f64 = (0..d).map(|i| sigma2[(i, i)]).sum();
    let fd = diff + tr1 + tr2 - 2.0 * tr_sqrt;
    if !fd.is_finite() {
        return Err(Error::param(format!(
            "the Fréchet distance is not finite ({fd}): the means or covariances are too large for f64; rescale the features"
        )));
    }
    Ok(fd.max(0.0))
}

/// FID between the Gaussian fits of two feature sets.
pub fn fid(generated: &Features, reference: &Features) -> Result<f64> {
    reference.check_same_dim(generated, "the reference", "generated")?;
    let (m1, s1) = mean_and_covariance(generated, "generated")?;
    let (m2, s2) = mean_and_covariance(reference, "reference")?;
    frechet_distance(&m1, &s1, &m2, &s2)
}

/// Improved Precision/Recall and Density/Coverage of a generated set against a real one.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prdc {
    /// Share of generated samples inside (≤) the k-NN ball of some real sample.
    pub precision: f64,
    /// Share of real samples inside (≤) the k-NN ball of some generated sample.
    pub recall: f64,
    /// Mean number of real k-NN balls (strict <) containing a generated sample, divided by k.
    pub density: f64,
    /// Share of real samples whose k-NN ball (strict <) contains a generated sample.
    pub coverage: f64,
}

const BLOCK: usize = 256;

/// Squared distance from every row of `x` to its k-th nearest *other* row of `x`.
///
/// # Panics
/// Unless `1 <= k < x.rows()` ([`prdc`] checks this and returns an error instead).
pub fn knn_sq_radii(x: &Features, k: usize) -> Vec<f64> {
    let n = x.rows();
    let sq = x.sq_norms();
    (0..n.div_ceil(BLOCK))
        .into_par_iter()
        .flat_map_iter(|b| {
            let r0 = b * BLOCK;
            let r1 = ((b + 1) * BLOCK).min(n);
            let dots = dot_products(x.as_mat().subrows(r0, r1 - r0), x.as_mat(), Par::Seq);
            let sq = &sq;
            let mut buf = Vec::with_capacity(n);
            (r0..r1)
                .map(|i| {
                    buf.clear();
                    buf.extend(
                        (0..n)
                            .filter(|&j| j != i)
                            .map(|j| (sq[i] + sq[j] - 2.0 * dots[(i - r0, j)]).max(0.0)),
                    );
                    let (_, kth, _) = buf.select_nth_unstable_by(k - 1, f64::total_cmp);
                    *kth
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Precision, Recall, Density and Coverage with one `k` for every k-NN radius.
pub fn prdc(generated: &Features, real: &Features, k: usize) -> Result<Prdc> {
    real.check_same_dim(generated, "the reference", "generated")?;
    if k == 0 {
        return Err(Error::param("k must be at least 1"));
    }
    for (set, what) in [(generated, "generated"), (real, "reference")] {
        if set.rows() <= k {
            return Err(Error::too_few(format!(
                "k-NN metrics with k = {k} need more than {k} {what} samples, got {}",
                set.rows()
            )));
        }
    }
    real.checked_sq_norms("reference")?;
    generated.checked_sq_norms("generated")?;
    let rad_real = knn_sq_radii(real, k);
    let rad_gen = knn_sq_radii(generated, k);
    let (n, m) = (real.rows(), generated.rows());
    let real_sq = real.sq_norms();
    let gen_sq = generated.sq_norms();

    // Walk the real × generated distances in blocks of real rows; collect, per real row,
    // recall/coverage hits, and per generated column, precision hits and density counts.
    struct Partial {
        recall: usize,
        coverage: usize,
        gen_in_real_ball: Vec<bool>,
        density_count: Vec<u32>,
    }
    let partials: Vec<Partial> = (0..n.div_ceil(BLOCK))
        .into_par_iter()
        .map(|b| {
            let r0 = b * BLOCK;
            let r1 = ((b + 1) * BLOCK).min(n);
            let dots = dot_products(
                real.as_mat().subrows(r0, r1 - r0),
                generated.as_mat(),
                Par::Seq,
            );
            let mut p = Partial {
                recall: 0,
                coverage: 0,
                gen_in_real_ball: vec![false; m],
                density_count: vec![0; m],
            };
            for i in r0..r1 {
                let mut recalled = false;
                let mut covered = false;
                for j in 0..m {
                    let d = (real_sq[i] + gen_sq[j] - 2.0 * dots[(i - r0, j)]).max(0.0);
                    if d <= rad_gen[j] {
                        recalled = true;
                    }
                    if d <= rad_real[i] {
                        p.gen_in_real_ball[j] = true;
                    }
                    if d < rad_real[i] {
                        p.density_count[j] += 1;
                        covered = true;
                    }
                }
                p.recall += usize::from(recalled);
                p.coverage += usize::from(covered);
            }
            p
        })
        .collect();
    let mut in_ball = vec![false; m];
    let mut density_total = 0u64;
    let (mut recall, mut coverage) = (0usize, 0usize);
    for p in &partials {
        recall += p.recall;
        coverage += p.coverage;
        for (flag, &hit) in in_ball.iter_mut().zip(&p.gen_in_real_ball) {
            *flag |= hit;
        }
        density_total += p.density_count.iter().map(|&c| u64::from(c)).sum::<u64>();
    }
    Ok(Prdc {
        precision: in_ball.iter().filter(|&&b| b).count() as f64 / m as f64,
        recall: recall as f64 / n as f64,
        density: density_total as f64 / (k as f64 * m as f64),
        coverage: coverage as f64 / n as f64,
    })
}

/// Seed of the fixed permutation [`inception_score`] applies before splitting.
pub const IS_SHUFFLE_SEED: u64 = 2020;

/// A permutation of `0..n` fixed by `seed` (Fisher–Yates driven by SplitMix64).
pub fn fixed_permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        // Multiply-shift maps the 64 random bits to 0..=i (bias below 2^-40 for any n here).
        let j = ((u128::from(next()) * (i as u128 + 1)) >> 64) as usize;
        p.swap(i, j);
    }
    p
}

/// Inception Score from class logits (rows = images): the mean and standard deviation over
/// `splits` equal parts of exp(E_x KL(p(y|x) ‖ p(y))).
///
/// Like torch-fidelity, the images are first put in a fixed pseudo-random order
/// ([`fixed_permutation`] with [`IS_SHUFFLE_SEED`]), so that a set stored class by class (as
/// samplers write them) is not split into single-class parts, whose IS is near 1. The result
/// is deterministic; with one split it does not depend on the order at all.
pub fn inception_score(logits: &Features, splits: usize) -> Result<(f64, f64)> {
    let n = logits.rows();
    if splits == 0 || n < splits {
        return Err(Error::too_few(format!(
            "the Inception Score with {splits} splits needs at least {splits} images, got {n}"
        )));
    }
    let c = logits.dim();
    // Log-softmax per row, stable, in the shuffled order.
    let logp: Vec<Vec<f64>> = fixed_permutation(n, IS_SHUFFLE_SEED)
        .into_iter()
        .map(|i| {
            let row = logits.row(i);
            let mx = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = mx + row.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
            row.iter().map(|v| v - lse).collect()
        })
        .collect();
    let scores: Vec<f64> = (0..splits)
        .map(|s| {
            let a = s * n / splits;
            let b = (s + 1) * n / splits;
            let mut py = vec![0.0; c];
            for row in &logp[a..b] {
                for (p, l) in py.iter_mut().zip(row) {
                    *p += l.exp();
                }
            }
            py.iter_mut().for_each(|p| *p /= (b - a) as f64);
            let kl: f64 = logp[a..b]
                .iter()
                .map(|row| {
                    row.iter()
                        .zip(&py)
                        .map(|(l, p)| {
                            // p(y|x) = 0 contributes nothing (the limit of q ln q); skipping it
                            // also avoids 0 · ∞ for logits of extreme magnitude.
                            let q = l.exp();
                            if *p > 0.0 && q > 0.0 {
                                q * (l - p.ln())
                            } else {
                                0.0
                            }
                        })
                        .sum::<f64>()
                })
                .sum::<f64>()
                / (b - a) as f64;
            kl.exp()
        })
        .collect();
    let mean = scores.iter().sum::<f64>() / splits as f64;
    let var = scores.iter().map(|s| (s - mean) * (s - mean)).sum::<f64>() / splits as f64;
    if !(mean.is_finite() && var.is_finite()) {
        return Err(Error::param(format!(
            "the Inception Score is not finite ({mean} ± {}): the logits are too large for f64",
            var.sqrt()
        )));
    }
    Ok((mean, var.sqrt()))
}

/// KL(P ‖ uniform) in nats of the attribute histogram `counts` (ITI-GEN's convention).
pub fn kl_to_uniform(counts: &[u64]) -> Result<f64> {
    let total: u64 = counts.iter().sum();
    if counts.is_empty() || total == 0 {
        return Err(Error::too_few(
            "an attribute histogram needs at least one sample",
        ));
    }
    let k = counts.len() as f64;
    Ok(counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total as f64;
            p * (p * k).ln()
        })
        .sum())
}
