#!/usr/bin/env bash
# The Python package `divrl` (crates/divrl-py): creates a fresh venv under target/ (not the torch
# venv), installs the pinned maturin, pytest, numpy and prdc from PyPI, builds the abi3 wheel in
# release mode, installs it, runs the pytest suite and the example. Called by scripts/test.sh;
# runs on its own too:   bash scripts/test-python.sh
# PYTHON picks the interpreter the venv is made from (default python3, 3.11 or newer for the
# pinned numpy). Needs network access to PyPI only (pip); the Rust crates come from cargo's cache
# or crates.io like the rest of the workspace.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py="${PYTHON:-python3}"
venv="$PWD/target/python-venv"
wheels="$PWD/target/python-wheels"
rm -rf "$venv" "$wheels"
"$py" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  -r crates/divrl-py/requirements-test.txt
"$venv/bin/maturin" build --release --quiet --compatibility linux \
  --manifest-path crates/divrl-py/Cargo.toml --interpreter "$venv/bin/python" --out "$wheels"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-index --no-deps \
  "$wheels"/divrl-*.whl
# From a folder outside the source tree, so that `import divrl` finds the installed wheel.
cd target
"$venv/bin/python" -m pytest -q -p no:cacheprovider ../crates/divrl-py/tests/python
"$venv/bin/python" ../crates/divrl-py/examples/reward_fn_random.py
