//! `divrl.metrics`: FID, Precision, Recall, Density, Coverage (as `divrl metrics`), the
//! Inception Score from logits and the KL to uniform of an attribute histogram (as `divrl eval`).

use divrl_reward::metrics::{fid, inception_score, kl_to_uniform, prdc};
use divrl_reward::Features;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::arrays::{read_matrix, value_error};

/// Everything computed without the GIL.
struct Report {
    fid: f64,
    prdc: divrl_reward::metrics::Prdc,
    is: Option<(f64, f64)>,
    attributes: Option<(Vec<u64>, f64)>,
}

/// Histogram of attribute labels over `num` values (`divrl eval`'s rules).
fn histogram(labels: &[i64], num: Option<usize>) -> PyResult<Vec<u64>> {
    if let Some(&l) = labels.iter().find(|&&l| l < 0) {
        return Err(PyValueError::new_err(format!(
            "attribute label {l} is negative"
        )));
    }
    let num = num.unwrap_or_else(|| labels.iter().max().map_or(0, |&m| m as usize + 1));
    if num == 0 {
        return Err(PyValueError::new_err(
            "attribute histogram needs at least one attribute value",
        ));
    }
    let mut counts = vec![0u64; num];
    for &l in labels {
        let l = l as usize;
        if l >= num {
            return Err(PyValueError::new_err(format!(
                "attribute label {l} outside 0..{num}"
            )));
        }
        counts[l] += 1;
    }
    Ok(counts)
}

/// Feature-space metrics of ``generated`` (M × D) against ``reference`` (N × D).
///
/// Returns a dict with ``fid``, ``precision``, ``recall``, ``density`` and ``coverage`` (k-NN
/// radii of rank ``k``; precision/recall count points inside or on a ball, density/coverage
/// strictly inside, as the ``divrl metrics`` CLI). With ``logits`` (M × C class logits of the
/// generated images) also ``inception_score`` and ``inception_score_std`` over
/// ``min(is_splits, M)`` splits; with ``attributes`` (one integer label per generated image,
/// values 0..``num_attributes``, default max label + 1) also ``attribute_counts`` and
/// ``attribute_kl`` (KL of the histogram to uniform, nats). Keys not asked for are ``None``.
#[pyfunction]
#[pyo3(signature = (generated, reference, k=3, *, logits=None, is_splits=10, attributes=None, num_attributes=None))]
#[allow(clippy::too_many_arguments)]
pub fn metrics<'py>(
    py: Python<'py>,
    generated: &Bound<'py, PyAny>,
    reference: &Bound<'py, PyAny>,
    k: usize,
    logits: Option<&Bound<'py, PyAny>>,
    is_splits: usize,
    attributes: Option<Vec<i64>>,
    num_attributes: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let (m, d, gdata) = read_matrix(generated, "generated")?;
    let (n, rd, rdata) = read_matrix(reference, "reference")?;
    let logits = logits.map(|l| read_matrix(l, "logits")).transpose()?;
    if let Some(a) = &attributes {
        if a.len() != m {
            return Err(PyValueError::new_err(format!(
                "attributes: expected {m} labels (one per generated image), got {}",
                a.len()
            )));
        }
    }
    let counts = attributes
        .map(|a| histogram(&a, num_attributes))
        .transpose()?;
    let report = py
        .detach(|| -> divrl_reward::Result<Report> {
            let g = Features::new("generated", m, d, gdata)?;
            let r = Features::new("reference", n, rd, rdata)?;
            let p = prdc(&g, &r, k)?;
            let fid = fid(&g, &r)?;
            let is = match logits {
                Some((rows, c, data)) => {
                    let l = Features::new("logits", rows, c, data)?;
                    let splits = is_splits.min(l.rows()).max(1);
                    Some(inception_score(&l, splits)?)
                }
                None => None,
            };
            let attributes = match counts {
                Some(c) => {
                    let kl = kl_to_uniform(&c)?;
                    Some((c, kl))
                }
                None => None,
            };
            Ok(Report {
                fid,
                prdc: p,
                is,
                attributes,
            })
        })
        .map_err(value_error)?;
    let out = PyDict::new(py);
    out.set_item("fid", report.fid)?;
    out.set_item("precision", report.prdc.precision)?;
    out.set_item("recall", report.prdc.recall)?;
    out.set_item("density", report.prdc.density)?;
    out.set_item("coverage", report.prdc.coverage)?;
    out.set_item("inception_score", report.is.map(|v| v.0))?;
    out.set_item("inception_score_std", report.is.map(|v| v.1))?;
    let (counts, kl) = match report.attributes {
        Some((c, kl)) => (Some(c), Some(kl)),
        None => (None, None),
    };
    out.set_item("attribute_counts", counts)?;
    out.set_item("attribute_kl", kl)?;
    Ok(out)
}
