//! Small dense linear-algebra helpers on top of faer: Gram products, squared distances,
//! Cholesky log-determinants and diagonals of inverses.

use faer::linalg::matmul::matmul;
use faer::linalg::solvers::DenseSolveCore;
use faer::{Accum, Mat, MatRef, Par, Side};

use crate::{Error, Result};

/// Clears the upper halves of the AVX registers (`vzeroupper`).
///
/// faer's AVX-512 matrix kernels return with dirty upper register state; on this class of
/// x86 CPU every later SSE instruction (all of libm, and our own scalar f64 code) then pays
/// a transition penalty: measured here, `exp` went from 8 ns to 231 ns a call after one
/// matmul. Call this after every faer kernel on a hot path.
#[inline]
pub fn clear_simd_upper_state() {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx")]
        unsafe fn zero_upper() {
            std::arch::x86_64::_mm256_zeroupper();
        }
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the instruction exists, as just checked, and touches no memory.
            unsafe { zero_upper() }
        }
    }
}

/// `dst = beta·dst + alpha · lhs · rhs`, then [`clear_simd_upper_state`].
pub fn matmul_into(
    dst: faer::MatMut<'_, f64>,
    accum: Accum,
    lhs: MatRef<'_, f64>,
    rhs: MatRef<'_, f64>,
    alpha: f64,
    par: Par,
) {
    matmul(dst, accum, lhs, rhs, alpha, par);
    clear_simd_upper_state();
}

/// `A · Bᵀ` for row-major feature matrices `A` (m×d) and `B` (n×d): the m×n dot products.
pub fn dot_products(a: MatRef<'_, f64>, b: MatRef<'_, f64>, par: Par) -> Mat<f64> {
    let mut out = Mat::<f64>::zeros(a.nrows(), b.nrows());
    matmul_into(out.as_mut(), Accum::Replace, a, b.transpose(), 1.0, par);
    out
}

/// Squared Euclidean distances from dot products and squared norms, clamped at zero
/// (the expansion ‖x‖² + ‖y‖² − 2x·y can dip below zero by rounding).
pub fn sq_dists_from_dots(dots: &Mat<f64>, a_sq: &[f64], b_sq: &[f64]) -> Mat<f64> {
    Mat::from_fn(dots.nrows(), dots.ncols(), |i, j| {
        (a_sq[i] + b_sq[j] - 2.0 * dots[(i, j)]).max(0.0)
    })
}

/// Lower Cholesky factor of a symmetric positive-definite matrix, or [`Error::Singular`].
pub fn cholesky(a: MatRef<'_, f64>, what: &str, jitter: f64) -> Result<Mat<f64>> {
    let llt = a.llt(Side::Lower).map_err(|_| Error::Singular {
        what: what.into(),
        jitter,
    })?;
    let l = llt.L().to_owned();
    clear_simd_upper_state();
    Ok(l)
}

/// `ln det A` from the lower Cholesky factor of `A`.
pub fn logdet_from_cholesky(l: MatRef<'_, f64>) -> f64 {
    (0..l.nrows()).map(|i| 2.0 * l[(i, i)].ln()).sum()
}

/// `ln det A` and the diagonal of `A⁻¹` for a symmetric positive-definite `A`, from one
/// Cholesky factorisation.
pub fn logdet_and_inverse_diag(
    a: MatRef<'_, f64>,
    what: &str,
    jitter: f64,
) -> Result<(f64, Vec<f64>)> {
    let llt = a.llt(Side::Lower).map_err(|_| Error::Singular {
        what: what.into(),
        jitter,
    })?;
    let logdet = logdet_from_cholesky(llt.L());
    let inv = llt.inverse();
    clear_simd_upper_state();
    let diag = (0..a.nrows()).map(|i| inv[(i, i)]).collect();
    Ok((logdet, diag))
}

/// Solves `L X = B` in place for lower-triangular `L`.
pub fn solve_lower_in_place(l: MatRef<'_, f64>, b: &mut Mat<f64>, par: Par) {
    faer::linalg::triangular_solve::solve_lower_triangular_in_place(l, b.as_mut(), par);
    clear_simd_upper_state();
}

/// A Cholesky factor grown one row and column at a time (a bordered Cholesky update).
///
/// Adding index `j` of a fixed symmetric matrix `A` to the selected set `S` appends the row
/// `[yᵀ, √(A_jj − yᵀy)]` with `L y = A_{S,j}`: O(|S|²) work, so enumerating subsets along a
/// search tree costs O(M²) per node instead of a fresh O(M³) factorisation per subset.
/// The pivot `A_jj − yᵀy` is the conditional variance of `j` given `S`, and `ln det A_SS`
/// is the sum of the logs of the pivots.
#[derive(Clone, Debug)]
pub struct BorderedCholesky {
    cap: usize,
    len: usize,
    /// Row-major lower factor, `cap × cap`, first `len` rows valid.
    l: Vec<f64>,
    /// Reciprocals of the diagonal of `l`.
    inv_diag: Vec<f64>,
}

impl BorderedCholesky {
    pub fn new(cap: usize) -> Self {
        BorderedCholesky {
            cap,
            len: 0,
            l: vec![0.0; cap * cap],
            inv_diag: vec![0.0; cap],
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Conditional variance `A_jj − A_{j,S} A_{S,S}⁻¹ A_{S,j}` of index `j` given the
    /// selected set, where `col(s)` returns `A_{S[s], j}` and `diag` is `A_jj`.
    /// Writes the solved row into `y` (length ≥ len).
    #[inline]
    pub fn conditional_variance(
        &self,
        col: impl Fn(usize) -> f64,
        diag: f64,
        y: &mut [f64],
    ) -> f64 {
        let n = self.len;
        let mut acc = 0.0;
        for s in 0..n {
            let row = &self.l[s * self.cap..s * self.cap + s];
            let dot: f64 = row.iter().zip(&y[..s]).map(|(a, b)| a * b).sum();
            let v = (col(s) - dot) * self.inv_diag[s];
            y[s] = v;
            acc += v * v;
        }
        diag - acc
    }

    /// Appends an index whose solved row `y` and conditional variance `var` came from
    /// [`Self::conditional_variance`]. Returns `false` (and changes nothing) if `var ≤ 0`.
    #[inline]
    pub fn push(&mut self, y: &[f64], var: f64) -> bool {
        if var.is_nan() || var <= 0.0 || self.len == self.cap {
            return false;
        }
        let n = self.len;
        self.l[n * self.cap..n * self.cap + n].copy_from_slice(&y[..n]);
        let d = var.sqrt();
        self.l[n * self.cap + n] = d;
        self.inv_diag[n] = 1.0 / d;
        self.len += 1;
        true
    }

    /// Removes the last pushed index.
    pub fn pop(&mut self) {
        self.len -= 1;
    }
}
