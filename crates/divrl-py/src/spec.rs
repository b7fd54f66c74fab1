//! The reward description shared by `DiversityReward` and `select`: a kind name and the
//! kernel options, with the CLI's defaults (`divrl reward --help`).

use divrl_reward::{RewardKind, RewardSpec};
use pyo3::prelude::*;

use crate::arrays::value_error;

/// Builds the spec; an unknown kind is a `ValueError` with the library's message.
pub fn reward_spec(
    kind: &str,
    degree: Option<u32>,
    gamma: Option<f64>,
    coef0: Option<f64>,
    sigma: Option<f64>,
    jitter: f64,
    k: usize,
) -> PyResult<RewardSpec> {
    let kind: RewardKind = kind.parse().map_err(value_error)?;
    Ok(RewardSpec {
        kind,
        degree,
        gamma,
        coef0,
        sigma,
        jitter,
        k,
        ..RewardSpec::new(kind)
    })
}
