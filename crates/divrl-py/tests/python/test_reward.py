"""DiversityReward: values equal the Rust crate's, in every input layout and dtype."""

import numpy as np
import pytest

import divrl
from conftest import close, reward_options


@pytest.mark.parametrize(
    "name", ["mmd", "gp-mi", "recall", "mmd-options", "gp-mi-options", "recall-options"]
)
@pytest.mark.parametrize("file", ["diverse.npy", "collapsed.npy"])
def test_values_equal_the_crate(expected, feats, name, file):
    case = expected["rewards"][name]
    want = case["generated"][file]
    reward = divrl.DiversityReward(case["spec"]["kind"], feats["reference"], **reward_options(case["spec"]))
    generated = feats[file[:-4]]
    assert close(reward.set_reward(generated), want["set_reward"])
    ind = reward.individual(generated)
    assert ind.dtype == np.float64 and ind.shape == (5,)
    assert close(ind, want["individual"])
    set_reward, ind2 = reward.evaluate(generated)
    assert close(set_reward, want["set_reward"]) and close(ind2, want["individual"])


@pytest.mark.parametrize("kind", ["mmd", "gp-mi", "recall"])
def test_layouts_and_dtypes_agree(expected, feats, kind):
    """float32/float64, C/Fortran order, strided views and lists all give the same values."""
    want = expected["rewards"][kind]["generated"]["diverse.npy"]["individual"]
    ref32, gen32 = feats["reference"], feats["diverse"]
    refs = [ref32, ref32.astype(np.float64), np.asfortranarray(ref32), np.asfortranarray(ref32.astype(np.float64))]
    wide = np.zeros((5, 2 * ref32.shape[1]), dtype=np.float32)
    wide[:, ::2] = gen32
    gens = [
        gen32,
        gen32.astype(np.float64),
        np.asfortranarray(gen32),
        np.asfortranarray(gen32.astype(np.float64)),
        wide[:, ::2],  # non-contiguous view
        gen32.astype(np.float64).tolist(),
    ]
    for ref in refs:
        reward = divrl.DiversityReward(kind, ref)
        for gen in gens:
            assert close(reward.individual(gen), want)


def test_reference_cache_is_reused(feats):
    """One object scores many sets; each call equals a freshly built reward's."""
    reward = divrl.DiversityReward("gp-mi", feats["reference"])
    rng = np.random.default_rng(0)
    for _ in range(3):
        gen = feats["generated"][rng.choice(1000, 8, replace=False)]
        fresh = divrl.DiversityReward("gp-mi", feats["reference"])
        assert np.array_equal(reward.individual(gen), fresh.individual(gen))


def test_properties(feats):
    mmd = divrl.DiversityReward("mmd", feats["reference"])
    assert mmd.kind == "mmd" and mmd.reference_size == 50 and mmd.dim == 64
    assert mmd.kernel == {"kernel": "polynomial", "degree": 3, "gamma": 1 / 64, "coef0": 1.0}
    assert (mmd.min_set_size, mmd.min_individual_size) == (2, 3)
    gp = divrl.DiversityReward("gp-mi", feats["reference"], sigma=2.5)
    assert gp.kernel == {"kernel": "rbf", "sigma": 2.5}
    rec = divrl.DiversityReward("recall", feats["reference"], k=4)
    assert rec.kernel is None and rec.k == 4 and rec.min_individual_size == 6
    assert "DiversityReward" in repr(rec)


def test_default_sigma_is_the_median_reference_distance(feats):
    ref = feats["reference"].astype(np.float64)
    d = np.sqrt(((ref[:, None, :] - ref[None, :, :]) ** 2).sum(-1))
    median = np.median(d[np.triu_indices(len(ref), 1)])
    sigma = divrl.DiversityReward("gp-mi", ref).kernel["sigma"]
    assert abs(sigma - median) <= 1e-12 * median


def test_individual_is_the_leave_one_out_difference(feats):
    """The closed form equals r(X) - r(X without m) computed through set_reward."""
    gen = feats["generated"][:7]
    for kind in ("mmd", "gp-mi", "recall"):
        reward = divrl.DiversityReward(kind, feats["reference"])
        full = reward.set_reward(gen)
        loo = [full - reward.set_reward(np.delete(gen, i, 0)) for i in range(7)]
        assert np.allclose(reward.individual(gen), loo, rtol=1e-9, atol=1e-12)


def errors(fn, *args, **kwargs):
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def test_bad_input_raises_value_error_with_the_cli_message(feats):
    ref, gen = feats["reference"], feats["diverse"]
    reward = divrl.DiversityReward("mmd", ref)
    bad = gen.copy()
    bad[1, 2] = np.nan
    assert errors(reward.individual, bad) == (
        "generated contains a non-finite value (NaN or Inf) at row 1, column 2"
    )
    bad_ref = ref.astype(np.float64)
    bad_ref[3, 0] = np.inf
    assert "reference contains a non-finite value (NaN or Inf) at row 3, column 0" == errors(
        divrl.DiversityReward, "mmd", bad_ref
    )
    assert errors(reward.individual, gen[0]) == "generated: expected a 2-D array (N × D), got shape [64]"
    assert errors(reward.individual, gen[None]) == (
        "generated: expected a 2-D array (N × D), got shape [1, 5, 64]"
    )
    assert errors(reward.individual, gen[:, :10]) == (
        "generated feature dimension: expected 64 (as the reference), got 10"
    )
    assert errors(reward.individual, gen[:2]) == (
        "leave-one-out (individual) rewards for the unbiased MMD estimator needs at least 3 "
        "generated samples, got 2"
    )
    assert errors(reward.set_reward, gen[:1]) == (
        "the set reward for the unbiased MMD estimator needs at least 2 generated samples, got 1"
    )
    assert errors(divrl.DiversityReward, "mmd", ref[:1]) == (
        "the unbiased MMD needs at least 2 reference samples, got 1"
    )
    assert errors(divrl.DiversityReward, "entropy", ref) == (
        "unknown reward kind 'entropy' (expected mmd, gp-mi or recall)"
    )
    assert errors(divrl.DiversityReward, "gp-mi", ref, sigma=-1.0) == (
        "RBF bandwidth sigma must be a positive number, got -1"
    )
    assert errors(divrl.DiversityReward, "recall", ref, k=0) == "k must be at least 1"
    assert errors(reward.individual, gen.astype(np.int64)) == (
        "generated: unsupported dtype int64 (expected float32 or float64)"
    )
    recall = divrl.DiversityReward("recall", ref)
    assert errors(recall.individual, gen[:4]) == (
        "leave-one-out (individual) rewards for k-NN balls with k = 3 needs at least 5 "
        "generated samples, got 4"
    )


def test_unknown_option_is_a_type_error(feats):
    with pytest.raises(TypeError):
        divrl.DiversityReward("mmd", feats["reference"], bandwidth=1.0)
