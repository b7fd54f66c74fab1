#!/usr/bin/env bash
# Guidance 1 (no guidance) on the evaluation noise of seed SEED, 1,000 images, scored in pixel-8 ϕ
# and Inception: the top of the paper's yardstick (the share of the Recall that guidance 4 loses
# against guidance 1 which a method recovers).
#   STEPS=25 run_g1.sh SEED   -> $O/g1$T-sSEED{.npy,-inception.json,-pixels.json}
source "$(dirname "$0")/common.sh"
s=$1
f=$O/g1$T-s$s
[ -f $f.npy ] || $B sample --checkpoint models/fashion-mnist-base --class all --n 100 --guidance 1 \
  --steps $STEPS --seed $((1000 + s)) --threads 1 --device cpu --npy $f.npy
score $f
echo "g1 seed $s done $(date)"
