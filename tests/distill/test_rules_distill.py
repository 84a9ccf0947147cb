"""Distillation of a (tiny) learned policy into rules and a GreedyLR setting."""

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

import metasched  # noqa: F401  (registers the envs)
from metasched.agents.export import export_model
from metasched.distill.compare import parse_scheduler
from metasched.distill.rules import (
    distill,
    fit_tree,
    format_rules,
    greedy_directions,
    rollout,
)
from metasched.features import FEATURE_NAMES, N_FEATURES
from metasched.schedulers import RulesScheduler

ENV = {"budget": 200, "steps_per_action": 50, "action": "discrete3"}


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    venv = DummyVecEnv([lambda: gym.make("metasched/NMF-v1", **ENV)])
    model = PPO("MlpPolicy", venv, n_steps=32, batch_size=32, n_epochs=1, seed=0,
                policy_kwargs={"net_arch": [8]}, device="cpu")  # fmt: skip
    model.learn(64)
    path = tmp_path_factory.mktemp("policy") / "p.msched"
    return export_model(model, path, env_id="metasched/NMF-v1", env_kwargs=ENV, obs_norm=None)


def test_rollout_records_every_applied_decision(policy):
    ros = rollout(policy, "nmf", "train", [0, 1], budget=200, interval=50)
    for ro in ros:
        assert ro.obs.shape == (4, N_FEATURES) and ro.actions.shape == (4,)
        assert len(ro.signals) == 5 and set(ro.directions) <= {-1, 0, 1}


def test_tree_reproduces_a_rule_it_can_express(policy):
    ros = rollout(policy, "nmf", "train", range(4), budget=200, interval=50)
    budget = FEATURE_NAMES.index("budget_used")
    for ro in ros:  # relabel: halve after half the budget, double before
        ro.actions = np.where(ro.obs[:, budget] > 0.5, 0, 2)
    tree = fit_tree(ros, "discrete3", max_depth=2)
    text = format_rules(tree, "discrete3")
    assert "x0.5" in text and "x2" in text
    assert tree["left"][0] >= 0  # one split survives pruning

    def act(x):  # the tree reproduces the rule on every observation (another feature that
        node = 0  # separates these rollouts as well as budget_used may be the one it splits on)
        while tree["left"][node] >= 0:
            go_left = x[tree["feature"][node]] <= tree["threshold"][node]
            node = tree["left"][node] if go_left else tree["right"][node]
        return tree["action"][node]

    for ro in ros:
        assert [act(x) for x in ro.obs] == ro.actions.tolist()


def test_distill_end_to_end(policy, tmp_path):
    out = tmp_path / "rules.json"
    d = distill(policy, out, n_train=3, n_val=2, budget=200, log=lambda m: None)
    rules = RulesScheduler(path=out)
    assert rules.decision_interval == 50 and rules.action_mode == "discrete3"
    for x in (d.tree_agreement_train, d.tree_agreement_val, d.greedy.agreement,
              d.greedy_agreement_val):  # fmt: skip
        assert 0.0 <= x <= 1.0
    assert d.tree_agreement_train >= 0.5  # a depth-3 tree on 12 decisions
    assert parse_scheduler(d.greedy.spec()).name == "greedy"
    assert "Distilled rules" in d.summary() and d.greedy.spec() in d.summary()


def test_greedy_teacher_forcing(policy):
    ro = rollout(policy, "nmf", "train", [0], budget=200, interval=50)[0]
    # patience 0 with an unreachable threshold: the first loss improves on best = inf (the
    # LR rises), every later one is "bad" (the LR falls)
    d = greedy_directions({"factor": 0.5, "patience": 0, "threshold": 0.99}, ro, ro.base_lr)
    assert d.tolist() == [0, 1, -1, -1]
    d = greedy_directions({"factor": 0.5, "patience": 100, "threshold": 0.0}, ro, ro.base_lr)
    assert np.all(d == 0)
