"""End to end on tiny budgets: train every algorithm, resume, survive SIGKILL, export."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from metasched.agents.config import algo_class, load_config
from metasched.agents.rundir import checkpoint_dirs, read_config
from metasched.agents.train import export_run, train
from metasched.cli import main
from metasched.errors import ConfigError
from metasched.features import N_FEATURES

TINY_ENV = {"budget": 200, "steps_per_action": 50}
TINY = {
    "ppo": {"n_steps": 32, "batch_size": 64, "n_epochs": 2},
    "a2c": {"n_steps": 8},
    "recurrentppo": {"n_steps": 32, "batch_size": 64, "n_epochs": 1},
    "dqn": {"learning_starts": 64, "buffer_size": 2000, "batch_size": 32},
    "sac": {"learning_starts": 64, "buffer_size": 2000, "batch_size": 32},
    "td3": {"learning_starts": 64, "buffer_size": 2000, "batch_size": 32},
}


def tiny_config(algo, **over):
    overrides = {
        "n_timesteps": 256,
        "n_envs": 4,
        "vec_env": "dummy",
        "eval_freq": 128,
        "checkpoint_freq": 128,
        "n_eval_episodes": 2,
        "policy_kwargs": {"net_arch": [16]},
        "env_kwargs": TINY_ENV,
        **TINY[algo],
        **over,
    }
    return load_config(algo, "metasched/NMF-v1", overrides=overrides)


@pytest.mark.parametrize("algo", sorted(TINY))
def test_each_algorithm_trains_and_exports(algo, tmp_path):
    from metasched.policyfile import load_policy

    res = train(tiny_config(algo), tmp_path / "run", progress=False, log=lambda s: None)
    assert res.timesteps >= 256
    assert res.eval_history[0]["timesteps"] == 0
    run = tmp_path / "run"
    for name in ("config.yaml", "command.txt", "version.json", "eval.csv", "baselines.json"):
        assert (run / name).is_file(), name
    assert (run / "best" / "model.zip").is_file() and (run / "final" / "model.zip").is_file()
    assert (run / "tb").is_dir()
    out = export_run(run, tmp_path / "policy.msched")
    pol = load_policy(out)
    obs = np.zeros((5, N_FEATURES), dtype=np.float32)
    actions, _ = pol.predict(obs)
    assert len(actions) == 5


def test_batched_vec_env_trains(tmp_path):
    cfg = tiny_config("ppo", vec_env="batched", n_envs=8)
    res = train(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    assert res.timesteps == 256


def test_existing_run_is_never_overwritten(tmp_path):
    run = tmp_path / "run"
    train(tiny_config("a2c"), run, progress=False, log=lambda s: None)
    before = (run / "final" / "model.zip").read_bytes()
    with pytest.raises(ConfigError, match="not empty"):
        train(tiny_config("a2c"), run, progress=False, log=lambda s: None)
    assert (run / "final" / "model.zip").read_bytes() == before


def test_resume_continues_to_the_new_target(tmp_path):
    run = tmp_path / "run"
    first = train(tiny_config("ppo"), run, progress=False, log=lambda s: None)
    again = train(None, run, resume=True, total_timesteps=512, progress=False,
                  log=lambda s: None)
    assert again.resumed_from == first.timesteps and again.timesteps == 512
    hist = [r["timesteps"] for r in again.eval_history]
    assert hist == sorted(hist) and hist[0] == 0 and hist[-1] == 512
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.yaml").write_text((run / "config.yaml").read_text())
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(None, bare, resume=True, progress=False)
    with pytest.raises(ConfigError, match="not a metasched run directory"):
        train(None, tmp_path / "empty", resume=True, progress=False)


def _cli(*args):
    return [sys.executable, "-m", "metasched.cli", *args]


def test_sigkill_mid_run_then_resume(tmp_path):
    """Kill a training subprocess with SIGKILL; --resume finishes the run; checkpoints load."""
    run = tmp_path / "run"
    target = 6144  # 24 rollouts of 4 envs x 64 steps
    hp = tmp_path / "hp.yml"
    hp.write_text("n_steps: 64\nbatch_size: 64\nn_epochs: 2\npolicy_kwargs: {net_arch: [16]}\n")
    args = ["train", "--algo", "ppo", "--out", str(run), "--timesteps", str(target),
            "--n-envs", "4", "--vec-env", "dummy", "--checkpoint-freq", "512",
            "--eval-freq", "0", "--eval-episodes", "1", "--hyperparams", str(hp),
            "--env-kwarg", "budget=200", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cli(*args), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(checkpoint_dirs(run)) < 3:
        if proc.poll() is not None:
            pytest.fail(f"training ended early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(int(p.name.split("_")[1]) for p in checkpoint_dirs(run))
    assert killed_at < target
    done = subprocess.run(_cli("train", "--out", str(run), "--resume", "--no-progress"),
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stdout
    cls = algo_class(read_config(run)["algo"])
    ckpts = checkpoint_dirs(run)
    steps = [int(json.loads((c / "state.json").read_text())["timesteps"]) for c in ckpts]
    assert steps[-1] == target
    for c in ckpts:  # every checkpoint on disk loads
        model = cls.load(c / "model.zip", device="cpu")
        assert model.num_timesteps == int(c.name.split("_")[1])
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_cli_errors_exit_2(tmp_path, capsys):
    assert main(["train", "--algo", "ppoo", "--out", str(tmp_path / "r")]) == 2
    assert "did you mean 'ppo'" in capsys.readouterr().err
    assert main(["train", "--algo", "dqn", "--env-kwarg", "action=continuous",
                 "--out", str(tmp_path / "r")]) == 2
    assert "dqn cannot act" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "nothing"), "--resume"]) == 2
    assert "not a metasched run directory" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), "-o", str(tmp_path / "p.msched")]) == 2
    assert not (tmp_path / "r").exists()


# -- issue 12, item 5: a failed start leaves a usable run directory ----------------------------
def test_invalid_env_setting_fails_before_the_run_directory_exists(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="divergence_factor must be > 1"):
        train(tiny_config("a2c", env_kwargs={**TINY_ENV, "divergence_factor": 0.5}), run,
              progress=False, log=lambda s: None)  # fmt: skip
    assert not run.exists()
    train(tiny_config("a2c"), run, progress=False, log=lambda s: None)  # the same --out works
    assert (run / "final" / "model.zip").is_file()


@pytest.mark.parametrize("existed", [False, True])
def test_a_start_that_fails_midway_removes_what_it_created(tmp_path, monkeypatch, existed):
    import metasched.agents.train as tr

    run = tmp_path / "run"
    if existed:
        run.mkdir()  # an empty directory the user made stays, empty

    def broken(*args, **kwargs):
        raise RuntimeError("reference policy crashed")

    monkeypatch.setattr(tr, "evaluate_policy", broken)
    with pytest.raises(RuntimeError, match="reference policy crashed"):
        train(tiny_config("a2c"), run, progress=False, log=lambda s: None)
    assert run.is_dir() == existed and (not existed or not any(run.iterdir()))
    monkeypatch.undo()
    res = train(tiny_config("a2c"), run, progress=False, log=lambda s: None)
    assert res.timesteps >= 256


def _start_and_die(run):  # runs in a forked child: SIGKILL during the reference policies
    import metasched.agents.train as tr

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    tr.evaluate_policy = die
    train(tiny_config("a2c"), run, progress=False, log=lambda s: None)
    os._exit(0)


def test_a_start_killed_midway_leaves_the_run_directory_usable(tmp_path):
    import multiprocessing as mp

    run = tmp_path / "run"
    proc = mp.get_context("fork").Process(target=_start_and_die, args=(run,))
    proc.start()
    proc.join(120)
    assert proc.exitcode == -signal.SIGKILL
    assert not run.exists()
    res = train(tiny_config("a2c"), run, progress=False, log=lambda s: None)
    assert res.timesteps >= 256


def test_a_crash_after_the_start_can_be_resumed(tmp_path, monkeypatch):
    """The start ends with a checkpoint at step 0, so --resume works even before the first
    periodic checkpoint."""
    import metasched.agents.train as tr

    run = tmp_path / "run"
    real = tr._Trainer.evaluate
    calls = []

    def evaluate(self):
        calls.append(1)
        if len(calls) == 2:  # the first periodic evaluation, before the first checkpoint
            raise RuntimeError("crash in training")
        return real(self)

    monkeypatch.setattr(tr._Trainer, "evaluate", evaluate)
    with pytest.raises(RuntimeError, match="crash in training"):
        train(tiny_config("ppo"), run, progress=False, log=lambda s: None)
    monkeypatch.undo()
    res = train(None, run, resume=True, progress=False, log=lambda s: None)
    assert res.resumed_from == 0 and res.timesteps >= 256
