import dataclasses

import numpy as np
import pytest

from metasched.inner_tasks import MLPConfig, MLPFamily, MLPTask, make_family
from metasched.inner_tasks.smoke import smoke_test_task


def tiny(**kw):
    return MLPConfig(**{"width": 16, "depth": 1, "batch_size": 16, **kw})


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_smoke(momentum):
    report = smoke_test_task(MLPTask(tiny(momentum=momentum, label_noise=0.2)), lr=0.2, steps=40)
    assert report["after"] < 0.7 * report["before"]


def test_weight_decay_and_divergence_factor():
    task = MLPTask(tiny(weight_decay=1e-3), divergence_factor=1.5)
    task.reset(np.random.default_rng(0))
    assert task.train(20, 0.1).n_done == 20
    task.reset(np.random.default_rng(0))
    assert task.train(200, 50.0).diverged  # exploding (above 1.5x initial), not only NaN


def test_learns_digits_quickly_at_a_good_lr():
    task = MLPTask(MLPConfig(width=64, depth=1, batch_size=32))
    task.reset(np.random.default_rng(0))
    task.train(100, 0.3)
    assert task.accuracy() > 0.9
    assert task.has_validation and task.default_lr() > 0


def test_label_noise_only_touches_training_labels():
    clean, noisy = MLPTask(tiny(seed=3)), MLPTask(tiny(seed=3, label_noise=0.5))
    assert np.array_equal(clean.y_val.numpy(), noisy.y_val.numpy())
    frac = float((clean.y_train != noisy.y_train).float().mean())
    assert 0.3 < frac < 0.6  # half are redrawn, 1/10 of those land on the true class


@pytest.mark.parametrize(
    "field, value",
    [
        ("width", 0),
        ("depth", -1),
        ("batch_size", 1.5),
        ("momentum", 1.0),
        ("label_noise", 1.5),
        ("init_scale", float("nan")),
        ("val_fraction", 0.0),
    ],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        tiny(**{field: value})


def test_family_is_pure_and_splits_differ():
    fam = MLPFamily(seed=1)
    assert fam.instance_config("test", 4) == MLPFamily(seed=1).instance_config("test", 4)
    assert fam.instance_config("test", 4) != fam.instance_config("train", 4)
    names = {fam.instance_config("train", i).name for i in range(20)}
    assert len(names) == 20
    shift = [fam.instance_config("shift", i) for i in range(20)]
    assert all(c.input_noise > 0 and c.label_noise >= 0.3 for c in shift)
    assert isinstance(make_family("mlp"), MLPFamily)
    task = fam.make_task(fam.instance_config("train", 0), divergence_factor=10.0)
    assert task.divergence_factor == 10.0 and task.name == fam.instance_config("train", 0).name
    with pytest.raises(ValueError, match="widths"):
        MLPFamily(widths=())
    with pytest.raises(ValueError, match="label_noise"):
        MLPFamily(label_noise=(0.5, 0.2))


def test_config_name_is_deterministic():
    cfg = tiny(split="test", index=3, label_noise=0.25)
    assert cfg.name == "mlp-w16-d1-b16-i1.00-m0.00-n0.25-x0.00-test3"
    assert dataclasses.replace(cfg).name == cfg.name


@pytest.mark.slow
def test_scheduling_matters_tuned_cosine_beats_tuned_constant():
    from metasched.distill.sanity import constant_vs_cosine

    grid = (0.5, 1.0, 2.0, 4.0)  # multiples of the reference LR
    res = constant_vs_cosine("mlp", n_train=6, n_val=12, budget=800, interval=40, grid=grid)
    med = res.eval_median
    assert med["cosine"] < med["constant"], res.table()
    assert res.cosine_win_rate >= 0.6, res.table()
