"""Nothing that selects touches test or shift: training (with its best checkpoint),
distillation, the tuned baselines and ``metasched check`` run with every family's test/shift
instance construction patched to raise."""

import pytest

from metasched.agents.config import load_config
from metasched.agents.train import export_run, train
from metasched.distill.compare import CompareSpec, tune
from metasched.distill.rules import distill
from metasched.distill.sanity import constant_vs_cosine
from metasched.inner_tasks import TASK_FAMILIES, make_family
from metasched.inner_tasks.base import TaskFamily

FORBIDDEN = ("test", "shift")


class Leak(AssertionError):
    """A test or shift instance was built."""


@pytest.fixture
def sealed(monkeypatch):
    """Make every family raise on building (or seeding) a test/shift instance."""
    classes = {type(make_family(name, 0)) for name in TASK_FAMILIES}
    for cls in classes:
        real = cls.instance_config

        def guarded(self, split, index, _real=real):
            if split in FORBIDDEN:
                raise Leak(f"{type(self).__name__} built {split} instance {index}")
            return _real(self, split, index)

        monkeypatch.setattr(cls, "instance_config", guarded)
    real_rng = TaskFamily.rng_for

    def rng_for(self, split, index):
        if split in FORBIDDEN:
            raise Leak(f"{type(self).__name__} seeded {split} instance {index}")
        return real_rng(self, split, index)

    monkeypatch.setattr(TaskFamily, "rng_for", rng_for)


def test_the_seal_holds(sealed):
    for name in ("nmf", "mlp", "mixed"):
        fam = make_family(name, 0)
        fam.make("val", 0) if name == "nmf" else fam.instance_config("val", 0)
        for split in FORBIDDEN:
            with pytest.raises(Leak):
                fam.instance_config(split, 0)


def test_training_distillation_and_tuning_never_touch_test_or_shift(sealed, tmp_path):
    env = {"budget": 200, "steps_per_action": 50}
    cfg = load_config(
        "ppo",
        "metasched/NMF-v0",
        overrides={
            "n_timesteps": 256, "n_envs": 4, "vec_env": "dummy", "eval_freq": 128,
            "checkpoint_freq": 128, "n_eval_episodes": 2, "policy_kwargs": {"net_arch": [16]},
            "env_kwargs": env, "n_steps": 32, "batch_size": 64, "n_epochs": 1,
        },
    )  # fmt: skip
    res = train(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    assert len(res.eval_history) >= 2  # evaluations (and the best checkpoint) ran, on val
    policy = export_run(tmp_path / "run", tmp_path / "policy.msched", which="best")

    d = distill(policy, tmp_path / "rules.json", n_train=2, n_val=2, budget=200,
                log=lambda m: None)  # fmt: skip
    assert 0.0 <= d.tree_agreement_val <= 1.0

    spec = CompareSpec(n_instances=2, tune_instances=2, grid=(0.5, 1.0, 2.0), joint_grid=(1.0,),
                       budget=200, interval=50)  # fmt: skip
    tuning = tune(spec, ["constant", "cosine", "greedy-tuned"], tmp_path / "cmp")
    assert set(tuning) == {"nmf/constant", "nmf/cosine", "nmf/greedy-tuned"}

    check = constant_vs_cosine("nmf", n_train=2, n_val=2, budget=100,
                               interval=50, grid=(1.0, 2.0))  # fmt: skip
    assert check.split == "val"
