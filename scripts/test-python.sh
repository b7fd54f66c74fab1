#!/usr/bin/env bash
# The Python package `divrl` (crates/divrl-py): creates a fresh venv under target/ (not the torch
# venv), installs the pinned maturin, pytest, numpy, prdc and mypy from PyPI, builds the abi3
# wheel in release mode, installs it, runs the example, mypy's stubtest on the .pyi stubs and
# the pytest suite. Called by scripts/test.sh; runs on its own too:  bash scripts/test-python.sh
# PYTHON picks the interpreter the venv is made from (default python3; the pins have wheels for
# CPython 3.10-3.13). Needs network access to PyPI only (pip); the Rust crates come from cargo's
# cache or crates.io like the rest of the workspace. pytest's exit status is the script's.
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
# From a folder outside the source tree, so that `import divrl` finds the installed wheel; the
# example first, so that pytest's summary closes the output.
cd target
"$venv/bin/python" ../crates/divrl-py/examples/reward_fn_random.py
# The type stubs match the built module (signatures, classes, __all__).
"$venv/bin/python" -m mypy.stubtest divrl._divrl
"$venv/bin/python" -m pytest -q -p no:cacheprovider ../crates/divrl-py/tests/python
