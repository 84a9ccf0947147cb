"""The shipped universal policy (issue 14, item 2): loading, plain-loop use, rebuilding."""

import json
import math
import warnings

import pytest
import torch

from metasched import pretrained
from metasched.cli import main
from metasched.errors import ConfigError, UnknownNameError
from metasched.policyfile import load_policy
from metasched.schedulers import LearnedScheduler, TorchLRScheduler, make_scheduler
from metasched.schedulers.base import scheduler_from_state
from metasched.schedulers.rules import RulesScheduler


def test_the_shipped_policy_is_small_and_matches_its_provenance():
    path = pretrained.pretrained_path()
    assert path.suffix == ".msched" and path.stat().st_size < 100_000
    info = pretrained.pretrained_info()
    assert pretrained.policy_digest(path) == info["digest"]
    header = load_policy(path).header
    assert header["env_id"] == "metasched/Mixed-v1" == info["env_id"]
    assert header["env_kwargs"]["clip"] == "auto"
    # chosen on val: the checkpoint is the best mean return of the recorded val history
    best = max(info["val_history"], key=lambda r: r["mean_return"])
    assert best["timesteps"] == info["best_checkpoint_timesteps"]
    assert header["extra"]["which"] == "best"
    # the shipped config is the one the provenance names
    assert pretrained.config_path().read_text().count("metasched/Mixed-v1:") == 1


def test_one_line_loads_and_states_round_trip():
    a = LearnedScheduler.pretrained()
    b = make_scheduler("learned")
    assert a.policy.checksum == b.policy.checksum
    assert b.config == {"pretrained": "universal"}
    assert b.decisions_per_run == 20
    b.reset(0.1)
    again = scheduler_from_state(b.state_dict())
    assert again.policy.checksum == b.policy.checksum and again.lr == b.lr


def test_bad_names_and_arguments_fail_in_one_line(tmp_path):
    with pytest.raises(UnknownNameError, match="universal"):
        LearnedScheduler.pretrained("universl")
    with pytest.raises(ConfigError, match="not both"):
        LearnedScheduler(path=tmp_path / "x.msched", pretrained="universal")
    with pytest.raises(ConfigError, match="distill"):
        RulesScheduler.pretrained()
    with pytest.raises(ConfigError, match="path="):
        make_scheduler("rules")


def _regression(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1024, 10, generator=g)
    w = torch.randn(10, 1, generator=g)
    y = 2 * torch.tanh(x @ w / 10**0.5) + 0.05 * torch.randn(1024, 1, generator=g)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)
    )

    def loss_fn(batch):
        return (model(batch[0]) - batch[1]).pow(2).mean()

    return model, x, y, loss_fn


def _fit(make_opt, name, **kwargs):
    """Train the regression net for 600 steps under scheduler ``name``; return loss, LRs."""
    model, x, y, loss_fn = _regression(0)
    opt = make_opt(model.parameters())
    total = 600
    sched = TorchLRScheduler(opt, name, total_steps=total, loss_fn=loss_fn, **kwargs)
    lrs = []
    for t in range(total):
        i = (t * 32) % 1024
        batch = (x[i : i + 32], y[i : i + 32])
        opt.zero_grad()
        loss = loss_fn(batch)
        loss.backward()
        opt.step()
        sched.step(loss, batch=batch)
        lrs.append(sched.get_last_lr()[0])
    with torch.no_grad():
        return float(loss_fn((x, y))), lrs, sched


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.05),
        lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.9),
        lambda p: torch.optim.Adam(p, lr=3e-3),
    ],
    ids=["sgd", "sgd-momentum", "adam"],
)
def test_a_plain_torch_loop_with_any_optimizer(make_opt):
    end, lrs, sched = _fit(make_opt, "learned", clip="auto")
    assert sched.interval == 600 // 20  # as many decisions per run as in its env
    const, _, _ = _fit(make_opt, "constant")  # the same optimizer at its fixed start LR
    assert math.isfinite(end) and end <= 1.25 * const
    # every LR the run trains with is positive; the one after its last step may be 0 (the
    # shipped policy's cosine anneal ends there, as the cosine schedule does)
    assert all(math.isfinite(lr) and lr > 0 for lr in lrs[:-1]) and lrs[-1] >= 0
    assert len(set(lrs)) > 1  # the policy acts
    assert sched.bound_cost_steps > 0  # and the bound is measured


def test_without_the_clip_it_warns_once_at_construction():
    model, _x, _y, _loss_fn = _regression(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with pytest.warns(UserWarning, match="clip='auto'"):
        TorchLRScheduler(opt, "learned", total_steps=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TorchLRScheduler(opt, "cosine", total_steps=100)


_TINY = """
metasched/Mixed-v1:
  n_timesteps: 64
  n_envs: 2
  vec_env: batched
  env_kwargs: {action: discrete3, budget: 60, steps_per_action: 20,
               family_kwargs: {families: [nmf]}}
  eval_freq: 32
  n_eval_episodes: 2
  checkpoint_freq: 32
  n_steps: 16
  batch_size: 32
  n_epochs: 1
"""


@pytest.fixture
def tiny_config(tmp_path, monkeypatch):
    cfg = tmp_path / "tiny.yml"
    cfg.write_text(_TINY)
    monkeypatch.setattr(pretrained, "config_path", lambda name="universal": cfg)
    return cfg


def test_build_is_reproducible_and_chosen_on_val(tmp_path, tiny_config):
    a = pretrained.build(tmp_path / "a", progress=False)
    b = pretrained.build(tmp_path / "b", progress=False)
    c = pretrained.build(tmp_path / "c", seed=1, progress=False)
    assert a.digest == b.digest != c.digest
    assert a.policy == tmp_path / "a" / "universal.msched"
    info = json.loads((tmp_path / "a" / "universal.json").read_text())
    assert info["digest"] == a.digest and info["n_timesteps"] == 64
    best = max(info["val_history"], key=lambda r: r["mean_return"])
    assert info["best_checkpoint_timesteps"] == best["timesteps"]
    assert a.matches_shipped is None  # other settings than the shipped build
    # the file names its model relative to the build directory, not by this machine's path
    from metasched.policyfile import load_policy

    assert load_policy(a.policy).header["extra"]["source"] == "run/best"
    # an existing build is never overwritten; resuming needs a run
    before = a.policy.read_bytes()
    with pytest.raises(ConfigError):
        pretrained.build(tmp_path / "a", progress=False)
    assert a.policy.read_bytes() == before
    with pytest.raises(ConfigError, match="nothing to resume"):
        pretrained.build(tmp_path / "d", resume=True, progress=False)


def test_cli_info_and_errors(tmp_path, capsys):
    assert main(["pretrained", "info"]) == 0
    out = capsys.readouterr().out
    assert "universal" in out and "metasched/Mixed-v1" in out
    assert main(["pretrained", "info", "--name", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'nope'" in err
    assert main(["pretrained", "build", "--out", str(tmp_path / "x"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_compare_names_the_shipped_policy(tmp_path, monkeypatch):
    from metasched.distill.compare import parse_scheduler

    spec = parse_scheduler("learned:universal")
    assert spec.label == "learned:universal" and spec.name == "learned"
    assert spec.kwargs["path"] == str(pretrained.pretrained_path())
    monkeypatch.chdir(tmp_path)  # a file of that name wins
    (tmp_path / "universal").write_bytes(pretrained.pretrained_path().read_bytes())
    assert parse_scheduler("learned:universal").kwargs["path"] == str(tmp_path / "universal")
    with pytest.raises(ConfigError, match="not found"):
        parse_scheduler("learned:universl")
