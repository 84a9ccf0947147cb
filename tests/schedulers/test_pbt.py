import numpy as np
import pytest

from metasched.inner_tasks.costs import eval_cost
from metasched.inner_tasks.gradients import HyperparameterTask
from metasched.inner_tasks.nmf import NMFFamily, NMFTask, planted_matrix
from metasched.loop import Driver
from metasched.schedulers import PBTScheduler, Run, run_schedule

FAMILY = NMFFamily(seed=0)


def _driver(task=None, budget=400, interval=25):
    task = task or FAMILY.make("test", 0)
    drv = Driver(task, budget=budget, interval=interval, clip="none")
    drv.start(np.random.default_rng(0))
    return drv


@pytest.mark.parametrize("exploit", ["truncation", "tournament"])
def test_exploit_copies_weights_and_hyperparameters_and_perturbs_by_the_factors(exploit):
    drv = _driver()
    s = PBTScheduler(
        population=5, ready=1, exploit=exploit, resample_p=0.0, lr_range=[0.01, 100.0], seed=3
    )
    s.reset(drv.task.default_lr())
    s.advance(drv)
    assert s.history, "one round must have exploited"
    sources = {h["source"] for h in s.history}
    members = {h["member"] for h in s.history}
    assert not sources & members or exploit == "tournament"
    for h in s.history:
        i, j = h["member"], h["source"]
        mi, mj = s.members[i], s.members[j]
        if j in members:
            continue  # the source itself copied someone else in the same round
        for key in ("W", "H"):
            np.testing.assert_array_equal(mi["snap"]["task"][key], mj["snap"]["task"][key])
        assert mi["snap"]["task"]["rng"] == mj["snap"]["task"]["rng"]
        assert h["copied"] == mj["hp"]
        ratio = h["after"]["lr"] / h["copied"]["lr"]
        assert (
            ratio in (0.8, 1.2)
            or ratio == pytest.approx(0.8, rel=1e-15)
            or (ratio == pytest.approx(1.2, rel=1e-15))
        )
        assert mi["score"] == mj["score"]


def test_truncation_replaces_exactly_the_bottom_fifth():
    drv = _driver()
    s = PBTScheduler(population=10, ready=1, resample_p=0.0, lr_range=[0.01, 100.0])
    s.reset(drv.task.default_lr())
    # record scores before the exploit by running one interval without exploiting
    s2 = PBTScheduler(population=10, ready=1000, resample_p=0.0, lr_range=[0.01, 100.0])
    s2.reset(drv.task.default_lr())
    drv2 = _driver()
    s2.advance(drv2)
    order = sorted(range(10), key=lambda i: (s2.members[i]["score"], i))
    s.advance(drv)
    assert sorted(h["member"] for h in s.history) == sorted(order[-2:])
    assert all(h["source"] in order[:2] for h in s.history)


def test_resample_draws_from_the_prior():
    drv = _driver()
    s = PBTScheduler(population=6, ready=1, resample_p=1.0, lr_range=[0.5, 2.0])
    base = drv.task.default_lr()
    s.reset(base)
    s.advance(drv)
    for h in s.history:
        assert 0.5 * base <= h["after"]["lr"] <= 2.0 * base


def test_seeded_run_is_reproducible_and_compute_is_population_times_budget():
    def go(seed):
        return run_schedule(
            FAMILY.make("test", 1),
            PBTScheduler(population=4, ready=2, seed=seed),
            budget=300,
            interval=25,
            seed=0,
        )

    a, b, c = go(1), go(1), go(2)
    for col in ("lr", "train_loss", "inner_steps"):
        np.testing.assert_array_equal(a[col], b[col])
    assert a.final_loss == b.final_loss
    assert not np.array_equal(a["lr"], c["lr"])
    # training: the population's steps; plus one full-data evaluation per member and
    # interval (NMF has no validation set), each charged the measured NMF eval cost
    evals = 4 * (300 // 25)
    cost = eval_cost(FAMILY.make("test", 1))
    assert a.extra_steps == 3 * 300 + round(evals * cost)
    assert a.total_steps == 4 * 300 + round(evals * cost)
    assert a["inner_steps"][-1] == a.total_steps


def test_main_line_is_the_best_member():
    run = Run(FAMILY.make("test", 2), PBTScheduler(population=4, ready=3), budget=300, interval=50)
    run.start(0)
    while not run.done:
        sig = run.step()
        s = run.scheduler
        best = s.members[s.best]
        assert best["score"] == min(m["score"] for m in s.members)
        assert run.task.evaluate() == best["score"]
        assert s.lr == best["hp"]["lr"]
        assert sig.step == best["snap"]["step"]
    assert run.trace.final_loss == min(m["score"] for m in run.scheduler.members)


def test_ttest_exploit_runs_and_state_resumes_from_json(resumed_run):
    def run():
        pbt = PBTScheduler(population=4, ready=2, exploit="ttest")
        return Run(FAMILY.make("test", 0), pbt, budget=300, interval=25)

    ref = run()
    ref.start(5)
    whole = ref.run()
    tr = resumed_run(run(), seed=5, cut=5)
    np.testing.assert_array_equal(tr["train_loss"], whole["train_loss"])
    assert tr.final_loss == whole.final_loss and tr.extra_steps == whole.extra_steps


class TunableNMF(NMFTask, HyperparameterTask):
    """NMF that accepts a momentum setting (ignored by the maths; recorded for the test)."""

    def hyperparameters(self):
        return {"momentum": getattr(self, "mu", 0.0)}

    def set_hyperparameters(self, **values):
        self.mu = values["momentum"]
        self.seen = [*getattr(self, "seen", []), self.mu]


def test_extra_hyperparameters_are_searched_where_supported_and_skipped_otherwise():
    cfg = FAMILY.instance_config("test", 0)
    task = TunableNMF(planted_matrix(cfg), cfg.rank, batch_size=cfg.batch_size)
    s = PBTScheduler(population=4, ready=1, momentum=[0.0, 0.9], resample_p=0.0)
    run_schedule(task, s, budget=100, interval=25)
    assert all(0.0 <= m["hp"]["momentum"] <= 0.9 for m in s.members)
    assert len(task.seen) == 4 * 4
    with pytest.warns(UserWarning, match="no tunable momentum"):
        run_schedule(
            FAMILY.make("test", 0),
            PBTScheduler(population=2, momentum=[0.0, 0.9]),
            budget=50,
            interval=25,
        )


@pytest.mark.parametrize(
    "kw",
    [
        {"population": 1},
        {"exploit": "roulette"},
        {"truncation": 0.7},
        {"resample_p": 1.5},
        {"perturb": [1.2]},
        {"momentum": [0.5, 1.0]},
        {"lr_range": [2.0, 1.0]},
    ],
)
def test_bad_arguments(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        PBTScheduler(**kw)


def test_end_to_end_on_nmf_budget_2000():
    tr = run_schedule(FAMILY.make("test", 0), PBTScheduler(), budget=2000, interval=50)
    assert not tr.diverged and tr.final_loss < 0.5 * tr["train_loss"][0]
    assert tr.extra_steps == 7 * 2000 + round(8 * 40 * eval_cost(FAMILY.make("test", 0)))


def test_driver_measured_scores_of_members_off_the_main_line_count_as_evaluations(tiny_mlp):
    task = tiny_mlp(width=8)
    s = PBTScheduler(population=3, ready=100)
    tr = run_schedule(task, s, budget=60, interval=20)
    # the driver measures every member's validation loss; the main line's is its own
    assert s.extra_evals == 2 * 3
    assert tr.extra_steps == 2 * 60 + round(6 * eval_cost(task))
