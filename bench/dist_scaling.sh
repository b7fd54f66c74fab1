#!/usr/bin/env bash
# Images/s of whole RL epochs (sampling, ϕ, reward, PPO) with 1 and 2 data-parallel ranks on
# this machine (issue 16): the `experiment diversity` setting (1.33M base, guidance 4, 10 DDIM
# steps, GP-MI, ϕ = small, K = 5 sets of M = 5 per class: 250 trajectories an epoch), EPOCHS
# epochs each, sampling chunks of 125 so that two ranks take one chunk each. Prints the epoch
# lines' images/s and the scaling efficiency. Run it on an otherwise idle machine.
#   bash bench/dist_scaling.sh            # uses target/release/divrl
#   EPOCHS=3 OUT=/tmp/dist bash bench/dist_scaling.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
divrl="${DIVRL:-$root/target/release/divrl}"
out="${OUT:-$(mktemp -d)}"
epochs="${EPOCHS:-3}"
cores="$(nproc)"
common=(finetune --base "$root/models/fashion-mnist-base" --reward gp-mi --extractor small
  --guidance 4 --steps 10 --images-per-class 5 --sets-per-class 5 --sample-batch-size 125
  --lr 3e-3 --clip-range 1e-3 --timestep-fraction 0.5 --skip-final-steps 3
  --epochs "$epochs" --checkpoint-every 0 --sample-every 0 --device cpu --no-progress)
cd "$root"
rm -rf "$out/one-1t" "$out/one" "$out/two"
"$divrl" "${common[@]}" --out "$out/one-1t" --threads 1
"$divrl" "${common[@]}" --out "$out/one" --threads "$cores"
"$divrl" "${common[@]}" --out "$out/two" --nproc 2 --threads $((cores / 2 > 0 ? cores / 2 : 1))
python3 - "$out" "$cores" <<'PY'
import json, sys
out, cores = sys.argv[1], int(sys.argv[2])
def rate(run):
    eps = [json.loads(l) for l in open(f"{out}/{run}/log.jsonl") if '"kind":"epoch"' in l]
    # Epoch 1 warms the caches; the rest are the steady state.
    steady = eps[1:] or eps
    return sum(e["images"] for e in steady) / sum(e["seconds"] for e in steady)
r1t, r1, r2 = rate("one-1t"), rate("one"), rate("two")
print(f"1 process, 1 thread:          {r1t:6.2f} images/s")
print(f"1 process, {cores} threads:         {r1:6.2f} images/s")
print(f"2 ranks, {max(cores // 2, 1)} thread(s) each:     {r2:6.2f} images/s")
print(f"2 ranks vs 1 process of {cores} threads: {r2 / r1:.2f}x; vs 1 thread: {r2 / r1t:.2f}x "
      f"(scaling efficiency {r2 / (2 * r1t):.0%})")
PY
