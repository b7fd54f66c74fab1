//! numpy arrays in and out. Inputs may be float32 or float64, C- or Fortran-ordered (or any
//! strided view); each is read exactly once, into the row-major f64 buffer that
//! `divrl_reward::Features` owns (the one copy the crate's API needs: a C-ordered float64 array
//! is a plain memcpy, anything else is converted or reordered on the way), so no intermediate
//! numpy copy is made. Other sequences (lists) go through `numpy.asarray` first.

use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// A dense array widened to f64, row-major, with its logical shape.
pub struct Dense {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

/// Copies `obj` (a numpy array, or anything `numpy.asarray` accepts) into a row-major f64
/// buffer. `what` names the argument in error messages.
pub fn read_dense(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Dense> {
    let owned;
    let arr = match obj.cast::<PyUntypedArray>() {
        Ok(a) => a,
        Err(_) => {
            let np = PyModule::import(obj.py(), "numpy")?;
            owned = np.getattr("asarray")?.call1((obj,))?;
            owned
                .cast::<PyUntypedArray>()
                .map_err(|_| PyValueError::new_err(format!("{what}: expected a numpy array")))?
        }
    };
    if let Ok(a) = arr.cast::<PyArrayDyn<f64>>() {
        let a = a.readonly();
        let shape = a.shape().to_vec();
        let data = match a.as_slice() {
            Ok(s) if a.is_c_contiguous() => s.to_vec(),
            _ => a.as_array().iter().copied().collect(),
        };
        return Ok(Dense { shape, data });
    }
    if let Ok(a) = arr.cast::<PyArrayDyn<f32>>() {
        let a = a.readonly();
        let shape = a.shape().to_vec();
        let data = match a.as_slice() {
            Ok(s) if a.is_c_contiguous() => s.iter().map(|&v| f64::from(v)).collect(),
            _ => a.as_array().iter().map(|&v| f64::from(v)).collect(),
        };
        return Ok(Dense { shape, data });
    }
    Err(PyValueError::new_err(format!(
        "{what}: unsupported dtype {} (expected float32 or float64)",
        arr.dtype()
    )))
}

/// [`read_dense`] for a matrix of feature vectors (N × D): the rows and the feature dimension.
pub fn read_matrix(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<(usize, usize, Vec<f64>)> {
    let d = read_dense(obj, what)?;
    match d.shape.as_slice() {
        [n, dim] => Ok((*n, *dim, d.data)),
        other => Err(PyValueError::new_err(format!(
            "{what}: expected a 2-D array (N × D), got shape {other:?}"
        ))),
    }
}

/// Converts a library error into the `ValueError` carrying the CLI's one-line message.
pub fn value_error(err: divrl_reward::Error) -> PyErr {
    PyValueError::new_err(err.to_string().replace('\n', " "))
}
