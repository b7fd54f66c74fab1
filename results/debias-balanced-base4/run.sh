#!/bin/bash
# The perfect-reweighting bound of models/fashion-mnist-skewed-base-9000 (the study of
# results/debias-balanced-base3/ on the 9,000-step base): 4,000 samples at guidance 1, three
# natural and three oracle-balanced 500-image subsets, each scored in the Inception space
# against the skewed data's 50/50 evaluation pool.
set -e
cd "$(dirname "$0")/../.."
source scripts/env.sh
out=${1:-runs/bal4}
mkdir -p "$out"
target/release/divrl sample --checkpoint models/fashion-mnist-skewed-base-9000 --n 400 --steps 10 --guidance 1 --seed 11 --npy "$out/base.npy" --device cpu --threads 1 > "$out/sample.out" 2>&1
.venv/bin/python results/debias-balanced-base/subsets.py "$out" > "$out/subsets.out" 2>&1
for n in natural0 balanced0 natural1 balanced1 natural2 balanced2; do
  target/release/divrl eval --generated "$out/$n.npy" --reference fashion-mnist-skewed:eval \
    --extractor inception --attribute inversion --json --out "$out/$n-inception.json" \
    --threads 1 --no-progress > /dev/null 2>> "$out/eval.err"
done
echo done > "$out/eval.done"
