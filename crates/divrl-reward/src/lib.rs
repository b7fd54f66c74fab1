//! Set-based Diversity Rewards (MMD, GP-MI, Recall), per-image marginal-utility rewards,
//! post-sampling subset selection and feature-space metrics (FID, Precision/Recall,
//! Density/Coverage, Inception Score, attribute KL).
//!
//! Everything here is exact f64 maths on feature matrices, free of any deep-learning
//! dependency. Definitions follow the paper (Miao et al., CVPR 2024) as fixed by
//! `shared/DESIGN.md`:
//!
//! * MMD reward: minus the unbiased MMD² with the polynomial (KID) kernel
//!   `k(x, y) = (γ x·y + c0)^d`, defaults `d = 3`, `γ = 1/D`, `c0 = 1`.
//! * GP-MI reward: `ln det(K_gg + λI) − ln det(K_joint + λI)` with the RBF kernel whose
//!   bandwidth is the median pairwise distance of the *reference* features.
//! * Recall reward: improved recall (Kynkäänniemi et al.) of the reference set with respect
//!   to k-NN balls around the generated points.
//!
//! The reference side of each reward is computed once ([`DiversityReward::new`]) and reused
//! for every generated set scored against it.

mod error;
mod features;
pub mod io;
pub mod kernel;
pub mod linalg;
pub mod metrics;
mod reward;
pub mod select;
pub mod within_class;

pub use error::{Error, Result};
pub use features::Features;
pub use kernel::{median_pairwise_distance, Kernel};
pub use reward::{DiversityReward, MmdKernel, RewardKind, RewardOutput, RewardSpec};
