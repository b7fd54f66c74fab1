"""select: the subsets and rewards equal the Rust crate's."""

import numpy as np
import pytest

import divrl
from conftest import close


def cases(expected, reference):
    return [c for c in expected["select"] if (c["reference"] == "shared") == (reference == "shared")]


def test_shared_reference_equals_the_crate(expected, feats):
    for case in cases(expected, "shared"):
        subsets, rewards = divrl.select(
            feats["candidates"],
            feats["reference"],
            case["size"],
            kind=case["kind"],
            criterion=case["criterion"],
            greedy=case["greedy"],
        )
        assert subsets.dtype == np.int64 and subsets.shape == (200, case["size"])
        assert np.array_equal(subsets, case["subsets"]), case
        assert close(rewards, case["rewards"]), case


def test_per_set_references_equal_the_crate(expected, feats):
    (case,) = cases(expected, "per-set")
    ref = np.stack([feats["reference"][5 * i : 5 * i + 30] for i in range(4)])
    subsets, rewards = divrl.select(feats["candidates"][:4], ref, case["size"], kind=case["kind"])
    assert np.array_equal(subsets, case["subsets"])
    assert close(rewards, case["rewards"])


def test_one_set_gives_one_subset_and_a_float(expected, feats):
    case = cases(expected, "shared")[0]  # mmd, max, exhaustive
    cand = np.asfortranarray(feats["candidates"][7].astype(np.float64))
    subset, reward = divrl.select(cand, feats["reference"], 5)
    assert subset.tolist() == case["subsets"][7]
    assert isinstance(reward, float) and close(reward, case["rewards"][7])


def test_selected_reward_is_the_set_reward(feats):
    cand = feats["candidates"][3]
    subset, reward = divrl.select(cand, feats["reference"], 5, kind="gp-mi", criterion="min")
    again = divrl.DiversityReward("gp-mi", feats["reference"]).set_reward(cand[subset])
    assert abs(reward - again) <= 1e-9 * max(1.0, abs(again))


def test_bad_requests_raise_value_error(feats):
    cand, ref = feats["candidates"], feats["reference"]
    with pytest.raises(ValueError, match=r"^cannot select 11 of 10 candidates per set \(O < M\)$"):
        divrl.select(cand, ref, 11)
    with pytest.raises(ValueError, match="greedy selection is defined for the mmd and gp-mi rewards"):
        divrl.select(cand, ref, 5, kind="recall", greedy=True)
    with pytest.raises(ValueError, match=r"^unknown criterion 'best' \(expected max or min\)$"):
        divrl.select(cand, ref, 5, criterion="best")
    with pytest.raises(ValueError, match=r"^candidates: expected candidates of shape S × O × D \(or O × D\), got \[64\]$"):
        divrl.select(cand[0, 0], ref, 1)
    with pytest.raises(ValueError, match=r"^reference: 3 reference sets for 200 candidate sets"):
        divrl.select(cand, np.stack([ref] * 3), 5)
    with pytest.raises(ValueError, match=r"^the mmd reward needs subsets of at least 2 samples, asked for 1$"):
        divrl.select(cand, ref, 1)
    bad = cand[:2].copy()
    bad[1, 4, 7] = np.nan
    with pytest.raises(ValueError, match=r"^candidates contains a non-finite value \(NaN or Inf\) at row 14, column 7$"):
        divrl.select(bad, ref, 5)
