"""Connecting to Ray and running a function over many items as one-CPU Ray tasks.

What reaches the workers: on the local instance (no address) the workers are processes of
this machine started from this interpreter, so they import metasched exactly as the driver
does (installed package or ``PYTHONPATH``). When joining a cluster (``address`` or
``RAY_ADDRESS``) the driver's ``metasched`` package directory is shipped with the job
(Ray ``runtime_env`` ``py_modules``), so every node runs the driver's code even if it has
another metasched (or none) installed; the third-party dependencies (torch, SB3, ...) must be
installed on the nodes. Results travel back as task return values: nothing is written on the
workers, so no shared filesystem is needed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from metasched.errors import MissingDependencyError

__all__ = ["init_ray", "map_streaming", "require_ray", "worker_runtime_env"]

INSTALL_HINT = "pip install 'metasched[ray]'"


def require_ray() -> Any:
    """Import and return ``ray``; raise an error naming the extra when it is missing."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(
            f"the Ray backend needs Ray, which is not installed: {INSTALL_HINT}"
        ) from None
    return ray


def worker_runtime_env(ship_code: bool) -> dict[str, Any]:
    """Return the Ray ``runtime_env`` of metasched's jobs (the package itself when shipped)."""
    if not ship_code:
        return {}
    import metasched

    return {"py_modules": [str(Path(metasched.__file__).parent)]}


def init_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    ship_code: bool | None = None,
) -> Any:
    """Connect to Ray once per process and return the ``ray`` module.

    Args:
        address: a cluster to join (``"auto"``, ``"HOST:PORT"`` or ``"ray://HOST:PORT"``);
            ``None`` reads ``RAY_ADDRESS`` and, when that is unset too, starts a local
            instance (stopped when this process exits).
        num_cpus: CPUs of a local instance (default: all of this machine's).
        ship_code: ship the metasched package to the workers (default: when joining a
            cluster; see the module docstring).

    An already connected process is left as it is (the first connection wins).
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    if ship_code is None:
        ship_code = address is not None
    kwargs: dict[str, Any] = {"runtime_env": worker_runtime_env(ship_code) or None}
    if address is None:
        kwargs.update(num_cpus=num_cpus, include_dashboard=False)
    ray.init(address=address, log_to_driver=True, **kwargs)
    return ray


def _in_one_thread(fn: Callable[[Any], Any], item: Any) -> Any:
    """Run ``fn(item)`` with one torch and one BLAS thread (a one-CPU Ray task)."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    with threadpool_limits(1):
        return fn(item)


def map_streaming(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    on_result: Callable[[int, Any], None],
    *,
    address: str | None = None,
    window: int | None = None,
) -> tuple[int, BaseException] | None:
    """Run ``fn`` on every item as a one-CPU Ray task; hand each result over as it arrives.

    ``on_result(k, result)`` is called in this process, in completion order, as soon as
    item ``k`` is done. At most ``window`` tasks are submitted at a time (default: twice
    the cluster's CPUs), so a failure stops the submission: the first failing item is
    returned as ``(k, error)`` (the task's own exception) after the tasks in flight have
    finished and been handed over. Returns ``None`` when every item succeeded.
    """
    if not items:
        return None
    ray = init_ray(address)
    from ray.exceptions import RayTaskError

    task = ray.remote(num_cpus=1, max_retries=0)(_in_one_thread)
    if window is None:
        window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    fn_ref = ray.put(fn)
    pending: dict[Any, int] = {}
    next_k = 0
    failed: tuple[int, BaseException] | None = None
    while pending or (failed is None and next_k < len(items)):
        while failed is None and next_k < len(items) and len(pending) < window:
            pending[task.remote(fn_ref, items[next_k])] = next_k
            next_k += 1
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            k = pending.pop(ref)
            try:
                result = ray.get(ref)
            except RayTaskError as exc:
                if failed is None:
                    cause = exc.cause if isinstance(exc.cause, BaseException) else exc
                    failed = (k, cause)
                continue
            on_result(k, result)
    return failed
