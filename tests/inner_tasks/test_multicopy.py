import numpy as np
import pytest
import torch

from metasched.inner_tasks.charlm import CharLMConfig, CharLMTask
from metasched.inner_tasks.mlp import MLPConfig, MLPTask
from metasched.inner_tasks.mnist1d import MNIST1DConfig, MNIST1DTask
from metasched.inner_tasks.multicopy import train_copies
from metasched.inner_tasks.nmf import NMFConfig, NMFTask

TASKS = {
    "mlp-momentum-wd": lambda: MLPTask(
        MLPConfig(width=16, depth=2, batch_size=8, momentum=0.9, weight_decay=1e-3)
    ),
    "mnist1d-mlp": lambda: MNIST1DTask(MNIST1DConfig(arch="mlp", width=8, train_size=200)),
    "mnist1d-cnn": lambda: MNIST1DTask(MNIST1DConfig(arch="cnn", width=4, train_size=200)),
    "charlm": lambda: CharLMTask(CharLMConfig(context=8, batch_size=2, n_val_windows=2)),
}


def close(a, b):
    for x, y in zip(a["params"], b["params"], strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "name, method",
    [(name, "vmap") for name in TASKS]
    + [("mlp-momentum-wd", "stacked"), ("mnist1d-mlp", "stacked")],
)
@pytest.mark.parametrize("shared", [True, False])
def test_batched_methods_match_sequential(name, method, shared):
    task = TASKS[name]()
    snaps = []
    for seed in range(3):
        task.reset(np.random.default_rng(seed if not shared else 0))
        task.train(3, 0.05)
        snaps.append(task.snapshot())
    own = task.evaluate()
    lrs = [0.02, 0.05, 0.1]
    fast, fast_stats = train_copies(task, snaps, lrs, 6, shared_batches=shared, method=method)
    ref, ref_stats = train_copies(task, snaps, lrs, 6, shared_batches=shared, method="sequential")
    assert task.evaluate() == own  # the task itself is untouched
    for f, r, fs, rs in zip(fast, ref, fast_stats, ref_stats, strict=True):
        close(f, r)
        np.testing.assert_allclose(fs.losses, rs.losses, rtol=1e-4)
        assert fs.n_done == rs.n_done == 6 and not fs.diverged
        assert fs.grad_norm == pytest.approx(rs.grad_norm, rel=1e-3)
        assert fs.update_norm == pytest.approx(rs.update_norm, rel=1e-3)
        assert torch.equal(f["data_gen"], r["data_gen"])
    # results restore into the task and continue identically
    task.restore(fast[1])
    a = task.train(3, 0.05).losses
    task.restore(fast[1])
    np.testing.assert_array_equal(task.train(3, 0.05).losses, a)


@pytest.mark.parametrize("method", ["vmap", "stacked"])
def test_one_copy_diverges_the_others_go_on(method):
    task = TASKS["mlp-momentum-wd"]()
    task.reset(np.random.default_rng(0))
    snap = task.snapshot()
    _, stats = train_copies(task, [snap] * 3, [0.05, 1e5, 0.1], 30, method=method)
    assert stats[1].diverged and stats[1].n_done < 30
    assert not stats[0].diverged and not stats[2].diverged
    assert stats[0].n_done == stats[2].n_done == 30


def test_bad_arguments():
    task = TASKS["mlp-momentum-wd"]()
    task.reset(np.random.default_rng(0))
    snap = task.snapshot()
    with pytest.raises(ValueError, match="equal length"):
        train_copies(task, [snap], [0.1, 0.2], 5)
    with pytest.raises(ValueError, match="lr"):
        train_copies(task, [snap], [float("nan")], 5)
    with pytest.raises(ValueError, match="method"):
        train_copies(task, [snap], [0.1], 5, method="jit")
    cnn = TASKS["mnist1d-cnn"]()
    cnn.reset(np.random.default_rng(0))
    with pytest.raises(ValueError, match="stacked"):
        train_copies(cnn, [cnn.snapshot()], [0.1], 5, method="stacked")
    nmf = NMFTask.from_config(
        NMFConfig(m=10, n=8, rank=2, noise=0, grad_noise=0, batch_size=4, seed=0)
    )
    with pytest.raises(ValueError, match="TorchTask"):
        train_copies(nmf, [snap], [0.1], 5)


def test_auto_is_sequential_for_few_copies_of_non_mlps():
    task = TASKS["mnist1d-cnn"]()
    task.reset(np.random.default_rng(0))
    snap = task.snapshot()
    auto, _ = train_copies(task, [snap] * 3, [0.1, 0.2, 0.3], 5)
    seq, _ = train_copies(task, [snap] * 3, [0.1, 0.2, 0.3], 5, method="sequential")
    for a, s in zip(auto, seq, strict=True):
        for x, y in zip(a["params"], s["params"], strict=True):
            assert torch.equal(x, y)
