#!/bin/bash
cd /work/main
source scripts/env.sh
while pgrep -f "train-base --out /work/runs/sk3/base" > /dev/null; do sleep 10; done
target/release/divrl sample --checkpoint /work/runs/sk3/base --n 400 --steps 10 --guidance 1 --seed 11 --npy /work/runs/bal3/base.npy --device cpu --threads 2 > /work/runs/bal3/sample.out 2>&1
.venv/bin/python results/debias-balanced-base/subsets.py /work/runs/bal3 > /work/runs/bal3/subsets.out 2>&1
for n in natural0 balanced0 natural1 balanced1 natural2 balanced2; do
  target/release/divrl eval --generated /work/runs/bal3/$n.npy --reference fashion-mnist-skewed:eval \
    --extractor inception --attribute inversion --json --out /work/runs/bal3/$n-inception.json \
    --threads 2 --no-progress > /dev/null 2>> /work/runs/bal3/eval.err
done
echo done > /work/runs/bal3/eval.done
