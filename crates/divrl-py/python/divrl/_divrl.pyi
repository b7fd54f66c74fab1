"""Type stubs of the native module (crates/divrl-py/src)."""

from typing import Any, Literal, Optional, Sequence, Tuple, TypedDict, Union, final

import numpy as np
import numpy.typing as npt
from typing_extensions import Self

__all__ = ["DiversityReward", "select", "metrics", "__version__"]
__version__: str

_Kind = str  # "mmd", "gp-mi" (or "gpmi", "mi") or "recall"; others raise ValueError
_FloatArray = npt.ArrayLike  # float32 or float64, C or Fortran order

@final
class DiversityReward:
    """A Diversity Reward of generated feature sets against a fixed reference set (N x D).

    ``kind``: ``"mmd"`` (polynomial KID kernel, defaults degree 3, gamma 1/D, coef0 1),
    ``"gp-mi"`` (RBF kernel, ``sigma`` defaults to the median pairwise reference distance,
    ``jitter`` on kernel diagonals) or ``"recall"`` (k-NN balls of rank ``k``). The reference
    statistics are computed once here. Raises ``ValueError`` on bad input.
    """

    def __new__(
        cls,
        kind: _Kind,
        reference: _FloatArray,
        *,
        degree: Optional[int] = None,
        gamma: Optional[float] = None,
        coef0: Optional[float] = None,
        sigma: Optional[float] = None,
        jitter: float = 1e-6,
        k: int = 3,
    ) -> Self: ...
    def set_reward(self, generated: _FloatArray) -> float:
        """The set reward r(X_g; X_r) of ``generated`` (M x D)."""
    def individual(self, generated: _FloatArray) -> npt.NDArray[np.float64]:
        """Each image's marginal utility r(X_g) - r(X_g without x_m), shape (M,)."""
    def evaluate(self, generated: _FloatArray) -> Tuple[float, npt.NDArray[np.float64]]:
        """``(set_reward, individual)`` from one pass over the features."""
    @property
    def kind(self) -> Literal["mmd", "gp-mi", "recall"]: ...
    @property
    def kernel(self) -> Optional[dict[str, Any]]:
        """The kernel with defaults resolved (``None`` for recall)."""
    @property
    def k(self) -> int: ...
    @property
    def reference_size(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def min_set_size(self) -> int: ...
    @property
    def min_individual_size(self) -> int: ...

def select(
    candidates: _FloatArray,
    reference: _FloatArray,
    size: int,
    *,
    kind: _Kind = "mmd",
    criterion: Literal["max", "min"] = "max",
    greedy: bool = False,
    degree: Optional[int] = None,
    gamma: Optional[float] = None,
    coef0: Optional[float] = None,
    sigma: Optional[float] = None,
    jitter: float = 1e-6,
    k: int = 3,
) -> Union[
    Tuple[npt.NDArray[np.int64], float],
    Tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]],
]:
    """The best ``size``-subset of each candidate set.

    ``candidates`` O x D gives ``(subset, reward)``; S x O x D gives ``(subsets, rewards)`` of
    shapes (S, size) and (S,). ``reference`` is N x D (shared) or S x N x D (one per set).
    """

class _Metrics(TypedDict):
    fid: float
    precision: float
    recall: float
    density: float
    coverage: float
    inception_score: Optional[float]
    inception_score_std: Optional[float]
    attribute_counts: Optional[list[int]]
    attribute_kl: Optional[float]

def metrics(
    generated: _FloatArray,
    reference: _FloatArray,
    k: int = 3,
    *,
    logits: Optional[_FloatArray] = None,
    is_splits: int = 10,
    attributes: Optional[Sequence[int]] = None,
    num_attributes: Optional[int] = None,
) -> _Metrics:
    """FID, precision, recall, density, coverage; IS with ``logits``; attribute KL with
    ``attributes`` (keys not asked for are ``None``)."""
