#!/usr/bin/env python3
"""Per-call time of DiversityReward.individual from Python against the naive numpy
leave-one-out of bench/reward_numpy.py, on the same workload as the Rust criterion bench
(`individual_M5_N50_D2048`): M = 5 generated, N = 50 reference, D = 2048 Inception-like
features. Prints one JSON object (seconds per call).

    python crates/divrl-py/bench/individual.py [--min-time 2]
"""

import argparse
import importlib.util
import json
import pathlib
import platform
import time

import numpy as np

import divrl

ROOT = pathlib.Path(__file__).resolve().parents[3]
spec = importlib.util.spec_from_file_location("reward_numpy", ROOT / "bench" / "reward_numpy.py")
naive = importlib.util.module_from_spec(spec)
spec.loader.exec_module(naive)


def timeit(fn, min_time):
    fn()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_time:
        fn()
        reps += 1
    return (time.perf_counter() - start) / reps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds of timed calls per case")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    feats = lambda *shape: np.maximum(0.4 + 0.3 * rng.standard_normal(shape), 0.0)
    ref, gen = feats(50, 2048), feats(5, 2048)
    gen32 = gen.astype(np.float32)
    sigma = naive.median_sigma(ref)
    naive_fns = {
        "mmd": (naive.mmd_reward, ()),
        "gp-mi": (naive.gpmi_reward, (sigma,)),
        "recall": (naive.recall_reward, ()),
    }
    out = {"python": platform.python_version(), "numpy": np.__version__, "divrl": divrl.__version__}
    for kind, (fn, extra) in naive_fns.items():
        reward = divrl.DiversityReward(kind, ref)
        # Same values as the naive definition (up to rounding), so the timings compare like with like.
        assert np.allclose(reward.individual(gen), naive.individual(fn, gen, ref, *extra), rtol=1e-6, atol=1e-9)
        out[kind] = {
            "divrl_f64_s": timeit(lambda: reward.individual(gen), args.min_time),
            "divrl_f32_s": timeit(lambda: reward.individual(gen32), args.min_time),
            "numpy_naive_s": timeit(lambda: naive.individual(fn, gen, ref, *extra), args.min_time),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
