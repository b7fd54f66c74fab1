#!/usr/bin/env bash
# Creates the project-local venv (.venv) holding exactly torch==2.11.0 (libtorch for tch 0.24)
# and numpy (for the reference scripts under bench/ and tests/fixtures/). Idempotent: a venv that
# already has the right versions is left as it is.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
want_torch="2.11.0"
py="${PYTHON:-python3}"

have_version() {
  "$venv/bin/python" - "$want_torch" <<'PY' 2>/dev/null
import sys
import torch, numpy  # noqa: F401
v = torch.__version__.split("+")[0]
sys.exit(0 if v == sys.argv[1] else 1)
PY
}

if [ -x "$venv/bin/python" ] && have_version; then
  exit 0
fi
if ! command -v "$py" >/dev/null 2>&1; then
  echo "setup-torch: $py not found; install Python 3.10+ (Debian: apt-get install python3 python3-venv)" >&2
  exit 1
fi
echo "setup-torch: creating $venv with torch==$want_torch (a few GB, a few minutes) ..." >&2
"$py" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "torch==$want_torch" numpy
if ! have_version; then
  echo "setup-torch: $venv does not hold torch==$want_torch after install" >&2
  exit 1
fi
