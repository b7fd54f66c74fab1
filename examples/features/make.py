#!/usr/bin/env python3
"""Writes the small example feature files used by README's `divrl reward/select/metrics`
commands (deterministic; rerun with `.venv/bin/python examples/features/make.py`).

The reference set is 50 points from a mixture of 5 equally likely modes in 64-D (a stand-in
for 50 unbiased reference images of one class). `diverse.npy` draws one generated sample from
each mode; `collapsed.npy` draws all five from mode 0, as a mode-collapsed generator would.
`candidates.npy` holds 200 sets of 10 samples from a generator that puts 60% of its mass on
mode 0; `generated.npy` / `heldout.npy` are 1,000 samples from that skewed generator and
1,000 from the true mixture, for `divrl metrics`.
"""
import os

import numpy as np

rng = np.random.default_rng(2024)
D, K = 64, 5
centres = rng.normal(0.0, 1.0, (K, D)) * 2.0


def draw(modes):
    modes = np.asarray(modes)
    return (centres[modes] + 0.6 * rng.normal(size=(len(modes), D))).astype(np.float32)


here = os.path.dirname(os.path.abspath(__file__))
skew = [0.6, 0.1, 0.1, 0.1, 0.1]
files = {
    "reference.npy": draw(np.arange(50) % K),
    "diverse.npy": draw(np.arange(K)),
    "collapsed.npy": draw(np.zeros(K, dtype=int)),
    "candidates.npy": draw(rng.choice(K, 200 * 10, p=skew)).reshape(200, 10, D),
    "generated.npy": draw(rng.choice(K, 1000, p=skew)),
    "heldout.npy": draw(rng.choice(K, 1000)),
}
for name, arr in files.items():
    np.save(os.path.join(here, name), arr)
    print(name, arr.shape)
