//! `divrl.DiversityReward`: one reward bound to one reference set, whose reference-side
//! statistics are computed once and reused by every call.

use divrl_reward::{Features, Kernel};
use numpy::{IntoPyArray, PyArray1};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::arrays::{read_matrix, value_error};
use crate::spec::reward_spec;

/// A Diversity Reward of generated feature sets against a fixed reference set.
///
/// ``kind`` is ``"mmd"`` (minus the unbiased MMD² with the polynomial KID kernel
/// ``(gamma x·y + coef0)^degree``, defaults degree 3, gamma 1/D, coef0 1), ``"gp-mi"`` (GP
/// mutual information with the RBF kernel; ``sigma`` defaults to the median pairwise distance of
/// the references; ``jitter`` is added to kernel diagonals) or ``"recall"`` (improved recall of
/// the references by k-NN balls around the generated points, rank ``k``).
///
/// ``reference`` is an N × D float32/float64 array (C or Fortran order). It is copied once; the
/// kernel bandwidth, the reference kernel mean (MMD) and the Cholesky factor of the reference
/// kernel (GP-MI) are computed here and reused by every call. Computations run in exact f64
/// with the GIL released. Bad input raises ``ValueError`` with the message the ``divrl`` CLI
/// prints.
#[pyclass(frozen, module = "divrl", name = "DiversityReward")]
pub struct PyDiversityReward {
    inner: divrl_reward::DiversityReward,
}

impl PyDiversityReward {
    fn generated(&self, generated: &Bound<'_, PyAny>) -> PyResult<(usize, usize, Vec<f64>)> {
        read_matrix(generated, "generated")
    }
}

#[pymethods]
impl PyDiversityReward {
    #[new]
    #[pyo3(signature = (kind, reference, *, degree=None, gamma=None, coef0=None, sigma=None, jitter=1e-6, k=3))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        kind: &str,
        reference: &Bound<'_, PyAny>,
        degree: Option<u32>,
        gamma: Option<f64>,
        coef0: Option<f64>,
        sigma: Option<f64>,
        jitter: f64,
        k: usize,
    ) -> PyResult<Self> {
        let spec = reward_spec(kind, degree, gamma, coef0, sigma, jitter, k)?;
        let (n, d, data) = read_matrix(reference, "reference")?;
        let inner = py
            .detach(|| {
                let reference = Features::new("reference", n, d, data)?;
                divrl_reward::DiversityReward::new(&spec, reference)
            })
            .map_err(value_error)?;
        Ok(PyDiversityReward { inner })
    }

    /// The set reward r(X_g; X_r) of ``generated`` (M × D).
    fn set_reward(&self, py: Python<'_>, generated: &Bound<'_, PyAny>) -> PyResult<f64> {
        let (m, d, data) = self.generated(generated)?;
        py.detach(|| {
            let g = Features::new("generated", m, d, data)?;
            self.inner.set_reward(&g)
        })
        .map_err(value_error)
    }

    /// The marginal utility of every generated image, r(X_g) − r(X_g without x_m), as a float64
    /// array of length M (closed form for MMD and GP-MI, no M-fold recomputation).
    fn individual<'py>(
        &self,
        py: Python<'py>,
        generated: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let (m, d, data) = self.generated(generated)?;
        let out = py
            .detach(|| {
                let g = Features::new("generated", m, d, data)?;
                self.inner.individual(&g)
            })
            .map_err(value_error)?;
        Ok(out.into_pyarray(py))
    }

    /// ``(set_reward, individual)`` from one pass over the features.
    fn evaluate<'py>(
        &self,
        py: Python<'py>,
        generated: &Bound<'py, PyAny>,
    ) -> PyResult<(f64, Bound<'py, PyArray1<f64>>)> {
        let (m, d, data) = self.generated(generated)?;
        let out = py
            .detach(|| {
                let g = Features::new("generated", m, d, data)?;
                self.inner.evaluate(&g)
            })
            .map_err(value_error)?;
        Ok((out.set_reward, out.individual.into_pyarray(py)))
    }

    /// ``"mmd"``, ``"gp-mi"`` or ``"recall"``.
    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind().name()
    }

    /// The kernel with its defaults resolved, as a dict (``None`` for recall).
    #[getter]
    fn kernel<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(kernel) = self.inner.kernel() else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        match kernel {
            Kernel::Polynomial {
                degree,
                gamma,
                coef0,
            } => {
                d.set_item("kernel", "polynomial")?;
                d.set_item("degree", degree)?;
                d.set_item("gamma", gamma)?;
                d.set_item("coef0", coef0)?;
            }
            Kernel::Rbf { sigma } => {
                d.set_item("kernel", "rbf")?;
                d.set_item("sigma", sigma)?;
            }
        }
        Ok(Some(d))
    }

    /// Nearest-neighbour rank of the recall reward.
    #[getter]
    fn k(&self) -> usize {
        self.inner.k()
    }

    /// Number of reference samples N.
    #[getter]
    fn reference_size(&self) -> usize {
        self.inner.reference().rows()
    }

    /// Feature dimension D.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.reference().dim()
    }

    /// Smallest M for which ``set_reward`` is defined.
    #[getter]
    fn min_set_size(&self) -> usize {
        self.inner.min_set_size()
    }

    /// Smallest M for which ``individual`` is defined.
    #[getter]
    fn min_individual_size(&self) -> usize {
        self.inner.min_individual_size()
    }

    fn __repr__(&self) -> String {
        format!(
            "DiversityReward(kind={:?}, reference={}×{})",
            self.inner.kind().name(),
            self.inner.reference().rows(),
            self.inner.reference().dim()
        )
    }
}
