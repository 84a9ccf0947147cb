import math

import numpy as np
import pytest

from metasched.inner_tasks.base import InnerTask, StepStats
from metasched.inner_tasks.nmf import NMFTask
from metasched.loop import Driver
from metasched.schedulers import (
    HypergradientScheduler,
    make_scheduler,
    run_schedule,
)


def _tiny_task():
    rng = np.random.default_rng(0)
    V = rng.random((6, 4)) + 0.5
    return NMFTask.from_matrix(V, rank=2, batch_size=4)  # power-of-two batch: exact M g


def _hand_steps(task, base, beta, granularity, n=3):
    """Independent re-derivation of SGD-HD on projected NMF (no gradient noise)."""
    snap = task.snapshot()
    rng = np.random.default_rng()
    rng.bit_generator.state = snap["rng"]
    W, H, V = snap["W"].copy(), snap["H"].copy(), task.V
    m, n_cols = V.shape
    b = task.batch_size
    if granularity == "global":
        alpha = [base, base]
    elif granularity == "group":
        alpha = [base, base]
    else:
        alpha = [np.full(W.shape, base), np.full(H.shape, base)]
    prev = None
    alphas = []
    for _ in range(n):
        rows = (rng.random(b) * m).astype(np.intp)
        res = W[rows] @ H - V[rows]
        gw = np.zeros_like(W)
        gw[rows] = res @ H.T / (b * n_cols)  # gradient of the minibatch loss
        gh = W[rows].T @ res / (b * n_cols)
        dirs = [b * gw, gh]  # NMF's row-local preconditioning of W
        grads = [gw, gh]
        if prev is not None:
            if granularity == "global":
                h = sum(float(np.sum(g * s)) for g, s in zip(grads, prev, strict=True))
                alpha = [alpha[0] - beta * h] * 2
            elif granularity == "group":
                alpha = [
                    a - beta * float(np.sum(g * s))
                    for a, g, s in zip(alpha, grads, prev, strict=True)
                ]
            else:
                alpha = [a - beta * g * s for a, g, s in zip(alpha, grads, prev, strict=True)]
        alphas.append([np.copy(a) for a in alpha])
        new = []
        prev = []
        for p, d, a in zip((W, H), dirs, alpha, strict=True):
            raw = p - a * d
            new.append(np.maximum(raw, 0.0))
            prev.append(np.where(raw > 0, -d, 0.0))
        W, H = new
    return W, H, alphas


@pytest.mark.parametrize("granularity", ["global", "group", "param"])
def test_three_steps_match_hand_computation(granularity):
    task = _tiny_task()
    drv = Driver(task, budget=3, interval=3, clip="none")
    drv.start(np.random.default_rng(1))
    base, beta = 0.3, 5.0  # a large beta so that alpha visibly moves
    W_ref, H_ref, alphas = _hand_steps(task, base, beta, granularity)
    s = HypergradientScheduler(beta=beta, granularity=granularity, min_ratio=1e-9)
    s.reset(base)
    s.advance(drv)
    np.testing.assert_allclose(task.W, W_ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(task.H, H_ref, rtol=1e-12, atol=1e-15)
    final = alphas[-1]
    if granularity == "global":
        assert s.alpha == pytest.approx(float(final[0]), rel=1e-12)
        assert s.alpha != pytest.approx(base, rel=1e-6)
    elif granularity == "group":
        assert s.alpha == pytest.approx([float(a) for a in final], rel=1e-12)
    else:
        for got, want in zip(s.alpha, final, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-12)
        assert not np.allclose(s.alpha[1], base)
    assert s.lr == pytest.approx(s.mean_alpha())


def test_beta_zero_is_plain_sgd_at_the_base_lr(nmf_family):
    import dataclasses

    fam = nmf_family
    cfg = dataclasses.replace(fam.instance_config("test", 1), grad_noise=0.0, batch_size=32)
    a = run_schedule(fam.make_task(cfg), make_scheduler("constant"), budget=200, interval=50)
    b = run_schedule(fam.make_task(cfg), HypergradientScheduler(beta=0.0), budget=200, interval=50)
    np.testing.assert_array_equal(a["train_loss"], b["train_loss"])
    assert a.final_loss == b.final_loss


def test_alpha_stays_within_floor_and_cap(nmf_task):
    task = nmf_task(0)
    s = HypergradientScheduler(beta=1e4, granularity="param", min_ratio=0.1, max_ratio=2.0)
    tr = run_schedule(task, s, budget=300, interval=50, clip="none")
    base = tr["lr"][1]
    lo, hi = s.bounds(base)
    for a in s.alpha:
        assert np.all(a >= lo * (1 - 1e-12)) and np.all(a <= hi * (1 + 1e-12))


def test_state_round_trip_keeps_arrays_exactly(nmf_task, json_round_trip):
    task = nmf_task(2)
    s = HypergradientScheduler(beta=1.0, granularity="param")
    s.reset(0.2)
    drv = Driver(task, budget=200, interval=20)
    drv.start(np.random.default_rng(0))
    s.advance(drv)
    t = json_round_trip(s)
    for a, b in zip(s.alpha, t.alpha, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(s.prev_sens, t.prev_sens, strict=True):
        np.testing.assert_array_equal(a, b)


class _NoGradients(InnerTask):
    name = "no-gradients-task"

    def reset(self, generator):
        self.x = 1.0

    def train(self, n_steps, lr):
        return StepStats(np.ones(n_steps), 1.0, 1.0, False, n_steps)

    def evaluate(self):
        return 1.0

    def snapshot(self):
        return self.x

    def restore(self, snap):
        self.x = snap


@pytest.mark.parametrize("name", ["hypergradient", "sls"])
def test_task_without_gradients_is_a_clear_error(name):
    with pytest.raises(ValueError, match="no-gradients-task"):
        run_schedule(_NoGradients(), make_scheduler(name), budget=10, interval=5)


@pytest.mark.parametrize(
    "kw", [{"beta": -1.0}, {"granularity": "layer"}, {"min_ratio": 0}, {"max_ratio": math.nan}]
)
def test_bad_arguments(kw):
    with pytest.raises(ValueError, match=str(next(iter(kw.values())))[:3]):
        HypergradientScheduler(**kw)


@pytest.mark.parametrize("granularity", ["global", "group", "param"])
def test_end_to_end_on_nmf(granularity, nmf_task):
    task = nmf_task(0)
    tr = run_schedule(
        task, HypergradientScheduler(beta=0.1, granularity=granularity), budget=2000, interval=50
    )
    assert not tr.diverged and tr.final_loss < 0.5 * tr["train_loss"][0]
    assert tr.extra_steps == 0 and tr.total_steps == 2000
    assert np.all(np.isfinite(tr["lr"][1:])) and np.all(tr["lr"][1:] > 0)


def test_same_gradient_noise_as_constant_on_a_paired_problem(nmf_family):
    """With the default gradient noise, HD at β = 0 is ``constant`` bit for bit.

    The noise of an interval is drawn in one block by ``train`` and by the gradient
    interface alike (``plan_steps``), so HD sees the stream every other scheduler sees.
    """
    fam = nmf_family
    cfg = fam.instance_config("test", 1)
    assert cfg.grad_noise > 0 and cfg.batch_size in (16, 32, 64)
    a = run_schedule(fam.make_task(cfg), make_scheduler("constant"), budget=300, interval=50)
    b = run_schedule(fam.make_task(cfg), HypergradientScheduler(beta=0.0), budget=300, interval=50)
    np.testing.assert_array_equal(a["train_loss"], b["train_loss"])
    assert a.final_loss == b.final_loss
