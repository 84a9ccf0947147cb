import os

import pytest
from hypothesis import HealthCheck, settings

os.environ.setdefault("OMP_NUM_THREADS", "1")

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=40
)
settings.load_profile("default")


@pytest.fixture
def fixed_action_policy(tmp_path):
    """Return ``make(action, lr_range=(1e-3, 64.0), interval=50, anneal=None)``: the path of a
    hand-built discrete3 ``.msched`` policy over the LR-control features that always takes
    ``action`` (0: halve, 1: keep, 2: double); ``anneal`` is written to its env kwargs when
    given (files from before it existed have none)."""

    def make(action, *, lr_range=(1e-3, 64.0), interval=50, name="fixed.msched", anneal=None):
        import torch

        from metasched.features import FEATURE_NAMES, N_FEATURES
        from metasched.policyfile import minimal_header, write_policy

        h = minimal_header(input_dim=N_FEATURES, action_mode="discrete3")
        h["observation"]["names"] = list(FEATURE_NAMES)
        h["env_kwargs"] = {"action": "discrete3", "lr_range": list(lr_range), "init_lr": 1.0}
        if anneal is not None:
            h["env_kwargs"]["anneal"] = anneal
        h["decision_interval"] = interval
        h["network"]["layers"] = [{"type": "linear", "weight": "w", "bias": "b"}]
        bias = torch.zeros(3)
        bias[action] = 1.0
        return write_policy(tmp_path / name, {"w": torch.zeros(3, N_FEATURES), "b": bias}, h)

    return make
