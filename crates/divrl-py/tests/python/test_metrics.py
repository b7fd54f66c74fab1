"""metrics: values equal the Rust crate's, and agree with the prdc package."""

import contextlib
import io

import numpy as np
import pytest
from prdc import compute_prdc

import divrl
from conftest import close


@pytest.mark.parametrize("k", [3, 5])
def test_values_equal_the_crate(expected, feats, k):
    want = expected["metrics"][f"k{k}"]
    got = divrl.metrics(feats["generated"], feats["heldout"], k)
    for key in ("fid", "precision", "recall", "density", "coverage"):
        assert close(got[key], want[key]), key
    assert got["inception_score"] is None and got["attribute_kl"] is None


def test_inception_score_and_attribute_kl_equal_the_crate(expected, feats):
    gen = feats["generated"]
    is_want = expected["metrics"]["inception_score"]
    attr_want = expected["metrics"]["attributes"]
    labels = np.argmax(gen[:, :5], axis=1)
    got = divrl.metrics(
        gen, feats["heldout"], logits=gen[:, :10], is_splits=is_want["splits"], attributes=labels, num_attributes=5
    )
    assert close(got["inception_score"], is_want["mean"])
    assert close(got["inception_score_std"], is_want["std"])
    assert got["attribute_counts"] == attr_want["counts"]
    assert close(got["attribute_kl"], attr_want["kl"])


def test_inception_score_matches_its_definition():
    # One split: the crate shuffles the images by a fixed permutation before splitting (so that a
    # class-sorted set is not scored class by class; tested in divrl-reward), which one split
    # leaves without effect, so the score is exactly exp(E_x KL(p(y|x) || p(y))).
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(40, 6)) * 2.0
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    py = p.mean(0)
    want = np.exp((p * (np.log(p) - np.log(py))).sum(1).mean())
    feats = rng.normal(size=(40, 3))
    got = divrl.metrics(feats, feats + 1.0, logits=logits, is_splits=1)
    assert np.isclose(got["inception_score"], want, rtol=1e-12)
    assert got["inception_score_std"] == 0.0
    # Several splits: the mean over splits of the same quantity, so between 1 and the class count.
    got4 = divrl.metrics(feats, feats + 1.0, logits=logits, is_splits=4)
    assert 1.0 <= got4["inception_score"] <= 6.0 and got4["inception_score_std"] > 0.0


def test_attribute_kl_matches_its_definition():
    labels = [0, 0, 0, 1, 2, 2]
    feats = np.random.default_rng(4).normal(size=(6, 2))
    got = divrl.metrics(feats, feats, k=2, attributes=labels, num_attributes=4)
    p = np.array([3, 1, 2, 0]) / 6
    nz = p > 0
    assert got["attribute_counts"] == [3, 1, 2, 0]
    assert np.isclose(got["attribute_kl"], (p[nz] * np.log(p[nz] * 4)).sum(), rtol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_prdc(k, seed):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(300, 16))
    fake = 0.8 * rng.normal(size=(200, 16)) + 0.3
    with contextlib.redirect_stdout(io.StringIO()):  # compute_prdc prints the set sizes
        want = compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
    got = divrl.metrics(fake, real, k)
    for key in ("precision", "recall", "coverage"):
        assert got[key] == pytest.approx(float(want[key]), abs=1e-12), key
    assert got["density"] == pytest.approx(float(want["density"]), rel=1e-12)


def test_fid_matches_the_gaussian_formula():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(200, 4)), 1.5 * rng.normal(size=(150, 4)) + 0.5
    ma, mb = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(ca)
    ra = v @ np.diag(np.sqrt(w)) @ v.T
    tr = np.sqrt(np.clip(np.linalg.eigvalsh(ra @ cb @ ra), 0, None)).sum()
    want = ((ma - mb) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * tr
    assert np.isclose(divrl.metrics(a, b)["fid"], want, rtol=1e-10)


def test_bad_input_raises_value_error(feats):
    gen, ref = feats["generated"], feats["heldout"]
    with pytest.raises(ValueError, match=r"^k-NN metrics with k = 3 need more than 3 generated samples, got 3$"):
        divrl.metrics(gen[:3], ref)
    with pytest.raises(ValueError, match=r"^k must be at least 1$"):
        divrl.metrics(gen, ref, 0)
    with pytest.raises(ValueError, match=r"^generated feature dimension: expected 64 \(as the reference\), got 63$"):
        divrl.metrics(gen[:, 1:], ref)
    bad = ref.copy()
    bad[9, 9] = -np.inf
    with pytest.raises(ValueError, match=r"^reference contains a non-finite value \(NaN or Inf\) at row 9, column 9$"):
        divrl.metrics(gen, bad)
    labels = np.zeros(1000, dtype=np.int64)
    labels[-1] = 7
    with pytest.raises(ValueError, match=r"^attribute label 7 outside 0..5$"):
        divrl.metrics(gen, ref, attributes=labels, num_attributes=5)
    labels[-1] = -1
    with pytest.raises(ValueError, match=r"^attribute label -1 is negative$"):
        divrl.metrics(gen, ref, attributes=labels)
    with pytest.raises(ValueError, match=r"^attributes: expected 1000 labels \(one per generated image\), got 2$"):
        divrl.metrics(gen, ref, attributes=[0, 1])
    with pytest.raises(ValueError, match=r"^logits: expected a 2-D array \(N × D\), got shape \[1000\]$"):
        divrl.metrics(gen, ref, logits=gen[:, 0])
