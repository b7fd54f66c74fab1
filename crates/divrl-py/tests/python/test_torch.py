"""divrl.torch.make_reward_fn on a toy feature function (no torch needed: arrays and a
tensor-like stand-in)."""

import numpy as np
import pytest

import divrl
from divrl.torch import make_reward_fn, to_numpy

D = 8


def toy_features(images):
    """A fixed random projection of the flattened images: B x 3 x 4 x 4 -> B x D."""
    flat = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    proj = np.random.default_rng(42).normal(size=(flat.shape[1], D))
    return flat @ proj


@pytest.fixture
def refs():
    rng = np.random.default_rng(1)
    return {"a cat": rng.normal(size=(20, D)), "a dog": rng.normal(size=(30, D)) + 2.0}


def batch(n, seed=2):
    return np.random.default_rng(seed).uniform(size=(n, 3, 4, 4))


@pytest.mark.parametrize("kind", ["mmd", "gp-mi", "recall"])
def test_groups_images_by_prompt(refs, kind):
    images = batch(11)
    prompts = ["a cat", "a dog", "a cat", "a dog", "a dog", "a cat", "a cat", "a dog", "a cat", "a dog", "a dog"]
    reward_fn = make_reward_fn(toy_features, refs, kind, k=2)
    rewards, info = reward_fn(images, prompts, [{} for _ in prompts])
    assert rewards.shape == (11,) and rewards.dtype == np.float64
    feats = toy_features(images)
    for prompt, ref in refs.items():
        idx = [i for i, p in enumerate(prompts) if p == prompt]
        set_reward, individual = divrl.DiversityReward(kind, ref, k=2).evaluate(feats[idx])
        assert np.array_equal(rewards[idx], individual)
        assert info["set_reward"][prompt] == set_reward
        assert info["group_size"][prompt] == len(idx)


def test_rewards_follow_the_image_order(refs):
    """Shuffling the batch shuffles the rewards the same way."""
    images = batch(8, seed=5)
    prompts = ["a cat"] * 4 + ["a dog"] * 4
    reward_fn = make_reward_fn(toy_features, refs, "gp-mi")
    rewards, _ = reward_fn(images, prompts, None)
    perm = np.random.default_rng(0).permutation(8)
    shuffled, _ = reward_fn(images[perm], [prompts[i] for i in perm], None)
    assert np.allclose(shuffled, rewards[perm], rtol=1e-12, atol=1e-14)


def test_condition_fn_picks_the_reference(refs):
    images = batch(6)
    prompts = ["photo 1", "photo 2", "photo 3", "photo 4", "photo 5", "photo 6"]
    metadata = [{"class": "a cat"}] * 3 + [{"class": "a dog"}] * 3
    reward_fn = make_reward_fn(toy_features, refs, "mmd", condition_fn=lambda p, m: m["class"])
    rewards, info = reward_fn(images, prompts, metadata)
    want = divrl.DiversityReward("mmd", refs["a dog"]).individual(toy_features(images)[3:])
    assert np.array_equal(rewards[3:], want)
    assert info["group_size"] == {"a cat": 3, "a dog": 3}


def test_small_groups(refs):
    images = batch(5)
    prompts = ["a cat"] * 3 + ["a dog"] * 2
    with pytest.raises(ValueError, match="condition 'a dog' has 2 images in this batch; the mmd reward needs at least 3"):
        make_reward_fn(toy_features, refs, "mmd")(images, prompts, None)
    rewards, info = make_reward_fn(toy_features, refs, "mmd", small_groups="zero")(images, prompts, None)
    assert np.all(rewards[3:] == 0.0) and np.all(rewards[:3] != 0.0)
    assert info["set_reward"]["a dog"] is None


def test_bad_configuration(refs):
    with pytest.raises(ValueError, match="no reference features for condition 'a bird'"):
        make_reward_fn(toy_features, refs)(batch(3), ["a bird"] * 3, None)
    with pytest.raises(ValueError, match=r"feature_fn returned shape \(3, 8\) for 4 prompts"):
        make_reward_fn(toy_features, refs)(batch(3), ["a cat"] * 4, None)
    with pytest.raises(ValueError, match="unknown reward kind"):
        make_reward_fn(toy_features, refs, "entropy")
    with pytest.raises(ValueError, match="small_groups must be"):
        make_reward_fn(toy_features, refs, small_groups="drop")
    with pytest.raises(ValueError, match="empty"):
        make_reward_fn(toy_features, {})


class FakeTensor:
    """What to_numpy needs of a torch tensor: detach, cpu, dtype, float, numpy."""

    def __init__(self, array, dtype="torch.float16"):
        self.array, self.dtype, self.calls = array, dtype, []

    def detach(self):
        self.calls.append("detach")
        return self

    def cpu(self):
        self.calls.append("cpu")
        return self

    def float(self):
        self.calls.append("float")
        return FakeTensor(self.array.astype(np.float32), "torch.float32")

    def numpy(self):
        return self.array


def test_tensor_like_outputs_are_detached_and_widened(refs):
    t = FakeTensor(np.ones((2, 3), dtype=np.float16))
    out = to_numpy(t)
    assert out.dtype == np.float32 and t.calls == ["detach", "cpu", "float"]
    feats = lambda images: FakeTensor(toy_features(images), "torch.float64")
    rewards, _ = make_reward_fn(feats, refs, "mmd")(batch(3), ["a cat"] * 3, None)
    assert np.array_equal(rewards, divrl.DiversityReward("mmd", refs["a cat"]).individual(toy_features(batch(3))))


def test_with_torch_tensors_when_torch_is_installed(refs):
    torch = pytest.importorskip("torch")
    images = torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    net = lambda x: torch.from_numpy(toy_features(x.numpy())).to(torch.bfloat16)
    rewards, info = make_reward_fn(net, refs, "gp-mi")(images, ["a cat"] * 3 + ["a dog"] * 3, None)
    assert rewards.shape == (6,) and np.all(np.isfinite(rewards))
