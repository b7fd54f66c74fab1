"""divrl: set-based Diversity Rewards for diffusion fine-tuning, from Rust.

Exact f64 implementations (the ``divrl-reward`` Rust crate) of

* :class:`DiversityReward` -- the MMD, GP-MI and Recall rewards of a generated feature set
  against a reference set, and each image's marginal utility (``individual``), with the
  reference side cached across calls;
* :func:`select` -- the most (or least) diverse M-subset of each candidate set;
* :func:`metrics` -- FID, precision, recall, density, coverage, Inception Score and the KL of
  an attribute histogram to uniform.

Arrays are numpy (float32 or float64, any memory order); results are float64. Bad input raises
``ValueError`` with the one-line message the ``divrl`` command-line tool prints.
:mod:`divrl.torch` turns a reward into a ddpo-pytorch style reward function.
"""

from ._divrl import DiversityReward, __version__, metrics, select

__all__ = ["DiversityReward", "select", "metrics", "__version__"]
