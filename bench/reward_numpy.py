#!/usr/bin/env python3
"""The issue-2 workloads in plain numpy, written the way a user would: every reward from its
definition, individual rewards by naive leave-one-out, selection by scoring every subset.

    .venv/bin/python bench/reward_numpy.py [--sets 20]

Prints one JSON object with seconds per call; compare with `cargo bench -p divrl-reward`
(BENCHMARKS.md lists both). Data: Inception-like non-negative features, like the Rust bench.
"""
import argparse
import itertools
import json
import time

import numpy as np


def poly_kernel(x, y, degree=3, coef0=1.0):
    gamma = 1.0 / x.shape[1]
    return (gamma * x @ y.T + coef0) ** degree


def mmd_reward(g, r):
    m, n = len(g), len(r)
    kgg, krr, kgr = poly_kernel(g, g), poly_kernel(r, r), poly_kernel(g, r)
    return -(
        (kgg.sum() - np.trace(kgg)) / (m * (m - 1))
        + (krr.sum() - np.trace(krr)) / (n * (n - 1))
        - 2.0 * kgr.mean()
    )


def sq_dists(x, y):
    return np.maximum((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T, 0.0)


def median_sigma(r):
    d = np.sqrt(sq_dists(r, r))
    return float(np.median(d[np.triu_indices(len(r), 1)]))


def gpmi_reward(g, r, sigma, jitter=1e-6):
    z = np.concatenate([g, r])
    kj = np.exp(-sq_dists(z, z) / (2 * sigma**2)) + jitter * np.eye(len(z))
    kg = np.exp(-sq_dists(g, g) / (2 * sigma**2)) + jitter * np.eye(len(g))
    return np.linalg.slogdet(kg)[1] - np.linalg.slogdet(kj)[1]


def recall_reward(g, r, k=3):
    dgg = sq_dists(g, g)
    np.fill_diagonal(dgg, np.inf)
    radii = np.sort(dgg, axis=1)[:, k - 1]
    return float((sq_dists(g, r) <= radii[:, None]).any(0).mean())


def individual(reward, g, *args):
    full = reward(g, *args)
    return [full - reward(np.delete(g, i, 0), *args) for i in range(len(g))]


def timeit(fn, min_time=2.0):
    fn()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_time:
        fn()
        reps += 1
    return (time.perf_counter() - start) / reps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", type=int, default=20, help="candidate sets timed for selection (extrapolated to 10,000)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    feats = lambda *shape: np.maximum(0.4 + 0.3 * rng.standard_normal(shape), 0.0)
    ref, gen = feats(50, 2048), feats(5, 2048)
    sigma = median_sigma(ref)
    rewards = {
        "mmd": (mmd_reward, ()),
        "gp-mi": (gpmi_reward, (sigma,)),
        "recall": (recall_reward, ()),
    }
    out = {"numpy": np.__version__, "individual_M5_N50_D2048_s": {}, "select_10000x_C10_5_N50_D2048_s": {}}
    for name, (fn, extra) in rewards.items():
        out["individual_M5_N50_D2048_s"][name] = timeit(lambda: individual(fn, gen, ref, *extra))
    cands = feats(args.sets, 10, 2048)
    subsets = list(itertools.combinations(range(10), 5))
    for name, (fn, extra) in rewards.items():
        start = time.perf_counter()
        for s in range(args.sets):
            max(subsets, key=lambda sub: fn(cands[s][list(sub)], ref, *extra))
        per_set = (time.perf_counter() - start) / args.sets
        out["select_10000x_C10_5_N50_D2048_s"][name] = per_set * 10_000
    out["select_note"] = f"timed on {args.sets} sets, extrapolated linearly to 10,000"
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
