#!/usr/bin/env bash
# Training and sampling speed of the Fashion-MNIST base UNet: divrl (tch/libtorch) and the same
# network in PyTorch (bench/unet_torch.py), run alternately so both see the same machine load.
#   bash bench/base_speed.sh [repeats]        (BENCH_THREADS=N to pin libtorch threads)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=/dev/null
source scripts/env.sh
cargo build --release -q -p divrl-cli -p divrl-torch-cli
reps="${1:-3}"
threads="${BENCH_THREADS:-0}"
ck="${BENCH_CHECKPOINT:-models/fashion-mnist-base}"
py=".venv/bin/python"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/train.toml" <<TOML
[train]
batch_size = 64
log_every = 10
sample_every = 0
checkpoint_every = 0
TOML
pyth=()
[ "$threads" -gt 0 ] && pyth=(--threads "$threads")
for r in $(seq "$reps"); do
  # divrl: 30 steps of batch 64; img/s of steps 11-30 (the last two 10-step windows).
  rm -rf "$tmp/run"
  target/release/divrl train-base --config "$tmp/train.toml" --out "$tmp/run" --steps 30 \
    --device cpu --threads "$threads" --no-progress 2>"$tmp/log" || { cat "$tmp/log"; exit 1; }
  d_train=$(grep -o '[0-9.]* img/s' "$tmp/log" | tail -2 | awk '{s+=$1} END {printf "%.1f", s/NR}')
  p_train=$("$py" bench/unet_torch.py train --steps 20 --warmup 10 --batch-size 64 "${pyth[@]}" |
    "$py" -c 'import json,sys; print("%.1f" % json.load(sys.stdin)["images_per_s"])')
  for g in 1 4; do
    target/release/divrl sample --checkpoint "$ck" --n 4 --steps 20 --guidance "$g" --device cpu \
      --threads "$threads" --out "$tmp/g.png" 2>"$tmp/slog"
    d_s=$(grep -o '([0-9.]* img/s)' "$tmp/slog" | tr -d '(' | awk '{print $1}')
    p_s=$("$py" bench/unet_torch.py sample --checkpoint "$ck" --n 40 --steps 20 --guidance "$g" "${pyth[@]}" |
      "$py" -c 'import json,sys; print("%.1f" % json.load(sys.stdin)["images_per_s"])')
    eval "d_s$g=$d_s; p_s$g=$p_s"
  done
  echo "run $r: train img/s divrl $d_train pytorch $p_train | sample(40 images, 20 DDIM steps, w=1) img/s divrl $d_s1 pytorch $p_s1 | sample(w=4) divrl $d_s4 pytorch $p_s4"
done
