"""Shared inputs of the pytest suite: the committed example features and the expectations the
Rust crate computed on them (tests/fixtures/expected.json, written by tests/expectations.rs)."""

import json
import pathlib

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[3]
FEATURES = ROOT / "examples" / "features"
FIXTURE = HERE.parent / "fixtures" / "expected.json"

# Same tolerance as the Rust side: 1e-12 relative, absolute below 1.
TOL = 1e-12


def close(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= TOL * np.maximum(np.abs(a), 1.0)))


@pytest.fixture(scope="session")
def expected():
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="session")
def feats():
    """name -> float32 array as stored (C order)."""
    return {p.stem: np.load(p) for p in FEATURES.glob("*.npy")}


def reward_options(spec):
    """DiversityReward keyword arguments of a fixture spec."""
    return {key: spec[key] for key in ("degree", "gamma", "coef0", "sigma", "jitter", "k")}
