"""Population-based training on Ray Tune: the ``pbt`` scheduler's settings, members as trials.

:func:`pbt_on_ray` trains a population on one problem (task family, split, instance, seed)
with Ray Tune's ``PopulationBasedTraining`` instead of the in-process
:class:`~metasched.schedulers.pbt.PBTScheduler`, so a population can be larger than one
machine: every member is a one-CPU Tune trial that owns its copy of the inner task and
advances it one decision interval per Tune iteration, checkpointing the full driver state
(task parameters, optimizer, RNG) so Tune's *exploit* copies a better member exactly.

The settings mean the same as in :class:`~metasched.schedulers.pbt.PBTScheduler` (and are
validated by it): the initial LRs are the same log-uniform draws from ``lr_range × reference
LR`` (upper end capped at the stability bound), Tune perturbs every ``ready`` intervals
(``synch=True``: in lockstep, like the in-process population), exploit is truncation
selection with ``truncation`` as Tune's ``quantile_fraction``, explore multiplies by one of
``perturb`` or, with probability ``resample_p``, resamples from the prior. Differences that
remain: only the ``truncation`` exploit and only the LR are supported; Tune's explore does
not clip into the prior; Tune draws its exploit partners and explore moves from Python's
global ``random`` generator, so runs are not bit-reproducible.
"""

from __future__ import annotations

import math
import os
import pickle
import tempfile
import time
from pathlib import Path
from typing import Any

from metasched.errors import ConfigError

__all__ = ["pbt_on_ray"]

#: Score of a diverged member (Tune's ranking needs a finite number).
DIVERGED = 1e300


def _problem(cfg: dict[str, Any]) -> tuple[Any, Any]:
    """Build the member's task and driver at step 0 (the same start for every member)."""
    from metasched.distill.compare import _family, problem_rng
    from metasched.loop import Driver

    task = _family(cfg["family"], cfg["family_seed"]).make(cfg["split"], cfg["index"])
    driver = Driver(task, cfg["budget"], cfg["interval"], clip=cfg["clip"], kappa=cfg["kappa"])
    driver.start(problem_rng(cfg["family_seed"], cfg["split"], cfg["index"], cfg["seed"]))
    return task, driver


def _member(config: dict[str, Any]) -> None:
    """One PBT member as a Tune function trainable: one decision interval per report."""
    import torch
    from ray import tune

    torch.set_num_threads(1)
    task, driver = _problem(config["problem"])
    ckpt = tune.get_checkpoint()
    if ckpt is not None:  # a restart, or an exploit: continue from the (donor's) state
        with ckpt.as_directory() as d:
            driver.restore(pickle.loads((Path(d) / "member.pkl").read_bytes()))
    while not driver.done:
        sig, _ = driver.advance(float(config["lr"]))
        if driver.diverged:
            loss = DIVERGED
        else:
            loss = float(sig.val_loss) if sig.val_loss is not None else float(task.evaluate())
            loss = loss if math.isfinite(loss) else DIVERGED
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "member.pkl").write_bytes(pickle.dumps(driver.snapshot()))
            tune.report(
                {"loss": loss, "step": driver.step, "lr": float(config["lr"])},
                checkpoint=tune.Checkpoint.from_directory(d),
            )


def pbt_on_ray(
    family: str,
    *,
    index: int = 0,
    split: str = "test",
    seed: int = 0,
    family_seed: int = 0,
    budget: int | None = None,
    interval: int | None = None,
    clip: str | None = None,
    kappa: float | None = None,
    address: str | None = None,
    storage_path: str | os.PathLike[str] | None = None,
    **pbt: Any,
) -> dict[str, Any]:
    """Run PBT with Ray Tune on one problem; return the best member's result.

    Args:
        family: task family of the problem (as in ``metasched compare``).
        index: instance of ``split``.
        split: the split of the instance.
        seed: run seed (same task instance and initialisation as the comparison's runs).
        family_seed: seed of the task family.
        budget: main-line inner steps (default: the family's env).
        interval: inner steps per decision, Tune's iteration (default: the family's env).
        clip: stability-bound clipping (default: the comparison's).
        kappa: LR cap factor (default: the comparison's).
        address: Ray cluster to join (default: ``RAY_ADDRESS``, else a local instance).
        storage_path: where Tune keeps its checkpoints (default: a temporary directory).
        **pbt: the :class:`~metasched.schedulers.pbt.PBTScheduler` options (``population``,
            ``ready``, ``truncation``, ``resample_p``, ``perturb``, ``lr_range``, ``seed``).

    Returns:
        ``final_loss`` (the best member's full-data loss at the end), ``lr`` (its LR),
        ``initial_lrs``, ``population``, ``wall_time`` (seconds) and ``trials``.
    """
    from metasched.distill.compare import CompareSpec
    from metasched.distributed.runtime import init_ray
    from metasched.schedulers.pbt import PBTScheduler
    from metasched.schedulers.stepwise import lr_cap

    s = PBTScheduler(**pbt)  # validates the settings exactly as the in-process pbt does
    if s.exploit != "truncation" or s.momentum is not None or s.weight_decay is not None:
        raise ConfigError(
            "pbt on Ray Tune supports exploit='truncation' on the LR only, got "
            f"exploit={s.exploit!r}, momentum={s.momentum!r}, weight_decay={s.weight_decay!r}"
        )
    spec = CompareSpec(families=(family,), split=split, budget=budget, interval=interval,
                       family_seed=family_seed)  # fmt: skip
    b, i, _ = spec.scale(family)
    problem = {
        "family": family, "family_seed": family_seed, "split": split, "index": index,
        "seed": seed, "budget": b, "interval": i,
        "clip": spec.clip if clip is None else clip,
        "kappa": spec.kappa if kappa is None else float(kappa),
    }  # fmt: skip
    task, driver = _problem(problem)
    s.reset(float(task.default_lr()))
    lo, hi = s.bounds(s.base_lrs[0])
    hi = max(min(hi, lr_cap(driver)), lo)
    s.priors = {"lr": [lo, hi]}
    rng = s._rng(0)  # the in-process population's initial draws
    initial = [s._sample("lr", rng) for _ in range(s.population)]

    ray = init_ray(address)
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    scheduler = PopulationBasedTraining(
        time_attr="training_iteration",
        perturbation_interval=s.ready,
        hyperparam_mutations={"lr": tune.loguniform(lo, hi)},
        quantile_fraction=s.truncation,
        resample_probability=s.resample_p,
        perturbation_factors=(s.perturb[1], s.perturb[0]),
        synch=True,
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tuner = tune.Tuner(
            tune.with_resources(_member, {"cpu": 1}),
            param_space={"lr": tune.grid_search(initial), "problem": problem},
            tune_config=tune.TuneConfig(
                scheduler=scheduler, metric="loss", mode="min", num_samples=1,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=f"pbt-{family}-{split}{index}-s{seed}",
                storage_path=os.fspath(storage_path or tmp),
                verbose=0,
            ),
        )
        results = tuner.fit()
        wall = time.perf_counter() - t0
        errors = [r.error for r in results if r.error is not None]
        if errors:
            raise RuntimeError(f"a PBT member failed on Ray Tune: {errors[0]}") from errors[0]
        best = results.get_best_result(metric="loss", mode="min", scope="last")
        with best.checkpoint.as_directory() as d:
            driver.restore(pickle.loads((Path(d) / "member.pkl").read_bytes()))
    final = math.inf if driver.diverged else float(driver.task.evaluate())
    del ray
    return {
        "final_loss": final,
        "lr": float(best.metrics["lr"]),
        "initial_lrs": initial,
        "population": s.population,
        "wall_time": wall,
        "trials": len(results),
    }
