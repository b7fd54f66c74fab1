use faer::MatRef;

use crate::{Error, Result};

/// A matrix of feature vectors, one per row, stored row-major in f64.
///
/// Construction checks the shape and that every value is finite, so code downstream
/// never meets a NaN it did not make itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Features {
    rows: usize,
    dim: usize,
    data: Vec<f64>,
}

impl Features {
    /// Wraps `data` (row-major, `rows × dim`). `what` names the matrix in error messages.
    pub fn new(what: &str, rows: usize, dim: usize, data: Vec<f64>) -> Result<Self> {
        if dim == 0 {
            return Err(Error::Shape {
                what: what.into(),
                expected: "a feature dimension of at least 1".into(),
                got: "0".into(),
            });
        }
        if rows.checked_mul(dim) != Some(data.len()) {
            return Err(Error::Shape {
                what: what.into(),
                expected: match rows.checked_mul(dim) {
                    Some(n) => format!("{rows}×{dim} = {n} values"),
                    None => format!("{rows}×{dim} values (more than memory can hold)"),
                },
                got: format!("{} values", data.len()),
            });
        }
        if let Some(pos) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: what.into(),
                row: pos / dim,
                col: pos % dim,
            });
        }
        Ok(Features { rows, dim, data })
    }

    /// Same as [`Features::new`] from f32 values (what feature networks emit).
    pub fn from_f32(what: &str, rows: usize, dim: usize, data: &[f32]) -> Result<Self> {
        Self::new(
            what,
            rows,
            dim,
            data.iter().map(|&v| f64::from(v)).collect(),
        )
    }

    /// Builds from a list of equally long rows.
    pub fn from_rows(what: &str, rows: &[Vec<f64>]) -> Result<Self> {
        let dim = rows.first().map_or(0, Vec::len);
        if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != dim) {
            return Err(Error::Shape {
                what: format!("{what} row {i}"),
                expected: format!("{dim} values"),
                got: format!("{} values", r.len()),
            });
        }
        Self::new(what, rows.len(), dim, rows.concat())
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn as_slice(&self) -> &[f64] {
        &self.data
    }

    pub fn into_vec(self) -> Vec<f64> {
        self.data
    }

    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// A faer view of the matrix (`rows × dim`).
    pub fn as_mat(&self) -> MatRef<'_, f64> {
        MatRef::from_row_major_slice(&self.data, self.rows, self.dim)
    }

    /// Rows `idx` in that order, as a new matrix.
    pub fn select_rows(&self, idx: &[usize]) -> Features {
        let mut data = Vec::with_capacity(idx.len() * self.dim);
        for &i in idx {
            data.extend_from_slice(self.row(i));
        }
        Features {
            rows: idx.len(),
            dim: self.dim,
            data,
        }
    }

    /// Rows `start..end` as a new matrix.
    pub fn slice_rows(&self, start: usize, end: usize) -> Features {
        Features {
            rows: end - start,
            dim: self.dim,
            data: self.data[start * self.dim..end * self.dim].to_vec(),
        }
    }

    /// Squared Euclidean norm of every row.
    pub fn sq_norms(&self) -> Vec<f64> {
        (0..self.rows)
            .map(|i| self.row(i).iter().map(|v| v * v).sum())
            .collect()
    }

    /// Squared row norms, or an error when one is so large (above `f64::MAX / 4`) that squared
    /// distances `‖x‖² + ‖y‖² − 2x·y` could overflow. `what` names the matrix.
    pub fn checked_sq_norms(&self, what: &str) -> Result<Vec<f64>> {
        let sq = self.sq_norms();
        check_sq_norms(&sq, 0, what)?;
        Ok(sq)
    }

    /// Errors unless `other` has the same feature dimension.
    pub fn check_same_dim(&self, other: &Features, what: &str, other_what: &str) -> Result<()> {
        if self.dim != other.dim {
            return Err(Error::Shape {
                what: format!("{other_what} feature dimension"),
                expected: format!("{} (as {what})", self.dim),
                got: other.dim.to_string(),
            });
        }
        Ok(())
    }
}

/// Errors when a squared norm in `sq` (rows `first_row..`) is too large for finite squared
/// distances: `‖x − y‖² ≤ 2‖x‖² + 2‖y‖²` stays finite while every `‖x‖² ≤ f64::MAX / 4`.
pub(crate) fn check_sq_norms(sq: &[f64], first_row: usize, what: &str) -> Result<()> {
    if let Some(i) = sq.iter().position(|v| v.is_nan() || *v > f64::MAX / 4.0) {
        return Err(Error::param(format!(
            "the {what} features are too large for f64 distances (row {} has squared norm {:e}); rescale them",
            first_row + i,
            sq[i]
        )));
    }
    Ok(())
}
