//! Kernels on feature vectors and the median bandwidth heuristic.

use faer::{Mat, Par};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::linalg::{dot_products, sq_dists_from_dots};
use crate::{Error, Features, Result};

/// Largest polynomial kernel degree accepted. Beyond it `(γ x·y + c0)^d` is 0, 1 or overflows for
/// practically every feature pair, so the reward says nothing; the bound also keeps the degree
/// far inside `i32`, the exponent type of `f64::powi`.
pub const MAX_POLYNOMIAL_DEGREE: u32 = 100;

/// A positive-definite kernel on feature vectors.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kernel", rename_all = "kebab-case")]
pub enum Kernel {
    /// `k(x, y) = (γ x·y + c0)^d` (the KID kernel with `γ = 1/D`, `c0 = 1`, `d = 3`).
    Polynomial { degree: u32, gamma: f64, coef0: f64 },
    /// `k(x, y) = exp(−‖x − y‖² / (2σ²))`.
    Rbf { sigma: f64 },
}

impl Kernel {
    /// The KID polynomial kernel for dimension `dim`, with optional overrides.
    pub fn polynomial(
        dim: usize,
        degree: Option<u32>,
        gamma: Option<f64>,
        coef0: Option<f64>,
    ) -> Result<Self> {
        let degree = degree.unwrap_or(3);
        let gamma = gamma.unwrap_or(1.0 / dim as f64);
        let coef0 = coef0.unwrap_or(1.0);
        if !(1..=MAX_POLYNOMIAL_DEGREE).contains(&degree) {
            return Err(Error::param(format!(
                "polynomial kernel degree must be in 1..={MAX_POLYNOMIAL_DEGREE}, got {degree}"
            )));
        }
        if !(gamma.is_finite() && gamma > 0.0) {
            return Err(Error::param(format!(
                "polynomial kernel gamma must be a positive number, got {gamma}"
            )));
        }
        if !(coef0.is_finite() && coef0 >= 0.0) {
            return Err(Error::param(format!(
                "polynomial kernel coef0 must be a non-negative number, got {coef0}"
            )));
        }
        Ok(Kernel::Polynomial {
            degree,
            gamma,
            coef0,
        })
    }

    /// The RBF kernel with bandwidth `sigma`. `2σ²` must be a positive normal f64 (roughly
    /// `1e-154 < σ < 1e154`), or every kernel value would be 0/0, 0 or 1.
    pub fn rbf(sigma: f64) -> Result<Self> {
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(Error::param(format!(
                "RBF bandwidth sigma must be a positive number, got {sigma}"
            )));
        }
        if !(2.0 * sigma * sigma).is_normal() {
            return Err(Error::param(format!(
                "RBF bandwidth sigma = {sigma:e} is out of range: 2σ² must be a positive finite f64 (about 1e-154 < sigma < 1e154)"
            )));
        }
        Ok(Kernel::Rbf { sigma })
    }

    /// The kernel and its parameters, for messages.
    pub fn describe(&self) -> String {
        match *self {
            Kernel::Polynomial {
                degree,
                gamma,
                coef0,
            } => format!("polynomial kernel (degree {degree}, gamma {gamma:e}, coef0 {coef0:e})"),
            Kernel::Rbf { sigma } => format!("RBF kernel (sigma {sigma:e})"),
        }
    }

    /// What to change when this kernel gives non-finite values.
    pub(crate) fn overflow_hint(&self) -> &'static str {
        match self {
            Kernel::Polynomial { .. } => {
                "lower --gamma, --coef0 or --degree, or rescale the features"
            }
            Kernel::Rbf { .. } => "change --sigma or rescale the features",
        }
    }

    /// Errors unless every entry of the kernel matrix `m` (between `what`) is finite.
    pub(crate) fn check_finite(&self, m: &Mat<f64>, what: &str) -> Result<()> {
        for j in 0..m.ncols() {
            for i in 0..m.nrows() {
                if !m[(i, j)].is_finite() {
                    return Err(Error::param(format!(
                        "the {} is not finite on {what} (entry {i}, {j} is {}): {}",
                        self.describe(),
                        m[(i, j)],
                        self.overflow_hint()
                    )));
                }
            }
        }
        Ok(())
    }
    /// The kernel value from a dot product `x·y` and a squared distance `‖x − y‖²`
    /// (each kernel uses one of them).
    #[inline]
    pub fn from_parts(&self, dot: f64, sq_dist: f64) -> f64 {
        match *self {
            Kernel::Polynomial {
                degree,
                gamma,
                coef0,
            } => (gamma * dot + coef0).powi(degree as i32),
            Kernel::Rbf { sigma } => (-sq_dist / (2.0 * sigma * sigma)).exp(),
        }
    }

    /// `k(x, y)` evaluated directly from the two vectors.
    pub fn eval(&self, x: &[f64], y: &[f64]) -> f64 {
        match *self {
            Kernel::Polynomial { .. } => {
                self.from_parts(x.iter().zip(y).map(|(a, b)| a * b).sum(), 0.0)
            }
            Kernel::Rbf { .. } => {
                self.from_parts(0.0, x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum())
            }
        }
    }

    /// The kernel matrix `K[i, j] = k(a_i, b_j)` given the dot products `a·bᵀ` and the
    /// squared row norms of both sides.
    pub fn from_dots(&self, dots: &Mat<f64>, a_sq: &[f64], b_sq: &[f64]) -> Mat<f64> {
        match self {
            Kernel::Polynomial { .. } => Mat::from_fn(dots.nrows(), dots.ncols(), |i, j| {
                self.from_parts(dots[(i, j)], 0.0)
            }),
            Kernel::Rbf { .. } => {
                let d2 = sq_dists_from_dots(dots, a_sq, b_sq);
                Mat::from_fn(d2.nrows(), d2.ncols(), |i, j| {
                    self.from_parts(0.0, d2[(i, j)])
                })
            }
        }
    }

    /// The kernel matrix between the rows of `a` and the rows of `b`.
    pub fn cross(&self, a: &Features, b: &Features) -> Mat<f64> {
        let dots = dot_products(a.as_mat(), b.as_mat(), Par::Seq);
        self.from_dots(&dots, &a.sq_norms(), &b.sq_norms())
    }
}

/// Median of the pairwise Euclidean distances between distinct rows (the mean of the two
/// middle values when the number of pairs is even). Needs at least two rows.
pub fn median_pairwise_distance(x: &Features) -> Result<f64> {
    let n = x.rows();
    if n < 2 {
        return Err(Error::too_few(format!(
            "the median-distance bandwidth needs at least 2 reference samples, got {n}"
        )));
    }
    let mut d: Vec<f64> = (0..n)
        .into_par_iter()
        .flat_map_iter(|i| {
            let xi = x.row(i);
            (i + 1..n).map(move |j| {
                let s: f64 = xi
                    .iter()
                    .zip(x.row(j))
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum();
                s.sqrt()
            })
        })
        .collect();
    let len = d.len();
    let (_, hi, _) = d.select_nth_unstable_by(len / 2, f64::total_cmp);
    let hi = *hi;
    let med = if len % 2 == 1 {
        hi
    } else {
        let lo = d[..len / 2]
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        0.5 * (lo + hi)
    };
    if med.is_nan() || med <= 0.0 {
        return Err(Error::param(
            "the median pairwise distance of the reference features is 0 (mostly duplicate references); pass --sigma",
        ));
    }
    Ok(med)
}
