#!/usr/bin/env bash
# One fine-tuning run's adapters on the evaluation noise of run.sh (1,000 images, guidance 4 on
# interval guidance's noise levels, sampling seed 1000 + SEED), scored in pixel-8 ϕ and Inception:
#   run_adapters.sh NAME RUN_DIR SEED      -> $O/NAME$T-sSEED{.npy,-inception.json,-pixels.json}
# e.g. run_adapters.sh rl1x runs/leads/r19-s2 2 (the 20-epoch model), r29 runs/leads/r29-s2 2.
set -euo pipefail
cd "$(dirname "$0")/../../.."
source scripts/env.sh
B=${B:-target/release/divrl-torch}
STEPS=${STEPS:-10}
T=$([ "$STEPS" = 10 ] || echo "$STEPS")
O=${O:-runs/eval1000}
name=$1 run=$2 s=$3
mkdir -p "$O"
f=$O/$name$T-s$s
[ -f $f.npy ] || $B sample --checkpoint models/fashion-mnist-base --class all --n 100 --guidance 4 \
  --steps $STEPS --seed $((1000 + s)) --threads 1 --device cpu --guidance-interval 0.28,5.42 \
  --adapters "$run" --npy $f.npy
for x in inception pixels; do
  [ -f $f-$x.json ] || $B eval --generated $f.npy --reference fashion-mnist:eval --extractor $x \
    --threads 1 --device cpu --no-progress --json --out $f-$x.json > /dev/null
done
echo "$name seed $s done $(date)"
