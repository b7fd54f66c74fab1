#!/usr/bin/env bash
# Real-data FID of Fashion-MNIST, train vs test, with the FID Inception (and the small
# classifier for comparison), timing feature extraction. Numbers go to BENCHMARKS.md.
#   source scripts/env.sh && cargo build --release -p divrl-cli
#   bash scripts/setup-inception.sh
#   N=2000 bash bench/fid_fashion_mnist.sh
# Generated side: N seeded-random images of the 60k training split (Debian dataset-fashion-mnist);
# reference side: the 2,000-image evaluation pool of the test split (`fashion-mnist:eval`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
n="${N:-2000}"
out="${OUT:-$root/bench/results}"
mkdir -p "$out"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$root/.venv/bin/python" - "$n" "$tmp/train.npy" <<'PY'
import gzip, sys, numpy as np
n, path = int(sys.argv[1]), sys.argv[2]
raw = gzip.open("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").read()
imgs = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 28, 28)
idx = np.sort(np.random.default_rng(0).choice(len(imgs), size=n, replace=False))
np.save(path, imgs[idx])
PY
for ext in small inception; do
  start=$(date +%s.%N)
  "${DIVRL:-$root/target/release/divrl}" eval --generated "$tmp/train.npy" --reference fashion-mnist:eval \
    --extractor "$ext" --no-cache --device "${DEVICE:-cpu}" --no-progress --json --out "$out/fid-$ext-train$n-vs-test2000.json" >/dev/null
  end=$(date +%s.%N)
  python3 - "$out/fid-$ext-train$n-vs-test2000.json" "$start" "$end" "$n" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); secs = float(sys.argv[3]) - float(sys.argv[2]); n = int(sys.argv[4]) + 2000
print(f"{r['extractor']}: FID {r['fid']:.4f} P {r['precision']:.4f} R {r['recall']:.4f} D {r['density']:.4f} "
      f"C {r['coverage']:.4f}  {n} images in {secs:.1f} s = {n / secs:.1f} images/s (incl. loading and metrics)")
PY
done
