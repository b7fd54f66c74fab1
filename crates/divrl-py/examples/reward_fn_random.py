#!/usr/bin/env python3
"""divrl.torch.make_reward_fn on random tensors: the call a ddpo-pytorch style trainer makes
after sampling a batch, with a stand-in feature network. Fine-tunes nothing.

    python crates/divrl-py/examples/reward_fn_random.py

Uses torch tensors when torch is installed, numpy arrays otherwise.
"""

import numpy as np

from divrl.torch import make_reward_fn

try:
    import torch
except ImportError:  # the reward function takes numpy arrays as well
    torch = None

B, D = 12, 32
prompts = ["a photo of a doctor"] * 6 + ["a photo of a nurse"] * 6  # 6 samples per prompt

if torch is not None:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(B, 3, 64, 64, generator=gen)  # what the sampler returns, in [0, 1]
    projection = torch.randn(3 * 64 * 64, D, generator=gen) / 64.0

    def feature_fn(x):  # stand-in for CLIP / Inception features
        return x.flatten(1) @ projection

    references = {p: torch.randn(50, D, generator=gen) for p in dict.fromkeys(prompts)}
else:
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(B, 3, 64, 64)).astype(np.float32)
    projection = rng.normal(size=(3 * 64 * 64, D)).astype(np.float32) / 64.0

    def feature_fn(x):
        return x.reshape(len(x), -1) @ projection

    references = {p: rng.normal(size=(50, D)) for p in dict.fromkeys(prompts)}

# One DiversityReward per prompt; the reference statistics are computed here, once.
reward_fn = make_reward_fn(feature_fn, references, kind="gp-mi")
rewards, info = reward_fn(images, prompts, [{} for _ in prompts])

print("backend     ", "torch" if torch is not None else "numpy")
print("rewards     ", np.array2string(rewards, precision=4))
print("set rewards ", {p: round(r, 4) for p, r in info["set_reward"].items()})
assert rewards.shape == (B,) and np.all(np.isfinite(rewards))
