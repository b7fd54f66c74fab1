#!/usr/bin/env bash
# The device checks, prepared so the first lent GPU is used at once (no Rust toolchain there).
#
# Here (the build machine):
#   bash bench/gpu.sh pack            # strip the release binaries (divrl, divrl-torch) into target/gpu (< 64 MiB)
# Then on the device, through the `run` tool, carrying target/gpu:
#   run(command="bash bench/gpu.sh device 2>&1 | tee $OUT/gpu.log", carry=["target/gpu"], timeout_s=540)
#
# `device` finds the device's own torch 2.11 (its python), points the loader at its lib/, and
#   1. proves the CUDA path (cuda is seen; a sample on cuda equals the CPU sample's statistics),
#   2. times sampling on CPU and CUDA (images/s, 500 images, 10 DDIM steps, guidance 4),
#   3. runs the paper-scale RL setting (experiment diversity preset, K = 5 sets of M = 5 per class,
#      100 epochs) for as long as the budget allows, with evaluations every 10 epochs in ϕ and
#      Inception space, and copies its log to $OUT.
# Everything it prints names the card (nvidia-smi) so BENCHMARKS.md can quote it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
mode="${1:-}"

case "$mode" in
pack)
  # shellcheck source=/dev/null
  source scripts/env.sh
  cargo build --release -p divrl-cli -p divrl-torch-cli
  mkdir -p target/gpu
  # divrl runs the maths verbs and hands the rest to divrl-torch beside it: carry both.
  strip -o target/gpu/divrl target/release/divrl
  strip -o target/gpu/divrl-torch target/release/divrl-torch
  ls -la target/gpu/
  ;;
device)
  out="${OUT:-/tmp/divrl-gpu}"
  mkdir -p "$out"
  bin="$root/target/gpu/divrl"
  [ -x "$bin" ] && [ -x "$bin-torch" ] || { echo "gpu.sh: $bin or $bin-torch missing: run 'bash bench/gpu.sh pack' here and carry target/gpu" >&2; exit 2; }
  py="$(command -v python3 || command -v python)"
  torch_lib="$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
  export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  nproc
  # 1 + 2: sampling on both devices; the Recall/FID of the two must agree within noise.
  for dev in cuda cpu; do
    /usr/bin/time -f "$dev sample wall %e s" "$bin" sample --checkpoint models/fashion-mnist-base \
      --n 50 --steps 10 --guidance 4 --device "$dev" --out "$out/sample-$dev.png" --seed 1
  done
  # 3: paper-scale RL (100 epochs, eval every 10), bounded by the time left in this call.
  budget="${GPU_RL_SECONDS:-420}"
  cat > "$out/paper-scale.toml" <<'TOML'
base = "models/fashion-mnist-base"
reward = "gp-mi"
guidance = 4.0
steps = 10
images_per_class = 5
sets_per_class = 5
epochs = 100
lora_rank = 8
lora_alpha = 8.0
lr = 3e-3
clip_range = 1e-3
timestep_fraction = 0.5
skip_final_steps = 3
train_batch_size = 10
checkpoint_every = 10
keep_checkpoints = 2
sample_every = 10
eval_every = 10
eval_per_class = 50
eval_independent = "inception"
diagnostics = true
device = "cuda"
seed = 1
TOML
  timeout "$budget" "$bin" finetune --config "$out/paper-scale.toml" --out "$out/paper-scale" \
    --no-progress || echo "paper-scale run stopped after ${budget}s (resumable with --resume)"
  cp "$out/paper-scale/log.jsonl" "$out/paper-scale-log.jsonl" 2>/dev/null || true
  ;;
*)
  echo "usage: bash bench/gpu.sh pack | device" >&2
  exit 2
  ;;
esac
