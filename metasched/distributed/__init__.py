"""Scale-out on Ray: comparison cells as Ray tasks, env workers as Ray actors, PBT on Ray Tune.

Ray is an optional extra (``pip install 'metasched[ray]'``); nothing here imports it until it
is used. :func:`~metasched.distributed.runtime.init_ray` starts a local instance on demand or
joins a cluster (``address=`` or ``RAY_ADDRESS``).
"""

from metasched.distributed.runtime import init_ray, map_streaming, require_ray

__all__ = ["init_ray", "map_streaming", "require_ray"]
