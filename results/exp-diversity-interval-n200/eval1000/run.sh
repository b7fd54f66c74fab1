#!/usr/bin/env bash
# 1,000 images (100 per class) per method and seed, same noise per seed across methods:
# base = interval guidance, plain = guidance 4 everywhere, rl2x = the 40-epoch r19 cells.
set -euo pipefail
cd "$(dirname "$0")/../../.."
source scripts/env.sh
B=target/release/divrl-torch
O=${O:-runs/eval1000}
mkdir -p "$O"
# CELLS: the experiment's cells folder (rl-sN = the 40-epoch runs of `--double`).
for s in 1 2 3; do
  seed=$((1000 + s))
  common="--checkpoint models/fashion-mnist-base --class all --n 100 --guidance 4 --steps 10 --seed $seed --threads 1 --device cpu"
  [ -f $O/base-s$s.npy ] || $B sample $common --guidance-interval 0.28,5.42 --npy $O/base-s$s.npy
  [ -f $O/plain-s$s.npy ] || $B sample $common --npy $O/plain-s$s.npy
  [ -f $O/rl2x-s$s.npy ] || $B sample $common --guidance-interval 0.28,5.42 --adapters ${CELLS:-runs/exp-r19/cells}/rl-s$s --npy $O/rl2x-s$s.npy
  for m in base plain rl2x; do
    for x in inception pixels; do
      [ -f $O/$m-s$s-$x.json ] || $B eval --generated $O/$m-s$s.npy --reference fashion-mnist:eval --extractor $x --threads 1 --device cpu --no-progress --json --out $O/$m-s$s-$x.json > /dev/null
    done
  done
  echo "seed $s done $(date)"
done
# Guidance 1 for the decomposition (seed 1 only):
# $B sample --checkpoint models/fashion-mnist-base --class all --n 100 --guidance 1 --steps 10 --seed 1001 --threads 1 --device cpu --npy $O/g1-s1.npy
# Tables: O=$O python3 results/exp-diversity-interval-n200/eval1000/table.py
#         .venv/bin/python results/exp-diversity-interval-n200/eval1000/decomp.py $O/{base,plain,rl2x}-s{1,2,3}.npy $O/g1-s1.npy
