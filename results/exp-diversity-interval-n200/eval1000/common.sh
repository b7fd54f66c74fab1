# Sourced by run.sh and run_adapters.sh: the repository root, the binary, the evaluation's step
# count and output folder, and the scoring of one set of generated images.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
source scripts/env.sh
B=${B:-target/release/divrl-torch}
# STEPS: DDIM steps of the evaluation sampler (the r19 runs trained at 10); files get the
# step count after the method name when it is not 10 (base25-s1.npy ...).
STEPS=${STEPS:-10}
T=$([ "$STEPS" = 10 ] || echo "$STEPS")
O=${O:-runs/eval1000}
mkdir -p "$O"
# score F: F.npy in Inception and pixel-8 space against the 2,000 held-out images (k = 3)
# -> F-inception.json, F-pixels.json (kept when present).
score() {
  for x in inception pixels; do
    [ -f "$1-$x.json" ] || $B eval --generated "$1.npy" --reference fashion-mnist:eval --extractor $x \
      --threads 1 --device cpu --no-progress --json --out "$1-$x.json" > /dev/null
  done
}
