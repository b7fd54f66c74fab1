"""Diversity Rewards as reward functions for PyTorch RL trainers (ddpo-pytorch and the like).

Pure Python on top of :class:`divrl.DiversityReward`; torch itself is optional: tensors are
recognised by their ``detach``/``cpu``/``numpy`` methods and numpy arrays work as they are.

A ddpo-pytorch reward function has the shape ``reward_fn(images, prompts, metadata) ->
(rewards, info)``. :func:`make_reward_fn` builds one that embeds the images with your feature
network, groups them by prompt (the condition), scores each group as a set against that
condition's reference features and returns each image's marginal utility
``r(X_g) - r(X_g without x)``: the per-image Diversity Reward of the paper's Algorithm 1.
"""

from collections import OrderedDict
from typing import Any, Callable, Dict, Hashable, Mapping, Optional, Sequence, Tuple

import numpy as np

from ._divrl import DiversityReward

__all__ = ["make_reward_fn", "to_numpy"]


def to_numpy(x: Any) -> np.ndarray:
    """A numpy view of ``x``: torch tensors are detached and moved to the CPU (half precision
    and bfloat16 widened to float32), anything else goes through ``numpy.asarray``."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        if str(getattr(x, "dtype", "")) not in ("torch.float32", "torch.float64"):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def make_reward_fn(
    feature_fn: Callable[[Any], Any],
    references_by_condition: Mapping[Any, Any],
    kind: str = "mmd",
    *,
    condition_fn: Optional[Callable[[Any, Any], Hashable]] = None,
    small_groups: str = "raise",
    **reward_options: Any,
) -> Callable[[Any, Sequence[Any], Any], Tuple[np.ndarray, Dict[str, Any]]]:
    """Builds ``reward_fn(images, prompts, metadata) -> (rewards, info)``.

    ``feature_fn(images)`` maps the batch (a tensor or array of B images) to B x D features
    (tensor or array). ``references_by_condition`` maps each condition (by default the prompt
    string) to its N x D reference features; one :class:`DiversityReward` is built per
    condition here, so the reference statistics are computed once. ``kind`` and
    ``reward_options`` (``degree``, ``gamma``, ``coef0``, ``sigma``, ``jitter``, ``k``) are those
    of :class:`DiversityReward`.

    ``condition_fn(prompt, metadata_item)`` picks the condition of one image when it is not the
    prompt itself. Images of one condition form one generated set; a set smaller than the
    reward's ``min_individual_size`` (3 for mmd, 1 for gp-mi, k + 2 for recall) raises
    ``ValueError`` unless ``small_groups="zero"``, which gives its images reward 0.

    ``rewards`` is a float64 array of length B in the order of the images. ``info`` holds
    ``set_reward`` and ``group_size`` per condition, for logging.
    """
    if small_groups not in ("raise", "zero"):
        raise ValueError(f"small_groups must be 'raise' or 'zero', got {small_groups!r}")
    rewards_by_condition = {
        cond: DiversityReward(kind, to_numpy(ref), **reward_options)
        for cond, ref in references_by_condition.items()
    }
    if not rewards_by_condition:
        raise ValueError("references_by_condition is empty: need one reference set per condition")

    def reward_fn(images: Any, prompts: Sequence[Any], metadata: Any = None):
        feats = to_numpy(feature_fn(images))
        if feats.ndim != 2 or feats.shape[0] != len(prompts):
            raise ValueError(
                f"feature_fn returned shape {tuple(feats.shape)} for {len(prompts)} prompts "
                "(expected B x D)"
            )
        meta = list(metadata) if metadata is not None else [None] * len(prompts)
        groups: "OrderedDict[Hashable, list]" = OrderedDict()
        for i, prompt in enumerate(prompts):
            cond = condition_fn(prompt, meta[i]) if condition_fn else prompt
            groups.setdefault(cond, []).append(i)
        out = np.zeros(len(prompts), dtype=np.float64)
        info: Dict[str, Any] = {"set_reward": {}, "group_size": {}}
        for cond, idx in groups.items():
            reward = rewards_by_condition.get(cond)
            if reward is None:
                raise ValueError(f"no reference features for condition {cond!r}")
            info["group_size"][cond] = len(idx)
            if len(idx) < reward.min_individual_size:
                if small_groups == "zero":
                    info["set_reward"][cond] = None
                    continue
                raise ValueError(
                    f"condition {cond!r} has {len(idx)} images in this batch; the {reward.kind} "
                    f"reward needs at least {reward.min_individual_size} per condition "
                    "(sample each prompt several times per batch, or small_groups='zero')"
                )
            set_reward, individual = reward.evaluate(feats[idx])
            out[idx] = individual
            info["set_reward"][cond] = set_reward
        return out, info

    return reward_fn
