#!/usr/bin/env bash
# One fine-tuning run's adapters on the evaluation noise of run.sh (1,000 images, guidance 4 on
# interval guidance's noise levels, sampling seed 1000 + SEED), scored in pixel-8 ϕ and Inception:
#   run_adapters.sh NAME RUN_DIR SEED      -> $O/NAME$T-sSEED{.npy,-inception.json,-pixels.json}
# e.g. run_adapters.sh rl1x runs/leads/r19-s2 2 (the 20-epoch model), r29 runs/leads/r29-s2 2.
source "$(dirname "$0")/common.sh"
name=$1 run=$2 s=$3
f=$O/$name$T-s$s
[ -f $f.npy ] || $B sample --checkpoint models/fashion-mnist-base --class all --n 100 --guidance 4 \
  --steps $STEPS --seed $((1000 + s)) --threads 1 --device cpu --guidance-interval 0.28,5.42 \
  --adapters "$run" --npy $f.npy
score $f
echo "$name seed $s done $(date)"
