#!/bin/bash
# Inception-space evaluation of the subsets made by subsets.py (run from the repository root).
for n in natural0 balanced0 natural1 balanced1 natural2 balanced2; do
  target/release/divrl eval --generated /work/runs/bal2/$n.npy --reference fashion-mnist-skewed:eval \
    --extractor inception --attribute inversion --json --out /work/runs/bal2/$n-inception.json \
    --threads 1 --no-progress > /dev/null 2>> /work/runs/bal2/eval.err
done
echo done > /work/runs/bal2/eval.done
