//! `divrl.select`: the most (or least) diverse M-subset of each candidate set, as
//! `divrl select` computes it.

use divrl_reward::select::{select_sets, select_sets_each, Criterion, Method, Selection};
use divrl_reward::{DiversityReward, Features, RewardSpec};
use numpy::{IntoPyArray, PyArray1, PyArray2, PyArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::arrays::{read_dense, value_error, Dense};
use crate::spec::reward_spec;

/// The chosen subsets and their rewards, shaped like the candidates: one subset (indices) and
/// one float for O × D candidates, an S × M index array and S rewards for S × O × D.
#[derive(IntoPyObject)]
pub enum Chosen<'py> {
    One((Bound<'py, PyArray1<i64>>, f64)),
    Many((Bound<'py, PyArray2<i64>>, Bound<'py, PyArray1<f64>>)),
}

enum Rewards {
    Shared(DiversityReward),
    PerSet(Vec<DiversityReward>),
}

fn parse_criterion(s: &str) -> PyResult<Criterion> {
    match s {
        "max" => Ok(Criterion::Max),
        "min" => Ok(Criterion::Min),
        _ => Err(PyValueError::new_err(format!(
            "unknown criterion '{s}' (expected max or min)"
        ))),
    }
}

/// Builds the candidate matrix and the reward(s), then selects; runs without the GIL.
fn run(
    spec: &RewardSpec,
    cand: Dense,
    (sets, o, d): (usize, usize, usize),
    refa: Dense,
    size: usize,
    criterion: Criterion,
    method: Method,
) -> divrl_reward::Result<Vec<Selection>> {
    let cands = Features::new("candidates", sets * o, d, cand.data)?;
    let rewards = match refa.shape.as_slice() {
        [n, rd] => Rewards::Shared(DiversityReward::new(
            spec,
            Features::new("reference", *n, *rd, refa.data)?,
        )?),
        [s, n, rd] => {
            let all = Features::new("reference", s * n, *rd, refa.data)?;
            Rewards::PerSet(
                (0..*s)
                    .map(|i| DiversityReward::new(spec, all.slice_rows(i * n, (i + 1) * n)))
                    .collect::<divrl_reward::Result<Vec<_>>>()?,
            )
        }
        _ => unreachable!("reference rank checked before"),
    };
    match &rewards {
        Rewards::Shared(r) => select_sets(r, &cands, o, size, criterion, method),
        Rewards::PerSet(rs) => select_sets_each(rs, &cands, o, size, criterion, method),
    }
}

/// Selects the ``size``-subset of each candidate set with the largest (``criterion="max"``) or
/// smallest (``"min"``) set reward against ``reference``.
///
/// ``candidates``: O × D (one set) or S × O × D (S sets of O). ``reference``: N × D shared by
/// every set, or S × N × D (one reference set per candidate set). Exhaustive search over all
/// C(O, size) subsets (exact; ties keep the lexicographically first) unless ``greedy=True``
/// (greedy growth, lazy where exact; mmd and gp-mi only). The reward options are those of
/// ``DiversityReward``. Returns ``(subset, reward)`` for one set (indices ascending, int64) and
/// ``(subsets, rewards)`` arrays of shapes (S, size) and (S,) for S sets.
#[pyfunction]
#[pyo3(signature = (candidates, reference, size, *, kind="mmd", criterion="max", greedy=false, degree=None, gamma=None, coef0=None, sigma=None, jitter=1e-6, k=3))]
#[allow(clippy::too_many_arguments)]
pub fn select<'py>(
    py: Python<'py>,
    candidates: &Bound<'py, PyAny>,
    reference: &Bound<'py, PyAny>,
    size: usize,
    kind: &str,
    criterion: &str,
    greedy: bool,
    degree: Option<u32>,
    gamma: Option<f64>,
    coef0: Option<f64>,
    sigma: Option<f64>,
    jitter: f64,
    k: usize,
) -> PyResult<Chosen<'py>> {
    let spec = reward_spec(kind, degree, gamma, coef0, sigma, jitter, k)?;
    let criterion = parse_criterion(criterion)?;
    let method = if greedy {
        Method::Greedy
    } else {
        Method::Exhaustive
    };
    let cand = read_dense(candidates, "candidates")?;
    let (sets, o, d, one) = match cand.shape.as_slice() {
        [s, o, d] => (*s, *o, *d, false),
        [o, d] => (1, *o, *d, true),
        other => {
            return Err(PyValueError::new_err(format!(
                "candidates: expected candidates of shape S × O × D (or O × D), got {other:?}"
            )))
        }
    };
    let refa = read_dense(reference, "reference")?;
    match refa.shape.as_slice() {
        [_, _] => {}
        [s, _, _] if *s == sets => {}
        [s, _, _] => {
            return Err(PyValueError::new_err(format!(
                "reference: {s} reference sets for {sets} candidate sets (need one per set, or one N × D shared)"
            )))
        }
        other => {
            return Err(PyValueError::new_err(format!(
                "reference: expected references of shape N × D or S × N × D, got {other:?}"
            )))
        }
    }
    let chosen = py
        .detach(|| run(&spec, cand, (sets, o, d), refa, size, criterion, method))
        .map_err(value_error)?;
    let rewards: Vec<f64> = chosen.iter().map(|s| s.reward).collect();
    let flat: Vec<i64> = chosen
        .iter()
        .flat_map(|s| s.subset.iter().map(|&i| i as i64))
        .collect();
    if one {
        return Ok(Chosen::One((flat.into_pyarray(py), rewards[0])));
    }
    let subsets = flat.into_pyarray(py).reshape([sets, size])?;
    Ok(Chosen::Many((subsets, rewards.into_pyarray(py))))
}
