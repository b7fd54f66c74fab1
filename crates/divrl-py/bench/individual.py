#!/usr/bin/env python3
"""Per-call time of DiversityReward.individual from Python, from Rust (the same arrays, no
Python) and of the naive numpy leave-one-out of bench/reward_numpy.py: M = 5 generated, N = 50
reference, D = 2048 Inception-like features (the workload of the criterion bench
`individual_M5_N50_D2048`). The three are measured in interleaved rounds, so that a busy
machine slows them alike; prints one JSON object with the median seconds per call.

    cargo build --release -p divrl-py --example individual_timing
    python crates/divrl-py/bench/individual.py [--rounds 5] [--min-time 0.5]
"""

import argparse
import importlib.util
import json
import pathlib
import platform
import statistics
import subprocess
import tempfile
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
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds of timed calls per case and round")
    ap.add_argument("--rust", default=str(ROOT / "target" / "release" / "examples" / "individual_timing"))
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
    out = {"python": platform.python_version(), "numpy": np.__version__, "divrl": divrl.__version__,
           "rounds": args.rounds, "min_time_s": args.min_time}
    with tempfile.TemporaryDirectory() as tmp:
        ref_path, gen_path = f"{tmp}/ref.npy", f"{tmp}/gen.npy"
        np.save(ref_path, ref)
        np.save(gen_path, gen)
        for kind, (fn, extra) in naive_fns.items():
            reward = divrl.DiversityReward(kind, ref)
            # Same values as the naive definition (up to rounding): like is compared with like.
            assert np.allclose(reward.individual(gen), naive.individual(fn, gen, ref, *extra), rtol=1e-6, atol=1e-9)
            times = {"rust_s": [], "python_f64_s": [], "python_f32_s": [], "numpy_naive_s": []}
            for _ in range(args.rounds):
                rust = subprocess.run([args.rust, ref_path, gen_path, kind, str(args.min_time)],
                                      check=True, capture_output=True, text=True)
                times["rust_s"].append(float(rust.stdout))
                times["python_f64_s"].append(timeit(lambda: reward.individual(gen), args.min_time))
                times["python_f32_s"].append(timeit(lambda: reward.individual(gen32), args.min_time))
                times["numpy_naive_s"].append(timeit(lambda: naive.individual(fn, gen, ref, *extra), args.min_time))
            out[kind] = {key: statistics.median(v) for key, v in times.items()}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
