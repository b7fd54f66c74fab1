//! The native module `divrl._divrl` behind the Python package `divrl`: Diversity Rewards,
//! per-image marginal rewards, subset selection and feature-space metrics from
//! `divrl-reward`, on numpy arrays, with the GIL released while Rust computes.
//!
//! Built by maturin (see `pyproject.toml` and `scripts/test-python.sh`); the pure-Python part
//! (`divrl/__init__.py`, `divrl/torch.py`, the `.pyi` stubs) lives in `python/divrl`.

mod arrays;
mod metrics;
mod reward;
mod select;
mod spec;

use pyo3::prelude::*;

#[pymodule]
fn _divrl(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<reward::PyDiversityReward>()?;
    m.add_function(wrap_pyfunction!(select::select, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::metrics, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
