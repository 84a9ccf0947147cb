import json
import random

import numpy as np
import pytest

from metasched.inner_tasks import MNIST1DConfig, MNIST1DFamily, MNIST1DTask
from metasched.inner_tasks import mnist1d as m1d
from metasched.inner_tasks.smoke import smoke_test_task


@pytest.mark.parametrize("arch, width", [("mlp", 32), ("cnn", 8)])
def test_smoke(arch, width):
    cfg = MNIST1DConfig(arch=arch, width=width, batch_size=16, train_size=500, momentum=0.5)
    smoke_test_task(MNIST1DTask(cfg), lr=0.1, steps=30)


def test_data_is_cached_with_its_hash_and_leaves_global_rngs_alone():
    np_state, py_state = np.random.get_state()[1].copy(), random.getstate()
    data = m1d.mnist1d_data("standard")
    assert data["x"].shape == (4000, 40) and data["x_test"].shape == (1000, 40)
    assert data["x"].dtype == np.float32 and set(np.unique(data["y"])) == set(range(10))
    meta = json.loads(open(data["path"][: -len(".npz")] + ".json").read())
    assert meta["sha256"] == data["sha256"]
    assert np.array_equal(np_state, np.random.get_state()[1]) and py_state == random.getstate()
    noisy = m1d.mnist1d_data("noisy")
    assert noisy["sha256"] != data["sha256"]
    with pytest.raises(ValueError, match="variant"):
        m1d.mnist1d_data("nope")


@pytest.mark.slow
def test_generation_in_a_fresh_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("METASCHED_CACHE", str(tmp_path))
    m1d.mnist1d_data.cache_clear()
    try:
        data = m1d.mnist1d_data("standard")
        assert data["path"].startswith(str(tmp_path))
        # a corrupted cache file is detected by its hash and regenerated
        m1d.mnist1d_data.cache_clear()
        arrays = {k: np.array(data[k]) for k in ("x", "y", "x_test", "y_test")}
        arrays["x"][0, 0] += 1.0
        np.savez(data["path"], **arrays)
        again = m1d.mnist1d_data("standard")
        assert again["sha256"] == data["sha256"]
    finally:
        m1d.mnist1d_data.cache_clear()


def test_family_splits_and_configs():
    fam = MNIST1DFamily(seed=2)
    train = [fam.instance_config("train", i) for i in range(30)]
    assert {c.arch for c in train} == {"mlp", "cnn"}
    assert all(c.variant == "standard" for c in train)
    assert all(c.variant == "noisy" for c in (fam.instance_config("shift", i) for i in range(5)))
    assert fam.instance_config("test", 3) == MNIST1DFamily(seed=2).instance_config("test", 3)
    with pytest.raises(ValueError, match="arch"):
        MNIST1DConfig(arch="rnn")
    with pytest.raises(ValueError, match="train_size"):
        MNIST1DConfig(train_size=5000)
    with pytest.raises(ValueError, match="archs"):
        MNIST1DFamily(archs=("transformer",))


def test_strided_conv_matches_torch_conv1d():
    import torch

    conv = m1d.StridedConv1d(3, 5, 3, stride=2, padding=1)
    with torch.no_grad():
        conv.weight.normal_(generator=torch.Generator().manual_seed(0))
        conv.bias.normal_(generator=torch.Generator().manual_seed(1))
    x = torch.randn(4, 11, 3, generator=torch.Generator().manual_seed(2))
    ref = torch.nn.functional.conv1d(
        x.transpose(1, 2), conv.weight.view(5, 3, 3), conv.bias, stride=2, padding=1
    ).transpose(1, 2)
    torch.testing.assert_close(conv(x), ref)


@pytest.mark.slow
def test_scheduling_matters_tuned_cosine_beats_tuned_constant():
    from metasched.distill.sanity import constant_vs_cosine

    grid = (0.5, 1.0, 2.0, 4.0)  # multiples of the reference LR
    res = constant_vs_cosine("mnist1d", n_train=4, n_val=8, budget=1000, interval=50, grid=grid)
    assert res.eval_median["cosine"] < res.eval_median["constant"], res.table()
