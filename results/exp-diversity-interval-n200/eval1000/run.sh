#!/usr/bin/env bash
# 1,000 images (100 per class) per method and seed, same noise per seed across methods:
# base = interval guidance, plain = guidance 4 everywhere, cads = CADS, rl2x = the 40-epoch r19
# cells.
source "$(dirname "$0")/common.sh"
SEEDS=${SEEDS:-1 2 3}
# CELLS: the experiment's cells folder (rl-sN = the 40-epoch runs of `--double`).
for s in $SEEDS; do
  seed=$((1000 + s))
  common="--checkpoint models/fashion-mnist-base --class all --n 100 --guidance 4 --steps $STEPS --seed $seed --threads 1 --device cpu"
  [ -f $O/base$T-s$s.npy ] || $B sample $common --guidance-interval 0.28,5.42 --npy $O/base$T-s$s.npy
  [ -f $O/plain$T-s$s.npy ] || $B sample $common --npy $O/plain$T-s$s.npy
  bash results/exp-diversity-interval-n200/eval1000/run_adapters.sh rl2x ${CELLS:-runs/exp-r19/cells}/rl-s$s $s
  # CADS at the paper's class-conditional defaults, guidance 4 everywhere (the baseline beside
  # interval guidance).
  [ -f $O/cads$T-s$s.npy ] || $B sample $common --cads --npy $O/cads$T-s$s.npy
  for m in base plain cads; do score $O/$m$T-s$s; done
  echo "seed $s done $(date)"
done
# Guidance 1 for the decomposition (seed 1 only):
# $B sample --checkpoint models/fashion-mnist-base --class all --n 100 --guidance 1 --steps $STEPS --seed 1001 --threads 1 --device cpu --npy $O/g1-s1.npy
# Tables: O=$O python3 results/exp-diversity-interval-n200/eval1000/table.py
#         .venv/bin/python results/exp-diversity-interval-n200/eval1000/decomp.py $O/{base,plain,rl2x}-s{1,2,3}.npy $O/g1-s1.npy
# The 25-step evaluation (table25.txt, decomp25.txt; 2026-12-03, one process per seed):
#   STEPS=25 SEEDS=1 bash run.sh & STEPS=25 SEEDS=2 bash run.sh & STEPS=25 SEEDS=3 bash run.sh
#   for s in 1 2 3; do STEPS=25 bash run_adapters.sh rl1x runs/leads/r19-s$s $s; done  # 20 epochs
#   for s in 1 2 3; do STEPS=25 bash run_adapters.sh r29 runs/leads/r29-s$s $s; done
#   O=$O T=25 python3 results/exp-diversity-interval-n200/eval1000/table.py
#   .venv/bin/python results/exp-diversity-interval-n200/eval1000/decomp.py $O/{plain,base,cads,rl1x,rl2x,r29}25-s{1,2,3}.npy
# (runs/leads/r19-sN: results/exp-diversity/leads/r19 … configs with seed N — the experiment's
# 20-epoch rl-sN cells, retrained; they reproduce the cells' set rewards exactly.)
