#!/usr/bin/env bash
# Real-data FID of Fashion-MNIST, train vs test, with the FID Inception and the small classifier,
# timing feature extraction. Numbers go to BENCHMARKS.md.
#   source scripts/env.sh && cargo build --release -p divrl-cli -p divrl-torch-cli && bash scripts/setup-inception.sh
#   N=1000 REF=1000 EXTRACTORS="small inception" bash bench/fid_fashion_mnist.sh
# Generated side: N seeded-random images of the 60k training split (Debian dataset-fashion-mnist);
# reference side: REF seeded-random images of the 10k test split. THREADS sets libtorch's threads.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
n="${N:-1000}"
ref="${REF:-1000}"
out="${OUT:-$root/bench/results}"
divrl="${DIVRL:-$root/target/release/divrl}"
mkdir -p "$out"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$root/.venv/bin/python" - "$n" "$ref" "$tmp" "$root" <<'PY'
import gzip, sys, numpy as np
n, ref, tmp, root = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
def load(path):
    raw = gzip.open(path).read()
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 28, 28)
rng = np.random.default_rng(0)
train = load("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
test = load(f"{root}/data/fashion-mnist/t10k-images-idx3-ubyte.gz")
np.save(f"{tmp}/train.npy", train[np.sort(rng.choice(len(train), size=n, replace=False))])
np.save(f"{tmp}/test.npy", test[np.sort(rng.choice(len(test), size=ref, replace=False))])
PY
for ext in ${EXTRACTORS:-small inception}; do
  res="$out/fid-$ext-train$n-vs-test$ref.json"
  start=$(date +%s.%N)
  "$divrl" eval --generated "$tmp/train.npy" --reference "$tmp/test.npy" --extractor "$ext" \
    --no-cache --device "${DEVICE:-cpu}" --threads "${THREADS:-0}" --no-progress --json --out "$res" >/dev/null
  end=$(date +%s.%N)
  python3 - "$res" "$start" "$end" "$((n + ref))" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); secs = float(sys.argv[3]) - float(sys.argv[2]); n = int(sys.argv[4])
print(f"{r['extractor']}: FID {r['fid']:.4f} P {r['precision']:.4f} R {r['recall']:.4f} D {r['density']:.4f} "
      f"C {r['coverage']:.4f}; {n} images in {secs:.1f} s = {n / secs:.2f} images/s (loading, features, metrics)")
PY
done
