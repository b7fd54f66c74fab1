#!/bin/bash
cd /work/main
while pgrep -f "natural0.npy" > /dev/null; do sleep 5; done
for n in balanced0 natural1 balanced1 natural2 balanced2; do
  target/release/divrl eval --generated /work/runs/bal/$n.npy --reference fashion-mnist-skewed:eval --extractor inception --attribute inversion --json --out /work/runs/bal/$n-inception.json --threads 1 --no-progress > /dev/null 2>> /work/runs/bal/eval.err
done
echo done > /work/runs/bal/eval.done
